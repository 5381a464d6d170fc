"""The OpenAPI document as clients generate code from it.

Three things FastAPI does not do by itself:

- every error a route can answer is declared with the one envelope (``ErrorEnvelope``) and
  the codes it may carry (``x-error-codes``), instead of FastAPI's ``HTTPValidationError``
  for 422 (which this service never sends) and nothing for the rest;
- the NDJSON streams declare the schema of one line (``ExecutionStreamLine``,
  ``BatchStreamLine``), which FastAPI cannot derive from a ``StreamingResponse``;
- operation ids are the route functions' names (``create_session``), not
  ``create_session_v1_sessions_post``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any, Union

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import Field, TypeAdapter

from execbox._codes import ErrorCode
from execbox._models import BatchSummary, ErrorEnvelope, ExecutionEvent, JobResult
from execbox_server.api.streaming import NDJSON
from execbox_server.errors import status_of

__all__ = [
    "BODY",
    "LEASE",
    "BatchStreamLine",
    "ExecutionStreamLine",
    "Responses",
    "error_responses",
    "install_openapi",
    "operation_id",
    "stream_response",
]

COMPONENTS = "#/components/schemas/"

Responses = dict[int | str, dict[str, Any]]

# What a route may answer, by what it does (besides 401 and 500, declared on every router).
BODY = (ErrorCode.INVALID_REQUEST, ErrorCode.REQUEST_TOO_LARGE)  # it reads a body
LEASE = (  # it may wait for a kernel or a worker
    ErrorCode.POOL_EXHAUSTED,
    ErrorCode.ENGINE_UNAVAILABLE,
    ErrorCode.SANDBOX_START_FAILED,
    ErrorCode.SHUTTING_DOWN,
)

# One line of an execution stream: events, the last one ``done``; or, when the service fails
# after the stream began (its 200 is already sent), one error envelope instead of ``done``.
ExecutionStreamLine = Annotated[
    Union[ExecutionEvent, ErrorEnvelope],  # noqa: UP007 (ExecutionEvent is an Annotated alias)
    Field(description="One NDJSON line: an event (the last one `done`), or an error envelope ending the stream."),
]
# One line of a batch stream: a result per job in completion order, then the summary; or an
# error envelope ending the stream.
BatchStreamLine = Annotated[
    Union[Annotated[JobResult | BatchSummary, Field(discriminator="type")], ErrorEnvelope],  # noqa: UP007
    Field(
        description="One NDJSON line: a job's `result`, the final `summary`, or an error envelope ending the stream."
    ),
]
_STREAM_LINES: dict[str, Any] = {"ExecutionStreamLine": ExecutionStreamLine, "BatchStreamLine": BatchStreamLine}

# Codes whose answer carries Retry-After (see ServiceError.retry_after).
_RETRY_AFTER = frozenset(
    {
        ErrorCode.TOO_MANY_SESSIONS,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.POOL_EXHAUSTED,
        ErrorCode.QUEUE_TIMEOUT,
        ErrorCode.ENGINE_UNAVAILABLE,
        ErrorCode.SANDBOX_UNAVAILABLE,
    }
)


def error_responses(*codes: ErrorCode) -> Responses:
    """The ``responses`` of a route that may answer with ``codes``, grouped by status."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(status_of(code), []).append(code)
    responses: Responses = {}
    for status, group in sorted(by_status.items()):
        names = ", ".join(f"`{code.value}`" for code in group)
        response: dict[str, Any] = {
            "model": ErrorEnvelope,
            "description": f"{HTTPStatus(status).phrase}: error code {names}",
            "x-error-codes": [code.value for code in group],
        }
        if _RETRY_AFTER.intersection(group):
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying (sent with the codes that are worth a retry).",
                    "schema": {"type": "integer"},
                }
            }
        responses[status] = response
    return responses


def stream_response(line: str, description: str) -> Responses:
    """The 200 of an NDJSON stream route whose lines are the component ``line``."""
    assert line in _STREAM_LINES, line
    return {200: {"description": description, "content": {NDJSON: {"schema": {"$ref": COMPONENTS + line}}}}}


def operation_id(route: APIRoute) -> str:
    """A route's operationId: its function's name, unique across the app (a test checks)."""
    return route.name


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` add the stream line schemas to FastAPI's document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, line in _STREAM_LINES.items():
                schema = TypeAdapter(line).json_schema(mode="serialization", ref_template=COMPONENTS + "{model}")
                for model, definition in schema.pop("$defs", {}).items():
                    # Models the routes already use keep FastAPI's definition (the same model).
                    schemas.setdefault(model, definition)
                schemas[name] = {"title": name, **schema}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
