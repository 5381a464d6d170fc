"""Execution streams: typed NDJSON events, ending with ``done`` that carries the Execution."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from execbox._models import DoneEvent, ErrorBody, ErrorEnvelope, Execution, ExecutionEvent
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


def ndjson_stream(
    run: Callable[[Callable[[ExecutionEvent], Awaitable[None]]], Awaitable[Execution]],
    *,
    on_disconnect: Callable[[], None],
    tasks: set[asyncio.Task[None]],
) -> StreamingResponse:
    """Start ``run`` now and stream its events; a client that goes away triggers ``on_disconnect``.

    A service failure after the stream started (rare: the response status is already sent)
    ends the stream with one ``{"error": {...}}`` line instead of ``done``.
    """
    # Bounded by the executor's output caps: only kept output becomes events.
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def on_event(event: ExecutionEvent) -> None:
        queue.put_nowait(event.model_dump_json() + "\n")

    async def runner() -> None:
        try:
            execution = await run(on_event)
            queue.put_nowait(DoneEvent(execution=execution).model_dump_json() + "\n")
        except ServiceError as exc:
            queue.put_nowait(
                ErrorEnvelope(error=ErrorBody(code=exc.code, message=exc.message)).model_dump_json() + "\n"
            )
        except Exception:
            log.exception("execution stream failed")
            body = ErrorBody(code="internal_error", message="the execution failed inside the service")
            queue.put_nowait(ErrorEnvelope(error=body).model_dump_json() + "\n")
        finally:
            queue.put_nowait(None)

    task = asyncio.get_running_loop().create_task(runner())
    tasks.add(task)  # keep a reference: the loop holds tasks weakly
    task.add_done_callback(tasks.discard)

    async def body() -> AsyncIterator[str]:
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            if not task.done():
                on_disconnect()

    return StreamingResponse(body(), media_type=NDJSON, headers={"Cache-Control": "no-store"})
