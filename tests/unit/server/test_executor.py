"""The executor on recorded kernel messages and scripted misbehaviour (no Docker, no ZMQ)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from execbox._models import ExecutionStatus, StdoutEvent
from execbox_server.backends.base import SandboxState, SandboxStatus, Usage
from execbox_server.executor import ExecLimits, Executor
from execbox_server.kernel.connection import _to_event
from execbox_server.kernel.events import Display, ErrorOutput, Idle, KernelEvent, Malformed, Reply, Stream, Traffic

RECORDED = json.loads((Path(__file__).parent / "data" / "recorded_messages.json").read_text())

LIMITS = ExecLimits(timeout_s=2.0, interrupt_grace_s=0.2, max_output_bytes=4000, max_results=10)


class FakeConn:
    """Replays (delay, event) pairs; stops answering once the script is exhausted."""

    def __init__(self, script: list[tuple[float, KernelEvent]], *, obeys_interrupt: bool = True) -> None:
        self.script = list(script)
        self.obeys_interrupt = obeys_interrupt
        self.interrupts = 0
        self.traffic = Traffic()

    def execute(self, code: str) -> str:
        return "msg-1"

    def mute_output(self) -> int:
        self.muted = True
        return 0

    async def unmute_output(self, timeout: float) -> None:
        self.muted = False

    def interrupt(self) -> None:
        self.interrupts += 1
        if self.obeys_interrupt:
            self.script = [
                (0.0, Reply(status="error", execution_count=1, ename="KeyboardInterrupt", evalue="")),
                (0.0, Idle()),
            ]

    async def next_event(self, msg_id: str, timeout: float) -> KernelEvent | None:
        if not self.script:
            await asyncio.sleep(timeout)
            return None
        delay, event = self.script[0]
        if delay > timeout:
            self.script[0] = (delay - timeout, event)
            await asyncio.sleep(timeout)
            return None
        await asyncio.sleep(delay)
        self.script.pop(0)
        self.traffic.messages += 1
        self.traffic.bytes += 600 + len(getattr(event, "text", ""))
        return event


class FakeKernel:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn


class FakeControl:
    def __init__(self, status: SandboxStatus = SandboxStatus.RUNNING) -> None:
        self.status = status
        self.killed = False
        self.signals: list[str] = []

    async def inspect(self, kernel: Any) -> SandboxState:
        return SandboxState(SandboxStatus.GONE if self.killed else self.status)

    async def kill(self, kernel: Any) -> None:
        self.killed = True

    async def signal(self, kernel: Any, sig: str) -> None:
        self.signals.append(sig)

    def usage(self, kernel: Any) -> Usage:
        return Usage(cpu_ns=1_000_000, peak_memory_bytes=50_000_000)

    def reset_peak_memory(self, kernel: Any) -> None:
        pass

    async def sweep_processes(self, kernel: Any) -> bool:
        self.swept = True
        return True


def replay(index: int) -> list[tuple[float, KernelEvent]]:
    rec = RECORDED[index]
    events = [_to_event(m, from_shell=False) for m in rec["iopub"]]
    script = [(0.0, e) for e in events[:-1] if e is not None]
    script.append((0.0, _to_event(rec["reply"], from_shell=True)))  # reply may precede the last idle
    script.append((0.0, events[-1]))
    return script


async def run(conn: FakeConn, control: FakeControl | None = None, limits: ExecLimits = LIMITS, **kw: Any):
    return await Executor(control or FakeControl()).run(FakeKernel(conn), "code", limits, **kw)


async def test_recorded_cell_yields_streams_plot_and_main_result() -> None:
    outcome = await run(FakeConn(replay(0)))
    ex = outcome.execution
    assert ex.status is ExecutionStatus.OK and outcome.kernel_usable
    assert ex.stdout == "hello\n" and ex.stderr == "oops\n"
    assert [r.is_main_result for r in ex.results] == [False, True]
    assert "image/png" in ex.results[0].data
    assert ex.text == "42"
    assert ex.execution_count == RECORDED[0]["reply"]["content"]["execution_count"]


async def test_recorded_error_has_name_value_and_ansi_free_traceback() -> None:
    ex = (await run(FakeConn(replay(1)))).execution
    assert ex.status is ExecutionStatus.ERROR
    assert ex.error is not None and ex.error.name == "ValueError"
    assert "\x1b" not in ex.error.value and "\x1b" not in "".join(ex.error.traceback)
    assert any("raise ValueError" in line for line in ex.error.traceback)


async def test_output_of_other_requests_is_ignored_by_parent_id() -> None:
    msgs = [
        {
            "msg_type": "stream",
            "parent_header": {"msg_id": "other"},
            "content": {"name": "stdout", "text": "x"},
        },
    ]
    # _to_event itself does not filter; next_event does, by msg_id. Here: unknown types are dropped.
    assert _to_event({"msg_type": "comm_open", "parent_header": {}, "content": {}}, from_shell=False) is None
    assert isinstance(_to_event(msgs[0], from_shell=False), Stream)


async def test_stream_events_are_forwarded_in_order_and_capped() -> None:
    seen: list[str] = []

    async def on_event(event: Any) -> None:
        if isinstance(event, StdoutEvent):
            seen.append(event.text)

    script: list[tuple[float, KernelEvent]] = [(0.0, Stream("stdout", "a" * 400)) for _ in range(10)]
    script += [(0.0, Idle()), (0.0, Reply(status="ok", execution_count=3))]
    ex = (await run(FakeConn(script), on_event=on_event)).execution
    # stdout keeps half of the 4000-byte budget: 1000 bytes of head, 1000 of tail.
    assert ex.truncated and ex.truncation.stdout_bytes == 4000 - 2000
    assert "[... 2000 bytes truncated ...]" in ex.stdout
    assert ex.stdout.startswith("a" * 1000) and ex.stdout.endswith("a" * 1000)
    assert sum(len(t) for t in seen) == 1000  # only the kept head is streamed


async def test_timeout_interrupts_and_keeps_state_when_the_kernel_obeys() -> None:
    conn = FakeConn([(10.0, Idle())])
    limits = ExecLimits(timeout_s=0.3, interrupt_grace_s=0.5, max_output_bytes=1000, max_results=10)
    outcome = await run(conn, limits=limits)
    ex = outcome.execution
    assert ex.status is ExecutionStatus.TIMEOUT and outcome.kernel_usable
    assert not ex.state_lost and conn.interrupts == 1
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"


async def test_timeout_escalates_to_kill_when_interrupts_are_ignored() -> None:
    conn = FakeConn([(10.0, Idle())], obeys_interrupt=False)
    control = FakeControl()
    limits = ExecLimits(timeout_s=0.2, interrupt_grace_s=0.2, max_output_bytes=1000, max_results=10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    outcome = await run(conn, control, limits=limits)
    assert loop.time() - t0 < 1.5
    assert outcome.execution.status is ExecutionStatus.TIMEOUT
    assert outcome.execution.state_lost and outcome.execution.kernel_restarted
    assert not outcome.kernel_usable
    assert control.signals == ["SIGINT"] and control.killed


@pytest.mark.parametrize(
    ("sandbox", "expected"),
    [
        (SandboxStatus.EXITED, ExecutionStatus.KERNEL_DIED),
        (SandboxStatus.OOM_KILLED, ExecutionStatus.OUT_OF_MEMORY),
        (SandboxStatus.GONE, ExecutionStatus.SANDBOX_LOST),
    ],
)
async def test_a_dead_sandbox_is_reported_with_its_cause_before_the_deadline(
    sandbox: SandboxStatus, expected: ExecutionStatus
) -> None:
    conn = FakeConn([(0.0, Stream("stdout", "partial\n"))])
    limits = ExecLimits(timeout_s=30, interrupt_grace_s=0.2, max_output_bytes=1000, max_results=10)
    outcome = await run(conn, FakeControl(sandbox), limits=limits)
    ex = outcome.execution
    assert ex.status is expected and ex.state_lost and not outcome.kernel_usable
    assert ex.stdout == "partial\n"
    assert ex.duration_ms < 5000


async def test_interrupt_event_stops_the_execution_as_interrupted() -> None:
    flag = asyncio.Event()
    conn = FakeConn([(10.0, Idle())])
    task = asyncio.ensure_future(run(conn, interrupted=flag))
    await asyncio.sleep(0.1)
    flag.set()
    outcome = await task
    assert outcome.execution.status is ExecutionStatus.INTERRUPTED and outcome.kernel_usable


async def test_resources_are_reported() -> None:
    ex = (await run(FakeConn(replay(0)))).execution
    assert ex.resources.cpu_ms == 0.0 and ex.resources.peak_memory_bytes == 50_000_000
    assert ex.resources.wall_ms >= 0


class SilentFlood(FakeConn):
    """A kernel whose every message is one the executor never sees as an event
    (another parent, an unknown type, a bad signature): only the traffic grows."""

    async def next_event(self, msg_id: str, timeout: float) -> KernelEvent | None:
        if self.interrupts and self.obeys_interrupt:
            return await super().next_event(msg_id, timeout)
        self.traffic.messages += 64
        self.traffic.bytes += 64 * 600
        await asyncio.sleep(0.001)
        return None


async def test_messages_that_are_not_events_count_against_the_flood_budget() -> None:
    limits = ExecLimits(timeout_s=20, interrupt_grace_s=0.2, max_output_bytes=4000, max_results=10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    outcome = await run(SilentFlood([]), limits=limits)
    assert outcome.execution.status is ExecutionStatus.OUTPUT_LIMIT
    assert outcome.execution.truncated and loop.time() - t0 < 5


async def test_a_malformed_message_replaces_the_kernel_and_says_so() -> None:
    control = FakeControl()
    conn = FakeConn([(0.0, Stream("stdout", "before\n")), (0.0, Malformed("a malformed 'stream' message: x"))])
    outcome = await run(conn, control)
    ex = outcome.execution
    assert ex.status is ExecutionStatus.KERNEL_DIED and ex.state_lost and not outcome.kernel_usable
    assert control.killed and "malformed" in (ex.message or "") and ex.stdout == "before\n"


def _kept_bytes(ex: Any) -> int:
    size = len(ex.stdout.encode()) + len(ex.stderr.encode())
    for r in ex.results:
        size += len(json.dumps(r.data, ensure_ascii=False).encode())
        size += len(json.dumps(r.metadata, ensure_ascii=False).encode())
    if ex.error is not None:
        size += len(ex.error.name.encode()) + len(ex.error.value.encode())
        size += sum(len(line.encode()) + 1 for line in ex.error.traceback if not line.startswith("[... "))
    return size


async def test_metadata_error_names_and_values_count_against_max_output_bytes() -> None:
    limits = ExecLimits(timeout_s=5, interrupt_grace_s=0.2, max_output_bytes=2000, max_results=10)
    script: list[tuple[float, KernelEvent]] = [
        (0.0, Display(data={"text/plain": "r"}, metadata={"m": "x" * 100_000}, is_main=False)),
        (0.0, Display(data={"text/plain": "s"}, metadata={"deep": [[["y" * 1000] * 50]]}, is_main=False)),
        (0.0, ErrorOutput(ename="N" * 100_000, evalue="V" * 100_000, traceback=["T" * 500] * 100)),
        (0.0, ErrorOutput(ename="M" * 100_000, evalue="W" * 100_000, traceback=["U" * 500] * 100)),
        (0.0, Idle()),
        (0.0, Reply(status="error", execution_count=1, ename="N", evalue="V")),
    ]
    streamed: list[int] = []

    async def on_event(event: Any) -> None:
        streamed.append(len(event.model_dump_json()))

    ex = (await run(FakeConn(script), limits=limits, on_event=on_event)).execution
    assert ex.status is ExecutionStatus.ERROR and ex.truncated
    # Everything kept fits the budget; only short truncation markers come on top.
    assert _kept_bytes(ex) <= 2000, _kept_bytes(ex)
    assert sum(streamed) <= 2000 + 600 * len(streamed)


async def test_a_reader_that_never_reads_does_not_hold_the_execution_past_its_deadline() -> None:
    async def stuck_reader(event: Any) -> None:
        await asyncio.Event().wait()  # a full stream whose reader went away

    script: list[tuple[float, KernelEvent]] = [(0.0, Stream("stdout", "x\n")), (10.0, Idle())]
    limits = ExecLimits(timeout_s=0.5, interrupt_grace_s=0.2, max_output_bytes=1000, max_results=10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    outcome = await asyncio.wait_for(run(FakeConn(script), limits=limits, on_event=stuck_reader), 10)
    assert outcome.execution.status is ExecutionStatus.TIMEOUT and outcome.kernel_usable
    assert loop.time() - t0 < 2.5
    assert outcome.execution.stdout == "x\n"


async def test_a_sandbox_that_cannot_be_swept_is_replaced() -> None:
    class Unsweepable(FakeControl):
        async def sweep_processes(self, kernel: Any) -> bool:
            return False

    control = Unsweepable()
    limits = ExecLimits(timeout_s=0.2, interrupt_grace_s=0.3, max_output_bytes=1000, max_results=10)
    outcome = await run(FakeConn([(10.0, Idle())]), control, limits=limits)
    assert outcome.execution.state_lost and not outcome.kernel_usable and control.killed
