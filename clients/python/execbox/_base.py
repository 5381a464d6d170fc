"""What the sync and async clients share, with no I/O: configuration, request building,
response parsing, error mapping, stream decoding and the retry policy.

Only sending and sleeping are written twice (in ``_client.py``).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from execbox._exceptions import (
    APIConnectionError,
    APITimeoutError,
    ExecboxError,
    PoolExhaustedError,
    RateLimitError,
    StreamError,
    make_status_error,
)
from execbox._models import (
    BatchJob,
    BatchRequest,
    BatchResult,
    BatchSummary,
    DoneEvent,
    ErrorEvent,
    ExecuteRequest,
    Execution,
    ExecutionError,
    ExecutionEvent,
    ExecutionStatus,
    JobStatus,
    OneShotRequest,
    Resources,
    Result,
    ResultEvent,
    SessionCreate,
    StderrEvent,
    StdoutEvent,
    lenient_json,
    parse_event,
)

__all__ = ["DEFAULT_TIMEOUT", "Callbacks", "ClientConfig", "LineSplitter", "MapCollector", "is_unsent"]

M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 2
# Beyond an execution's own deadline, the server may need a few seconds for the timeout
# ladder (interrupt grace, kill, replacement) before it answers.
EXECUTION_MARGIN_S = 15.0
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class Callbacks:
    """Optional per-event callbacks of a streamed run."""

    on_stdout: Any = None
    on_stderr: Any = None
    on_result: Any = None
    on_error: Any = None

    @property
    def any(self) -> bool:
        return any((self.on_stdout, self.on_stderr, self.on_result, self.on_error))

    def dispatch(self, event: ExecutionEvent) -> None:
        if isinstance(event, StdoutEvent) and self.on_stdout:
            self.on_stdout(event.text)
        elif isinstance(event, StderrEvent) and self.on_stderr:
            self.on_stderr(event.text)
        elif isinstance(event, ResultEvent) and self.on_result:
            self.on_result(event.result)
        elif isinstance(event, ErrorEvent) and self.on_error:
            self.on_error(event.error)


class ClientConfig:
    """Configuration and the I/O-free half of a client."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float | None,
        max_retries: int,
    ) -> None:
        url = base_url or os.environ.get("EXECBOX_URL") or DEFAULT_URL
        self.base_url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("EXECBOX_API_KEY")
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = max_retries

    # ------------------------------------------------------------------ building

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "execbox-python/0.1.0", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def http_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))

    def execution_timeout(self, timeout_s: float | None) -> httpx.Timeout:
        """The HTTP timeout of an execute call: the execution's deadline plus the ladder."""
        read = max(self.timeout, (timeout_s or self.timeout) + EXECUTION_MARGIN_S)
        return httpx.Timeout(read, connect=min(self.timeout, 10.0))

    @staticmethod
    def session_body(memory_mb: int | None, cpus: float | None, timeout_s: float | None) -> dict[str, Any]:
        return SessionCreate(memory_mb=memory_mb, cpus=cpus, timeout_s=timeout_s).model_dump(exclude_none=True)

    @staticmethod
    def execute_body(code: str, timeout_s: float | None) -> dict[str, Any]:
        return ExecuteRequest(code=code, timeout_s=timeout_s).model_dump(exclude_none=True)

    @staticmethod
    def one_shot_body(code: str, timeout_s: float | None, memory_mb: int | None, cpus: float | None) -> dict[str, Any]:
        body = OneShotRequest(code=code, timeout_s=timeout_s, memory_mb=memory_mb, cpus=cpus)
        return body.model_dump(exclude_none=True)

    @staticmethod
    def batch_body(jobs: Sequence[BatchJob | dict[str, Any] | str], concurrency: int | None) -> dict[str, Any]:
        parsed = [
            job if isinstance(job, BatchJob) else BatchJob(code=job) if isinstance(job, str) else BatchJob(**job)
            for job in jobs
        ]
        return BatchRequest(jobs=parsed, concurrency=concurrency).model_dump(exclude_none=True)

    def batch_timeout(self, body: dict[str, Any]) -> httpx.Timeout:
        """Between two results of a stream: the longest job's timeout plus the worker's margin."""
        longest = max((job.get("timeout_s") or 10.0) for job in body["jobs"])
        return httpx.Timeout(max(self.timeout, longest + 30.0), connect=min(self.timeout, 10.0))

    @staticmethod
    def decode_batch_line(line: str) -> BatchResult | BatchSummary | None:
        """One NDJSON line of a batch stream.

        Raises:
            APIStatusError: the server ended the stream with an error envelope.
            StreamError: the line is not valid.
        """
        line = line.strip()
        if not line:
            return None
        _raise_error_line(line, "batch")
        try:
            data = json.loads(line)
            if isinstance(data, dict) and data.get("type") == "summary":
                return BatchSummary.model_validate(data)
            return BatchResult.model_validate(data)
        except (ValueError, RecursionError, ValidationError) as exc:
            raise StreamError(f"malformed line in the batch stream: {line[:200]!r}") from exc

    @staticmethod
    def missing_summary() -> StreamError:
        return StreamError("the batch stream ended without its summary (connection cut or server stopped)")

    @staticmethod
    def execution_from_batch(result: BatchResult) -> Execution:
        """A batch job's outcome as an Execution (what ``map`` returns)."""
        status = _JOB_TO_EXECUTION[result.status]
        results = [Result(data={"text/plain": result.value}, is_main_result=True)] if result.value is not None else []
        return Execution(
            status=status,
            stdout=result.stdout,
            stderr=result.stderr,
            error=result.error,
            results=results,
            duration_ms=result.wall_ms,
            truncated=result.truncated,
            resources=Resources(
                wall_ms=result.wall_ms, cpu_ms=result.cpu_ms, peak_memory_bytes=result.peak_memory_bytes
            ),
            message=result.message,
        )

    # ------------------------------------------------------------------ parsing

    @staticmethod
    def check(response: httpx.Response) -> None:
        """Raise the mapped :class:`APIStatusError` unless the response is a success."""
        if response.is_success:
            return
        code, message = _error_fields(response)
        raise make_status_error(
            response.status_code, code, message, retry_after=_retry_after(response.headers.get("retry-after"))
        )

    @staticmethod
    def parse(response: httpx.Response, model: type[M]) -> M:
        try:
            try:
                return model.model_validate_json(response.content)
            except ValidationError as exc:
                return model.model_validate(lenient_json(response.content, exc))
        except ValidationError as exc:
            raise ExecboxError(f"the server sent a response this SDK cannot read: {exc}") from exc

    @staticmethod
    def decode_line(line: str) -> ExecutionEvent | None:
        """One NDJSON line of an execution stream -> event (None for a blank line).

        Raises:
            APIStatusError: the server ended the stream with an error envelope.
            StreamError: the line is not valid.
        """
        line = line.strip()
        if not line:
            return None
        _raise_error_line(line, "execution")
        try:
            return parse_event(line)
        except ValidationError as exc:
            raise StreamError(f"malformed event in the execution stream: {line[:200]!r}") from exc

    @staticmethod
    def missing_done() -> StreamError:
        return StreamError("the execution stream ended without a 'done' event (connection cut or server stopped)")

    # ------------------------------------------------------------------ errors and retries

    @staticmethod
    def translate(exc: httpx.HTTPError) -> ExecboxError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"no answer from the execbox server in time: {exc!r}")
        return APIConnectionError(f"could not reach the execbox server: {exc!r}")

    def retry_delay(self, attempt: int, error: ExecboxError, *, sent: bool) -> float | None:
        """Seconds to wait before retrying after ``error``, or None when it must not be retried.

        Retried: connection failures before the request left (``sent`` False), 503
        ``pool_exhausted`` and 429, honouring Retry-After. Never retried: anything that may
        have reached the server and run code (read timeouts, resets after sending, 5xx).
        """
        if attempt >= self.max_retries:
            return None
        if isinstance(error, PoolExhaustedError | RateLimitError):
            hint = error.retry_after
            return min(MAX_BACKOFF_S, hint if hint is not None else _backoff(attempt))
        if isinstance(error, APIConnectionError) and not sent:
            return _backoff(attempt)
        return None

    @staticmethod
    def failure_execution(error: ExecboxError) -> Execution:
        """An Execution standing for a service failure, for batch helpers that keep errors as data."""
        return Execution(
            status=ExecutionStatus.ERROR,
            error=ExecutionError(name=type(error).__name__, value=str(error)),
            message=f"the execbox service could not run this code: {error}",
        )

    @staticmethod
    def done_execution(event: ExecutionEvent) -> Execution | None:
        return event.execution if isinstance(event, DoneEvent) else None


