"""The engine: one docker-py client, engine calls under deadlines, and instance ownership.

Every blocking docker-py call runs in the thread pool of its purpose (``control``: inspect,
kill, signal, update, remove; ``lifecycle``: create, list, connect; ``exec``: helpers run in a
sandbox) under a deadline, so a slow file copy never delays a kill and a hung call never
holds the service: it raises EngineUnavailable and its thread is abandoned.

Ownership: containers carry ``execbox.instance=<id>``; the instance holds an flock on
``<state_dir>/instances/<id>.lock`` for as long as it lives. At start-up, containers of an
instance whose lock can be taken are orphans of a crashed process and are removed; a live
neighbour's lock cannot be taken, so its containers are never touched.

``docker.errors`` never leave this package: they become ``EngineUnavailable``,
``SandboxStartFailed`` or ``SandboxGone``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
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

__all__ = ["LABEL_INSTANCE", "LABEL_KERNEL", "LABEL_MANAGED", "LABEL_ROLE", "Engine", "Purpose"]

log = logging.getLogger("execbox.backend")

LABEL_MANAGED = "execbox.managed"
LABEL_INSTANCE = "execbox.instance"
LABEL_KERNEL = "execbox.kernel"
LABEL_ROLE = "execbox.role"

Purpose = Literal["control", "lifecycle", "exec"]
CONTROL_TIMEOUT_S = 20.0  # inspect, kill, signal, update, remove
LIFECYCLE_TIMEOUT_S = 90.0  # create+start of a container, listing, the client itself
REMOVAL_RETRY_S = 600.0  # how long a removal that met an engine outage keeps being retried
_POOL_SIZES: dict[Purpose, int] = {"control": 8, "lifecycle": 4, "exec": 4}

_ENGINE_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)

T = TypeVar("T")


class Engine:
    def __init__(self, settings: Settings, *, instance_id: str | None = None) -> None:
        self.settings = settings
        self.instance_id = instance_id or secrets.token_hex(6)
        # Per-kernel IPC directories of this instance live here.
        self.kernels_dir = settings.state_dir / self.instance_id
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
        fd = os.open(instances / f"{self.instance_id}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        self._client = await self.call(
            "lifecycle",
            lambda: (
                docker.DockerClient(base_url=settings.docker_url or None, timeout=30, max_pool_size=32)
                if settings.docker_url
                else docker.from_env(timeout=30, max_pool_size=32)
            ),
        )
        await self.ping()
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
                os.unlink(self.settings.state_dir / "instances" / f"{self.instance_id}.lock")
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
        """Remove containers of execbox instances that no longer hold their lock."""
        containers = await self._list({"label": f"{LABEL_MANAGED}=1"})
        dead: set[str] = set()
        for container in containers:
            owner = (container.get("Labels") or {}).get(LABEL_INSTANCE, "")
            if owner and owner != self.instance_id and owner not in dead and self._instance_is_dead(owner):
                dead.add(owner)
        removed = 0
        for owner in dead:
            removed += await self.remove_where({LABEL_INSTANCE: owner})
            await asyncio.to_thread(shutil.rmtree, self.settings.state_dir / owner, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(self.settings.state_dir / "instances" / f"{owner}.lock")
        return removed

    def _instance_is_dead(self, owner: str) -> bool:
        path = self.settings.state_dir / "instances" / f"{owner}.lock"
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
