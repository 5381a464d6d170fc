"""``Client``, ``Sessions`` and ``Session``: the synchronous twins.

Each method names its request (:class:`~execbox._routes.Routes`) and hands it to ``_call`` or
``_stream``, the only places that send, and ``_send``, the only place that sleeps. Everything
else lives once in the I/O-free core (``_base``, ``_routes``, ``_streams``, ``_batch``);
``_async_client.py`` is this file with ``await``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TypeVar

import httpx

from execbox._base import Call, ClientCore, StreamCall, translate
from execbox._batch import Jobs, MapCollector
from execbox._compat import Self
from execbox._exceptions import APIStatusError, ExecboxError
from execbox._models import Execution, ExecutionEvent, FileInfo, JobResult, SessionInfo
from execbox._routes import Routes
from execbox._streams import Callbacks, OnResult, OnText, missing_done

__all__ = ["Client", "Session", "Sessions"]

T = TypeVar("T")
E = TypeVar("E")


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
        self._core = ClientCore(base_url, api_key, timeout, max_retries)
        self._routes = Routes(self._core)
        self._http = http_client or httpx.Client(timeout=self._core.http_timeout())
        self._closed = False
        self.sessions = Sessions(self)

    @property
    def base_url(self) -> str:
        return self._core.base_url

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

    def batch(self, jobs: Jobs, *, concurrency: int | None = None) -> list[JobResult]:
        """Run a batch of programs (code strings, dicts or :class:`BatchJob`); results in input order.

        Raises:
            PoolExhaustedError (no worker free after retries), RequestTooLargeError, StreamError,
            APIConnectionError.
        """
        return sorted(self.batch_stream(jobs, concurrency=concurrency), key=lambda r: r.index)

    def batch_stream(self, jobs: Jobs, *, concurrency: int | None = None) -> Iterator[JobResult]:
        """Run a batch, yielding each :class:`JobResult` as it completes (completion order)."""
        return self._stream(self._routes.batch_stream(jobs, concurrency))

    def session(
        self, *, timeout_s: float | None = None, memory_mb: int | None = None, cpus: float | None = None
    ) -> Session:
        """Create a session; use it as a context manager so it is deleted on exit, also on error.

        Raises:
            PoolExhaustedError, InvalidRequestError (limits above the server's maxima), APIConnectionError.
        """
        return self.sessions.create(timeout_s=timeout_s, memory_mb=memory_mb, cpus=cpus)

    # ------------------------------------------------------------------ sending (the async twin awaits)

    def _call(self, call: Call[T]) -> T:
        return call.parse(self._send(self._core.build(self._http, call)))

    def _stream(self, call: StreamCall[E]) -> Iterator[E]:
        """The items of a streamed answer; retried like any call until its first byte is read."""
        response = self._send(self._core.build_stream(self._http, call), stream=True)
        decoder = call.decoder()
        try:
            for chunk in response.iter_bytes():
                yield from decoder.feed(chunk)
                if decoder.ended:
                    return
            yield from decoder.close()
        except httpx.HTTPError as exc:
            raise translate(exc) from exc
        finally:
            response.close()

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        self._check_open()
        attempt = 0
        while True:
            try:
                response = self._http.send(request, stream=stream)
                if not response.is_success:
                    response.read()
                self._core.check(response)
                return response
            except (httpx.HTTPError, APIStatusError) as exc:
                delay = self._core.backoff_or_raise(attempt, exc)
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
        info = self._client._call(self._client._routes.create_session(timeout_s, memory_mb, cpus))
        return Session(self._client, info)

    def list(self) -> list[SessionInfo]:
        return self._client._call(self._client._routes.list_sessions())

    def get(self, session_id: str) -> SessionInfo:
        """Raises SessionNotFoundError when there is no such session."""
        return self._client._call(self._client._routes.get_session(session_id))

    def delete(self, session_id: str) -> None:
        """Delete a session and its sandbox. Raises SessionNotFoundError when there is none."""
        self._client._call(self._client._routes.delete_session(session_id))


class Session:
    """A handle to a stateful session: variables persist between ``run`` calls."""

    def __init__(self, client: Client, info: SessionInfo) -> None:
        self._client = client
        self._routes = client._routes
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
        callbacks = Callbacks(on_stdout, on_stderr, on_result)
        if callbacks.any:
            return _collect(self.run_stream(code, timeout_s=timeout_s), callbacks)
        self._check_open()
        return self._client._call(self._routes.execute(self.info, code, timeout_s))

    def run_stream(self, code: str, *, timeout_s: float | None = None) -> Iterator[ExecutionEvent]:
        """Run ``code``, yielding stdout/stderr/result/error events as they happen, then ``done``."""
        self._check_open()
        return self._client._stream(self._routes.execute_stream(self.info, code, timeout_s))

    def interrupt(self) -> bool:
        """Interrupt the running execution; returns whether one was running."""
        return self._client._call(self._routes.interrupt(self.id))

    def restart(self) -> SessionInfo:
        """Replace the kernel with a fresh one; every variable is lost."""
        self.info = self._client._call(self._routes.restart(self.id))
        return self.info

    def upload(self, path: str, data: bytes | str) -> FileInfo:
        """Write ``data`` to ``path`` under the session's working directory (directories are created).

        Raises:
            InvalidRequestError (absolute path, ``..``, a symlink on the way), RequestTooLargeError.
        """
        return self._client._call(self._routes.upload(self.id, path, data))

    def download(self, path: str) -> bytes:
        """The bytes of ``path`` (e.g. a CSV or a PNG the code wrote). Raises NotFoundError when missing."""
        return self._client._call(self._routes.download(self.id, path))

    def list_files(self, directory: str = "") -> list[FileInfo]:
        """Entries of ``directory`` (default: the working directory itself)."""
        return self._client._call(self._routes.list_files(self.id, directory))

    def keepalive(self) -> SessionInfo:
        """Push the session's idle expiry back."""
        self.info = self._client._call(self._routes.keepalive(self.id))
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
    execution = None
    for event in events:
        done = callbacks.dispatch(event)
        if done is not None:
            execution = done
    if execution is None:
        raise missing_done()
    return execution
