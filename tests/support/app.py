"""The real app on a FakeBackend: ``create_app`` with its lifespan run, and an httpx client on it.

The lifespan builds backend -> pool -> sessions -> batch exactly as in production; only the
backend is the fake. Leaving the context runs the app's shutdown (sessions, batch, pool, then
``backend.close()``), so a test can check that nothing was left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from execbox_server.api.deps import Services
from execbox_server.app import create_app
from execbox_server.settings import Settings
from tests.support.fake_backend import FakeBackend

__all__ = ["Served", "fast_settings", "served", "wait_until"]


def fast_settings(**overrides: Any) -> Settings:
    """Settings for tests on the fake: one warm spare, short waits, small files."""
    values: dict[str, Any] = {
        "min_ready": 1,
        "max_total": 4,
        "max_starting": 2,
        "acquire_timeout_s": 1.0,
        "interrupt_grace_s": 0.1,
        "batch_workers": 2,
        "batch_min_workers": 0,
        "max_file_bytes": 64 * 1024,
        "session_ttl_s": 600.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Served:
    http: httpx.AsyncClient
    app: FastAPI
    backend: FakeBackend

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services


@contextlib.asynccontextmanager
async def served(
    settings: Settings | None = None, backend: FakeBackend | None = None, *, warm: bool = True
) -> AsyncIterator[Served]:
    """The app on ``backend`` (a new FakeBackend by default), once its pool is warm if ``warm``."""
    settings = settings or fast_settings()
    backend = backend or FakeBackend(max_file_bytes=settings.max_file_bytes)
    # create_app's backend parameter is typed as the Docker class; the fake meets the protocols.
    app = create_app(settings, backend=backend)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            srv = Served(http=http, app=app, backend=backend)
            if warm:
                await wait_until(lambda: srv.services.pool.warm)
            yield srv


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Return once ``predicate()`` holds; fail the test after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"condition not reached within {timeout}s"
        await asyncio.sleep(0.005)
