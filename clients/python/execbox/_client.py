"""``Client`` and ``AsyncClient``: twins with the same names, sharing ``ClientConfig``.

Only sending, streaming and sleeping differ between the two; everything else lives in
:mod:`execbox._base`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from execbox._base import Callbacks, ClientConfig, LineSplitter, MapCollector, is_unsent
from execbox._exceptions import APIStatusError, ExecboxError
from execbox._models import (
    BatchJob,
    BatchResult,
    BatchSummary,
    Execution,
    ExecutionEvent,
    FileInfo,
    Result,
    SessionInfo,
)

__all__ = ["AsyncClient", "AsyncSession", "AsyncSessions", "Client", "Session", "Sessions"]

OnText = Callable[[str], object]
OnResult = Callable[[Result], object]


# ====================================================================== sync


class Client:
    """A synchronous execbox client.

    Args:
        base_url: the service URL; default ``$EXECBOX_URL`` or ``http://127.0.0.1:8000``.
        api_key: bearer key; default ``$EXECBOX_API_KEY``.
        timeout: seconds for ordinary calls; execute calls wait for the execution's own
            timeout plus a margin for the server's timeout ladder.
        max_retries: retries of safe failures (connection refused, 503 pool_exhausted, 429).
        http_client: an ``httpx.Client`` to use instead of a new one (e.g. with a MockTransport).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._cfg = ClientConfig(base_url, api_key, timeout, max_retries)
        self._http = http_client or httpx.Client(timeout=self._cfg.http_timeout())
        self._closed = False
        self.sessions = Sessions(self)

    @property
    def base_url(self) -> str:
        return self._cfg.base_url

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._closed = True
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ one-shot

    def run(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        cpus: float | None = None,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        on_result: OnResult | None = None,
    ) -> Execution:
        """Run ``code`` once in a fresh sandbox and return its Execution.

        With callbacks, output is delivered as it happens (the call streams underneath).

        Raises:
            APIStatusError subclasses (e.g. PoolExhaustedError after retries), APIConnectionError,
            StreamError when a streamed run is cut short.
        """
        body = self._cfg.one_shot_body(code, timeout_s, memory_mb, cpus)
        callbacks = Callbacks(on_stdout, on_stderr, on_result)
        if callbacks.any:
            return _collect(self._stream("/v1/execute/stream", body, timeout_s), callbacks)
        response = self._request("POST", "/v1/execute", json=body, timeout=self._cfg.execution_timeout(timeout_s))
        return self._cfg.parse(response, Execution)

    def run_stream(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        cpus: float | None = None,
    ) -> Iterator[ExecutionEvent]:
        """Run ``code`` once in a fresh sandbox, yielding events as they arrive; the last is ``done``.

        Raises:
            StreamError: the stream ended without ``done``.
        """
        return self._stream("/v1/execute/stream", self._cfg.one_shot_body(code, timeout_s, memory_mb, cpus), timeout_s)

    def map(
        self,
        codes: Sequence[str],
        *,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        progress: bool = False,
    ) -> list[Execution]:
        """Run many programs, each isolated in its own fresh process; one Execution per input, in order.

        Runs on the batch path (warm fork-server workers): plain Python, no IPython magics
        or rich display; the value of a trailing expression becomes ``Execution.text``.
        ``concurrency`` caps how many run at once (the server's worker count caps it too).
        A failure of the service after retries comes back as data: every unfinished input
        gets an Execution with status ``error`` whose ``error.name`` is the SDK exception's
        class name.
        """
        collector = MapCollector(codes, timeout_s=timeout_s, memory_mb=memory_mb, progress=progress)
        try:
            for result in self.batch_stream(collector.jobs, concurrency=concurrency):
                collector.add(result)
        except ExecboxError as exc:
            collector.fail(exc)
        return collector.finish()

    def batch(
        self, jobs: Sequence[BatchJob | dict[str, Any] | str], *, concurrency: int | None = None
    ) -> list[BatchResult]:
        """Run a batch of programs (code strings, dicts or :class:`BatchJob`); results in input order.

        Raises:
            PoolExhaustedError (no worker free after retries), RequestTooLargeError, StreamError,
            APIConnectionError.
        """
        results = list(self.batch_stream(jobs, concurrency=concurrency))
        return sorted(results, key=lambda r: r.index)

    def batch_stream(
        self, jobs: Sequence[BatchJob | dict[str, Any] | str], *, concurrency: int | None = None
    ) -> Iterator[BatchResult]:
        """Run a batch, yielding each :class:`BatchResult` as it completes (completion order)."""
        body = self._cfg.batch_body(jobs, concurrency)
        for item in self._lines("/v1/batch/stream", body, self._cfg.batch_timeout(body)):
            parsed = self._cfg.decode_batch_line(item)
            if isinstance(parsed, BatchResult):
                yield parsed
            elif isinstance(parsed, BatchSummary):
                return
        raise self._cfg.missing_summary()

    # ------------------------------------------------------------------ sessions

    def session(
        self, *, timeout_s: float | None = None, memory_mb: int | None = None, cpus: float | None = None
    ) -> Session:
        """Create a session; use it as a context manager so it is deleted on exit, also on error.

        Raises:
            PoolExhaustedError, InvalidRequestError (limits above the server's maxima), APIConnectionError.
        """
        return self.sessions.create(timeout_s=timeout_s, memory_mb=memory_mb, cpus=cpus)

    # ------------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        self._check_open()
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method,
                    self._cfg.base_url + path,
                    json=json,
                    content=content,
                    headers=self._cfg.headers(),
                    timeout=timeout or self._cfg.http_timeout(),
                )
                self._cfg.check(response)
                return response
            except httpx.HTTPError as exc:
                error: ExecboxError = self._cfg.translate(exc)
                delay = self._cfg.retry_delay(attempt, error, sent=not is_unsent(exc))
                if delay is None:
                    raise error from exc
            except APIStatusError as exc:
                delay = self._cfg.retry_delay(attempt, exc, sent=True)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def _stream(self, path: str, body: Any, timeout_s: float | None) -> Iterator[ExecutionEvent]:
        done = False
        for line in self._lines(path, body, self._cfg.execution_timeout(timeout_s)):
            event = self._cfg.decode_line(line)
            if event is None:
                continue
            done = self._cfg.done_execution(event) is not None
            yield event
        if not done:
            raise self._cfg.missing_done()

    def _lines(self, path: str, body: Any, timeout: httpx.Timeout) -> Iterator[str]:
        """POST and yield the NDJSON lines of the answer; retries only before anything was read."""
        self._check_open()
        attempt = 0
        while True:
            try:
                with self._http.stream(
                    "POST", self._cfg.base_url + path, json=body, headers=self._cfg.headers(), timeout=timeout
                ) as response:
                    if not response.is_success:
                        response.read()
                        self._cfg.check(response)
                    splitter = LineSplitter()
                    for chunk in response.iter_bytes():
                        yield from splitter.feed(chunk)
                    yield from splitter.flush()
                    return
            except httpx.HTTPError as exc:
                error: ExecboxError = self._cfg.translate(exc)
                delay = self._cfg.retry_delay(attempt, error, sent=not is_unsent(exc))
                if delay is None:
                    raise error from exc
            except APIStatusError as exc:
                delay = self._cfg.retry_delay(attempt, exc, sent=True)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def _check_open(self) -> None:
        if self._closed:
            raise ExecboxError("this Client is closed; create a new one (or use it inside 'with Client() as c')")


