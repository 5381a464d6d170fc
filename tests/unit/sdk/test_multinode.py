"""A client of several execbox nodes, at the HTTP seam: sessions stay on their node and report its
loss, never a new session; new work goes to the least-loaded healthy node; batches spread over
the nodes by capacity, come back whole and in input order, and move off a node that dies
without a result lost or reported twice. One URL is the single-node client exactly."""

from __future__ import annotations

import json
import secrets
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from execbox import (
    APIConnectionError,
    AsyncClient,
    Client,
    ErrorCode,
    ErrorReason,
    ExecutionStatus,
    JobStatus,
    PoolExhaustedError,
    SessionNotFoundError,
)
from execbox import _nodes as nodes_module
from execbox._batch import BatchRun, ChunkLimits
from execbox._nodes import Discovery, Node, NodeSet, Spread, parse_urls

NOW = "2026-12-03T09:00:00Z"


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def envelope(status: int, code: str, message: str = "x", reason: str | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "reason": reason}})


@dataclass
class FakeNode:
    """One execbox instance as its HTTP answers show it: sessions with state, one-shots, batches."""

    name: str
    host: str = ""  # its address in URLs; its name by default
    lanes: int = 2
    workers: int = 4
    max_kernels: int = 8
    leased: int = 0
    accepting: bool = True
    alive: bool = True
    sessions: dict[str, int] = field(default_factory=dict)  # id -> executions so far (its "state")
    ran: list[str] = field(default_factory=list)  # codes of batch jobs whose result it sent
    chunks: list[int] = field(default_factory=list)  # jobs per batch request
    paths: list[str] = field(default_factory=list)
    die_after: int | None = None  # batch results sent before it dies mid-stream
    asynchronous: bool = False  # answers an httpx.AsyncClient (a cut stream is then an async one)
    reset_next: str | None = None  # the next request's connection resets: "blip", or "death" of the node

    def info(self) -> dict[str, Any]:
        return {
            "node": self.name,
            "instance_id": "0" * 12,
            "version": "0.1.0",
            "accepting": self.accepting,
            "image": {"name": "img", "id": None, "digest": None},
            "capacity": {
                "max_sessions": 64,
                "max_kernels": self.max_kernels,
                "min_ready": 1,
                "batch_workers": self.workers,
                "batch_lanes": self.lanes,
                "batch_max_jobs": 10_000,
                "max_batch_body_bytes": 64 << 20,
                "max_code_bytes": 1 << 20,
                "cpus": 2,
            },
            "load": {
                "sessions": len(self.sessions),
                "sessions_busy": 0,
                "kernels_ready": 1,
                "kernels_starting": 0,
                "kernels_leased": self.leased + len(self.sessions),
                "kernel_waiters": 0,
                "batch_workers_alive": self.workers,
                "batch_workers_busy": 0,
                "load_average_1m": 0.1,
            },
        }

    def session(self, sid: str) -> dict[str, Any]:
        limits = {"memory_mb": 512, "cpus": 1.0, "timeout_s": 30.0}
        times = {"created_at": NOW, "last_used_at": NOW, "expires_at": NOW}
        return {"id": sid, "limits": limits, **times, "execution_count": self.sessions.get(sid, 0)}

    def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(f"{request.method} {path}")
        if path == "/v1/info":
            return httpx.Response(200, json=self.info())
        if path == "/v1/execute":
            return httpx.Response(200, json={"status": "ok", "stdout": self.name})
        if path == "/v1/batch/stream":
            return self.batch(request)
        if path == "/v1/sessions":
            if request.method == "GET":
                return httpx.Response(200, json=[self.session(sid) for sid in self.sessions])
            sid = f"s_{secrets.token_hex(12)}.{self.name}"
            self.sessions[sid] = 0
            return httpx.Response(201, json=self.session(sid))
        parts = path.split("/")  # "", v1, sessions, id, ...
        sid = parts[3]
        if not sid.endswith("." + self.name):
            return envelope(404, "session_not_found", f"{sid} lives on another node", "wrong_node")
        if sid not in self.sessions:
            return envelope(404, "session_not_found")
        if request.method == "DELETE":
            del self.sessions[sid]
            return httpx.Response(204)
        if parts[-1] == "execute":
            self.sessions[sid] += 1
            return httpx.Response(200, json={"status": "ok", "stdout": f"{self.name}:{self.sessions[sid]}"})
        return httpx.Response(200, json=self.session(sid))

    def batch(self, request: httpx.Request) -> httpx.Response:
        jobs = json.loads(request.content)["jobs"]
        self.chunks.append(len(jobs))
        lines = [{"type": "result", "index": i, "status": "ok", "stdout": job["code"]} for i, job in enumerate(jobs)]
        lines.reverse()  # completion order is not input order
        if self.die_after is None:
            self.ran += [line["stdout"] for line in lines]
            summary = {"type": "summary", "total": len(jobs), "by_status": {}, "wall_ms": 1.0}
            return httpx.Response(200, content=ndjson(*lines, summary))
        sent, self.die_after = lines[: self.die_after], None
        self.ran += [line["stdout"] for line in sent]

        def body() -> Iterator[bytes]:
            yield ndjson(*sent)
            self.alive = False  # killed mid-stream: the connection resets, later ones are refused
            raise httpx.ReadError("connection reset by peer")

        async def async_body() -> AsyncIterator[bytes]:
            for part in body():
                yield part

        return httpx.Response(200, content=async_body() if self.asynchronous else body())


