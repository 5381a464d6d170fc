"""Batch execution at harness speed: one-shot programs on warm fork-server workers.

A worker is a locked-down container (the same flags as a session's) whose fork server forks
a fresh child per job (see sandbox_images/python/forkserver.py). This module keeps up to
``batch_workers`` of them, hands each to one batch at a time, and never lets a worker serve
two API keys: a worker belongs to the first key that uses it and is destroyed, not lent,
when another key needs the slot. A worker that stops answering or drops its connection is
destroyed and replaced; its job is reported as ``crashed`` with the reason.

The worker protocol is :mod:`execbox_server.worker_protocol`, a module the sandbox image carries
too. What a worker sends back is hostile input (:func:`parse_result`): a line the protocol's
decoder refuses makes that job ``crashed`` and the worker is replaced; every byte of a result —
output, error, value, test values — is counted against the job's ``max_output_bytes``; a
test-mode job whose harness did not report every test fails, whatever its exit code said. The
API's models and the protocol's records meet in two functions only: :func:`job_request` and
:func:`job_result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from execbox._models import (
    BatchJob,
    BatchSummary,
    ExecutionError,
    JobResult,
    JobStatus,
    Language,
    StageResult,
    TestCase,
    TestOutcome,
)
from execbox._values import truncated
from execbox_server.backends.base import SandboxSpec, Worker, WorkerBackend
from execbox_server.errors import PoolClosed, PoolExhausted
from execbox_server.limits import ResolvedJob
from execbox_server.observability import Metrics
from execbox_server.settings import Settings
from execbox_server.worker_protocol import (
    Case,
    ErrorRecord,
    JobReport,
    JobRequest,
    JobTests,
    Program,
    ProtocolError,
    StageReport,
    TestRecord,
    build_key,
    decode_report,
    encode_request,
    outcome_count,
)

__all__ = ["BatchRunner", "BuildCache", "ParsedResult", "batch_lanes", "job_request", "job_result", "parse_result"]

log = logging.getLogger("execbox.batch")

# Called with each job's result as it completes (not the SDK's per-execution callbacks).
OnJobResult = Callable[[JobResult], Awaitable[None]]

# Beyond a job's own timeout, the worker needs a moment to kill, sweep and answer.
WORKER_MARGIN_S = 10.0
RECYCLE_AFTER_JOBS = 20_000
PIPELINE_DEPTH = 2
WATCH_INTERVAL_S = 1.0  # how often idle workers are checked for a dead container
PARSE_INLINE_BYTES = 256 * 1024  # larger result lines are parsed off the event loop
# A worker container holds the fork server and its warm zygote besides the job: a job given
# batch_memory_mb must not meet the container's limit first.
WORKER_OVERHEAD_MB = 256


def batch_lanes(settings: Settings, jobs: int, concurrency: int | None = None) -> int:
    """Workers one batch of ``jobs`` uses at once: at most ``batch_lanes`` (the CPU count)."""
    per_batch = settings.batch_lanes or os.cpu_count() or 1
    return max(1, min(jobs, per_batch, settings.batch_workers, concurrency or jobs))


class BuildCache:
    """Builds of compiled programs by (owner, :func:`build_key`), least recently used first out.

    Per owner, as workers are: a build comes back from a worker that ran only that owner's jobs,
    so it is trusted as far as that owner's own code is — never handed to another key.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_entry_bytes: int = 8 * 1024 * 1024) -> None:
        self._entries: OrderedDict[tuple[str | None, str], str] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_entry = max_entry_bytes
        self.hits = 0
        self.misses = 0

    def get(self, owner: str | None, key: str) -> str | None:
        build = self._entries.get((owner, key))
        if build is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end((owner, key))
        return build

    def has(self, owner: str | None, key: str) -> bool:
        return (owner, key) in self._entries

    def put(self, owner: str | None, key: str, build: str) -> None:
        if len(build) > self._max_entry or (owner, key) in self._entries:
            return
        self._entries[(owner, key)] = build
        self._bytes += len(build)
        while self._bytes > self._max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)