class Sessions:
    """``client.sessions``: create, list, get and delete sessions."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self, *, timeout_s: float | None = None, memory_mb: int | None = None, cpus: float | None = None
    ) -> Session:
        """Create a session and return its handle (close it, or use it with ``with``)."""
        body = self._client._cfg.session_body(memory_mb, cpus, timeout_s)
        response = self._client._request("POST", "/v1/sessions", json=body)
        return Session(self._client, self._client._cfg.parse(response, SessionInfo))

    def list(self) -> list[SessionInfo]:
        response = self._client._request("GET", "/v1/sessions")
        return [SessionInfo.model_validate(item) for item in response.json()]

    def get(self, session_id: str) -> SessionInfo:
        """Raises SessionNotFoundError when there is no such session."""
        return self._client._cfg.parse(self._client._request("GET", f"/v1/sessions/{session_id}"), SessionInfo)

    def delete(self, session_id: str) -> None:
        """Delete a session and its sandbox. Raises SessionNotFoundError when there is none."""
        self._client._request("DELETE", f"/v1/sessions/{session_id}")


class Session:
    """A handle to a stateful session: variables persist between ``run`` calls."""

    def __init__(self, client: Client, info: SessionInfo) -> None:
        self._client = client
        self.info = info
        self.id = info.id
        self._closed = False

    def run(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        on_result: OnResult | None = None,
    ) -> Execution:
        """Run ``code`` in this session. What the code did is in the Execution, never raised.

        Raises:
            SessionBusyError (another run in progress), SessionNotFoundError (expired or deleted),
            APIConnectionError, APITimeoutError, StreamError (callbacks given and the stream was cut).
        """
        self._check_open()
        body = self._client._cfg.execute_body(code, timeout_s)
        timeout_s = timeout_s or self.info.limits.timeout_s
        callbacks = Callbacks(on_stdout, on_stderr, on_result)
        if callbacks.any:
            return _collect(self._client._stream(f"/v1/sessions/{self.id}/execute/stream", body, timeout_s), callbacks)
        response = self._client._request(
            "POST",
            f"/v1/sessions/{self.id}/execute",
            json=body,
            timeout=self._client._cfg.execution_timeout(timeout_s),
        )
        return self._client._cfg.parse(response, Execution)

    def run_stream(self, code: str, *, timeout_s: float | None = None) -> Iterator[ExecutionEvent]:
        """Run ``code``, yielding stdout/stderr/result/error events as they happen, then ``done``."""
        self._check_open()
        body = self._client._cfg.execute_body(code, timeout_s)
        return self._client._stream(
            f"/v1/sessions/{self.id}/execute/stream", body, timeout_s or self.info.limits.timeout_s
        )

    def interrupt(self) -> bool:
        """Interrupt the running execution; returns whether one was running."""
        response = self._client._request("POST", f"/v1/sessions/{self.id}/interrupt")
        return bool(response.json().get("interrupted"))

    def restart(self) -> SessionInfo:
        """Replace the kernel with a fresh one; every variable is lost."""
        response = self._client._request("POST", f"/v1/sessions/{self.id}/restart")
        self.info = self._client._cfg.parse(response, SessionInfo)
        return self.info

    def upload(self, path: str, data: bytes | str) -> FileInfo:
        """Write ``data`` to ``path`` under the session's working directory (directories are created).

        Raises:
            InvalidRequestError (absolute path, ``..``, a symlink on the way), RequestTooLargeError.
        """
        content = data.encode() if isinstance(data, str) else data
        response = self._client._request("PUT", f"/v1/sessions/{self.id}/files/{quote(path, safe='')}", content=content)
        return FileInfo.model_validate_json(response.content)

    def download(self, path: str) -> bytes:
        """The bytes of ``path`` (e.g. a CSV or a PNG the code wrote). Raises NotFoundError when missing."""
        return self._client._request("GET", f"/v1/sessions/{self.id}/files/{quote(path, safe='')}").content

    def list_files(self, directory: str = "") -> list[FileInfo]:
        """Entries of ``directory`` (default: the working directory itself)."""
        response = self._client._request("GET", f"/v1/sessions/{self.id}/files?dir={quote(directory)}")
        return [FileInfo.model_validate(e) for e in response.json()]

    def keepalive(self) -> SessionInfo:
        """Push the session's idle expiry back."""
        response = self._client._request("POST", f"/v1/sessions/{self.id}/keepalive")
        self.info = self._client._cfg.parse(response, SessionInfo)
        return self.info

    def refresh(self) -> SessionInfo:
        self.info = self._client.sessions.get(self.id)
        return self.info

    def close(self) -> None:
        """Delete the session (idempotent; a session that already expired is fine)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.sessions.delete(self.id)
        except APIStatusError as exc:
            if exc.status_code != 404:
                raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ExecboxError(f"session {self.id} is closed; create a new one with client.session()")


def _collect(events: Iterator[ExecutionEvent], callbacks: Callbacks) -> Execution:
    for event in events:
        callbacks.dispatch(event)
        execution = ClientConfig.done_execution(event)
        if execution is not None:
            return execution
    raise ClientConfig.missing_done()


# ====================================================================== async


class AsyncClient:
    """The asynchronous twin of :class:`Client`; same names, awaited."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._cfg = ClientConfig(base_url, api_key, timeout, max_retries)
        self._http = http_client or httpx.AsyncClient(
            timeout=self._cfg.http_timeout(),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._closed = False
        self.sessions = AsyncSessions(self)

    @property
    def base_url(self) -> str:
        return self._cfg.base_url

    async def close(self) -> None:
        self._closed = True
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        cpus: float | None = None,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        on_result: OnResult | None = None,
    ) -> Execution:
        """Run ``code`` once in a fresh sandbox (see :meth:`Client.run`)."""
        body = self._cfg.one_shot_body(code, timeout_s, memory_mb, cpus)
        callbacks = Callbacks(on_stdout, on_stderr, on_result)
        if callbacks.any:
            return await _acollect(self._stream("/v1/execute/stream", body, timeout_s), callbacks)
        response = await self._request("POST", "/v1/execute", json=body, timeout=self._cfg.execution_timeout(timeout_s))
        return self._cfg.parse(response, Execution)

    def run_stream(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        cpus: float | None = None,
    ) -> AsyncIterator[ExecutionEvent]:
        """Run ``code`` once in a fresh sandbox, yielding events (see :meth:`Client.run_stream`)."""
        return self._stream("/v1/execute/stream", self._cfg.one_shot_body(code, timeout_s, memory_mb, cpus), timeout_s)

    async def map(
        self,
        codes: Sequence[str],
        *,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        progress: bool = False,
    ) -> list[Execution]:
        """Run many programs, each in its own fresh process (see :meth:`Client.map`)."""
        collector = MapCollector(codes, timeout_s=timeout_s, memory_mb=memory_mb, progress=progress)
        try:
            async for result in self.batch_stream(collector.jobs, concurrency=concurrency):
                collector.add(result)
        except ExecboxError as exc:
            collector.fail(exc)
        return collector.finish()

    async def batch(
        self, jobs: Sequence[BatchJob | dict[str, Any] | str], *, concurrency: int | None = None
    ) -> list[BatchResult]:
        """Run a batch of programs; results in input order (see :meth:`Client.batch`)."""
        results = [r async for r in self.batch_stream(jobs, concurrency=concurrency)]
        return sorted(results, key=lambda r: r.index)

    async def batch_stream(
        self, jobs: Sequence[BatchJob | dict[str, Any] | str], *, concurrency: int | None = None
    ) -> AsyncIterator[BatchResult]:
        """Run a batch, yielding each result as it completes (see :meth:`Client.batch_stream`)."""
        body = self._cfg.batch_body(jobs, concurrency)
        async for item in self._lines("/v1/batch/stream", body, self._cfg.batch_timeout(body)):
            parsed = self._cfg.decode_batch_line(item)
            if isinstance(parsed, BatchResult):
                yield parsed
            elif isinstance(parsed, BatchSummary):
                return
        raise self._cfg.missing_summary()

    def session(
        self, *, timeout_s: float | None = None, memory_mb: int | None = None, cpus: float | None = None
    ) -> _AsyncSessionContext:
        """``async with client.session() as s:`` creates a session and deletes it on exit."""
        return _AsyncSessionContext(self, timeout_s=timeout_s, memory_mb=memory_mb, cpus=cpus)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        self._check_open()
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method,
                    self._cfg.base_url + path,
                    json=json,
                    content=content,
                    headers=self._cfg.headers(),
                    timeout=timeout or self._cfg.http_timeout(),
                )
                self._cfg.check(response)
                return response
            except httpx.HTTPError as exc:
                error: ExecboxError = self._cfg.translate(exc)
                delay = self._cfg.retry_delay(attempt, error, sent=not is_unsent(exc))
                if delay is None:
                    raise error from exc
            except APIStatusError as exc:
                delay = self._cfg.retry_delay(attempt, exc, sent=True)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def _stream(self, path: str, body: Any, timeout_s: float | None) -> AsyncIterator[ExecutionEvent]:
        done = False
        async for line in self._lines(path, body, self._cfg.execution_timeout(timeout_s)):
            event = self._cfg.decode_line(line)
            if event is None:
                continue
            done = self._cfg.done_execution(event) is not None
            yield event
        if not done:
            raise self._cfg.missing_done()

    async def _lines(self, path: str, body: Any, timeout: httpx.Timeout) -> AsyncIterator[str]:
        """POST and yield the NDJSON lines of the answer; retries only before anything was read."""
        self._check_open()
        attempt = 0
        while True:
            try:
                async with self._http.stream(
                    "POST", self._cfg.base_url + path, json=body, headers=self._cfg.headers(), timeout=timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        self._cfg.check(response)
                    splitter = LineSplitter()
                    async for chunk in response.aiter_bytes():
                        for line in splitter.feed(chunk):
                            yield line
                    for line in splitter.flush():
                        yield line
                    return
            except httpx.HTTPError as exc:
                error: ExecboxError = self._cfg.translate(exc)
                delay = self._cfg.retry_delay(attempt, error, sent=not is_unsent(exc))
                if delay is None:
                    raise error from exc
            except APIStatusError as exc:
                delay = self._cfg.retry_delay(attempt, exc, sent=True)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    def _check_open(self) -> None:
        if self._closed:
            raise ExecboxError("this AsyncClient is closed; create a new one (or use 'async with AsyncClient() as c')")


class AsyncSessions:
    """``client.sessions`` of an :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self, *, timeout_s: float | None = None, memory_mb: int | None = None, cpus: float | None = None
    ) -> AsyncSession:
        body = self._client._cfg.session_body(memory_mb, cpus, timeout_s)
        response = await self._client._request("POST", "/v1/sessions", json=body)
        return AsyncSession(self._client, self._client._cfg.parse(response, SessionInfo))

    async def list(self) -> list[SessionInfo]:
        response = await self._client._request("GET", "/v1/sessions")
        return [SessionInfo.model_validate(item) for item in response.json()]

    async def get(self, session_id: str) -> SessionInfo:
        response = await self._client._request("GET", f"/v1/sessions/{session_id}")
        return self._client._cfg.parse(response, SessionInfo)

    async def delete(self, session_id: str) -> None:
        await self._client._request("DELETE", f"/v1/sessions/{session_id}")


class AsyncSession:
    """The asynchronous twin of :class:`Session`."""

    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        self._client = client
        self.info = info
        self.id = info.id
        self._closed = False

    async def run(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        on_result: OnResult | None = None,
    ) -> Execution:
        """Run ``code`` in this session (see :meth:`Session.run`)."""
        self._check_open()
        body = self._client._cfg.execute_body(code, timeout_s)
        timeout_s = timeout_s or self.info.limits.timeout_s
        callbacks = Callbacks(on_stdout, on_stderr, on_result)
        if callbacks.any:
            stream = self._client._stream(f"/v1/sessions/{self.id}/execute/stream", body, timeout_s)
            return await _acollect(stream, callbacks)
        response = await self._client._request(
            "POST",
            f"/v1/sessions/{self.id}/execute",
            json=body,
            timeout=self._client._cfg.execution_timeout(timeout_s),
        )
        return self._client._cfg.parse(response, Execution)

    def run_stream(self, code: str, *, timeout_s: float | None = None) -> AsyncIterator[ExecutionEvent]:
        """Run ``code``, yielding events as they happen, then ``done``."""
        self._check_open()
        body = self._client._cfg.execute_body(code, timeout_s)
        return self._client._stream(
            f"/v1/sessions/{self.id}/execute/stream", body, timeout_s or self.info.limits.timeout_s
        )

    async def interrupt(self) -> bool:
        response = await self._client._request("POST", f"/v1/sessions/{self.id}/interrupt")
        return bool(response.json().get("interrupted"))

    async def restart(self) -> SessionInfo:
        response = await self._client._request("POST", f"/v1/sessions/{self.id}/restart")
        self.info = self._client._cfg.parse(response, SessionInfo)
        return self.info

    async def upload(self, path: str, data: bytes | str) -> FileInfo:
        content = data.encode() if isinstance(data, str) else data
        response = await self._client._request(
            "PUT", f"/v1/sessions/{self.id}/files/{quote(path, safe='')}", content=content
        )
        return FileInfo.model_validate_json(response.content)

    async def download(self, path: str) -> bytes:
        return (await self._client._request("GET", f"/v1/sessions/{self.id}/files/{quote(path, safe='')}")).content

    async def list_files(self, directory: str = "") -> list[FileInfo]:
        response = await self._client._request("GET", f"/v1/sessions/{self.id}/files?dir={quote(directory)}")
        return [FileInfo.model_validate(e) for e in response.json()]

    async def keepalive(self) -> SessionInfo:
        response = await self._client._request("POST", f"/v1/sessions/{self.id}/keepalive")
        self.info = self._client._cfg.parse(response, SessionInfo)
        return self.info

    async def refresh(self) -> SessionInfo:
        self.info = await self._client.sessions.get(self.id)
        return self.info

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Shielded: a cancelled caller must not leave the sandbox running.
            await asyncio.shield(self._client.sessions.delete(self.id))
        except APIStatusError as exc:
            if exc.status_code != 404:
                raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ExecboxError(f"session {self.id} is closed; create a new one with client.session()")


class _AsyncSessionContext:
    """What ``AsyncClient.session()`` returns: awaitable, or an async context manager."""

    def __init__(self, client: AsyncClient, **limits: Any) -> None:
        self._client = client
        self._limits = limits
        self._session: AsyncSession | None = None

    def __await__(self) -> Any:
        return self._client.sessions.create(**self._limits).__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._client.sessions.create(**self._limits)
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()


async def _acollect(events: AsyncIterator[ExecutionEvent], callbacks: Callbacks) -> Execution:
    async for event in events:
        callbacks.dispatch(event)
        execution = ClientConfig.done_execution(event)
        if execution is not None:
            return execution
    raise ClientConfig.missing_done()
