"""Pool logic on a fake backend: bounds, waiting, exhaustion, failures, shutdown."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from execbox_server.backends.base import SandboxSpec
from execbox_server.errors import EngineUnavailable, PoolClosed, PoolExhausted
from execbox_server.pool import KernelPool

SPEC = SandboxSpec(memory_mb=256, cpus=1.0)


class FakeKernel:
    def __init__(self, n: int) -> None:
        self.n = n
        self.destroyed = False


class FakeBackend:
    def __init__(self, start_delay: float = 0.0) -> None:
        self.start_delay = start_delay
        self.fail_with: Exception | None = None
        self.started: list[FakeKernel] = []
        self.destroyed: list[FakeKernel] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self._ids = itertools.count()
        self.engine_down: Exception | None = None
        self.dead: set[FakeKernel] = set()

    async def start(self, spec: SandboxSpec) -> FakeKernel:
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await asyncio.sleep(self.start_delay)
            if self.fail_with is not None:
                raise self.fail_with
            kernel = FakeKernel(next(self._ids))
            self.started.append(kernel)
            return kernel
        finally:
            self.concurrent -= 1

    async def destroy(self, kernel: FakeKernel) -> None:
        await asyncio.sleep(0)
        kernel.destroyed = True
        self.destroyed.append(kernel)

    async def check_engine(self) -> None:
        if self.engine_down is not None:
            raise self.engine_down

    def sandbox_alive(self, kernel: FakeKernel) -> bool | None:
        return kernel not in self.dead

    @property
    def alive(self) -> int:
        return len(self.started) - len(self.destroyed)


async def wait_for(predicate, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def make_pool(
    backend: FakeBackend, *, min_ready: int = 2, max_total: int = 4, max_starting: int = 2
) -> KernelPool[FakeKernel]:
    return KernelPool(backend, spec=SPEC, min_ready=min_ready, max_total=max_total, max_starting=max_starting)


async def test_pool_fills_to_min_ready_and_becomes_warm() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, min_ready=3, max_total=5)
    pool.start()
    await wait_for(lambda: pool.stats().ready == 3)
    assert pool.warm
    await asyncio.sleep(0.02)
    assert backend.alive == 3  # not more than asked for
    await pool.close()


async def test_acquire_takes_a_warm_kernel_and_replenishes() -> None:
    backend = FakeBackend()
    pool = make_pool(backend)
    pool.start()
    await wait_for(lambda: pool.stats().ready == 2)
    kernel = await pool.acquire(timeout=1)
    assert kernel in backend.started
    await wait_for(lambda: pool.stats().ready == 2)
    assert pool.stats().leased == 1
    await pool.close()


async def test_release_destroys_the_kernel_instead_of_reusing_it() -> None:
    backend = FakeBackend()
    pool = make_pool(backend)
    pool.start()
    kernel = await pool.acquire(timeout=1)
    await pool.release(kernel)
    assert kernel.destroyed
    await wait_for(lambda: pool.stats().ready == 2)
    again = [await pool.acquire(timeout=1) for _ in range(2)]
    assert kernel not in again
    await pool.close()


async def test_never_more_than_max_total_alive_nor_max_starting_at_once() -> None:
    backend = FakeBackend(start_delay=0.02)
    pool = make_pool(backend, min_ready=1, max_total=3, max_starting=2)
    pool.start()
    leased = await asyncio.gather(*(pool.acquire(timeout=2) for _ in range(3)))
    assert backend.alive == 3
    assert backend.max_concurrent <= 2
    with pytest.raises(PoolExhausted) as info:
        await pool.acquire(timeout=0.1)
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    assert backend.alive == 3
    for kernel in leased:
        await pool.release(kernel)
    await pool.close()


async def test_waiter_gets_the_kernel_a_release_makes_room_for() -> None:
    backend = FakeBackend(start_delay=0.01)
    pool = make_pool(backend, min_ready=0, max_total=1, max_starting=1)
    pool.start()
    first = await pool.acquire(timeout=1)
    waiting = asyncio.ensure_future(pool.acquire(timeout=2))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await pool.release(first)
    second = await waiting
    assert second is not first and not second.destroyed
    await pool.close()


async def test_cancelled_acquire_leaves_no_waiter_and_no_lost_kernel() -> None:
    backend = FakeBackend(start_delay=0.05)
    pool = make_pool(backend, min_ready=0, max_total=2)
    pool.start()
    task = asyncio.ensure_future(pool.acquire(timeout=5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats().waiting == 0
    await wait_for(lambda: pool.stats().starting == 0)
    # The kernel started for the cancelled waiter is kept ready, not leaked.
    assert pool.stats().leased == 0
    assert backend.alive == pool.stats().ready
    await pool.close()
    assert backend.alive == 0


async def test_engine_failure_surfaces_as_engine_unavailable_and_recovers() -> None:
    backend = FakeBackend()
    backend.fail_with = EngineUnavailable("engine down")
    pool = make_pool(backend, min_ready=1)
    pool.start()
    with pytest.raises(EngineUnavailable):
        await pool.acquire(timeout=0.3)
    assert not pool.warm
    backend.fail_with = None
    kernel = await pool.acquire(timeout=5)  # the retry with backoff starts kernels again
    assert kernel in backend.started
    await pool.close()


async def test_close_destroys_ready_and_leased_kernels_and_fails_waiters() -> None:
    backend = FakeBackend(start_delay=0.01)
    pool = make_pool(backend, min_ready=1, max_total=2)
    pool.start()
    await pool.acquire(timeout=1)
    await pool.acquire(timeout=1)
    waiter = asyncio.ensure_future(pool.acquire(timeout=5))
    await asyncio.sleep(0.02)
    await pool.close()
    with pytest.raises(PoolClosed):
        await waiter
    assert backend.alive == 0
    with pytest.raises(PoolClosed):
        await pool.acquire(timeout=1)


async def test_no_kernel_is_handed_out_while_the_engine_is_unreachable() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, min_ready=1)
    pool.start()
    await wait_for(lambda: pool.stats().ready == 1)
    backend.engine_down = EngineUnavailable("engine down")
    with pytest.raises(EngineUnavailable):
        await pool.acquire(timeout=1)
    assert pool.stats().ready == 1 and pool.stats().leased == 0  # the spare is kept for later
    backend.engine_down = None
    assert await pool.acquire(timeout=1) in backend.started
    await pool.close()


async def test_a_ready_kernel_whose_sandbox_died_is_discarded_not_handed_out() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, min_ready=2)
    pool.start()
    await wait_for(lambda: pool.stats().ready == 2)
    first = backend.started[0]
    backend.dead.add(first)
    kernel = await pool.acquire(timeout=1)
    assert kernel is not first
    await wait_for(lambda: first.destroyed)
    await wait_for(lambda: pool.stats().ready == 2)  # and replaced
    await pool.close()


async def test_spares_whose_sandbox_died_are_replaced_without_waiting_for_a_lease() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, min_ready=2)
    pool.start()
    await wait_for(lambda: pool.stats().ready == 2)
    backend.dead.update(backend.started)
    await wait_for(lambda: all(k.destroyed for k in backend.dead) and pool.stats().ready == 2, timeout=5)
    await pool.close()


async def test_the_pool_keeps_more_spares_under_demand_and_shrinks_back_when_it_falls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import execbox_server.pool as pool_module

    # A long window: however slow this machine, every lease below still counts as recent.
    monkeypatch.setattr(pool_module, "DEMAND_WINDOW_S", 20.0)
    backend = FakeBackend(start_delay=1.0)
    pool = KernelPool(backend, spec=SPEC, min_ready=1, max_total=20, max_starting=8, max_ready=3)
    pool.start()
    await wait_for(lambda: pool.stats().ready == 1, timeout=5)
    # 24 leases in the window with starts of >= 1 s: demand for more than 3 spares, capped at 3.
    for _ in range(24):
        await pool.release(await pool.acquire(timeout=30))
    await wait_for(lambda: pool.stats().ready == 3, timeout=10)
    await asyncio.sleep(1.2)
    assert pool.stats().ready + pool.stats().starting <= 3  # never past max_ready
    # Demand gone (the window now ends before the last lease): back to min_ready.
    monkeypatch.setattr(pool_module, "DEMAND_WINDOW_S", 0.001)
    await wait_for(lambda: pool.stats().ready == 1, timeout=10)
    await wait_for(lambda: backend.alive == 1)
    await pool.close()
