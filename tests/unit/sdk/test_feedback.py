"""Everything a sandbox produces reaches the SDK's consumers as data and none of them raises.

A sandbox controls its stdout/stderr, its rich results (any MIME key, any JSON value), its
exception's name, value and traceback, a batch job's value and its test outcomes. The server
relays that through the wire models; here hostile values go through the same models (and over
the wire, through a fake server at the transport seam) into the renderers, the interpreter
agent, the synthesizer and the evaluator, which must turn every one of them into text or a
record instead of an exception.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from execbox import Client
from execbox._models import (
    DoneEvent,
    Execution,
    JobResult,
    Result,
    ResultEvent,
    StderrEvent,
    StdoutEvent,
    parse_event,
)
from execbox._streams import LineSplitter
from execbox._text import scrub_surrogates
from execbox.agent import AgentConfig, run_agent
from execbox.evals import evaluate
from execbox.evals.datasets import Problem
from execbox.feedback import FeedbackStyle, render_feedback
from execbox.llm import ChatClient
from execbox.synth import UserSimulator, synthesize

STYLES: tuple[FeedbackStyle, ...] = ("execbox", "opencodeinterpreter", "code_feedback")
SESSION = {
    "id": "s_1",
    "limits": {"memory_mb": 512, "cpus": 1.0, "timeout_s": 30.0},
    "created_at": "2026-01-01T00:00:00Z",
    "last_used_at": "2026-01-01T00:00:00Z",
    "expires_at": "2026-01-01T00:10:00Z",
}
HOSTILE_CHARS = [
    "\x00", "\x1b", "\x07", "\r", "\n", "\t", "\x7f", "\x85", "\x9b", "\u2028", "\u2029",
    "\ud800", "\udfff", "\udc9b", "\ufffd", "\ufeff", "\u202e", "é", "😀", '"', "\\", "/", "-",
    "File \"/usr/lib/x.py\"", "\x1b]52;c;aGk=\x07", "\x1b[2J", "=", "A", "Traceback",
]  # fmt: skip
# Any code point, lone surrogates included (a sandbox-side relay can hand over "\ud800").
text = st.one_of(
    st.text(st.characters(exclude_categories=())),
    st.lists(st.sampled_from(HOSTILE_CHARS)).map("".join),
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text)
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
)
png_value = st.one_of(
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),  # valid
    st.sampled_from(["not base64!", "abc", "====", "YQ", "\x00", "\ud800"]),  # invalid
    text,
    json_value,
)
mime_key = st.one_of(
    st.sampled_from(["text/plain", "image/png", "text/html", "application/json", "image/svg+xml"]), text
)
bundle = st.dictionaries(mime_key, json_value, max_size=4) | st.fixed_dictionaries(
    {"image/png": png_value}, optional={"text/plain": json_value}
)
result_json = st.fixed_dictionaries(
    {"data": bundle},
    optional={"metadata": st.dictionaries(text, json_value, max_size=3), "is_main_result": st.booleans()},
)
error_json = st.fixed_dictionaries({"name": text, "value": text}, optional={"traceback": st.lists(text, max_size=8)})
count = st.integers(min_value=0, max_value=2**62)
execution_json = st.fixed_dictionaries(
    {"status": st.sampled_from(["ok", "error", "timeout", "interrupted", "out_of_memory", "output_limit",
                                "kernel_died", "sandbox_lost"])},
    optional={
        "stdout": text,
        "stderr": text,
        "error": st.none() | error_json,
        "results": st.lists(result_json, max_size=4),
        "execution_count": st.none() | st.integers(),
        "truncated": st.booleans(),
        "truncation": st.fixed_dictionaries(
            {}, optional={"stdout_bytes": count, "stderr_bytes": count, "results": count, "traceback_lines": count}
        ),
        "state_lost": st.booleans(),
        "message": st.none() | text,
    },
)  # fmt: skip
outcome_json = st.fixed_dictionaries(
    {"index": st.integers(0, 1000), "passed": st.booleans(), "status": text},
    optional={"input": json_value, "expected": json_value, "actual": json_value, "error": st.none() | error_json},
)
batch_json = st.fixed_dictionaries(
    {"status": st.sampled_from(["ok", "error", "timeout", "out_of_memory", "output_limit", "crashed"])},
    optional={
        "stdout": text,
        "stderr": text,
        "error": st.none() | error_json,
        "value": st.none() | text,
        "exit_code": st.none() | st.integers(-(2**31), 2**31),
        "signal": st.none() | text,
        "truncated": st.booleans(),
        "tests": st.none() | st.lists(outcome_json, max_size=3),
        "message": st.none() | text,
    },
)
# Arbitrary JSON in the places of an Execution's fields: whatever the model accepts is fair game.
loose_execution_json = st.dictionaries(
    st.sampled_from(["status", "stdout", "stderr", "error", "results", "message", "truncation", "state_lost"]),
    json_value,
).map(lambda d: {"status": "error", **d})

HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def executions() -> st.SearchStrategy[Execution]:
    def validate(data: dict[str, Any]) -> Execution | None:
        try:
            return Execution.model_validate(data)
        except ValueError:
            return None

    return st.one_of(execution_json, loose_execution_json).map(validate).filter(lambda e: e is not None)  # type: ignore[return-value]


def assert_model_text(rendered: str) -> None:
    """What reaches a model is a str that encodes as UTF-8 (an HTTP JSON body can carry it)."""
    assert isinstance(rendered, str)
    rendered.encode("utf-8")


# ------------------------------------------------------------------ a fake server at the transport seam


def server_json(model: Any) -> str:
    """The body the service would send for ``model`` (it serializes with pydantic)."""
    return str(model.model_dump_json())


def relay_json(model: Any) -> str:
    """What a lenient relay (json.dumps) would send: lone surrogates as \\u escapes, NaN literals."""
    return json.dumps(model.model_dump(mode="json"))


def server_or_relay(model: Any) -> str:
    """The server's encoding where it can write ``model`` (no lone surrogates), else a relay's."""
    try:
        return server_json(model)
    except ValueError:
        return relay_json(model)


ENCODINGS = st.sampled_from([server_or_relay, relay_json])


def events_of(execution: Execution) -> list[Any]:
    events: list[Any] = []
    if execution.stdout:
        events.append(StdoutEvent(text=execution.stdout))
    if execution.stderr:
        events.append(StderrEvent(text=execution.stderr))
    events += [ResultEvent(result=result) for result in execution.results]
    events.append(DoneEvent(execution=execution))
    return events


def fake_server(
    executions: Callable[[], Execution],
    *,
    encode: Callable[[Any], str] = server_json,
    batch: Sequence[JobResult] = (),
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "DELETE":
            return httpx.Response(204)
        if path == "/v1/sessions":
            return httpx.Response(201, json=SESSION)
        if path.endswith("/stream") and "batch" not in path:
            stream = "".join(encode(event) + "\n" for event in events_of(executions()))
            return httpx.Response(200, content=stream.encode("utf-8"))
        if path.endswith("/execute"):
            return httpx.Response(200, content=encode(executions()).encode("utf-8"))
        if path == "/v1/batch/stream":
            jobs = json.loads(request.content)["jobs"]
            lines = [encode(r.model_copy(update={"index": i, "id": str(i)})) for i, r in enumerate(batch)]
            lines.append(json.dumps({"type": "summary", "total": len(jobs), "by_status": {}, "wall_ms": 1.0}))
            return httpx.Response(200, content="\n".join(lines).encode("utf-8") + b"\n")
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    return handler


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client("http://execbox.test", http_client=httpx.Client(transport=httpx.MockTransport(handler)))


def fake_model(sent: list[Any], reply: str = "```python\nprint(1)\n```") -> ChatClient:
    """A chat endpoint that always answers with code, and records the JSON bodies it was sent."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content.decode("utf-8"))  # strict UTF-8: what a real endpoint needs
        sent.append(body)
        return httpx.Response(200, json={"choices": [{"message": {"content": reply}}]})

    return ChatClient(
        base_url="http://model.test/v1",
        model="m",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def serializable_by_server(model: Any, encode: Callable[[Any], str]) -> bool:
    try:
        encode(model)
    except (ValueError, RecursionError):
        return False
    return True


# ------------------------------------------------------------------ targeted regressions


def test_invalid_base64_png_renders_as_a_note_in_every_style() -> None:
    execution = Execution(status="ok", results=[Result(data={"image/png": "not base64!"})])
    for style in STYLES:
        assert "image" in render_feedback(execution, style=style)
    assert "not valid base64" in render_feedback(execution)
    assert execution.results[0].png is None


def test_valid_png_still_reports_its_size() -> None:
    png = base64.b64encode(b"\x89PNG" + b"x" * 96).decode()
    execution = Execution(status="ok", results=[Result(data={"image/png": png})])
    assert "[image/png, 100 bytes]" in render_feedback(execution)
    assert execution.results[0].png == b"\x89PNG" + b"x" * 96


def test_non_string_values_under_known_mime_keys_render() -> None:
    execution = Execution.model_validate(
        {"status": "ok", "results": [{"data": {"image/png": {"a": [1]}}}, {"data": {"text/plain": [None, 2.5]}}]}
    )
    for style in STYLES:
        assert_model_text(render_feedback(execution, style=style))


def test_lone_surrogates_never_reach_a_model_prompt() -> None:
    execution = Execution.model_validate(
        {"status": "error", "stdout": "a\ud800b", "error": {"name": "E\udfff", "value": "v", "traceback": ["\ud800"]}}
    )
    for style in STYLES:
        rendered = render_feedback(execution, style=style)
        assert_model_text(rendered)
        assert "a\ufffdb" in rendered


def test_a_huge_traceback_line_is_cut_in_the_execbox_style() -> None:
    execution = Execution.model_validate(
        {"status": "error", "error": {"name": "E", "value": "x" * 1_000_000, "traceback": ["y" * 1_000_000]}}
    )
    assert len(render_feedback(execution)) < 20_000


@pytest.mark.parametrize("character", ["\u2028", "\u2029", "\x85", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c"])
def test_unicode_line_separators_in_output_do_not_break_the_stream(character: str) -> None:
    """JSON leaves these unescaped, and str.splitlines (which httpx's iter_lines follows) splits on them."""
    execution = Execution.model_validate({"status": "ok", "stdout": f"a{character}b\n"})
    with client_for(fake_server(lambda: execution)) as client:
        events = list(client.run_stream("print()"))
        assert events[-1].execution.stdout == f"a{character}b\n"  # type: ignore[union-attr]
        assert client.run("print()", on_stdout=lambda _: None).stdout == f"a{character}b\n"


async def test_unicode_line_separators_do_not_break_the_async_stream() -> None:
    from execbox import AsyncClient

    execution = Execution.model_validate({"status": "ok", "stdout": "a\u2028b\x85c\n"})
    transport = httpx.MockTransport(fake_server(lambda: execution))
    async with AsyncClient("http://execbox.test", http_client=httpx.AsyncClient(transport=transport)) as client:
        events = [event async for event in client.run_stream("print()")]
    assert events[-1].execution.stdout == "a\u2028b\x85c\n"  # type: ignore[union-attr]


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [150, 210, 240])
def test_deeply_nested_results_the_server_can_send_are_read(depth: int) -> None:
    """pydantic's JSON parser stops at 200 levels, its serializer (the server's) goes deeper."""
    execution = Execution.model_validate({"status": "ok", "results": [{"data": {"application/json": nested(depth)}}]})
    event = DoneEvent(execution=execution)
    assert serializable_by_server(event, server_json)
    with client_for(fake_server(lambda: execution)) as client:
        assert client.run("x").results[0].data == execution.results[0].data
        assert list(client.run_stream("x"))[-1] == event
    assert parse_event(server_json(event)) == event


@pytest.mark.parametrize("character", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_separators_do_not_break_the_batch_stream(character: str) -> None:
    result = JobResult.model_validate({"index": 0, "status": "error", "stdout": character, "value": character})
    report = evaluate_with([result])
    assert report["samples"][0]["status"] == "error"
    with client_for(fake_server(lambda: Execution(status="ok"), batch=[result])) as client:
        assert [r.stdout for r in client.batch(["x"])] == [character]
        assert [e.text for e in client.map(["x"])] == [character]


def test_lone_surrogate_escapes_from_a_relay_are_read() -> None:
    execution = Execution.model_validate({"status": "ok", "stdout": "a\ud800b"})
    with client_for(fake_server(lambda: execution, encode=relay_json)) as client:
        assert client.run("x").stdout == "a\ud800b"
        assert list(client.run_stream("x"))[-1].execution.stdout == "a\ud800b"  # type: ignore[union-attr]


def test_synthesis_keeps_a_dialogue_whose_output_holds_lone_surrogates() -> None:
    execution = Execution.model_validate({"status": "ok", "stdout": "\udc9b\ud800\x1b[2J\n"})
    records = synthesize_with(execution, user=True, encode=relay_json)
    assert records[0]["final_status"] == "max_turns"
    assert records[0]["executions"][0]["stdout"] == "\udc9b\ud800\x1b[2J\n"


def test_synthesis_keeps_a_dialogue_with_the_deepest_results_the_server_sends() -> None:
    execution = Execution.model_validate({"status": "ok", "results": [{"data": {"application/json": nested(240)}}]})
    records = synthesize_with(execution, user=False)
    assert records[0]["final_status"] == "max_turns", records[0].get("error")
    assert records[0]["executions"][0]["results"][0]["data"]["application/json"] == nested(240)


def test_agent_with_a_simulated_user_sends_the_model_valid_utf8() -> None:
    execution = Execution.model_validate(
        {"status": "error", "stdout": "\ud800", "error": {"name": "\udfff", "value": ""}}
    )
    sent: list[Any] = []
    with client_for(fake_server(lambda: execution, encode=relay_json)) as client:
        transcript = run_agent(
            "task",
            client=client,
            llm=fake_model(sent),
            config=AgentConfig(max_turns=2),
            user_feedback=UserSimulator(fake_model([], reply="try again")),
        )
    assert transcript.final_status == "max_turns", transcript.error
    assert len(sent) == 2 and all(m["content"] is not None for m in sent[-1]["messages"])


def test_evaluation_report_survives_hostile_batch_results() -> None:
    hostile = JobResult.model_validate(
        {
            "index": 0,
            "status": "error",
            "stdout": "\x1b]52;c;aGk=\x07\ud800",
            "value": "\udfff",
            "error": {"name": "AssertionError", "value": "\ud800", "traceback": ["assert \ud800"]},
            "tests": [{"index": 0, "passed": False, "status": "failed", "actual": nested(240), "input": [1e308]}],
        }
    )
    report_json = evaluate_with([hostile], relay_json)
    assert report_json["samples"][0]["passed"] is False


# ------------------------------------------------------------------ helpers running the consumers


def synthesize_with(execution: Execution, *, user: bool, encode: Callable[[Any], str] = server_json) -> list[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        queries, output = os.path.join(tmp, "q.jsonl"), os.path.join(tmp, "out.jsonl")
        with open(queries, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": "q1", "query": "compute"}) + "\n")
        with client_for(fake_server(lambda: execution, encode=encode)) as client:
            stats = synthesize(
                queries,
                output,
                client=client,
                llm=fake_model([]),
                config=AgentConfig(max_turns=2),
                user=UserSimulator(fake_model([], reply="more")) if user else None,
                concurrency=1,
            )
        assert stats.written == 1
        with open(output, encoding="utf-8") as fh:  # strict UTF-8: every record is a readable line
            return [json.loads(line) for line in fh]


def evaluate_with(results: list[JobResult], encode: Callable[[Any], str] = server_json) -> dict[str, Any]:
    problems = {"t": Problem(task_id="t", prompt="", entry_point="f", test_program="check(f)")}
    samples = [{"task_id": "t", "completion": "pass"} for _ in results]
    with client_for(fake_server(lambda: Execution(status="ok"), encode=encode, batch=results)) as client:
        reports = [evaluate(client, problems, samples, ks=(1,), feedback=style) for style in STYLES]
    for report in reports:
        assert len(report.samples) == len(results)
        for sample in report.samples:
            assert sample.passed or sample.feedback is not None
        encoded = json.dumps(report.to_json())  # what `execbox eval` writes
    return json.loads(encoded)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ properties


@HYPOTHESIS
@given(st.lists(text.map(lambda t: scrub_surrogates(t).replace("\n", "")), max_size=6), st.data())
def test_stream_lines_split_at_newlines_only_however_the_bytes_arrive(lines: list[str], data: st.DataObject) -> None:
    body = "".join(line + "\n" for line in lines).encode("utf-8")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    splitter, got = LineSplitter(), []
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        got += splitter.feed(body[start:end])
    assert got + splitter.flush() == lines


@HYPOTHESIS
@given(executions(), st.integers(1, 3000), st.integers(0, 1000), st.integers(0, 60))
def test_render_feedback_never_raises(execution: Execution, limit: int, keep: int, tb_lines: int) -> None:
    for style in STYLES:
        assert_model_text(render_feedback(execution, style=style))
        assert_model_text(render_feedback(execution, style=style, limit=limit, keep=keep, traceback_lines=tb_lines))


@HYPOTHESIS
@given(st.lists(batch_json, min_size=1, max_size=3))
def test_batch_results_render_and_describe_without_raising(raw: list[dict[str, Any]]) -> None:
    for item in raw:
        result = JobResult.model_validate({"index": 0, **item})
        execution = result.to_execution()
        for style in STYLES:
            assert_model_text(render_feedback(execution, style=style))


@HYPOTHESIS
@given(executions(), ENCODINGS)
def test_whatever_the_server_can_send_is_parsed_back(execution: Execution, encode: Callable[[Any], str]) -> None:
    assume(all(serializable_by_server(event, encode) for event in events_of(execution)))
    sent = json.loads(encode(execution))
    with client_for(fake_server(lambda: execution, encode=encode)) as client:
        whole = client.run("x")
        streamed = list(client.run_stream("x"))[-1].execution  # type: ignore[union-attr]
    for received in (whole, streamed):
        assert json.dumps(json.loads(relay_json(received)), sort_keys=True) == json.dumps(sent, sort_keys=True)


@HYPOTHESIS
@given(executions(), st.sampled_from(STYLES), ENCODINGS)
def test_agent_feedback_step_never_raises(execution: Execution, style: str, encode: Callable[[Any], str]) -> None:
    assume(all(serializable_by_server(event, encode) for event in events_of(execution)))
    sent: list[Any] = []
    with client_for(fake_server(lambda: execution, encode=encode)) as client:
        transcript = run_agent(
            "task",
            client=client,
            llm=fake_model(sent),
            config=AgentConfig(max_turns=2, feedback_style=style),  # type: ignore[arg-type]
            user_feedback=UserSimulator(fake_model([], reply="again")),
        )
    assert transcript.final_status == "max_turns", transcript.error
    assert [m["role"] for m in transcript.messages].count("user") == 3  # task + two feedback turns
    json.dumps(transcript.to_json())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executions(), ENCODINGS)
def test_synthesizer_records_every_dialogue(execution: Execution, encode: Callable[[Any], str]) -> None:
    assume(all(serializable_by_server(event, encode) for event in events_of(execution)))
    records = synthesize_with(execution, user=True, encode=encode)
    assert len(records) == 1 and records[0]["final_status"] == "max_turns", records
    assert len(records[0]["executions"]) == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(batch_json, min_size=1, max_size=3), ENCODINGS)
def test_evaluator_reports_every_sample(raw: list[dict[str, Any]], encode: Callable[[Any], str]) -> None:
    results = [JobResult.model_validate({"index": 0, **item}) for item in raw]
    assume(all(serializable_by_server(r, encode) for r in results))
    evaluate_with(results, encode)