class BatchRunner:
    def __init__(self, settings: Settings, backend: WorkerBackend[Any], *, metrics: Metrics | None = None) -> None:
        self._metrics = metrics or Metrics()
        self._settings = settings
        self._backend = backend
        self._idle: list[Worker] = []
        self._idle_since: dict[int, float] = {}  # id(worker) -> when it was last released
        self._alive = 0
        self.builds = BuildCache()
        self._building: dict[tuple[str | None, str], _Flight] = {}  # builds being compiled
        self._changed = asyncio.Condition()
        self._closed = False
        self._warm_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._warm_task = loop.create_task(self._warm())
        self._watch_task = loop.create_task(self._watch_idle())

    async def _watch_idle(self) -> None:
        """Replace idle workers whose container died, so the counts stay true between batches,
        and remove those beyond the warm minimum that a burst left idle."""
        while not self._closed:
            await asyncio.sleep(WATCH_INTERVAL_S)
            await self._prune_dead_idle()
            await self._retire_idle()

    async def _retire_idle(self) -> None:
        now = time.monotonic()
        keep = self._settings.batch_min_workers
        for worker in list(self._idle):  # oldest releases first
            if len(self._idle) <= keep:
                return
            if now - self._idle_since.get(id(worker), now) >= self._settings.batch_idle_s:
                self._idle.remove(worker)
                await self._discard(worker)

    async def _prune_dead_idle(self) -> None:
        # A worker whose container died while idle (killed from outside, the engine restarted)
        # has closed its end of the stream: it must never be handed a job that would come
        # back crashed.
        for worker in [w for w in self._idle if w.reader.at_eof()]:
            self._idle.remove(worker)
            self._idle_since.pop(id(worker), None)
            log.warning("idle batch worker %s is gone; replacing it", worker.short_id)
            await self._discard(worker)

    async def _warm(self) -> None:
        for _ in range(min(self._settings.batch_min_workers, self._settings.batch_workers)):
            try:
                worker = await self._start_worker()
            except Exception as exc:  # warm-up is best effort; a batch starts what it needs
                log.warning("could not pre-start a batch worker: %s", exc)
                return
            async with self._changed:
                self._idle.append(worker)
                self._changed.notify_all()

    async def close(self) -> None:
        self._closed = True
        for task in (self._warm_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._backend.destroy_worker(w) for w in idle), return_exceptions=True)

    def stats(self) -> dict[str, int]:
        return {"alive": self._alive, "idle": len(self._idle)}

    async def run_one(self, owner: str | None, job: ResolvedJob, *, queue_timeout_s: float) -> JobResult:
        """Run one job on a worker of ``owner``'s, waiting at most ``queue_timeout_s`` for one.

        Raises:
            PoolExhausted: no worker could be had in time (``retry_after`` set).
            PoolClosed: the service is shutting down.
        """
        worker = await self._acquire(owner, timeout_s=queue_timeout_s)
        results: list[JobResult] = []

        async def keep(result: JobResult) -> None:
            results.append(result)

        await self.run(owner, [job], keep, first=worker)
        return results[0]

    # ------------------------------------------------------------------ batches

    async def reserve(self, owner: str | None) -> Worker:
        """A worker for a batch about to start, taken before any result is streamed.

        Raises:
            PoolExhausted: no worker could be had within the acquire timeout.
            PoolClosed: the service is shutting down.
        """
        return await self._acquire(owner)

    async def run(
        self,
        owner: str | None,
        jobs: Sequence[ResolvedJob],
        on_result: OnJobResult,
        *,
        concurrency: int | None = None,
        first: Worker | None = None,
    ) -> BatchSummary:
        """Run every job; ``on_result`` gets each result as it completes (completion order).

        ``jobs`` come with their limits resolved (:func:`execbox_server.limits.batch_jobs`).
        ``first`` is a worker from :meth:`reserve`; without it one is acquired here.

        Raises:
            PoolExhausted, PoolClosed (see :meth:`reserve`).
        """
        started = time.monotonic()
        queue: asyncio.Queue[tuple[int, ResolvedJob]] = asyncio.Queue()
        for item in enumerate(jobs):
            queue.put_nowait(item)
        counts: dict[str, int] = {}

        async def emit(result: JobResult) -> None:
            counts[result.status.value] = counts.get(result.status.value, 0) + 1
            self._metrics.batch_jobs.labels(result.status.value).inc()
            await on_result(result)

        n = batch_lanes(self._settings, len(jobs), concurrency)
        if first is None:
            first = await self._acquire(owner)
        lanes = [self._lane(owner, queue, emit, first)]
        lanes += [self._lane(owner, queue, emit, None) for _ in range(n - 1)]
        await asyncio.gather(*lanes)
        # Every job gets a result: what no lane could take (workers lost and none to be had)
        # is reported, not dropped.
        while not queue.empty():
            index, job = queue.get_nowait()
            await emit(_failed(index, job.job, "no batch worker could be had to run this job"))
        return BatchSummary(total=len(jobs), by_status=counts, wall_ms=round((time.monotonic() - started) * 1000, 3))

    async def _lane(
        self,
        owner: str | None,
        queue: asyncio.Queue[tuple[int, ResolvedJob]],
        emit: OnJobResult,
        worker: Worker | None,
    ) -> None:
        """One worker's share of a batch: take jobs until the queue is empty.

        Two jobs are in flight per worker: the next one is already in the worker's socket
        while the current one runs, so the host's round trip costs the worker no idle time.
        """
        inflight: deque[tuple[int, ResolvedJob, float]] = deque()
        builds: dict[int, tuple[str | None, str]] = {}  # jobs of this lane that build for others
        held: tuple[int, ResolvedJob] | None = None  # taken from the queue, sent once a build is in
        try:
            while True:
                if worker is None:
                    if held is not None:
                        queue.put_nowait(held)
                        held = None
                    if queue.empty():
                        return
                    try:
                        worker = await self._acquire(owner)
                    except (PoolExhausted, PoolClosed):
                        return  # other lanes (or run()'s final sweep) take the rest
                while len(inflight) < PIPELINE_DEPTH and (held is not None or not queue.empty()):
                    index, job = held or queue.get_nowait()
                    held = None
                    if inflight and self._waits_for_build(worker.owner, job):
                        # Its build may be the job in flight here: wait once that one is done.
                        held = (index, job)
                        break
                    build, building, shared = await self._claim_build(worker.owner, job)
                    if shared is not None:  # the same source failed to build just now: its verdict
                        await emit(_shared_compile(index, job.job, shared))
                        continue
                    if building is not None:
                        builds[index] = building
                    try:
                        self._send(worker, job, build)
                    except OSError:
                        inflight.append((index, job, time.monotonic()))
                        break
                    inflight.append((index, job, time.monotonic()))
                if not inflight:
                    return
                index, job, _sent = inflight[0]
                try:
                    await worker.writer.drain()
                    line = await asyncio.wait_for(worker.reader.readline(), job.limits.timeout_s + WORKER_MARGIN_S)
                    if not line:
                        raise ConnectionError("the worker closed its connection")
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                    log.warning("batch worker %s lost during job %d: %r", worker.short_id, index, exc)
                    while inflight:
                        i, j, t = inflight.popleft()
                        self._built(builds.pop(i, None))
                        lost = _failed(i, j.job, f"the worker running this job was lost ({exc!r}) and replaced")
                        lost.wall_ms = round((time.monotonic() - t) * 1000, 3)
                        await emit(lost)
                    await self._discard(worker)
                    worker = None
                    continue
                inflight.popleft()
                worker.jobs += 1
                if len(line) > PARSE_INLINE_BYTES:  # a big line would hold the event loop up
                    limit = job.limits.max_output_bytes
                    parsed = await asyncio.to_thread(parse_result, index, job.job, line, limit=limit)
                else:
                    parsed = parse_result(index, job.job, line, limit=job.limits.max_output_bytes)
                if parsed.build is not None:
                    self.builds.put(worker.owner, build_key(job.job.language.value, job.job.code), parsed.build)
                self._built(builds.pop(index, None), parsed.result)
                await emit(parsed.result)
                if not parsed.worker_ok:
                    # The worker could not be made clean after this job, or sent what no sound
                    # worker sends: it runs nothing more. A retiring worker answers no further
                    # request, so what it still holds never ran there: other workers run it.
                    log.warning("batch worker %s retired after job %d: %s", worker.short_id, index, parsed.reason)
                    while inflight:
                        i, j, _t = inflight.popleft()
                        self._built(builds.pop(i, None))
                        queue.put_nowait((i, j))
                    await self._discard(worker)
                    worker = None
                    continue
                if worker.jobs >= RECYCLE_AFTER_JOBS and not inflight:
                    await self._discard(worker)
                    worker = None
        finally:
            if held is not None:
                queue.put_nowait(held)  # run()'s final sweep reports it if no lane takes it
            for key in builds.values():
                self._built(key)
            if worker is not None:
                if inflight:  # cancelled mid-flight: the worker's state is unknown
                    await asyncio.shield(self._discard(worker))
                else:
                    await asyncio.shield(self._release(worker))

    def _send(self, worker: Worker, resolved: ResolvedJob, build: str | None) -> None:
        worker.writer.write(encode_request(job_request(resolved, build=build)))

    async def _claim_build(
        self, owner: str | None, resolved: ResolvedJob
    ) -> tuple[str | None, tuple[str | None, str] | None, JobResult | None]:
        """For a compiled job: its cached build, or the claim to build it (its key), or the
        failed build of the same source that it waited for.

        One compile per source at a time: verl sends a program once per test case, all at once,
        and as many simultaneous compiles on a busy machine each run past their deadline, so
        none ever fills the cache. Later jobs of a source being built wait for that build (up to
        its compile deadline) and share its outcome: the build, or the compile's failure (the
        same source with the same compiler fails the same way); if the builder was lost, they
        compile themselves.
        """
        if not _compiled(resolved.job):
            return None, None, None
        key = (owner, build_key(resolved.job.language.value, resolved.job.code))
        build = self.builds.get(*key)
        if build is not None:
            self._metrics.compile_cache.labels("hit").inc()
            return build, None, None
        flight = self._building.get(key)
        if flight is None:
            self._building[key] = _Flight()
            self._metrics.compile_cache.labels("miss").inc()
            return None, key, None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flight.done.wait(), resolved.limits.compile_timeout_s + WORKER_MARGIN_S)
        build = self.builds.get(*key)
        shared = build is not None or flight.failure is not None
        self._metrics.compile_cache.labels("shared" if shared else "miss").inc()
        return build, None, flight.failure

    def _waits_for_build(self, owner: str | None, resolved: ResolvedJob) -> bool:
        if not _compiled(resolved.job):
            return False
        key = (owner, build_key(resolved.job.language.value, resolved.job.code))
        return key in self._building and not self.builds.has(*key)

    def _built(self, key: tuple[str | None, str] | None, result: JobResult | None = None) -> None:
        """The job that claimed ``key``'s build has its result (None: it was lost): release the waiters."""
        if key is None:
            return
        flight = self._building.pop(key, None)
        if flight is None:
            return
        if result is not None and result.compile is not None and result.compile.status != "ok":
            flight.failure = result
        flight.done.set()

    # ------------------------------------------------------------------ workers

    async def _acquire(self, owner: str | None, *, timeout_s: float | None = None) -> Worker:
        deadline = time.monotonic() + (self._settings.acquire_timeout_s if timeout_s is None else timeout_s)
        while True:
            if self._closed:
                raise PoolClosed("the service is shutting down")
            await self._prune_dead_idle()
            async with self._changed:
                mine = next((w for w in self._idle if w.owner == owner), None)
                mine = mine or next((w for w in self._idle if w.owner is None), None)
                if mine is not None:
                    self._idle.remove(mine)
                    self._idle_since.pop(id(mine), None)
                    mine.owner = owner
                    return mine
                start_new = self._alive < self._settings.batch_workers
                evict = None
                if not start_new and self._idle:
                    # Never lend another key's worker: destroy it and start a fresh one.
                    evict = self._idle.pop(0)
                    self._idle_since.pop(id(evict), None)
                    start_new = True
                if start_new:
                    self._alive += 1  # reserve the slot before the engine call
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PoolExhausted(
                            f"all {self._settings.batch_workers} batch workers are busy; retry later", retry_after=1
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)
                    continue
            if evict is not None:
                self._alive -= 1
                await asyncio.shield(self._backend.destroy_worker(evict))
            try:
                worker = await self._start_worker(reserved=True)
            except BaseException:
                async with self._changed:
                    self._alive -= 1
                    self._changed.notify_all()
                raise
            worker.owner = owner
            return worker

    async def _start_worker(self, *, reserved: bool = False) -> Worker:
        if not reserved:
            self._alive += 1
        try:
            memory = self._settings.batch_memory_mb + WORKER_OVERHEAD_MB
            spec = SandboxSpec(memory_mb=memory, cpus=self._settings.batch_cpus)
            worker: Worker = await self._backend.start_worker(spec)
            return worker
        except BaseException:
            if not reserved:
                self._alive -= 1
            raise

    async def _release(self, worker: Worker) -> None:
        if self._closed:
            await self._discard(worker)
            return
        async with self._changed:
            self._idle.append(worker)
            self._idle_since[id(worker)] = time.monotonic()
            self._changed.notify_all()

    async def _discard(self, worker: Worker) -> None:
        await asyncio.shield(self._backend.destroy_worker(worker))
        async with self._changed:
            self._alive -= 1
            self._changed.notify_all()


