"""What a batch worker sends back is hostile input: parsing, caps, and the lane's reaction.

A fork server runs as root inside a container that runs untrusted code; whatever it sends —
wrong types, huge or deeply nested values, lone surrogates, a result that claims success for
tests that never ran — must become a sound result, never an exception in the service.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any, cast

import pytest

from execbox._models import BatchJob, BatchResult, JobStatus
from execbox_server.backends.base import SandboxSpec
from execbox_server.backends.docker import DockerBackend, ForkWorker
from execbox_server.batch import BatchRunner, job_request, parse_result
from execbox_server.limits import batch_jobs
from execbox_server.settings import Settings
from execbox_server.worker_protocol import JobRequest, decode_request, encode_request

CASES_JOB = BatchJob.model_validate(
    {
        "code": "def f(x):\n    return x\n",
        "tests": {
            "entry_point": "f",
            "cases": [{"input": [1], "expected": 1}, {"input": [2], "expected": 2}],
            "stop_on_first_failure": False,
        },
    }
)
PLAIN_JOB = BatchJob(code="print(1)")


def ok_raw(**fields: Any) -> dict[str, Any]:
    return {"status": "ok", "stdout": "", "stderr": "", "wall_ms": 1.0, **fields}


def line(raw: object) -> bytes:
    return json.dumps(raw).encode() + b"\n"


def content_bytes(result: BatchResult) -> int:
    def size(value: object) -> int:
        if value is None:
            return 0
        if isinstance(value, str):
            return len(value.encode())
        return len(json.dumps(value, ensure_ascii=False).encode())

    total = size(result.stdout) + size(result.stderr) + size(result.value)
    for error in [result.error] + [t.error for t in result.tests or []]:
        if error is not None:
            total += size(error.name) + size(error.value) + sum(size(x) for x in error.traceback)
    for t in result.tests or []:
        total += size(t.input) + size(t.expected) + size(t.actual)
    return total


GOOD_TESTS = [
    {"index": 0, "passed": True, "status": "passed", "actual": 1, "error": None, "duration_ms": 0.1},
    {"index": 1, "passed": True, "status": "passed", "actual": 2, "error": None, "duration_ms": 0.1},
]

HOSTILE = {
    "not json": b"{nope\n",
    "a list": b"[1, 2]\n",
    "deep nesting": b"[" * 200_000 + b"]" * 200_000 + b"\n",
    "huge integer": b'{"status": "ok", "exit_code": ' + b"9" * 10_000 + b"}\n",
    "unknown status": line(ok_raw(status="passed")),
    "status not a string": line(ok_raw(status=["ok"])),
    "stdout a list": line(ok_raw(stdout=["a"])),
    "stdout an object": line(ok_raw(stdout={"a": 1})),
    "exit code a bool": line(ok_raw(exit_code=True)),
    "exit code out of range": line(ok_raw(exit_code=2**70)),
    "signal with a newline": line(ok_raw(status="crashed", signal="SIG\nKILL")),
    "wall_ms NaN": b'{"status": "ok", "wall_ms": NaN}\n',
    "wall_ms negative": line(ok_raw(wall_ms=-5)),
    "error a string": line(ok_raw(status="error", error="boom")),
    "error name a list": line(ok_raw(status="error", error={"name": ["x"], "value": "v"})),
    "traceback of numbers": line(ok_raw(status="error", error={"name": "E", "value": "v", "traceback": [1, 2]})),
    "tests for a job without tests": line(ok_raw(tests=GOOD_TESTS)),
    "truncated a string": line(ok_raw(truncated="yes")),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_malformed_result_is_a_service_error_and_retires_the_worker(name: str) -> None:
    parsed = parse_result(3, PLAIN_JOB, HOSTILE[name], limit=4096)
    assert not parsed.worker_ok
    assert parsed.result.status is JobStatus.SERVICE_ERROR and parsed.result.index == 3
    assert parsed.result.message and "malformed" in parsed.result.message
    parsed.result.model_dump_json()  # and the response can be written


HOSTILE_TESTS = {
    "not a list": {"index": 0},
    "too many outcomes": [*GOOD_TESTS, {**GOOD_TESTS[0], "index": 2}],
    "indexes out of order": [GOOD_TESTS[1], GOOD_TESTS[0]],
    "passed but failed": [{**GOOD_TESTS[0], "status": "failed"}, GOOD_TESTS[1]],
    "a status of its own": [{**GOOD_TESTS[0], "status": "great", "passed": False}, GOOD_TESTS[1]],
    "passed as a string": [{**GOOD_TESTS[0], "passed": "true"}, GOOD_TESTS[1]],
    "index a bool": [{**GOOD_TESTS[0], "index": False}, GOOD_TESTS[1]],
}


@pytest.mark.parametrize("name", list(HOSTILE_TESTS))
def test_malformed_test_outcomes_crash_the_job(name: str) -> None:
    parsed = parse_result(0, CASES_JOB, line(ok_raw(tests=HOSTILE_TESTS[name])), limit=4096)
    assert not parsed.worker_ok and parsed.result.status is JobStatus.SERVICE_ERROR


def test_a_sound_result_keeps_its_worker_and_gets_the_cases_from_the_request() -> None:
    parsed = parse_result(0, CASES_JOB, line(ok_raw(tests=GOOD_TESTS)), limit=4096)
    assert parsed.worker_ok
    result = parsed.result
    assert result.status is JobStatus.OK and result.passed
    assert [(t.input, t.expected, t.actual) for t in result.tests or []] == [([1], 1, 1), ([2], 2, 2)]


def test_the_request_carries_the_resolved_limits_and_the_cases_with_their_expected_values() -> None:
    [resolved] = batch_jobs(Settings(batch_default_timeout_s=7.0), [CASES_JOB.model_copy(update={"stdin": "in"})])
    request = decode_request(encode_request(job_request(resolved)))
    assert isinstance(request, JobRequest) and request == job_request(resolved)
    assert (request.code, request.stdin, request.timeout_s) == (CASES_JOB.code, "in", 7.0)
    assert (request.memory_mb, request.max_output_bytes) == (
        resolved.limits.memory_mb,
        resolved.limits.max_output_bytes,
    )
    assert request.tests is not None and request.tests.count == 2
    assert [(c.input, c.expected) for c in request.tests.cases or ()] == [([1], 1), ([2], 2)]
    assert request.tests.entry_point == "f" and not request.tests.stop_on_first_failure


def test_a_crashed_report_without_a_message_says_which_signal() -> None:
    result = parse_result(0, PLAIN_JOB, line(ok_raw(status="crashed", signal="SIGSEGV", exit_code=-11)), limit=4096)
    assert result.worker_ok and result.result.status is JobStatus.CRASHED
    assert result.result.message == "the program was killed by SIGSEGV"


def test_a_worker_message_is_kept_but_cut() -> None:
    result = parse_result(0, PLAIN_JOB, line(ok_raw(status="crashed", message="m" * 5000)), limit=4096).result
    assert result.message == "m" * 2000


def test_a_retiring_worker_is_not_reused_but_its_result_stands() -> None:
    parsed = parse_result(0, PLAIN_JOB, line(ok_raw(stdout="1\n", retire=True)), limit=4096)
    assert not parsed.worker_ok and parsed.result.status is JobStatus.OK and parsed.result.stdout == "1\n"


@pytest.mark.parametrize(
    "tests",
    [
        None,  # no harness output at all
        [],
        [GOOD_TESTS[0]],  # the second test never reported
        [GOOD_TESTS[0], {"index": 1, "passed": False, "status": "not_run"}],
    ],
)
def test_ok_with_tests_that_never_ran_is_a_failure(tests: list[dict[str, Any]] | None) -> None:
    parsed = parse_result(0, CASES_JOB, line(ok_raw(tests=tests)), limit=4096)
    result = parsed.result
    assert result.status is JobStatus.ERROR and not result.passed
    assert result.message and "test harness" in result.message
    assert result.tests is not None and [t.index for t in result.tests] == [0, 1]
    assert result.tests[1].status == "not_run" and not result.tests[1].passed


def test_every_field_counts_against_max_output_bytes() -> None:
    big = "x" * 100_000
    job = BatchJob.model_validate(
        {
            "code": "",
            "tests": {
                "entry_point": "f",
                "cases": [{"input": [big], "expected": big}, {"input": [1], "expected": {"k": big}}],
                "stop_on_first_failure": False,
            },
        }
    )
    error = {"name": "N" * 50_000, "value": big, "traceback": [big] * 50}
    tests = [
        {"index": 0, "passed": False, "status": "failed", "actual": [big, big], "error": error, "duration_ms": 1},
        {"index": 1, "passed": False, "status": "error", "actual": None, "error": error, "duration_ms": 1},
    ]
    raw = ok_raw(stdout=big, stderr=big, value=big, error=error, tests=tests)
    for limit in (1024, 4096, 65_536):
        result = parse_result(0, job, line(raw), limit=limit).result
        assert content_bytes(result) <= limit, (limit, content_bytes(result))
        assert result.truncated
        assert [t.passed for t in result.tests or []] == [False, False]
        result.model_dump_json()


def test_lone_surrogates_and_deep_values_still_make_a_response() -> None:
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    tests = [
        {"index": 0, "passed": False, "status": "failed", "actual": deep, "error": None, "duration_ms": 1},
        {"index": 1, "passed": False, "status": "failed", "actual": "\ud800", "error": None, "duration_ms": 1},
    ]
    raw = ok_raw(stdout="a\ud800b", value="\udfff", error={"name": "E\ud800", "value": "v", "traceback": []})
    raw["tests"] = tests
    result = parse_result(0, CASES_JOB, line(raw), limit=1 << 20).result
    assert result.status is JobStatus.OK
    assert isinstance(result.tests[0].actual, str)  # type: ignore[index]  # shown as text
    json.loads(result.model_dump_json())


# ------------------------------------------------------------------ the lane, with fake workers


class FakeWorkerBackend:
    """Workers whose fork server is a script: each answers requests with ``replies`` in turn."""

    def __init__(self, scripts: list[list[bytes | None]]) -> None:
        self.scripts = scripts
        self.started: list[ForkWorker] = []
        self.destroyed: list[ForkWorker] = []
        self.requests: list[list[JobRequest]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start_worker(self, spec: SandboxSpec) -> ForkWorker:
        script = self.scripts.pop(0) if self.scripts else []
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=64 * 1024 * 1024)  # as docker.py
        seen: list[JobRequest] = []
        self.requests.append(seen)
        self._tasks.append(asyncio.get_running_loop().create_task(self._serve(theirs, script, seen)))
        worker = ForkWorker(
            id=f"w{len(self.started)}",
            container_id=f"c{len(self.started)}" * 6,
            dir=Path("/nonexistent"),
            reader=reader,
            writer=writer,
        )
        self.started.append(worker)
        return worker

    async def _serve(self, sock: socket.socket, script: list[bytes | None], seen: list[JobRequest]) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            while True:
                request = await reader.readline()
                if not request:
                    return
                job = decode_request(request)
                assert isinstance(job, JobRequest)
                seen.append(job)
                reply = script.pop(0) if script else line(ok_raw(stdout=f"ran {job.code}\n"))
                if reply is None:
                    return  # the worker exits without answering (what a retiring worker does)
                writer.write(reply)
                await writer.drain()
        finally:
            writer.close()

    async def destroy_worker(self, worker: ForkWorker) -> None:
        self.destroyed.append(worker)
        worker.writer.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def run_batch(backend: FakeWorkerBackend, n: int, **job: Any) -> list[BatchResult]:
    settings = Settings(batch_workers=1, batch_min_workers=0)
    runner = BatchRunner(settings, cast(DockerBackend, backend))
    results: list[BatchResult] = []

    async def collect(result: BatchResult) -> None:
        results.append(result)

    # Each job's code is its id: the fake worker answers "ran <code>".
    jobs = batch_jobs(settings, [BatchJob(id=f"j{i}", code=f"j{i}", **job) for i in range(n)])
    try:
        await asyncio.wait_for(runner.run(None, jobs, collect), 10)
    finally:
        await runner.close()
        await backend.close()
    return sorted(results, key=lambda r: r.index)


async def test_jobs_queued_in_a_retiring_worker_run_on_a_fresh_one() -> None:
    # Worker 0 runs j0, says it cannot be made clean, and answers nothing more.
    backend = FakeWorkerBackend([[line(ok_raw(stdout="ran j0\n", retire=True)), None]])
    results = await run_batch(backend, 3)
    assert [(r.id, r.status, r.stdout) for r in results] == [
        ("j0", JobStatus.OK, "ran j0\n"),
        ("j1", JobStatus.OK, "ran j1\n"),
        ("j2", JobStatus.OK, "ran j2\n"),
    ]
    assert backend.destroyed[0] is backend.started[0]
    assert sorted(job.code for job in backend.requests[1]) == ["j1", "j2"]


async def test_a_worker_that_sends_garbage_is_replaced_and_the_batch_goes_on() -> None:
    backend = FakeWorkerBackend([[b"[" * 60_000 + b"\n", None]])  # deep, within the stream's line limit
    results = await run_batch(backend, 3)
    assert results[0].status is JobStatus.SERVICE_ERROR and "malformed" in (results[0].message or "")
    assert [(r.id, r.status) for r in results[1:]] == [("j1", JobStatus.OK), ("j2", JobStatus.OK)]
    assert backend.started[0] in backend.destroyed


async def test_a_big_result_line_is_parsed_and_cut_to_the_jobs_limit() -> None:
    backend = FakeWorkerBackend([[line(ok_raw(stdout="x" * 2_000_000, value="v" * 2_000_000))]])
    [result] = await run_batch(backend, 1, max_output_bytes=4096)
    assert result.status is JobStatus.OK and result.truncated
    assert content_bytes(result) <= 4096
