"""Dependencies injected into the routers: the services built by the app's lifespan."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import SecretStr

from execbox_server.backends.docker import DockerBackend
from execbox_server.batch import BatchRunner
from execbox_server.errors import EngineUnavailable, Unauthorized
from execbox_server.observability import Metrics
from execbox_server.pool import KernelPool
from execbox_server.quotas import Quotas
from execbox_server.sessions import SessionManager
from execbox_server.settings import Settings

__all__ = ["EngineProbe", "Owner", "Services", "ServicesDep", "authenticate", "get_owner", "get_services"]

# /readyz asks the engine at most this often, however often it is probed.
READY_PING_TTL_S = 1.0


class EngineProbe:
    """The engine's answer to a ping, asked at most once per ``ttl_s``.

    ``/readyz`` is unauthenticated: without this every probe — or a flood of them — is one
    engine call on the shared engine pools. Callers that arrive while a ping is in flight
    share it; a caller that goes away does not cancel it for the others.
    """

    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        *,
        tasks: set[asyncio.Task[None]],
        ttl_s: float = READY_PING_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._tasks = tasks
        self._ttl_s = ttl_s
        self._clock = clock
        self._checked_at: float | None = None
        self._error: EngineUnavailable | None = None
        self._inflight: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """Raises EngineUnavailable when the engine's last answer (at most ``ttl_s`` old) was no."""
        if self._checked_at is None or self._clock() - self._checked_at >= self._ttl_s:
            if self._inflight is None:
                self._inflight = asyncio.get_running_loop().create_task(self._ask())
                self._tasks.add(self._inflight)  # cancelled at shutdown with the others
                self._inflight.add_done_callback(self._tasks.discard)
            await asyncio.shield(self._inflight)
        if self._error is not None:
            # A fresh exception per caller: one instance raised everywhere grows its traceback.
            raise EngineUnavailable(self._error.message, retry_after=self._error.retry_after)

    async def _ask(self) -> None:
        try:
            await self._ping()
            self._error = None
            self._checked_at = self._clock()
        except EngineUnavailable as exc:
            self._error = exc
            self._checked_at = self._clock()
        finally:
            self._inflight = None


@dataclass
class Services:
    settings: Settings
    backend: DockerBackend
    pool: KernelPool[Any]
    sessions: SessionManager
    batch: BatchRunner
    metrics: Metrics
    quotas: Quotas
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    engine_probe: EngineProbe = field(init=False)

    def __post_init__(self) -> None:
        self.engine_probe = EngineProbe(self.backend.ping, tasks=self.tasks)


# Dependencies are ``async def``: FastAPI runs plain ``def`` ones in a thread pool, a thread
# hop on every request for what is a dictionary lookup.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def authenticate(keys: Sequence[SecretStr], authorization: str) -> str | None:
    """The owner an ``Authorization`` header value stands for: a fingerprint of its key.

    ``None`` when no keys are configured (authentication off: every caller is one owner).

    Raises:
        Unauthorized: keys are configured and the header carries none that matches.
    """
    if not keys:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this server requires 'Authorization: Bearer <key>'")
    supplied = token.strip().encode()
    match = None
    # Compare against every key, in constant time each, so timing says nothing.
    for key in keys:
        if hmac.compare_digest(supplied, key.get_secret_value().encode()):
            match = key.get_secret_value()
    if match is None:
        raise Unauthorized("the API key is not valid for this server")
    return hashlib.sha256(match.encode()).hexdigest()[:16]


async def get_owner(request: Request, services: ServicesDep) -> str | None:
    """The caller's identity: a fingerprint of its API key, or None when auth is off.

    The ``KeyCheck`` middleware has already refused a bad key before the body was read;
    this check stays so that a route is never reachable without one, whatever the wiring.

    Raises:
        Unauthorized: keys are configured and the request carries none that matches.
    """
    return authenticate(services.settings.api_keys, request.headers.get("authorization", ""))


Owner = Annotated[str | None, Depends(get_owner)]
