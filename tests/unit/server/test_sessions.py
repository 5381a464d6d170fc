"""Sessions on the fake backend: the real SessionManager, KernelPool and Executor, no Docker.

A session keeps its kernel's state between executions; anything that leaves the kernel
unusable gives the session a fresh kernel and is reported as ``state_lost``, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from execbox._models import ExecuteRequest, Execution, ExecutionStatus, OneShotRequest, SessionCreate
from execbox_server import executor as executor_module
from execbox_server.backends.base import SandboxSpec, SandboxStatus
from execbox_server.errors import EngineUnavailable, InvalidLimits, PoolExhausted, SessionBusy, SessionNotFound
from execbox_server.executor import Executor
from execbox_server.kernel.events import Malformed
from execbox_server.pool import KernelPool
from execbox_server.sessions import SessionManager
from tests.support.app import fast_settings, wait_until
from tests.support.fake_backend import Die, Events, Fail, FakeBackend, FakeKernel, Hang


@dataclass
class Rig:
    backend: FakeBackend
    pool: KernelPool[FakeKernel]
    manager: SessionManager

    def kernel_of(self, session_id: str) -> FakeKernel:
        kernel = self.manager.get(None, session_id).kernel
        assert isinstance(kernel, FakeKernel)
        return kernel

    async def run(self, session_id: str, code: str, timeout_s: float | None = None) -> Execution:
        return await self.manager.execute(None, session_id, ExecuteRequest(code=code, timeout_s=timeout_s))


@contextlib.asynccontextmanager
async def rig(**overrides: Any) -> AsyncIterator[Rig]:
    settings = fast_settings(**overrides)
    backend = FakeBackend()
    pool: KernelPool[FakeKernel] = KernelPool(
        backend,
        spec=SandboxSpec(memory_mb=settings.memory_mb, cpus=settings.cpus),
        min_ready=settings.min_ready,
        max_total=settings.max_total,
        max_starting=settings.max_starting,
    )
    manager = SessionManager(settings, pool, Executor(backend), backend)
    pool.start()
    manager.start()
    try:
        await wait_until(lambda: pool.warm)
        yield Rig(backend, pool, manager)
    finally:
        await manager.close()
        await pool.close()


@pytest.fixture(autouse=True)
def quick_liveness_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    # A silent kernel is checked from the engine's side once a second; the fake answers at once.
    monkeypatch.setattr(executor_module, "LIVENESS_INTERVAL_S", 0.05)


async def test_a_new_session_leases_a_warm_kernel_with_its_own_limits() -> None:
    async with rig() as r:
        info = await r.manager.create(None, SessionCreate(memory_mb=256, cpus=0.5))
        kernel = r.kernel_of(info.id)
        assert info.sandbox_id == kernel.short_id
        assert kernel.limits_applied == [SandboxSpec(memory_mb=256, cpus=0.5)]
        assert r.pool.stats().leased == 1


async def test_variables_survive_from_one_execution_to_the_next() -> None:
    async with rig() as r:
        info = await r.manager.create(None, SessionCreate())
        first = await r.run(info.id, "x = 41")
        second = await r.run(info.id, "x + 1")
        assert first.status is ExecutionStatus.OK and second.status is ExecutionStatus.OK
        assert second.text == "42"
        assert (first.execution_count, second.execution_count) == (1, 2)
        assert not second.state_lost
        assert r.manager.info(r.manager.get(None, info.id)).execution_count == 2


async def test_output_and_a_raised_exception_come_back_as_data() -> None:
    async with rig() as r:
        info = await r.manager.create(None, SessionCreate())
        ex = await r.run(info.id, "import sys\nprint('out')\nprint('err', file=sys.stderr)\ndisplay(7)\n1 / 0")
        assert ex.status is ExecutionStatus.ERROR
        assert ex.stdout == "out\n" and ex.stderr == "err\n"
        assert [r.is_main_result for r in ex.results] == [False]
        assert ex.error is not None and ex.error.name == "ZeroDivisionError"
        assert any("1 / 0" in line for line in ex.error.traceback)
        assert not ex.state_lost  # an exception in the user's code costs no state


async def test_deleting_a_session_destroys_its_kernel() -> None:
    async with rig() as r:
        info = await r.manager.create(None, SessionCreate())
        kernel = r.kernel_of(info.id)
        await r.manager.delete(None, info.id)
        assert kernel.destroyed and kernel in r.backend.destroyed
        with pytest.raises(SessionNotFound):
            r.manager.get(None, info.id)
        assert r.pool.stats().leased == 0


async def test_another_owners_session_is_not_found() -> None:
    async with rig() as r:
        info = await r.manager.create("alice", SessionCreate())
        with pytest.raises(SessionNotFound):
            await r.manager.execute("bob", info.id, ExecuteRequest(code="1"))
        with pytest.raises(SessionNotFound):
            await r.manager.delete("bob", info.id)
        assert not r.manager.get("alice", info.id).kernel.destroyed


async def test_a_kernel_that_dies_is_reported_as_state_lost_and_replaced_by_a_fresh_one() -> None:
    async with rig() as r:
        r.backend.script("crash()", Die(SandboxStatus.EXITED, exit_code=139))
        info = await r.manager.create(None, SessionCreate())
        await r.run(info.id, "x = 1")
        old = r.kernel_of(info.id)

        ex = await r.run(info.id, "crash()")

        assert ex.status is ExecutionStatus.KERNEL_DIED
        assert ex.state_lost and ex.kernel_restarted
        assert ex.message is not None and "exit code 139, SIGSEGV" in ex.message
        assert old.destroyed
        new = r.kernel_of(info.id)
        assert new is not old and not new.destroyed
        after = await r.run(info.id, "x")
        assert after.status is ExecutionStatus.ERROR and after.error is not None
        assert after.error.name == "NameError"  # the fresh kernel never saw x
        assert not after.state_lost  # the loss was reported once, by the execution that caused it


async def test_running_out_of_memory_is_its_own_status() -> None:
    async with rig() as r:
        r.backend.script("grow()", Die(SandboxStatus.OOM_KILLED, exit_code=137))
        info = await r.manager.create(None, SessionCreate())
        ex = await r.run(info.id, "grow()")
        assert ex.status is ExecutionStatus.OUT_OF_MEMORY and ex.state_lost


async def test_a_vanished_container_is_reported_as_sandbox_lost() -> None:
    async with rig() as r:
        r.backend.script("wait()", Hang())
        info = await r.manager.create(None, SessionCreate())
        kernel = r.kernel_of(info.id)
        task = asyncio.ensure_future(r.run(info.id, "wait()"))
        await wait_until(lambda: kernel.conn.running)
        kernel.vanish()
        ex = await task
        assert ex.status is ExecutionStatus.SANDBOX_LOST and ex.state_lost
        assert r.kernel_of(info.id) is not kernel


async def test_a_kernel_that_breaks_the_protocol_is_killed_and_replaced() -> None:
    async with rig() as r:
        r.backend.script("forge()", Events((Malformed("a message with a bad signature"),)))
        info = await r.manager.create(None, SessionCreate())
        kernel = r.kernel_of(info.id)
        ex = await r.run(info.id, "forge()")
        assert ex.status is ExecutionStatus.KERNEL_DIED and ex.state_lost
        assert ex.message is not None and "bad signature" in ex.message
        assert "SIGKILL" in kernel.signals and kernel.destroyed


async def test_a_timeout_interrupts_the_code_and_keeps_the_variables() -> None:
    async with rig() as r:
        r.backend.script("loop()", Hang(interruptible=True))
        info = await r.manager.create(None, SessionCreate())
        await r.run(info.id, "x = 5")
        kernel = r.kernel_of(info.id)

        ex = await r.run(info.id, "loop()", timeout_s=0.2)

        assert ex.status is ExecutionStatus.TIMEOUT and not ex.state_lost
        assert kernel.conn.interrupts == 1 and kernel.sweeps == 1  # stray children swept too
        assert r.kernel_of(info.id) is kernel
        assert (await r.run(info.id, "x")).text == "5"


async def test_a_kernel_that_ignores_interrupts_is_killed_after_a_timeout_and_replaced() -> None:
    async with rig() as r:
        r.backend.script("stubborn()", Hang(interruptible=False))
        info = await r.manager.create(None, SessionCreate())
        kernel = r.kernel_of(info.id)

        ex = await r.run(info.id, "stubborn()", timeout_s=0.2)

        assert ex.status is ExecutionStatus.TIMEOUT and ex.state_lost
        assert kernel.signals[:2] == ["SIGINT", "SIGKILL"]  # the ladder: interrupt, SIGINT, kill
        assert kernel.destroyed and r.kernel_of(info.id) is not kernel


async def test_a_sandbox_that_cannot_be_swept_after_a_timeout_is_replaced() -> None:
    async with rig() as r:
        r.backend.script("loop()", Hang())
        r.backend.sweep_ok = False
        info = await r.manager.create(None, SessionCreate())
        kernel = r.kernel_of(info.id)
        ex = await r.run(info.id, "loop()", timeout_s=0.2)
        assert ex.status is ExecutionStatus.TIMEOUT and ex.state_lost
        assert kernel.destroyed


async def test_an_interrupt_stops_the_running_execution_and_keeps_the_kernel() -> None:
    async with rig() as r:
        r.backend.script("loop()", Hang())
        info = await r.manager.create(None, SessionCreate())
        kernel = r.kernel_of(info.id)
        assert r.manager.interrupt(None, info.id) is False  # nothing running yet
        task = asyncio.ensure_future(r.run(info.id, "loop()", timeout_s=30))
        await wait_until(lambda: kernel.conn.running)
        assert r.manager.interrupt(None, info.id) is True
        ex = await task
        assert ex.status is ExecutionStatus.INTERRUPTED and not ex.state_lost
        assert r.kernel_of(info.id) is kernel


async def test_a_session_runs_one_execution_at_a_time() -> None:
    async with rig() as r:
        r.backend.script("loop()", Hang())
        info = await r.manager.create(None, SessionCreate())
        kernel = r.kernel_of(info.id)
        task = asyncio.ensure_future(r.run(info.id, "loop()", timeout_s=30))
        await wait_until(lambda: kernel.conn.running)
        with pytest.raises(SessionBusy):
            await r.run(info.id, "1")
        r.manager.interrupt(None, info.id)
        await task
        assert (await r.run(info.id, "1")).status is ExecutionStatus.OK


async def test_a_failure_inside_the_service_is_reported_as_state_lost_on_the_next_execution() -> None:
    async with rig() as r:
        r.backend.script("boom()", Fail(EngineUnavailable("the engine went away mid-execution")))
        info = await r.manager.create(None, SessionCreate())
        await r.run(info.id, "x = 1")
        kernel = r.kernel_of(info.id)

        with pytest.raises(EngineUnavailable) as failed:
            await r.run(info.id, "boom()")
        assert "next execution reports state_lost" in failed.value.message
        assert kernel.destroyed  # its state was unknown: retired, not reused

        ex = await r.run(info.id, "x")
        assert ex.state_lost and ex.kernel_restarted
        assert ex.message is not None and "failed inside the service" in ex.message
        following = await r.run(info.id, "2")
        assert not following.state_lost


async def test_a_session_waits_for_a_slow_kernel_start_within_the_acquire_timeout() -> None:
    async with rig(min_ready=0, acquire_timeout_s=1.0) as r:
        r.backend.start_delay = 0.2
        info = await r.manager.create(None, SessionCreate())
        assert r.kernel_of(info.id).limits_applied


async def test_a_kernel_start_slower_than_the_acquire_timeout_is_pool_exhausted() -> None:
    async with rig(min_ready=0, acquire_timeout_s=0.1) as r:
        r.backend.start_delay = 0.5
        with pytest.raises(PoolExhausted) as exhausted:
            await r.manager.create(None, SessionCreate())
        assert exhausted.value.retry_after is not None
        assert r.manager.count == 0


async def test_no_session_is_handed_out_while_the_engine_is_down() -> None:
    async with rig() as r:
        r.backend.engine_down = True
        with pytest.raises(EngineUnavailable) as down:
            await r.manager.create(None, SessionCreate())
        assert down.value.status_code == 503
        assert r.manager.count == 0
        assert r.pool.stats().leased == 0


async def test_limits_the_sandbox_refuses_leave_no_session_and_no_leased_kernel() -> None:
    async with rig() as r:
        r.backend.refuse_limits = True
        with pytest.raises(InvalidLimits):
            await r.manager.create(None, SessionCreate(memory_mb=64))
        assert r.manager.count == 0
        assert r.pool.stats().leased == 0
        assert len(r.backend.destroyed) == 1  # the kernel it had leased is gone, not lent again


async def test_a_restart_gives_the_session_a_fresh_kernel_without_its_variables() -> None:
    async with rig() as r:
        info = await r.manager.create(None, SessionCreate())
        await r.run(info.id, "x = 1")
        old = r.kernel_of(info.id)
        restarted = await r.manager.restart(None, info.id)
        assert old.destroyed and restarted.sandbox_id != info.sandbox_id
        assert restarted.execution_count == 0
        ex = await r.run(info.id, "x")
        assert ex.error is not None and ex.error.name == "NameError"


async def test_an_idle_session_expires_and_its_kernel_is_destroyed() -> None:
    async with rig(session_ttl_s=0.3) as r:
        info = await r.manager.create(None, SessionCreate())
        kernel = r.kernel_of(info.id)
        await wait_until(lambda: r.manager.count == 0)
        await wait_until(lambda: kernel.destroyed)
        with pytest.raises(SessionNotFound):
            r.manager.get(None, info.id)


async def test_keepalive_holds_off_idle_expiry() -> None:
    async with rig(session_ttl_s=0.6) as r:
        info = await r.manager.create(None, SessionCreate())
        for _ in range(6):
            await asyncio.sleep(0.1)
            r.manager.keepalive(None, info.id)
        assert r.manager.count == 1
        assert not r.kernel_of(info.id).destroyed


async def test_a_one_shot_kernel_is_destroyed_after_its_execution() -> None:
    async with rig() as r:
        kernel, limits = await r.manager.lease_one_shot(OneShotRequest(code="6 * 7"))
        assert isinstance(kernel, FakeKernel)
        ex = await r.manager.run_one_shot(kernel, limits, "6 * 7")
        assert ex.text == "42"
        assert kernel.destroyed


async def test_closing_the_manager_destroys_every_sessions_kernel() -> None:
    async with rig() as r:
        infos = [await r.manager.create(None, SessionCreate()) for _ in range(3)]
        kernels = [r.kernel_of(i.id) for i in infos]
        await r.manager.close()
        assert all(k.destroyed for k in kernels)
        assert r.manager.count == 0
