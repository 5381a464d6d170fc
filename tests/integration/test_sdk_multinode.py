"""The SDK with a list of URLs, against three real execbox instances on 127.0.0.2, .3 and .4 (own
state dirs and node names, one Docker engine, no proxy): sessions keep their kernel on their
node across calls; a batch is split over the nodes (their /metrics show it) and comes back in
order; after kill -9 of one instance its sessions raise the explicit error, its batch chunks run
elsewhere, every result is right and in order, and no container is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from execbox import AsyncClient, Client, ErrorReason, SessionNotFoundError
from tests.conftest import docker_ok, execbox_containers, instance_of
from tests.support.cluster import free_port_on_all
from tests.support.server import LocalServer

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# Small pools: three instances share this machine's cores and engine with the rest of the suite,
# and a generous wait for a kernel: on a loaded 2-core machine a kernel start can take tens of seconds.
SETTINGS = {
    "min_ready": "1",
    "max_total": "4",
    "max_starting": "1",
    "batch_workers": "2",
    "batch_lanes": "2",
    "acquire_timeout_s": "30",
}
RETRIES = 5


@dataclass
class Instance:
    name: str
    host: str
    port: int
    state_dir: Path
    log_dir: Path
    server: LocalServer | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalServer:
        """``python -m execbox_server`` on this address, as tests/support/server.py starts one."""
        self.starts += 1
        env = {
            **os.environ,
            **{f"EXECBOX_{k.upper()}": v for k, v in SETTINGS.items()},
            "EXECBOX_HOST": self.host,
            "EXECBOX_PORT": str(self.port),
            "EXECBOX_NODE_NAME": self.name,
            "EXECBOX_STATE_DIR": str(self.state_dir),
        }
        log = self.log_dir / f"{self.name}.{self.starts}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "execbox_server"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        self.server = LocalServer(url=self.url, proc=proc, log=log, env=env)
        return self.server

    def batch_jobs(self) -> float:
        """Batch jobs this instance has run (its ``execbox_batch_jobs_total``, all statuses)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(
            float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith("execbox_batch_jobs_total{")
        )


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Instance]]:
    if not docker_ok():
        pytest.fail("integration tests need a Docker engine and the sandbox image: run 'make test' (it sets both up)")
    logs = tmp_path_factory.mktemp("sdk-multinode")
    port = free_port_on_all(HOSTS)
    # Short state dirs: kernel socket paths must stay under the unix limit. Node names of their own:
    # names are unique among the live instances on one engine, and other tests' clusters may be up.
    with tempfile.TemporaryDirectory(prefix="ebx-sdk-") as tmp:
        group = [
            Instance(f"sdk-{host.rpartition('.')[2]}", host, port, Path(tmp) / f"s{i}", logs)
            for i, host in enumerate(HOSTS)
        ]
        instances: set[str] = set()
        try:
            for node in group:
                node.state_dir.mkdir()
                node.start()
            for node in group:
                assert node.server is not None
                node.server.wait_ready()
                instances.add(instance_of(node.server))
            yield group
        finally:
            for node in group:
                if node.server is not None:
                    instances.add(instance_of(node.server))
                    node.server.stop()
        # A killed instance's containers are reaped by its restart (the test restarts it); none may remain.
        deadline = time.monotonic() + 60
        left = {i: execbox_containers(i) for i in instances}
        while any(left.values()) and time.monotonic() < deadline:
            time.sleep(1)
            left = {i: execbox_containers(i) for i in instances}
        assert not any(left.values()), f"containers left behind: {left}"


def test_sessions_keep_their_kernel_on_their_node_and_new_sessions_spread(nodes: list[Instance]) -> None:
    with Client([n.url for n in nodes], timeout=120, max_retries=RETRIES) as client:
        sessions = [client.session() for _ in nodes]
        try:
            homes = [s.id.partition(".")[2] for s in sessions]
            assert sorted(homes) == sorted(n.name for n in nodes)  # one on each: the least loaded first
            for session in sessions:
                session.run(f"calls = []; home = {session.base_url!r}")
            for i in range(20):
                for session in sessions:
                    assert session.run(f"calls.append({i}); len(calls)").text == str(i + 1)
            for session, node in zip(sessions, sorted(nodes, key=lambda n: homes.index(n.name)), strict=True):
                assert session.base_url == node.url
                assert session.run("home").text == repr(node.url)
                listed = httpx.get(node.url + "/v1/sessions", timeout=30).json()
                assert [s["id"] for s in listed] == [session.id]  # held by its node, by no other
                assert client.sessions.get(session.id).execution_count == 22  # found by the node in its id
                bare = session.id.partition(".")[0]  # an id without its node: each node is asked in turn
                assert client.sessions.get(bare).id == session.id
        finally:
            for session in sessions:
                session.close()


