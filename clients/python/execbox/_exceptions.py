"""The execbox exception tree. httpx exceptions never leave the SDK.

    ExecboxError
    ├── APIConnectionError            the server could not be reached
    │   └── APITimeoutError           no answer within the timeout
    ├── StreamError                   an execution stream ended without its `done` event
    ├── ExecutionFailedError          raised by Execution.raise_for_error(); carries the Execution
    └── APIStatusError                the server answered with an error envelope
        ├── BadRequestError           400
        ├── AuthenticationError       401
        ├── NotFoundError             404
        │   └── SessionNotFoundError      session_not_found
        ├── ConflictError             409
        │   └── SessionBusyError          session_busy
        ├── RequestTooLargeError      413
        ├── InvalidRequestError       422 (invalid_request, invalid_limits)
        ├── RateLimitError            429 (too_many_sessions)
        ├── InternalServerError       500 and other 5xx
        └── ServiceUnavailableError   503
            ├── PoolExhaustedError        pool_exhausted (retry_after)
            └── EngineUnavailableError    engine_unavailable

Error codes map to classes first, HTTP status second, through the two tables below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    """The server answered with an error status; ``code`` is its machine-readable reason."""

    def __init__(self, message: str, *, status_code: int, code: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.message = message
        self.status_code = status_code
        self.code = code
        self.retry_after = retry_after


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


_BY_CODE: dict[str, type[APIStatusError]] = {
    "session_not_found": SessionNotFoundError,
    "session_busy": SessionBusyError,
    "pool_exhausted": PoolExhaustedError,
    "engine_unavailable": EngineUnavailableError,
}

_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def make_status_error(status_code: int, code: str, message: str, *, retry_after: float | None = None) -> APIStatusError:
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    return cls(message, status_code=status_code, code=code, retry_after=retry_after)
