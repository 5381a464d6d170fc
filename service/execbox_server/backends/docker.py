"""Sandboxes as locked-down Docker containers, each running one ipykernel.

Every container gets: no network, all capabilities dropped, no-new-privileges, a read-only
root with size-limited tmpfs for HOME and /tmp, memory = memory+swap, a pids limit, a CPU
quota, a non-root user, and ``--init`` so the kernel is not PID 1 (signals behave). The
kernel is reached over ZMQ IPC sockets in a bind-mounted per-kernel directory.

Ownership: containers carry ``execbox.instance=<id>``; the instance holds an flock on
``<state_dir>/instances/<id>.lock`` for as long as it lives. At start-up, containers of an
instance whose lock can be taken are orphans of a crashed process and are removed; a live
neighbour's lock cannot be taken, so its containers are never touched.

``docker.errors`` never leave this module: they become ``EngineUnavailable``,
``SandboxStartFailed`` or ``SandboxGone``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import secrets
import select
import shutil
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import docker
import docker.errors
import docker.types
import requests.exceptions
import zmq.asyncio

from execbox_server.backends.base import SandboxGone, SandboxSpec, SandboxState, SandboxStatus, Usage
from execbox_server.errors import EngineUnavailable, InvalidLimits, SandboxStartFailed
from execbox_server.kernel import ConnectionFiles, KernelConnection, KernelNotReady
from execbox_server.settings import Settings

__all__ = ["DockerBackend", "DockerKernel", "FileRequestError", "ForkWorker"]

log = logging.getLogger("execbox.backend")

LABEL_MANAGED = "execbox.managed"
LABEL_INSTANCE = "execbox.instance"
LABEL_KERNEL = "execbox.kernel"
LABEL_ROLE = "execbox.role"
SPARE_CPU_SHARES = 128
ACTIVE_CPU_SHARES = 1024
SANDBOX_UID = 90000  # the image's sandbox user; outside the uid ranges of host users

T = TypeVar("T")

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

class FileRequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# In-sandbox helpers, real files of the image (sandbox_images/python/). Run as root with
# ``-I -S`` from ``/``: nothing the user's code planted is imported, and the sandbox user can
# neither signal nor trace them. Each ends itself with an alarm; the service's own deadline
# (HELPER_TIMEOUT_S) is a little longer.
_PYTHON = ("/opt/venv/bin/python", "-I", "-S")
_FILES_HELPER = "/opt/execbox/execbox_files.py"
_SWEEP_HELPER = "/opt/execbox/execbox_sweep.py"
HELPER_TIMEOUT_S = 30.0

# Deadlines of engine calls by purpose; each purpose has its own bounded thread pool, so a
# slow file copy never delays a kill, and a hung call never holds the service.
CONTROL_TIMEOUT_S = 20.0  # inspect, kill, signal, update, remove
LIFECYCLE_TIMEOUT_S = 90.0  # create+start of a container, listing, ping at open
_POOL_SIZES = {"control": 8, "lifecycle": 4, "exec": 4}
ENGINE_CHECK_TTL_S = 1.0

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")

_ENGINE_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


@dataclass(eq=False)
class DockerKernel:
    """One sandbox container and the connection to the kernel inside it."""

    id: str
    container_id: str
    files: ConnectionFiles
    conn: KernelConnection
    spec: SandboxSpec
    started_at: float = field(default_factory=time.monotonic)
    destroyed: bool = False
    cgroup: dict[str, int] | None = None  # open cgroup files (accounting), closed on destroy
    # A pidfd of the container's init, when the service shares the engine's pid namespace:
    # readable once the init exits, so liveness costs no engine call.
    pidfd: int | None = None

    @property
    def short_id(self) -> str:
        return self.container_id[:12]


@dataclass(eq=False)
class ForkWorker:
    """A batch worker container running the fork server, and the stream to it."""

    id: str
    container_id: str
    dir: Path
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    owner: str | None = None
    jobs: int = 0
    destroyed: bool = False

    @property
    def short_id(self) -> str:
        return self.container_id[:12]


class DockerBackend:
    def __init__(self, settings: Settings, *, instance_id: str | None = None) -> None:
        self._settings = settings
        self.instance_id = instance_id or secrets.token_hex(6)
        self._zmq = zmq.asyncio.Context()
        self._client: docker.DockerClient | None = None
        self._lock_fd: int | None = None
        self._kernels_dir = settings.state_dir / self.instance_id
        self._background: set[asyncio.Task[None]] = set()
        self._pools = {
            purpose: concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix=f"engine-{purpose}")
            for purpose, size in _POOL_SIZES.items()
        }
        self._engine_checked_at = -math.inf
        self._engine_error: EngineUnavailable | None = None
        # The sandbox cuts its own messages at the output limit (in characters); allow for
        # JSON escaping and the envelope before ZMQ refuses a message outright.
        self._max_message_bytes = 6 * settings.max_output_bytes_limit + 1_048_576

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect to the engine, claim this instance's lock and reap orphans of dead instances.

        Raises:
            EngineUnavailable: the engine does not answer.
        """
        instances = self._settings.state_dir / "instances"
        instances.mkdir(parents=True, exist_ok=True)
        self._kernels_dir.mkdir(parents=True, exist_ok=True)
        # The sandbox user must traverse to its own socket dir; the dirs below are 0700.
        self._settings.state_dir.chmod(0o711)
        self._kernels_dir.chmod(0o711)
        fd = os.open(instances / f"{self.instance_id}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        self._client = await self._call(
            "lifecycle",
            lambda: (
                docker.DockerClient(base_url=self._settings.docker_url or None, timeout=30, max_pool_size=32)
                if self._settings.docker_url
                else docker.from_env(timeout=30, max_pool_size=32)
            )
        )
        await self.ping()
        removed = await self.reap_orphans()
        if removed:
            log.info("removed %d orphaned sandbox container(s) of dead instances", removed)

    async def close(self) -> None:
        """Remove every container this instance owns, then release the instance lock."""
        if self._client is not None:
            with contextlib.suppress(EngineUnavailable):
                await self._remove_where({LABEL_INSTANCE: self.instance_id})
        await asyncio.to_thread(shutil.rmtree, self._kernels_dir, ignore_errors=True)
        self._zmq.destroy(linger=0)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._settings.state_dir / "instances" / f"{self.instance_id}.lock")
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._client is not None:
            self._client.close()
            self._client = None
        for pool in self._pools.values():
            # Threads stuck in a hung engine call are abandoned, not waited for.
            pool.shutdown(wait=False, cancel_futures=True)

    async def ping(self) -> None:
        """Raises EngineUnavailable unless the engine answers."""
        try:
            await self._call("control", lambda: self._docker.ping())
        except EngineUnavailable as exc:
            self._engine_error, self._engine_checked_at = exc, time.monotonic()
            raise
        self._engine_error, self._engine_checked_at = None, time.monotonic()

    async def check_engine(self) -> None:
        """Raise EngineUnavailable unless the engine answered within the last second.

        Checked before a kernel is handed out: a session whose sandbox cannot be killed,
        inspected or removed must not start.
        """
        if time.monotonic() - self._engine_checked_at >= ENGINE_CHECK_TTL_S:
            with contextlib.suppress(EngineUnavailable):
                await self.ping()
        if self._engine_error is not None:
            raise self._engine_error

    def sandbox_alive(self, kernel: DockerKernel) -> bool | None:
        """Whether the sandbox's init still runs, without an engine call; None when unknown."""
        if kernel.destroyed:
            return False
        if kernel.pidfd is None:
            return None
        readable, _, _ = select.select([kernel.pidfd], [], [], 0)
        return not readable

    async def reap_orphans(self) -> int:
        """Remove containers of execbox instances that no longer hold their lock."""
        containers = await self._call(
            "lifecycle", lambda: self._docker.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=1"})
        )
        dead: set[str] = set()
        for container in containers:
            owner = container.labels.get(LABEL_INSTANCE, "")
            if owner and owner != self.instance_id and owner not in dead and self._instance_is_dead(owner):
                dead.add(owner)
        removed = 0
        for owner in dead:
            removed += await self._remove_where({LABEL_INSTANCE: owner})
            await asyncio.to_thread(shutil.rmtree, self._settings.state_dir / owner, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(self._settings.state_dir / "instances" / f"{owner}.lock")
        return removed

    def _instance_is_dead(self, owner: str) -> bool:
        path = self._settings.state_dir / "instances" / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return True

    # ------------------------------------------------------------------ sandboxes

    async def start(self, spec: SandboxSpec) -> DockerKernel:
        kernel_id = secrets.token_hex(6)
        files = ConnectionFiles.create(self._kernels_dir / kernel_id, sandbox_uid=SANDBOX_UID)
        container_id: str | None = None
        conn: KernelConnection | None = None
        kernel: DockerKernel | None = None
        try:
            container = await self._call(
                "lifecycle", lambda: self._docker.containers.run(**self._run_args(kernel_id, spec, files))
            )
            container_id = str(container.id)
            conn = KernelConnection(files, self._zmq, max_message_bytes=self._max_message_bytes)
            kernel = DockerKernel(id=kernel_id, container_id=container_id, files=files, conn=conn, spec=spec)
            kernel.pidfd = _open_init_pidfd(container.attrs.get("State", {}).get("Pid"), container_id)
            await self._wait_ready(kernel)
            # The kernel has bound its sockets and read its connection file; no user code has
            # run yet. From here on the sandbox cannot create, rename or fill anything in the
            # directory it shares with the host.
            await asyncio.to_thread(_seal_dir, files.host_dir)
            for code in _WARM_UP:
                await conn.warm_up(code, timeout=self._settings.kernel_start_timeout_s)
            return kernel
        except BaseException as exc:
            # Nothing half-started may survive a failure or a cancellation.
            if conn is not None:
                conn.close()
            if kernel is not None and kernel.pidfd is not None:
                os.close(kernel.pidfd)
            await asyncio.shield(self._remove_quietly(container_id, files))
            if isinstance(exc, EngineUnavailable | asyncio.CancelledError):
                raise
            if isinstance(exc, KernelNotReady | docker.errors.DockerException | SandboxGone):
                raise SandboxStartFailed(f"sandbox did not start: {exc}") from exc
            raise

    async def start_worker(self, spec: SandboxSpec) -> ForkWorker:
        """Start a fork-server worker container and connect to it.

        Raises:
            EngineUnavailable, SandboxStartFailed (nothing is left behind).
        """
        worker_id = "w" + secrets.token_hex(6)
        host_dir = self._kernels_dir / worker_id
        host_dir.mkdir(mode=0o700)
        files = ConnectionFiles(host_dir=host_dir, key="")
        container_id: str | None = None
        try:
            args = self._run_args(worker_id, spec, files)
            args["command"] = ["/opt/venv/bin/python", "/opt/execbox/forkserver.py"]
            args["labels"][LABEL_ROLE] = "worker"
            container = await self._call("lifecycle", lambda: self._docker.containers.run(**args))
            container_id = str(container.id)
            reader, writer = await self._connect_worker(host_dir / "fork.sock", container_id)
            return ForkWorker(id=worker_id, container_id=container_id, dir=host_dir, reader=reader, writer=writer)
        except BaseException as exc:
            await asyncio.shield(self._remove_quietly(container_id, files))
            if isinstance(exc, EngineUnavailable | asyncio.CancelledError):
                raise
            if isinstance(exc, OSError | TimeoutError | docker.errors.DockerException | SandboxGone):
                raise SandboxStartFailed(f"batch worker did not start: {exc}") from exc
            raise

    async def _connect_worker(self, path: Path, container_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = time.monotonic() + self._settings.kernel_start_timeout_s
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path), limit=64 * 1024 * 1024)
                writer.write(b'{"op": "ping"}\n')
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 10)
                if b"pong" in line:
                    return reader, writer
                writer.close()
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the fork server did not answer")
            attrs = await self._call("control", lambda: self._docker.api.inspect_container(container_id))
            if not attrs["State"]["Running"]:
                raise SandboxStartFailed(f"batch worker exited with code {attrs['State']['ExitCode']}")
            await asyncio.sleep(0.05)

    async def destroy_worker(self, worker: ForkWorker) -> None:
        if worker.destroyed:
            return
        worker.destroyed = True
        worker.writer.close()
        await self._remove_quietly(worker.container_id, ConnectionFiles(host_dir=worker.dir, key=""))

    async def _wait_ready(self, kernel: DockerKernel) -> None:
        deadline = time.monotonic() + self._settings.kernel_start_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                await kernel.conn.wait_ready(timeout=min(1.0, max(remaining, 0.05)))
                return
            except KernelNotReady:
                if remaining <= 0:
                    raise
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
        for fd in (kernel.cgroup or {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
        kernel.cgroup = {}
        if kernel.pidfd is not None:
            os.close(kernel.pidfd)
            kernel.pidfd = None
        await self._remove_quietly(kernel.container_id, kernel.files)

    async def activate(self, kernel: DockerKernel) -> None:
        """Give a leased kernel the normal CPU weight (spares run at a low one). Never raises."""
        with contextlib.suppress(SandboxGone, EngineUnavailable, docker.errors.APIError):
            await self._call(
                "control", lambda: self._docker.api.update_container(kernel.container_id, cpu_shares=ACTIVE_CPU_SHARES)
            )

    async def update_limits(self, kernel: DockerKernel, spec: SandboxSpec) -> None:
        """Change a running sandbox's memory and CPU limits (used when a session asks for its own).

        Raises:
            InvalidLimits: the engine refused the limits (e.g. memory below what the kernel uses).
        """
        # Off the request's path: the first cells may run at the spare weight for a few ms.
        task = asyncio.get_running_loop().create_task(self.activate(kernel))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if spec == kernel.spec:
            return
        mem = f"{spec.memory_mb}m"
        try:
            await self._call(
                "control",
                lambda: self._docker.api.update_container(
                    kernel.container_id,
                    mem_limit=mem,
                    memswap_limit=mem,
                    cpu_period=100_000,
                    cpu_quota=int(spec.cpus * 100_000),
                )
            )
        except docker.errors.APIError as exc:
            raise InvalidLimits(f"the sandbox refused these limits: {exc.explanation}") from exc
        kernel.spec = spec

    async def inspect(self, kernel: DockerKernel) -> SandboxState:
        """How the sandbox is doing: the engine's view, or the init's pidfd when the engine is away.

        Raises:
            EngineUnavailable: the engine does not answer and the pidfd cannot tell.
        """
        try:
            attrs = await self._call("control", lambda: self._docker.api.inspect_container(kernel.container_id))
        except SandboxGone:
            return SandboxState(SandboxStatus.GONE)
        except EngineUnavailable:
            # An unreachable engine says nothing about the kernel, which is reached over IPC:
            # answer from the pidfd when we have one (dockerd's stop ends its containers).
            alive = self.sandbox_alive(kernel)
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

    async def kill(self, kernel: DockerKernel) -> None:
        """SIGKILL everything in the sandbox (the init forwards nothing: the cgroup dies)."""
        with contextlib.suppress(SandboxGone, docker.errors.APIError):
            await self._call("control", lambda: self._docker.api.kill(kernel.container_id, signal="SIGKILL"))

    async def signal(self, kernel: DockerKernel, sig: str) -> None:
        """Send a signal to the kernel through the container's init (e.g. SIGINT)."""
        with contextlib.suppress(SandboxGone, docker.errors.APIError):
            await self._call("control", lambda: self._docker.api.kill(kernel.container_id, signal=sig))

    async def sweep_processes(self, kernel: DockerKernel) -> bool:
        """Kill every process in the sandbox except its init and the kernel itself.

        Used after a timeout or an interrupt that the kernel survived: children that ignore
        SIGINT (a subprocess, a CPU bomb, a fork bomb's copies) would otherwise live on.
        Returns False when the sweep could not be done (the caller then replaces the sandbox).
        """
        try:
            code, out, _err = await self._exec(kernel, [*_PYTHON, _SWEEP_HELPER], user="0:0")
        except (SandboxGone, EngineUnavailable, docker.errors.APIError, OSError) as exc:
            log.warning("process sweep of sandbox %s failed: %s", kernel.short_id, exc)
            return False
        if code != 0 or not out.startswith(b"swept"):
            log.warning("process sweep of sandbox %s did not finish (exit %s)", kernel.short_id, code)
            return False
        return True

    # ------------------------------------------------------------------ files

    async def files(self, kernel: DockerKernel, op: str, path: str, data: bytes | None = None) -> Any:
        """Put, get or list files under the sandbox's working directory.

        A helper of the image does the work inside the sandbox with the sandbox user's file
        access (see sandbox_images/python/execbox_files.py); the bytes travel over the exec's
        stdin and stdout. The host never opens, stats or changes a path the sandbox can write.

        Raises:
            FileRequestError: the path was refused or does not exist, the file is too large,
                or the sandbox did not answer in time.
            SandboxGone: the container no longer exists.
        """
        limit = self._settings.max_file_bytes
        command = [*_PYTHON, _FILES_HELPER, op, path, str(limit)]
        try:
            code, out, err = await self._exec(
                kernel, command, user="0:0", stdin=data, max_output=limit + 2 * 1024 * 1024
            )
        except docker.errors.APIError as exc:
            raise FileRequestError("sandbox_unavailable", f"the sandbox refused: {exc.explanation}") from exc
        except (TimeoutError, OSError) as exc:
            raise FileRequestError(
                "sandbox_unavailable", f"the sandbox did not complete the file request in time ({exc!r}); retry"
            ) from exc
        header, _, body = out.partition(b"\n")
        try:
            # A listing can be large (10,000 entries): decode it off the event loop.
            answer = json.loads(header) if len(header) < 65_536 else await asyncio.to_thread(json.loads, header)
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            detail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {code}"]
            raise FileRequestError(
                "sandbox_unavailable", f"the sandbox did not answer the file request: {detail[0][:500]}"
            ) from exc
        if "error" in answer:
            raise FileRequestError(str(answer["error"]), str(answer.get("message", "")))
        if op == "get":
            if len(body) != answer.get("size"):
                raise FileRequestError("sandbox_unavailable", "the file changed while it was copied; retry")
            return body
        return answer

    async def _exec(
        self,
        kernel: DockerKernel,
        command: list[str],
        *,
        user: str,
        stdin: bytes | None = None,
        max_output: int = 1 << 20,
    ) -> tuple[int | None, bytes, bytes]:
        """Run ``command`` in the sandbox; return (exit code, stdout, stderr), each stream bounded.

        The whole exchange has a deadline (HELPER_TIMEOUT_S); its blocking part runs in the
        ``exec`` thread pool, apart from the calls that kill and inspect.

        Raises:
            SandboxGone, EngineUnavailable, docker.errors.APIError, TimeoutError, OSError.
        """
        deadline = time.monotonic() + HELPER_TIMEOUT_S

        def run() -> tuple[int | None, bytes, bytes]:
            api = self._docker.api
            exec_id = api.exec_create(
                kernel.container_id, command, user=user, workdir="/", stdin=stdin is not None, environment={}
            )["Id"]
            sock = api.exec_start(exec_id, socket=True)
            raw = getattr(sock, "_sock", sock)
            try:
                raw.settimeout(max(0.1, deadline - time.monotonic()))
                if stdin is not None:
                    raw.sendall(stdin)
                    raw.shutdown(socket.SHUT_WR)
                out, err = _read_frames(raw, max_output, deadline)
            finally:
                sock.close()
            code = api.exec_inspect(exec_id).get("ExitCode")
            return code, out, err

        return cast(tuple[int | None, bytes, bytes], await self._call("exec", run, timeout=HELPER_TIMEOUT_S + 5))

    # ------------------------------------------------------------------ resource accounting

    def usage(self, kernel: DockerKernel) -> Usage:
        """CPU time and peak memory of the sandbox from its cgroup (None where unreadable)."""
        fds = self._cgroup_fds(kernel)
        cpu = _pread_int(fds.get("cpuacct.usage"))
        if cpu is None:
            usec = _pread_keyed(fds.get("cpu.stat"), "usage_usec")
            cpu = usec * 1000 if usec is not None else None
        peak = _pread_int(fds.get("memory.max_usage_in_bytes")) or _pread_int(fds.get("memory.peak"))
        return Usage(cpu_ns=cpu, peak_memory_bytes=peak)

    def reset_peak_memory(self, kernel: DockerKernel) -> None:
        fds = self._cgroup_fds(kernel)
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            fd = fds.get(name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.pwrite(fd, b"0\n", 0)

    def _cgroup_fds(self, kernel: DockerKernel) -> dict[str, int]:
        # Opened once per kernel and read with pread: on the hot path of every execution,
        # path lookups and opens cost more than the reads.
        if kernel.cgroup is None:
            cid = kernel.container_id
            found = {
                "cpuacct.usage": (_cgroup_file(cid, "cpuacct", "cpuacct.usage"), os.O_RDONLY),
                "cpu.stat": (_cgroup_file(cid, "", "cpu.stat"), os.O_RDONLY),
                "memory.max_usage_in_bytes": (_cgroup_file(cid, "memory", "memory.max_usage_in_bytes"), os.O_RDWR),
                "memory.peak": (_cgroup_file(cid, "", "memory.peak"), os.O_RDWR),
            }
            kernel.cgroup = {}
            for name, (path, mode) in found.items():
                if path is not None:
                    with contextlib.suppress(OSError):
                        kernel.cgroup[name] = os.open(path, mode | os.O_CLOEXEC)
        return kernel.cgroup

    # ------------------------------------------------------------------ helpers

    @property
    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            raise EngineUnavailable("the Docker backend is not open")
        return self._client

    def _run_args(self, kernel_id: str, spec: SandboxSpec, files: ConnectionFiles) -> dict[str, Any]:
        s = self._settings
        mem = f"{spec.memory_mb}m"
        tmpfs_opts = f"size={s.tmpfs_mb}m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700,nosuid,nodev"
        return {
            "image": s.image,
            "detach": True,
            "init": True,
            "name": f"execbox-{self.instance_id}-{kernel_id}",
            "hostname": "sandbox",
            # Root only for the init, which then belongs to another user than the code; the
            # kernel drops to SANDBOX_UID at once (execbox_kernel.py) and keeps no capability.
            "user": "0:0",
            "network_mode": "none",
            "cap_drop": ["ALL"],
            "cap_add": ["SETUID", "SETGID", "KILL"],  # KILL: the root init forwards signals to the kernel
            "security_opt": ["no-new-privileges"],
            "read_only": True,
            "tmpfs": {"/home/sandbox": tmpfs_opts, "/tmp": f"size={s.tmpfs_mb}m,mode=1777,nosuid,nodev"},
            "mem_limit": mem,
            "memswap_limit": mem,
            "pids_limit": s.pids_limit,
            # Period/quota rather than nano_cpus: only these can be changed on a running
            # container, which is how a warm kernel gets a session's own CPU limit.
            "cpu_period": 100_000,
            "cpu_quota": int(spec.cpus * 100_000),
            # Spares start at a low CPU weight: starting one costs ~1 s of CPU, which must not be
            # taken from sessions that are running code. Raised when the kernel is leased.
            "cpu_shares": SPARE_CPU_SHARES,
            "ulimits": [docker.types.Ulimit(name="nofile", soft=1024, hard=1024)],
            "ipc_mode": "private",
            # Its own cgroup namespace: the sandbox sees "/" instead of the engine's paths.
            "cgroupns": "private",
            # Docker lets any user bind ports below 1024 in a container; restore the default.
            "sysctls": {"net.ipv4.ip_unprivileged_port_start": "1024"},
            "volumes": {str(files.host_dir): {"bind": files.container_dir, "mode": "rw"}},
            "working_dir": "/home/sandbox",
            "environment": {
                "EXECBOX_PREIMPORT": s.preimport,
                # Thread pools sized to the CPU quota, not to the host's cores: threads count
                # against the pids limit and oversubscription only slows the sandbox down.
                **{var: str(max(1, math.ceil(spec.cpus))) for var in _THREAD_VARS},
                "EXECBOX_MAX_MESSAGE_CHARS": str(s.max_output_bytes_limit),
            },
            "labels": {
                LABEL_MANAGED: "1",
                LABEL_INSTANCE: self.instance_id,
                LABEL_KERNEL: kernel_id,
                LABEL_ROLE: "kernel",
            },
            # The kernel's own stdout is never read, and code can write to it through
            # /proc/1/fd/1: no log driver, so a flood costs the engine no JSON encoding.
            "log_config": docker.types.LogConfig(type="none"),
        }

    async def _remove_quietly(self, container_id: str | None, files: ConnectionFiles | None) -> None:
        if container_id is not None:
            try:
                await self._call("control", lambda: self._docker.api.remove_container(container_id, force=True))
            except SandboxGone:
                pass
            except (EngineUnavailable, docker.errors.APIError) as exc:
                # The orphan reaper of the next start-up removes what is left here.
                log.warning("could not remove sandbox %s: %s", container_id[:12], exc)
        if files is not None:
            # Sealed (root-owned, nothing the sandbox can add), but a directory walk is still
            # file-system work: off the event loop.
            await asyncio.to_thread(shutil.rmtree, files.host_dir, ignore_errors=True)

    async def _remove_where(self, labels: dict[str, str]) -> int:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        containers = await self._call("lifecycle", lambda: self._docker.containers.list(all=True, filters=filters))
        for container in containers:
            with contextlib.suppress(SandboxGone, EngineUnavailable, docker.errors.APIError):
                await self._call("control", functools.partial(container.remove, force=True))
        return len(containers)

    async def _call(self, purpose: str, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run a blocking docker-py call in ``purpose``'s thread pool under a deadline.

        Translates engine errors; a call that does not return in time raises
        EngineUnavailable (its thread is abandoned, the pool stays bounded).
        """
        if timeout is None:
            timeout = LIFECYCLE_TIMEOUT_S if purpose == "lifecycle" else CONTROL_TIMEOUT_S
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pools[purpose], fn), timeout)
        except TimeoutError as exc:
            raise EngineUnavailable(
                f"the Docker engine did not answer within {timeout:g}s ({purpose} call); retry later", retry_after=5
            ) from exc
        except docker.errors.NotFound as exc:
            raise SandboxGone(str(exc)) from exc
        except _ENGINE_ERRORS as exc:
            raise EngineUnavailable(
                "the Docker engine is unreachable; is dockerd running? (scripts/ensure-docker.sh starts it)",
                retry_after=5,
            ) from exc
        except docker.errors.DockerException as exc:
            if isinstance(exc, docker.errors.APIError):
                raise
            raise EngineUnavailable(f"the Docker engine is unavailable: {exc}", retry_after=5) from exc


def _cgroup_file(container_id: str, controller: str, name: str) -> Path | None:
    root = Path("/sys/fs/cgroup")
    candidates = [
        root / controller / "docker" / container_id / name,
        root / controller / "system.slice" / f"docker-{container_id}.scope" / name,
    ]
    for path in candidates:
        if path.exists():
            return path
    return None


def _pread_int(fd: int | None) -> int | None:
    if fd is None:
        return None
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pread_keyed(fd: int | None, key: str) -> int | None:
    if fd is None:
        return None
    try:
        for line in os.pread(fd, 4096, 0).decode().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


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


def _seal_dir(path: Path) -> None:
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


_FRAME = struct.Struct(">BxxxL")


def _read_frames(sock: socket.socket, limit: int, deadline: float) -> tuple[bytes, bytes]:
    """Read the engine's multiplexed exec stream (8-byte frame headers) until EOF.

    Raises:
        TimeoutError: the deadline passed first.
        OSError: the output grew past ``limit`` bytes.
    """
    streams = {1: bytearray(), 2: bytearray()}
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the sandbox helper did not finish in time")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            raise
        except OSError:
            chunk = b""
        buf += chunk
        while len(buf) >= _FRAME.size:
            kind, size = _FRAME.unpack_from(buf)
            if len(buf) < _FRAME.size + size:
                break
            out = streams.get(kind)
            if out is not None:
                out += buf[_FRAME.size : _FRAME.size + size]
                if len(out) > limit:
                    raise OSError(f"the sandbox helper wrote more than {limit} bytes")
            del buf[: _FRAME.size + size]
        if not chunk:
            return bytes(streams[1]), bytes(streams[2])
