"""A pool of warm spare kernels.

The pool keeps ``min_ready`` kernels started and answering, never more than ``max_total``
alive (ready + starting + leased) and never more than ``max_starting`` starting at once.
Under demand it keeps more, following the acquire rate: as many as the acquires of the last
``DEMAND_WINDOW_S`` would use up while two kernels start one after the other, up to
``max_ready``; spares above that target are removed once per second when demand falls.
A kernel serves one lease and is destroyed after it: ``release`` never puts a used kernel
back (the lesson of kernel_gateway). Replenishing runs in the background; an ``acquire``
that finds nothing ready waits for the next kernel up to its deadline, then fails with
``PoolExhausted``.

No lock is held across a backend call: the bookkeeping is plain counters touched only on
the event loop thread, and backend calls happen in tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from execbox_server.backends.base import Backend, SandboxSpec
from execbox_server.errors import EngineUnavailable, PoolClosed, PoolExhausted, ServiceError

__all__ = ["KernelPool", "PoolStats"]

log = logging.getLogger("execbox.pool")

K = TypeVar("K")

_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 10.0
_HEALTH_INTERVAL_S = 1.0
DEMAND_WINDOW_S = 10.0


@dataclass(frozen=True)
class PoolStats:
    ready: int
    starting: int
    leased: int
    waiting: int
    min_ready: int
    max_total: int
    starts: int
    start_failures: int


class KernelPool(Generic[K]):
    def __init__(
        self,
        backend: Backend[K],
        *,
        spec: SandboxSpec,
        min_ready: int,
        max_total: int,
        max_starting: int,
        max_ready: int | None = None,
    ) -> None:
        if min_ready > max_total:
            raise ValueError("min_ready must not exceed max_total")
        # Demand never asks for fewer than min_ready, nor for more than max_total.
        self._max_ready = min(max_total, max(min_ready, max_ready if max_ready is not None else min_ready))
        self._acquired: deque[float] = deque()  # when recent leases were taken
        self._start_s = 1.0  # a kernel's start, smoothed over the recent ones
        self._backend = backend
        self._spec = spec
        self._min_ready = min_ready
        self._max_total = max_total
        self._max_starting = max_starting
        self._ready: deque[K] = deque()
        self._leased: set[K] = set()
        self._starting = 0
        self._waiters: deque[asyncio.Future[K]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failures_in_a_row = 0
        self._was_warm = False
        self._retry_at = 0.0
        self._retry_handle: asyncio.TimerHandle | None = None
        self._last_error: ServiceError | None = None
        self._starts = 0
        self._start_failures = 0

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        """Begin filling the pool in the background, and watching the spares' health."""
        self._check_open()
        self._fill()
        task = asyncio.get_running_loop().create_task(self._watch_ready())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def warm(self) -> bool:
        """True once ``min_ready`` kernels have been ready, as long as starts keep succeeding.

        A lease that briefly takes the pool below ``min_ready`` does not make it cold:
        replenishing is under way. A failed start does, until kernels start again.
        """
        if self._closed:
            return False
        if len(self._ready) >= self._min_ready:
            self._was_warm = True
        return self._was_warm and self._failures_in_a_row == 0

    @property
    def last_error(self) -> ServiceError | None:
        return self._last_error

    def stats(self) -> PoolStats:
        return PoolStats(
            ready=len(self._ready),
            starting=self._starting,
            leased=len(self._leased),
            waiting=len(self._waiters),
            min_ready=self._min_ready,
            max_total=self._max_total,
            starts=self._starts,
            start_failures=self._start_failures,
        )

    async def acquire(self, timeout: float) -> K:
        """Lease a ready kernel, waiting up to ``timeout`` seconds for one.

        Raises:
            PoolClosed: the pool is shutting down.
            PoolExhausted: no kernel became free in time (carries a Retry-After hint).
            EngineUnavailable: the engine is unreachable (no kernel is handed out then), or
                kernels cannot be started because it is down.
        """
        self._check_open()
        await self._backend.check_engine()
        self._check_open()
        while self._ready:
            kernel = self._ready.popleft()
            if self._backend.sandbox_alive(kernel) is False:
                # Died since the last health check: never hand out a kernel whose sandbox is gone.
                log.warning("a ready kernel's sandbox is gone; discarding it")
                self._discard_ready(kernel)
                continue
            self._leased.add(kernel)
            self._acquired.append(time.monotonic())
            self._fill()
            return kernel
        waiter: asyncio.Future[K] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._acquired.append(time.monotonic())
        self._fill()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a kernel in the same instant we gave up: it is unused, keep it.
                kernel = waiter.result()
                self._leased.discard(kernel)
                self._ready.appendleft(kernel)
                self._serve_waiters()
            waiter.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            if self._closed:
                raise PoolClosed("the service is shutting down") from None
            if self._last_error is not None and self._failures_in_a_row:
                raise self._last_error from None
            raise PoolExhausted(
                f"no sandbox became free within {timeout:.1f}s "
                f"({len(self._leased)} in use, at most {self._max_total}); retry later",
                # Sooner when kernels are already on their way.
                retry_after=1.0 if self._starting else 2.0,
            ) from None

    async def release(self, kernel: K) -> None:
        """End a lease: the kernel is destroyed (never reused) and a replacement is started.

        Safe to call during cancellation: the destruction runs to the end regardless.
        """
        self._leased.discard(kernel)
        try:
            await asyncio.shield(self._backend.destroy(kernel))
        finally:
            if not self._closed:
                self._fill()

    async def close(self) -> None:
        """Stop replenishing, fail the waiters and destroy every kernel the pool knows."""
        if self._closed:
            return
        self._closed = True
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed("the service is shutting down"))
        self._waiters.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        kernels = list(self._ready) + list(self._leased)
        self._ready.clear()
        self._leased.clear()
        await asyncio.gather(*(self._backend.destroy(k) for k in kernels), return_exceptions=True)

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed("the service is shutting down")

    def _fill(self) -> None:
        """Start as many kernels as the targets call for and the bounds allow."""
        if self._closed:
            return
        now = time.monotonic()
        if now < self._retry_at:
            self._schedule_retry(self._retry_at - now)
            return
        want = self._target_ready() + len(self._waiters) - len(self._ready) - self._starting
        room = self._max_total - (len(self._ready) + len(self._leased) + self._starting)
        slots = self._max_starting - self._starting
        for _ in range(max(0, min(want, room, slots))):
            self._starting += 1
            task = asyncio.get_running_loop().create_task(self._start_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _target_ready(self) -> int:
        """Spares to keep now: min_ready, or what recent demand would use up while two starts
        run one after the other, up to max_ready."""
        horizon = time.monotonic() - DEMAND_WINDOW_S
        while self._acquired and self._acquired[0] < horizon:
            self._acquired.popleft()
        demand = math.ceil(len(self._acquired) / DEMAND_WINDOW_S * 2 * self._start_s)
        return max(self._min_ready, min(self._max_ready, demand))

    def _schedule_retry(self, delay: float) -> None:
        if self._retry_handle is None or self._retry_handle.cancelled():
            loop = asyncio.get_running_loop()

            def retry() -> None:
                self._retry_handle = None
                self._fill()

            self._retry_handle = loop.call_later(delay, retry)

    async def _start_one(self) -> None:
        kernel: K | None = None
        began = time.monotonic()
        try:
            kernel = await self._backend.start(self._spec)
        except asyncio.CancelledError:
            self._starting -= 1
            raise
        except Exception as exc:
            self._starting -= 1
            self._start_failures += 1
            self._failures_in_a_row += 1
            self._was_warm = False
            self._last_error = (
                exc if isinstance(exc, ServiceError) else EngineUnavailable(f"sandbox start failed: {exc}")
            )
            backoff = min(_BACKOFF_MAX_S, _BACKOFF_MIN_S * 2 ** (self._failures_in_a_row - 1))
            self._retry_at = time.monotonic() + backoff
            log.warning(
                "sandbox start failed (%d in a row), retrying in %.1fs: %s",
                self._failures_in_a_row,
                backoff,
                exc,
            )
            self._fill()
            return
        self._starting -= 1
        self._starts += 1
        self._start_s = 0.8 * self._start_s + 0.2 * (time.monotonic() - began)
        self._failures_in_a_row = 0
        self._last_error = None
        self._retry_at = 0.0
        if self._closed:
            await asyncio.shield(self._backend.destroy(kernel))
            return
        self._ready.append(kernel)
        self._serve_waiters()
        self._fill()

    async def _watch_ready(self) -> None:
        """Drop spares whose sandbox died (killed from outside, the engine restarted), so the
        pool's counts stay true and replacements start before anyone asks for them."""
        while not self._closed:
            await asyncio.sleep(_HEALTH_INTERVAL_S)
            for kernel in [k for k in self._ready if self._backend.sandbox_alive(k) is False]:
                log.warning("a ready kernel's sandbox is gone; discarding it")
                self._ready.remove(kernel)
                self._discard_ready(kernel)
            # Demand fell: the spares it called for go, the oldest first, one a second.
            if len(self._ready) > self._target_ready() and not self._waiters:
                self._discard_ready(self._ready.popleft())

    def _discard_ready(self, kernel: K) -> None:
        task = asyncio.get_running_loop().create_task(self._backend.destroy(kernel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._fill()

    def _serve_waiters(self) -> None:
        while self._ready and self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            kernel = self._ready.popleft()
            self._leased.add(kernel)
            waiter.set_result(kernel)
