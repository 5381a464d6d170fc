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
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

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
from execbox_server.kernel import (
    ClearOutput,
    Display,
    Error,
    Idle,
    KernelConnection,
    KernelEvent,
    KernelNotReady,
    Reply,
    Stream,
)
from execbox_server.output import HeadTail, strip_ansi

__all__ = ["ExecLimits", "ExecOutcome", "Executor", "OnEvent", "SandboxControl"]

OnEvent = Callable[[ExecutionEvent], Awaitable[None]]

LIVENESS_INTERVAL_S = 1.0
IDLE_AFTER_REPLY_S = 1.0
POLL_S = 0.05
MAX_TRACEBACK_LINES = 200
MAX_TRACEBACK_LINE = 2_000
MAX_TRACEBACK_BYTES = 64_000
MIN_TRACEBACK_BYTES = 4_000


class _HasConn(Protocol):
    @property
    def conn(self) -> KernelConnection: ...


class SandboxControl(Protocol):
    """What the executor needs from the backend (kernels are ``Any``: each backend has its own type)."""

    async def inspect(self, kernel: Any) -> SandboxState: ...

    async def kill(self, kernel: Any) -> None: ...

    async def signal(self, kernel: Any, sig: str) -> None: ...

    def usage(self, kernel: Any) -> Usage: ...

    def reset_peak_memory(self, kernel: Any) -> None: ...

    async def sweep_processes(self, kernel: Any) -> None: ...


@dataclass(frozen=True)
class ExecLimits:
    """Bounds of one execution.

    ``max_output_bytes`` is the whole budget of kept output: stdout keeps head and tail
    within half of it, stderr within a quarter, rich results and the traceback share the
    last quarter. Past ``max_output_messages`` messages (or 16x the budget received), the
    code is stopped with status ``output_limit``: a flood must not cost the server its CPU.
    """

    timeout_s: float
    interrupt_grace_s: float
    max_output_bytes: int
    max_results: int = 50
    max_output_messages: int = 10_000
    max_messages_per_s: int = 1_000

    @property
    def rich_budget(self) -> int:
        return self.max_output_bytes - self.max_output_bytes // 2 - self.max_output_bytes // 4


@dataclass
class ExecOutcome:
    execution: Execution
    kernel_usable: bool  # False: the caller must replace the kernel


