"""BatchRunner on fake fork-server workers (real asyncio streams over a socketpair, the line
protocol of sandbox_images/python/forkserver.py): results, lost and misbehaving workers,
ownership of workers by API key, shutdown."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import pytest

from execbox._models import BatchJob, BatchResult, JobStatus
from execbox_server import batch as batch_module
from execbox_server.backends.docker import DockerBackend
from execbox_server.batch import BatchRunner
from execbox_server.errors import EngineUnavailable, PoolExhausted
from execbox_server.limits import ResolvedJob, batch_jobs
from execbox_server.settings import Settings
from tests.support.app import fast_settings, wait_until
from tests.support.fake_backend import FakeBackend, WorkerFault


@dataclass
class Rig:
    settings: Settings
    backend: FakeBackend
    runner: BatchRunner
    results: list[BatchResult]

    def jobs(self, *jobs: BatchJob) -> list[ResolvedJob]:
        return batch_jobs(self.settings, list(jobs))

    async def collect(self, result: BatchResult) -> None:
        self.results.append(result)

    async def run(self, *jobs: BatchJob, owner: str | None = None, concurrency: int | None = None) -> list[BatchResult]:
        self.results.clear()
        summary = await self.runner.run(owner, self.jobs(*jobs), self.collect, concurrency=concurrency)
        assert summary.total == len(jobs) == len(self.results)
        return sorted(self.results, key=lambda r: r.index)


@contextlib.asynccontextmanager
async def rig(**overrides: Any) -> AsyncIterator[Rig]:
    settings = fast_settings(**overrides)
    backend = FakeBackend()
    # BatchRunner's backend parameter is typed as the Docker class; the fake meets WorkerBackend.
    runner = BatchRunner(settings, cast(DockerBackend, backend))
    runner.start()
    try:
        yield Rig(settings, backend, runner, [])
    finally:
        await runner.close()


async def test_every_job_gets_its_result_in_a_fresh_process() -> None:
    async with rig() as r:
        results = await r.run(
            BatchJob(id="a", code="x = 1\nprint('set', x)"),
            BatchJob(id="b", code="print(x)"),  # another process: x was never defined here
            BatchJob(id="c", code="print(input()[::-1])", stdin="olleh\n"),
        )
        assert [(x.id, x.status) for x in results] == [
            ("a", JobStatus.OK),
            ("b", JobStatus.ERROR),
            ("c", JobStatus.OK),
        ]
        assert results[0].stdout == "set 1\n"
        assert results[1].error is not None and results[1].error.name == "NameError"
        assert results[2].stdout == "hello\n"


async def test_the_worker_is_sent_the_jobs_resolved_limits() -> None:
    async with rig(batch_default_timeout_s=7.0) as r:
        await r.run(BatchJob(code="pass", max_output_bytes=4096))
        (request,) = r.backend.workers[0].requests
        assert request["timeout_s"] == 7.0
        assert request["max_output_bytes"] == 4096
        assert request["memory_mb"] == r.settings.batch_memory_mb


async def test_a_batch_spreads_over_at_most_batch_workers_workers() -> None:
    async with rig(batch_workers=2, batch_lanes=4) as r:
        results = await r.run(*[BatchJob(code=f"print({i})") for i in range(10)])
        assert [x.stdout for x in results] == [f"{i}\n" for i in range(10)]
        assert len(r.backend.workers) == 2
        assert r.runner.stats() == {"alive": 2, "idle": 2}  # kept warm for the next batch


async def test_a_worker_that_drops_its_connection_is_replaced_and_its_jobs_reported_service_errors() -> None:
    async with rig(batch_workers=1) as r:
        r.backend.worker_faults["die()"] = WorkerFault.CLOSE
        results = await r.run(BatchJob(code="die()"), BatchJob(code="print('after')"), BatchJob(code="print('last')"))
        # The job already in the lost worker's socket is lost with it; later ones run on a new worker.
        assert [x.status for x in results] == [JobStatus.SERVICE_ERROR, JobStatus.SERVICE_ERROR, JobStatus.OK]
        assert results[0].message is not None and "was lost" in results[0].message
        assert results[2].stdout == "last\n"
        first = r.backend.workers[0]
        assert first.destroyed and len(r.backend.workers) == 2


async def test_a_worker_that_sends_garbage_is_replaced_and_the_batch_goes_on() -> None:
    async with rig(batch_workers=1) as r:
        r.backend.worker_faults["garble()"] = WorkerFault.GARBAGE
        results = await r.run(BatchJob(code="garble()"), BatchJob(code="print('ok')"))
        assert results[0].status is JobStatus.SERVICE_ERROR
        assert results[0].message is not None and "malformed result" in results[0].message
        assert results[1].status is JobStatus.OK
        assert r.backend.workers[0].destroyed


async def test_a_retiring_worker_runs_nothing_more_and_its_pending_jobs_run_elsewhere() -> None:
    async with rig(batch_workers=1) as r:
        r.backend.worker_faults["dirty()"] = WorkerFault.RETIRE
        results = await r.run(BatchJob(code="dirty()"), BatchJob(code="print('moved')"))
        # The retiring job's own result stands; the job queued behind it ran on a fresh worker.
        assert [x.status for x in results] == [JobStatus.ERROR, JobStatus.OK]  # dirty() is a NameError
        assert results[1].stdout == "moved\n"
        first, second = r.backend.workers
        assert first.destroyed and [q["code"] for q in second.requests] == ["print('moved')"]


async def test_a_silent_worker_is_given_up_after_the_jobs_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_module, "WORKER_MARGIN_S", 0.1)
    async with rig(batch_workers=1) as r:
        r.backend.worker_faults["stall()"] = WorkerFault.HANG
        results = await r.run(
            BatchJob(code="stall()", timeout_s=0.2), BatchJob(code="print(1)"), BatchJob(code="print(2)")
        )
        # The job pipelined behind the stalled one is lost with the worker; the next runs anew.
        assert [x.status for x in results] == [JobStatus.SERVICE_ERROR, JobStatus.SERVICE_ERROR, JobStatus.OK]
        assert r.backend.workers[0].destroyed and len(r.backend.workers) == 2


async def test_a_worker_is_never_lent_to_another_key() -> None:
    async with rig(batch_workers=1) as r:
        await r.run(BatchJob(code="pass"), owner="alice")
        (alices,) = r.backend.workers
        assert alices.owner == "alice" and not alices.destroyed
        await r.run(BatchJob(code="pass"), owner="alice")
        assert r.backend.workers == [alices]  # the same key reuses its warm worker
        await r.run(BatchJob(code="pass"), owner="bob")
        assert alices.destroyed  # destroyed to free the slot, never handed to bob
        assert len(r.backend.workers) == 2 and r.backend.workers[1].owner == "bob"
        assert [q["code"] for q in r.backend.workers[1].requests] == ["pass"]


async def test_a_busy_runner_refuses_with_pool_exhausted_after_the_acquire_timeout() -> None:
    async with rig(batch_workers=1, acquire_timeout_s=0.1) as r:
        held = await r.runner.reserve("alice")
        with pytest.raises(PoolExhausted):
            await r.runner.reserve("bob")
        summary = await r.runner.run("alice", r.jobs(BatchJob(code="print(2)")), r.collect, first=held)
        assert summary.by_status == {"ok": 1}


async def test_no_worker_starts_while_the_engine_is_down() -> None:
    async with rig() as r:
        r.backend.engine_down = True
        with pytest.raises(EngineUnavailable):
            await r.run(BatchJob(code="print(1)"))
        assert r.runner.stats() == {"alive": 0, "idle": 0}
        assert r.backend.workers == []


async def test_warm_workers_start_ahead_of_the_first_batch_and_close_destroys_them() -> None:
    async with rig(batch_workers=2, batch_min_workers=2) as r:
        await wait_until(lambda: r.runner.stats()["idle"] == 2)
        await r.runner.close()
        assert all(w.destroyed for w in r.backend.workers)
        assert r.backend.live_workers == []


async def test_an_idle_worker_whose_container_died_is_replaced_before_it_gets_a_job() -> None:
    async with rig() as r:
        await r.run(BatchJob(code="print(1)"))
        (first,) = r.backend.workers
        assert first.server is not None
        first.server.cancel()  # the worker's end closes, as when its container dies (engine restart)
        await wait_until(lambda: first.reader.at_eof())
        results = await r.run(BatchJob(code="print(2)"), BatchJob(code="print(3)"))
        assert [x.status for x in results] == [JobStatus.OK, JobStatus.OK], [x.message for x in results]
        assert first in r.backend.destroyed_workers and len(r.backend.workers) == 2


async def test_an_idle_worker_that_died_is_dropped_without_waiting_for_a_batch() -> None:
    async with rig() as r:
        await r.run(BatchJob(code="print(1)"))
        (first,) = r.backend.workers
        assert first.server is not None
        first.server.cancel()
        await wait_until(lambda: first in r.backend.destroyed_workers, timeout=5)
        assert r.runner.stats() == {"alive": 0, "idle": 0}
