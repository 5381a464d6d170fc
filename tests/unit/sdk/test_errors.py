"""One table of error codes: a failure raises the same SDK exception however it arrives.

An error can come as an HTTP error response, or, once a stream's 200 status is sent, as the
``{"error": {...}}`` line that ends the stream. The service sends the same code either way;
the SDK must raise the same class with the same status for it, sync or async, one-shot,
session or batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import execbox
from execbox import (
    APIStatusError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    EngineUnavailableError,
    ErrorCode,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PoolExhaustedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    SessionBusyError,
    SessionNotFoundError,
)
from execbox._exceptions import _BY_CODE, status_error_for

SESSION = {
    "id": "s_1",
    "limits": {"memory_mb": 512, "cpus": 1.0, "timeout_s": 30.0},
    "created_at": "2026-01-01T00:00:00Z",
    "last_used_at": "2026-01-01T00:00:00Z",
    "expires_at": "2026-01-01T00:10:00Z",
}

# (code, the status the service sends it with, the class the SDK raises)
CASES = [
    (ErrorCode.INVALID_REQUEST, 422, InvalidRequestError),
    (ErrorCode.INVALID_LIMITS, 422, InvalidRequestError),
    (ErrorCode.INVALID_PATH, 422, InvalidRequestError),
    (ErrorCode.REQUEST_TOO_LARGE, 413, RequestTooLargeError),
    (ErrorCode.SESSION_NOT_FOUND, 404, SessionNotFoundError),
    (ErrorCode.FILE_NOT_FOUND, 404, NotFoundError),
    (ErrorCode.SESSION_BUSY, 409, SessionBusyError),
    (ErrorCode.SANDBOX_UNAVAILABLE, 409, ConflictError),
    (ErrorCode.QUOTA_EXCEEDED, 429, RateLimitError),
    (ErrorCode.TOO_MANY_SESSIONS, 429, RateLimitError),
    (ErrorCode.POOL_EXHAUSTED, 503, PoolExhaustedError),
    (ErrorCode.ENGINE_UNAVAILABLE, 503, EngineUnavailableError),
    (ErrorCode.SANDBOX_START_FAILED, 503, ServiceUnavailableError),
    (ErrorCode.SHUTTING_DOWN, 503, ServiceUnavailableError),
    (ErrorCode.INTERNAL_ERROR, 500, InternalServerError),
    (ErrorCode.UNAUTHORIZED, 401, AuthenticationError),
    (ErrorCode.METHOD_NOT_ALLOWED, 405, BadRequestError),
]


def error_body(code: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": f"{code} happened"}}


def failing_service(code: str, status: int, *, streamed: bool) -> Callable[[httpx.Request], httpx.Response]:
    """Every call fails with ``code``: as a response, or as the line that ends a 200 stream."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/sessions":
            return httpx.Response(201, json=SESSION)
        if request.method == "DELETE":
            return httpx.Response(204)
        if streamed and request.url.path.endswith("/stream"):
            batch = request.url.path == "/v1/batch/stream"
            first = {"type": "result", "index": 0, "status": "ok"} if batch else {"type": "stdout", "text": "partial\n"}
            lines = json.dumps(first) + "\n" + json.dumps(error_body(code)) + "\n"
            return httpx.Response(200, content=lines.encode(), headers={"content-type": "application/x-ndjson"})
        return httpx.Response(status, json=error_body(code))

    return handler


