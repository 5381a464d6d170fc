"""Three execbox instances on one Docker engine behind the real HAProxy, configured by the Helm chart.

Instances listen on 127.0.0.2, .3 and .4 with their own state dirs and node names; the proxy listens on
127.0.0.1 and routes session-bound requests by the node in the id, everything else to the least-loaded
ready node. The tests run in order on one cluster (module scope): the last one kills a node.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from execbox._models import BatchResponse, ErrorEnvelope, Execution
from tests.conftest import docker_ok, execbox_containers
from tests.support.cluster import Cluster, ZoneDns, cluster, metric, start_proxy
from tests.support.server import free_port

# Small pools: three instances share two cores with the rest of the suite.
SETTINGS = {
    "min_ready": "1",
    "max_total": "6",
    "max_starting": "1",
    # Two requests of the batch reach each node at once: one worker each, none waits for the other.
    "batch_workers": "2",
    "batch_lanes": "1",
    "batch_min_workers": "0",
    "batch_idle_s": "20",
    "interrupt_grace_s": "1.5",
    # Kernels start slowly on a busy machine: a request waits for one rather than failing.
    "acquire_timeout_s": "30",
}
BATCH_JOBS = 5000
BATCH_REQUESTS = 6  # one request runs on one node: the client splits a big batch (the SDK does this too)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not docker_ok():
        pytest.fail("integration tests need a Docker engine and the sandbox image: run 'make test'")
    logs = tmp_path_factory.mktemp("scaleout")
    instances: set[str] = set()
    with cluster(SETTINGS, workdir=logs) as group:
        yield group
        instances = group.instances | {n.instance() for n in group.nodes if n.server is not None}
    leftovers = set().union(*(execbox_containers(i) for i in instances))
    assert not leftovers, f"containers left behind by the instances: {leftovers}"


@pytest.fixture()
def http(nodes: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=nodes.proxy.url, timeout=120) as client:
        yield client


def node_of(session_id: str) -> str:
    return session_id.split(".", 1)[1]


def create_session(http: httpx.Client) -> str:
    r = http.post("/v1/sessions", json={})
    assert r.status_code == 201, r.text
    sid = str(r.json()["id"])
    assert r.headers["x-execbox-node"] == node_of(sid)
    return sid


def execute(http: httpx.Client, sid: str, code: str) -> Execution:
    r = http.post(f"/v1/sessions/{sid}/execute", json={"code": code})
    assert r.status_code == 200, r.text
    # Routed by the id alone: the instance that answered is the one the id names.
    assert r.headers["x-execbox-node"] == node_of(sid)
    return Execution.model_validate(r.json())


def test_a_session_keeps_its_kernel_state_across_100_calls_through_the_proxy(
    nodes: Cluster, http: httpx.Client
) -> None:
    sid = create_session(http)
    execute(http, sid, "counter = 0")
    for _ in range(100):
        execute(http, sid, "counter += 1")
    assert execute(http, sid, "print(counter)").stdout == "100\n"
    assert http.delete(f"/v1/sessions/{sid}").status_code == 204


def test_new_sessions_spread_across_the_nodes(nodes: Cluster, http: httpx.Client) -> None:
    sids = [create_session(http) for _ in range(6)]
    try:
        # leastconn with no request in flight goes round the ready nodes.
        assert {node_of(s) for s in sids} == {n.name for n in nodes.nodes}
    finally:
        for sid in sids:
            http.delete(f"/v1/sessions/{sid}")


def test_a_streamed_execution_reaches_the_client_while_it_runs(nodes: Cluster, http: httpx.Client) -> None:
    """NDJSON is not buffered: the code waits for a file the client uploads only after it has seen the
    first line, so a buffering proxy would deadlock it into its timeout."""
    sid = create_session(http)
    code = (
        "import os, time\nprint('waiting', flush=True)\n"
        "deadline = time.monotonic() + 60\n"
        "while not os.path.exists('go') and time.monotonic() < deadline:\n    time.sleep(0.05)\n"
        "print('released' if os.path.exists('go') else 'never released')"
    )
    with http.stream("POST", f"/v1/sessions/{sid}/execute/stream", json={"code": code, "timeout_s": 90}) as r:
        assert r.status_code == 200
        done = None
        for line in r.iter_lines():
            event = json.loads(line)
            if event["type"] == "stdout" and "waiting" in event["text"]:
                up = http.put(f"/v1/sessions/{sid}/files/go", content=b"1")
                assert up.status_code in (200, 201), up.text
            if event["type"] == "done":
                done = Execution.model_validate(event["execution"])
    assert done is not None and done.stdout == "waiting\nreleased\n"
    http.delete(f"/v1/sessions/{sid}")


def test_kernel_gateway_kernels_follow_their_node_through_the_proxy(nodes: Cluster, http: httpx.Client) -> None:
    """Gateway kernel ids are UUIDs without a node: the proxy learns each one's server from the
    X-Execbox-Kernel header of POST /api/kernels (a stick table)."""
    kernels = []
    for _ in range(3):
        r = http.post("/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        assert r.headers["x-execbox-kernel"] == r.json()["id"]
        kernels.append((r.json()["id"], r.headers["x-execbox-node"]))
    assert len({node for _, node in kernels}) > 1  # spread, so a wrong route would show
    for kid, node in kernels:
        for _ in range(3):
            got = http.get(f"/api/kernels/{kid}")
            assert got.status_code == 200, got.text
            assert got.headers["x-execbox-node"] == node
        assert http.delete(f"/api/kernels/{kid}").status_code == 204


def test_a_5000_job_batch_split_into_requests_runs_on_every_node(nodes: Cluster, http: httpx.Client) -> None:
    before = {n.name: metric(n.url, "execbox_batch_jobs_total") for n in nodes.nodes}
    jobs = [{"id": str(i), "code": f"print({i} * 2)"} for i in range(BATCH_JOBS)]
    size = -(-BATCH_JOBS // BATCH_REQUESTS)
    chunks = [jobs[i : i + size] for i in range(0, BATCH_JOBS, size)]

    def run(chunk: list[dict[str, str]]) -> tuple[str, BatchResponse]:
        r = http.post("/v1/batch", json={"jobs": chunk}, timeout=600)
        assert r.status_code == 200, r.text
        return r.headers["x-execbox-node"], BatchResponse.model_validate(r.json())

    with concurrent.futures.ThreadPoolExecutor(len(chunks)) as pool:
        answers = list(pool.map(run, chunks))
    results = [res for _, answer in answers for res in answer.results]
    assert [r.id for r in results] == [str(i) for i in range(BATCH_JOBS)]
    assert all(r.status == "ok" and r.stdout == f"{i * 2}\n" for i, r in enumerate(results))
    # Concurrent requests are spread by leastconn, and each node's own metrics count its share.
    ran = {n.name: metric(n.url, "execbox_batch_jobs_total") - before[n.name] for n in nodes.nodes}
    by_node: dict[str, int] = {}
    for node, answer in answers:
        by_node[node] = by_node.get(node, 0) + len(answer.results)
    assert {k: v for k, v in ran.items() if v} == by_node
    assert len(by_node) == len(nodes.nodes), by_node
    assert sum(ran.values()) == BATCH_JOBS


def test_unknown_node_is_reported_unavailable_by_the_proxy(nodes: Cluster, http: httpx.Client) -> None:
    r = http.post("/v1/sessions/s_0123456789abcdef01234567.no-such-node/execute", json={"code": "1"})
    assert r.status_code == 404
    error = ErrorEnvelope.model_validate(r.json()).error
    assert (error.code, error.reason) == ("session_not_found", "node_unavailable")
    assert "no-such-node" in error.message


def test_the_kubernetes_proxy_config_discovers_and_routes_nodes_by_dns(nodes: Cluster, tmp_path: Path) -> None:
    """The chart's default (DNS) configuration, with a loopback DNS server serving the headless
    Service's records as CoreDNS does: server-template finds the nodes, do-resolve routes sessions."""
    service = "execbox-nodes.execbox.svc.cluster.local"
    zone = {service: [n.host for n in nodes.nodes]} | {f"{n.name}.{service}": [n.host] for n in nodes.nodes}
    with ZoneDns(zone) as dns:
        values: dict[str, Any] = {
            "port": nodes.nodes[0].port,
            "proxy": {
                "bind": "127.0.0.1",
                "maxconn": 1000,
                "service": {"port": free_port()},
                "statsPort": free_port(),
                "discovery": {"mode": "dns", "maxNodes": 4, "nameserver": dns.address},
                "healthCheck": {"interval": "500ms", "fall": 2, "rise": 1},
            },
        }
        proxy = start_proxy(values, tmp_path, servers_up=len(nodes.nodes), name="haproxy-dns")
        try:
            with httpx.Client(base_url=proxy.url, timeout=120) as http:
                sids = [create_session(http) for _ in range(3)]
                assert {node_of(s) for s in sids} == {n.name for n in nodes.nodes}
                for sid in sids:
                    execute(http, sid, f"me = {sid!r}")
                for sid in sids:
                    assert execute(http, sid, "print(me)").stdout == f"{sid}\n"
                    assert http.delete(f"/v1/sessions/{sid}").status_code == 204
                # A name that is no endpoint of the Service does not resolve: the agreed 404, no connection.
                r = http.get(f"/v1/sessions/s_{'0' * 24}.10-9-9-9")
                assert r.status_code == 404 and "x-execbox-node" not in r.headers
                error = ErrorEnvelope.model_validate(r.json()).error
                assert (error.code, error.reason) == ("session_not_found", "node_unavailable")
            assert f"10-9-9-9.{service}" in dns.queries
        finally:
            proxy.stop()


