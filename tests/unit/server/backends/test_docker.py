"""The Docker backend's own mechanisms that need no engine: deadlines and separate thread pools
for engine calls, the exec stream reader, sealing a kernel's shared directory."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest

from execbox_server.backends.docker.engine import Engine
from execbox_server.backends.docker.helpers import read_frames
from execbox_server.backends.docker.kernels import seal_dir
from execbox_server.errors import EngineUnavailable
from execbox_server.settings import Settings


@pytest.fixture()
async def engine():
    # Socket paths are short: a state dir of its own, not pytest's long tmp_path.
    e = Engine(Settings(state_dir=Path(tempfile.mkdtemp(prefix="xb-"))))
    yield e
    await e.close()


async def test_an_engine_call_that_hangs_ends_at_its_deadline_as_engine_unavailable(engine: Engine) -> None:
    release = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable, match="did not answer"):
        await engine.call("exec", release.wait, timeout=0.3)
    assert time.monotonic() - t0 < 5
    release.set()


async def test_hung_file_copies_never_delay_a_kill(engine: Engine) -> None:
    release = threading.Event()
    stuck = [
        asyncio.ensure_future(engine.call("exec", release.wait, timeout=30)) for _ in range(16)
    ]  # every exec thread taken, more queued behind them
    await asyncio.sleep(0.1)
    try:
        # A kill, an inspect or a remove goes through its own pool and answers at once.
        assert await asyncio.wait_for(engine.call("control", lambda: "killed"), 5) == "killed"
    finally:
        release.set()
        await asyncio.gather(*stuck, return_exceptions=True)


def _frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def test_exec_streams_are_demultiplexed_and_bounded() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_frame(1, b"out") + _frame(2, b"err") + _frame(1, b"put"))
        a.shutdown(socket.SHUT_WR)
        assert read_frames(b, 100, time.monotonic() + 5) == (b"output", b"err")
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_frame(1, b"x" * 200))
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(OSError, match="more than 100"):
            read_frames(b, 100, time.monotonic() + 5)


def test_an_exec_stream_that_never_ends_stops_at_the_deadline() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_frame(1, b"partial"))
        with pytest.raises(TimeoutError):
            read_frames(b, 100, time.monotonic() + 0.3)


def test_sealing_removes_the_connection_file_and_ignores_a_symlinked_directory(tmp_path: Path) -> None:
    kernel_dir = tmp_path / "k"
    kernel_dir.mkdir(mode=0o777)
    (kernel_dir / "connection.json").write_text("{}")
    seal_dir(kernel_dir)
    assert not (kernel_dir / "connection.json").exists()
    assert kernel_dir.stat().st_mode & 0o777 == 0o755
    if os.geteuid() == 0:
        assert kernel_dir.stat().st_uid == 0  # the sandbox user no longer owns it
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(OSError):
        seal_dir(tmp_path / "link")
    assert outside.stat().st_mode & 0o777 == 0o700


async def test_a_non_root_service_refuses_to_start_rather_than_open_its_directories(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionError, match="must run as root"):
        await engine.open()
    assert not engine.kernels_dir.exists()
