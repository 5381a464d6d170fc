"""Run a real execbox service in a subprocess on a free loopback port (tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["LocalServer", "free_port", "local_server", "start_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Stop the server (SIGTERM: graceful) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def wait_ready(self, timeout: float = 120) -> None:
        """Block until ``/readyz`` answers 200.

        Raises:
            RuntimeError: the process exited, or the deadline passed.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"execbox server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"execbox server never became ready:\n{self.log.read_text()[-3000:]}")


def start_server(log: Path, settings: Mapping[str, str] | None = None, *, wait: bool = True) -> LocalServer:
    """Start ``python -m execbox_server``; ``settings`` are ``EXECBOX_*`` values without the prefix."""
    port = free_port()
    env = {**os.environ, "EXECBOX_HOST": "127.0.0.1", "EXECBOX_PORT": str(port)}
    env.update({f"EXECBOX_{k.upper()}": str(v) for k, v in (settings or {}).items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "execbox_server"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    server = LocalServer(url=f"http://127.0.0.1:{port}", proc=proc, log=log, env=env)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.stop(signal.SIGKILL)
            raise
    return server


@contextmanager
def local_server(log: Path, **settings: str) -> Iterator[LocalServer]:
    server = start_server(log, settings)
    try:
        yield server
    finally:
        server.stop()
