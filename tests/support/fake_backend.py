"""A fake backend at the seam of ``execbox_server.backends.base``: sandboxes and batch workers
that live inside the test process, so sessions, files, batch and the HTTP API run without Docker.

    FakeBackend      SandboxBackend[FakeKernel] and WorkerBackend[FakeWorker], plus the lifecycle
                     the app's lifespan calls (open, close, ping, instance_id); knobs for faults
    FakeKernel       one "sandbox": its state, an in-memory working directory, a FakeConnection
    FakeConnection   what the executor drives (execute, next_event, interrupt, mute/unmute,
                     traffic, close), answering with the typed events of ``kernel/events.py``
    FakeWorker       a batch worker: real asyncio streams over a socketpair to a fake fork
                     server that answers each request line with one JSON result line

How code runs
-------------
``FakeConnection.execute`` runs the code at once with ``exec`` in the kernel's own namespace,
inside the test process, and queues what a Jupyter kernel would send: ``Stream`` for what was
written to stdout/stderr (in order), ``Display(is_main=False)`` for ``display(obj)``,
``Display(is_main=True)`` for the value of a last expression that is not None, ``ErrorOutput``
and an error ``Reply`` for an exception, else an ``ok`` Reply; then ``Idle``. Only quick,
harmless code belongs there: it runs in the test process (no sleeping, no ``os._exit``) and
does not see the in-memory files.

Everything else a real kernel can do is scripted per code string with
``backend.script(code, behaviour)``; the behaviour replaces running the code:

    Events(events)          send exactly these events (e.g. a Malformed, a flood)
    Hang(interruptible)     never reply; an interrupt (or SIGINT) ends it with KeyboardInterrupt
                            unless ``interruptible`` is False
    Die(status, exit_code)  the kernel process ends while running: inspect says so, nothing
                            more arrives (EXITED, OOM_KILLED, or GONE for a vanished container)
    Fail(exc)               ``next_event`` raises ``exc``: a failure inside the service

Faults of the backend itself are attributes: ``engine_down`` (check_engine, start and
start_worker raise EngineUnavailable), ``start_delay`` (a slow start), ``start_error``,
``sweep_ok``, ``refuse_limits``; ``FakeKernel.die()`` / ``vanish()`` end a sandbox from outside
(``vanish`` also makes ``files`` raise SandboxGone). ``inspect`` answers even while the engine
is down, as the Docker backend does from the init's pidfd.

Batch workers run each job with ``exec`` in a fresh namespace (a fresh process each, as the
fork server gives), stdin from the job; test mode (``tests``) is not judged: the fake answers
no test outcomes, which the host counts as not run. ``backend.worker_faults[code]`` makes the
worker misbehave on that job (WorkerFault: close its connection, send garbage, retire, hang).
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import io
import itertools
import json
import linecache
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from execbox._codes import ErrorCode
from execbox_server.backends.base import (
    FileRequestError,
    KernelStarts,
    SandboxBackend,
    SandboxGone,
    SandboxSpec,
    SandboxState,
    SandboxStatus,
    Usage,
    WorkerBackend,
)
from execbox_server.errors import EngineUnavailable, InvalidLimits
from execbox_server.kernel.events import Display, ErrorOutput, Idle, KernelEvent, Reply, Stream, Traffic
from execbox_server.worker_protocol import (
    ErrorRecord,
    JobReport,
    JobRequest,
    JobStatusName,
    Ping,
    decode_request,
    encode_pong,
    encode_report,
)

__all__ = [
    "Behaviour",
    "Die",
    "Events",
    "Fail",
    "FakeBackend",
    "FakeConnection",
    "FakeKernel",
    "FakeWorker",
    "Hang",
    "WorkerFault",
]

DEFAULT_MAX_FILE_BYTES = 32 * 1024 * 1024
WORKER_STREAM_LIMIT = 64 * 1024 * 1024  # as the Docker backend's fork-server connection


# ---------------------------------------------------------------------- scripted behaviours


@dataclass(frozen=True)
class Events:
    """Answer with exactly these events, in order (nothing is run)."""

    events: tuple[KernelEvent, ...]


@dataclass(frozen=True)
class Hang:
    """Never reply. An interrupt request or a SIGINT ends it with a KeyboardInterrupt, unless
    ``interruptible`` is False (a C loop, a signal handler): then only a kill ends it."""

    interruptible: bool = True


@dataclass(frozen=True)
class Die:
    """The kernel process ends while running the code; nothing more arrives from it."""

    status: SandboxStatus = SandboxStatus.EXITED
    exit_code: int | None = 1


@dataclass(frozen=True)
class Fail:
    """The connection raises ``exc`` on the next ``next_event``: a failure inside the service."""

    exc: BaseException


Behaviour = Events | Hang | Die | Fail


class WorkerFault(Enum):
    CLOSE = "close"  # the worker drops its connection without answering
    GARBAGE = "garbage"  # the worker answers with a line that is not JSON
    RETIRE = "retire"  # the job's result says the worker could not be made clean; it stops serving
    HANG = "hang"  # the worker never answers


# ---------------------------------------------------------------------- kernels


class FakeConnection:
    """The kernel connection the executor drives, answering from ``exec`` or a script."""

    def __init__(self, kernel: FakeKernel, scripts: dict[str, Behaviour]) -> None:
        self._kernel = kernel
        self._scripts = scripts
        self.traffic = Traffic()
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.execution_count = 0
        self.executed: list[str] = []
        self.interrupts = 0
        self.muted = False
        self.closed = False
        self._ids = itertools.count(1)
        self._queue: deque[tuple[str, KernelEvent]] = deque()
        self._arrived = asyncio.Event()
        self._hanging: tuple[str, Hang] | None = None
        self._failure: BaseException | None = None

    @property
    def running(self) -> bool:
        """Whether a request is in flight with no reply yet (a Hang)."""
        return self._hanging is not None

    def execute(self, code: str) -> str:
        if self.closed:
            raise RuntimeError("execute on a closed FakeConnection: the kernel was destroyed")
        msg_id = f"{self._kernel.id}-{next(self._ids)}"
        self.executed.append(code)
        if self._kernel.status is not SandboxStatus.RUNNING:
            return msg_id  # a dead kernel reads nothing and answers nothing
        behaviour = self._scripts.get(code)
        if behaviour is None:
            self._push(msg_id, self._run(code))
        elif isinstance(behaviour, Events):
            self._push(msg_id, list(behaviour.events))
        elif isinstance(behaviour, Hang):
            self.execution_count += 1
            self._hanging = (msg_id, behaviour)
        elif isinstance(behaviour, Die):
            self._kernel.die(behaviour.status, behaviour.exit_code)
        else:
            self._failure = behaviour.exc
        return msg_id

    async def next_event(self, msg_id: str, timeout: float) -> KernelEvent | None:
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise exc
        deadline = time.monotonic() + timeout
        while True:
            while self._queue:
                parent, event = self._queue.popleft()
                self.traffic.messages += 1
                self.traffic.bytes += 600 + len(repr(event))  # an envelope and the content
                if parent == msg_id:
                    return event
                self.traffic.ignored += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return None
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    def interrupt(self) -> None:
        self.interrupts += 1
        self._interrupted()

    def mute_output(self) -> int:
        self.muted = True
        return 0

    async def unmute_output(self, timeout: float) -> None:
        self.muted = False

    def close(self) -> None:
        self.closed = True
        self._hanging = None
        self._arrived.set()

    # ------------------------------------------------------------------ internals

    def _interrupted(self) -> None:
        """A KeyboardInterrupt in the running cell, if there is one that listens."""
        if self._hanging is None or not self._hanging[1].interruptible:
            return
        msg_id, _ = self._hanging
        self._hanging = None
        tb = ["KeyboardInterrupt: "]
        self._push(
            msg_id,
            [
                ErrorOutput("KeyboardInterrupt", "", tb),
                Reply("error", self.execution_count, "KeyboardInterrupt", "", tb),
                Idle(),
            ],
        )

    def _killed(self) -> None:
        self._hanging = None

    def _push(self, msg_id: str, events: list[KernelEvent]) -> None:
        self._queue.extend((msg_id, event) for event in events)
        self._arrived.set()

    def _run(self, code: str) -> list[KernelEvent]:
        """Run ``code`` as IPython would in this namespace; the events it would publish."""
        self.execution_count += 1
        count = self.execution_count
        events: list[KernelEvent] = []

        def display(*objects: Any) -> None:
            for obj in objects:
                events.append(Display({"text/plain": repr(obj)}, {}, is_main=False))

        # IPython puts display() in builtins, not in the user's namespace.
        self.namespace["__builtins__"] = {**builtins.__dict__, "display": display}
        # Registered as IPython registers its cells, so tracebacks show the source lines.
        filename = f"<cell {self._kernel.id}-{count}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        try:
            tree = ast.parse(code, filename, "exec")
            last = None
            tail = tree.body[-1] if tree.body else None
            if isinstance(tail, ast.Expr):
                tree.body.pop()
                last = ast.Expression(tail.value)
            with _captured(events):
                exec(compile(tree, filename, "exec"), self.namespace)
                value = eval(compile(last, filename, "eval"), self.namespace) if last is not None else None
            if value is not None:
                self.namespace["_"] = value
                events.append(Display({"text/plain": repr(value)}, {}, is_main=True))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: the user's code, reported as data
            tb = _traceback(exc)
            name, value_text = type(exc).__name__, str(exc)
            events += [ErrorOutput(name, value_text, tb), Reply("error", count, name, value_text, tb), Idle()]
            return events
        return [*events, Reply("ok", count), Idle()]


@dataclass(eq=False)
class FakeKernel:
    """One fake sandbox. ``eq=False``: the pool keeps kernels in sets, by identity."""

    id: str
    spec: SandboxSpec
    conn: FakeConnection = field(init=False)
    status: SandboxStatus = SandboxStatus.RUNNING
    exit_code: int | None = None
    destroyed: bool = False
    gone: bool = False  # the container no longer exists: files raise SandboxGone
    files: dict[str, bytes] = field(default_factory=dict)  # the working directory, by relative path
    signals: list[str] = field(default_factory=list)
    limits_applied: list[SandboxSpec] = field(default_factory=list)
    sweeps: int = 0
    peak_resets: int = 0

    @property
    def container_id(self) -> str:
        return f"fake{self.id}".ljust(64, "0")

    @property
    def short_id(self) -> str:
        return self.container_id[:12]

    def die(self, status: SandboxStatus = SandboxStatus.EXITED, exit_code: int | None = 1) -> None:
        """The kernel process ends (from inside or outside): inspect and liveness say so."""
        self.status = status
        self.exit_code = exit_code
        self.conn._killed()
        if status is SandboxStatus.GONE:
            self.gone = True

    def vanish(self) -> None:
        """The container disappears (removed from outside, the engine lost it)."""
        self.die(SandboxStatus.GONE, None)


# ---------------------------------------------------------------------- batch workers


@dataclass(eq=False)
class FakeWorker:
    """The fields BatchRunner uses of a worker (as the Docker backend's ForkWorker)."""

    id: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: asyncio.Task[None] | None = None
    owner: str | None = None
    jobs: int = 0
    destroyed: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)  # what the worker was sent

    @property
    def short_id(self) -> str:
        return f"fake{self.id}"[:12]