@dataclass(slots=True)
class _Flight:
    """A build being compiled for the jobs of its source that wait for it."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    failure: JobResult | None = None  # the builder's result when its compile failed


def _shared_compile(index: int, job: BatchJob, failure: JobResult) -> JobResult:
    """A job whose source failed to build a moment ago, for a job of the same source: its verdict."""
    return JobResult(
        index=index,
        id=job.id,
        status=failure.status,
        compile=failure.compile,
        message=f"{failure.message or 'the program did not compile'} (the same source's compile, shared)",
    )


@dataclass(frozen=True, slots=True)
class ParsedResult:
    """A job's result as the API returns it, and whether its worker may run more jobs."""

    result: JobResult
    worker_ok: bool = True
    reason: str | None = None  # why the worker may not
    build: str | None = None  # a fresh build of the job's program, for the cache


_MAX_DEPTH = 64  # nesting of a test value in a response (pydantic serializes deeper ones poorly)
_MAX_MESSAGE = 2000


def parse_result(index: int, job: BatchJob, line: bytes, *, limit: int) -> ParsedResult:
    """One result line from a worker, as hostile input: never raises.

    A line the protocol's decoder refuses (wrong types, unknown statuses, a test list that does not
    match the job's tests, not JSON) makes the job ``crashed`` (with the reason) and the worker
    untrusted. Every text and value that reaches the response is counted against ``limit`` (the
    job's ``max_output_bytes``) and cut beyond it; ``truncated`` says so.
    """
    spec = job.tests
    count = None if spec is None else outcome_count(assertions=bool(spec.assertions), cases=len(spec.cases or []))
    collect = spec is not None and spec.mode == "collect" and not spec.assertions
    try:
        report = decode_report(line, tests=count, collect=collect)
    except ProtocolError as exc:
        reason = f"the batch worker sent a malformed result ({str(exc)[:300]}); the worker was replaced"
        return ParsedResult(_failed(index, job, reason), worker_ok=False, reason=reason)
    result = job_result(index, job, report, limit=limit)
    # Only a build the compile of this very job made (the worker sends it before the program runs).
    build = report.binary if report.compile is not None and report.compile.status == "ok" else None
    if report.retire:
        return ParsedResult(result, worker_ok=False, reason="the worker could not be made clean after this job")
    return ParsedResult(result, build=build)