class _Collector:
    """Accumulates one execution's output under the caps and forwards stream events."""

    def __init__(self, limits: ExecLimits, on_event: OnEvent | None) -> None:
        self.limits = limits
        self.on_event = on_event
        self.stdout = HeadTail(limits.max_output_bytes // 2)
        self.stderr = HeadTail(limits.max_output_bytes // 4)
        self.rich_left = limits.rich_budget
        self.results: list[Result] = []
        self.dropped_results = 0
        self.sandbox_dropped = {"stdout": 0, "stderr": 0}
        self.error: ExecutionError | None = None
        self.dropped_tb_lines = 0
        self.reply: Reply | None = None
        self.idle = False
        self.messages = 0
        self.received_bytes = 0
        self._window_start = time.monotonic()
        self._window_count = 0

    def _count_message(self) -> None:
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        self.messages += 1

    @property
    def flooding(self) -> bool:
        return (
            self.messages > self.limits.max_output_messages
            or self._window_count > self.limits.max_messages_per_s
            or self.received_bytes > 16 * self.limits.max_output_bytes
        )

    async def feed(self, event: KernelEvent) -> None:
        if isinstance(event, Stream):
            self._count_message()
            self.received_bytes += len(event.text)
            name = "stdout" if event.name == "stdout" else "stderr"
            self.sandbox_dropped[name] += event.dropped
            buf = self.stdout if name == "stdout" else self.stderr
            kept = buf.add(event.text)
            if kept and self.on_event is not None:
                cls = StdoutEvent if name == "stdout" else StderrEvent
                await self.on_event(cls(text=kept))
        elif isinstance(event, Display):
            self._count_message()
            await self._display(event)
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

    def discard(self, event: KernelEvent) -> None:
        """Account for an event dropped unseen while the code was being stopped for flooding."""
        if isinstance(event, Stream):
            self.sandbox_dropped["stdout" if event.name == "stdout" else "stderr"] += len(event.text) + event.dropped
        elif isinstance(event, Display):
            self.dropped_results += 1
        elif isinstance(event, Reply):
            self.reply = event
        elif isinstance(event, Idle):
            self.idle = True

    async def _display(self, event: Display) -> None:
        if event.dropped:
            self.dropped_results += 1
        sizes = {mime: _size(value) for mime, value in event.data.items()}
        self.received_bytes += sum(sizes.values())
        data = dict(event.data)
        if len(self.results) >= self.limits.max_results:
            self.dropped_results += 1
            return
        if sum(sizes.values()) > self.rich_left:
            # Keep what fits, preferring text/plain (cut to fit) over images and HTML.
            data = {}
            plain = event.data.get("text/plain")
            if isinstance(plain, str) and self.rich_left > 256:
                buf = HeadTail(self.rich_left - 128)
                buf.add(plain)
                data["text/plain"] = buf.text()
            self.dropped_results += 1
            if not data:
                return
            sizes = {mime: _size(value) for mime, value in data.items()}
        self.rich_left -= sum(sizes.values())
        result = Result(data=_clean(data), metadata=_clean(event.metadata), is_main_result=event.is_main)
        self.results.append(result)
        if self.on_event is not None:
            await self.on_event(ResultEvent(result=result))

    def _error(self, name: str, value: str, traceback: list[str]) -> ExecutionError:
        lines: list[str] = []
        for entry in traceback:
            lines.extend(_valid(strip_ansi(entry)).splitlines())
        lines = [line if len(line) <= MAX_TRACEBACK_LINE else line[:MAX_TRACEBACK_LINE] + " [...]" for line in lines]
        # The traceback shares the rich budget, but always keeps at least its last lines.
        budget = max(MIN_TRACEBACK_BYTES, min(self.rich_left, MAX_TRACEBACK_BYTES))
        max_lines = MAX_TRACEBACK_LINES
        while max_lines > 8 and sum(len(line) + 1 for line in _head_tail(lines, max_lines)) > budget:
            max_lines //= 2
        if len(lines) > max_lines:
            self.dropped_tb_lines = len(lines) - max_lines
            marker = f"[... {self.dropped_tb_lines} traceback lines truncated ...]"
            head, tail = lines[: max_lines // 2], lines[len(lines) - max_lines // 2 :]
            lines = [*head, marker, *tail]
        value = _valid(strip_ansi(value))
        if len(value) > MAX_TRACEBACK_LINE * 4:
            value = value[: MAX_TRACEBACK_LINE * 4] + " [...]"
        return ExecutionError(name=_valid(strip_ansi(name)), value=value, traceback=lines)

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
            stdout_bytes=self.stdout.dropped + self.sandbox_dropped["stdout"],
            stderr_bytes=self.stderr.dropped + self.sandbox_dropped["stderr"],
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
            # Stopping a flood cuts its output short even when nothing received was dropped.
            truncated=truncation.any or status is ExecutionStatus.OUTPUT_LIMIT,
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
    SandboxStatus.GONE: (
        ExecutionStatus.SANDBOX_LOST,
        "the sandbox container disappeared; variables are lost",
    ),
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
            if col.flooding:
                stop_reason = ExecutionStatus.OUTPUT_LIMIT
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
                return await self._dead(col, state, started, resources)

        if stop_reason is None:
            assert col.reply is not None
            status = ExecutionStatus.OK if col.reply.status == "ok" else ExecutionStatus.ERROR
            if status is ExecutionStatus.ERROR and col.error is None:
                col.error = ExecutionError(name="Error", value=f"kernel replied {col.reply.status}")
            return ExecOutcome(col.build(status, started=started, resources=await resources()), kernel_usable=True)
        return await self._stop(kernel, msg_id, col, stop_reason, limits, started, resources)

    async def _dead(
        self,
        col: _Collector,
        state: SandboxState,
        started: float,
        resources: Callable[[], Awaitable[Resources]],
    ) -> ExecOutcome:
        status, message = _DEAD_STATUS[state.status]
        if state.exit_code is not None and state.status is SandboxStatus.EXITED:
            message += f" (exit code {state.exit_code}{_signal_name(state.exit_code)})"
        execution = col.build(status, started=started, state_lost=True, message=message, resources=await resources())
        return ExecOutcome(execution, kernel_usable=False)

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
        what = {
            ExecutionStatus.TIMEOUT: f"timed out after {limits.timeout_s:g}s",
            ExecutionStatus.INTERRUPTED: "was interrupted",
            ExecutionStatus.OUTPUT_LIMIT: (
                f"produced more output than this server accepts ({col.messages} messages, "
                f"{col.received_bytes} bytes) and was stopped"
            ),
        }[reason]
        muted = col.flooding
        if muted:
            # Stop listening to the flood while it is being stopped: parsing what is still in
            # flight would cost the server a core that other sessions need.
            col.sandbox_dropped["stdout"] += kernel.conn.mute_output()
        # Step 1: ask politely on the control channel; step 2: SIGINT via the init. A flood
        # gets one short chance: a kernel that printed this much has a backlog that takes
        # seconds of CPU to drain, which its neighbours would pay for.
        steps = (1,) if reason is ExecutionStatus.OUTPUT_LIMIT else (1, 2)
        for step in steps:
            if step == 1:
                kernel.conn.interrupt()
                grace = limits.interrupt_grace_s if reason is not ExecutionStatus.OUTPUT_LIMIT else 0.5
            else:
                # The control thread may be dead (fd exhaustion, a broken kernel): a signal
                # through the init needs nothing from the kernel. Short: it rarely helps.
                await self._control.signal(kernel, "SIGINT")
                grace = min(1.0, limits.interrupt_grace_s)
            grace_end = time.monotonic() + grace
            while col.reply is None and time.monotonic() < grace_end:
                event = await kernel.conn.next_event(msg_id, max(0.01, grace_end - time.monotonic()))
                if event is not None and not col.flooding:
                    await col.feed(event)
                elif event is not None:
                    col.discard(event)  # still flooding: count it, keep only what ends the request
            if col.reply is not None and muted:
                # Listen again, and make sure the output stream is back before the next cell.
                try:
                    await kernel.conn.unmute_output(timeout=max(1.0, limits.interrupt_grace_s))
                except KernelNotReady:
                    break  # no output stream: replace the kernel below
            if col.reply is not None:
                # Collect the output the interrupt produced (the KeyboardInterrupt traceback).
                idle_end = time.monotonic() + 0.5
                while not col.idle and not muted and time.monotonic() < idle_end:
                    event = await kernel.conn.next_event(msg_id, max(0.01, idle_end - time.monotonic()))
                    if event is None:
                        break
                    if col.flooding:
                        col.discard(event)
                    else:
                        await col.feed(event)
                # Children that ignore SIGINT (subprocesses, forks) must not outlive the cell.
                await self._control.sweep_processes(kernel)
                message = (
                    f"execution {what}; the kernel was interrupted and its state kept, "
                    "other processes in the sandbox were stopped"
                )
                execution = col.build(reason, started=started, message=message, resources=await resources())
                return ExecOutcome(execution, kernel_usable=True)
            state = await self._control.inspect(kernel)
            if state.status is not SandboxStatus.RUNNING:
                return await self._dead(col, state, started, resources)
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


def _head_tail(lines: list[str], n: int) -> list[str]:
    return lines if len(lines) <= n else [*lines[: n // 2], *lines[len(lines) - n // 2 :]]


def _size(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    return len(repr(value))


def _valid(text: str) -> str:
    """Text that is valid UTF-8 (lone surrogates replaced), so the JSON encoder never fails."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _valid(value)
    if isinstance(value, dict):
        return {_valid(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _signal_name(exit_code: int) -> str:
    if exit_code <= 128:
        return ""
    try:
        return f", {signal.Signals(exit_code - 128).name}"
    except ValueError:
        return ""
