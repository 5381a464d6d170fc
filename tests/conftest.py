"""Shared fixtures: one real execbox service for the whole session, on loopback.

The service runs as a real uvicorn process against the real Docker engine. Before the
suite, the set of execbox containers is recorded; after it, none may have been added.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.server import LocalServer, start_server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ is marked ``integration`` (``make test-unit`` skips it)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


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


def execbox_containers(instance: str | None = None) -> set[str]:
    """Ids of execbox containers, of one service instance or of all."""
    import docker

    label = f"execbox.instance={instance}" if instance else "execbox.managed=1"
    client = docker.from_env(timeout=30)
    try:
        return {c.id for c in client.containers.list(all=True, filters={"label": label})}
    finally:
        client.close()


def instance_of(server: LocalServer) -> str:
    """The instance id a server logs at start-up; its containers carry it as a label."""
    match = re.search(r"execbox instance ([0-9a-f]+)", server.log.read_text())
    assert match, "the server did not log its instance id"
    return match.group(1)


@contextmanager
def owned_server(log: Path, settings: Mapping[str, str]) -> Iterator[LocalServer]:
    """A service of its own for a fixture: stopped at the end, where it must exit cleanly and
    leave none of its containers behind."""
    srv = start_server(log, settings)
    instance = instance_of(srv)
    yield srv
    code = srv.stop()
    leftovers = execbox_containers(instance)
    # uvicorn re-raises the signal after a clean shutdown, so -SIGTERM is a clean exit too.
    assert code in (0, -signal.SIGTERM), srv.log.read_text()[-3000:]
    assert "Application shutdown complete" in srv.log.read_text()
    assert not leftovers, f"containers left behind by the service: {leftovers}"


SERVER_SETTINGS = {
    "min_ready": "2",
    "max_total": "12",
    "max_starting": "2",
    "interrupt_grace_s": "1.5",
}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    if not docker_ok():
        pytest.fail("integration tests need a Docker engine and the sandbox image: run 'make test' (it sets both up)")
    with owned_server(tmp_path_factory.mktemp("server") / "main.log", SERVER_SETTINGS) as srv:
        yield srv


@pytest.fixture()
def url(server: LocalServer) -> str:
    return server.url
