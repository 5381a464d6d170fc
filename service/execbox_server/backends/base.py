"""The seam between the service and the container engine: everything above ``backends/`` uses
only these protocols and types.

    Backend[K]          what the pool needs: start, destroy, engine check, cheap liveness
    SandboxControl[K]   what the executor needs: inspect, kill, signal, usage, process sweep
    SandboxBackend[K]   all of a kernel sandbox's operations (the above, limits and files)
    WorkerBackend[W]    batch workers: start and destroy
    ServiceBackend      everything the app uses: kernels, workers, open/close, ping
    Sandbox             what every kernel exposes: ids and the connection to its kernel
    KernelChannel       what the executor calls on that connection
    StdinChannel        ... and, for a caller that answers input(), the stdin relay
    Worker              a batch worker: the stream to its fork server

The Docker implementation lives in :mod:`execbox_server.backends.docker`; unit tests use fakes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from execbox._codes import ErrorCode
from execbox_server.kernel import KernelEvent, Traffic

__all__ = [
    "Backend",
    "FileRequestError",
    "KernelChannel",
    "KernelStarts",
    "Sandbox",
    "SandboxBackend",
    "SandboxControl",
    "SandboxGone",
    "SandboxSpec",
    "SandboxState",
    "SandboxStatus",
    "ServiceBackend",
    "StdinChannel",
    "Usage",
    "Worker",
    "WorkerBackend",
]


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    memory_mb: int
    cpus: float


class SandboxStatus(StrEnum):
    RUNNING = "running"
    EXITED = "exited"  # the kernel process ended (crash, os._exit)
    OOM_KILLED = "oom_killed"  # the engine's OOM killer ended it
    GONE = "gone"  # the container no longer exists


@dataclass(frozen=True, slots=True)
class SandboxState:
    status: SandboxStatus
    exit_code: int | None = None


@dataclass(slots=True)
class KernelStarts:
    """How kernels start on this instance (GET /v1/info): restored from a checkpoint of a warm
    template, or booted, and why not restored."""

    mode: str = "boot"  # "restore" | "boot"
    reason: str | None = "not decided yet"
    restored: int = 0
    booted: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_ns: int | None
    peak_memory_bytes: int | None


class SandboxGone(Exception):
    """The sandbox's container no longer exists."""


class FileRequestError(Exception):
    """A file request the sandbox refused; ``code`` is the API's error code (e.g. ``invalid_path``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class KernelChannel(Protocol):
    """The connection to one kernel, as the executor drives it (kernel/connection.py)."""

    @property
    def traffic(self) -> Traffic:
        """Everything received so far, counted on every channel."""
        ...

    def execute(self, code: str) -> str:
        """Send an execute request; return its msg_id."""
        ...

    async def next_event(self, msg_id: str, timeout: float) -> KernelEvent | None: ...

    def interrupt(self) -> None: ...

    def mute_output(self) -> int:
        """Stop reading output; return the bytes dropped."""
        ...

    async def unmute_output(self, timeout: float) -> None: ...


class StdinChannel(KernelChannel, Protocol):
    """A kernel connection that can relay ``input()`` to the caller (the Kernel Gateway's stdin)."""

    def execute(self, code: str, *, allow_stdin: bool = False) -> str: ...

    def input_reply(self, value: str) -> None:
        """Answer the kernel's last input request."""
        ...


class Sandbox(Protocol):
    """A kernel sandbox as the service sees it."""

    @property
    def id(self) -> str: ...

    @property
    def short_id(self) -> str: ...

    @property
    def conn(self) -> KernelChannel: ...


class Worker(Protocol):
    """A batch worker: the stream to its fork server, and who may use it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    owner: str | None
    jobs: int

    @property
    def short_id(self) -> str: ...


K = TypeVar("K")
K_contra = TypeVar("K_contra", contravariant=True)
W = TypeVar("W")


class Backend(Protocol[K]):
    """Starts and destroys sandboxes, each holding one ready kernel of type ``K``."""

    async def start(self, spec: SandboxSpec) -> K:
        """Start a sandbox and return once its kernel answers.

        Raises:
            EngineUnavailable: the container engine did not answer.
            SandboxStartFailed: the container or the kernel did not come up; nothing is left behind.
        """
        ...

    async def destroy(self, kernel: K) -> None:
        """Remove the sandbox for good. Never raises; safe to call twice."""
        ...

    async def check_engine(self) -> None:
        """Raise EngineUnavailable unless the engine answers (cached briefly).

        No kernel is handed out while the engine is unreachable: a sandbox that cannot be
        killed, inspected or removed must not start serving anyone.
        """
        ...

    def sandbox_alive(self, kernel: K) -> bool | None:
        """Whether the sandbox still runs, known without an engine call; None when unknown."""
        ...


class SandboxControl(Protocol[K_contra]):
    """What the executor needs from the backend while code runs."""

    async def inspect(self, kernel: K_contra) -> SandboxState:
        """How the sandbox is doing. Raises EngineUnavailable when nothing can tell."""
        ...

    async def kill(self, kernel: K_contra) -> None:
        """SIGKILL everything in the sandbox."""
        ...

    async def signal(self, kernel: K_contra, sig: str) -> None:
        """Send a signal to the kernel through the sandbox's init (e.g. SIGINT)."""
        ...

    def usage(self, kernel: K_contra) -> Usage: ...

    def reset_peak_memory(self, kernel: K_contra) -> None: ...

    async def sweep_processes(self, kernel: K_contra) -> bool:
        """Kill every process but the init and the kernel; False when that could not be done."""
        ...


class SandboxBackend(Backend[K], SandboxControl[K], Protocol[K]):
    """Every operation on kernel sandboxes."""

    async def update_limits(self, kernel: K, spec: SandboxSpec) -> None:
        """Give a leased kernel its session's limits. Raises InvalidLimits when refused."""
        ...

    async def files(self, kernel: K, op: str, path: str, data: bytes | None = None) -> Any:
        """Put (``data``), get (returns bytes) or list (returns ``{"entries": [...]}``) files
        under the sandbox's working directory.

        Raises:
            FileRequestError: refused path, missing file, file too large, sandbox unresponsive.
            SandboxGone: the sandbox no longer exists.
        """
        ...


class WorkerBackend(Protocol[W]):
    """Batch workers: fork servers in sandboxes of their own."""

    async def start_worker(self, spec: SandboxSpec) -> W:
        """Raises EngineUnavailable, SandboxStartFailed (nothing is left behind)."""
        ...

    async def destroy_worker(self, worker: W) -> None:
        """Remove the worker for good. Never raises; safe to call twice."""
        ...


class ServiceBackend(SandboxBackend[Any], WorkerBackend[Any], Protocol):
    """Everything the app uses of a backend; the app factory builds the Docker one by default."""

    @property
    def instance_id(self) -> str: ...

    @property
    def kernel_starts(self) -> KernelStarts: ...

    async def open(self) -> None:
        """Connect and claim this instance's resources. Raises EngineUnavailable."""
        ...

    async def close(self) -> None:
        """Remove everything this instance owns. Never raises."""
        ...

    async def ping(self) -> None:
        """Raises EngineUnavailable unless the engine answers (uncached)."""
        ...