_JOB_TO_EXECUTION = {
    JobStatus.OK: ExecutionStatus.OK,
    JobStatus.ERROR: ExecutionStatus.ERROR,
    JobStatus.TIMEOUT: ExecutionStatus.TIMEOUT,
    JobStatus.OUT_OF_MEMORY: ExecutionStatus.OUT_OF_MEMORY,
    JobStatus.OUTPUT_LIMIT: ExecutionStatus.OUTPUT_LIMIT,
    JobStatus.CRASHED: ExecutionStatus.KERNEL_DIED,
}


def _raise_error_line(line: str, stream: str) -> None:
    """Raise the mapped APIStatusError when ``line`` is the error envelope that ends a stream."""
    if not line.startswith('{"error"'):
        return
    try:
        error = json.loads(line)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StreamError(f"malformed error line in the {stream} stream: {line[:200]!r}") from exc
    raise make_status_error(503, code, message)


class LineSplitter:
    """The lines of an NDJSON body, fed in chunks of bytes as they arrive.

    Lines end at ``\\n`` only. httpx's ``iter_lines`` follows ``str.splitlines`` and also cuts at
    U+0085, U+2028 and U+2029, which JSON leaves unescaped inside strings: one of those in a
    sandbox's output would split an event in two.
    """

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        self._partial += chunk
        if b"\n" not in chunk:
            return []
        *lines, rest = self._partial.split(b"\n")
        self._partial = bytearray(rest)
        return [line.decode("utf-8", "replace") for line in lines]

    def flush(self) -> list[str]:
        """The last line, when the body did not end with a newline."""
        rest, self._partial = bytes(self._partial), bytearray()
        return [rest.decode("utf-8", "replace")] if rest else []


