"""Kernel sandboxes: one ipykernel per container, reached over ZMQ IPC in a sealed shared directory."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import select
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import _create_container_args
from execbox_server.backends.base import KernelStarts, SandboxGone, SandboxSpec, SandboxState, SandboxStatus
from execbox_server.backends.docker import restore
from execbox_server.backends.docker.cgroups import CgroupFiles
from execbox_server.backends.docker.containers import (
    ACTIVE_CPU_SHARES,
    SANDBOX_UID,
    container_args,
    sandbox_message_cap,
)
from execbox_server.backends.docker.engine import Engine
from execbox_server.errors import EngineUnavailable, InvalidLimits, SandboxStartFailed
from execbox_server.kernel import ConnectionFiles, KernelConnection, KernelNotReady

__all__ = ["DockerKernel", "KernelSandboxes", "seal_dir"]

log = logging.getLogger("execbox.backend")

# Consecutive failed restores after which kernels boot for the rest of the run (each failed
# restore is followed by a boot, so no caller sees it fail).
_MAX_RESTORE_FAILURES = 3
_REKEY_TIMEOUT_S = 30.0

# Cells run (outside the history) before a kernel joins the pool: the first displayhook and
# the first traceback of a fresh IPython cost ~0.3 s, then nothing. The last cell removes
# what the warm-up left behind, so the user's namespace starts clean.
_WARM_UP = (
    "1",
    "raise RuntimeError('execbox warm-up')",
    "import sys as _xb_sys\n"
    "for _xb_n in ('last_type', 'last_value', 'last_traceback', 'last_exc'):\n"
    "    _xb_sys.__dict__.pop(_xb_n, None)\n"
    "del _xb_sys, _xb_n\n"
    "_ = __ = ___ = ''",
)


@dataclass(eq=False)
class DockerKernel:
    """One sandbox container and the connection to the kernel inside it."""

    id: str
    container_id: str
    files: ConnectionFiles
    conn: KernelConnection
    spec: SandboxSpec
    cgroup: CgroupFiles
    started_at: float = field(default_factory=time.monotonic)
    destroyed: bool = False
    # A pidfd of the container's init, when the service shares the engine's pid namespace:
    # readable once the init exits, so liveness costs no engine call.
    pidfd: int | None = None

    @property
    def short_id(self) -> str:
        return self.container_id[:12]


class KernelSandboxes:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._settings = engine.settings
        self.restore = KernelStarts()
        self._template: restore.Template | None = None
        self._restore_failures = 0
        self._background: set[asyncio.Task[None]] = set()
        # The sandbox cuts its own messages' text and data to this many wire bytes; the
        # envelope, metadata and a traceback fit in the margin. Larger ones are forged: the
        # connection skips them unstored.
        self._max_message_bytes = sandbox_message_cap(self._settings) + (1 << 20)

    def close(self) -> None:
        """Nothing to release: connections are closed with their kernels."""

    async def start(self, spec: SandboxSpec) -> DockerKernel:
        """Start a sandbox and return once its kernel answers and is warm: restored from the
        template where there is one, booted otherwise (and when a restore fails).

        Raises:
            EngineUnavailable, SandboxStartFailed (nothing is left behind).
        """
        template = self._template
        if template is not None:
            try:
                kernel = await self._start(spec, restore_from=template)
            except SandboxStartFailed as exc:
                self._restore_failed(template, exc)
            else:
                self._restore_failures = 0
                self.restore.restored += 1
                return kernel
        kernel = await self._start(spec)
        self.restore.booted += 1
        return kernel

    async def prepare_restore(self, spec: SandboxSpec) -> None:
        """Boot, warm and checkpoint the template kernel, or say in ``self.restore`` why kernels
        will boot instead. Never raises but EngineUnavailable and cancellation."""
        try:
            reason = await restore.unavailable(self._engine)
            if reason is None:
                self._template = await self._make_template(spec)
        except (EngineUnavailable, asyncio.CancelledError):
            raise
        except Exception as exc:
            # Whatever went wrong, the service still serves: its kernels boot.
            log.warning("restore is off: the template kernel could not be made or checkpointed: %s", exc)
            reason = "the template kernel could not be checkpointed (the log says why)"
        if reason is None:
            self.restore.mode, self.restore.reason = "restore", None
            log.info("kernels start by restoring a checkpoint of a warm template kernel")
        else:
            self.restore.mode, self.restore.reason = "boot", reason
            log.info("kernels boot (no restore): %s", reason)

    async def _make_template(self, spec: SandboxSpec) -> restore.Template:
        kernel = await self._start(spec, template=True)
        image_dir = self._engine.kernels_dir / f"template-{secrets.token_hex(4)}"
        try:
            await kernel.conn.prepare_checkpoint(self._settings.kernel_start_timeout_s)
            # The dump takes the kernel's sockets with it; none may still be connected to us.
            kernel.conn.close()
            await asyncio.sleep(0.2)
            await restore.checkpoint(self._engine, kernel.container_id, image_dir)
        finally:
            await asyncio.shield(self.destroy(kernel))
        return restore.Template(image_dir=image_dir, key=kernel.files.key)

    def _restore_failed(self, template: restore.Template, exc: Exception) -> None:
        self._restore_failures += 1
        log.warning("a restore failed (%d in a row), booting instead: %s", self._restore_failures, exc)
        if self._restore_failures >= _MAX_RESTORE_FAILURES and self._template is template:
            self._template = None
            self.restore.mode = "boot"
            self.restore.reason = f"{_MAX_RESTORE_FAILURES} restores failed in a row (the log says why)"
            log.warning("kernels boot from now on: %d restores failed in a row", _MAX_RESTORE_FAILURES)
            # 67 MB nobody restores from any more.
            task = asyncio.get_running_loop().create_task(
                asyncio.to_thread(shutil.rmtree, template.image_dir, ignore_errors=True)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _start(
        self, spec: SandboxSpec, *, restore_from: restore.Template | None = None, template: bool = False
    ) -> DockerKernel:
        engine = self._engine
        kernel_id = secrets.token_hex(6)
        host_dir = engine.kernels_dir / kernel_id
        if restore_from is not None:
            files = ConnectionFiles.for_restore(host_dir, key=restore_from.key, sandbox_uid=SANDBOX_UID)
        else:
            files = ConnectionFiles.create(host_dir, sandbox_uid=SANDBOX_UID)
        args = container_args(self._settings, engine.instance_id, kernel_id, spec, files.host_dir, role="kernel")
        if restore_from is not None or template:
            args["runtime"] = self._settings.restore_runtime
            if restore_from is not None:
                args["environment"][restore.RESTORE_ENV] = str(restore_from.image_dir)
                args["environment"]["EXECBOX_CRIU"] = str(self._settings.criu_path)
            else:
                args["environment"][restore.TEMPLATE_ENV] = "1"
        container_id: str | None = None
        conn: KernelConnection | None = None
        kernel: DockerKernel | None = None
        pid_lookup: asyncio.Task[dict[str, Any]] | None = None
        try:
            container_id = await engine.call("lifecycle", lambda: _create_and_start(engine.docker, args))
            # The init's pid (for its pidfd) is known only once started. The kernel needs far
            # longer to answer than the engine to say it, so ask while waiting for the kernel:
            # the inspect costs no time on the start's path.
            pid_lookup = asyncio.ensure_future(
                engine.call("control", lambda: engine.docker.api.inspect_container(container_id))
            )
            conn = KernelConnection(files, max_message_bytes=self._max_message_bytes)
            kernel = DockerKernel(
                id=kernel_id,
                container_id=container_id,
                files=files,
                conn=conn,
                spec=spec,
                cgroup=CgroupFiles(container_id, root=self._settings.cgroup_root),
            )
            await self._wait_ready(kernel)
            if restore_from is not None:
                # A copy of the template: its own key and seeds, and no root, before anything else.
                # A short budget: a restored kernel answers within milliseconds or is broken.
                key = await conn.rekey(min(self._settings.kernel_start_timeout_s, _REKEY_TIMEOUT_S))
                kernel.files = dataclasses.replace(files, key=key)
            state = await pid_lookup
            kernel.pidfd = _open_init_pidfd(state.get("State", {}).get("Pid"), container_id)
            # The kernel has bound its sockets and read its connection file; no user code has
            # run yet. From here on the sandbox cannot create, rename or fill anything in the
            # directory it shares with the host.
            await asyncio.to_thread(seal_dir, files.host_dir)
            if restore_from is None:  # a restored kernel was warmed as the template
                for code in _WARM_UP:
                    await conn.warm_up(code, timeout=self._settings.kernel_start_timeout_s)
            return kernel
        except BaseException as exc:
            # Nothing half-started may survive a failure or a cancellation.
            if pid_lookup is not None:
                pid_lookup.cancel()
                # Its outcome no longer matters; retrieving it keeps asyncio from logging it.
                pid_lookup.add_done_callback(_ignore_outcome)
            if conn is not None:
                conn.close()
            if kernel is not None and kernel.pidfd is not None:
                os.close(kernel.pidfd)
            # By name when the start failed half-way: created but not started leaves a container.
            await asyncio.shield(engine.remove(container_id or args["name"], files.host_dir))
            if isinstance(exc, EngineUnavailable | asyncio.CancelledError):
                raise
            if isinstance(exc, KernelNotReady | docker.errors.DockerException | SandboxGone):
                raise SandboxStartFailed(f"sandbox did not start: {exc}") from exc
            raise

    async def _wait_ready(self, kernel: DockerKernel) -> None:
        timeout = self._settings.kernel_start_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                await kernel.conn.wait_ready(timeout=min(1.0, max(remaining, 0.05)))
                return
            except KernelNotReady as exc:
                if remaining <= 0:
                    # The whole budget, not the last one-second slice of it.
                    raise KernelNotReady(
                        f"kernel did not answer kernel_info within {timeout:g}s (EXECBOX_KERNEL_START_TIMEOUT_S)"
                    ) from exc
            # Waiting on a kernel that already exited would just burn the deadline.
            state = await self.inspect(kernel)
            if state.status is not SandboxStatus.RUNNING:
                raise KernelNotReady(
                    f"kernel container {state.status.value} (exit code {state.exit_code}) "
                    "before it was ready; "
                    f"check that {self._settings.image} starts its kernel (make images)"
                )

    async def destroy(self, kernel: DockerKernel) -> None:
        if kernel.destroyed:
            return
        kernel.destroyed = True
        kernel.conn.close()
        kernel.cgroup.close()
        if kernel.pidfd is not None:
            os.close(kernel.pidfd)
            kernel.pidfd = None
        await self._engine.remove(kernel.container_id, kernel.files.host_dir)

    def alive(self, kernel: DockerKernel) -> bool | None:
        if kernel.destroyed:
            return False
        if kernel.pidfd is None:
            return None
        readable, _, _ = select.select([kernel.pidfd], [], [], 0)
        return not readable

    async def activate(self, kernel: DockerKernel) -> None:
        """Give a leased kernel the normal CPU weight (spares run at a low one). Never raises."""
        engine = self._engine
        with contextlib.suppress(SandboxGone, EngineUnavailable, docker.errors.APIError):
            await engine.call(
                "control", lambda: engine.docker.api.update_container(kernel.container_id, cpu_shares=ACTIVE_CPU_SHARES)
            )

    async def update_limits(self, kernel: DockerKernel, spec: SandboxSpec) -> None:
        """Change a running sandbox's memory and CPU limits (used when a session asks for its own).

        Raises:
            InvalidLimits: the engine refused the limits (e.g. memory below what the kernel uses).
        """
        # The normal weight at once, in the cgroup; through the engine (off the request's path,
        # the first cells at the spare weight meanwhile) only where the cgroup cannot be written.
        if not kernel.cgroup.set_cpu_shares(ACTIVE_CPU_SHARES):
            task = asyncio.get_running_loop().create_task(self.activate(kernel))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if spec == kernel.spec:
            return
        engine = self._engine
        mem = f"{spec.memory_mb}m"
        try:
            await engine.call(
                "control",
                lambda: engine.docker.api.update_container(
                    kernel.container_id,
                    mem_limit=mem,
                    memswap_limit=mem,
                    cpu_period=100_000,
                    cpu_quota=int(spec.cpus * 100_000),
                    # The engine rewrites every CPU setting it records: keep the active weight.
                    cpu_shares=ACTIVE_CPU_SHARES,
                ),
            )
        except docker.errors.APIError as exc:
            raise InvalidLimits(f"the sandbox refused these limits: {exc.explanation}") from exc
        kernel.spec = spec

    async def inspect(self, kernel: DockerKernel) -> SandboxState:
        """How the sandbox is doing: the engine's view, or the init's pidfd when the engine is away.

        Raises:
            EngineUnavailable: the engine does not answer and the pidfd cannot tell.
        """
        engine = self._engine
        try:
            attrs = await engine.call("control", lambda: engine.docker.api.inspect_container(kernel.container_id))
        except SandboxGone:
            return SandboxState(SandboxStatus.GONE)
        except EngineUnavailable:
            # An unreachable engine says nothing about the kernel, which is reached over IPC:
            # answer from the pidfd when we have one (dockerd's stop ends its containers).
            alive = self.alive(kernel)
            if alive is None:
                raise
            return SandboxState(SandboxStatus.RUNNING if alive else SandboxStatus.GONE)
        state = attrs.get("State", {})
        if state.get("Running") and not state.get("Paused"):
            return SandboxState(SandboxStatus.RUNNING)
        if state.get("OOMKilled"):
            return SandboxState(SandboxStatus.OOM_KILLED, state.get("ExitCode"))
        if state.get("Running"):
            return SandboxState(SandboxStatus.RUNNING)
        return SandboxState(SandboxStatus.EXITED, state.get("ExitCode"))

    async def signal(self, kernel: DockerKernel, sig: str) -> None:
        """Send a signal through the container's init (SIGKILL ends the whole cgroup)."""
        engine = self._engine
        with contextlib.suppress(SandboxGone, docker.errors.APIError):
            await engine.call("control", lambda: engine.docker.api.kill(kernel.container_id, signal=sig))