class FakeCluster:
    """Several :class:`FakeNode` at http://<name>:8000; a dead node refuses connections."""

    def __init__(self, *nodes: FakeNode) -> None:
        self.nodes = {node.host or node.name: node for node in nodes}
        self.lock = threading.Lock()  # lanes of a sync client call from several threads

    @property
    def urls(self) -> list[str]:
        return [f"http://{host}:8000" for host in self.nodes]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            node = self.nodes[request.url.host]
            if not node.alive:
                raise httpx.ConnectError("connection refused", request=request)
            if node.reset_next:
                node.alive = node.reset_next != "death"
                node.reset_next = None
                node.paths.append(f"{request.method} {request.url.path}")
                raise httpx.RemoteProtocolError("server disconnected without sending a response", request=request)
            response = node.answer(request)
        response.headers["X-Execbox-Node"] = node.name
        return response

    def client(self, urls: str | list[str] | None = None, **kw: Any) -> Client:
        return Client(urls or self.urls, http_client=httpx.Client(transport=httpx.MockTransport(self)), **kw)

    def async_client(self, urls: str | list[str] | None = None, **kw: Any) -> AsyncClient:
        async def handler(request: httpx.Request) -> httpx.Response:
            return self(request)

        for node in self.nodes.values():
            node.asynchronous = True
        transport = httpx.MockTransport(handler)
        return AsyncClient(urls or self.urls, http_client=httpx.AsyncClient(transport=transport), **kw)

    def count(self, what: str) -> Counter[str]:
        return Counter({name: sum(1 for p in node.paths if p == what) for name, node in self.nodes.items()})


def three(**kw: Any) -> FakeCluster:
    return FakeCluster(FakeNode("node-a", **kw), FakeNode("node-b", **kw), FakeNode("node-c", **kw))


# ---------------------------------------------------------------------- sessions


def test_each_session_stays_on_the_node_that_created_it_and_new_sessions_spread() -> None:
    cluster = three()
    with cluster.client() as client:
        sessions = [client.session() for _ in range(6)]
        for _ in range(3):
            for session in sessions:
                session.run("x")
        homes = [session.id.partition(".")[2] for session in sessions]
        for session, home in zip(sessions, homes, strict=True):
            assert session.base_url == f"http://{home}:8000"
            assert session.run("x").stdout == f"{home}:4"  # its state: every run reached the same kernel
            assert client.sessions.get(session.id).execution_count == 4
    assert Counter(homes) == {"node-a": 2, "node-b": 2, "node-c": 2}
    for node in cluster.nodes.values():
        assert all(p.split("/")[3].endswith(node.name) for p in node.paths if p.startswith("POST /v1/sessions/"))


def test_a_dead_nodes_session_raises_session_not_found_node_unavailable_and_no_session_is_made() -> None:
    cluster = three()
    with cluster.client() as client:
        sessions = {s.id.partition(".")[2]: s for s in (client.session() for _ in range(3))}
        cluster.nodes["node-b"].alive = False
        creates = sum(cluster.count("POST /v1/sessions").values())
        with pytest.raises(SessionNotFoundError) as lost:
            sessions["node-b"].run("x")
        assert lost.value.reason == ErrorReason.NODE_UNAVAILABLE and lost.value.code == ErrorCode.SESSION_NOT_FOUND
        assert "node-b" in str(lost.value) and "state is lost" in str(lost.value)
        with pytest.raises(SessionNotFoundError):
            client.sessions.get(sessions["node-b"].id)
        sessions["node-b"].close()  # a lost session closes quietly
        assert sessions["node-a"].run("y").ok and sessions["node-c"].run("y").ok
        assert {s.id for s in client.sessions.list()} == {sessions["node-a"].id, sessions["node-c"].id}
        assert sum(cluster.count("POST /v1/sessions").values()) == creates  # never a silent new session