class MapCollector:
    """The I/O-free part of ``map``: the jobs, results put back in input order, a progress bar."""

    def __init__(self, codes: Sequence[str], *, timeout_s: float | None, memory_mb: int | None, progress: bool) -> None:
        self.jobs = [{"code": code, "timeout_s": timeout_s, "memory_mb": memory_mb} for code in codes]
        self._out: list[Execution | None] = [None] * len(codes)
        self._bar = _progress(len(codes)) if progress else None

    def add(self, result: BatchResult) -> None:
        self._out[result.index] = ClientConfig.execution_from_batch(result)
        if self._bar is not None:
            self._bar.update(1)

    def fail(self, error: ExecboxError) -> None:
        """Every input without a result yet gets ``error`` as data."""
        failure = ClientConfig.failure_execution(error)
        self._out = [item if item is not None else failure for item in self._out]

    def finish(self) -> list[Execution]:
        if self._bar is not None:
            self._bar.close()
        self.fail(ClientConfig.missing_summary())
        return [item for item in self._out if item is not None]


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("progress=True needs tqdm: pip install 'execbox[progress]'") from exc
    return tqdm(total=total, unit="exec")


def is_unsent(exc: httpx.HTTPError) -> bool:
    """True when httpx failed before any byte of the request reached the server."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _backoff(attempt: int) -> float:
    base: float = min(MAX_BACKOFF_S, 0.5 * 2**attempt)
    return base * (0.5 + random.random() / 2)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, float(parsedate_to_datetime(value).timestamp()) - time())
    except (TypeError, ValueError):
        return None


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        error = body["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        text = response.text[:300] if response.content else response.reason_phrase
        return "http_error", text or f"HTTP {response.status_code}"
