"""``Client``, ``Sessions`` and ``Session``: the synchronous twins.

Each method names its request (:class:`~execbox._routes.Routes`) and hands it to ``_call`` or
``_stream``, the only places that send, and ``_send``, the only place that sleeps. Everything
else lives once in the I/O-free core (``_base``, ``_routes``, ``_streams``, ``_batch``);
``_async_client.py`` is this file with ``await``.

With several URLs, a batch's chunks run on several nodes at once: one thread per chunk in
flight streams it and hands its results to the caller's thread through a queue
(:meth:`Client._spread`); the async twin uses tasks.
"""

from __future__ import annotations

import functools
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TypeVar

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

__all__ = ["Client", "Session", "Sessions"]

T = TypeVar("T")
E = TypeVar("E")
# What a lane's thread hands the caller's thread: a result, its end (None), or its failure.
LaneEvent = tuple[Lane, JobResult | BaseException | None]


class Client:
    """A synchronous execbox client.

    Args:
        base_url: the service URL, or a list of the URLs of several execbox instances (nodes);
            default ``$EXECBOX_URL`` (commas separate several) or ``http://127.0.0.1:8000``.
            With several, each session stays on the node that created it, one-shot runs and
            new sessions go to the least-loaded healthy node, and ``map``/``batch`` spread their
            chunks over the nodes (see :mod:`execbox._nodes`). ``dns+http://name:port`` stands
            for every address ``name`` resolves to (a Kubernetes headless Service), resolved again
            every 30 s.
        api_key: bearer key; default ``$EXECBOX_API_KEY``.
        timeout: seconds for ordinary calls; execute calls wait for the execution's own
            timeout plus a margin for the server's timeout ladder.
        max_retries: retries of safe failures (connection refused, 503 pool_exhausted, 429).
        http_client: an ``httpx.Client`` to use instead of a new one (e.g. with a MockTransport).
    """

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._core = ClientCore(base_url, api_key, timeout, max_retries)
        self._routes = Routes(self._core)
        self._http = http_client or httpx.Client(timeout=self._core.http_timeout())
        self._closed = False
        self.sessions = Sessions(self)

    @property
    def base_url(self) -> str:
        """The service URL (with several, the first)."""
        return self._core.base_url

    @property
    def base_urls(self) -> list[str]:
        """Every node's URL (with a ``dns+`` URL, the nodes its name resolved to last)."""
        return [node.url for node in self._core.nodes.nodes]

    def close(self) -> None:
        self._closed = True
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        callbacks = Callbacks(on_stdout, on_stderr, on_result)
        if callbacks.any:
            return _collect(self.run_stream(code, timeout_s=timeout_s, memory_mb=memory_mb, cpus=cpus), callbacks)
        return self._call(self._routes.run(code, timeout_s, memory_mb, cpus))

    def run_stream(
        self, code: str, *, timeout_s: float | None = None, memory_mb: int | None = None, cpus: float | None = None
    ) -> Iterator[ExecutionEvent]:
        """Run ``code`` once in a fresh sandbox, yielding events as they arrive; the last is ``done``.

        Raises:
            StreamError: the stream ended without ``done``.
        """
        return self._stream(self._routes.run_stream(code, timeout_s, memory_mb, cpus))

    def map(
        self,
        codes: Iterable[str],
        *,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        progress: bool | None = None,
    ) -> list[Execution]:
        """Run many programs, each isolated in its own fresh process; one Execution per input, in order.

        Runs on the batch path (warm fork-server workers): plain Python, no IPython magics
        or rich display; the value of a trailing expression becomes ``Execution.text``.
        Any number of inputs (a generator too): they are sent in chunks within the server's
        limits, read one chunk at a time. ``concurrency`` caps how many run at once (the
        server's worker count caps it too). ``progress``: a bar on stderr (None: when stderr
        is a terminal).

        What the service could not run comes back as data, never as a verdict: an Execution
        with status ``sandbox_lost`` and ``is_verdict`` False, whose ``message`` says why
        (a chunk that failed after retries, and every input after it, which is not sent).

        Raises:
            APIStatusError subclasses for a request the server calls wrong (AuthenticationError,
            InvalidRequestError for limits above its maxima); pydantic.ValidationError for a bad job.
        """
        jobs = map_jobs(codes, timeout_s=timeout_s, memory_mb=memory_mb)
        run = BatchRun(jobs, concurrency=concurrency, limits=self._core.batch_limits)
        return self._in_order(run, InOrder(JobResult.to_execution), progress_bar(size_of(codes), "exec", progress))

    def imap(
        self,
        codes: Iterable[str],
        *,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
    ) -> Iterator[Execution]:
        """:meth:`map` as an iterator: each Execution in input order as soon as it and those before it are
        done. Neither the inputs nor the results are held beyond one chunk, whatever their number
        (with several nodes, beyond a window of a few rounds of chunks over all of them).
        """
        jobs = map_jobs(codes, timeout_s=timeout_s, memory_mb=memory_mb)
        reorder = Reorder()
        for result in self._run_batch(BatchRun(jobs, concurrency=concurrency, limits=self._core.batch_limits)):
            for ready in reorder.add(result):
                yield ready.to_execution()
        reorder.finish()

    def batch(self, jobs: Jobs, *, concurrency: int | None = None, progress: bool | None = None) -> list[JobResult]:
        """Run a batch of programs (code strings, dicts or :class:`BatchJob`); results in input order.

        Any number of jobs, chunked as :meth:`map` does, with the same failure rule: a job the
        service could not run is a ``service_error`` result (``result.is_verdict`` is False).

        Raises:
            APIStatusError subclasses for a request the server calls wrong; pydantic.ValidationError.
        """
        run = BatchRun(jobs, concurrency=concurrency, limits=self._core.batch_limits)
        return self._in_order(run, InOrder(same), progress_bar(size_of(jobs), "job", progress))

    def batch_stream(self, jobs: Jobs, *, concurrency: int | None = None) -> Iterator[JobResult]:
        """Run a batch, yielding each :class:`JobResult` as it completes (completion order within a
        chunk, chunks one after another); ``result.index`` is the job's position in ``jobs``.

        Jobs are read lazily, one chunk at a time: a generator of 100,000 jobs is never held whole.
        Failures as :meth:`batch`.
        """
        return self._run_batch(BatchRun(jobs, concurrency=concurrency, limits=self._core.batch_limits))

    def session(
        self, *, timeout_s: float | None = None, memory_mb: int | None = None, cpus: float | None = None
    ) -> Session:
        """Create a session; use it as a context manager so it is deleted on exit, also on error.

        Raises:
            PoolExhaustedError, InvalidRequestError (limits above the server's maxima), APIConnectionError.
        """
        return self.sessions.create(timeout_s=timeout_s, memory_mb=memory_mb, cpus=cpus)

    # ------------------------------------------------------------------ sending (the async twin awaits)

    def _in_order(self, run: BatchRun, ordered: InOrder[T], bar: Bar) -> list[T]:
        try:
            for result in self._run_batch(run):
                ordered.add(result)
                bar.update(1)
        finally:
            bar.close()
        return ordered.finish(run.read)

    def _run_batch(self, run: BatchRun) -> Iterator[JobResult]:
        """Drive ``run`` (see :class:`~execbox._batch.BatchRun`): one request per chunk, in turn;
        with several nodes, spread over them."""
        if not self._core.nodes.single:
            yield from self._spread(run)
            return
        while (chunk := run.next_chunk()) is not None:
            yield from run.ready()
            try:
                for result in self._stream(self._routes.batch_chunk(chunk)):
                    yield run.accept(chunk, result)
                yield from run.finished(chunk)
            except ExecboxError as exc:
                yield from run.failed(chunk, exc)
        yield from run.ready()

    def _spread(self, run: BatchRun) -> Iterator[JobResult]:
        """Drive ``run`` over several nodes (see :class:`~execbox._nodes.Spread`): a thread per chunk
        in flight streams it; this generator hands out what they deliver."""
        self._refresh()
        nodes = self._core.nodes
        spread = Spread(run, nodes, run.concurrency, max_failovers=2 * len(nodes.nodes) + self._core.max_retries)
        events: queue.SimpleQueue[LaneEvent] = queue.SimpleQueue()
        try:
            while True:
                for lane in spread.plan():
                    threading.Thread(target=self._stream_lane, args=(lane, events), daemon=True).start()
                yield from spread.ready()
                if not spread.busy:
                    return
                lane, item = events.get()
                if isinstance(item, JobResult):
                    yield from spread.accept(lane, item)
                elif item is None:
                    yield from spread.finished(lane)
                elif isinstance(item, ExecboxError):
                    yield from spread.failed(lane, item)
                else:
                    raise item
                self._refresh()
        finally:
            # Lanes still streaming stop at their next result; their responses close as they do.
            spread.close()

    def _stream_lane(self, lane: Lane, events: queue.SimpleQueue[LaneEvent]) -> None:
        outcome: BaseException | None = None
        try:
            for result in self._stream(self._routes.batch_chunk(lane.chunk), Target(lane.node)):
                if lane.closed:
                    return
                events.put((lane, result))
        except BaseException as exc:  # handed to the caller's thread, which raises what is not ours
            outcome = exc
        events.put((lane, outcome))

    def _call(self, call: Call[T], target: Target = ANY) -> T:
        return call.parse(self._send(functools.partial(self._core.build, self._http, call), target))

    def _by_id(self, call: Call[T], session_id: str) -> T:
        """``call`` for a session known by id alone: sent to the node its id names (with unnamed
        nodes, to each in turn until one has it)."""
        if not self._core.nodes.single:
            self._refresh()
            for node in self._core.nodes.unnamed():
                self._probe(node)  # learn names, so the id's node can be found
        targets = self._core.targets_for(session_id)
        for target in targets[:-1]:
            try:
                return self._call(call, target)
            except SessionNotFoundError:
                continue
        return self._call(call, targets[-1])

    def _stream(self, call: StreamCall[E], target: Target = ANY) -> Iterator[E]:
        """The items of a streamed answer; retried like any call until its first byte is read."""
        response = self._send(functools.partial(self._core.build_stream, self._http, call), target, stream=True)
        decoder = call.decoder()
        try:
            for chunk in response.iter_bytes():
                yield from decoder.feed(chunk)
                if decoder.ended:
                    return
            yield from decoder.close()
        except httpx.HTTPError as exc:
            error = translate(exc)
            self._raise_if_lost(target, error)
            raise error from exc
        finally:
            response.close()

    def _send(
        self, build: Callable[[str], httpx.Request], target: Target = ANY, *, stream: bool = False
    ) -> httpx.Response:
        """Send the request ``build`` makes for a node's URL: to ``target``'s node, or the least-loaded one."""
        self._check_open()
        attempt = 0
        avoid: list[Node] = []
        while True:
            node = target.node or self._pick(avoid)
            try:
                with self._core.nodes.busy(node):
                    response = self._http.send(build(node.url), stream=stream)
                    if not response.is_success:
                        response.read()
                self._core.answered(node, response)
                return response
            except (httpx.HTTPError, APIStatusError) as exc:
                try:
                    retry = self._core.retry(node, target, attempt, exc, avoid)
                except ExecboxError as error:
                    self._raise_if_lost(target, error)
                    raise
            if retry.delay:
                time.sleep(retry.delay)
            attempt += retry.counted

    def _pick(self, avoid: list[Node]) -> Node:
        self._refresh()
        return self._core.nodes.pick(avoid)

    def _refresh(self) -> None:
        """Resolve the ``dns+`` URLs when due, then probe the nodes whose load is stale or who are due again."""
        nodes = self._core.nodes
        due = nodes.discovery_due()
        if due:
            found: dict[Discovery, list[str] | None] = {}
            try:
                for discovery in due:
                    try:
                        answers = socket.getaddrinfo(discovery.host, discovery.port, type=socket.SOCK_STREAM)
                    except OSError:
                        found[discovery] = None  # keep what the last resolution found
                        continue
                    found[discovery] = [str(answer[4][0]) for answer in answers]
            finally:
                nodes.discovered(found)
        for node in nodes.due():
            self._probe(node)

    def _probe(self, node: Node) -> bool:
        """Ask ``node`` for its health and load (``GET /v1/info``); whether it answered at all."""
        try:
            response = self._http.send(self._core.build(self._http, self._routes.info(), node.url))
        except httpx.HTTPError as exc:
            return self._core.probed(node, exc)
        finally:
            self._core.nodes.unclaim(node)
        return self._core.probed(node, response)

    def _raise_if_lost(self, target: Target, error: ExecboxError) -> None:
        """Raise SessionNotFoundError (reason ``node_unavailable``) when a session call failed
        because its node is gone; a probe tells a dead node from a blip."""
        if target.node is None or not self._core.may_be_lost(target, error):
            return
        if not target.node.down:
            self._probe(target.node)
        lost = self._core.lost(target, target.node, error)
        if lost is not None:
            raise lost from error

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
        client = self._client
        call = client._routes.create_session(timeout_s, memory_mb, cpus)
        response = client._send(functools.partial(client._core.build, client._http, call))
        info = call.parse(response)
        return Session(client, info, client._core.placed_on(response, info.id))

    def list(self) -> list[SessionInfo]:
        """This client's sessions; with several nodes, those of every node that answers."""
        client = self._client
        nodes = client._core.nodes
        if nodes.single:
            return client._call(client._routes.list_sessions())
        client._refresh()
        found: list[SessionInfo] = []
        for node in nodes.nodes:
            try:
                listed: list[SessionInfo] = client._call(client._routes.list_sessions(), Target(node))
            except APIConnectionError as exc:
                if isinstance(exc, APITimeoutError):
                    raise
                continue  # a node that refuses connections holds no sessions any more
            found.extend(listed)
        return found

    def get(self, session_id: str) -> SessionInfo:
        """Raises SessionNotFoundError when there is no such session (or its node is gone)."""
        return self._client._by_id(self._client._routes.get_session(session_id), session_id)

    def delete(self, session_id: str) -> None:
        """Delete a session and its sandbox. Raises SessionNotFoundError when there is none."""
        self._client._by_id(self._client._routes.delete_session(session_id), session_id)


