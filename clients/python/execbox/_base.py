"""The I/O-free core of both clients: options, request building, response parsing, error
mapping and the retry decision, each written once.

``Client`` and ``AsyncClient`` describe every call as a :class:`Call` or :class:`StreamCall`
(built by :class:`~execbox._routes.Routes`), and only *send* it and *sleep* between attempts
themselves: the one part of a client that differs between sync and async.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from execbox._batch import ChunkLimits
from execbox._exceptions import (
    APIConnectionError,
    APITimeoutError,
    ExecboxError,
    RateLimitError,
    ServiceUnavailableError,
    make_status_error,
)
from execbox._models import lenient_json
from execbox._streams import StreamDecoder
from execbox._version import __version__

__all__ = [
    "DEFAULT_TIMEOUT",
    "Call",
    "ClientCore",
    "StreamCall",
    "parse_list",
    "parse_model",
    "parse_retry_after",
    "translate",
]

T = TypeVar("T")
E = TypeVar("E")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
MAX_BACKOFF_S = 30.0

# Either httpx client: both build requests without I/O.
HttpClient = httpx.Client | httpx.AsyncClient


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer: everything about a call but the sending."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    content: bytes | None = None
    timeout: httpx.Timeout | None = None


@dataclass(frozen=True)
class StreamCall(Generic[E]):
    """A POST whose NDJSON answer a fresh ``decoder()`` turns into items of type ``E``.

    The body is ``body`` as JSON, or ``content``: JSON bytes built already (a batch chunk,
    whose jobs were serialized one by one as they were read).
    """

    path: str
    body: dict[str, Any] | None
    timeout: httpx.Timeout
    decoder: Callable[[], StreamDecoder[E]]
    content: bytes | None = None


class ClientCore:
    """What a client is configured with, and everything it does that needs no I/O."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float | None, max_retries: int) -> None:
        url = base_url or os.environ.get("EXECBOX_URL") or DEFAULT_URL
        self.base_url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("EXECBOX_API_KEY")
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = max_retries
        # The size of one batch request: safe defaults, lowered to what this server's refusals
        # name, and remembered for the client's later batches.
        self.batch_limits = ChunkLimits()

    def http_timeout(self, read: float | None = None) -> httpx.Timeout:
        """Connect within 10 s at most; read within ``read`` (default: the client's timeout)."""
        return httpx.Timeout(self.timeout if read is None else read, connect=min(self.timeout, 10.0))

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"execbox-python/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    # ------------------------------------------------------------------ building

    def build(self, http: HttpClient, call: Call[Any]) -> httpx.Request:
        return http.build_request(
            call.method,
            self.base_url + call.path,
            json=call.json,
            content=call.content,
            headers=self.headers(),
            timeout=call.timeout or self.http_timeout(),
        )

    def build_stream(self, http: HttpClient, call: StreamCall[Any]) -> httpx.Request:
        headers = self.headers()
        if call.content is not None:
            headers["Content-Type"] = "application/json"
        return http.build_request(
            "POST",
            self.base_url + call.path,
            json=call.body if call.content is None else None,
            content=call.content,
            headers=headers,
            timeout=call.timeout,
        )

    # ------------------------------------------------------------------ answers and failures

    @staticmethod
    def check(response: httpx.Response) -> None:
        """Raise the mapped :class:`APIStatusError` unless ``response`` (already read) is a success."""
        if response.is_success:
            return
        code, message = _error_fields(response)
        raise make_status_error(
            response.status_code, code, message, retry_after=parse_retry_after(response.headers.get("retry-after"))
        )

    def backoff_or_raise(self, attempt: int, exc: Exception) -> float:
        """Seconds to wait before retrying a call whose attempt number ``attempt`` failed with ``exc``.

        Retried: connection failures before the request left, 429, and the 503s and 504s by
        which the server refuses a request before doing any of it (``pool_exhausted``,
        ``queue_timeout``, ``engine_unavailable``, ``pool_warming``, ...), honouring
        Retry-After. Never retried: anything that may have reached the server and run code
        (read timeouts, resets after sending, 500s).

        Raises:
            ExecboxError: the SDK's error for ``exc`` (httpx errors translated), when it is not retried.
        """
        error = translate(exc) if isinstance(exc, httpx.HTTPError) else exc
        sent = not (isinstance(exc, httpx.HTTPError) and _is_unsent(exc))
        delay = self._delay(attempt, error, sent=sent)
        if delay is not None:
            return delay
        if error is exc:
            raise exc
        raise error from exc

    def _delay(self, attempt: int, error: Exception, *, sent: bool) -> float | None:
        if attempt >= self.max_retries:
            return None
        if isinstance(error, ServiceUnavailableError | RateLimitError):
            hint = error.retry_after
            return min(MAX_BACKOFF_S, hint if hint is not None else _backoff(attempt))
        if isinstance(error, APIConnectionError) and not sent:
            return _backoff(attempt)
        return None


def translate(exc: httpx.HTTPError) -> ExecboxError:
    """An httpx error as the SDK's own, so that httpx exceptions never leave the SDK."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer from the execbox server in time: {exc!r}")
    return APIConnectionError(f"could not reach the execbox server: {exc!r}")


def parse_model(model: type[M]) -> Callable[[httpx.Response], M]:
    """A parser of a JSON body into ``model`` (deeply nested and lone-surrogate JSON included)."""

    def parse(response: httpx.Response) -> M:
        try:
            try:
                return model.model_validate_json(response.content)
            except ValidationError as exc:
                return model.model_validate(lenient_json(response.content, exc))
        except ValidationError as exc:
            raise ExecboxError(f"the server sent a response this SDK cannot read: {exc}") from exc

    return parse


@functools.cache
def parse_list(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    """A parser of a JSON array of ``model`` (built once per model: a TypeAdapter is not cheap)."""
    adapter = TypeAdapter(list[model])  # type: ignore[valid-type]

    def parse(response: httpx.Response) -> list[M]:
        try:
            items: list[M] = adapter.validate_json(response.content)
        except ValidationError as exc:
            raise ExecboxError(f"the server sent a response this SDK cannot read: {exc}") from exc
        return items

    return parse


def _is_unsent(exc: httpx.HTTPError) -> bool:
    """True when httpx failed before any byte of the request reached the server."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _backoff(attempt: int) -> float:
    base: float = min(MAX_BACKOFF_S, 0.5 * 2**attempt)
    return base * (0.5 + random.random() / 2)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number or an HTTP date); None without one."""
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
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        text = response.text[:300] if response.content else response.reason_phrase
        return "http_error", text or f"HTTP {response.status_code}"
