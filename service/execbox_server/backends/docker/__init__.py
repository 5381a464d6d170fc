"""Sandboxes as locked-down Docker containers: the Docker implementation of the backend protocols.

    engine.py      the docker-py client, engine calls under deadlines in per-purpose pools,
                   instance ownership and orphan reaping
    containers.py  the container flags every sandbox gets
    kernels.py     kernel sandboxes: start (boot or restore), warm-up, seal, inspect, signal, limits, destroy
    restore.py     the template kernel's checkpoint, and whether this machine can restore at all
    oci_restore.py the engine runtime's side of a restore (run by scripts/execbox-runtime)
    workers.py     batch workers (fork servers)
    helpers.py     in-sandbox helpers run through the engine: files, process sweep
    cgroups.py     CPU and memory accounting from the container's cgroup

:class:`DockerBackend` puts them together behind the protocols of
:mod:`execbox_server.backends.base`; nothing above ``backends/`` imports this package but the
app factory that builds it.
"""

from __future__ import annotations

from typing import Any

from execbox_server.backends.base import KernelStarts, SandboxSpec, SandboxState, Usage
from execbox_server.backends.docker.engine import Engine
from execbox_server.backends.docker.helpers import SandboxHelpers
from execbox_server.backends.docker.kernels import DockerKernel, KernelSandboxes
from execbox_server.backends.docker.workers import ForkWorker, ForkWorkers
from execbox_server.settings import Settings

__all__ = ["DockerBackend", "DockerKernel", "ForkWorker"]


class DockerBackend:
    """Kernels, batch workers and helpers on one Docker engine (see the package docstring)."""

    def __init__(self, settings: Settings, *, instance_id: str | None = None) -> None:
        self.engine = Engine(settings, instance_id=instance_id)
        self.instance_id = self.engine.instance_id
        self._kernels = KernelSandboxes(self.engine)
        self._workers = ForkWorkers(self.engine)
        self._helpers = SandboxHelpers(self.engine, max_file_bytes=settings.max_file_bytes)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, claim this instance's lock and reap orphans of dead instances.

        Raises:
            EngineUnavailable: the engine does not answer.
        """
        await self.engine.open()
        settings = self.engine.settings
        await self._kernels.prepare_restore(SandboxSpec(memory_mb=settings.memory_mb, cpus=settings.cpus))

    @property
    def kernel_starts(self) -> KernelStarts:
        return self._kernels.restore

    async def close(self) -> None:
        """Remove every container this instance owns, then release the instance lock."""
        await self.engine.close()
        self._kernels.close()

    async def ping(self) -> None:
        await self.engine.ping()

    async def check_engine(self) -> None:
        await self.engine.check()

    # ------------------------------------------------------------------ kernels

    async def start(self, spec: SandboxSpec) -> DockerKernel:
        return await self._kernels.start(spec)

    async def destroy(self, kernel: DockerKernel) -> None:
        await self._kernels.destroy(kernel)

    def sandbox_alive(self, kernel: DockerKernel) -> bool | None:
        return self._kernels.alive(kernel)

    async def update_limits(self, kernel: DockerKernel, spec: SandboxSpec) -> None:
        await self._kernels.update_limits(kernel, spec)

    async def inspect(self, kernel: DockerKernel) -> SandboxState:
        return await self._kernels.inspect(kernel)

    async def kill(self, kernel: DockerKernel) -> None:
        await self._kernels.signal(kernel, "SIGKILL")

    async def signal(self, kernel: DockerKernel, sig: str) -> None:
        await self._kernels.signal(kernel, sig)

    def usage(self, kernel: DockerKernel) -> Usage:
        return kernel.cgroup.usage()

    def reset_peak_memory(self, kernel: DockerKernel) -> None:
        kernel.cgroup.reset_peak_memory()

    async def sweep_processes(self, kernel: DockerKernel) -> bool:
        return await self._helpers.sweep(kernel.container_id, kernel.short_id)

    async def files(self, kernel: DockerKernel, op: str, path: str, data: bytes | None = None) -> Any:
        return await self._helpers.files(kernel.container_id, op, path, data)

    # ------------------------------------------------------------------ batch workers

    async def start_worker(self, spec: SandboxSpec) -> ForkWorker:
        return await self._workers.start(spec)

    async def destroy_worker(self, worker: ForkWorker) -> None:
        await self._workers.destroy(worker)
