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
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, cast

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
from execbox_server.backends.base import (
    Sandbox,
    SandboxControl,
    SandboxState,
    SandboxStatus,
    StdinChannel,
    Usage,
)
from execbox_server.kernel import (
    ClearOutput,
    Display,
    ErrorOutput,
    Idle,
    InputRequest,
    KernelEvent,
    KernelNotReady,
    Malformed,
    Reply,
    Stream,
    Traffic,
)
from execbox_server.output import HeadTail, strip_ansi

__all__ = ["ExecLimits", "ExecOutcome", "Executor", "OnEvent", "OnInput"]

OnEvent = Callable[[ExecutionEvent], Awaitable[None]]
# Called when the code asks for input; the answer goes back through the kernel connection's
# ``input_reply``. The deadline keeps running while the user types.
OnInput = Callable[[InputRequest], Awaitable[None]]

LIVENESS_INTERVAL_S = 1.0
IDLE_AFTER_REPLY_S = 1.0
POLL_S = 0.05
MAX_TRACEBACK_LINES = 200
MAX_TRACEBACK_LINE = 2_000
MAX_TRACEBACK_BYTES = 64_000
MIN_TRACEBACK_BYTES = 4_000
MAX_ERROR_NAME = 256
# Received bytes allowed on top of 16x the output budget: message envelopes (~600 bytes
# each) and the kernel's echo of the code (execute_input), which may be JSON-escaped.
ENVELOPE_ALLOWANCE = 4 * 1024 * 1024
CODE_ECHO_FACTOR = 6


