"""``AsyncClient``, ``AsyncSessions`` and ``AsyncSession``: the asynchronous twins.

Line for line the twin of ``_client.py``: the same requests from the same I/O-free core, sent
with ``await`` and slept with ``asyncio.sleep``. A unit test checks both expose the same methods.
With several URLs, a batch's chunks in flight are tasks instead of threads.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from execbox._base import Call, ClientCore, StreamCall, translate
from execbox._batch import BatchRun, InOrder, Jobs, Reorder, map_jobs, same, size_of
from execbox._compat import Self
from execbox._exceptions import APIConnectionError, APIStatusError, APITimeoutError, ExecboxError, SessionNotFoundError
from execbox._models import Execution, ExecutionEvent, FileInfo, JobResult, SessionInfo
from execbox._nodes import ANY, Discovery, Lane, Node, Spread, Target
from execbox._progress import Bar, progress_bar
from execbox._routes import Routes
from execbox._streams import Callbacks, OnResult, OnText, missing_done

__all__ = ["AsyncClient", "AsyncSession", "AsyncSessions"]

T = TypeVar("T")
E = TypeVar("E")
# What a lane's task hands the consumer: a result, its end (None), or its failure.
LaneEvent = tuple[Lane, JobResult | BaseException | None]


class AsyncClient:
    """The asynchronous twin of :class:`Client`; same names, awaited."""

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
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
        """The service URL (with several, the first)."""
        return self._core.base_url

    @property
    def base_urls(self) -> list[str]:
        """Every node's URL (with a ``dns+`` URL, the nodes its name resolved to last)."""
        return [node.url for node in self._core.nodes.nodes]

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
        """Drive ``run`` (see :class:`~execbox._batch.BatchRun`): one request per chunk, in turn;
        with several nodes, spread over them."""
        if not self._core.nodes.single:
            async for result in self._spread(run):
                yield result
            return
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

    async def _spread(self, run: BatchRun) -> AsyncIterator[JobResult]:
        """Drive ``run`` over several nodes (see :class:`~execbox._nodes.Spread`): a task per chunk
        in flight streams it; this generator hands out what they deliver."""
        await self._refresh()
        nodes = self._core.nodes
        spread = Spread(run, nodes, run.concurrency, max_failovers=2 * len(nodes.nodes) + self._core.max_retries)
        events: asyncio.Queue[LaneEvent] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                for lane in spread.plan():
                    task = asyncio.create_task(self._stream_lane(lane, events))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                for ready in spread.ready():
                    yield ready
                if not spread.busy:
                    return
                lane, item = await events.get()
                if isinstance(item, JobResult):
                    results = spread.accept(lane, item)
                elif item is None:
                    results = spread.finished(lane)
                elif isinstance(item, ExecboxError):
                    results = spread.failed(lane, item)
                else:
                    raise item
                for result in results:
                    yield result
                await self._refresh()
        finally:
            spread.close()
            for task in tasks:
                task.cancel()
            # Shielded: a cancelled consumer still waits for its lanes' responses to close.
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))

    async def _stream_lane(self, lane: Lane, events: asyncio.Queue[LaneEvent]) -> None:
        outcome: BaseException | None = None
        try:
            async for result in self._stream(self._routes.batch_chunk(lane.chunk), Target(lane.node)):
                if lane.closed:
                    return
                events.put_nowait((lane, result))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the consumer, which raises what is not ours
            outcome = exc
        events.put_nowait((lane, outcome))

    async def _call(self, call: Call[T], target: Target = ANY) -> T:
        return call.parse(await self._send(functools.partial(self._core.build, self._http, call), target))

    async def _by_id(self, call: Call[T], session_id: str) -> T:
        """``call`` for a session known by id alone (see :meth:`Client._by_id`)."""
        if not self._core.nodes.single:
            await self._refresh()
            for node in self._core.nodes.unnamed():
                await self._probe(node)
        targets = self._core.targets_for(session_id)
        for target in targets[:-1]:
            try:
                return await self._call(call, target)
            except SessionNotFoundError:
                continue
        return await self._call(call, targets[-1])

    async def _stream(self, call: StreamCall[E], target: Target = ANY) -> AsyncIterator[E]:
        """The items of a streamed answer; retried like any call until its first byte is read."""
        build = functools.partial(self._core.build_stream, self._http, call)
        response = await self._send(build, target, stream=True)
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
            error = translate(exc)
            await self._raise_if_lost(target, error)
            raise error from exc
        finally:
            await response.aclose()

    async def _send(
        self, build: Callable[[str], httpx.Request], target: Target = ANY, *, stream: bool = False
    ) -> httpx.Response:
        """Send the request ``build`` makes for a node's URL (see :meth:`Client._send`)."""
        self._check_open()
        attempt = 0
        avoid: list[Node] = []
        while True:
            node = target.node or await self._pick(avoid)
            try:
                with self._core.nodes.busy(node):
                    response = await self._http.send(build(node.url), stream=stream)
                    if not response.is_success:
                        await response.aread()
                self._core.answered(node, response)
                return response
            except (httpx.HTTPError, APIStatusError) as exc:
                try:
                    retry = self._core.retry(node, target, attempt, exc, avoid)
                except ExecboxError as error:
                    await self._raise_if_lost(target, error)
                    raise
            if retry.delay:
                await asyncio.sleep(retry.delay)
            attempt += retry.counted

    async def _pick(self, avoid: list[Node]) -> Node:
        await self._refresh()
        return self._core.nodes.pick(avoid)

    async def _refresh(self) -> None:
        """Resolve the ``dns+`` URLs when due, then probe the nodes that are due (see :meth:`Client._refresh`)."""
        nodes = self._core.nodes
        due = nodes.discovery_due()
        if due:
            found: dict[Discovery, list[str] | None] = {}
            try:
                loop = asyncio.get_running_loop()
                for discovery in due:
                    try:
                        answers = await loop.getaddrinfo(discovery.host, discovery.port, type=socket.SOCK_STREAM)
                    except OSError:
                        found[discovery] = None
                        continue
                    found[discovery] = [str(answer[4][0]) for answer in answers]
            finally:
                nodes.discovered(found)
        await asyncio.gather(*(self._probe(node) for node in nodes.due()))

    async def _probe(self, node: Node) -> bool:
        """Ask ``node`` for its health and load (see :meth:`Client._probe`)."""
        try:
            response = await self._http.send(self._core.build(self._http, self._routes.info(), node.url))
        except httpx.HTTPError as exc:
            return self._core.probed(node, exc)
        finally:
            self._core.nodes.unclaim(node)
        return self._core.probed(node, response)

    async def _raise_if_lost(self, target: Target, error: ExecboxError) -> None:
        """Raise SessionNotFoundError when a session call failed because its node is gone (see
        :meth:`Client._raise_if_lost`)."""
        if target.node is None or not self._core.may_be_lost(target, error):
            return
        if not target.node.down:
            await self._probe(target.node)
        lost = self._core.lost(target, target.node, error)
        if lost is not None:
            raise lost from error

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
        client = self._client
        call = client._routes.create_session(timeout_s, memory_mb, cpus)
        response = await client._send(functools.partial(client._core.build, client._http, call))
        info = call.parse(response)
        return AsyncSession(client, info, client._core.placed_on(response, info.id))

    async def list(self) -> list[SessionInfo]:
        """This client's sessions; with several nodes, those of every node that answers."""
        client = self._client
        nodes = client._core.nodes
        if nodes.single:
            return await client._call(client._routes.list_sessions())
        await client._refresh()
        found: list[SessionInfo] = []
        for node in nodes.nodes:
            try:
                listed: list[SessionInfo] = await client._call(client._routes.list_sessions(), Target(node))
            except APIConnectionError as exc:
                if isinstance(exc, APITimeoutError):
                    raise
                continue  # a node that refuses connections holds no sessions any more
            found.extend(listed)
        return found

    async def get(self, session_id: str) -> SessionInfo:
        return await self._client._by_id(self._client._routes.get_session(session_id), session_id)

    async def delete(self, session_id: str) -> None:
        await self._client._by_id(self._client._routes.delete_session(session_id), session_id)