# ---------------------------------------------------------------------- API models <-> worker records


def _compiled(job: BatchJob) -> bool:
    return job.tests is None and job.language is not Language.PYTHON


def job_request(resolved: ResolvedJob, *, build: str | None = None) -> JobRequest:
    """What a worker is sent for one job of a batch; ``build``: a cached build of its program."""
    job, limits, spec = resolved.job, resolved.limits, resolved.job.tests
    tests = None
    if spec is not None:
        tests = JobTests(
            entry_point=spec.entry_point,
            # The worker keeps the expected values to itself: the job's process never gets them.
            cases=None if spec.cases is None else tuple(_case(c) for c in spec.cases),
            assertions=spec.assertions,
            per_test_timeout_s=spec.per_test_timeout_s,
            stop_on_first_failure=spec.stop_on_first_failure,
            atol=spec.atol,
            semantics=spec.semantics,
            mode=spec.mode,
            oracle=spec.oracle,
        )
    program = None
    if spec is None:  # a program, run as `python main.py` or compiled and run
        program = Program(
            language=job.language.value,
            compile_timeout_s=limits.compile_timeout_s,
            files=tuple((job.files or {}).items()),
            fetch_files=tuple(job.fetch_files or ()),
            binary=build,
        )
    return JobRequest(
        code=job.code,
        stdin=job.stdin,
        timeout_s=limits.timeout_s,
        memory_mb=limits.memory_mb,
        max_output_bytes=limits.max_output_bytes,
        tests=tests,
        program=program,
    )


