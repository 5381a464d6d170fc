"""execbox: the Python SDK of the execbox code-execution sandbox.

from execbox import Client

with Client() as client, client.session() as s:
    s.run("x = 21")
    print(s.run("x * 2").text)   # '42'
"""

from execbox._client import AsyncClient, AsyncSession, AsyncSessions, Client, Session, Sessions
from execbox._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    EngineUnavailableError,
    ExecboxError,
    ExecutionFailedError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PoolExhaustedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    SessionBusyError,
    SessionNotFoundError,
    StreamError,
)
from execbox._models import (
    DoneEvent,
    ErrorEvent,
    Execution,
    ExecutionError,
    ExecutionEvent,
    ExecutionStatus,
    Resources,
    Result,
    ResultEvent,
    SessionInfo,
    SessionLimits,
    StderrEvent,
    StdoutEvent,
    Truncation,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncSession",
    "AsyncSessions",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "DoneEvent",
    "EngineUnavailableError",
    "ErrorEvent",
    "ExecboxError",
    "Execution",
    "ExecutionError",
    "ExecutionEvent",
    "ExecutionFailedError",
    "ExecutionStatus",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PoolExhaustedError",
    "RateLimitError",
    "RequestTooLargeError",
    "Resources",
    "Result",
    "ResultEvent",
    "ServiceUnavailableError",
    "Session",
    "SessionBusyError",
    "SessionInfo",
    "SessionLimits",
    "SessionNotFoundError",
    "Sessions",
    "StderrEvent",
    "StdoutEvent",
    "StreamError",
    "Truncation",
    "__version__",
]
