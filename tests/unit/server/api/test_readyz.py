"""/readyz asks the engine at most once a second however often it is probed (it is open to anyone)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx

from execbox_server.api.deps import Services
from execbox_server.app import create_app
from execbox_server.backends.probe import EngineProbe
from execbox_server.errors import EngineUnavailable
from execbox_server.observability import Metrics
from execbox_server.pool import PoolStats
from execbox_server.quotas import QuotaLimits, Quotas
from execbox_server.settings import Settings


class CountingEngine:
    """The backend seam /readyz touches: its engine check, a real EngineProbe over a ping that
    is counted and can be made to fail or to hang."""

    def __init__(self, clock: Clock) -> None:
        self._probe = EngineProbe(self.ping, tasks=set(), clock=clock)
        self.pings = 0
        self.down = False
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()

    async def ping(self) -> None:
        self.pings += 1
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise EngineUnavailable("the Docker engine does not answer", retry_after=2)

    async def check_engine(self) -> None:
        await self._probe.check()


class WarmPool:
    warm = True

    def stats(self) -> PoolStats:
        return PoolStats(ready=1, starting=0, leased=0, waiting=0, min_ready=1, max_total=4, starts=1, start_failures=0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def served(engine: CountingEngine, clock: Clock) -> httpx.AsyncClient:
    settings = Settings()
    app = create_app(settings)
    services = Services(
        settings=settings,
        backend=cast(Any, engine),
        pool=cast(Any, WarmPool()),
        sessions=cast(Any, None),
        batch=cast(Any, None),
        metrics=Metrics(),
        quotas=Quotas(QuotaLimits(), sessions_held=lambda owner: 0),
    )
    app.state.services = services
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_many_probes_within_a_second_make_one_engine_call() -> None:
    clock = Clock()
    engine = CountingEngine(clock)
    async with served(engine, clock) as http:
        for _ in range(50):
            r = await http.get("/readyz")
            assert r.status_code == 200, r.text
        assert engine.pings == 1
        clock.now += 1.0
        assert (await http.get("/readyz")).status_code == 200
        assert engine.pings == 2


async def test_concurrent_probes_share_the_call_in_flight() -> None:
    clock = Clock()
    engine = CountingEngine(clock)
    engine.gate = asyncio.Event()
    async with served(engine, clock) as http:
        probes = [asyncio.ensure_future(http.get("/readyz")) for _ in range(20)]
        await engine.asked.wait()
        for _ in range(50):  # every probe reaches the shared call and waits on it
            await asyncio.sleep(0)
        engine.gate.set()
        assert {r.status_code for r in await asyncio.gather(*probes)} == {200}
        assert engine.pings == 1


async def test_an_engine_outage_is_cached_too_and_each_probe_says_503() -> None:
    clock = Clock()
    engine = CountingEngine(clock)
    engine.down = True
    async with served(engine, clock) as http:
        for _ in range(10):
            r = await http.get("/readyz")
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
            assert r.headers["retry-after"] == "2"
        assert engine.pings == 1
        engine.down = False
        clock.now += 1.5
        assert (await http.get("/readyz")).status_code == 200
        assert engine.pings == 2