def _case(case: TestCase) -> Case:
    return Case(
        input=case.input,
        expected=case.expected,
        timeout_s=case.timeout_s,
        alternatives=tuple(case.alternatives or ()),
        oracle=case.oracle,
        atol=case.atol,
    )


def job_result(index: int, job: BatchJob, report: JobReport, *, limit: int) -> JobResult:
    """A worker's report as the API returns it: within ``limit`` bytes, with each test's case.

    ``report`` comes from :func:`decode_report` for this ``job``, so its tests match the job's.
    """
    status = JobStatus(report.status)
    budget = _Budget(limit)  # spent in the order the fields appear in the response
    stdout = budget.text(report.stdout)
    stderr = budget.text(report.stderr)
    error = budget.error(report.error)
    value = budget.text(report.value) if report.value is not None else None
    stage = None if report.compile is None else _stage(report.compile, budget)
    files = None if report.files is None else budget.files(report.files)
    tests = None if report.tests is None else [_test_outcome(job, t, budget) for t in report.tests]
    message = report.message
    if tests is not None and status is JobStatus.OK and _harness_incomplete(job, tests):
        # Defence in depth: the worker already says so; a job that ends before its tests never passes.
        status = JobStatus.ERROR
        message = "the program ended before the test harness reported every test; the missing ones count as failed"
    return JobResult(
        index=index,
        id=job.id,
        status=status,
        stdout=stdout,
        stderr=stderr,
        error=error,
        value=value,
        exit_code=report.exit_code,
        signal=report.signal,
        wall_ms=report.wall_ms,
        cpu_ms=report.cpu_ms,
        peak_memory_bytes=report.peak_memory_bytes,
        truncated=report.truncated or budget.cut,
        tests=tests,
        compile=stage,
        files=files,
        message=message[:_MAX_MESSAGE] if message else _message(status, report.signal),
    )


