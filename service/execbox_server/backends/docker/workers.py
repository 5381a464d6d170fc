"""Batch workers: a fork server per container, reached over a unix socket in its host directory."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import docker.errors
from execbox_server.backends.base import SandboxGone, SandboxSpec
from execbox_server.backends.docker.containers import container_args
from execbox_server.backends.docker.engine import Engine
from execbox_server.errors import EngineUnavailable, SandboxStartFailed
from execbox_server.worker_protocol import ProtocolError, VersionMismatch, decode_pong, encode_ping

__all__ = ["ForkWorker", "ForkWorkers"]


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


class ForkWorkers:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def start(self, spec: SandboxSpec) -> ForkWorker:
        """Start a fork-server worker container and connect to it.

        Raises:
            EngineUnavailable, SandboxStartFailed (nothing is left behind).
        """
        engine = self._engine
        worker_id = "w" + secrets.token_hex(6)
        # Owned by the service's user, 0700: the fork server (root in the container) binds its
        # socket here; the jobs it runs as the sandbox user cannot write to it.
        host_dir = engine.kernels_dir / worker_id
        host_dir.mkdir(mode=0o700)
        container_id: str | None = None
        args = container_args(engine.settings, engine.instance_id, worker_id, spec, host_dir, role="worker")
        args["command"] = ["/opt/venv/bin/python", "/opt/execbox/forkserver.py"]
        try:
            container = await engine.call("lifecycle", lambda: engine.docker.containers.run(**args))
            container_id = str(container.id)
            reader, writer = await self._connect(host_dir / "fork.sock", container_id)
            return ForkWorker(id=worker_id, container_id=container_id, dir=host_dir, reader=reader, writer=writer)
        except BaseException as exc:
            # By name when run() failed half-way: created but not started leaves a container.
            await asyncio.shield(engine.remove(container_id or args["name"], host_dir))
            if isinstance(exc, EngineUnavailable | asyncio.CancelledError):
                raise
            if isinstance(exc, OSError | TimeoutError | docker.errors.DockerException | SandboxGone):
                raise SandboxStartFailed(f"batch worker did not start: {exc}") from exc
            raise

    async def _connect(self, path: Path, container_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        engine = self._engine
        deadline = time.monotonic() + engine.settings.kernel_start_timeout_s
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path), limit=64 * 1024 * 1024)
                writer.write(encode_ping())
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 10)
                try:
                    decode_pong(line)
                    return reader, writer
                except VersionMismatch as exc:  # an image of another tree: retrying cannot help
                    writer.close()
                    raise SandboxStartFailed(f"batch worker refused: {exc}") from exc
                except ProtocolError:
                    writer.close()
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the fork server did not answer")
            attrs = await engine.call("control", lambda: engine.docker.api.inspect_container(container_id))
            if not attrs["State"]["Running"]:
                raise SandboxStartFailed(f"batch worker exited with code {attrs['State']['ExitCode']}")
            await asyncio.sleep(0.05)

    async def destroy(self, worker: ForkWorker) -> None:
        if worker.destroyed:
            return
        worker.destroyed = True
        worker.writer.close()
        await self._engine.remove(worker.container_id, worker.dir)