def test_a_node_killed_during_a_call_reports_the_session_lost_but_a_blip_stays_a_connection_error() -> None:
    cluster = three()
    with cluster.client() as client:
        sessions = {s.id.partition(".")[2]: s for s in (client.session() for _ in range(3))}
        # The connection resets and the node answers a probe: it still holds the session.
        cluster.nodes["node-a"].reset_next = "blip"
        with pytest.raises(APIConnectionError) as blip:
            sessions["node-a"].run("x")
        assert not isinstance(blip.value, SessionNotFoundError)
        assert sessions["node-a"].run("x").stdout == "node-a:1"
        # The connection resets and the node is gone: the session is lost.
        cluster.nodes["node-c"].reset_next = "death"
        with pytest.raises(SessionNotFoundError) as lost:
            sessions["node-c"].run("x")
        assert lost.value.reason == "node_unavailable"


def test_a_session_call_refused_by_its_busy_node_is_retried_there_and_never_sent_elsewhere() -> None:
    cluster = three()
    with cluster.client(max_retries=1) as client:
        session = client.session()
        home = cluster.nodes[session.id.partition(".")[2]]
        original = home.answer
        refusals = iter([envelope(503, "pool_exhausted"), envelope(503, "pool_exhausted")])

        def busy(request: httpx.Request) -> httpx.Response:
            refused = next(refusals, None) if request.url.path.endswith("/execute") else None
            if refused is not None:
                home.paths.append(f"{request.method} {request.url.path}")
                refused.headers["Retry-After"] = "0"
                return refused
            return original(request)

        home.answer = busy  # type: ignore[method-assign]
        with pytest.raises(PoolExhaustedError):
            session.run("x")  # refused twice: one try and one retry, both on its node
        assert session.run("x").stdout == f"{home.name}:1"
    executes = cluster.count(f"POST /v1/sessions/{session.id}/execute")
    assert executes[home.name] == 3 and sum(executes.values()) == 3


