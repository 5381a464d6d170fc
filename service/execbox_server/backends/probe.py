"""The engine's answer to a ping, cached briefly and shared by concurrent askers.

Asked before a kernel is handed out and by ``/readyz`` (open to anyone): without the cache,
every such request — or a flood of them — would be one engine call on the shared pools.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from execbox_server.errors import EngineUnavailable

__all__ = ["READY_PING_TTL_S", "EngineProbe"]

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
