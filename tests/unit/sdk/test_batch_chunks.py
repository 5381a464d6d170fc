"""Batches of any size at the transport seam: chunks within the server's limits, learned from its
refusals; results in input order; inputs read lazily; failures of the service kept as data that is
never a verdict, and a caller's mistake raised."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from execbox import AsyncClient, AuthenticationError, Client, ExecutionStatus, JobResult, JobStatus
from execbox._batch import BatchRun, ChunkLimits
from execbox._progress import _NoBar, _TextBar, progress_bar


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def refusal(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


@dataclass
class FakeBatchServer:
    """``POST /v1/batch/stream`` with the real server's limits and its refusal messages.

    It answers each job with ``stdout`` = its code, in reverse (completion) order. ``script``
    maps a request number (0-based, refused ones included) to a response that replaces it.
    """

    max_jobs: int = 10_000
    max_body: int = 64 * 1024 * 1024
    max_code: int = 1_000_000
    script: dict[int, httpx.Response] = field(default_factory=dict)
    cut_after: dict[int, int] = field(default_factory=dict)  # request number -> results before a cut
    requests: list[int] = field(default_factory=list)  # jobs per request, refused ones too
    bodies: list[int] = field(default_factory=list)
    on_request: Any = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/batch/stream"
        number = len(self.requests)
        body = request.content
        jobs = json.loads(body)["jobs"]
        self.requests.append(len(jobs))
        self.bodies.append(len(body))
        if self.on_request is not None:
            self.on_request()
        if number in self.script:
            return self.script[number]
        if len(body) > self.max_body:
            return refusal(
                413,
                "request_too_large",
                f"request body is larger than {self.max_body} bytes; send less (EXECBOX_MAX_BATCH_BODY_BYTES)",
            )
        if len(jobs) > self.max_jobs:
            return refusal(
                413,
                "request_too_large",
                f"{len(jobs)} jobs in one batch; this server accepts at most {self.max_jobs} "
                "(EXECBOX_BATCH_MAX_JOBS): split the batch",
            )
        for job in jobs:
            size = len(job["code"].encode())
            if size > self.max_code:
                return refusal(
                    413,
                    "request_too_large",
                    f"code is {size} bytes; this server accepts at most {self.max_code} (EXECBOX_MAX_CODE_BYTES)",
                )
        lines = [
            {"type": "result", "index": i, "id": job.get("id"), "status": "ok", "stdout": job["code"]}
            for i, job in reversed(list(enumerate(jobs)))
        ]
        if number in self.cut_after:
            return httpx.Response(200, content=ndjson(*lines[: self.cut_after[number]]))
        lines.append({"type": "summary", "total": len(jobs), "by_status": {"ok": len(jobs)}, "wall_ms": 1.0})
        return httpx.Response(200, content=ndjson(*lines))


def client_for(server: FakeBatchServer, **kw: Any) -> Client:
    return Client("http://execbox.test", http_client=httpx.Client(transport=httpx.MockTransport(server)), **kw)


def async_client_for(server: FakeBatchServer, **kw: Any) -> AsyncClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return AsyncClient("http://execbox.test", http_client=http, **kw)


def codes(n: int) -> list[str]:
    return [f"print({i})" for i in range(n)]


# ---------------------------------------------------------------- chunks within the server's limits


def test_a_map_larger_than_one_request_comes_back_whole_and_in_input_order() -> None:
    server = FakeBatchServer()
    with client_for(server) as client:
        results = client.map(codes(25_000), progress=False)
    assert [r.stdout for r in results] == codes(25_000)
    assert all(r.ok and r.is_verdict for r in results)
    assert server.requests == [2_000] * 12 + [1_000]


def test_the_servers_job_limit_is_learned_from_its_refusal_and_kept_for_later_batches() -> None:
    server = FakeBatchServer(max_jobs=700)
    with client_for(server) as client:
        results = client.batch(codes(3_000), progress=False)
        assert [r.index for r in results] == list(range(3_000))
        assert [r.stdout for r in results] == codes(3_000)
        assert server.requests == [2_000, 700, 700, 700, 700, 200]
        server.requests.clear()
        client.batch(codes(1_500), progress=False)
    assert server.requests == [700, 700, 100]  # no second refusal


def test_the_servers_body_limit_is_learned_and_no_request_exceeds_it() -> None:
    server = FakeBatchServer(max_body=64 * 1024)
    big = ["x = '" + "a" * 1_000 + f"'  # {i}" for i in range(500)]
    with client_for(server) as client:
        results = client.map(big, progress=False)
    assert [r.stdout for r in results] == big
    assert server.bodies[0] > server.max_body  # the one refusal
    assert all(size <= server.max_body for size in server.bodies[1:])


def test_a_refusal_that_names_no_limit_halves_the_chunk_until_it_passes() -> None:
    server = FakeBatchServer(max_jobs=300)
    too_large = refusal(413, "request_too_large", "too large")
    server.script = {0: too_large, 1: too_large, 2: too_large}  # 2000, 1000, 500 refused
    with client_for(server) as client:
        results = client.batch(codes(1_000), progress=False)
    assert [r.stdout for r in results] == codes(1_000)
    assert server.requests[:3] == [1_000, 500, 250]
    assert all(n <= 125 for n in server.requests[3:]) and sum(server.requests[3:]) == 1_000


def test_a_job_whose_code_is_over_the_servers_limit_is_refused_alone_as_a_verdict() -> None:
    server = FakeBatchServer(max_code=100)
    jobs = [*codes(10), "x" * 500, *codes(10), "y" * 500]
    with client_for(server) as client:
        results = client.batch(jobs, progress=False)
    assert [r.index for r in results] == list(range(22))
    refused = [r for r in results if r.status is JobStatus.ERROR]
    assert [r.index for r in refused] == [10, 21]
    assert all(r.is_verdict and r.error and r.error.name == "RequestTooLargeError" for r in refused)
    assert all(r.ok for r in results if r.index not in (10, 21))
    # Refused once by the server, then the limit is known: the second big job is never sent.
    assert server.requests == [22, 20]


def test_a_single_job_larger_than_the_body_limit_is_refused_as_a_verdict_and_the_rest_run() -> None:
    server = FakeBatchServer(max_body=4_096)
    jobs = ["1", "z = '" + "a" * 10_000 + "'", "2"]
    with client_for(server) as client:
        results = client.batch(jobs, progress=False)
    assert [r.status for r in results] == [JobStatus.OK, JobStatus.ERROR, JobStatus.OK]
    assert results[1].error and results[1].error.name == "RequestTooLargeError"


def test_inputs_are_read_one_chunk_at_a_time_from_a_generator() -> None:
    read = {"n": 0}
    read_at_request: list[int] = []

    def source() -> Iterator[str]:
        for i in range(10_000):
            read["n"] += 1
            yield f"print({i})"

    server = FakeBatchServer()
    server.on_request = lambda: read_at_request.append(read["n"])
    with client_for(server) as client:
        results = client.map(source(), progress=False)
    assert len(results) == 10_000 and results[-1].stdout == "print(9999)"
    # Each request is sent when its own chunk has been read, and not one input more.
    assert read_at_request == [2_000, 4_000, 6_000, 8_000, 10_000]


def test_job_ids_and_dict_jobs_survive_chunking() -> None:
    server = FakeBatchServer(max_jobs=3)
    jobs = [{"id": f"j{i}", "code": str(i), "timeout_s": 2} for i in range(10)]
    with client_for(server) as client:
        results = client.batch(jobs, progress=False)
    assert [(r.index, r.id) for r in results] == [(i, f"j{i}") for i in range(10)]


# ---------------------------------------------------------------- failures: data, never verdicts


def test_overload_before_a_chunk_is_retried_honouring_retry_after() -> None:
    server = FakeBatchServer(max_jobs=100)
    server.script = {2: refusal(503, "pool_exhausted", "busy", {"Retry-After": "0"})}
    with client_for(server, max_retries=2) as client:
        results = client.map(codes(300), progress=False)
    assert all(r.ok for r in results) and server.requests == [300, 100, 100, 100, 100]


@pytest.mark.parametrize(
    ("status", "code"), [(503, "pool_exhausted"), (429, "quota_exceeded"), (503, "engine_unavailable")]
)
def test_a_lasting_overload_or_outage_marks_the_rest_as_service_errors_and_sends_no_more(
    status: int, code: str
) -> None:
    server = FakeBatchServer(max_jobs=100)
    server.script = {n: refusal(status, code, f"{code} now", {"Retry-After": "0"}) for n in range(2, 10)}
    with client_for(server, max_retries=1) as client:
        results = client.batch(codes(500), progress=False)
    assert [r.index for r in results] == list(range(500))
    assert all(r.ok for r in results[:100])
    assert all(r.status is JobStatus.SERVICE_ERROR and not r.is_verdict for r in results[100:])
    assert code in (results[100].message or "") and "not sent" in (results[300].message or "")
    assert server.requests == [500, 100, 100, 100]  # refusal, chunk 1, chunk 2 and its one retry


def test_a_stream_cut_mid_chunk_keeps_what_arrived_and_marks_the_rest() -> None:
    server = FakeBatchServer(max_jobs=100)
    server.cut_after = {2: 30}  # the second chunk delivers 30 results (jobs 199..170), then the cut
    with client_for(server) as client:
        results = client.map(codes(300), progress=False)
    arrived = set(range(170, 200))
    assert all(r.ok for r in results[:100])
    for i in range(100, 300):
        if i in arrived:
            assert results[i].ok and results[i].stdout == f"print({i})"
        else:
            assert results[i].status is ExecutionStatus.SANDBOX_LOST and not results[i].is_verdict
    assert "StreamError" in (results[100].message or "")
    assert len(server.requests) == 3


def test_a_result_for_a_job_the_server_was_not_sent_ends_the_chunk_as_service_errors() -> None:
    server = FakeBatchServer()
    server.script = {0: httpx.Response(200, content=ndjson({"type": "result", "index": 7, "status": "ok"}))}
    with client_for(server) as client:
        results = client.batch(codes(3), progress=False)
    assert all(r.status is JobStatus.SERVICE_ERROR for r in results)


def test_a_request_the_server_calls_wrong_raises_instead_of_becoming_results() -> None:
    server = FakeBatchServer()
    server.script = {0: refusal(401, "unauthorized", "no key")}
    with client_for(server) as client, pytest.raises(AuthenticationError):
        client.map(codes(5), progress=False)


def test_batch_stream_yields_input_indices_across_chunks() -> None:
    server = FakeBatchServer(max_jobs=4)
    with client_for(server) as client:
        seen = [(r.index, r.stdout) for r in client.batch_stream(codes(10))]
    assert sorted(seen) == [(i, f"print({i})") for i in range(10)]
    assert [index for index, _ in seen[:4]] == [3, 2, 1, 0]  # completion order within a chunk


async def test_the_async_twin_chunks_learns_and_marks_like_the_sync_client() -> None:
    def scenario() -> FakeBatchServer:
        server = FakeBatchServer(max_jobs=300)
        server.cut_after = {3: 10}
        return server

    with client_for(scenario()) as client:
        sync = client.batch(codes(1_000), progress=False)
    async with async_client_for(scenario()) as aclient:
        async_ = await aclient.batch(codes(1_000), progress=False)
        mapped = await aclient.map(codes(700), progress=False)
    assert [(r.index, r.status, r.stdout) for r in sync] == [(r.index, r.status, r.stdout) for r in async_]
    assert {r.status for r in sync} == {JobStatus.OK, JobStatus.SERVICE_ERROR}
    assert [r.stdout for r in mapped] == codes(700)


# ---------------------------------------------------------------- the I/O-free plan and the bar


def test_a_plan_never_puts_more_than_its_limits_in_one_chunk() -> None:
    limits = ChunkLimits(max_jobs=7, max_body_bytes=2_048)
    run = BatchRun(("a" * (i * 10) for i in range(40)), concurrency=2, limits=limits)
    sizes = []
    while (chunk := run.next_chunk()) is not None:
        assert len(chunk) <= 7 and (len(chunk.body) <= 2_048 or len(chunk) == 1)
        assert json.loads(chunk.body)["concurrency"] == 2
        sizes.append(len(chunk))
        for i in range(len(chunk)):
            run.accept(chunk, JobResult(index=i, status=JobStatus.OK))
    assert sum(sizes) == 40 and run.read == 40


def test_the_progress_bar_shows_only_on_a_terminal_unless_asked() -> None:
    assert isinstance(progress_bar(10, "exec", None), _NoBar)  # pytest's stderr is no terminal
    assert isinstance(progress_bar(10, "exec", False), _NoBar)
    out = io.StringIO()
    bar = _TextBar(1_000, "exec", out)
    for _ in range(1_000):
        bar.update(1)
    bar.close()
    assert out.getvalue().rstrip("\n").rsplit("\r", 1)[-1].startswith("1,000/1,000 exec")


def test_imap_yields_in_input_order_holding_at_most_one_chunk() -> None:
    read = {"n": 0}

    def source() -> Iterator[str]:
        for i in range(5_000):
            read["n"] += 1
            yield f"print({i})"

    server = FakeBatchServer(max_jobs=1_000)
    with client_for(server) as client:
        client._core.batch_limits.max_jobs = 1_000
        seen = 0
        for i, execution in enumerate(client.imap(source())):
            assert execution.stdout == f"print({i})"
            # An output is released within the chunk that holds it: never more than a chunk read ahead.
            assert read["n"] - i <= 1_000
            seen += 1
    assert seen == 5_000


async def test_async_imap_twins_the_sync_one() -> None:
    server = FakeBatchServer(max_jobs=300)
    server.cut_after = {2: 5}
    async with async_client_for(server) as client:
        out = [e async for e in client.imap(codes(1_000))]
    assert len(out) == 1_000 and out[0].stdout == "print(0)"
    assert {e.status for e in out} == {ExecutionStatus.OK, ExecutionStatus.SANDBOX_LOST}
