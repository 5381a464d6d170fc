"""One execute request -> kernel events -> an :class:`Execution`.

The server owns the deadline. An execution ends on its ``execute_reply`` (plus the
kernel's ``idle`` for the same request, so no trailing output is lost), or on the ladder:

1. deadline passes -> ``interrupt_request`` on the control channel;
2. no reply within ``interrupt_grace_s`` -> SIGINT through the container's init;
3. still nothing after another grace -> the sandbox is killed; the caller replaces it
   and the Execution says ``state_lost``.

While waiting, a silent kernel is checked from the engine's side once a second, so a
kernel that exited (``os._exit``, a segfault, the OOM killer) or a container that vanished
is reported at once with the matching status instead of at the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from execbox._models import (
    ErrorEvent,
    Execution,
    ExecutionError,
    ExecutionEvent,
    ExecutionStatus,
    Resources,
    Result,
    ResultEvent,
    StderrEvent,
    StdoutEvent,
    Truncation,
)
from execbox_server.backends.base import SandboxState, SandboxStatus, Usage
from execbox_server.kernel import ClearOutput, Display, Error, Idle, KernelConnection, KernelEvent, Reply, Stream
from execbox_server.output import HeadTail, strip_ansi

__all__ = ["ExecLimits", "ExecOutcome", "Executor", "OnEvent", "SandboxControl"]

OnEvent = Callable[[ExecutionEvent], Awaitable[None]]

LIVENESS_INTERVAL_S = 1.0
IDLE_AFTER_REPLY_S = 1.0
POLL_S = 0.05
MAX_TRACEBACK_LINES = 200


class _HasConn(Protocol):
    @property
    def conn(self) -> KernelConnection: ...


class SandboxControl(Protocol):
    """What the executor needs from the backend for one kernel."""

    async def inspect(self, kernel: _HasConn) -> SandboxState: ...  # type: ignore[misc]

    async def kill(self, kernel: _HasConn) -> None: ...  # type: ignore[misc]

    async def signal(self, kernel: _HasConn, sig: str) -> None: ...  # type: ignore[misc]

    def usage(self, kernel: _HasConn) -> Usage: ...  # type: ignore[misc]

    def reset_peak_memory(self, kernel: _HasConn) -> None: ...  # type: ignore[misc]


@dataclass(frozen=True)
class ExecLimits:
    timeout_s: float
    interrupt_grace_s: float
    max_output_bytes: int
    max_results: int
    max_result_bytes: int


@dataclass
class ExecOutcome:
    execution: Execution
    kernel_usable: bool  # False: the caller must replace the kernel


class _Collector:
    """Accumulates one execution's output under the caps and forwards stream events."""

    def __init__(self, limits: ExecLimits, on_event: OnEvent | None) -> None:
        self.limits = limits
        self.on_event = on_event
        self.stdout = HeadTail(limits.max_output_bytes)
        self.stderr = HeadTail(limits.max_output_bytes)
        self.results: list[Result] = []
        self.dropped_results = 0
        self.error: ExecutionError | None = None
        self.dropped_tb_lines = 0
        self.reply: Reply | None = None
        self.idle = False

    async def feed(self, event: KernelEvent) -> None:
        if isinstance(event, Stream):
            buf = self.stdout if event.name == "stdout" else self.stderr
            kept = buf.add(event.text)
            if kept and self.on_event is not None:
                cls = StdoutEvent if event.name == "stdout" else StderrEvent
                await self.on_event(cls(text=kept))
        elif isinstance(event, Display):
            size = sum(len(v) if isinstance(v, str) else 0 for v in event.data.values())
            if len(self.results) >= self.limits.max_results or size > self.limits.max_result_bytes:
                self.dropped_results += 1
                return
            result = Result(data=event.data, metadata=event.metadata, is_main_result=event.is_main)
            self.results.append(result)
            if self.on_event is not None:
                await self.on_event(ResultEvent(result=result))
        elif isinstance(event, Error):
            self.error = self._error(event.ename, event.evalue, event.traceback)
            if self.on_event is not None:
                await self.on_event(ErrorEvent(error=self.error))
        elif isinstance(event, Reply):
            self.reply = event
            if event.status == "error" and self.error is None and event.ename:
                self.error = self._error(event.ename, event.evalue or "", event.traceback)
        elif isinstance(event, Idle):
            self.idle = True
        elif isinstance(event, ClearOutput):
            # Feedback for a model keeps everything that was printed; progress bars that
            # redraw themselves would otherwise hide what happened before.
            pass

    def _error(self, name: str, value: str, traceback: list[str]) -> ExecutionError:
        lines: list[str] = []
        for entry in traceback:
            lines.extend(strip_ansi(entry).splitlines())
        if len(lines) > MAX_TRACEBACK_LINES:
            half = MAX_TRACEBACK_LINES // 2
            self.dropped_tb_lines = len(lines) - MAX_TRACEBACK_LINES
            lines = [*lines[:half], f"[... {self.dropped_tb_lines} traceback lines truncated ...]", *lines[-half:]]
        return ExecutionError(name=strip_ansi(name), value=strip_ansi(value), traceback=lines)

    def build(
        self,
        status: ExecutionStatus,
        *,
        started: float,
        state_lost: bool = False,
        message: str | None = None,
        resources: Resources,
    ) -> Execution:
        truncation = Truncation(
            stdout_bytes=self.stdout.dropped,
            stderr_bytes=self.stderr.dropped,
            results=self.dropped_results,
            traceback_lines=self.dropped_tb_lines,
        )
        return Execution(
            status=status,
            stdout=self.stdout.text(),
            stderr=self.stderr.text(),
            error=self.error,
            results=self.results,
            execution_count=self.reply.execution_count if self.reply else None,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            truncated=truncation.any,
            truncation=truncation,
            state_lost=state_lost,
            kernel_restarted=state_lost,
            resources=resources,
            message=message,
        )