class Session:
    """A handle to a stateful session: variables persist between ``run`` calls.

    Every call goes to the node that created it (``base_url``). When that node is gone, calls
    raise :class:`SessionNotFoundError` with ``reason`` ``node_unavailable``: the state is lost,
    and no new session replaces it behind the caller's back.
    """

    def __init__(self, client: Client, info: SessionInfo, node: Node | None = None) -> None:
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
        callbacks = Callbacks(on_stdout, on_stderr, on_result)
        if callbacks.any:
            return _collect(self.run_stream(code, timeout_s=timeout_s), callbacks)
        self._check_open()
        return self._client._call(self._routes.execute(self.info, code, timeout_s), self._target)

    def run_stream(self, code: str, *, timeout_s: float | None = None) -> Iterator[ExecutionEvent]:
        """Run ``code``, yielding stdout/stderr/result/error events as they happen, then ``done``."""
        self._check_open()
        return self._client._stream(self._routes.execute_stream(self.info, code, timeout_s), self._target)

    def interrupt(self) -> bool:
        """Interrupt the running execution; returns whether one was running."""
        return self._client._call(self._routes.interrupt(self.id), self._target)

    def restart(self) -> SessionInfo:
        """Replace the kernel with a fresh one; every variable is lost."""
        self.info = self._client._call(self._routes.restart(self.id), self._target)
        return self.info

    def upload(self, path: str, data: bytes | str) -> FileInfo:
        """Write ``data`` to ``path`` under the session's working directory (directories are created).

        Raises:
            InvalidRequestError (absolute path, ``..``, a symlink on the way), RequestTooLargeError.
        """
        return self._client._call(self._routes.upload(self.id, path, data), self._target)

    def download(self, path: str) -> bytes:
        """The bytes of ``path`` (e.g. a CSV or a PNG the code wrote). Raises NotFoundError when missing."""
        return self._client._call(self._routes.download(self.id, path), self._target)

    def list_files(self, directory: str = "") -> list[FileInfo]:
        """Entries of ``directory`` (default: the working directory itself)."""
        return self._client._call(self._routes.list_files(self.id, directory), self._target)

    def keepalive(self) -> SessionInfo:
        """Push the session's idle expiry back."""
        self.info = self._client._call(self._routes.keepalive(self.id), self._target)
        return self.info

    def refresh(self) -> SessionInfo:
        self.info = self._client._call(self._routes.get_session(self.id), self._target)
        return self.info

    def close(self) -> None:
        """Delete the session (idempotent; a session that already expired is fine)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client._call(self._routes.delete_session(self.id), self._target)
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
    execution = None
    for event in events:
        done = callbacks.dispatch(event)
        if done is not None:
            execution = done
    if execution is None:
        raise missing_done()
    return execution