def _session_sandboxes(http: httpx.Client, sids: list[str]) -> set[str]:
    """Short ids of the containers that hold these sessions' kernels."""
    shorts = set()
    for sid in sids:
        r = http.get(f"/v1/sessions/{sid}")
        assert r.status_code == 200, r.text
        shorts.add(str(r.json()["sandbox_id"]))
    return shorts


def unavailable(http: httpx.Client, sid: str) -> tuple[ErrorEnvelope, float]:
    t0 = time.monotonic()
    r = http.post(f"/v1/sessions/{sid}/execute", json={"code": "print(1)"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 404, r.text
    assert "x-execbox-node" not in r.headers  # the proxy's answer, not an instance's
    return ErrorEnvelope.model_validate(r.json()), elapsed


def test_a_killed_node_loses_only_its_sessions_and_its_restart_reaps_only_its_containers(
    nodes: Cluster, http: httpx.Client, record_property: pytest.RecordProperty
) -> None:
    # One session per node, each with state.
    sessions: dict[str, str] = {}
    extra: list[str] = []
    for _ in range(9):
        sid = create_session(http)
        if node_of(sid) in sessions:
            extra.append(sid)  # kept until the end: deleting would drain the small warm pools
        else:
            sessions[node_of(sid)] = sid
            execute(http, sid, f"mark = {sid!r}")
        if len(sessions) == len(nodes.nodes):
            break
    assert len(sessions) == len(nodes.nodes)
    victim = nodes.nodes[1]
    survivors = [n for n in nodes.nodes if n is not victim]
    old_instance = victim.instance()
    # The containers that hold the survivors' sessions. (Not all of theirs: a pool retires the
    # spares a burst of demand called for, so a survivor's spare may go by its own decision.)
    theirs = {
        n.name: _session_sandboxes(http, [sessions[n.name], *(s for s in extra if node_of(s) == n.name)])
        for n in survivors
    }
    orphans = execbox_containers(old_instance)
    assert orphans

    victim.kill()
    # Before HAProxy's health check notices: the connection is refused, no retry, the agreed 404.
    first, first_s = unavailable(http, sessions[victim.name])
    nodes.proxy.wait_server(f"node_{victim.name}", victim.name, up=False)
    # After: answered by the proxy without trying the node.
    second, second_s = unavailable(http, sessions[victim.name])
    for envelope in (first, second):
        assert (envelope.error.code, envelope.error.reason) == ("session_not_found", "node_unavailable")
        assert victim.name in envelope.error.message
    record_property("unavailable_latency_s", {"before_check": first_s, "after_check": second_s})

    # The other nodes' sessions kept their kernels.
    for node in survivors:
        sid = sessions[node.name]
        assert execute(http, sid, "print(mark)").stdout == f"{sid}\n"

    # The restarted node (same name, same state dir) reaps its predecessor's containers, no one else's.
    victim.start()
    nodes.instances.add(victim.instance())
    deadline = time.monotonic() + 60
    while execbox_containers(old_instance) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not execbox_containers(old_instance)
    for node in survivors:
        alive = execbox_containers(node.instance())
        assert all(any(c.startswith(short) for c in alive) for short in theirs[node.name]), (theirs, alive)
        sid = sessions[node.name]
        assert execute(http, sid, "print(mark)").stdout == f"{sid}\n"
    # Its old session is gone for good: the restarted instance says so itself (404, never a new kernel).
    nodes.proxy.wait_server(f"node_{victim.name}", victim.name, up=True)
    r = http.post(f"/v1/sessions/{sessions[victim.name]}/execute", json={"code": "print(1)"})
    assert r.status_code == 404 and r.headers["x-execbox-node"] == victim.name
    assert ErrorEnvelope.model_validate(r.json()).error.code == "session_not_found"
    for sid in [sessions[n.name] for n in survivors] + [s for s in extra if node_of(s) != victim.name]:
        assert http.delete(f"/v1/sessions/{sid}").status_code == 204
