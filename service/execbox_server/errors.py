"""Service errors and the one JSON envelope they travel in.

    ServiceError                      {"error": {"code", "message", "reason"?}}
    ├── SessionNotFound               404 session_not_found (reason wrong_node: the id names another node)
    ├── SessionBusy                   409 session_busy
    ├── SessionLimitReached           429 too_many_sessions
    ├── QuotaExceeded                 429 quota_exceeded (Retry-After): one API key's share is used up
    ├── InvalidLimits                 422 invalid_limits
    ├── InvalidRequest                422 invalid_request: valid JSON the service cannot run as asked
    ├── RequestTooLarge               413 request_too_large
    ├── Unauthorized                  401 unauthorized
    ├── InvalidPath                   422 invalid_path: a file path the sandbox refuses
    ├── FileNotFound                  404 file_not_found
    ├── FileTooLarge                  413 file_too_large
    ├── SandboxUnavailable            409 sandbox_unavailable: the session's sandbox is being replaced
    ├── PoolExhausted                 503 pool_exhausted (Retry-After)
    ├── QueueTimeout                  504 queue_timeout (Retry-After): no worker within the request's own budget
    ├── PoolWarming                   503 pool_warming: /readyz before the pool is warm
    ├── PoolClosed                    503 shutting_down
    ├── EngineUnavailable             503 engine_unavailable (Retry-After)
    └── SandboxStartFailed            503 sandbox_start_failed

Every code is an :class:`~execbox._codes.ErrorCode`, the enum the SDK maps to its exceptions,
so a code cannot exist on one side only. Raised anywhere below the API layer; one exception
handler turns each into its response.
"""

from __future__ import annotations

from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from execbox._codes import ErrorCode, ErrorReason
from execbox._models import ErrorBody, ErrorEnvelope

__all__ = [
    "EngineUnavailable",
    "FileNotFound",
    "FileTooLarge",
    "InvalidLimits",
    "InvalidPath",
    "InvalidRequest",
    "PoolClosed",
    "PoolExhausted",
    "PoolWarming",
    "QueueTimeout",
    "QuotaExceeded",
    "RequestTooLarge",
    "SandboxStartFailed",
    "SandboxUnavailable",
    "ServiceError",
    "SessionBusy",
    "SessionLimitReached",
    "SessionNotFound",
    "Unauthorized",
    "error_response",
    "file_error",
    "install_error_handlers",
    "status_of",
]


class ServiceError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, retry_after: float | None = None, reason: ErrorReason | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.reason = reason

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}

    def response(self) -> JSONResponse:
        """This error as the service answers it: its status, the envelope, Retry-After if any."""
        return error_response(self.status_code, self.code, self.message, self.headers(), reason=self.reason)


class SessionNotFound(ServiceError):
    status_code = 404
    code = ErrorCode.SESSION_NOT_FOUND


class SessionBusy(ServiceError):
    status_code = 409
    code = ErrorCode.SESSION_BUSY


class SessionLimitReached(ServiceError):
    status_code = 429
    code = ErrorCode.TOO_MANY_SESSIONS


class QuotaExceeded(ServiceError):
    """One API key holds its share of a resource; other keys are still served."""

    status_code = 429
    code = ErrorCode.QUOTA_EXCEEDED


class InvalidLimits(ServiceError):
    status_code = 422
    code = ErrorCode.INVALID_LIMITS


class InvalidRequest(ServiceError):
    """A request the models accept but the service cannot run as asked (checked before anything runs)."""

    status_code = 422
    code = ErrorCode.INVALID_REQUEST


class RequestTooLarge(ServiceError):
    status_code = 413
    code = ErrorCode.REQUEST_TOO_LARGE


class Unauthorized(ServiceError):
    status_code = 401
    code = ErrorCode.UNAUTHORIZED


class InvalidPath(ServiceError):
    status_code = 422
    code = ErrorCode.INVALID_PATH


class FileNotFound(ServiceError):
    status_code = 404
    code = ErrorCode.FILE_NOT_FOUND


class FileTooLarge(ServiceError):
    status_code = 413
    code = ErrorCode.FILE_TOO_LARGE


class SandboxUnavailable(ServiceError):
    status_code = 409
    code = ErrorCode.SANDBOX_UNAVAILABLE


class PoolExhausted(ServiceError):
    status_code = 503
    code = ErrorCode.POOL_EXHAUSTED


class QueueTimeout(ServiceError):
    """No worker could be had within the request's own time budget (the SandboxFusion routes).

    A 504, not a 503: the RL stacks that call these routes retry a 504 (verl retries nothing else),
    and a fast 504 they retry beats a request that waits until their own HTTP timeout.
    """

    status_code = 504
    code = ErrorCode.QUEUE_TIMEOUT


class PoolWarming(ServiceError):
    """Not ready yet: fewer warm kernels than ``min_ready`` (only /readyz says this)."""

    status_code = 503
    code = ErrorCode.POOL_WARMING


class PoolClosed(ServiceError):
    status_code = 503
    code = ErrorCode.SHUTTING_DOWN


class EngineUnavailable(ServiceError):
    status_code = 503
    code = ErrorCode.ENGINE_UNAVAILABLE


class SandboxStartFailed(ServiceError):
    status_code = 503
    code = ErrorCode.SANDBOX_START_FAILED


# The errors a sandbox's file helper may answer with; any other code it sends is read as a
# refused path (the helper runs inside the sandbox, so its answer is not trusted to be ours).
_FILE_ERRORS: dict[str, type[ServiceError]] = {
    ErrorCode.INVALID_PATH: InvalidPath,
    ErrorCode.FILE_NOT_FOUND: FileNotFound,
    ErrorCode.FILE_TOO_LARGE: FileTooLarge,
    ErrorCode.SANDBOX_UNAVAILABLE: SandboxUnavailable,
}


def file_error(code: ErrorCode, message: str) -> ServiceError:
    """The service error for a file request the sandbox refused with ``code``."""
    return _FILE_ERRORS.get(code, InvalidPath)(message)


def error_response(
    status_code: int,
    code: ErrorCode,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    reason: ErrorReason | None = None,
) -> JSONResponse:
    body = ErrorEnvelope(error=ErrorBody(code=code, message=message, reason=reason))
    # ``reason`` only when there is one: the envelope of every other error is unchanged.
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code, headers=headers)


# Errors raised by the framework itself (no route, wrong method, unreadable body).
_HTTP_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.REQUEST_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}


def status_of(code: ErrorCode) -> int:
    """The HTTP status the service answers ``code`` with (for the OpenAPI document).

    Raises:
        KeyError: ``code`` has no status of its own (``http_error``).
    """
    statuses = {c: s for s, c in _HTTP_CODES.items()}
    statuses[ErrorCode.INVALID_REQUEST] = 422
    statuses[ErrorCode.INTERNAL_ERROR] = 500
    pending = list(ServiceError.__subclasses__())
    while pending:
        cls = pending.pop()
        statuses[cls.code] = cls.status_code
        pending += cls.__subclasses__()
    return statuses[code]


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return exc.response()

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, ErrorCode.INVALID_REQUEST, _describe_validation(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.HTTP_ERROR)
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Still the envelope, so a client reads every failure the same way; the exception
        # itself goes on to the server's log (Starlette re-raises it after this answer).
        return error_response(500, ErrorCode.INTERNAL_ERROR, "the request failed inside the service")

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(Exception, on_unexpected_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
