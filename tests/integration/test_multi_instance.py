"""Two real instances with their own state dirs and node names on the one Docker engine
(issue 15): each keeps its own sessions, refuses the other's ids as wrong_node, describes itself
at /v1/info, and survives the other's kill -9 and restarts untouched; a restarted instance
removes its dead predecessor's containers, from its lock or, when its state dir was wiped, from
its node name; after the test no container of any of them is left."""

from __future__ import annotations

import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from execbox._models import ErrorEnvelope, Info
from tests.support.server import LocalServer, start_server

SETTINGS = {
    "min_ready": "1",
    "max_total": "3",
    "max_starting": "1",
    "batch_min_workers": "0",
}
# Node names are unique among the live instances on an engine (a start with a live one's name is
# refused): a suffix of their own, so another test's instances on the same engine never collide.
SUFFIX = secrets.token_hex(3)
NODE_A, NODE_B = f"node-a-{SUFFIX}", f"node-b-{SUFFIX}"


def containers(instance: str, *, status: str | None = None) -> set[str]:
    filters: dict[str, str | list[str]] = {"label": f"execbox.instance={instance}"}
    if status:
        filters["status"] = status
    return {c.id for c in docker.from_env().containers.list(all=True, filters=filters)}


def holds(server: LocalServer, session: str, instance: str) -> bool:
    """Whether the container holding ``session``'s kernel still runs among ``instance``'s. (A
    neighbour's spares are not compared: its pool retires those demand called for, by itself.)"""
    answer = httpx.get(f"{server.url}/v1/sessions/{session}", timeout=30)
    assert answer.status_code == 200, answer.text
    short = str(answer.json()["sandbox_id"])
    return any(c.startswith(short) for c in containers(instance, status="running"))


def info(server: LocalServer) -> Info:
    answer = httpx.get(server.url + "/v1/info", timeout=10)
    assert answer.status_code == 200, answer.text
    return Info.model_validate(answer.json())


def new_session(server: LocalServer, value: int) -> str:
    created = httpx.post(server.url + "/v1/sessions", json={}, timeout=60)
    assert created.status_code == 201, created.text
    session = str(created.json()["id"])
    assert run(server, session, f"x = {value}")["status"] == "ok"
    return session


def run(server: LocalServer, session: str, code: str) -> dict[str, object]:
    answer = httpx.post(f"{server.url}/v1/sessions/{session}/execute", json={"code": code}, timeout=60)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def start(log: Path, state_dir: Path, node: str) -> LocalServer:
    return start_server(log, {**SETTINGS, "state_dir": str(state_dir), "node_name": node})


@pytest.fixture()
def state_dirs() -> Iterator[tuple[Path, Path]]:
    # Short paths (kernel socket paths are limited), one per instance, as two hosts' pods would have.
    dirs = (Path(tempfile.mkdtemp(prefix="xb-a-")), Path(tempfile.mkdtemp(prefix="xb-b-")))
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def test_two_instances_on_one_engine_keep_their_sessions_through_each_others_crashes(
    tmp_path: Path, state_dirs: tuple[Path, Path]
) -> None:
    dir_a, dir_b = state_dirs
    servers: list[LocalServer] = []
    instances: list[str] = []
    try:
        b = start(tmp_path / "b.log", dir_b, NODE_B)
        servers.append(b)
        session_b = new_session(b, 2)
        a = start(tmp_path / "a.log", dir_a, NODE_A)  # started second: its reaper meets b's live kernels
        servers.append(a)
        info_a, info_b = info(a), info(b)
        instances += [info_a.instance_id, info_b.instance_id]
        assert (info_a.node, info_b.node) == (NODE_A, NODE_B)
        assert info_a.image.id and info_a.image.id.startswith("sha256:")
        assert run(b, session_b, "print(x + 40)")["stdout"] == "42\n"
        session_a = new_session(a, 1)
        assert session_a.endswith(f".{NODE_A}") and session_b.endswith(f".{NODE_B}")
        assert httpx.get(b.url + "/healthz").headers["x-execbox-node"] == NODE_B

        # A request for b's session sent to a is refused as such; it never becomes a new session.
        misrouted = httpx.post(f"{a.url}/v1/sessions/{session_b}/execute", json={"code": "x"}, timeout=30)
        assert misrouted.status_code == 404
        error = ErrorEnvelope.model_validate(misrouted.json()).error
        assert (error.code, error.reason) == ("session_not_found", "wrong_node")
        assert info(a).load.sessions == 1

        # kill -9 a: its containers stay (nothing could clean up), b's session is untouched.
        assert holds(b, session_b, info_b.instance_id)
        dead_a = containers(info_a.instance_id)
        assert dead_a
        a.stop(signal.SIGKILL)
        assert run(b, session_b, "print(x + 40)")["stdout"] == "42\n"

        # Restarted with its state dir: its lock is found free, so its containers go; b's stay.
        a = start(tmp_path / "a2.log", dir_a, NODE_A)
        servers.append(a)
        instances.append(info(a).instance_id)
        assert not containers(info_a.instance_id), "the dead predecessor's containers survived the restart"
        assert holds(b, session_b, info_b.instance_id), "a restart removed a live neighbour's"
        assert run(b, session_b, "print(x + 40)")["stdout"] == "42\n"

        # kill -9 again, and this time the state dir is wiped too (a pod restarted without a
        # hostPath): no lock to prove death, but the containers carry this node's name.
        previous = info(a).instance_id
        session_a = new_session(a, 3)
        assert containers(previous)
        a.stop(signal.SIGKILL)
        shutil.rmtree(dir_a)
        a = start(tmp_path / "a3.log", dir_a, NODE_A)
        servers.append(a)
        instances.append(info(a).instance_id)
        assert not containers(previous), "containers of this node's previous incarnation survived"
        gone = httpx.post(f"{a.url}/v1/sessions/{session_a}/execute", json={"code": "x"}, timeout=30)
        assert gone.status_code == 404  # the session died with its instance: reported, not remade
        assert holds(b, session_b, info_b.instance_id), "a restart removed a live neighbour's"
        assert run(b, session_b, "print(x + 40)")["stdout"] == "42\n"
    finally:
        for server in reversed(servers):
            server.stop()
    left = {instance: containers(instance) for instance in instances}
    assert not any(left.values()), f"containers left behind: {left}"