def test_the_envelopes_reason_maps_to_session_not_found_whatever_status_a_proxy_sends() -> None:
    answers = iter([envelope(503, "session_not_found", "no backend", "node_unavailable"), envelope(404, "x", "y")])
    sent: list[str] = []

    def proxy(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return next(answers)

    client = Client("http://proxy", http_client=httpx.Client(transport=httpx.MockTransport(proxy)))
    with pytest.raises(SessionNotFoundError) as lost:
        client.sessions.get("s_0123456789abcdef01234567.node-b")
    assert lost.value.status_code == 503 and lost.value.reason == "node_unavailable"
    assert sent == ["/v1/sessions/s_0123456789abcdef01234567.node-b"]  # a lost node is not an overload to retry


def test_an_id_naming_a_node_no_url_serves_is_reported_not_sent_elsewhere() -> None:
    cluster = three()
    with cluster.client() as client, pytest.raises(SessionNotFoundError) as lost:
        client.sessions.get("s_0123456789abcdef01234567.node-z")
    assert lost.value.reason == "node_unavailable"
    assert not any(p.startswith("GET /v1/sessions/") for n in cluster.nodes.values() for p in n.paths)


# ---------------------------------------------------------------------- new work


def test_one_shot_runs_go_to_the_least_loaded_node() -> None:
    cluster = three()
    cluster.nodes["node-a"].leased = 7
    cluster.nodes["node-b"].leased = 3
    with cluster.client() as client:
        assert client.run("x").stdout == "node-c"
        ran = Counter(client.run("x").stdout for _ in range(5))
    assert ran["node-a"] == 0  # the fullest never, while the others have room


def test_new_work_skips_a_dead_or_refusing_node_at_once_without_spending_a_retry() -> None:
    cluster = three()
    cluster.nodes["node-a"].alive = False
    cluster.nodes["node-b"].accepting = False  # warming: /v1/info says so
    with cluster.client(max_retries=0) as client:
        assert {client.run("x").stdout for _ in range(4)} == {"node-c"}
        cluster.nodes["node-c"].alive = False
        cluster.nodes["node-a"].alive = True  # back, but down until probed again
        with pytest.raises(APIConnectionError):
            client.run("x")  # every node down or refusing, no retries allowed: the failure is reported


def test_a_node_that_refused_connections_is_probed_again_later_and_used() -> None:
    clock = [0.0]
    nodes = NodeSet(["http://a", "http://b"], clock=lambda: clock[0])
    a, b = nodes.nodes
    nodes.unreachable(a)
    assert nodes.pick() is b and a not in nodes.due()
    clock[0] += 1.5  # past the first back-off
    assert a in nodes.due()
    nodes.probed(a, None)
    assert a.usable(clock[0])
    nodes.unreachable(a)
    nodes.unreachable(a)  # a second failure in a row waits longer
    clock[0] += 1.5
    assert a not in nodes.due()


def test_a_node_that_answers_a_call_is_up_again_so_a_later_cut_is_probed_not_called_a_loss() -> None:
    cluster = three()
    with cluster.client() as client:
        session = client.session()
        home = cluster.nodes[session.id.partition(".")[2]]
        home.alive = False
        with pytest.raises(SessionNotFoundError):
            session.run("x")  # refused: lost, as far as the client can tell
        home.alive = True  # it was a blip after all (the session is still there)
        assert session.run("x").stdout == f"{home.name}:1"
        home.reset_next = "blip"
        with pytest.raises(APIConnectionError) as cut:
            session.run("x")
        assert not isinstance(cut.value, SessionNotFoundError)  # a probe found it up


def test_one_url_never_probes_and_sends_exactly_what_it_always_did() -> None:
    seen: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        if request.url.path == "/v1/batch/stream":
            jobs = json.loads(request.content)["jobs"]
            return httpx.Response(200, content=ndjson(*({"type": "result", "index": i} for i in range(len(jobs)))))
        return httpx.Response(200, json={"status": "ok"})

    with Client("http://one:8000/", http_client=httpx.Client(transport=httpx.MockTransport(server))) as client:
        client.run("x")
        client.map(["a", "b"])
        assert client.base_urls == ["http://one:8000"]
    assert seen == ["POST http://one:8000/v1/execute", "POST http://one:8000/v1/batch/stream"]


def test_urls_come_from_a_list_or_from_execbox_url_with_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBOX_URL", "http://a:1, http://b:1/")
    assert parse_urls(None) == ["http://a:1", "http://b:1"]
    assert parse_urls(["http://c"]) == ["http://c"]
    with pytest.raises(ValueError, match="twice"):
        parse_urls(["http://a", "http://a/"])
    with pytest.raises(ValueError, match="at least one"):
        parse_urls([])


# ---------------------------------------------------------------------- batches


def test_a_map_is_split_over_the_nodes_by_capacity_and_comes_back_in_input_order() -> None:
    cluster = FakeCluster(FakeNode("node-a", lanes=1), FakeNode("node-b", lanes=2), FakeNode("node-c", lanes=4))
    codes = [f"print({i})" for i in range(1_000)]
    with cluster.client() as client:
        out = client.map(codes, progress=False)
    assert [e.stdout for e in out] == codes
    assert sorted(code for node in cluster.nodes.values() for code in node.ran) == sorted(codes)  # each once
    assert all(node.ran for node in cluster.nodes.values())
    # A chunk holds as many jobs as the node runs at once, times the same depth: 1, 2 and 4 lanes.
    assert {name: max(node.chunks) for name, node in cluster.nodes.items()} == {
        "node-a": 16,
        "node-b": 32,
        "node-c": 64,
    }


def test_a_node_dying_mid_batch_has_its_missing_jobs_rerun_elsewhere_and_none_reported_twice() -> None:
    cluster = three()
    cluster.nodes["node-b"].die_after = 5
    codes = [f"job-{i}" for i in range(600)]
    with cluster.client() as client:
        results = list(client.batch_stream(codes))
        assert [r.status for r in results].count(JobStatus.OK) == len(codes)
        assert sorted(r.index for r in results) == list(range(len(codes)))  # one result per input
        assert all(r.stdout == codes[r.index] for r in results)
        assert 0 < len(cluster.nodes["node-b"].ran) < len(codes)
        # the dead node's sessions and later batches: it is skipped
        assert [e.stdout for e in client.map(codes[:50])] == codes[:50]


def test_when_every_node_fails_the_rest_are_service_errors_never_verdicts() -> None:
    cluster = three()
    for node in cluster.nodes.values():
        node.die_after = 2
    with cluster.client(max_retries=0) as client:
        out = client.map([f"c{i}" for i in range(300)])
    assert len(out) == 300
    ok = [e for e in out if e.ok]
    lost = [e for e in out if e.status is ExecutionStatus.SANDBOX_LOST]
    assert len(ok) + len(lost) == 300 and lost and all(not e.is_verdict for e in lost)
    assert all(e.stdout == f"c{i}" for i, e in enumerate(out) if e.ok)


def test_a_spread_stops_reading_inputs_while_one_slow_node_holds_the_oldest_jobs() -> None:
    nodes = NodeSet(["http://a", "http://b"])
    run = BatchRun(iter(f"c{i}" for i in range(100_000)), concurrency=None, limits=ChunkLimits())
    spread = Spread(run, nodes, None, max_failovers=4)
    first = spread.plan()
    slow = first[0]  # never finishes
    for _ in range(1_000):
        lanes = [lane for lane in spread.open if lane is not slow]
        if not lanes:
            break
        for lane in lanes:
            for i in range(len(lane.chunk)):
                spread.accept(lane, _result(i))
            spread.finished(lane)
        spread.plan()
    assert run.read <= spread.window + slow.chunk.jobs[0].index + len(slow.chunk)
    assert run.read < 100_000


def test_a_stuck_node_stops_the_client_reading_inputs_at_its_window_until_it_answers() -> None:
    cluster = three()
    stuck, release = cluster.nodes["node-a"], threading.Event()
    answer = stuck.batch

    def hold(request: httpx.Request) -> httpx.Response:
        content = answer(request).content

        def body() -> Iterator[bytes]:
            release.wait(60)  # in the lane's thread, outside the cluster's lock
            yield content

        return httpx.Response(200, content=body())

    stuck.batch = hold  # type: ignore[method-assign]
    read = [0]
    at_release: list[int] = []

    def inputs() -> Iterator[str]:
        for i in range(10_000):
            read[0] += 1
            yield f"c{i}"

    def let_go() -> None:
        at_release.append(read[0])
        release.set()

    timer = threading.Timer(1.0, let_go)  # long enough for the others to run far past any window
    timer.start()
    try:
        with cluster.client() as client:
            results = sum(1 for _ in client.batch_stream(inputs()))
    finally:
        release.set()
        timer.cancel()
    assert results == 10_000
    # node-a held the oldest jobs: the others ran ahead by the window (2,000 here) and one round of
    # chunks over the nodes (3 x 2 x 32), no more; without the window they read 4,896 in that second.
    assert at_release[0] <= 2_000 + 3 * 2 * 32, at_release


def _result(index: int) -> Any:
    from execbox import JobResult

    return JobResult(index=index, status=JobStatus.OK)


def test_concurrency_is_shared_between_the_nodes() -> None:
    cluster = three()
    seen: list[int | None] = []
    original = cluster.nodes["node-a"].batch

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content).get("concurrency"))
        return original(request)

    cluster.nodes["node-a"].batch = record  # type: ignore[method-assign]
    with cluster.client() as client:
        client.batch([f"c{i}" for i in range(200)], concurrency=6)
    assert seen and set(seen) == {2}