_DEAD_STATUS = {
    SandboxStatus.OOM_KILLED: (
        ExecutionStatus.OUT_OF_MEMORY,
        "the sandbox ran out of memory and its kernel was killed; variables are lost",
    ),
    SandboxStatus.EXITED: (ExecutionStatus.KERNEL_DIED, "the kernel process exited; variables are lost"),
    SandboxStatus.GONE: (ExecutionStatus.SANDBOX_LOST, "the sandbox container disappeared; variables are lost"),
}


class Executor:
    def __init__(self, control: SandboxControl) -> None:
        self._control = control

    async def run(
        self,
        kernel: _HasConn,
        code: str,
        limits: ExecLimits,
        *,
        on_event: OnEvent | None = None,
        interrupted: asyncio.Event | None = None,
    ) -> ExecOutcome:
        """Run ``code`` on ``kernel`` under ``limits``; always returns an Execution.

        ``interrupted``, when set by someone else (an interrupt call, a client that went
        away), stops the code like a timeout does but reports ``interrupted``.
        """
        started = time.monotonic()
        deadline = started + limits.timeout_s
        col = _Collector(limits, on_event)
        self._control.reset_peak_memory(kernel)
        usage_before = self._control.usage(kernel)
        msg_id = kernel.conn.execute(code)

        async def resources() -> Resources:
            return _resources(usage_before, self._control.usage(kernel), started)

        stop_reason: ExecutionStatus | None = None
        last_check = reply_at = started
        while True:
            if col.reply is not None and col.idle:
                break
            now = time.monotonic()
            if now >= deadline:
                stop_reason = ExecutionStatus.TIMEOUT
                break
            if interrupted is not None and interrupted.is_set():
                stop_reason = ExecutionStatus.INTERRUPTED
                break
            # Short polls only while someone may interrupt; message arrival ends a poll at once.
            wait = min(deadline - now, POLL_S if interrupted is not None else LIVENESS_INTERVAL_S)
            event = await kernel.conn.next_event(msg_id, wait)
            if event is not None:
                await col.feed(event)
                if isinstance(event, Reply):
                    reply_at = time.monotonic()
                continue
            now = time.monotonic()
            if col.reply is not None:
                if now - reply_at >= IDLE_AFTER_REPLY_S:
                    break  # replied, but no idle followed: do not wait for it forever
                continue
            if now - last_check < LIVENESS_INTERVAL_S:
                continue
            last_check = now
            state = await self._control.inspect(kernel)
            if state.status is not SandboxStatus.RUNNING:
                status, message = _DEAD_STATUS[state.status]
                execution = col.build(
                    status, started=started, state_lost=True, message=message, resources=await resources()
                )
                return ExecOutcome(execution, kernel_usable=False)

        if stop_reason is None:
            assert col.reply is not None
            status = ExecutionStatus.OK if col.reply.status == "ok" else ExecutionStatus.ERROR
            if status is ExecutionStatus.ERROR and col.error is None:
                col.error = ExecutionError(name="Error", value=f"kernel replied {col.reply.status}")
            return ExecOutcome(col.build(status, started=started, resources=await resources()), kernel_usable=True)
        return await self._stop(kernel, msg_id, col, stop_reason, limits, started, resources)

    async def _stop(
        self,
        kernel: _HasConn,
        msg_id: str,
        col: _Collector,
        reason: ExecutionStatus,
        limits: ExecLimits,
        started: float,
        resources: Callable[[], Awaitable[Resources]],
    ) -> ExecOutcome:
        what = "timed out" if reason is ExecutionStatus.TIMEOUT else "was interrupted"
        # Step 1: ask politely on the control channel; step 2: SIGINT via the init.
        for step in (1, 2):
            if step == 1:
                kernel.conn.interrupt()
            else:
                await self._control.signal(kernel, "SIGINT")
            grace_end = time.monotonic() + limits.interrupt_grace_s
            while col.reply is None and time.monotonic() < grace_end:
                event = await kernel.conn.next_event(msg_id, max(0.01, grace_end - time.monotonic()))
                if event is not None:
                    await col.feed(event)
            if col.reply is not None:
                # Collect the output the interrupt produced (the KeyboardInterrupt traceback).
                idle_end = time.monotonic() + 0.5
                while not col.idle and time.monotonic() < idle_end:
                    event = await kernel.conn.next_event(msg_id, max(0.01, idle_end - time.monotonic()))
                    if event is None:
                        break
                    await col.feed(event)
                message = f"execution {what}; the kernel was interrupted and its state kept"
                execution = col.build(reason, started=started, message=message, resources=await resources())
                return ExecOutcome(execution, kernel_usable=True)
            state = await self._control.inspect(kernel)
            if state.status is not SandboxStatus.RUNNING:
                status, message = _DEAD_STATUS[state.status]
                execution = col.build(status, started=started, state_lost=True, message=message, resources=await resources())
                return ExecOutcome(execution, kernel_usable=False)
        # Step 3: the kernel ignores interrupts (signal handlers, C loops, SIGSTOP): kill it.
        usage = await resources()
        await self._control.kill(kernel)
        message = f"execution {what}; the kernel did not respond to interrupts and was replaced, variables are lost"
        execution = col.build(reason, started=started, state_lost=True, message=message, resources=usage)
        return ExecOutcome(execution, kernel_usable=False)


def _resources(before: Usage, after: Usage, started: float) -> Resources:
    cpu_ms = None
    if before.cpu_ns is not None and after.cpu_ns is not None:
        cpu_ms = round(max(0, after.cpu_ns - before.cpu_ns) / 1e6, 3)
    return Resources(
        wall_ms=round((time.monotonic() - started) * 1000, 3),
        cpu_ms=cpu_ms,
        peak_memory_bytes=after.peak_memory_bytes,
    )
