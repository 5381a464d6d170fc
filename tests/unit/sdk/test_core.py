"""The SDK's shape: one I/O-free core, two thin twins, nobody else reaching into either."""

from __future__ import annotations

import ast
import inspect
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import execbox
from execbox import APIConnectionError, AsyncClient, Client, ExecutionStatus, JobResult, JobStatus, StreamError
from execbox._streams import EventDecoder, JobDecoder

PACKAGE = Path(execbox.__file__).parent
# The twins may touch each other's private parts (a Session sends through its Client).
TWINS = {"_client.py", "_async_client.py"}
DONE = {"type": "done", "execution": {"status": "ok"}}


def test_no_module_outside_the_twins_reaches_into_private_attributes_of_another_object() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in TWINS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
    assert offenders == []


@pytest.mark.parametrize(
    ("sync", "async_"),
    [(execbox.Client, execbox.AsyncClient), (execbox.Session, execbox.AsyncSession)],
)
def test_the_async_twin_awaits_exactly_where_the_sync_twin_returns_a_value(sync: type, async_: type) -> None:
    # Async iterators or contexts, not awaited.
    iterators = {"run_stream", "batch_stream", "imap", "session", "_stream", "_run_batch", "_spread"}
    for name, method in inspect.getmembers(sync, inspect.isfunction):
        if name.startswith("__") and name not in ("__enter__", "__exit__"):
            continue
        twin = getattr(async_, {"__enter__": "__aenter__", "__exit__": "__aexit__"}.get(name, name))
        assert not inspect.iscoroutinefunction(method), name
        awaited = name not in iterators and name not in ("_check_open",)
        assert inspect.iscoroutinefunction(twin) == awaited, name


def test_both_twins_send_through_the_same_three_methods() -> None:
    for cls in (Client, AsyncClient):
        assert {"_call", "_stream", "_send"} <= set(vars(cls)), cls


def stream_of(*lines: bytes, cut: type[httpx.HTTPError] | None = None) -> httpx.Response:
    def body() -> Iterator[bytes]:
        yield from lines
        if cut is not None:
            raise cut("connection reset mid-stream")

    return httpx.Response(200, content=body())


def test_a_stream_cut_by_the_network_raises_an_sdk_error_not_an_httpx_one() -> None:
    handler = lambda req: stream_of(b'{"type": "stdout", "text": "a"}\n', cut=httpx.ReadError)  # noqa: E731
    with Client("http://x.test", http_client=httpx.Client(transport=httpx.MockTransport(handler))) as client:
        seen: list[str] = []
        with pytest.raises(APIConnectionError) as info:
            client.run("x", on_stdout=seen.append)
    assert seen == ["a"] and not isinstance(info.value, httpx.HTTPError)


async def test_async_streams_are_retried_only_before_their_first_byte() -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        if len(calls) == 1:
            return httpx.Response(
                503, json={"error": {"code": "pool_exhausted", "message": "m"}}, headers={"Retry-After": "0"}
            )
        return httpx.Response(200, content=json.dumps(DONE).encode() + b"\n")

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AsyncClient("http://x.test", http_client=http) as client:
        events = [e async for e in client.run_stream("x")]
    assert [e.type for e in events] == ["done"] and len(calls) == 2


def test_a_stream_stops_at_its_last_line() -> None:
    decoder = EventDecoder()
    body = json.dumps(DONE).encode() + b"\n" + b'{"type": "stdout", "text": "late"}\n'
    assert [e.type for e in decoder.feed(body)] == ["done"] and decoder.ended
    jobs = JobDecoder()
    summary = b'{"type": "summary", "total": 0, "by_status": {}, "wall_ms": 1}\n'
    assert list(jobs.feed(summary)) == [] and jobs.ended


@pytest.mark.parametrize("decoder", [EventDecoder, JobDecoder])
def test_a_stream_that_never_reaches_its_last_line_is_a_stream_error(decoder: type[EventDecoder]) -> None:
    with pytest.raises(StreamError):
        list(decoder().close())


def test_batch_result_is_a_deprecated_alias_of_job_result() -> None:
    with pytest.warns(DeprecationWarning, match="JobResult"):
        alias = execbox.BatchResult
    assert alias is JobResult and "BatchResult" not in execbox.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from execbox._models import BatchResult  # the service's import stays quiet

    assert BatchResult is JobResult


@pytest.mark.parametrize(
    ("job", "execution"),
    [
        (JobStatus.OK, ExecutionStatus.OK),
        (JobStatus.TIMEOUT, ExecutionStatus.TIMEOUT),
        (JobStatus.CRASHED, ExecutionStatus.KERNEL_DIED),
        (JobStatus.OUT_OF_MEMORY, ExecutionStatus.OUT_OF_MEMORY),
    ],
)
def test_a_job_result_reads_as_an_execution(job: JobStatus, execution: ExecutionStatus) -> None:
    result = JobResult(index=3, status=job, stdout="o", value="42", wall_ms=5.0, cpu_ms=4.0)
    converted = result.to_execution()
    assert converted.status is execution and converted.stdout == "o" and converted.text == "42"
    assert converted.resources.cpu_ms == 4.0 and converted.duration_ms == 5.0


def test_the_python_3_10_str_enum_behaves_like_the_standard_one() -> None:
    from enum import StrEnum

    from pydantic import BaseModel

    from execbox._compat import StrEnum310

    class Old(StrEnum310):
        OK = "ok"

    class New(StrEnum):
        OK = "ok"

    for enum in (Old, New):

        class Model(BaseModel):
            status: enum  # type: ignore[valid-type]

        member = Model.model_validate_json('{"status": "ok"}').status
        assert member is enum.OK and member == "ok" and isinstance(member, str)
        assert (str(member), f"{member}", f"{member:>3}", repr(member.value)) == ("ok", "ok", " ok", "'ok'")
        assert Model(status=enum.OK).model_dump_json() == '{"status":"ok"}'
