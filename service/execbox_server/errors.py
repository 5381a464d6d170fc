"""Service errors and the one JSON envelope they travel in.

    ServiceError                      {"error": {"code", "message"}}
    ├── SessionNotFound               404 session_not_found
    ├── SessionBusy                   409 session_busy
    ├── SessionLimitReached           429 too_many_sessions
    ├── QuotaExceeded                 429 quota_exceeded (Retry-After): one API key's share is used up
    ├── InvalidLimits                 422 invalid_limits
    ├── RequestTooLarge               413 request_too_large
    ├── Unauthorized                  401 unauthorized
    ├── PoolExhausted                 503 pool_exhausted (Retry-After)
    ├── PoolClosed                    503 shutting_down
    ├── EngineUnavailable             503 engine_unavailable (Retry-After)
    └── SandboxStartFailed            503 sandbox_start_failed

Raised anywhere below the API layer; one exception handler turns each into its response.
"""

from __future__ import annotations

from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from execbox._models import ErrorBody, ErrorEnvelope

__all__ = [
    "EngineUnavailable",
    "InvalidLimits",
    "PoolClosed",
    "PoolExhausted",
    "QuotaExceeded",
    "RequestTooLarge",
    "SandboxStartFailed",
    "ServiceError",
    "SessionBusy",
    "SessionLimitReached",
    "SessionNotFound",
    "Unauthorized",
    "error_response",
    "install_error_handlers",
]


class ServiceError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class SessionNotFound(ServiceError):
    status_code = 404
    code = "session_not_found"


class SessionBusy(ServiceError):
    status_code = 409
    code = "session_busy"


class SessionLimitReached(ServiceError):
    status_code = 429
    code = "too_many_sessions"


class QuotaExceeded(ServiceError):
    """One API key holds its share of a resource; other keys are still served."""

    status_code = 429
    code = "quota_exceeded"


class InvalidLimits(ServiceError):
    status_code = 422
    code = "invalid_limits"


class RequestTooLarge(ServiceError):
    status_code = 413
    code = "request_too_large"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class PoolExhausted(ServiceError):
    status_code = 503
    code = "pool_exhausted"


class PoolClosed(ServiceError):
    status_code = 503
    code = "shutting_down"


class EngineUnavailable(ServiceError):
    status_code = 503
    code = "engine_unavailable"


class SandboxStartFailed(ServiceError):
    status_code = 503
    code = "sandbox_start_failed"


def error_response(status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorEnvelope(error=ErrorBody(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(exc.status_code, exc.code, exc.message, exc.headers())

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "invalid_request", _describe_validation(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
