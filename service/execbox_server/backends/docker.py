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
import contextlib
import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
SANDBOX_UID = 1000

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

# Run inside the sandbox by sweep_processes. The kernel is the oldest child of the init
# running execbox_kernel.py (orphaned copies of a forking kernel are re-parented to the init
# too, but start later); everything else but the init and this script is killed, in a few
# passes to catch what forks meanwhile.
_SWEEP = """
import os, signal
me = os.getpid()
def procs():
    for name in os.listdir('/proc'):
        if name.isdigit() and int(name) not in (1, me):
            try:
                stat = open(f'/proc/{name}/stat').read().rsplit(')', 1)[1].split()
                cmd = open(f'/proc/{name}/cmdline', 'rb').read()
            except OSError:
                continue
            yield int(name), stat[1], int(stat[19]), cmd
found = list(procs())
kernels = sorted((start, pid) for pid, ppid, start, cmd in found
                 if ppid == '1' and b'execbox_kernel.py' in cmd)
keep = kernels[0][1] if kernels else None
for _ in range(3):
    for pid, _ppid, _start, _cmd in procs():
        if pid != keep:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
"""


class FileRequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Run inside the sandbox as the sandbox user: argv = op, relative path, transfer file, max bytes.
_FILES = r"""
import json, os, shutil, stat, sys
op, rel, xfer, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ROOT = '/home/sandbox'
def done(**answer):
    print(json.dumps(answer)); sys.exit(0)
def fail(code, message):
    done(error=code, message=message)
if '\0' in rel or rel.startswith('/') or '\\' in rel:
    fail('invalid_path', 'give a path relative to the working directory, without NUL or backslashes')
parts = [p for p in rel.split('/') if p not in ('', '.')]
if any(p == '..' for p in parts):
    fail('invalid_path', "'..' is not allowed: paths stay inside the working directory")
if op != 'list' and not parts:
    fail('invalid_path', 'give a file name')
cur = ROOT
for i, part in enumerate(parts):
    cur = os.path.join(cur, part)
    last = i == len(parts) - 1
    try:
        st = os.lstat(cur)
    except FileNotFoundError:
        if op == 'put':
            if not last:
                os.mkdir(cur, 0o755)
            continue
        fail('file_not_found', f'no such file or directory: {rel}')
    if stat.S_ISLNK(st.st_mode):
        fail('invalid_path', f'{"/".join(parts[: i + 1])} is a symlink; symlinks are not followed')
    if not last and not stat.S_ISDIR(st.st_mode):
        fail('invalid_path', f'{"/".join(parts[: i + 1])} is not a directory')
if op == 'list':
    if not os.path.isdir(cur):
        fail('invalid_path', f'{rel} is not a directory')
    entries = []
    with os.scandir(cur) as it:
        for e in sorted(it, key=lambda e: e.name):
            st = e.stat(follow_symlinks=False)
            kind = 'dir' if e.is_dir(follow_symlinks=False) else 'symlink' if e.is_symlink() else 'file'
            entries.append({'name': e.name, 'path': '/'.join(parts + [e.name]), 'size': st.st_size, 'type': kind})
    done(entries=entries)
flags = os.O_NOFOLLOW
if op == 'put':
    fd = os.open(cur, flags | os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with open(fd, 'wb') as dst, open(xfer, 'rb') as src:
        shutil.copyfileobj(src, dst)
    done(path='/'.join(parts), size=os.path.getsize(cur))
fd = os.open(cur, flags | os.O_RDONLY)
st = os.fstat(fd)
if not stat.S_ISREG(st.st_mode):
    fail('invalid_path', f'{rel} is not a regular file')
if st.st_size > limit:
    fail('file_too_large', f'{rel} is {st.st_size} bytes; the limit is {limit} (EXECBOX_MAX_FILE_BYTES)')
with open(fd, 'rb') as src, open(xfer, 'wb') as dst:
    shutil.copyfileobj(src, dst)
done(path='/'.join(parts), size=st.st_size)
"""

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
        shutil.rmtree(self._kernels_dir, ignore_errors=True)
        self._zmq.destroy(linger=0)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._settings.state_dir / "instances" / f"{self.instance_id}.lock")
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._client is not None:
            self._client.close()
            self._client = None

    async def ping(self) -> None:
        """Raises EngineUnavailable unless the engine answers."""
        await self._call(lambda: self._docker.ping())

    async def reap_orphans(self) -> int:
        """Remove containers of execbox instances that no longer hold their lock."""
        containers = await self._call(
            lambda: self._docker.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=1"})
        )
        dead: set[str] = set()
        for container in containers:
            owner = container.labels.get(LABEL_INSTANCE, "")
            if owner and owner != self.instance_id and owner not in dead and self._instance_is_dead(owner):
                dead.add(owner)
        removed = 0
        for owner in dead:
            removed += await self._remove_where({LABEL_INSTANCE: owner})
            shutil.rmtree(self._settings.state_dir / owner, ignore_errors=True)
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
        try:
            container = await self._call(lambda: self._docker.containers.run(**self._run_args(kernel_id, spec, files)))
            container_id = str(container.id)
            conn = KernelConnection(files, self._zmq, max_message_bytes=self._max_message_bytes)
            kernel = DockerKernel(id=kernel_id, container_id=container_id, files=files, conn=conn, spec=spec)
            await self._wait_ready(kernel)
            for code in _WARM_UP:
                await conn.warm_up(code, timeout=self._settings.kernel_start_timeout_s)
            return kernel
        except BaseException as exc:
            # Nothing half-started may survive a failure or a cancellation.
            if conn is not None:
                conn.close()
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
            container = await self._call(lambda: self._docker.containers.run(**args))
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
            attrs = await self._call(lambda: self._docker.api.inspect_container(container_id))
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
        await self._remove_quietly(kernel.container_id, kernel.files)

    async def activate(self, kernel: DockerKernel) -> None:
        """Give a leased kernel the normal CPU weight (spares run at a low one). Never raises."""
        with contextlib.suppress(SandboxGone, EngineUnavailable, docker.errors.APIError):
            await self._call(
                lambda: self._docker.api.update_container(kernel.container_id, cpu_shares=ACTIVE_CPU_SHARES)
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
        try:
            attrs = await self._call(lambda: self._docker.api.inspect_container(kernel.container_id))
        except SandboxGone:
            return SandboxState(SandboxStatus.GONE)
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
            await self._call(lambda: self._docker.api.kill(kernel.container_id, signal="SIGKILL"))

    async def signal(self, kernel: DockerKernel, sig: str) -> None:
        """Send a signal to the kernel through the container's init (e.g. SIGINT)."""
        with contextlib.suppress(SandboxGone, docker.errors.APIError):
            await self._call(lambda: self._docker.api.kill(kernel.container_id, signal=sig))

    async def sweep_processes(self, kernel: DockerKernel) -> None:
        """Kill every process in the sandbox except its init and the kernel itself.

        Used after a timeout or an interrupt that the kernel survived: children that ignore
        SIGINT (a subprocess, a CPU bomb, a fork bomb's copies) would otherwise live on.
        """
        try:
            await self._call(
                lambda: self._docker.api.exec_start(
                    self._docker.api.exec_create(
                        kernel.container_id, ["/opt/venv/bin/python", "-c", _SWEEP], user=f"{SANDBOX_UID}"
                    )["Id"]
                )
            )
        except (SandboxGone, EngineUnavailable, docker.errors.APIError) as exc:
            log.warning("process sweep of sandbox %s failed: %s", kernel.short_id, exc)

    # ------------------------------------------------------------------ files

    async def files(self, kernel: DockerKernel, op: str, path: str, data: bytes | None = None) -> Any:
        """Put, get or list files under the sandbox's working directory.

        The work happens inside the sandbox, as the sandbox user, by a small script that
        refuses absolute paths, ``..`` and symlinks anywhere on the way; bytes travel through
        the per-kernel directory both sides already share (tmpfs is invisible to ``docker cp``).

        Raises:
            FileRequestError: the path was refused or does not exist, or the file is too large.
        """
        token = secrets.token_hex(8)
        xfer = kernel.files.host_dir / f"xfer-{token}"
        argv = [op, path, f"{kernel.files.container_dir}/xfer-{token}", str(self._settings.max_file_bytes)]
        command = ["/opt/venv/bin/python", "-I", "-c", _FILES, *argv]
        try:
            if data is not None:
                xfer.write_bytes(data)
                os.chown(xfer, SANDBOX_UID, SANDBOX_UID)
            try:
                exec_id = await self._call(
                    lambda: self._docker.api.exec_create(kernel.container_id, command, user=str(SANDBOX_UID))["Id"]
                )
                out = await self._call(lambda: self._docker.api.exec_start(exec_id, demux=True))
            except docker.errors.APIError as exc:
                raise FileRequestError("sandbox_unavailable", f"the sandbox refused: {exc.explanation}") from exc
            stdout = (out[0] or b"") if isinstance(out, tuple) else out
            try:
                answer = json.loads(stdout.decode("utf-8", "replace").strip().splitlines()[-1])
            except (ValueError, IndexError) as exc:
                raise FileRequestError("internal", f"the sandbox did not answer the file request: {exc}") from exc
            if "error" in answer:
                raise FileRequestError(answer["error"], answer["message"])
            if op == "get":
                return xfer.read_bytes()
            return answer
        finally:
            with contextlib.suppress(OSError):
                xfer.unlink()

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
                await self._call(lambda: self._docker.api.remove_container(container_id, force=True))
            except SandboxGone:
                pass
            except (EngineUnavailable, docker.errors.APIError) as exc:
                # The orphan reaper of the next start-up removes what is left here.
                log.warning("could not remove sandbox %s: %s", container_id[:12], exc)
        if files is not None:
            shutil.rmtree(files.host_dir, ignore_errors=True)

    async def _remove_where(self, labels: dict[str, str]) -> int:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        containers = await self._call(lambda: self._docker.containers.list(all=True, filters=filters))
        for container in containers:
            with contextlib.suppress(SandboxGone, docker.errors.APIError):
                await self._call(lambda c=container: c.remove(force=True))
        return len(containers)

    async def _call(self, fn: Any) -> Any:
        """Run a blocking docker-py call in a thread; translate engine errors."""
        try:
            return await asyncio.to_thread(fn)
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
