"""execbox: the Python SDK of the execbox code-execution sandbox.

from execbox import Client

with Client() as client, client.session() as s:
    s.run("x = 21")
    print(s.run("x * 2").text)   # '42'
"""

import typing as _typing

from execbox._async_client import AsyncClient, AsyncSession, AsyncSessions
from execbox._client import Client, Session, Sessions
from execbox._codes import ErrorCode, ErrorReason
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
    BatchJob,
    BatchSummary,
    DoneEvent,
    ErrorEvent,
    Execution,
    ExecutionError,
    ExecutionEvent,
    ExecutionStatus,
    FileInfo,
    Info,
    InfoCapacity,
    InfoImage,
    InfoKernelStart,
    InfoLoad,
    JobResult,
    JobStatus,
    Language,
    Resources,
    Result,
    ResultEvent,
    SessionInfo,
    SessionLimits,
    StageResult,
    StderrEvent,
    StdoutEvent,
    TestCase,
    TestOutcome,
    TestSpec,
    Truncation,
)
from execbox._values import Opaque, decode_value, encode_value
from execbox._version import __version__
from execbox.feedback import render_feedback

if _typing.TYPE_CHECKING:
    from execbox._models import JobResult as BatchResult  # noqa: F401  (deprecated; see __getattr__)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncSession",
    "AsyncSessions",
    "AuthenticationError",
    "BadRequestError",
    "BatchJob",
    "BatchSummary",
    "Client",
    "ConflictError",
    "DoneEvent",
    "EngineUnavailableError",
    "ErrorCode",
    "ErrorEvent",
    "ErrorReason",
    "ExecboxError",
    "Execution",
    "ExecutionError",
    "ExecutionEvent",
    "ExecutionFailedError",
    "ExecutionStatus",
    "FileInfo",
    "Info",
    "InfoCapacity",
    "InfoImage",
    "InfoKernelStart",
    "InfoLoad",
    "InternalServerError",
    "InvalidRequestError",
    "JobResult",
    "JobStatus",
    "Language",
    "NotFoundError",
    "Opaque",
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
    "StageResult",
    "StderrEvent",
    "StdoutEvent",
    "StreamError",
    "TestCase",
    "TestOutcome",
    "TestSpec",
    "Truncation",
    "__version__",
    "decode_value",
    "encode_value",
    "render_feedback",
]

# Old names that still work, with a DeprecationWarning; not in __all__.
_DEPRECATED = {"BatchResult": ("JobResult", JobResult)}


def __getattr__(name: str) -> _typing.Any:
    if name in _DEPRECATED:
        import warnings

        new, value = _DEPRECATED[name]
        warnings.warn(f"execbox.{name} is deprecated; use execbox.{new}", DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module 'execbox' has no attribute {name!r}")
