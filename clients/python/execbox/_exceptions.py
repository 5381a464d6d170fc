"""The execbox exception tree. httpx exceptions never leave the SDK.

    ExecboxError
    ├── APIConnectionError            the server could not be reached
    │   └── APITimeoutError           no answer within the timeout
    ├── StreamError                   an execution stream ended without its `done` event
    ├── ExecutionFailedError          raised by Execution.raise_for_error(); carries the Execution
    └── APIStatusError                the server answered with an error envelope
        ├── BadRequestError           bad_request, method_not_allowed, unsupported_media_type
        ├── AuthenticationError       unauthorized, forbidden
        ├── NotFoundError             not_found, file_not_found
        │   └── SessionNotFoundError      session_not_found
        ├── ConflictError             sandbox_unavailable
        │   └── SessionBusyError          session_busy
        ├── RequestTooLargeError      request_too_large, file_too_large
        ├── InvalidRequestError       invalid_request, invalid_limits, invalid_path
        ├── RateLimitError            too_many_sessions, quota_exceeded (retry_after)
        ├── InternalServerError       internal_error, and any other 5xx
        └── ServiceUnavailableError   pool_warming, sandbox_start_failed, shutting_down
            ├── PoolExhaustedError        pool_exhausted, queue_timeout (504; retry_after)
            └── EngineUnavailableError    engine_unavailable

One table, keyed by :class:`~execbox.ErrorCode`, gives every code its class and the HTTP
status it is sent with. An envelope's optional ``reason`` refines its code, and one more table
maps it: ``node_unavailable`` (the session's node is gone: its state is lost) and ``wrong_node``
are a :class:`SessionNotFoundError` whatever the code and status a proxy sent them with, so a
lost node never reads as an overload to retry. A failure therefore raises the same class whether it came as an
error response or as the error line that ends a stream (whose HTTP status was already 200).
Only ``http_error`` and codes this SDK does not know fall back to the HTTP status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from execbox._codes import ErrorCode, ErrorReason

if TYPE_CHECKING:
    from execbox._models import Execution

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "EngineUnavailableError",
    "ExecboxError",
    "ExecutionFailedError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PoolExhaustedError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "SessionBusyError",
    "SessionNotFoundError",
    "StreamError",
    "make_status_error",
    "node_lost",
    "status_error_for",
]


class ExecboxError(Exception):
    """Base of every error the SDK raises."""


class APIConnectionError(ExecboxError):
    """The request did not get an answer: connection refused, reset, DNS, protocol error."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within the timeout."""


class StreamError(ExecboxError):
    """An execution stream ended before its ``done`` event, or carried a malformed line."""


class ExecutionFailedError(ExecboxError):
    """The code did not run to completion (status other than ``ok``)."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        detail = execution.message or ""
        if execution.error is not None:
            detail = f"{execution.error.name}: {execution.error.value}"
        super().__init__(f"execution {execution.status.value}" + (f": {detail}" if detail else ""))


class APIStatusError(ExecboxError):
    """The server answered with an error; ``code`` is its machine-readable reason.

    ``code`` is an :class:`~execbox.ErrorCode` member (a ``str``) when this SDK knows it, the
    plain string otherwise. ``status_code`` is the HTTP status, or for an error that ended a
    stream, the status its code is sent with. ``reason`` refines ``code`` when the server sent
    one (``node_unavailable``, ``wrong_node``).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}" + (f" ({reason})" if reason else "") + f": {message}")
        self.message = message
        self.status_code = status_code
        self.code = code
        self.retry_after = retry_after
        self.reason = reason


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class SessionNotFoundError(NotFoundError):
    pass


class ConflictError(APIStatusError):
    pass


class SessionBusyError(ConflictError):
    pass


class RequestTooLargeError(APIStatusError):
    pass


class InvalidRequestError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


class ServiceUnavailableError(APIStatusError):
    pass


class PoolExhaustedError(ServiceUnavailableError):
    pass


class EngineUnavailableError(ServiceUnavailableError):
    pass


class _Mapping(NamedTuple):
    status: int
    cls: type[APIStatusError] | None  # None: chosen by the HTTP status


