"""The service's listeners: the API on ``host:port``, and the keyless SandboxFusion listener beside it.

Both are uvicorn servers in one process and one event loop, sharing one app (one pool, one set
of workers). The main server runs the app's lifespan and owns the signals; the second runs with
its lifespan off, serves only the SandboxFusion routes (:func:`~execbox_server.api.sandboxfusion.
keyless_listener`) and follows the main one: it starts accepting once the services exist, and on
shutdown it stops accepting and drains before the lifespan removes the containers its requests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from execbox_server.api.sandboxfusion import keyless_listener
from execbox_server.edge import guarded_protocol
from execbox_server.settings import Settings

__all__ = ["Listeners"]


class _Follower(uvicorn.Server):
    """The keyless listener: stopped by the main server, never by a signal of its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Main(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, follower: _Follower | None, follower_socket: socket.socket | None
    ) -> None:
        super().__init__(config)
        self.follower = follower
        self._follower_socket = follower_socket
        self._follower_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.follower is not None:
            self.follower.should_exit = True
            self.follower.force_exit = self.force_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the lifespan first: the services exist before a request
        if self.follower is not None and self._follower_socket is not None and not self.should_exit:
            follower_sockets = [self._follower_socket]
            self._follower_task = asyncio.get_running_loop().create_task(self.follower.serve(follower_sockets))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.follower is not None:
            self.follower.should_exit = True
            for server in getattr(self, "servers", []):
                server.close()  # both ports stop accepting at once
            if self._follower_task is not None:
                await self._follower_task  # its requests end before the lifespan removes their sandboxes
            elif self._follower_socket is not None:
                self._follower_socket.close()
        await super().shutdown(sockets)


class Listeners:
    """The uvicorn servers of one service process.

    The keyless listener's socket is bound when this is built, before anything starts: a port
    that is taken fails the process at once, not after the pool has started containers.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        follower = None
        follower_socket = None
        if settings.sandboxfusion_port:
            key = settings.sandboxfusion_key.get_secret_value() if settings.sandboxfusion_key is not None else None
            config = _config(
                keyless_listener(app, key=key if settings.api_keys else None),
                settings,
                host=settings.sandboxfusion_host,
                port=settings.sandboxfusion_port,
                lifespan="off",
            )
            follower = _Follower(config)
            follower_socket = config.bind_socket()
        self.main = _Main(
            _config(app, settings, host=settings.host, port=settings.port, lifespan="on"), follower, follower_socket
        )
        self.sandboxfusion = follower
        self.sandboxfusion_socket = follower_socket

    async def serve(self) -> None:
        """Serve until SIGINT/SIGTERM (or :meth:`stop`); return once both listeners are down."""
        await self.main.serve()

    def stop(self) -> None:
        self.main.should_exit = True

    @property
    def started(self) -> bool:
        return self.main.started and (self.sandboxfusion is None or self.sandboxfusion.started)


def _config(
    app: ASGIApp, settings: Settings, *, host: str, port: int, lifespan: Literal["on", "off"]
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        # pyzmq's asyncio integration measured ~1 ms slower per execution under uvloop.
        loop="asyncio",
        # httptools plus the deadlines uvicorn lacks (request head, stalled body): slowloris.
        http=guarded_protocol(header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s),
        lifespan=lifespan,
        log_level="info",
        # SIGTERM: stop accepting, let running requests finish this long, then the lifespan
        # shutdown removes every container.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        log_config=None,
        # Longer than clients' idle pools keep connections, so a reused connection is not
        # closed under a request (an ambiguous failure a client must not retry blindly).
        timeout_keep_alive=75,
    )
