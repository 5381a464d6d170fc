"""``AsyncClient``, ``AsyncSessions`` and ``AsyncSession``: the asynchronous twins.

Line for line the twin of ``_client.py``: the same requests from the same I/O-free core, sent
with ``await`` and slept with ``asyncio.sleep``. A unit test checks both expose the same methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Iterable
from types import TracebackType
from typing import Any, TypeVar

import httpx

from execbox._base import Call, ClientCore, StreamCall, translate
from execbox._batch import BatchRun, InOrder, Jobs, Reorder, map_jobs, same, size_of
from execbox._compat import Self
from execbox._exceptions import APIStatusError, ExecboxError
from execbox._models import Execution, ExecutionEvent, FileInfo, JobResult, SessionInfo
from execbox._progress import Bar, progress_bar
from execbox._routes import Routes
from execbox._streams import Callbacks, OnResult, OnText, missing_done

__all__ = ["AsyncClient", "AsyncSession", "AsyncSessions"]

T = TypeVar("T")
E = TypeVar("E")


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
        self._core = ClientCore(base_url, api_key, timeout, max_retries)
        self._routes = Routes(self._core)
        self._http = http_client or httpx.AsyncClient(
            timeout=self._core.http_timeout(),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._closed = False
        self.sessions = AsyncSessions(self)

    @property
    def base_url(self) -> str:
        return self._core.base_url

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
        callbacks = Callbacks(on_stdout, on_stderr, on_result)
        if callbacks.any:
            events = self.run_stream(code, timeout_s=timeout_s, memory_mb=memory_mb, cpus=cpus)
            return await _collect(events, callbacks)
        return await self._call(self._routes.run(code, timeout_s, memory_mb, cpus))

    def run_stream(
        self, code: str, *, timeout_s: float | None = None, memory_mb: int | None = None, cpus: float | None = None
    ) -> AsyncIterator[ExecutionEvent]:
        """Run ``code`` once in a fresh sandbox, yielding events (see :meth:`Client.run_stream`)."""
        return self._stream(self._routes.run_stream(code, timeout_s, memory_mb, cpus))

    async def map(
        self,
        codes: Iterable[str],
        *,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        progress: bool | None = None,
    ) -> list[Execution]:
        """Run many programs, each in its own fresh process; any number, in input order (see :meth:`Client.map`)."""
        jobs = map_jobs(codes, timeout_s=timeout_s, memory_mb=memory_mb)
        run = BatchRun(jobs, concurrency=concurrency, limits=self._core.batch_limits)
        return await self._in_order(
            run, InOrder(JobResult.to_execution), progress_bar(size_of(codes), "exec", progress)
        )

    async def imap(
        self,
        codes: Iterable[str],
        *,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
    ) -> AsyncIterator[Execution]:
        """:meth:`map` as an async iterator in input order, holding one chunk at most (see :meth:`Client.imap`)."""
        jobs = map_jobs(codes, timeout_s=timeout_s, memory_mb=memory_mb)
        reorder = Reorder()
        async for result in self._run_batch(BatchRun(jobs, concurrency=concurrency, limits=self._core.batch_limits)):
            for ready in reorder.add(result):
                yield ready.to_execution()
        reorder.finish()

    async def batch(
        self, jobs: Jobs, *, concurrency: int | None = None, progress: bool | None = None
    ) -> list[JobResult]:
        """Run a batch of programs of any size; results in input order (see :meth:`Client.batch`)."""
        run = BatchRun(jobs, concurrency=concurrency, limits=self._core.batch_limits)
        return await self._in_order(run, InOrder(same), progress_bar(size_of(jobs), "job", progress))

    def batch_stream(self, jobs: Jobs, *, concurrency: int | None = None) -> AsyncIterator[JobResult]:
        """Run a batch, yielding each result as it completes (see :meth:`Client.batch_stream`)."""
        return self._run_batch(BatchRun(jobs, concurrency=concurrency, limits=self._core.batch_limits))

    def session(
        self, *, timeout_s: float | None = None, memory_mb: int | None = None, cpus: float | None = None
    ) -> _AsyncSessionContext:
        """``async with client.session() as s:`` creates a session and deletes it on exit."""
        return _AsyncSessionContext(self, timeout_s=timeout_s, memory_mb=memory_mb, cpus=cpus)

    # ------------------------------------------------------------------ sending (the sync twin does not await)

    async def _in_order(self, run: BatchRun, ordered: InOrder[T], bar: Bar) -> list[T]:
        try:
            async for result in self._run_batch(run):
                ordered.add(result)
                bar.update(1)
        finally:
            bar.close()
        return ordered.finish(run.read)

    async def _run_batch(self, run: BatchRun) -> AsyncIterator[JobResult]:
        """Drive ``run`` (see :class:`~execbox._batch.BatchRun`): one request per chunk, in turn."""
        while (chunk := run.next_chunk()) is not None:
            for ready in run.ready():
                yield ready
            try:
                async for result in self._stream(self._routes.batch_chunk(chunk)):
                    yield run.accept(chunk, result)
                for missing in run.finished(chunk):
                    yield missing
            except ExecboxError as exc:
                for failed in run.failed(chunk, exc):
                    yield failed
        for ready in run.ready():
            yield ready

    async def _call(self, call: Call[T]) -> T:
        return call.parse(await self._send(self._core.build(self._http, call)))

    async def _stream(self, call: StreamCall[E]) -> AsyncIterator[E]:
        """The items of a streamed answer; retried like any call until its first byte is read."""
        response = await self._send(self._core.build_stream(self._http, call), stream=True)
        decoder = call.decoder()
        try:
            async for chunk in response.aiter_bytes():
                for item in decoder.feed(chunk):
                    yield item
                if decoder.ended:
                    return
            for item in decoder.close():
                yield item
        except httpx.HTTPError as exc:
            raise translate(exc) from exc
        finally:
            await response.aclose()

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        self._check_open()
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, stream=stream)
                if not response.is_success:
                    await response.aread()
                self._core.check(response)
                return response
            except (httpx.HTTPError, APIStatusError) as exc:
                delay = self._core.backoff_or_raise(attempt, exc)
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
        info = await self._client._call(self._client._routes.create_session(timeout_s, memory_mb, cpus))
        return AsyncSession(self._client, info)

    async def list(self) -> list[SessionInfo]:
        return await self._client._call(self._client._routes.list_sessions())

    async def get(self, session_id: str) -> SessionInfo:
        return await self._client._call(self._client._routes.get_session(session_id))

    async def delete(self, session_id: str) -> None:
        await self._client._call(self._client._routes.delete_session(session_id))


class AsyncSession:
    """The asynchronous twin of :class:`Session`."""

    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        self._client = client
        self._routes = client._routes
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
        callbacks = Callbacks(on_stdout, on_stderr, on_result)
        if callbacks.any:
            return await _collect(self.run_stream(code, timeout_s=timeout_s), callbacks)
        self._check_open()
        return await self._client._call(self._routes.execute(self.info, code, timeout_s))

    def run_stream(self, code: str, *, timeout_s: float | None = None) -> AsyncIterator[ExecutionEvent]:
        """Run ``code``, yielding events as they happen, then ``done``."""
        self._check_open()
        return self._client._stream(self._routes.execute_stream(self.info, code, timeout_s))

    async def interrupt(self) -> bool:
        return await self._client._call(self._routes.interrupt(self.id))

    async def restart(self) -> SessionInfo:
        self.info = await self._client._call(self._routes.restart(self.id))
        return self.info

    async def upload(self, path: str, data: bytes | str) -> FileInfo:
        return await self._client._call(self._routes.upload(self.id, path, data))

    async def download(self, path: str) -> bytes:
        return await self._client._call(self._routes.download(self.id, path))

    async def list_files(self, directory: str = "") -> list[FileInfo]:
        return await self._client._call(self._routes.list_files(self.id, directory))

    async def keepalive(self) -> SessionInfo:
        self.info = await self._client._call(self._routes.keepalive(self.id))
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

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._client.sessions.create(**self._limits).__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._client.sessions.create(**self._limits)
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()


async def _collect(events: AsyncIterator[ExecutionEvent], callbacks: Callbacks) -> Execution:
    execution = None
    async for event in events:
        done = callbacks.dispatch(event)
        if done is not None:
            execution = done
    if execution is None:
        raise missing_done()
    return execution
