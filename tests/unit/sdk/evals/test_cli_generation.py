"""`execbox generate` and `execbox eval --llm-url`: the generation options on the command line
(n, stop, seed, max_tokens, temperature, top_p, concurrency, retries, chat vs completions) reach an
OpenAI-compatible server on loopback as its requests, and the samples are written and scored."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from execbox import Client
from execbox import cli as cli_module
from execbox.cli import main
from execbox.evals.generate import COMPLETION_STOP
from tests.support.fake_openai import fake_openai


def continuation(prompt: str, i: int) -> str:
    return f"    return x + {i}\n"


def chat_reply(prompt: str, i: int) -> str:
    return f"```python\ndef f(x):\n    return x + {i}\n```"


@pytest.fixture
def problems(tmp_path: Path) -> str:
    path = tmp_path / "problems.jsonl"
    records = [
        {
            "task_id": f"t/{i}",
            "prompt": "def f(x):\n",
            "test": "def check(f):\n    assert f(1) == 1\n",
            "entry_point": "f",
        }
        for i in range(3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generate_sends_every_sampling_option_and_writes_the_samples(
    problems: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "samples.jsonl"
    with fake_openai(continuation, delay_s=0.05) as server:
        code = main(
            [
                *("generate", "custom", "--problems", problems, "--samples", str(out), "--no-progress"),
                *("--llm-url", server.url, "--model", "base", "--endpoint", "completions", "--n", "2"),
                *("--stop", "\nclass", "--stop", "\nassert", "--seed", "7", "--max-tokens", "64"),
                *("--temperature", "0.8", "--top-p", "0.95", "--llm-concurrency", "2"),
            ]
        )
    assert code == 0
    assert len(server.requests) == 3 and server.max_in_flight <= 2
    for body in server.requests:
        assert body["prompt"] == "def f(x):\n" and body["model"] == "base"
        assert (body["n"], body["stop"], body["seed"], body["max_tokens"]) == (2, ["\nclass", "\nassert"], 7, 64)
        assert (body["temperature"], body["top_p"]) == (0.8, 0.95)
    samples = read_jsonl(out)
    assert [s["task_id"] for s in samples] == ["t/0", "t/0", "t/1", "t/1", "t/2", "t/2"]
    assert samples[1]["completion"] == "    return x + 1\n" and "usage" in samples[1]
    err = capsys.readouterr().err
    assert "6 samples generated" in err and "(0 failed): 3 requests" in err and "completion tokens" in err


def test_completions_stop_where_evalplus_does_unless_told_otherwise(problems: str, tmp_path: Path) -> None:
    with fake_openai(continuation) as server:
        argv = ["generate", "custom", "--problems", problems, "--samples", str(tmp_path / "s.jsonl")]
        assert main([*argv, "--llm-url", server.url, "--model", "m", "--endpoint", "completions"]) == 0
    assert all(body["stop"] == COMPLETION_STOP and "seed" not in body for body in server.requests)


def test_a_refused_request_is_retried_as_often_as_told(
    problems: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.jsonl"
    argv = ["generate", "custom", "--problems", problems, "--samples", str(out), "--endpoint", "completions"]
    argv += ["--llm-concurrency", "1", "--model", "m"]
    with fake_openai(continuation, failures=[(503, "0")]) as server:
        assert main([*argv, "--llm-url", server.url, "--llm-retries", "1"]) == 0
    assert "(0 failed)" in capsys.readouterr().err and len(server.requests) == 4
    with fake_openai(continuation, failures=[(503, "0")]) as server:
        assert main([*argv, "--llm-url", server.url, "--llm-retries", "0"]) == 0
    assert "(1 failed)" in capsys.readouterr().err
    assert "503" in str(read_jsonl(out)[0]["error"])


def test_eval_generates_through_chat_then_scores_the_samples(
    problems: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def batch(request: httpx.Request) -> httpx.Response:
        jobs = json.loads(request.content)["jobs"]
        lines = []
        for i, job in enumerate(jobs):
            passed = "x + 0" in job["code"]  # the first of each task's two samples is right
            tests = [{"index": 0, "passed": passed, "status": "passed" if passed else "failed"}]
            lines.append({"type": "result", "index": i, "status": "ok", "tests": tests})
        lines.append({"type": "summary", "total": len(jobs), "by_status": {}, "wall_ms": 1.0})
        return httpx.Response(200, content="".join(json.dumps(line) + "\n" for line in lines).encode())

    monkeypatch.setattr(
        cli_module,
        "_client",
        lambda args: Client(
            "http://x.test", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(batch))
        ),
    )
    out = tmp_path / "samples.jsonl"
    with fake_openai(chat_reply) as server:
        code = main(
            [
                *("eval", "custom", "--problems", problems, "--samples", str(out), "--k", "1,2", "--no-progress"),
                *("--llm-url", server.url, "--model", "chat", "--n", "2", "--seed", "3", "--temperature", "0.2"),
            ]
        )
    assert code == 0
    assert all("messages" in body and body["seed"] == 3 and body["n"] == 2 for body in server.requests)
    assert [s["solution"].strip().endswith(f"x + {i % 2}") for i, s in enumerate(read_jsonl(out))] == [True] * 6
    printed = capsys.readouterr().out
    assert "pass@1: 0.500" in printed and "pass@2: 1.000" in printed


@pytest.mark.parametrize(
    "flags",
    [
        ["--model", "m", "--n", "0"],
        ["--model", "m", "--llm-concurrency", "0"],
        ["--model", "m", "--llm-retries", "-1"],
        [],  # no --model
    ],
    ids=repr,
)
def test_bad_generation_options_are_usage_errors(problems: str, tmp_path: Path, flags: list[str]) -> None:
    argv = ["generate", "custom", "--problems", problems, "--samples", str(tmp_path / "s.jsonl")]
    assert main([*argv, "--llm-url", "http://127.0.0.1:9", *flags]) == 2
