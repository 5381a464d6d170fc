"""NDJSON streams: memory bounded in bytes, nothing waits on a reader that went away."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from execbox_server.api.streaming import StreamBuffer, ndjson_stream


class Line(BaseModel):
    text: str


async def test_the_buffer_is_bounded_in_bytes_and_drops_when_asked() -> None:
    buf = StreamBuffer(max_bytes=1000)
    assert await buf.put("a" * 600, wait=False)
    assert not await buf.put("b" * 600, wait=False)  # would pass the bound: dropped, counted
    assert buf.dropped == 1 and buf.size == 600
    buf.finish("z" * 5000)  # the last line is always accepted
    assert [await buf.get(), await buf.get(), await buf.get()] == ["a" * 600, "z" * 5000, None]


async def test_a_waiting_writer_is_released_when_the_reader_goes_away() -> None:
    buf = StreamBuffer(max_bytes=100)
    await buf.put("x" * 90)
    writer = asyncio.ensure_future(buf.put("y" * 90))
    await asyncio.sleep(0.05)
    assert not writer.done()  # backpressure while the reader is there
    buf.abandon()
    assert await asyncio.wait_for(writer, 1) is False


async def test_a_cancelled_producer_with_a_full_stream_ends_at_once() -> None:
    """Shutdown cancels stream producers; with an unread full stream this used to hang."""
    tasks: set[asyncio.Task[None]] = set()

    async def produce(emit):  # type: ignore[no-untyped-def]
        while True:
            await emit(Line(text="x" * 1000))

    response = ndjson_stream(produce, tasks=tasks, max_buffered_bytes=10_000)
    await asyncio.sleep(0.1)  # the buffer is full, the producer waits for a reader
    (task,) = tasks
    assert not task.done()
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 2)
    assert response is not None


async def test_error_lines_count_against_the_bound() -> None:
    buf = StreamBuffer(max_bytes=1000)
    for _ in range(3):
        await buf.put('{"type": "error", "error": {"name": "E", "value": "' + "v" * 300 + '"}}\n', wait=False)
    assert buf.size <= 1000 and buf.dropped == 1


async def test_what_a_stream_holds_is_given_back_even_when_its_producer_never_started() -> None:
    released: list[str] = []
    started: list[bool] = []
    tasks: set[asyncio.Task[None]] = set()

    async def run(emit):  # type: ignore[no-untyped-def]
        started.append(True)
        return Line(text="done")

    ndjson_stream(run, tasks=tasks, on_done=lambda: released.append("slot"))
    for task in list(tasks):
        task.cancel()  # shutdown cancels producers, possibly before their first step
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert released == ["slot"] and not started