def test_a_chunk_refused_for_its_size_is_split_not_moved() -> None:
    cluster = three()
    for node in cluster.nodes.values():
        original = node.batch

        def limited(
            request: httpx.Request, original: Callable[[httpx.Request], httpx.Response] = original
        ) -> httpx.Response:
            jobs = len(json.loads(request.content)["jobs"])
            if jobs > 10:
                return envelope(413, "request_too_large", f"{jobs} jobs; at most 10 (EXECBOX_BATCH_MAX_JOBS)")
            return original(request)

        node.batch = limited  # type: ignore[method-assign]
    with cluster.client() as client:
        out = client.batch([f"c{i}" for i in range(100)])
        assert client._core.batch_limits.max_jobs == 10
    assert sum(len(node.ran) for node in cluster.nodes.values()) == 100  # refused chunks ran nothing
    assert [r.stdout for r in out] == [f"c{i}" for i in range(100)]


# ---------------------------------------------------------------------- the async twin


async def test_the_async_twin_sticks_sessions_spreads_batches_and_fails_over() -> None:
    cluster = three()
    cluster.nodes["node-a"].die_after = 3
    codes = [f"job-{i}" for i in range(400)]
    async with cluster.async_client() as client:
        out = await client.map(codes)
        assert [e.stdout for e in out] == codes
        assert sum(len(n.ran) for n in cluster.nodes.values()) == len(codes)
        session = await client.session()
        home = session.id.partition(".")[2]
        assert home != "node-a"  # dead since the batch
        assert (await session.run("x")).stdout == f"{home}:1"
        assert (await session.run("x")).stdout == f"{home}:2"
        cluster.nodes[home].alive = False
        with pytest.raises(SessionNotFoundError) as lost:
            await session.run("x")
        assert lost.value.reason == "node_unavailable"
        await session.close()
        ordered = [e.stdout async for e in client.imap(codes[:100])]
        assert ordered == codes[:100]