# ---------------------------------------------------------------------- the backend


class FakeBackend:
    """Kernels and batch workers in the test process (see the module docstring)."""

    def __init__(
        self,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        start_delay: float = 0.0,
        instance_id: str = "fake00000001",
    ) -> None:
        self.instance_id = instance_id
        # Fake kernels start in the test process: neither restored nor booted in a container.
        self.kernel_starts = KernelStarts(mode="boot", reason="a fake backend")
        self.max_file_bytes = max_file_bytes
        # Knobs: faults to inject.
        self.engine_down = False
        self.start_delay = start_delay
        self.start_error: Exception | None = None
        self.worker_start_error: Exception | None = None
        self.sweep_ok = True
        self.refuse_limits = False
        self.scripts: dict[str, Behaviour] = {}
        self.worker_faults: dict[str, WorkerFault] = {}
        # Records.
        self.kernels: list[FakeKernel] = []
        self.destroyed: list[FakeKernel] = []
        self.workers: list[FakeWorker] = []
        self.destroyed_workers: list[FakeWorker] = []
        self.opened = False
        self.closed = False
        self._ids = itertools.count(1)

    def script(self, code: str, behaviour: Behaviour) -> None:
        """Answer ``code`` with ``behaviour`` instead of running it (in every kernel)."""
        self.scripts[code] = behaviour

    @property
    def live(self) -> list[FakeKernel]:
        return [k for k in self.kernels if not k.destroyed]

    @property
    def live_workers(self) -> list[FakeWorker]:
        return [w for w in self.workers if not w.destroyed]

    # ------------------------------------------------------------------ lifecycle (the app's)

    async def open(self) -> None:
        if self.engine_down:
            raise EngineUnavailable("the fake engine is down", retry_after=2)
        self.opened = True

    async def close(self) -> None:
        """Remove everything still alive, as the Docker backend does with what it owns."""
        self.closed = True
        for kernel in self.live:
            await self.destroy(kernel)
        for worker in self.live_workers:
            await self.destroy_worker(worker)

    async def ping(self) -> None:
        await self.check_engine()

    async def check_engine(self) -> None:
        if self.engine_down:
            raise EngineUnavailable("the fake engine is down", retry_after=2)

    # ------------------------------------------------------------------ kernels (Backend)

    async def start(self, spec: SandboxSpec) -> FakeKernel:
        await self.check_engine()
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        await self.check_engine()  # the engine may have gone while the kernel started
        if self.start_error is not None:
            raise self.start_error
        kernel = FakeKernel(id=f"k{next(self._ids)}", spec=spec)
        kernel.conn = FakeConnection(kernel, self.scripts)
        self.kernels.append(kernel)
        return kernel

    async def destroy(self, kernel: FakeKernel) -> None:
        await asyncio.sleep(0)  # a real destroy awaits the engine
        if kernel.destroyed:
            return
        kernel.destroyed = True
        kernel.gone = True
        kernel.status = SandboxStatus.GONE
        kernel.conn.close()
        self.destroyed.append(kernel)

    def sandbox_alive(self, kernel: FakeKernel) -> bool | None:
        return not kernel.destroyed and kernel.status is SandboxStatus.RUNNING

    async def update_limits(self, kernel: FakeKernel, spec: SandboxSpec) -> None:
        if self.refuse_limits:
            raise InvalidLimits(f"the sandbox refused these limits: {spec.memory_mb} MiB")
        kernel.limits_applied.append(spec)
        kernel.spec = spec

    # ------------------------------------------------------------------ kernels (SandboxControl)

    async def inspect(self, kernel: FakeKernel) -> SandboxState:
        return SandboxState(kernel.status, kernel.exit_code)

    async def kill(self, kernel: FakeKernel) -> None:
        kernel.signals.append("SIGKILL")
        if kernel.status is SandboxStatus.RUNNING:
            kernel.die(SandboxStatus.EXITED, 137)

    async def signal(self, kernel: FakeKernel, sig: str) -> None:
        if sig == "SIGKILL":
            await self.kill(kernel)
            return
        kernel.signals.append(sig)
        if sig == "SIGINT":
            kernel.conn._interrupted()

    def usage(self, kernel: FakeKernel) -> Usage:
        return Usage(cpu_ns=1_000_000 * len(kernel.conn.executed), peak_memory_bytes=64 * 1024 * 1024)

    def reset_peak_memory(self, kernel: FakeKernel) -> None:
        kernel.peak_resets += 1

    async def sweep_processes(self, kernel: FakeKernel) -> bool:
        kernel.sweeps += 1
        return self.sweep_ok

    # ------------------------------------------------------------------ files

    async def files(self, kernel: FakeKernel, op: str, path: str, data: bytes | None = None) -> Any:
        """The in-memory working directory, with the answers and error codes of the real helper
        (sandbox_images/python/execbox_files.py)."""
        await asyncio.sleep(0)
        if kernel.gone or kernel.destroyed:
            raise SandboxGone(f"sandbox {kernel.short_id} no longer exists")
        limit = self.max_file_bytes
        if op == "put":
            parts = _parts(path, want_file=True)
            body = data or b""
            if len(body) > limit:
                raise FileRequestError(
                    ErrorCode.FILE_TOO_LARGE,
                    f"the file is larger than the limit of {limit} bytes (EXECBOX_MAX_FILE_BYTES)",
                )
            _walk_dirs(kernel.files, parts[:-1], missing_ok=True)
            rel = "/".join(parts)
            if _is_dir(kernel.files, rel):
                raise FileRequestError(ErrorCode.INVALID_PATH, f"{rel} is not a regular file")
            kernel.files[rel] = bytes(body)
            return {"path": rel, "size": len(body)}
        if op == "get":
            parts = _parts(path, want_file=True)
            _walk_dirs(kernel.files, parts[:-1], missing_ok=False)
            rel = "/".join(parts)
            if _is_dir(kernel.files, rel):
                raise FileRequestError(ErrorCode.INVALID_PATH, f"{rel} is not a regular file")
            if rel not in kernel.files:
                raise FileRequestError(ErrorCode.FILE_NOT_FOUND, f"no such file or directory: {rel}")
            content = kernel.files[rel]
            if len(content) > limit:
                raise FileRequestError(
                    ErrorCode.FILE_TOO_LARGE,
                    f"{rel} is {len(content)} bytes; the limit is {limit} (EXECBOX_MAX_FILE_BYTES)",
                )
            return content
        if op == "list":
            parts = _parts(path, want_file=False)
            _walk_dirs(kernel.files, parts, missing_ok=False)
            return {"entries": _entries(kernel.files, parts), "truncated": False}
        # The helper says invalid_request; the backend reads any code but its three as an invalid path.
        raise FileRequestError(ErrorCode.INVALID_PATH, f"unknown operation {op!r}")

    # ------------------------------------------------------------------ batch workers (WorkerBackend)

    async def start_worker(self, spec: SandboxSpec) -> FakeWorker:
        await self.check_engine()
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        if self.worker_start_error is not None:
            raise self.worker_start_error
        host_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reader, writer = await asyncio.open_unix_connection(sock=host_end, limit=WORKER_STREAM_LIMIT)
        server_reader, server_writer = await asyncio.open_unix_connection(sock=server_end, limit=WORKER_STREAM_LIMIT)
        worker = FakeWorker(id=f"w{next(self._ids)}", reader=reader, writer=writer)
        worker.server = asyncio.get_running_loop().create_task(self._serve(worker, server_reader, server_writer))
        self.workers.append(worker)
        return worker

    async def destroy_worker(self, worker: FakeWorker) -> None:
        await asyncio.sleep(0)
        if worker.destroyed:
            return
        worker.destroyed = True
        worker.writer.close()
        if worker.server is not None:
            worker.server.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await worker.server
        self.destroyed_workers.append(worker)

    async def _serve(self, worker: FakeWorker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The fork server's loop: one request line in, one result line out, in order."""
        try:
            while line := await reader.readline():
                decoded = decode_request(line)  # the fake refuses what the real worker would refuse
                if isinstance(decoded, Ping):
                    writer.write(encode_pong())
                    await writer.drain()
                    continue
                request = json.loads(line)
                worker.requests.append(request)
                fault = self.worker_faults.get(decoded.code)
                if fault is WorkerFault.CLOSE:
                    return
                if fault is WorkerFault.HANG:
                    await asyncio.Event().wait()  # until the worker is destroyed
                if fault is WorkerFault.GARBAGE:
                    writer.write(b"this is not a result\n")
                    await writer.drain()
                    continue
                report = run_job(decoded, retire=fault is WorkerFault.RETIRE)
                writer.write(encode_report(report))
                await writer.drain()
                if report.retire:
                    return  # what was sent after this job stays unanswered, as the fork server does
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()


def run_job(request: JobRequest, *, retire: bool = False) -> JobReport:
    """One batch job as the fork server reports it, run with ``exec`` in a fresh namespace."""
    stdout, stderr = io.StringIO(), io.StringIO()
    status: JobStatusName = "ok"
    exit_code = 0
    error: ErrorRecord | None = None
    started = time.monotonic()
    saved_stdin = sys.stdin
    sys.stdin = io.StringIO(request.stdin or "")
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            exec(compile(request.code, "<job>", "exec"), {"__name__": "__main__"})
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        status = "ok" if exit_code == 0 else "error"
    except BaseException as exc:
        tb = _traceback(exc)
        stderr.write("".join(line + "\n" for line in tb))
        status, exit_code = "error", 1
        error = ErrorRecord(name=type(exc).__name__, value=str(exc), traceback=tuple(tb))
    finally:
        sys.stdin = saved_stdin
    wall_ms = round((time.monotonic() - started) * 1000, 3)
    return JobReport(
        status=status,
        stdout=stdout.getvalue(),
        stderr=stderr.getvalue(),
        error=error,
        exit_code=exit_code,
        wall_ms=wall_ms,
        cpu_ms=wall_ms,
        peak_memory_bytes=16 * 1024 * 1024,
        retire=retire,
    )


# ---------------------------------------------------------------------- internals


class _StreamWriter(io.TextIOBase):
    """stdout or stderr of a cell: each write becomes (part of) a Stream event, in order."""

    def __init__(self, name: str, events: list[KernelEvent]) -> None:
        self._name = name
        self._events = events

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        last = self._events[-1] if self._events else None
        if isinstance(last, Stream) and last.name == self._name:
            self._events[-1] = Stream(self._name, last.text + text)
        else:
            self._events.append(Stream(self._name, text))
        return len(text)


@contextlib.contextmanager
def _captured(events: list[KernelEvent]) -> Iterator[None]:
    with (
        contextlib.redirect_stdout(_StreamWriter("stdout", events)),
        contextlib.redirect_stderr(_StreamWriter("stderr", events)),
    ):
        yield


def _traceback(exc: BaseException) -> list[str]:
    """The traceback from the user's code on (the fake's own frame left out), one line each."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return text.rstrip("\n").splitlines()


def _parts(rel: str, *, want_file: bool) -> list[str]:
    """The path's components, refused as the real helper refuses them."""
    if "\0" in rel or rel.startswith("/") or "\\" in rel:
        raise FileRequestError(
            ErrorCode.INVALID_PATH, "give a path relative to the working directory, without NUL or backslashes"
        )
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise FileRequestError(ErrorCode.INVALID_PATH, "'..' is not allowed: paths stay inside the working directory")
    if want_file and not parts:
        raise FileRequestError(ErrorCode.INVALID_PATH, "give a file name")
    return parts


def _is_dir(files: dict[str, bytes], rel: str) -> bool:
    prefix = rel + "/"
    return any(key.startswith(prefix) for key in files)


def _walk_dirs(files: dict[str, bytes], parts: list[str], *, missing_ok: bool) -> None:
    """Check that each of ``parts`` is a directory (missing ones are created by a put)."""
    for i in range(len(parts)):
        where = "/".join(parts[: i + 1])
        if where in files:
            raise FileRequestError(
                ErrorCode.INVALID_PATH, f"{where} is not a directory (or is a symlink, which is not followed)"
            )
        if not missing_ok and not _is_dir(files, where):
            raise FileRequestError(ErrorCode.FILE_NOT_FOUND, f"no such file or directory: {where}")


def _entries(files: dict[str, bytes], parts: list[str]) -> list[dict[str, Any]]:
    prefix = "".join(p + "/" for p in parts)
    found: dict[str, dict[str, Any]] = {}
    for key, content in files.items():
        if not key.startswith(prefix):
            continue
        name, sep, _ = key[len(prefix) :].partition("/")
        path = prefix + name
        if sep:
            found.setdefault(name, {"name": name, "path": path, "size": 0, "type": "dir"})
        else:
            found[name] = {"name": name, "path": path, "size": len(content), "type": "file"}
    return [found[name] for name in sorted(found)]


if TYPE_CHECKING:
    # `mypy --strict tests/support` checks that the fake meets the seam's protocols.
    _kernels: SandboxBackend[FakeKernel] = FakeBackend()
    _workers: WorkerBackend[FakeWorker] = FakeBackend()
