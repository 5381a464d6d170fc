"""Session registry: id -> leased kernel, one execution at a time, idle expiry.

A session owns one kernel leased from the pool for its whole life. When an execution
leaves the kernel unusable (killed by the timeout ladder, crashed, out of memory, the
container lost) the session gets a fresh kernel and the Execution says ``state_lost``:
never a silent restart. Deleting or expiring a session destroys its container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from execbox._codes import ErrorReason
from execbox._models import (
    ExecuteRequest,
    Execution,
    OneShotRequest,
    SessionCreate,
    SessionInfo,
    SessionLimits,
)
from execbox_server.backends.base import SandboxBackend, SandboxSpec
from execbox_server.errors import (
    PoolClosed,
    ServiceError,
    SessionBusy,
    SessionLimitReached,
    SessionNotFound,
)
from execbox_server.executor import ExecLimits, ExecOutcome, Executor, OnEvent, OnInput
from execbox_server.kernel import Malformed, ShellReply
from execbox_server.limits import execution_timeout, one_shot_limits, session_limits
from execbox_server.observability import Metrics
from execbox_server.pool import KernelPool
from execbox_server.settings import Settings

__all__ = ["SessionEntry", "SessionIds", "SessionManager"]

log = logging.getLogger("execbox.sessions")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class SessionEntry:
    """The registry's record of one session: its kernel, limits, reservation and clocks.

    Not the SDK's ``execbox.Session`` (a client handle) nor jupyter_client's ``Session`` (message
    signing); the API returns :class:`SessionInfo` made from it.
    """

    id: str
    owner: str | None
    limits: SessionLimits
    kernel: Any | None
    created_at: datetime = field(default_factory=_now)
    created: float = field(default_factory=time.monotonic)
    last_used_at: datetime = field(default_factory=_now)
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    interrupt: asyncio.Event | None = None
    executions: int = 0
    closed: bool = False
    # Why the kernel was replaced without an Execution saying so (an execution that failed
    # inside the service); the next Execution reports it as state_lost, never silently.
    lost_reason: str | None = None

    def __post_init__(self) -> None:
        self.idle.set()

    def reserve(self, what: str) -> None:
        # No await between the check and the set: two requests can never both pass.
        if self.busy:
            raise SessionBusy(f"session {self.id} is running another execution; {what}")
        self.busy = True
        self.idle.clear()

    def unreserve(self) -> None:
        self.busy = False
        self.idle.set()

    def touch(self) -> None:
        self.last_used = time.monotonic()
        self.last_used_at = _now()

    def info(self, ttl_s: float, max_lifetime_s: float) -> SessionInfo:
        idle_expiry = self.last_used_at + timedelta(seconds=ttl_s)
        hard_expiry = self.created_at + timedelta(seconds=max_lifetime_s)
        return SessionInfo(
            id=self.id,
            limits=self.limits,
            created_at=self.created_at,
            last_used_at=self.last_used_at,
            expires_at=min(idle_expiry, hard_expiry),
            busy=self.busy,
            execution_count=self.executions,
            sandbox_id=getattr(self.kernel, "short_id", None),
        )


class SessionIds:
    """The session ids of one instance: ``s_<24 hex>``, or ``s_<24 hex>.<node>`` with a node name.

    The node part lets a proxy send every request for a session to the instance that holds it,
    from the path alone. An id without a node part is taken as this instance's (its random part
    is unique on its own): the Kernel Gateway's UUID-shaped kernel ids carry none.
    """

    def __init__(self, node: str | None) -> None:
        self.node = node

    def new(self) -> str:
        token = "s_" + secrets.token_hex(12)
        return f"{token}.{self.node}" if self.node else token

    def local(self, session_id: str) -> str:
        """``session_id`` as this instance's registry writes it.

        Raises:
            SessionNotFound: the id names another node (reason ``wrong_node``): it is never looked up
                here, so a misrouted request can never reach, or create, another session.
        """
        token, dot, node = session_id.partition(".")
        if not dot:
            return f"{token}.{self.node}" if self.node else token
        if node != self.node:
            here = f"this node ({self.node!r})" if self.node else "this instance (which has no node name)"
            raise SessionNotFound(
                f"session {session_id!r} lives on node {node!r}, not on {here}: send its requests to that node "
                "(the proxy routes them by the id)",
                reason=ErrorReason.WRONG_NODE,
            )
        return session_id


def _session_state(session: SessionEntry) -> str:
    """What a failed request did to the session, appended to its error message."""
    if session.lost_reason is not None:
        return (
            " The session still exists but its kernel was replaced: variables are lost,"
            " and its next execution reports state_lost."
        )
    return " The session still exists; retry later."


class SessionManager:
    def __init__(
        self,
        settings: Settings,
        pool: KernelPool[Any],
        executor: Executor,
        backend: SandboxBackend[Any],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._settings = settings
        self._pool = pool
        self._executor = executor
        self._backend = backend
        self._sessions: dict[str, SessionEntry] = {}
        self.ids = SessionIds(settings.node_name)
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(self._destroy(s) for s in sessions), return_exceptions=True)

    # ------------------------------------------------------------------ sessions

    async def create(self, owner: str | None, request: SessionCreate) -> SessionInfo:
        """Lease a warm kernel for a new session.

        Raises:
            InvalidLimits: a limit is above the server's maximum.
            SessionLimitReached: the server holds ``max_sessions`` sessions already.
            PoolExhausted / EngineUnavailable: no kernel could be had in time.
        """
        if self._closed:
            raise PoolClosed("the service is shutting down")
        limits = session_limits(
            self._settings,
            memory_mb=request.memory_mb,
            cpus=request.cpus,
            timeout_s=request.timeout_s,
            max_output_bytes=request.max_output_bytes,
        )
        if len(self._sessions) >= self._settings.max_sessions:
            raise SessionLimitReached(
                f"the server holds its maximum of {self._settings.max_sessions} sessions; delete one first",
                retry_after=5,
            )
        kernel = await self._lease(limits)
        session = SessionEntry(id=self.ids.new(), owner=owner, limits=limits, kernel=kernel)
        self._sessions[session.id] = session
        log.info("session created id=%s kernel=%s", session.id, getattr(kernel, "id", "?"))
        return session.info(self._settings.session_ttl_s, self._settings.session_max_lifetime_s)

    def get(self, owner: str | None, session_id: str) -> SessionEntry:
        session = self._sessions.get(self.ids.local(session_id))
        if session is None or session.owner != owner:
            # Another key's session is indistinguishable from one that does not exist.
            raise SessionNotFound(f"no session {session_id!r}; it may have expired or been deleted")
        return session

    def info(self, session: SessionEntry) -> SessionInfo:
        return session.info(self._settings.session_ttl_s, self._settings.session_max_lifetime_s)

    def list(self, owner: str | None) -> list[SessionInfo]:
        return [self.info(s) for s in self._sessions.values() if s.owner == owner]

    @property
    def count(self) -> int:
        return len(self._sessions)

    @property
    def busy_count(self) -> int:
        """Sessions running an execution now (for GET /v1/info)."""
        return sum(1 for s in self._sessions.values() if s.busy)

    async def delete(self, owner: str | None, session_id: str) -> None:
        session = self.get(owner, session_id)
        self._sessions.pop(session.id, None)
        if session.interrupt is not None:
            session.interrupt.set()
        await self._destroy(session)
        log.info("session deleted id=%s", session.id)

    # ------------------------------------------------------------------ executions

    def reserve(self, owner: str | None, session_id: str) -> SessionEntry:
        """Mark a session busy for one execution, synchronously.

        Raises:
            SessionNotFound: no such session for this owner.
            SessionBusy: an execution is already running.
        """
        session = self.get(owner, session_id)
        session.reserve("wait for it or interrupt it")
        return session

    async def execute(
        self, owner: str | None, session_id: str, request: ExecuteRequest, on_event: OnEvent | None = None
    ) -> Execution:
        """Run code in a session.

        Raises:
            SessionNotFound, SessionBusy (an execution is running), InvalidLimits (timeout too long).
        """
        session = self.reserve(owner, session_id)
        return await self.run_reserved(session, request, on_event)

    async def run_reserved(
        self,
        session: SessionEntry,
        request: ExecuteRequest,
        on_event: OnEvent | None = None,
        *,
        on_input: OnInput | None = None,
    ) -> Execution:
        """Run code in a session reserved with :meth:`reserve`; always ends the reservation.

        ``on_input``: the caller answers the code's ``input()`` (see ``Executor.run``).
        """
        try:
            timeout = execution_timeout(self._settings, request.timeout_s, session.limits.timeout_s)
            session.touch()
            kernel = await self._ensure_kernel(session)
            session.interrupt = asyncio.Event()
            try:
                outcome = await self._executor.run(
                    kernel,
                    request.code,
                    self._exec_limits(timeout, session.limits.max_output_bytes),
                    on_event=on_event,
                    interrupted=session.interrupt,
                    on_input=on_input,
                )
            except BaseException as exc:
                # Cancelled or failed mid-execution: the kernel's state is unknown, so it is
                # retired, and the next Execution says so.
                await asyncio.shield(self._retire_kernel(session))
                session.lost_reason = "an earlier execution failed inside the service and its kernel was replaced"
                if isinstance(exc, ServiceError):
                    exc.message += _session_state(session)
                raise
            finally:
                session.interrupt = None
            session.executions += 1
            execution = outcome.execution
            if session.lost_reason is not None and not execution.state_lost:
                note = f"{session.lost_reason}; variables defined before it are lost"
                execution = execution.model_copy(
                    update={
                        "state_lost": True,
                        "kernel_restarted": True,
                        "message": f"{execution.message}; {note}" if execution.message else note,
                    }
                )
            session.lost_reason = None
            self._record("session", outcome, session.id)
            if not outcome.kernel_usable:
                await asyncio.shield(self._retire_kernel(session))
                if not session.closed:
                    # A failure here leaves kernel=None; the next execute leases again (the
                    # loss was reported by this very Execution).
                    with contextlib.suppress(Exception):
                        session.kernel = await self._lease(session.limits)
            return execution
        finally:
            session.touch()
            session.unreserve()

    async def kernel_request(
        self, session: SessionEntry, msg_type: str, content: dict[str, Any], *, timeout: float
    ) -> ShellReply | None:
        """Relay one information request (``kernel_info``, ``complete``, ...; see
        ``kernel.PASSTHROUGH_REQUESTS``) to the kernel of a session reserved with :meth:`reserve`,
        and return its reply, or None when none came within ``timeout``. Always ends the
        reservation.

        A kernel that answers with a malformed message is replaced, as after an execution, and
        the session's next Execution says ``state_lost``.

        Raises:
            ValueError: ``msg_type`` may not be relayed.
            PoolExhausted / EngineUnavailable: the session had no kernel and none could be had.
        """
        try:
            session.touch()
            conn = (await self._ensure_kernel(session)).conn
            msg_id = conn.request(msg_type, content)
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                event = await conn.next_event(msg_id, remaining)
                if isinstance(event, Malformed):
                    await asyncio.shield(self._retire_kernel(session))
                    session.lost_reason = f"the kernel sent {event.reason} and was replaced"
                    return None
                if isinstance(event, ShellReply):
                    return event
            return None
        finally:
            session.touch()
            session.unreserve()

    def keepalive(self, owner: str | None, session_id: str) -> SessionInfo:
        """Mark the session used now, pushing its idle expiry back (not past its maximum lifetime)."""
        session = self.get(owner, session_id)
        session.touch()
        return self.info(session)

    def interrupt(self, owner: str | None, session_id: str) -> bool:
        """Interrupt the running execution, if any; return whether one was running."""
        session = self.get(owner, session_id)
        if session.interrupt is None:
            return False
        session.interrupt.set()
        return True

    async def restart(self, owner: str | None, session_id: str) -> SessionInfo:
        """Replace the session's kernel with a fresh one (all variables are lost)."""
        session = self.get(owner, session_id)
        session.reserve("interrupt it before restarting")
        try:
            await asyncio.shield(self._retire_kernel(session))
            session.kernel = await self._lease(session.limits)
            session.executions = 0
        finally:
            session.touch()
            session.unreserve()
        return self.info(session)

    async def lease_one_shot(self, request: OneShotRequest) -> tuple[Any, SessionLimits]:
        """Lease a fresh kernel for one execution (see :meth:`run_one_shot`).

        Raises:
            InvalidLimits, PoolExhausted, EngineUnavailable, PoolClosed.
        """
        if self._closed:
            raise PoolClosed("the service is shutting down")
        limits = one_shot_limits(
            self._settings,
            memory_mb=request.memory_mb,
            cpus=request.cpus,
            timeout_s=request.timeout_s,
            max_output_bytes=request.max_output_bytes,
        )
        return await self._lease(limits), limits

    async def run_one_shot(
        self,
        kernel: Any,
        limits: SessionLimits,
        code: str,
        *,
        on_event: OnEvent | None = None,
        interrupted: asyncio.Event | None = None,
    ) -> Execution:
        """Run code on a kernel from :meth:`lease_one_shot`, then destroy the kernel."""
        try:
            outcome = await self._executor.run(
                kernel,
                code,
                self._exec_limits(limits.timeout_s, limits.max_output_bytes),
                on_event=on_event,
                interrupted=interrupted,
            )
            self._record("one_shot", outcome, None)
            return outcome.execution
        finally:
            await asyncio.shield(self._pool.release(kernel))

    # ------------------------------------------------------------------ internals

    def _exec_limits(self, timeout: float, max_output_bytes: int) -> ExecLimits:
        s = self._settings
        return ExecLimits(
            timeout_s=timeout,
            interrupt_grace_s=s.interrupt_grace_s,
            max_output_bytes=max_output_bytes,
            max_results=s.max_results,
            max_output_messages=s.max_output_messages,
            max_messages_per_s=s.max_output_rate,
        )

    def _record(self, kind: str, outcome: ExecOutcome, session_id: str | None) -> None:
        ex = outcome.execution
        self._metrics.executions.labels(kind, ex.status.value).inc()
        self._metrics.execution_duration.labels(kind).observe(ex.duration_ms / 1000)
        if ex.truncated:
            self._metrics.output_truncations.labels(kind).inc()
        if not outcome.kernel_usable:
            self._metrics.kernel_replacements.labels(ex.status.value).inc()
            log.info("kernel replaced", extra={"fields": {"session": session_id, "cause": ex.status.value}})

    async def _ensure_kernel(self, session: SessionEntry) -> Any:
        """The session's kernel, leased now if it has none (its last one was lost).

        Raises:
            PoolExhausted / EngineUnavailable: none could be had; the message says the session's state.
        """
        if session.kernel is None:
            try:
                session.kernel = await self._lease(session.limits)
            except ServiceError as exc:
                exc.message += _session_state(session)
                raise
        return session.kernel

    async def _lease(self, limits: SessionLimits) -> Any:
        started = time.monotonic()
        kernel = await self._pool.acquire(timeout=self._settings.acquire_timeout_s)
        self._metrics.acquire_wait.observe(time.monotonic() - started)
        try:
            await self._backend.update_limits(kernel, SandboxSpec(memory_mb=limits.memory_mb, cpus=limits.cpus))
        except BaseException:
            await asyncio.shield(self._pool.release(kernel))
            raise
        return kernel

    async def _retire_kernel(self, session: SessionEntry) -> None:
        kernel, session.kernel = session.kernel, None
        if kernel is not None:
            await self._pool.release(kernel)

    async def _destroy(self, session: SessionEntry) -> None:
        session.closed = True
        # Give a running execution time to notice the interrupt and stop by itself.
        if session.busy:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.interrupt_grace_s * 2 + 2):
                    await session.idle.wait()
        await asyncio.shield(self._retire_kernel(session))

    async def _reap_idle(self) -> None:
        ttl = self._settings.session_ttl_s
        lifetime = self._settings.session_max_lifetime_s
        period = max(0.2, min(5.0, ttl / 4, lifetime / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for session in list(self._sessions.values()):
                idle = session.last_used < now - ttl and not session.busy
                too_old = session.created < now - lifetime
                if idle or too_old:
                    self._sessions.pop(session.id, None)
                    if session.interrupt is not None:
                        session.interrupt.set()
                    reason = "idle" if idle else "max_lifetime"
                    log.info("session expired", extra={"fields": {"session": session.id, "reason": reason}})
                    await self._destroy(session)