class AsyncSession:
    """The asynchronous twin of :class:`Session`: every call goes to the node that created it."""

    def __init__(self, client: AsyncClient, info: SessionInfo, node: Node | None = None) -> None:
        self._client = client
        self._routes = client._routes
        self._node = node or client._core.nodes.nodes[0]
        self._target = Target(self._node, info.id)
        self.info = info
        self.id = info.id
        self._closed = False

    @property
    def base_url(self) -> str:
        """The URL of the node that holds this session."""
        return self._node.url

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
        return await self._client._call(self._routes.execute(self.info, code, timeout_s), self._target)

    def run_stream(self, code: str, *, timeout_s: float | None = None) -> AsyncIterator[ExecutionEvent]:
        """Run ``code``, yielding events as they happen, then ``done``."""
        self._check_open()
        return self._client._stream(self._routes.execute_stream(self.info, code, timeout_s), self._target)

    async def interrupt(self) -> bool:
        return await self._client._call(self._routes.interrupt(self.id), self._target)

    async def restart(self) -> SessionInfo:
        self.info = await self._client._call(self._routes.restart(self.id), self._target)
        return self.info

    async def upload(self, path: str, data: bytes | str) -> FileInfo:
        return await self._client._call(self._routes.upload(self.id, path, data), self._target)

    async def download(self, path: str) -> bytes:
        return await self._client._call(self._routes.download(self.id, path), self._target)

    async def list_files(self, directory: str = "") -> list[FileInfo]:
        return await self._client._call(self._routes.list_files(self.id, directory), self._target)

    async def keepalive(self) -> SessionInfo:
        self.info = await self._client._call(self._routes.keepalive(self.id), self._target)
        return self.info

    async def refresh(self) -> SessionInfo:
        self.info = await self._client._call(self._routes.get_session(self.id), self._target)
        return self.info

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Shielded: a cancelled caller must not leave the sandbox running.
            await asyncio.shield(self._client._call(self._routes.delete_session(self.id), self._target))
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
