"""Per-key quotas: derivation from settings, refusal past a share, give-back on every path."""

from __future__ import annotations

import asyncio

import pytest

from execbox_server.errors import QuotaExceeded
from execbox_server.quotas import QuotaLimits, Quotas
from execbox_server.settings import Settings


def quotas(sessions_held: dict[str | None, int] | None = None, **limits: int | None) -> Quotas:
    held = sessions_held if sessions_held is not None else {}
    return Quotas(QuotaLimits(**limits), sessions_held=lambda owner: held.get(owner, 0))


def test_with_two_keys_each_quota_defaults_to_half_the_global_limit() -> None:
    settings = Settings(api_keys=["a", "b"], max_sessions=64, max_total=16, batch_workers=2)
    assert QuotaLimits.from_settings(settings) == QuotaLimits(sessions=8, executions=8, batch_workers=1)
    tiny = Settings(api_keys=["a", "b"], max_sessions=1, max_total=1, min_ready=0, batch_workers=1)
    assert QuotaLimits.from_settings(tiny) == QuotaLimits(sessions=1, executions=1, batch_workers=1)


def test_with_one_key_or_none_there_is_no_per_key_limit_unless_configured() -> None:
    assert QuotaLimits.from_settings(Settings(api_keys=[])) == QuotaLimits()
    assert QuotaLimits.from_settings(Settings(api_keys=["only"])) == QuotaLimits()
    explicit = Settings(api_keys=[], key_max_sessions=3, key_max_executions=2, key_max_batch_workers=1)
    assert QuotaLimits.from_settings(explicit) == QuotaLimits(sessions=3, executions=2, batch_workers=1)


def test_past_a_quota_the_error_is_429_quota_exceeded_naming_the_setting_with_retry_after() -> None:
    q = quotas(executions=1)
    q.execution("a")
    with pytest.raises(QuotaExceeded) as info:
        q.execution("a")
    err = info.value
    assert err.status_code == 429 and err.code == "quota_exceeded"
    assert "EXECBOX_KEY_MAX_EXECUTIONS" in err.message and "quota of 1" in err.message
    assert err.headers() == {"Retry-After": "1"}


def test_one_key_at_its_quota_does_not_limit_another_key() -> None:
    q = quotas(executions=2)
    q.execution("a"), q.execution("a")
    with pytest.raises(QuotaExceeded):
        q.execution("a")
    q.execution("b")
    q.execution(None)  # auth off: the anonymous owner is one more key
    assert q.usage("a")["executions"] == 2 and q.usage("b")["executions"] == 1


def test_sessions_held_in_the_registry_count_and_their_removal_gives_the_share_back() -> None:
    held = {"a": 2}
    q = quotas(held, sessions=2)
    with pytest.raises(QuotaExceeded, match="EXECBOX_KEY_MAX_SESSIONS"):
        q.session("a")
    held["a"] = 1  # one expired or was deleted: nothing told the quotas, the registry did
    q.session("a").release()


async def test_sessions_being_created_count_so_concurrent_creates_cannot_overshoot() -> None:
    q = quotas(sessions=2)
    first, second = q.session("a"), q.session("a")
    with pytest.raises(QuotaExceeded):
        q.session("a")
    async with first:
        pass
    second.release()
    assert q.usage("a")["sessions"] == 0


def test_a_one_shot_counts_as_an_execution_and_as_a_kernel_held() -> None:
    held = {"a": 1}
    q = quotas(held, sessions=2, executions=5)
    slot = q.one_shot("a")
    assert q.usage("a") == {"sessions": 2, "executions": 1, "batch_workers": 0}
    with pytest.raises(QuotaExceeded, match="EXECBOX_KEY_MAX_SESSIONS"):
        q.session("a")
    slot.release()
    assert q.usage("a") == {"sessions": 1, "executions": 0, "batch_workers": 0}


def test_a_refused_one_shot_holds_nothing() -> None:
    q = quotas({"a": 1}, sessions=1, executions=5)
    with pytest.raises(QuotaExceeded):
        q.one_shot("a")
    assert q.usage("a")["executions"] == 0  # the execution check passed, but nothing was taken


def test_batch_workers_are_granted_up_to_the_quota_then_refused() -> None:
    q = quotas(batch_workers=3)
    two = q.batch("a", 2)
    one = q.batch("a", 5)
    assert (two.granted, one.granted) == (2, 1)
    with pytest.raises(QuotaExceeded, match="EXECBOX_KEY_MAX_BATCH_WORKERS"):
        q.batch("a", 1)
    two.release()
    assert q.batch("a", 4).granted == 2
    assert quotas().batch("a", 7).granted == 7  # no quota: what the batch asked for


def test_release_is_idempotent() -> None:
    q = quotas(executions=2)
    slot = q.execution("a")
    q.execution("a")
    slot.release()
    slot.release()
    assert q.usage("a")["executions"] == 1


async def test_hold_gives_the_share_back_when_the_work_fails_or_is_cancelled() -> None:
    q = quotas(executions=1)

    async def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await q.execution("a").hold(fail())
    assert q.usage("a")["executions"] == 0

    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(q.execution("a").hold(forever()))
    await started.wait()
    assert q.usage("a")["executions"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert q.usage("a")["executions"] == 0


async def test_async_with_gives_the_share_back_when_the_body_is_cancelled() -> None:
    q = quotas(executions=1)
    entered = asyncio.Event()

    async def run() -> None:
        async with q.execution("a"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(run())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert q.usage("a")["executions"] == 0
    q.execution("a").release()  # the share is free again
