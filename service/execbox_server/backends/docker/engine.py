"""The engine: one docker-py client, engine calls under deadlines, and instance ownership.

Every blocking docker-py call runs in the thread pool of its purpose (``control``: inspect,
kill, signal, update, remove; ``lifecycle``: create, list, connect; ``exec``: helpers run in a
sandbox) under a deadline, so a slow file copy never delays a kill and a hung call never
holds the service: it raises EngineUnavailable and its thread is abandoned.

Ownership: the instance holds an flock on ``<state_dir>/instances/<id>.lock`` for as long as it
lives, and its containers carry ``execbox.instance=<id>``, ``execbox.lock=<that lock's absolute
path>`` and, with a node name, ``execbox.node=<node>``. Several instances may share one engine,
each with its own state dir. At start-up an instance removes another instance's containers only
when that instance is provably gone (see :meth:`Engine.reap_orphans`): its lock exists and can be
taken, or, the lock file being missing, the containers are this very node's (an earlier
incarnation of it) or no longer running. A container whose lock file is missing and that still
runs for another node is left alone and logged: a missing file proves nothing (the lock may
live in another mount namespace, or a live instance's state dir was wiped), and a leaked
container costs less than a killed session.

``docker.errors`` never leave this package: they become ``EngineUnavailable``,
``SandboxStartFailed`` or ``SandboxGone``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import enum
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import requests.exceptions

import docker
import docker.errors
from execbox_server.backends.base import SandboxGone
from execbox_server.backends.probe import EngineProbe
from execbox_server.errors import EngineUnavailable
from execbox_server.settings import Settings

__all__ = [
    "LABEL_INSTANCE",
    "LABEL_KERNEL",
    "LABEL_LOCK",
    "LABEL_MANAGED",
    "LABEL_NODE",
    "LABEL_ROLE",
    "Engine",
    "NodeNameInUse",
    "Purpose",
    "lock_path",
]

log = logging.getLogger("execbox.backend")

LABEL_MANAGED = "execbox.managed"
LABEL_INSTANCE = "execbox.instance"
LABEL_KERNEL = "execbox.kernel"
LABEL_ROLE = "execbox.role"
LABEL_LOCK = "execbox.lock"  # absolute path of the owning instance's lock file
LABEL_NODE = "execbox.node"  # the owning instance's node name, when it has one

Purpose = Literal["control", "lifecycle", "exec"]
CONTROL_TIMEOUT_S = 20.0  # inspect, kill, signal, update, remove
LIFECYCLE_TIMEOUT_S = 90.0  # create+start of a container, listing, the client itself
STOPPED_ORPHAN_AGE_S = 600.0  # a stopped container of an unknown owner is removed after this long
REMOVAL_RETRY_S = 600.0  # how long a removal that met an engine outage keeps being retried
_POOL_SIZES: dict[Purpose, int] = {"control": 8, "lifecycle": 4, "exec": 4}

_ENGINE_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)

T = TypeVar("T")


def lock_path(state_dir: Path, instance_id: str) -> Path:
    """Where instance ``instance_id`` holds its lock: absolute, as containers are labelled with it."""
    return state_dir.absolute() / "instances" / f"{instance_id}.lock"


class NodeNameInUse(RuntimeError):
    """A live instance on this engine already serves this node name (ids would be ambiguous)."""


class LockState(enum.Enum):
    HELD = "held"  # its instance lives
    FREE = "free"  # its instance is dead: the flock died with the process
    MISSING = "missing"  # proves nothing


class Engine:
    def __init__(self, settings: Settings, *, instance_id: str | None = None) -> None:
        self.settings = settings
        self.instance_id = instance_id or secrets.token_hex(6)
        # Per-kernel IPC directories of this instance live here.
        self.kernels_dir = settings.state_dir / self.instance_id
        self.lock_path = lock_path(settings.state_dir, self.instance_id)
        # The sandbox image as the engine knows it, read once at open() (for GET /v1/info).
        self.image_id: str | None = None
        self.image_digest: str | None = None
        self._client: docker.DockerClient | None = None
        self._lock_fd: int | None = None
        self._pools = {
            purpose: concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix=f"engine-{purpose}")
            for purpose, size in _POOL_SIZES.items()
        }
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe = EngineProbe(self.ping, tasks=self._tasks)

    @property
    def docker(self) -> docker.DockerClient:
        if self._client is None:
            raise EngineUnavailable("the Docker backend is not open")
        return self._client

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, claim this instance's lock and reap orphans of dead instances.

        Raises:
            EngineUnavailable: the engine does not answer.
            PermissionError: the service does not run as root (see below).
        """
        if os.geteuid() != 0:
            # Each sandbox gets a directory owned by the sandbox user for its sockets, sealed
            # (given to root, 0755) once the kernel is up. Without root that takes world-writable
            # directories, which a host user could fill or swap things into: refuse instead.
            raise PermissionError(
                "execbox must run as root (it controls the Docker engine, which is root anyway): without it, "
                "sandbox socket directories would have to be world-writable"
            )
        settings = self.settings
        instances = settings.state_dir / "instances"
        instances.mkdir(parents=True, exist_ok=True)
        self.kernels_dir.mkdir(parents=True, exist_ok=True)
        # The sandbox user must traverse to its own socket dir; the dirs below are 0700.
        settings.state_dir.chmod(0o711)
        self.kernels_dir.chmod(0o711)
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        # For whoever finds the lock (an operator, another instance's log): whose it is.
        record = {"instance": self.instance_id, "node": settings.node_name, "pid": os.getpid()}
        os.write(fd, json.dumps(record).encode() + b"\n")
        self._client = await self.call(
            "lifecycle",
            lambda: (
                docker.DockerClient(base_url=settings.docker_url or None, timeout=30, max_pool_size=32)
                if settings.docker_url
                else docker.from_env(timeout=30, max_pool_size=32)
            ),
        )
        await self.ping()
        await self._read_image()
        removed = await self.reap_orphans()
        if removed:
            log.info("removed %d orphaned sandbox container(s) of dead instances", removed)

    async def close(self) -> None:
        """Remove every container this instance owns, then release the instance lock."""
        if self._client is not None:
            with contextlib.suppress(EngineUnavailable):
                await self.remove_where({LABEL_INSTANCE: self.instance_id})
        await asyncio.to_thread(shutil.rmtree, self.kernels_dir, ignore_errors=True)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._client is not None:
            self._client.close()
            self._client = None
        for task in list(self._tasks):
            task.cancel()
        for pool in self._pools.values():
            # Threads stuck in a hung engine call are abandoned, not waited for.
            pool.shutdown(wait=False, cancel_futures=True)

    async def ping(self) -> None:
        """Raises EngineUnavailable unless the engine answers (an engine call each time)."""
        await self.call("control", lambda: self.docker.ping())

    async def check(self) -> None:
        """Raises EngineUnavailable unless the engine answered; at most one ping a second."""
        await self._probe.check()

    # ------------------------------------------------------------------ ownership

    async def reap_orphans(self) -> int:
        """Remove the containers of instances that are provably gone; return how many.

        Another instance's containers are removed when
          1. its lock file exists and its flock can be taken (the process that held it died), or
          2. its lock file is missing and the containers carry this instance's node name: an
             earlier incarnation of this node whose state dir was wiped (a pod restarted
             without a hostPath); a node name is unique among live instances, which
             ``NodeNameInUse`` enforces wherever the lock is visible, or
          3. its lock file is missing and the container stopped over ``STOPPED_ORPHAN_AGE_S``
             ago (a host reboot that emptied /run leaves these): nothing live is lost, and a live
             owner deals with a container of its that stopped within seconds.
        Any other container is left alone and logged with the command that removes it.

        Raises:
            NodeNameInUse: a live instance serves this instance's node name.
        """
        containers = await self._list({"label": f"{LABEL_MANAGED}=1"})
        doomed: list[str] = []
        dead: dict[str, Path] = {}  # instance -> its lock, reaped: its files are removed too
        kept: dict[str, int] = {}  # instance -> containers left alone
        locks: dict[str, LockState] = {}
        node = self.settings.node_name
        for container in containers:
            labels = container.get("Labels") or {}
            owner = labels.get(LABEL_INSTANCE, "")
            if not owner or owner == self.instance_id:
                continue
            # Containers of instances older than the lock label: their lock is where this
            # instance would keep it (the rule before several state dirs were supported).
            lock = Path(labels.get(LABEL_LOCK) or lock_path(self.settings.state_dir, owner))
            if owner not in locks:
                locks[owner] = await asyncio.to_thread(_lock_state, lock)
            state = locks[owner]
            mine = node is not None and labels.get(LABEL_NODE) == node
            if state is LockState.HELD:
                if mine:
                    raise NodeNameInUse(
                        f"node name {node!r} is served by live instance {owner} on this engine (lock {lock}): "
                        "each instance needs its own EXECBOX_NODE_NAME"
                    )
                continue
            if state is LockState.FREE:
                dead[owner] = lock
            elif not mine and not await self._stopped_long_ago(container):
                kept[owner] = kept.get(owner, 0) + 1
                continue
            doomed.append(str(container["Id"]))
        for container_id in doomed:
            with contextlib.suppress(SandboxGone, EngineUnavailable, docker.errors.APIError):
                await self._remove_now(container_id)
        for owner, lock in dead.items():
            if owner in (".", "..") or "/" in owner:
                continue  # a label is anyone's text: never a path that leaves the state dir
            await asyncio.to_thread(shutil.rmtree, lock.parent.parent / owner, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(lock)
        for owner, count in kept.items():
            log.warning(
                "left %d running sandbox container(s) of instance %s alone: its lock file is not visible here, so "
                "whether it lives cannot be told; if it is gone, remove them with "
                "`docker rm -f $(docker ps -aq --filter label=%s=%s)`",
                count,
                owner,
                LABEL_INSTANCE,
                owner,
            )
        return len(doomed)

    async def _stopped_long_ago(self, container: dict[str, Any]) -> bool:
        if container.get("State") not in ("exited", "dead"):
            return False
        try:
            state = await self.call("control", lambda: self.docker.api.inspect_container(container["Id"]))
        except (SandboxGone, EngineUnavailable, docker.errors.APIError):
            return False
        finished = _parse_engine_time(str((state.get("State") or {}).get("FinishedAt", "")))
        return finished is not None and time.time() - finished > STOPPED_ORPHAN_AGE_S

    async def _read_image(self) -> None:
        try:
            image = await self.call("control", lambda: self.docker.api.inspect_image(self.settings.image))
        except (SandboxGone, EngineUnavailable, docker.errors.APIError) as exc:
            # Not fatal here: a missing image fails the first kernel start with a clear error.
            log.warning("could not inspect the sandbox image %s: %s", self.settings.image, exc)
            return
        self.image_id = image.get("Id")
        digests = image.get("RepoDigests") or []
        self.image_digest = digests[0] if digests else None

    # ------------------------------------------------------------------ containers

    async def remove(self, container_id: str | None, host_dir: Path | None) -> None:
        """Remove a container and its host directory. Never raises."""
        if container_id is not None:
            try:
                await self._remove_now(container_id)
            except SandboxGone:
                pass
            except EngineUnavailable as exc:
                # Retried in the background until the engine is back, so an outage leaves no
                # dead container behind (the next start-up's reaper is the last resort).
                log.warning("could not remove sandbox %s yet: %s", container_id[:12], exc)
                self._retry_removal(container_id)
            except docker.errors.APIError as exc:
                # The orphan reaper of the next start-up removes what is left here.
                log.warning("could not remove sandbox %s: %s", container_id[:12], exc)
        if host_dir is not None:
            # Sealed (nothing the sandbox can add), but a directory walk is still file-system
            # work: off the event loop.
            await asyncio.to_thread(shutil.rmtree, host_dir, ignore_errors=True)

    def _retry_removal(self, container_id: str) -> None:
        async def retry() -> None:
            delay = 1.0
            deadline = time.monotonic() + REMOVAL_RETRY_S
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                try:
                    await self._remove_now(container_id)
                except SandboxGone:
                    return
                except (EngineUnavailable, docker.errors.APIError):
                    continue
                log.info("removed sandbox %s after the engine came back", container_id[:12])
                return

        task = asyncio.get_running_loop().create_task(retry())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def remove_where(self, labels: dict[str, str]) -> int:
        containers = await self._list({"label": [f"{k}={v}" for k, v in labels.items()]})
        for container in containers:
            with contextlib.suppress(SandboxGone, EngineUnavailable, docker.errors.APIError):
                await self._remove_now(str(container["Id"]))
        return len(containers)

    async def _remove_now(self, container_id: str) -> None:
        await self.call("control", lambda: self.docker.api.remove_container(container_id, force=True))

    async def _list(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        # The engine's list as it answers it, in one call: docker-py's containers.list() inspects
        # each container after listing, and one removed meanwhile (by a neighbour instance)
        # would fail the whole listing.
        answer = await self.call("lifecycle", lambda: self.docker.api.containers(all=True, filters=filters))
        return list(answer)

    async def call(self, purpose: Purpose, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run a blocking docker-py call in ``purpose``'s thread pool under a deadline.

        Raises:
            SandboxGone: the engine does not know the container.
            EngineUnavailable: the engine is unreachable or did not answer in time (the
                call's thread is abandoned; the pool stays bounded).
            docker.errors.APIError: the engine refused the call (callers in this package
                translate it).
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


def _lock_state(path: Path) -> LockState:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return LockState.MISSING
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return LockState.HELD
    finally:
        # Closing drops the flock taken just now: the reaper only wanted to know.
        os.close(fd)
    return LockState.FREE


def _parse_engine_time(value: str) -> float | None:
    """Seconds since the epoch of an engine timestamp (RFC 3339, nanoseconds), or None."""
    try:
        stamp = datetime.datetime.fromisoformat(value[:19]).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return stamp.timestamp() if stamp.year > 1 else None  # year 1: never started or stopped