def test_a_node_learns_its_name_from_the_header_and_the_ids_it_makes() -> None:
    node = Node("http://x")
    nodes = NodeSet(["http://x", "http://y"])
    nodes.named_by(nodes.nodes[0], "node-x")
    assert nodes.named("node-x") is nodes.nodes[0] and node.name is None


# ---------------------------------------------------------------------- discovery


@pytest.fixture()
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A resolver for ``*.test`` names (no real lookup leaves the test), re-read on every resolution."""
    records: dict[str, list[str]] = {}

    def getaddrinfo(host: str, port: int, *args: Any, **kw: Any) -> list[tuple[Any, ...]]:
        if host not in records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in records[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(nodes_module, "DISCOVERY_TTL_S", 0.0)  # resolve again at every refresh
    return records


def ip_cluster() -> FakeCluster:
    return FakeCluster(*(FakeNode(f"node-{i}", host=f"10.9.0.{i}") for i in (1, 2, 3)))


def test_a_dns_url_stands_for_every_address_its_name_resolves_to_as_the_answer_changes(
    dns: dict[str, list[str]],
) -> None:
    cluster = ip_cluster()
    dns["nodes.test"] = ["10.9.0.1", "10.9.0.2"]
    with cluster.client("dns+http://nodes.test:8000") as client:
        first = [client.session() for _ in range(4)]
        assert Counter(s.id.partition(".")[2] for s in first) == {"node-1": 2, "node-2": 2}
        assert [e.stdout for e in client.map([f"c{i}" for i in range(200)])] == [f"c{i}" for i in range(200)]
        assert cluster.nodes["10.9.0.1"].ran and cluster.nodes["10.9.0.2"].ran
        dns["nodes.test"] = ["10.9.0.2", "10.9.0.3"]  # node-1 left the Service, node-3 joined
        assert client.base_urls == ["http://10.9.0.1:8000", "http://10.9.0.2:8000"]
        later = [client.session() for _ in range(4)]
        assert client.base_urls == ["http://10.9.0.2:8000", "http://10.9.0.3:8000"]
        assert {s.id.partition(".")[2] for s in later} == {"node-2", "node-3"}
        on_node_1 = next(s for s in first if s.id.endswith("node-1"))
        assert on_node_1.run("x").stdout == "node-1:1"  # a session keeps its node while it answers
        del dns["nodes.test"]  # a failed resolution keeps the nodes found last
        assert client.run("x").ok and len(client.base_urls) == 2


async def test_the_async_client_discovers_by_dns_too_and_says_when_a_name_resolves_to_nothing(
    dns: dict[str, list[str]],
) -> None:
    cluster = ip_cluster()
    dns["nodes.test"] = ["10.9.0.3"]
    async with cluster.async_client("dns+http://nodes.test:8000") as client:
        assert (await client.run("x")).stdout == "node-3"
    dns["empty.test"] = []
    async with cluster.async_client("dns+http://empty.test:8000") as client:
        with pytest.raises(APIConnectionError, match="resolved to no address"):
            await client.run("x")
        out = await client.map(["a", "b"])  # a batch's outage is data, as on one node
        assert [e.status for e in out] == [ExecutionStatus.SANDBOX_LOST] * 2
        assert "resolved to no address" in (out[0].message or "")


def test_a_discovery_url_must_name_http_and_a_host() -> None:
    with pytest.raises(ValueError, match="dns\\+http://name:port"):
        Client("dns+ftp://nodes.test")
    assert Discovery.parse("dns+https://n.test/prefix/").urls(["::1", "10.0.0.1"]) == [
        "https://10.0.0.1:443/prefix",
        "https://[::1]:443/prefix",
    ]