@dataclass(frozen=True)
class ExecLimits:
    """Bounds of one execution.

    ``max_output_bytes`` is the whole budget of kept output: stdout keeps head and tail
    within half of it, stderr within a quarter, rich results (data and metadata) and the
    error (name, value, traceback) share the last quarter. Every field that reaches a
    response counts; only truncation markers come on top.

    Everything the kernel sends while the code runs counts against a second budget, whatever
    its channel, type or parent: past ``max_output_messages`` messages, ``max_messages_per_s``
    in a second, or 16x ``max_output_bytes`` received (plus an allowance for envelopes and
    the code's echo), the code is stopped with status ``output_limit``: a flood must not
    cost the server its CPU.
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

    def __init__(self, limits: ExecLimits, on_event: OnEvent | None, traffic: Traffic, *, code_bytes: int) -> None:
        self.limits = limits
        self.on_event = on_event
        self.stdout = HeadTail(limits.max_output_bytes // 2)
        self.stderr = HeadTail(limits.max_output_bytes // 4)
        self.rich_left = limits.rich_budget
        # Results may not take the last of the rich budget: an error must still fit.
        self.error_reserve = min(MIN_TRACEBACK_BYTES, limits.rich_budget // 2)
        self.results: list[Result] = []
        self.dropped_results = 0
        self.sandbox_dropped = {"stdout": 0, "stderr": 0}
        self.error: ExecutionError | None = None
        self.dropped_tb_lines = 0
        self.reply: Reply | None = None
        self.idle = False
        self.emit_deadline = asyncio.get_running_loop().time() + limits.timeout_s
        self.unsent_events = 0
        self._traffic = traffic
        self._base = replace(traffic)
        self._byte_budget = 16 * limits.max_output_bytes + CODE_ECHO_FACTOR * code_bytes + ENVELOPE_ALLOWANCE
        self._window_start = time.monotonic()
        self._window_base = traffic.messages

    def start(self) -> None:
        """Count from now: what the request's send dropped from earlier requests is not ours."""
        self._base = replace(self._traffic)
        self._window_start, self._window_base = time.monotonic(), self._traffic.messages

    @property
    def messages(self) -> int:
        return self._traffic.messages - self._base.messages

    @property
    def received_bytes(self) -> int:
        return self._traffic.bytes - self._base.bytes

    def over_budget(self) -> bool:
        """Whether the kernel has sent more than this execution allows (any message counts)."""
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_base = now, self._traffic.messages
        return (
            self.messages > self.limits.max_output_messages
            or self._traffic.messages - self._window_base > self.limits.max_messages_per_s
            or self.received_bytes > self._byte_budget
        )

    async def feed(self, event: KernelEvent) -> None:
        if isinstance(event, Stream):
            name = "stdout" if event.name == "stdout" else "stderr"
            self.sandbox_dropped[name] += event.dropped
            buf = self.stdout if name == "stdout" else self.stderr
            kept = buf.add(event.text)
            if kept:
                cls = StdoutEvent if name == "stdout" else StderrEvent
                await self._emit(cls(text=kept))
        elif isinstance(event, Display):
            await self._display(event)
        elif isinstance(event, ErrorOutput):
            if self.rich_left <= 0:
                # Nothing of it can be kept: counted, not streamed.
                self.dropped_tb_lines += len(event.traceback) + 1
                return
            self.error = self._error(event.ename, event.evalue, event.traceback)
            await self._emit(ErrorEvent(error=self.error))
        elif isinstance(event, Reply):
            self.reply = event
            if event.status == "error" and self.error is None and event.ename is not None:
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
        elif isinstance(event, ErrorOutput):
            self.dropped_tb_lines += len(event.traceback) + 1
        elif isinstance(event, Reply):
            self.reply = event
        elif isinstance(event, Idle):
            self.idle = True

    async def _display(self, event: Display) -> None:
        if event.dropped:
            self.dropped_results += 1
        if len(self.results) >= self.limits.max_results:
            self.dropped_results += 1
            return
        room = self.rich_left - self.error_reserve
        data: dict[str, Any] = dict(event.data)
        metadata: dict[str, Any] = dict(event.metadata)
        size = _size(data) + _size(metadata)
        if size > room:
            # Keep what fits, preferring text/plain (cut to fit) over images and HTML;
            # metadata goes first (it describes what was dropped).
            data, metadata = {}, {}
            plain = event.data.get("text/plain")
            if isinstance(plain, str) and room > 256:
                buf = HeadTail(room - 128)
                buf.add(plain)
                data["text/plain"] = buf.text()
            self.dropped_results += 1
            if not data:
                return
            size = _size(data)
        self.rich_left -= size
        result = Result(data=_clean(data), metadata=_clean(metadata), is_main_result=event.is_main)
        self.results.append(result)
        await self._emit(ResultEvent(result=result))

    async def _emit(self, event: ExecutionEvent) -> None:
        """Forward an event; a reader that does not keep up never holds us past the deadline.

        The event is then left out of the stream (the final Execution still has it).
        """
        if self.on_event is None:
            return
        try:
            async with asyncio.timeout_at(self.emit_deadline):
                await self.on_event(event)
        except TimeoutError:
            self.unsent_events += 1

    def _error(self, name: str, value: str, traceback: list[str]) -> ExecutionError:
        """The error as kept: name, value and traceback all come out of the rich budget."""
        budget = max(0, self.rich_left)
        name, _ = _fit(_valid(strip_ansi(name)), min(MAX_ERROR_NAME, budget))
        budget -= _nbytes(name)
        value, _ = _fit(_valid(strip_ansi(value)), min(MAX_TRACEBACK_LINE * 4, budget))
        budget -= _nbytes(value)
        lines: list[str] = []
        for entry in traceback:
            lines.extend(_valid(strip_ansi(entry)).splitlines())
        lines = [line if len(line) <= MAX_TRACEBACK_LINE else line[:MAX_TRACEBACK_LINE] + " [...]" for line in lines]
        budget = min(budget, MAX_TRACEBACK_BYTES)
        max_lines = min(MAX_TRACEBACK_LINES, len(lines))
        while max_lines > 0 and sum(_nbytes(line) + 1 for line in _head_tail(lines, max_lines)) > budget:
            max_lines = max_lines // 2 if max_lines > 8 else max_lines - 1
        kept = _head_tail(lines, max_lines)
        self.rich_left -= _nbytes(name) + _nbytes(value) + sum(_nbytes(line) + 1 for line in kept)
        if len(lines) > max_lines:
            self.dropped_tb_lines += len(lines) - max_lines
            marker = f"[... {len(lines) - max_lines} traceback lines truncated ...]"
            lines = [*kept[: max_lines // 2], marker, *kept[max_lines // 2 :]]
        return ExecutionError(name=name, value=value, traceback=lines)

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
    def __init__(self, control: SandboxControl[Any]) -> None:
        self._control = control

    async def run(
        self,
        kernel: Sandbox,
        code: str,
        limits: ExecLimits,
        *,
        on_event: OnEvent | None = None,
        interrupted: asyncio.Event | None = None,
        on_input: OnInput | None = None,
    ) -> ExecOutcome:
        """Run ``code`` on ``kernel`` under ``limits``; always returns an Execution.

        ``interrupted``, when set by someone else (an interrupt call, a client that went
        away), stops the code like a timeout does but reports ``interrupted``. Without
        ``on_input`` the code's ``input()`` fails at once instead of waiting for an answer.
        """
        started = time.monotonic()
        deadline = started + limits.timeout_s
        conn = kernel.conn
        col = _Collector(limits, on_event, conn.traffic, code_bytes=len(code.encode("utf-8", "replace")))
        self._control.reset_peak_memory(kernel)
        usage_before = self._control.usage(kernel)
        # Only a caller that can answer is given stdin (and fakes need not know the option).
        msg_id = cast(StdinChannel, conn).execute(code, allow_stdin=True) if on_input else conn.execute(code)
        col.start()

        async def resources() -> Resources:
            return _resources(usage_before, self._control.usage(kernel), started)

        stop_reason: ExecutionStatus | None = None
        last_check = reply_at = started
        while True:
            # Checked on every turn, however fast messages arrive: next_event hands control
            # back after a bounded batch of messages even when none of them is an event.
            if col.reply is not None and col.idle:
                break
            now = time.monotonic()
            if now >= deadline:
                stop_reason = ExecutionStatus.TIMEOUT
                break
            if interrupted is not None and interrupted.is_set():
                stop_reason = ExecutionStatus.INTERRUPTED
                break
            if col.over_budget():
                stop_reason = ExecutionStatus.OUTPUT_LIMIT
                break
            # Short polls only while someone may interrupt; message arrival ends a poll at once.
            wait = min(deadline - now, POLL_S if interrupted is not None else LIVENESS_INTERVAL_S)
            event = await conn.next_event(msg_id, wait)
            if isinstance(event, Malformed):
                return await self._malformed(kernel, col, event, started, resources)
            if isinstance(event, InputRequest):
                if on_input is not None:
                    await on_input(event)
                continue
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
                col.error = ExecutionError(name="Error", value=f"kernel replied {col.reply.status[:64]}")
            return ExecOutcome(col.build(status, started=started, resources=await resources()), kernel_usable=True)
        return await self._stop(kernel, msg_id, col, stop_reason, limits, started, resources)

    async def _malformed(
        self,
        kernel: Sandbox,
        col: _Collector,
        event: Malformed,
        started: float,
        resources: Callable[[], Awaitable[Resources]],
    ) -> ExecOutcome:
        """The kernel broke the protocol: nothing it says can be trusted any more, replace it."""
        usage = await resources()
        await self._control.kill(kernel)
        message = (
            f"the kernel sent {event.reason}; only code in the sandbox can cause this, so the kernel "
            "was replaced and variables are lost"
        )
        execution = col.build(
            ExecutionStatus.KERNEL_DIED, started=started, state_lost=True, message=message, resources=usage
        )
        return ExecOutcome(execution, kernel_usable=False)

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
        kernel: Sandbox,
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
        conn = kernel.conn
        muted = reason is ExecutionStatus.OUTPUT_LIMIT
        if muted:
            # Stop listening to the flood while it is being stopped: parsing what is still in
            # flight would cost the server a core that other sessions need.
            col.sandbox_dropped["stdout"] += conn.mute_output()
        # Step 1: ask politely on the control channel; step 2: SIGINT via the init. A flood
        # gets one short chance: a kernel that printed this much has a backlog that takes
        # seconds of CPU to drain, which its neighbours would pay for.
        steps = (1,) if muted else (1, 2)
        for step in steps:
            if step == 1:
                conn.interrupt()
                grace = limits.interrupt_grace_s if not muted else 0.5
            else:
                # The control thread may be dead (fd exhaustion, a broken kernel): a signal
                # through the init needs nothing from the kernel. Short: it rarely helps.
                await self._control.signal(kernel, "SIGINT")
                grace = min(1.0, limits.interrupt_grace_s)
            grace_end = time.monotonic() + grace
            while col.reply is None and time.monotonic() < grace_end:
                event = await conn.next_event(msg_id, max(0.01, grace_end - time.monotonic()))
                if isinstance(event, Malformed):
                    return await self._malformed(kernel, col, event, started, resources)
                if event is not None and not muted and not col.over_budget():
                    await col.feed(event)
                elif event is not None:
                    col.discard(event)  # flooding: count it, keep only what ends the request
            if col.reply is not None and muted:
                # Listen again, and make sure the output stream is back before the next cell.
                try:
                    await conn.unmute_output(timeout=max(1.0, limits.interrupt_grace_s))
                except KernelNotReady:
                    break  # no output stream: replace the kernel below
            if col.reply is not None:
                # Collect the output the interrupt produced (the KeyboardInterrupt traceback).
                idle_end = time.monotonic() + 0.5
                while not col.idle and not muted and time.monotonic() < idle_end:
                    event = await conn.next_event(msg_id, max(0.01, idle_end - time.monotonic()))
                    if isinstance(event, Malformed):
                        return await self._malformed(kernel, col, event, started, resources)
                    if event is None:
                        continue
                    if col.over_budget():
                        col.discard(event)
                    else:
                        await col.feed(event)
                # Children that ignore SIGINT (subprocesses, forks) must not outlive the cell.
                if not await self._control.sweep_processes(kernel):
                    break  # the sandbox could not be swept: replace it below
                message = (
                    f"execution {what}; the kernel was interrupted and its state kept, "
                    "other processes in the sandbox were stopped"
                )
                execution = col.build(reason, started=started, message=message, resources=await resources())
                return ExecOutcome(execution, kernel_usable=True)
            state = await self._control.inspect(kernel)
            if state.status is not SandboxStatus.RUNNING:
                return await self._dead(col, state, started, resources)
        # Step 3: the kernel ignores interrupts (signal handlers, C loops, SIGSTOP), or could
        # not be cleaned up: kill it.
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
    if len(lines) <= n:
        return lines
    tail = n - n // 2
    return [*lines[: n // 2], *lines[len(lines) - tail :]] if tail else lines[: n // 2]


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def _size(value: object) -> int:
    """Bytes ``value`` takes in a JSON response (without escapes)."""
    if isinstance(value, str):
        return _nbytes(value)
    try:
        return _nbytes(json.dumps(value, ensure_ascii=False))
    except (ValueError, TypeError, RecursionError):
        return 1 << 62  # cannot be sent as it is: never fits


def _fit(text: str, limit: int) -> tuple[str, int]:
    """``text`` cut to at most ``limit`` UTF-8 bytes (a short marker on top), and the bytes cut."""
    size = _nbytes(text)
    if size <= limit:
        return text, 0
    kept = text.encode("utf-8", "replace")[: max(0, limit)].decode("utf-8", "ignore")
    return kept + " [...]", size - _nbytes(kept)


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