def _create_and_start(client: docker.DockerClient, args: dict[str, Any]) -> str:
    """``containers.run(**args)`` in two engine calls instead of three; returns the container's id.

    docker-py's ``run`` inspects the container between create and start (to build its model
    object), which the service never uses. The arguments are translated by docker-py's own
    run-to-create mapping, so ``container_args`` stays the one description of a sandbox.

    Raises:
        docker.errors.DockerException: the engine refused the container or its start; a
            container created but not started is left for the caller to remove by name.
    """
    kwargs = {key: value for key, value in args.items() if key != "detach"}
    kwargs["version"] = client.api._version
    create = _create_container_args(kwargs)
    container_id = str(client.api.create_container(**create)["Id"])
    client.api.start(container_id)
    return container_id


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _open_init_pidfd(pid: object, container_id: str) -> int | None:
    """A pidfd of the container's init, if this process sees the engine's pid namespace.

    The pid the engine reports is only meaningful here when ``/proc/<pid>/cgroup`` names the
    container; otherwise (the service itself in a container) liveness falls back to the engine.
    """
    if not isinstance(pid, int) or pid <= 0 or not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as fh:
            if container_id.encode() in fh.read():
                return fd
    except OSError:
        pass
    os.close(fd)
    return None


def seal_dir(path: Path) -> None:
    """Make a kernel's shared directory read-only for the sandbox, without following links.

    Removes the connection file (it holds the kernel's key and is owned by the sandbox user,
    who could otherwise grow it without bound) and gives the directory to the service's user,
    mode 0755: the sandbox can still reach its sockets but can no longer create, rename or
    delete anything in it. Everything is done through a descriptor opened with O_NOFOLLOW.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink("connection.json", dir_fd=fd)
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
