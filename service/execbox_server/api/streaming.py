"""Execution streams: typed NDJSON events, ending with ``done`` that carries the Execution."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from execbox._codes import ErrorCode
from execbox._models import DoneEvent, ErrorBody, ErrorEnvelope, Execution
from execbox_server.errors import ServiceError

__all__ = ["NDJSON", "StreamBuffer", "model_response", "ndjson_stream", "on_client_disconnect"]

log = logging.getLogger("execbox.api")

NDJSON = "application/x-ndjson"


@contextlib.asynccontextmanager
async def on_client_disconnect(request: Request, callback: Callable[[], None]) -> AsyncIterator[None]:
    """Call ``callback`` if the client goes away while the body of the ``with`` runs.

    The request body is already read, so the next ASGI message can only be the disconnect.
    An execution whose caller left is interrupted instead of holding the session until
    its deadline.
    """

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                callback()
                return

    task = asyncio.get_running_loop().create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def model_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialize a model once, in pydantic-core, skipping FastAPI's second validation pass.

    The route still declares ``response_model`` so the OpenAPI document shows the schema.
    """
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


Emit = Callable[[BaseModel], Awaitable[None]]


async def done_event(execution: Awaitable[Execution]) -> DoneEvent:
    """The last line of an execution stream: ``done`` with the whole Execution."""
    return DoneEvent(execution=await execution)


# What one stream may hold for its reader. Past it, ``emit`` waits for the reader (batches:
# backpressure) or drops the event (executions: the final ``done`` line still carries
# everything that was kept).
STREAM_BUFFER_BYTES = 4 * 1024 * 1024


class StreamBuffer:
    """NDJSON lines between a producer and the response body, bounded in bytes.

    Every line counts, error lines too. The last line (the producer's result, or the error
    that ended it) is always accepted, so memory stays within the bound plus that line.
    Once the reader is gone the buffer is abandoned: nothing is kept and no writer waits,
    so neither the producer nor shutdown can block on a reader that will never read.
    """

    def __init__(self, max_bytes: int = STREAM_BUFFER_BYTES) -> None:
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lines: collections.deque[str] = collections.deque()
        self._size = 0
        self._finished = False
        self._abandoned = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def size(self) -> int:
        return self._size

    async def put(self, line: str, *, wait: bool = True) -> bool:
        """Queue ``line``; True when it was queued.

        With ``wait`` a full buffer waits for the reader; without, the line is dropped
        (and counted). Never waits once the reader is gone.
        """
        n = len(line)
        while not self._abandoned and self._size and self._size + n > self.max_bytes:
            if not wait:
                self.dropped += 1
                return False
            self._writable.clear()
            await self._writable.wait()
        if self._abandoned or self._finished:
            return False
        self._append(line)
        return True

    def finish(self, last: str | None = None) -> None:
        """End the stream, with one last line that is accepted whatever the bound. Never waits."""
        if self._finished:
            return
        if last is not None and not self._abandoned:
            self._append(last)
        self._finished = True
        self._readable.set()

    def abandon(self) -> None:
        """The reader is gone: drop what is queued and release every writer."""
        self._abandoned = True
        self._lines.clear()
        self._size = 0
        self._writable.set()
        self._readable.set()

    async def get(self) -> str | None:
        """The next line, or None once the stream is finished and empty."""
        while not self._lines:
            if self._finished or self._abandoned:
                return None
            self._readable.clear()
            await self._readable.wait()
        line = self._lines.popleft()
        self._size -= len(line)
        if self._size <= self.max_bytes // 2:
            self._writable.set()
        return line

    def _append(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        self._readable.set()


def ndjson_stream(
    run: Callable[[Emit], Awaitable[BaseModel]],
    *,
    tasks: set[asyncio.Task[None]],
    on_disconnect: Callable[[], None] | None = None,
    when_full: Literal["wait", "drop"] = "wait",
    max_buffered_bytes: int = STREAM_BUFFER_BYTES,
    on_done: Callable[[], None] | None = None,
) -> StreamingResponse:
    """Start ``run(emit)`` now; stream each model it emits, then the model it returns, as NDJSON.

    A client that goes away triggers ``on_disconnect`` (default: cancel ``run``) and
    releases any ``emit`` waiting for room. A service failure after the stream started (the
    status is already sent) ends the stream with one ``{"error": {...}}`` line instead of
    the last model. The buffer is bounded in bytes (``max_buffered_bytes``): past it,
    ``emit`` waits for a slow reader (``when_full="wait"``, fine for batches) or drops the
    event (``"drop"``, for executions, whose deadline a reader must never stretch; their
    ``done`` line carries the whole Execution anyway). Shutdown cancels ``run``; nothing
    here waits on the reader after that. ``on_done`` runs when the producer has ended, however
    it ended (also when it was cancelled before it began): what the request holds is given
    back there.
    """
    buffer = StreamBuffer(max_buffered_bytes)

    async def emit(model: BaseModel) -> None:
        await buffer.put(model.model_dump_json() + "\n", wait=when_full == "wait")

    async def runner() -> None:
        last: str | None = None
        try:
            result = await run(emit)
            last = result.model_dump_json() + "\n"
        except ServiceError as exc:
            last = ErrorEnvelope(error=ErrorBody(code=exc.code, message=exc.message)).model_dump_json() + "\n"
        except Exception:
            log.exception("stream failed")
            body = ErrorBody(code=ErrorCode.INTERNAL_ERROR, message="the request failed inside the service")
            last = ErrorEnvelope(error=body).model_dump_json() + "\n"
        finally:
            # Never waits: a cancelled runner (shutdown, a vanished reader) must end at once.
            buffer.finish(last)

    task = asyncio.get_running_loop().create_task(runner())
    tasks.add(task)  # keep a reference: the loop holds tasks weakly
    task.add_done_callback(tasks.discard)
    if on_done is not None:
        task.add_done_callback(lambda _: on_done())

    async def body() -> AsyncIterator[str]:
        try:
            while (line := await buffer.get()) is not None:
                yield line
        finally:
            buffer.abandon()
            if not task.done():
                if on_disconnect is not None:
                    on_disconnect()
                else:
                    task.cancel()

    return StreamingResponse(body(), media_type=NDJSON, headers={"Cache-Control": "no-store"})
