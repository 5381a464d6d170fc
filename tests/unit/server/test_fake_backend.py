"""The fake backend keeps up with the seam: every operation of the backend protocols (and of the
Docker facade the app builds) exists on the fake with the same parameters, and the fake kernel
answers the way the executor expects a Jupyter kernel to."""

from __future__ import annotations

import inspect

import pytest

from execbox_server.backends.base import SandboxBackend, SandboxSpec, WorkerBackend
from execbox_server.backends.docker import DockerBackend
from execbox_server.kernel.events import Display, ErrorOutput, Idle, KernelEvent, Reply, Stream
from tests.support.fake_backend import FakeBackend, FakeKernel

SPEC = SandboxSpec(memory_mb=256, cpus=1.0)


def operations(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


@pytest.mark.parametrize("seam", [SandboxBackend, WorkerBackend, DockerBackend])
def test_the_fake_has_every_operation_of_the_seam_with_the_same_parameters(seam: type) -> None:
    fake = operations(FakeBackend)
    for name, signature in operations(seam).items():
        assert name in fake, f"FakeBackend lacks {seam.__name__}.{name}"
        assert list(fake[name].parameters) == list(signature.parameters), name
        assert inspect.iscoroutinefunction(getattr(FakeBackend, name)) == inspect.iscoroutinefunction(
            getattr(seam, name)
        ), f"{name}: async in one and not the other"


async def events_of(kernel: FakeKernel, code: str) -> list[KernelEvent]:
    msg_id = kernel.conn.execute(code)
    events: list[KernelEvent] = []
    while not events or not isinstance(events[-1], Idle):
        event = await kernel.conn.next_event(msg_id, 1.0)
        assert event is not None, "the fake kernel stopped answering"
        events.append(event)
    return events


async def test_a_cell_publishes_streams_in_order_then_its_value_then_reply_and_idle() -> None:
    kernel = await FakeBackend().start(SPEC)
    events = await events_of(kernel, "import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')\n'v'")
    assert events == [
        Stream("stdout", "a\n"),
        Stream("stderr", "b\n"),
        Stream("stdout", "c\n"),
        Display({"text/plain": "'v'"}, {}, is_main=True),
        Reply("ok", 1),
        Idle(),
    ]
    assert kernel.conn.traffic.messages == len(events)


async def test_an_exception_publishes_an_error_and_an_error_reply_with_the_source_line() -> None:
    kernel = await FakeBackend().start(SPEC)
    *_, error, reply, idle = await events_of(kernel, "def f():\n    return {}['k']\nf()")
    assert isinstance(error, ErrorOutput) and (error.ename, error.evalue) == ("KeyError", "'k'")
    assert any("return {}['k']" in line for line in error.traceback)
    assert isinstance(reply, Reply) and reply.status == "error" and reply.ename == "KeyError"
    assert isinstance(idle, Idle)


async def test_a_none_value_and_statements_publish_no_result() -> None:
    kernel = await FakeBackend().start(SPEC)
    assert await events_of(kernel, "y = 3\nNone") == [Reply("ok", 1), Idle()]
    assert kernel.conn.namespace["y"] == 3
    assert "display" not in kernel.conn.namespace  # display() lives in builtins, as in IPython
