"""The I/O-free core of both clients: options, request building, response parsing, error
mapping and the retry decision, each written once.

``Client`` and ``AsyncClient`` describe every call as a :class:`Call` or :class:`StreamCall`
(built by :class:`~execbox._routes.Routes`), and only *send* it and *sleep* between attempts
themselves: the one part of a client that differs between sync and async. With several URLs,
each attempt goes to a node chosen by :class:`~execbox._nodes.NodeSet`, and :meth:`ClientCore.retry`
decides, also without I/O, whether a failure moves the call to another node.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Sequence
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
    SessionNotFoundError,
    make_status_error,
    node_lost,
)
from execbox._models import Info, lenient_json
from execbox._nodes import Node, NodeSet, Target, node_of, parse_urls
from execbox._streams import StreamDecoder
from execbox._version import __version__

__all__ = [
    "DEFAULT_TIMEOUT",
    "NODE_HEADER",
    "PROBE_TIMEOUT_S",
    "Call",
    "ClientCore",
    "Retry",
    "StreamCall",
    "parse_list",
    "parse_model",
    "parse_retry_after",
    "translate",
]

T = TypeVar("T")
E = TypeVar("E")
M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT = 60.0
MAX_BACKOFF_S = 30.0
# A probe of a node's health and load is quick or the node counts as not answering.
PROBE_TIMEOUT_S = 3.0
NODE_HEADER = "x-execbox-node"

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


@dataclass(frozen=True)
class Retry:
    """Try a failed call again: after ``delay`` seconds, counted as one of ``max_retries`` or not
    (moving to another node at once is not a retry of the same request)."""

    delay: float
    counted: bool


class ClientCore:
    """What a client is configured with, and everything it does that needs no I/O."""

    def __init__(
        self, base_url: str | Sequence[str] | None, api_key: str | None, timeout: float | None, max_retries: int
    ) -> None:
        urls = parse_urls(base_url)
        self.nodes = NodeSet(urls)
        self.base_url = urls[0]
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

    def build(self, http: HttpClient, call: Call[Any], base_url: str) -> httpx.Request:
        return http.build_request(
            call.method,
            base_url + call.path,
            json=call.json,
            content=call.content,
            headers=self.headers(),
            timeout=call.timeout or self.http_timeout(),
        )

    def build_stream(self, http: HttpClient, call: StreamCall[Any], base_url: str) -> httpx.Request:
        headers = self.headers()
        if call.content is not None:
            headers["Content-Type"] = "application/json"
        return http.build_request(
            "POST",
            base_url + call.path,
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
        code, message, reason = _error_fields(response)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise make_status_error(response.status_code, code, message, retry_after=retry_after, reason=reason)

    # ------------------------------------------------------------------ several nodes

    def answered(self, node: Node, response: httpx.Response) -> None:
        """``node`` answered (so it is up): learn its name from the header every named instance
        sends, then check the answer."""
        self.nodes.reachable(node)
        self.nodes.named_by(node, response.headers.get(NODE_HEADER))
        self.check(response)

    def placed_on(self, response: httpx.Response, session_id: str) -> Node:
        """The node that created session ``session_id`` (its answer's URL), named by the id if it says."""
        node = self.nodes.serving(str(response.request.url))
        self.nodes.named_by(node, node_of(session_id))
        return node

    def targets_for(self, session_id: str) -> list[Target]:
        """Where to ask for session ``session_id`` given by id alone: the node its id names, or
        (an id without a node, from unnamed instances) each node in turn.

        Raises:
            SessionNotFoundError: the id names a node none of this client's URLs serves (call
                after probing the unnamed nodes, whose names a probe learns).
        """
        name = node_of(session_id)
        if self.nodes.single or name is None:
            return [Target(node, session_id) for node in self.nodes.nodes]
        node = self.nodes.named(name)
        if node is None:
            raise node_lost(session_id, f'node "{name}"', "none of this client's URLs serves it")
        return [Target(node, session_id)]

    def retry(self, node: Node, target: Target, attempt: int, exc: Exception, avoid: list[Node]) -> Retry:
        """Whether and when to try again a call to ``node`` that failed with ``exc``.

        One node: :meth:`backoff_or_raise`, as a single-URL client always did. Several: new work
        refused by a node (connection refused, 503, 429) moves at once to another untried node;
        a call for a given node whose connection is refused fails at once (the node is gone:
        its batch chunk moves elsewhere, its session is lost).

        Raises:
            ExecboxError: the SDK's error for ``exc``, when it is not retried.
        """
        if self.nodes.single:
            return Retry(self.backoff_or_raise(attempt, exc), counted=True)
        refused = isinstance(exc, httpx.ConnectError)
        if refused:
            self.nodes.unreachable(node)
        if target.node is None:
            error = translate(exc) if isinstance(exc, httpx.HTTPError) else exc
            turned_away = isinstance(exc, httpx.HTTPError) and _is_unsent(exc)
            if isinstance(error, ServiceUnavailableError | RateLimitError):
                self.nodes.refusing(node, error.retry_after)
                turned_away = True
            if turned_away:
                avoid.append(node)
                if self.nodes.has_other(avoid):
                    return Retry(0.0, counted=False)
        elif isinstance(exc, httpx.ConnectError):
            raise translate(exc) from exc
        return Retry(self.backoff_or_raise(attempt, exc), counted=True)

    def lost(self, target: Target, node: Node, error: ExecboxError) -> SessionNotFoundError | None:
        """The error for a session whose node failed with ``error`` and is known down; else None."""
        if target.session_id is None or self.nodes.single or not node.down:
            return None
        return node_lost(target.session_id, str(node), str(error))

    def may_be_lost(self, target: Target, error: ExecboxError) -> bool:
        """Whether ``error`` on a session call may mean its node is gone (a probe will tell):
        a connection failure, not a timeout (a slow node still holds the session)."""
        return (
            target.session_id is not None
            and not self.nodes.single
            and isinstance(error, APIConnectionError)
            and not isinstance(error, APITimeoutError)
        )

    def probed(self, node: Node, response: httpx.Response | httpx.HTTPError) -> bool:
        """Record a probe of ``node`` (its ``GET /v1/info`` answer, or the transport error); True
        when the node answered at all (its sessions are not lost)."""
        if isinstance(response, httpx.HTTPError):
            if isinstance(response, httpx.ConnectError):
                self.nodes.unreachable(node)
                return False
            self.nodes.refusing(node, None)
            self.nodes.probed(node, node.info)  # answered nothing in time: alive as far as we know
            return True
        self.nodes.named_by(node, response.headers.get(NODE_HEADER))
        if response.status_code == 404:
            self.nodes.probed(node, None)  # a server without /v1/info: healthy, load unknown
            return True
        try:
            self.check(response)
            info = parse_model(Info)(response)
        except ExecboxError:
            self.nodes.probed(node, node.info)
            self.nodes.refusing(node, None)
            return True
        self.nodes.probed(node, info)
        return True

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


def _error_fields(response: httpx.Response) -> tuple[str, str, str | None]:
    try:
        error = response.json()["error"]
        reason = error.get("reason")
        return str(error["code"]), str(error["message"]), None if reason is None else str(reason)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text[:300] if response.content else response.reason_phrase
        return "http_error", text or f"HTTP {response.status_code}", None
