"""The SDK and the CLI against the real service."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from execbox import (
    AsyncClient,
    Client,
    ExecutionStatus,
    InvalidRequestError,
    SessionNotFoundError,
)


def test_session_lifecycle_with_the_sync_client(client: Client) -> None:
    with client.session(timeout_s=10, memory_mb=256) as s:
        assert s.info.limits.memory_mb == 256
        assert s.run("x = 20").ok
        ex = s.run("x + 22")
        assert ex.text == "42" and ex.raise_for_error() is ex
        assert s.id in [info.id for info in client.sessions.list()]
        assert client.sessions.get(s.id).execution_count == 2
    with pytest.raises(SessionNotFoundError):
        client.sessions.get(s.id)


async def test_session_lifecycle_with_the_async_client(aclient: AsyncClient) -> None:
    async with aclient.session() as s:
        await s.run("import math")
        ex = await s.run("math.factorial(5)")
        assert ex.text == "120"
        restarted = await s.restart()
        assert restarted.execution_count == 0
        again = await s.run("math")
        assert again.status is ExecutionStatus.ERROR and again.error and again.error.name == "NameError"
    with pytest.raises(SessionNotFoundError):
        await aclient.sessions.get(s.id)


def test_streaming_yields_events_in_order(client: Client) -> None:
    with client.session() as s:
        code = "import sys, time\nprint('a', flush=True)\ntime.sleep(0.2)\nprint('b', file=sys.stderr, flush=True)\n7"
        events = list(s.run_stream(code))
    assert [e.type for e in events] == ["stdout", "stderr", "result", "done"]
    done = events[-1]
    assert done.type == "done" and done.execution.stdout == "a\n" and done.execution.text == "7"


def test_callbacks_receive_output_as_it_arrives(client: Client) -> None:
    out: list[tuple[float, str]] = []
    results = []
    t0 = time.monotonic()
    with client.session() as s:
        ex = s.run(
            "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.25)\n'x'",
            on_stdout=lambda text: out.append((time.monotonic() - t0, text)),
            on_result=results.append,
        )
    assert "".join(t for _, t in out) == "0\n1\n2\n"
    assert out[0][0] < out[-1][0]  # not all at the end
    assert ex.ok and results[0].text == "'x'"


def test_one_shot_run(client: Client) -> None:
    ex = client.run("import numpy as np\nprint(np.arange(4).sum())")
    assert ex.ok and ex.stdout == "6\n"


def test_invalid_limits_raise_a_typed_error(client: Client) -> None:
    with pytest.raises(InvalidRequestError, match="maximum"):
        client.session(memory_mb=10**7)


def test_map_over_50_snippets_with_mixed_outcomes(client: Client) -> None:
    codes = []
    for i in range(50):
        if i % 10 == 3:
            codes.append("1/0")
        elif i % 10 == 7:
            codes.append("while True: pass")
        else:
            codes.append(f"print({i} * 2)")
    results = client.map(codes, concurrency=8, timeout_s=2)
    assert len(results) == 50
    for i, ex in enumerate(results):
        if i % 10 == 3:
            assert ex.status is ExecutionStatus.ERROR and ex.error and ex.error.name == "ZeroDivisionError"
        elif i % 10 == 7:
            assert ex.status is ExecutionStatus.TIMEOUT
        else:
            assert ex.ok and ex.stdout == f"{i * 2}\n", (i, ex)


def cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXECBOX_URL": url}
    exe = os.path.join(os.path.dirname(sys.executable), "execbox")
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_cli_run_exit_codes(url: str, tmp_path) -> None:
    ok = cli(url, "run", "-", stdin="print('hello')\n")
    assert ok.returncode == 0 and ok.stdout == "hello\n"
    err = cli(url, "run", "-", stdin="print('before')\nraise ValueError('nope')\n")
    assert err.returncode == 1 and "before" in err.stdout and "ValueError: nope" in err.stderr
    script = tmp_path / "loop.py"
    script.write_text("while True:\n    pass\n")
    slow = cli(url, "run", str(script), "--timeout", "1")
    assert slow.returncode == 124 and "timeout" in slow.stderr  # as timeout(1)
    down = cli("http://127.0.0.1:9", "run", "-", stdin="1")
    assert down.returncode == 3 and "Traceback" not in down.stderr and down.stderr.count("\n") == 1


def test_cli_sessions_and_repl(url: str) -> None:
    repl = cli(url, "repl", stdin="x = 3\nfor i in range(2):\n    print(i)\n\nx * 2\n")
    assert repl.returncode == 0
    assert "0\n1\n" in repl.stdout and "6" in repl.stdout
    listed = cli(url, "sessions")
    assert listed.returncode == 0
    missing = cli(url, "sessions", "delete", "s_missing")
    assert missing.returncode == 3 and "session_not_found" in missing.stderr
    assert cli(url, "--help").returncode == 0 and "run" in cli(url, "--help").stdout