def _stage(stage: StageReport, budget: _Budget) -> StageResult:
    return StageResult(
        status=stage.status,
        exit_code=stage.exit_code,
        stdout=budget.text(stage.stdout),
        stderr=budget.text(stage.stderr),
        wall_ms=stage.wall_ms,
        cached=stage.cached,
    )


def _test_outcome(job: BatchJob, record: TestRecord, budget: _Budget) -> TestOutcome:
    spec = job.tests
    case = spec.cases[record.index] if spec is not None and spec.cases and not spec.assertions else None
    typed = spec is not None and spec.semantics == "evalplus"
    collect = spec is not None and spec.mode == "collect"
    return TestOutcome(
        index=record.index,
        passed=record.passed,
        status=record.status,
        error=budget.error(record.error),
        actual=budget.json(record.actual, typed=typed),
        # A collect job's caller has its inputs: echoing 750 of them back only costs its budget.
        input=budget.json(case.input, typed=typed) if case is not None and not collect else None,
        expected=budget.json(case.expected, typed=typed) if case is not None and not collect else None,
        duration_ms=record.duration_ms,
    )


def _harness_incomplete(job: BatchJob, tests: list[TestOutcome]) -> bool:
    """Whether a test was left unrun without a failure before it that explains it."""
    stop_first = job.tests is not None and job.tests.stop_on_first_failure and job.tests.mode == "check"
    for outcome in tests:
        if outcome.status == "not_run":
            return True
        if outcome.status == "timeout" or (not outcome.passed and stop_first and outcome.status != "returned"):
            return False  # the rest were skipped on purpose (the worker stops a job at an overrun)
    return False


