"""Batch execution at harness speed: one-shot programs on warm fork-server workers.

A worker is a locked-down container (the same flags as a session's) whose fork server forks
a fresh child per job (see sandbox_images/python/forkserver.py). This module keeps up to
``batch_workers`` of them, hands each to one batch at a time, and never lets a worker serve
two API keys: a worker belongs to the first key that uses it and is destroyed, not lent,
when another key needs the slot. A worker that stops answering or drops its connection is
destroyed and replaced; its job is reported as ``crashed`` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from execbox._models import BatchJob, BatchResult, BatchSummary, ExecutionError, JobStatus, TestOutcome
from execbox_server.backends.base import SandboxSpec
from execbox_server.backends.docker import DockerBackend, ForkWorker
from execbox_server.errors import PoolClosed, PoolExhausted
from execbox_server.observability import Metrics
from execbox_server.settings import Settings

__all__ = ["BatchRunner"]

log = logging.getLogger("execbox.batch")

OnResult = Callable[[BatchResult], Awaitable[None]]

# Beyond a job's own timeout, the worker needs a moment to kill, sweep and answer.
WORKER_MARGIN_S = 10.0
RECYCLE_AFTER_JOBS = 20_000
PIPELINE_DEPTH = 2


class BatchRunner:
    def __init__(self, settings: Settings, backend: DockerBackend, *, metrics: Metrics | None = None) -> None:
        self._metrics = metrics or Metrics()
        self._settings = settings
        self._backend = backend
        self._idle: list[ForkWorker] = []
        self._alive = 0
        self._changed = asyncio.Condition()
        self._closed = False
        self._warm_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._warm_task = asyncio.get_running_loop().create_task(self._warm())

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
        if self._warm_task is not None:
            self._warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_task
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._backend.destroy_worker(w) for w in idle), return_exceptions=True)

    def stats(self) -> dict[str, int]:
        return {"alive": self._alive, "idle": len(self._idle)}

    # ------------------------------------------------------------------ batches

    async def reserve(self, owner: str | None) -> ForkWorker:
        """A worker for a batch about to start, taken before any result is streamed.

        Raises:
            PoolExhausted: no worker could be had within the acquire timeout.
            PoolClosed: the service is shutting down.
        """
        return await self._acquire(owner)

    async def run(
        self,
        owner: str | None,
        jobs: Sequence[BatchJob],
        on_result: OnResult,
        *,
        concurrency: int | None = None,
        first: ForkWorker | None = None,
    ) -> BatchSummary:
        """Run every job; ``on_result`` gets each result as it completes (completion order).

        ``first`` is a worker from :meth:`reserve`; without it one is acquired here.

        Raises:
            PoolExhausted, PoolClosed (see :meth:`reserve`).
        """
        started = time.monotonic()
        queue: asyncio.Queue[tuple[int, BatchJob]] = asyncio.Queue()
        for item in enumerate(jobs):
            queue.put_nowait(item)
        counts: dict[str, int] = {}

        async def emit(result: BatchResult) -> None:
            counts[result.status.value] = counts.get(result.status.value, 0) + 1
            self._metrics.batch_jobs.labels(result.status.value).inc()
            await on_result(result)

        n = min(len(jobs), self._settings.batch_workers, concurrency or len(jobs))
        if first is None:
            first = await self._acquire(owner)
        lanes = [self._lane(owner, queue, emit, first)]
        lanes += [self._lane(owner, queue, emit, None) for _ in range(n - 1)]
        await asyncio.gather(*lanes)
        # Every job gets a result: what no lane could take (workers lost and none to be had)
        # is reported, not dropped.
        while not queue.empty():
            index, job = queue.get_nowait()
            await emit(_failed(index, job, "no batch worker could be had to run this job"))
        return BatchSummary(total=len(jobs), by_status=counts, wall_ms=round((time.monotonic() - started) * 1000, 3))

    async def _lane(
        self,
        owner: str | None,
        queue: asyncio.Queue[tuple[int, BatchJob]],
        emit: OnResult,
        worker: ForkWorker | None,
    ) -> None:
        """One worker's share of a batch: take jobs until the queue is empty.

        Two jobs are in flight per worker: the next one is already in the worker's socket
        while the current one runs, so the host's round trip costs the worker no idle time.
        """
        inflight: deque[tuple[int, BatchJob, float]] = deque()
        try:
            while True:
                if worker is None:
                    if queue.empty():
                        return
                    try:
                        worker = await self._acquire(owner)
                    except (PoolExhausted, PoolClosed):
                        return  # other lanes (or run()'s final sweep) take the rest
                while len(inflight) < PIPELINE_DEPTH and not queue.empty():
                    index, job = queue.get_nowait()
                    try:
                        self._send(worker, index, job)
                    except OSError:
                        inflight.append((index, job, time.monotonic()))
                        break
                    inflight.append((index, job, time.monotonic()))
                if not inflight:
                    return
                index, job, _sent = inflight[0]
                try:
                    await worker.writer.drain()
                    line = await asyncio.wait_for(worker.reader.readline(), self._timeout(job) + WORKER_MARGIN_S)
                    if not line:
                        raise ConnectionError("the worker closed its connection")
                    raw = json.loads(line)
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                    log.warning("batch worker %s lost during job %d: %r", worker.short_id, index, exc)
                    while inflight:
                        i, j, t = inflight.popleft()
                        lost = _failed(i, j, f"the worker running this job was lost ({exc!r}) and replaced")
                        lost.wall_ms = round((time.monotonic() - t) * 1000, 3)
                        await emit(lost)
                    await self._discard(worker)
                    worker = None
                    continue
                inflight.popleft()
                worker.jobs += 1
                await emit(_to_result(index, job, raw))
                if worker.jobs >= RECYCLE_AFTER_JOBS and not inflight:
                    await self._discard(worker)
                    worker = None
        finally:
            if worker is not None:
                if inflight:  # cancelled mid-flight: the worker's state is unknown
                    await asyncio.shield(self._discard(worker))
                else:
                    await asyncio.shield(self._release(worker))

    def _timeout(self, job: BatchJob) -> float:
        return min(job.timeout_s or self._settings.batch_default_timeout_s, self._settings.max_timeout_s)

    def _send(self, worker: ForkWorker, index: int, job: BatchJob) -> None:
        s = self._settings
        payload = {
            "id": job.id,
            "code": job.code,
            "stdin": job.stdin,
            "timeout_s": self._timeout(job),
            "memory_mb": min(job.memory_mb or s.batch_memory_mb, s.batch_memory_mb),
            "max_output_bytes": min(job.max_output_bytes or s.max_output_bytes, s.max_output_bytes_limit),
            "tests": job.tests.model_dump() if job.tests is not None else None,
        }
        worker.writer.write(json.dumps(payload).encode() + b"\n")

    # ------------------------------------------------------------------ workers

    async def _acquire(self, owner: str | None) -> ForkWorker:
        deadline = time.monotonic() + self._settings.acquire_timeout_s
        while True:
            if self._closed:
                raise PoolClosed("the service is shutting down")
            async with self._changed:
                mine = next((w for w in self._idle if w.owner == owner), None)
                mine = mine or next((w for w in self._idle if w.owner is None), None)
                if mine is not None:
                    self._idle.remove(mine)
                    mine.owner = owner
                    return mine
                start_new = self._alive < self._settings.batch_workers
                evict = None
                if not start_new and self._idle:
                    # Never lend another key's worker: destroy it and start a fresh one.
                    evict = self._idle.pop(0)
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

    async def _start_worker(self, *, reserved: bool = False) -> ForkWorker:
        if not reserved:
            self._alive += 1
        try:
            spec = SandboxSpec(memory_mb=self._settings.batch_memory_mb, cpus=self._settings.batch_cpus)
            return await self._backend.start_worker(spec)
        except BaseException:
            if not reserved:
                self._alive -= 1
            raise

    async def _release(self, worker: ForkWorker) -> None:
        if self._closed:
            await self._discard(worker)
            return
        async with self._changed:
            self._idle.append(worker)
            self._changed.notify_all()

    async def _discard(self, worker: ForkWorker) -> None:
        await asyncio.shield(self._backend.destroy_worker(worker))
        async with self._changed:
            self._alive -= 1
            self._changed.notify_all()


def _failed(index: int, job: BatchJob, message: str) -> BatchResult:
    return BatchResult(index=index, id=job.id, status=JobStatus.CRASHED, message=message)


def _to_result(index: int, job: BatchJob, raw: dict[str, Any]) -> BatchResult:
    error = raw.get("error")
    tests = raw.get("tests")
    return BatchResult(
        index=index,
        id=job.id,
        status=JobStatus(raw.get("status", "crashed")),
        stdout=raw.get("stdout") or "",
        stderr=raw.get("stderr") or "",
        error=ExecutionError.model_validate(error) if error else None,
        value=raw.get("value"),
        exit_code=raw.get("exit_code"),
        signal=raw.get("signal"),
        wall_ms=raw.get("wall_ms") or 0.0,
        cpu_ms=raw.get("cpu_ms"),
        peak_memory_bytes=raw.get("peak_memory_bytes"),
        truncated=bool(raw.get("truncated")),
        tests=[TestOutcome.model_validate(t) for t in tests] if tests is not None else None,
        message=_message(raw),
    )


def _message(raw: dict[str, Any]) -> str | None:
    status = raw.get("status")
    if status == "timeout":
        return "the program did not finish in time and was killed with its process group"
    if status == "output_limit":
        return "the program printed more than the output limit allows and was killed"
    if status == "crashed":
        return f"the program was killed by {raw.get('signal') or 'a signal'}"
    if status == "out_of_memory":
        return "the program ran out of memory"
    return None