def sync_client(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client(
        "http://execbox.test", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


def async_client(handler: Callable[[httpx.Request], httpx.Response]) -> AsyncClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return AsyncClient("http://execbox.test", max_retries=0, http_client=http)


def raised_by(call: Callable[[], object]) -> APIStatusError:
    with pytest.raises(APIStatusError) as info:
        call()
    return info.value


def test_every_error_code_has_a_class_and_a_status() -> None:
    assert set(_BY_CODE) == set(ErrorCode)
    for code in ErrorCode:
        error = status_error_for(code.value, "m")
        assert isinstance(error, APIStatusError) and error.code is code
        assert 400 <= error.status_code < 600


def test_error_code_is_exported_and_its_members_are_the_wire_strings() -> None:
    assert execbox.ErrorCode is ErrorCode and "ErrorCode" in execbox.__all__
    assert ErrorCode.SESSION_BUSY == "session_busy" and str(ErrorCode.SESSION_BUSY) == "session_busy"


@pytest.mark.parametrize(("code", "status", "cls"), CASES, ids=[c.value for c, _, _ in CASES])
def test_one_shot_run_raises_the_same_class_streamed_or_not(
    code: ErrorCode, status: int, cls: type[APIStatusError]
) -> None:
    with sync_client(failing_service(code, status, streamed=False)) as client:
        whole = raised_by(lambda: client.run("x"))
    with sync_client(failing_service(code, status, streamed=True)) as client:
        with_callbacks = raised_by(lambda: client.run("x", on_stdout=lambda text: None))
        streamed = raised_by(lambda: list(client.run_stream("x")))
    for error in (whole, with_callbacks, streamed):
        assert type(error) is cls, (code, error)
        assert (error.status_code, error.code) == (status, code)
        assert f"{code.value} happened" in str(error)


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        (ErrorCode.SESSION_BUSY, 409, SessionBusyError),
        (ErrorCode.INVALID_REQUEST, 422, InvalidRequestError),
        (ErrorCode.SESSION_NOT_FOUND, 404, SessionNotFoundError),
    ],
)
def test_session_runs_raise_the_same_class_streamed_or_not(
    code: ErrorCode, status: int, cls: type[APIStatusError]
) -> None:
    with sync_client(failing_service(code, status, streamed=False)) as client, client.session() as session:
        whole = raised_by(lambda: session.run("x"))
    with sync_client(failing_service(code, status, streamed=True)) as client, client.session() as session:
        streamed = raised_by(lambda: session.run("x", on_stderr=lambda text: None))
    assert type(whole) is type(streamed) is cls
    assert whole.status_code == streamed.status_code == status


@pytest.mark.parametrize(
    ("code", "status", "cls", "verdict"),
    [
        (ErrorCode.POOL_EXHAUSTED, 503, PoolExhaustedError, False),
        (ErrorCode.REQUEST_TOO_LARGE, 413, RequestTooLargeError, True),
    ],
)
async def test_async_runs_raise_and_batches_report_the_same_class_as_the_sync_ones(
    code: ErrorCode, status: int, cls: type[APIStatusError], verdict: bool
) -> None:
    # A batch keeps failures as data (one result per job); its message names the same class.
    errors: list[APIStatusError] = []
    batches = []
    for streamed in (False, True):
        async with async_client(failing_service(code, status, streamed=streamed)) as client:
            with pytest.raises(APIStatusError) as info:
                await client.run("x", on_stdout=(lambda text: None) if streamed else None)
            errors.append(info.value)
            if not streamed:  # a batch refused whole (as a stream's last line, see test_batch_chunks)
                batches.append(await client.batch(["x"]))
    with sync_client(failing_service(code, status, streamed=False)) as sync:
        batches.append(sync.batch(["x"]))
    assert all(type(e) is cls and e.status_code == status and e.code is code for e in errors), errors
    for [result] in batches:
        assert result.is_verdict is verdict and cls.__name__ in (result.message or ""), result


def test_an_unknown_code_in_a_stream_is_a_server_error_keeping_its_code() -> None:
    with sync_client(failing_service("brand_new_code", 500, streamed=True)) as client:
        error = raised_by(lambda: list(client.run_stream("x")))
    assert type(error) is InternalServerError and error.code == "brand_new_code" and error.status_code == 500


def test_an_unknown_code_in_a_response_falls_back_to_its_http_status() -> None:
    with sync_client(lambda request: httpx.Response(409, json=error_body("brand_new_code"))) as client:
        error = raised_by(lambda: client.sessions.list())
    assert type(error) is ConflictError and error.code == "brand_new_code"


def test_http_error_code_takes_its_class_from_the_status() -> None:
    assert type(status_error_for("http_error", "m", status_code=404)) is NotFoundError
    assert type(status_error_for("http_error", "m", status_code=418)) is APIStatusError
    assert type(status_error_for("http_error", "m", status_code=502)) is InternalServerError


def test_events_before_the_error_line_reach_the_caller_first() -> None:
    seen: list[str] = []
    with sync_client(failing_service(ErrorCode.SHUTTING_DOWN, 503, streamed=True)) as client:
        with pytest.raises(ServiceUnavailableError):
            client.run("x", on_stdout=seen.append)
    assert seen == ["partial\n"]


def test_the_sdk_reads_each_code_with_the_status_the_service_sends_it_with() -> None:
    errors = pytest.importorskip("execbox_server.errors")  # an SDK-only install has no service
    for code in ErrorCode:
        if code is not ErrorCode.HTTP_ERROR:  # any status: none of its own
            assert status_error_for(code.value, "m").status_code == errors.status_of(code), code
