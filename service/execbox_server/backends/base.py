"""The seam between the pool/executor and the container engine.

The pool only needs ``start`` and ``destroy``; the executor also asks how a sandbox is doing
(``inspect``), stops a kernel the hard way (``kill``) and reads resource usage. The Docker
implementation lives in :mod:`execbox_server.backends.docker`; unit tests use fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

__all__ = [
    "Backend",
    "SandboxGone",
    "SandboxSpec",
    "SandboxState",
    "SandboxStatus",
    "Usage",
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


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_ns: int | None
    peak_memory_bytes: int | None


class SandboxGone(Exception):
    """The sandbox's container no longer exists."""


K = TypeVar("K")


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