_BY_CODE: dict[ErrorCode, _Mapping] = {
    ErrorCode.BAD_REQUEST: _Mapping(400, BadRequestError),
    ErrorCode.INVALID_REQUEST: _Mapping(422, InvalidRequestError),
    ErrorCode.INVALID_LIMITS: _Mapping(422, InvalidRequestError),
    ErrorCode.INVALID_PATH: _Mapping(422, InvalidRequestError),
    ErrorCode.REQUEST_TOO_LARGE: _Mapping(413, RequestTooLargeError),
    ErrorCode.FILE_TOO_LARGE: _Mapping(413, RequestTooLargeError),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: _Mapping(415, BadRequestError),
    ErrorCode.METHOD_NOT_ALLOWED: _Mapping(405, BadRequestError),
    ErrorCode.UNAUTHORIZED: _Mapping(401, AuthenticationError),
    ErrorCode.FORBIDDEN: _Mapping(403, AuthenticationError),
    ErrorCode.NOT_FOUND: _Mapping(404, NotFoundError),
    ErrorCode.SESSION_NOT_FOUND: _Mapping(404, SessionNotFoundError),
    ErrorCode.FILE_NOT_FOUND: _Mapping(404, NotFoundError),
    ErrorCode.SESSION_BUSY: _Mapping(409, SessionBusyError),
    ErrorCode.SANDBOX_UNAVAILABLE: _Mapping(409, ConflictError),
    ErrorCode.TOO_MANY_SESSIONS: _Mapping(429, RateLimitError),
    ErrorCode.QUOTA_EXCEEDED: _Mapping(429, RateLimitError),
    ErrorCode.POOL_EXHAUSTED: _Mapping(503, PoolExhaustedError),
    ErrorCode.POOL_WARMING: _Mapping(503, ServiceUnavailableError),
    ErrorCode.QUEUE_TIMEOUT: _Mapping(504, PoolExhaustedError),
    ErrorCode.ENGINE_UNAVAILABLE: _Mapping(503, EngineUnavailableError),
    ErrorCode.SANDBOX_START_FAILED: _Mapping(503, ServiceUnavailableError),
    ErrorCode.SHUTTING_DOWN: _Mapping(503, ServiceUnavailableError),
    ErrorCode.INTERNAL_ERROR: _Mapping(500, InternalServerError),
    ErrorCode.HTTP_ERROR: _Mapping(500, None),
}

# For http_error and codes newer than this SDK.
_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}

# Reasons that name where a session lives: either way the session is gone for this client.
_BY_REASON: dict[str, type[APIStatusError]] = {
    ErrorReason.NODE_UNAVAILABLE: SessionNotFoundError,
    ErrorReason.WRONG_NODE: SessionNotFoundError,
}

_KNOWN = {code.value: code for code in ErrorCode}
_REASONS = {reason.value: reason for reason in ErrorReason}


def status_error_for(
    code: str,
    message: str,
    *,
    status_code: int | None = None,
    retry_after: float | None = None,
    reason: str | None = None,
) -> APIStatusError:
    """The exception for an error envelope ``{"code", "message", "reason"?}``.

    ``status_code`` is the HTTP status of an error response; None for the error line that
    ends a stream, which takes the status its code is sent with (500 for an unknown code).
    """
    known = _KNOWN.get(code)
    mapping = _BY_CODE.get(known) if known is not None else None
    status = status_code if status_code is not None else mapping.status if mapping is not None else 500
    cls = _BY_REASON.get(reason or "") or (mapping.cls if mapping is not None else None)
    if cls is None:
        cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    named = _REASONS.get(reason, reason) if reason is not None else None
    return cls(message, status_code=status, code=known or code, retry_after=retry_after, reason=named)


def make_status_error(
    status_code: int, code: str, message: str, *, retry_after: float | None = None, reason: str | None = None
) -> APIStatusError:
    """The exception for an HTTP error response (see :func:`status_error_for`)."""
    return status_error_for(code, message, status_code=status_code, retry_after=retry_after, reason=reason)


def node_lost(session_id: str, node: str, detail: str) -> SessionNotFoundError:
    """A session whose node does not answer: its kernel state is lost, and no new session replaces it."""
    message = (
        f"session {session_id} lives on {node}, which does not answer ({detail}): its state is lost; "
        "create a new session"
    )
    return SessionNotFoundError(
        message, status_code=404, code=ErrorCode.SESSION_NOT_FOUND, reason=ErrorReason.NODE_UNAVAILABLE
    )