class _Budget:
    """A job's ``max_output_bytes``, spent field by field (UTF-8 bytes); what does not fit is cut."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.cut = False

    def text(self, value: str) -> str:
        # "replace": a lone surrogate in a worker's JSON must not fail the response's encoding.
        data = value.encode("utf-8", "replace")
        if len(data) <= self.left:
            self.left -= len(data)
            return data.decode("utf-8")
        self.cut = True
        marker = f"[... {len(data)} bytes truncated ...]"
        if self.left < len(marker) + 16:
            self.left = 0
            return ""
        kept = data[: self.left - len(marker)].decode("utf-8", "ignore") + marker
        self.left -= len(kept.encode())
        return kept

    def json(self, value: Any, *, typed: bool = False) -> Any:
        """A JSON value as it is when it fits (and is shallow), else its JSON text, cut.

        ``typed``: a typed value (execbox._values), which a cut text would turn into another
        value: it becomes ``{"$truncated": size}`` instead.
        """
        if value is None:
            return None
        try:
            text = json.dumps(value, ensure_ascii=False)
            size = len(text.encode())
        except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
            return truncated(0) if typed else self.text("<a value that cannot be shown>")
        # The depth walk only where the text has enough brackets to be that deep.
        deep = text.count("[") + text.count("{") > _MAX_DEPTH and _depth(value) > _MAX_DEPTH
        if size <= self.left and not deep:
            self.left -= size
            return value
        if typed:
            self.cut = True
            return truncated(size)
        return self.text(text)

    def files(self, files: dict[str, str]) -> dict[str, str]:
        """Fetched files that fit, whole (a cut file is no file): the others are left out."""
        kept = {}
        for path, content in files.items():
            size = len(path) + len(content)
            if size > self.left:
                self.cut = True
                continue
            self.left -= size
            kept[path] = content
        return kept

    def error(self, error: ErrorRecord | None) -> ExecutionError | None:
        if error is None:
            return None
        name = self.text(error.name)
        value = self.text(error.value)
        lines = []
        for line in error.traceback:
            if self.left <= 0:
                self.cut = True
                break
            lines.append(self.text(line))
        return ExecutionError(name=name, value=value, traceback=lines)


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > _MAX_DEPTH:
            return deepest
        if isinstance(item, list):
            stack.extend((x, depth + 1) for x in item)
        elif isinstance(item, dict):
            stack.extend((x, depth + 1) for x in item.values())
    return deepest


def _failed(index: int, job: BatchJob, message: str) -> JobResult:
    """A job the service could not run: no verdict on the program."""
    return JobResult(index=index, id=job.id, status=JobStatus.SERVICE_ERROR, message=message)


def _message(status: JobStatus, signal_name: str | None) -> str | None:
    if status is JobStatus.TIMEOUT:
        return "the program did not finish in time and was killed with its process group"
    if status is JobStatus.OUTPUT_LIMIT:
        return "the program printed more than the output limit allows and was killed"
    if status is JobStatus.CRASHED:
        return f"the program was killed by {signal_name or 'a signal'}"
    if status is JobStatus.OUT_OF_MEMORY:
        return "the program ran out of memory"
    if status is JobStatus.COMPILE_ERROR:
        return "the program did not compile (see compile.stderr)"
    return None