def test_a_map_is_split_over_the_nodes_and_returns_every_result_in_order(nodes: list[Instance]) -> None:
    before = {n.name: n.batch_jobs() for n in nodes}
    codes = [f"{i} * 7" for i in range(400)]
    with Client([n.url for n in nodes], timeout=120, max_retries=RETRIES) as client:
        out = client.map(codes)
    assert [e.text for e in out] == [str(i * 7) for i in range(400)]
    ran = {n.name: n.batch_jobs() - before[n.name] for n in nodes}
    assert all(count > 0 for count in ran.values()), ran  # every node ran part of it
    assert sum(ran.values()) == len(codes), ran  # and no job ran twice


async def test_the_async_client_keeps_sessions_on_their_node_and_spreads_a_map_too(nodes: list[Instance]) -> None:
    before = {n.name: n.batch_jobs() for n in nodes}
    async with AsyncClient([n.url for n in nodes], timeout=120, max_retries=RETRIES) as client:
        async with client.session() as session:
            home = next(n for n in nodes if n.url == session.base_url)
            assert session.id.endswith("." + home.name)
            for i in range(5):
                assert (await session.run(f"n = {i} if {i} == 0 else n + 1; n")).text == str(i)
        out = await client.map([f"{i} - 1" for i in range(200)])
    assert [e.text for e in out] == [str(i - 1) for i in range(200)]
    ran = {n.name: n.batch_jobs() - before[n.name] for n in nodes}
    assert all(count > 0 for count in ran.values()) and sum(ran.values()) == 200, ran


def test_kill_9_of_one_node_loses_its_sessions_explicitly_and_reruns_its_chunks_elsewhere(
    nodes: list[Instance],
) -> None:
    victim, survivors = nodes[1], [nodes[0], nodes[2]]
    before = {n.name: n.batch_jobs() for n in nodes}
    # Jobs slow enough that every node holds a chunk in flight when the victim dies.
    codes = [f"import time\ntime.sleep(0.05)\n{i} * 3" for i in range(300)]
    with Client([n.url for n in nodes], timeout=120, max_retries=RETRIES) as client:
        sessions = {s.id.partition(".")[2]: s for s in (client.session() for _ in nodes)}
        assert set(sessions) == {n.name for n in nodes}
        for name, session in sessions.items():
            session.run(f"x = {name!r}")
        out = []
        for execution in client.imap(codes):
            out.append(execution)
            if len(out) == 20:
                done_by_victim = victim.batch_jobs() - before[victim.name]
                assert victim.server is not None
                victim.server.proc.send_signal(signal.SIGKILL)
                victim.server.proc.wait()
        assert [e.text for e in out] == [str(i * 3) for i in range(300)]  # all right, in order, once each
        rerun = sum(n.batch_jobs() - before[n.name] for n in survivors)
        # The survivors ran everything the victim had not finished when it died: its chunks moved.
        # (Each of its 2 lanes may have finished a job or three between the metrics read and the kill
        # on a loaded machine; a job that was not rerun would also show as a wrong result above.)
        assert rerun >= len(codes) - done_by_victim - 6
        assert done_by_victim < len(codes) / 2

        with pytest.raises(SessionNotFoundError) as lost:
            sessions[victim.name].run("x")
        assert lost.value.reason == ErrorReason.NODE_UNAVAILABLE
        assert victim.name in str(lost.value)
        for survivor in survivors:
            assert sessions[survivor.name].run("x").text == repr(survivor.name)  # untouched
        assert client.run("1 + 1").text == "2"  # one-shots go to the living
        assert {s.id for s in client.sessions.list()} == {sessions[s.name].id for s in survivors}  # no new session
        for session in sessions.values():
            session.close()

    # Restarted with its state dir, the victim reaps the containers its dead predecessor left.
    assert victim.server is not None
    dead = instance_of(victim.server)
    victim.start().wait_ready()
    deadline = time.monotonic() + 60
    while execbox_containers(dead) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not execbox_containers(dead)
