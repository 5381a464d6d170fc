"""Per-key quotas: how much of the server one API key may hold at once.

Each share is counted per owner (the key's fingerprint from ``api.deps.get_owner``; ``None``
when authentication is off, so all callers are then one owner):

- sessions: sessions held, plus one-shot executions running — a one-shot holds a kernel
  from the same pool for as long as it runs, so without counting it a key at its session
  quota could still take every remaining kernel;
- executions: executions running, session and one-shot, streamed or not;
- batch workers: workers the key's batches use at once.

Taking a share is synchronous, so the check and the take are one step on the event loop and
two requests cannot both take the last unit. A :class:`Slot` gives its shares back exactly
once — from ``async with``, from :meth:`Slot.hold` or by hand — and giving back never awaits,
so a cancellation cannot skip it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from execbox_server.errors import QuotaExceeded
from execbox_server.settings import Settings

__all__ = ["QuotaLimits", "Quotas", "Slot"]

T = TypeVar("T")
OwnerId = str | None

# Retry-After hints: a session is given back when its user deletes it (or it expires), an
# execution or a batch lane when it ends — usually much sooner.
SESSION_RETRY_AFTER_S = 5.0
EXECUTION_RETRY_AFTER_S = 1.0
BATCH_RETRY_AFTER_S = 2.0


@dataclass(frozen=True)
class QuotaLimits:
    """Per-key limits; ``None`` means no per-key limit (the global limits still apply)."""

    sessions: int | None = None
    executions: int | None = None
    batch_workers: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> QuotaLimits:
        """Explicit ``EXECBOX_KEY_MAX_*`` settings win; unset ones are derived.

        With two or more keys configured, an unset quota is half of the global limit it
        divides (at least 1): no single key can then take everything, and two keys at their
        quota can still use the whole server. With one key or none there is one tenant, and
        a share below the global limit would only turn its work away.
        """
        tenants = len(settings.api_keys) >= 2

        def pick(explicit: int | None, total: int) -> int | None:
            if explicit is not None:
                return explicit
            return max(1, total // 2) if tenants else None

        return cls(
            sessions=pick(settings.key_max_sessions, min(settings.max_sessions, settings.max_total)),
            executions=pick(settings.key_max_executions, settings.max_total),
            batch_workers=pick(settings.key_max_batch_workers, settings.batch_workers),
        )


class Slot:
    """Shares taken from :class:`Quotas`, given back once however their holder ends."""

    def __init__(self, takes: list[tuple[dict[OwnerId, int], OwnerId, int]], *, granted: int = 1) -> None:
        self._takes = takes
        self.granted = granted
        self.released = False

    def release(self) -> None:
        """Give the shares back; later calls do nothing."""
        if self.released:
            return
        self.released = True
        for counts, owner, n in self._takes:
            left = counts.get(owner, 0) - n
            if left > 0:
                counts[owner] = left
            else:
                counts.pop(owner, None)  # no entry per owner that once made a request

    async def hold(self, work: Awaitable[T]) -> T:
        """Await ``work``, then give the shares back (also when it fails or is cancelled)."""
        try:
            return await work
        finally:
            self.release()

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Quotas:
    """The per-key accounting of one service instance.

    ``sessions_held(owner)`` counts the owner's sessions in the registry, so sessions that
    expire or are deleted give their share back without this class being told.
    """

    def __init__(self, limits: QuotaLimits, *, sessions_held: Callable[[OwnerId], int]) -> None:
        self.limits = limits
        self._sessions_held = sessions_held
        self._kernels: dict[OwnerId, int] = {}  # sessions being created + one-shots running
        self._executions: dict[OwnerId, int] = {}
        self._batch_workers: dict[OwnerId, int] = {}

    def usage(self, owner: OwnerId) -> dict[str, int]:
        """What ``owner`` holds now, per quota."""
        return {
            "sessions": self._sessions_held(owner) + self._kernels.get(owner, 0),
            "executions": self._executions.get(owner, 0),
            "batch_workers": self._batch_workers.get(owner, 0),
        }

    def session(self, owner: OwnerId) -> Slot:
        """Room for one more session, held while it is created.

        Raises:
            QuotaExceeded: the key holds ``EXECBOX_KEY_MAX_SESSIONS`` sessions and one-shots.
        """
        self._check_sessions(owner)
        return self._take([(self._kernels, owner, 1)])

    def execution(self, owner: OwnerId) -> Slot:
        """Room for one more execution in a session the key already holds.

        Raises:
            QuotaExceeded: the key runs ``EXECBOX_KEY_MAX_EXECUTIONS`` executions.
        """
        self._check_executions(owner)
        return self._take([(self._executions, owner, 1)])

    def one_shot(self, owner: OwnerId) -> Slot:
        """Room for a one-shot execution: an execution, and a kernel like a session's.

        Raises:
            QuotaExceeded: either quota is used up.
        """
        self._check_executions(owner)
        self._check_sessions(owner)
        return self._take([(self._executions, owner, 1), (self._kernels, owner, 1)])

    def batch(self, owner: OwnerId, wanted: int) -> Slot:
        """Up to ``wanted`` batch workers; ``Slot.granted`` says how many (at least 1).

        A batch runs correctly on fewer lanes, only slower, so a partial grant beats a refusal.

        Raises:
            QuotaExceeded: the key's batches already use ``EXECBOX_KEY_MAX_BATCH_WORKERS`` workers.
        """
        wanted = max(1, wanted)
        limit = self.limits.batch_workers
        used = self._batch_workers.get(owner, 0)
        if limit is not None and used >= limit:
            raise QuotaExceeded(
                f"this API key's batches use {used} batch workers, its quota of {limit} "
                "(EXECBOX_KEY_MAX_BATCH_WORKERS); wait for a batch to finish",
                retry_after=BATCH_RETRY_AFTER_S,
            )
        granted = wanted if limit is None else min(wanted, limit - used)
        return self._take([(self._batch_workers, owner, granted)], granted=granted)

    def _check_sessions(self, owner: OwnerId) -> None:
        limit = self.limits.sessions
        if limit is None:
            return
        used = self._sessions_held(owner) + self._kernels.get(owner, 0)
        if used >= limit:
            raise QuotaExceeded(
                f"this API key holds {used} sessions and running one-shot executions, its quota of {limit} "
                "(EXECBOX_KEY_MAX_SESSIONS); delete a session or wait for an execution to finish",
                retry_after=SESSION_RETRY_AFTER_S,
            )

    def _check_executions(self, owner: OwnerId) -> None:
        limit = self.limits.executions
        used = self._executions.get(owner, 0)
        if limit is not None and used >= limit:
            raise QuotaExceeded(
                f"this API key runs {used} executions at once, its quota of {limit} "
                "(EXECBOX_KEY_MAX_EXECUTIONS); wait for one to finish",
                retry_after=EXECUTION_RETRY_AFTER_S,
            )

    @staticmethod
    def _take(takes: list[tuple[dict[OwnerId, int], OwnerId, int]], *, granted: int = 1) -> Slot:
        # Only after every check passed: a refused request holds nothing.
        for counts, owner, n in takes:
            counts[owner] = counts.get(owner, 0) + n
        return Slot(takes, granted=granted)
