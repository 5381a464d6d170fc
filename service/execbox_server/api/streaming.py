"""Execution streams: typed NDJSON events, ending with ``done`` that carries the Execution."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from execbox._models import DoneEvent, ErrorBody, ErrorEnvelope, Execution
from execbox_server.errors import ServiceError

__all__ = ["NDJSON", "model_response", "ndjson_stream", "on_client_disconnect"]

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


def ndjson_stream(
    run: Callable[[Emit], Awaitable[BaseModel]],
    *,
    tasks: set[asyncio.Task[None]],
    on_disconnect: Callable[[], None] | None = None,
) -> StreamingResponse:
    """Start ``run(emit)`` now; stream each model it emits, then the model it returns, as NDJSON.

    A client that goes away triggers ``on_disconnect`` (default: cancel ``run``). A service
    failure after the stream started (the status is already sent) ends the stream with one
    ``{"error": {...}}`` line instead of the last model. The queue is bounded: a slow reader
    slows the producer instead of growing the server's memory.
    """
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1024)

    async def emit(model: BaseModel) -> None:
        await queue.put(model.model_dump_json() + "\n")

    async def runner() -> None:
        try:
            last = await run(emit)
            await queue.put(last.model_dump_json() + "\n")
        except ServiceError as exc:
            await queue.put(ErrorEnvelope(error=ErrorBody(code=exc.code, message=exc.message)).model_dump_json() + "\n")
        except Exception:
            log.exception("stream failed")
            body = ErrorBody(code="internal_error", message="the request failed inside the service")
            await queue.put(ErrorEnvelope(error=body).model_dump_json() + "\n")
        finally:
            await queue.put(None)

    task = asyncio.get_running_loop().create_task(runner())
    tasks.add(task)  # keep a reference: the loop holds tasks weakly
    task.add_done_callback(tasks.discard)

    async def body() -> AsyncIterator[str]:
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            if not task.done():
                if on_disconnect is not None:
                    on_disconnect()
                else:
                    task.cancel()

    return StreamingResponse(body(), media_type=NDJSON, headers={"Cache-Control": "no-store"})
