"""Shared fixtures: one real execbox service for the whole session, on loopback.

The service runs as a real uvicorn process against the real Docker engine. Before the
suite, the set of execbox containers is recorded; after it, none may have been added.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def docker_ok() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.images.get(os.environ.get("EXECBOX_IMAGE", "execbox-sandbox-python:latest"))
        client.close()
        return True
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def execbox_containers() -> set[str]:
    import docker

    client = docker.from_env(timeout=30)
    try:
        return {c.id for c in client.containers.list(all=True, filters={"label": "execbox.managed=1"})}
    finally:
        client.close()


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_server(tmp: Path, name: str, **settings: str) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "EXECBOX_HOST": "127.0.0.1",
        "EXECBOX_PORT": str(port),
        "EXECBOX_MIN_READY": "2",
        "EXECBOX_MAX_TOTAL": "12",
        "EXECBOX_MAX_STARTING": "2",
        "EXECBOX_INTERRUPT_GRACE_S": "1.5",
        "EXECBOX_ACQUIRE_TIMEOUT_S": "30",
        **settings,
    }
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "execbox_server"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    server = Server(url=f"http://127.0.0.1:{port}", proc=proc, log=log, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"execbox server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"execbox server never became ready:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def containers_before() -> Iterator[set[str]]:
    before = execbox_containers()
    yield before


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, containers_before: set[str]) -> Iterator[Server]:
    if not docker_ok():
        pytest.fail("integration tests need a Docker engine and the sandbox image: run 'make test' (it sets both up)")
    srv = start_server(tmp_path_factory.mktemp("server"), "main")
    yield srv
    code = srv.stop()
    leftovers = execbox_containers() - containers_before
    # uvicorn re-raises the signal after a clean shutdown, so -SIGTERM is a clean exit too.
    assert code in (0, -signal.SIGTERM), srv.log.read_text()[-3000:]
    assert "Application shutdown complete" in srv.log.read_text()
    assert not leftovers, f"containers left behind by the service: {leftovers}"


@pytest.fixture()
def url(server: Server) -> str:
    return server.url
