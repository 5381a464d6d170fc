"""The ``execbox`` command follows shell conventions: exit codes, --version, --json, progress bars.

Exit codes: 0 ok, 1 the code failed, 2 usage (as argparse), 3 the service could not be used,
124 the execution timed out (as ``timeout``). The CLI runs in-process against a fake service
behind httpx's MockTransport.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from execbox import Client, Execution
from execbox import cli as cli_module
from execbox._version import __version__
from execbox.cli import main

Handler = Callable[[httpx.Request], httpx.Response]
HOSTILE = "\x1b]52;c;aGk=\x07\x9b31m\x7f\ud800é"


def execution_json(status: str, **fields: Any) -> dict[str, Any]:
    return Execution.model_validate({"status": status, **fields}).model_dump(mode="json")


def one_shot(status: str, **fields: Any) -> Handler:
    """A service whose every execution ends with ``status``, streamed or not."""

    def handler(request: httpx.Request) -> httpx.Response:
        execution = execution_json(status, **fields)
        if request.url.path.endswith("/stream"):
            lines = [{"type": "stdout", "text": execution["stdout"]}, {"type": "done", "execution": execution}]
            return httpx.Response(200, content="".join(json.dumps(line) + "\n" for line in lines).encode())
        return httpx.Response(200, content=json.dumps(execution).encode())  # as the server: \ud800 escaped

    return handler


def batch_service(request: httpx.Request) -> httpx.Response:
    jobs = json.loads(request.content)["jobs"]
    # A service whose harness ran every job's tests and saw them pass.
    passed = [{"index": 0, "passed": True, "status": "passed"}]
    lines = [
        {"type": "result", "index": i, "status": "ok", "stdout": HOSTILE, "tests": passed if job.get("tests") else None}
        for i, job in enumerate(jobs)
    ]
    lines.append({"type": "summary", "total": len(jobs), "by_status": {"ok": len(jobs)}, "wall_ms": 1.0})
    return httpx.Response(200, content="".join(json.dumps(line) + "\n" for line in lines).encode())


@pytest.fixture
def use_service(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], None]:
    def use(handler: Handler) -> None:
        client = lambda args: Client(  # noqa: E731
            "http://execbox.test", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler))
        )
        monkeypatch.setattr(cli_module, "_client", client)

    return use


@pytest.fixture
def code_file(tmp_path: Path) -> str:
    path = tmp_path / "job.py"
    path.write_text("print('hi')\n", encoding="utf-8")
    return str(path)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"execbox {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--no-such-flag"],
        ["run"],
        ["run", "-", "--timeout", "soon"],
        ["run", "/nonexistent/job.py"],
        ["sessions", "delete"],
        ["eval", "custom", "--samples", "s.jsonl"],
        ["eval", "humaneval", "--samples", "s.jsonl", "--problems", "/nonexistent/problems.jsonl"],
    ],
    ids=lambda argv: " ".join(argv) or "no command",
)
def test_usage_errors_exit_2_like_argparse(
    argv: list[str], use_service: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]
) -> None:
    use_service(one_shot("ok"))
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and err and not out


@pytest.mark.parametrize(
    ("status", "expected"),
    [("ok", 0), ("error", 1), ("out_of_memory", 1), ("kernel_died", 1), ("timeout", 124)],
)
def test_run_exit_code_says_how_the_execution_ended(
    status: str,
    expected: int,
    code_file: str,
    use_service: Callable[[Handler], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_service(one_shot(status, stdout="hi\n"))
    for extra in ([], ["--json"]):
        code, _, _ = run_cli(["run", code_file, *extra], capsys)
        assert code == expected, extra


@pytest.mark.parametrize(
    "answer",
    [
        lambda request: httpx.Response(503, json={"error": {"code": "engine_unavailable", "message": "down"}}),
        lambda request: httpx.Response(401, json={"error": {"code": "unauthorized", "message": "key"}}),
        lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused", request=request)),
    ],
    ids=["engine_unavailable", "unauthorized", "unreachable"],
)
def test_a_service_that_cannot_be_used_exits_3(
    answer: Handler, code_file: str, use_service: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]
) -> None:
    use_service(answer)
    for extra in ([], ["--json"]):
        code, out, err = run_cli(["run", code_file, *extra], capsys)
        assert code == 3 and out == "" and err.startswith("execbox: "), extra


def test_run_json_prints_only_the_execution_on_stdout(
    code_file: str, use_service: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]
) -> None:
    use_service(one_shot("error", stdout=f"out {HOSTILE}\n", error={"name": "E", "value": HOSTILE}))
    code, out, _ = run_cli(["run", code_file, "--json"], capsys)
    assert code == 1
    assert out.endswith("\n") and out.count("\n") == 1
    assert out.isascii() and out.rstrip("\n").isprintable()  # no control character reaches a terminal
    assert json.loads(out) == execution_json("error", stdout=f"out {HOSTILE}\n", error={"name": "E", "value": HOSTILE})


def write_eval_inputs(tmp_path: Path) -> tuple[str, str]:
    problems, samples = tmp_path / "problems.jsonl", tmp_path / "samples.jsonl"
    problems.write_text(json.dumps({"task_id": "t/0", "prompt": "", "test": "pass", "entry_point": "f"}) + "\n")
    samples.write_text("".join(json.dumps({"task_id": "t/0", "completion": "f = 1"}) + "\n" for _ in range(3)))
    return str(problems), str(samples)


def test_eval_json_prints_only_the_report_on_stdout(
    tmp_path: Path, use_service: Callable[[Handler], None], capsys: pytest.CaptureFixture[str]
) -> None:
    use_service(batch_service)
    problems, samples = write_eval_inputs(tmp_path)
    code, out, err = run_cli(
        ["eval", "custom", "--samples", samples, "--problems", problems, "--k", "1", "--json"], capsys
    )
    assert code == 0 and "pass@1" in err
    report = json.loads(out)
    assert report["pass_at_k"] == {"pass@1": 1.0} and len(report["samples"]) == 3
    assert json.loads(Path(f"{samples}.report.json").read_text()) == report


@pytest.mark.parametrize(
    ("terminal", "flags", "bar"),
    [
        (True, [], True),
        (False, [], False),
        (True, ["--no-progress"], False),
        (False, ["--progress"], True),
    ],
)
def test_progress_bars_are_on_by_default_only_on_a_terminal(
    terminal: bool,
    flags: list[str],
    bar: bool,
    tmp_path: Path,
    use_service: Callable[[Handler], None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_service(batch_service)
    monkeypatch.setattr(cli_module, "_stderr_is_terminal", lambda: terminal)
    problems, samples = write_eval_inputs(tmp_path)
    code, out, err = run_cli(
        ["eval", "custom", "--samples", samples, "--problems", problems, "--k", "1", *flags], capsys
    )
    assert code == 0 and out.startswith("pass@1")
    assert ("3/3" in err) == bar, err
