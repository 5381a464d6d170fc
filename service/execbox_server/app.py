"""The FastAPI application: ``create_app(settings)`` builds backend -> pool -> sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from execbox_server.api import batch, execute, health, sessions
from execbox_server.api.deps import Services
from execbox_server.backends.base import SandboxSpec
from execbox_server.backends.docker import DockerBackend
from execbox_server.batch import BatchRunner
from execbox_server.errors import error_response, install_error_handlers
from execbox_server.executor import Executor
from execbox_server.pool import KernelPool
from execbox_server.sessions import SessionManager
from execbox_server.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("execbox")

VERSION = "0.1.0"


def create_app(settings: Settings, *, backend: DockerBackend | None = None) -> FastAPI:
    """Build the service. Nothing starts until the app's lifespan runs (uvicorn does that)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        docker_backend = backend or DockerBackend(settings)
        await docker_backend.open()
        spec = SandboxSpec(memory_mb=settings.memory_mb, cpus=settings.cpus)
        pool: KernelPool[Any] = KernelPool(
            docker_backend,
            spec=spec,
            min_ready=settings.min_ready,
            max_total=settings.max_total,
            max_starting=settings.max_starting,
        )
        manager = SessionManager(settings, pool, Executor(docker_backend), docker_backend.update_limits)
        batch_runner = BatchRunner(settings, docker_backend)
        app.state.services = Services(
            settings=settings, backend=docker_backend, pool=pool, sessions=manager, batch=batch_runner
        )
        pool.start()
        manager.start()
        batch_runner.start()
        if not settings.api_keys:
            log.warning(
                "no EXECBOX_API_KEYS set: authentication is off, listening on loopback only (%s)",
                settings.host,
            )
        log.info("execbox instance %s serving image %s", docker_backend.instance_id, settings.image)
        try:
            yield
        finally:
            # Shielded: a second Ctrl-C must not leave containers behind.
            await asyncio.shield(_shutdown(app.state.services))

    app = FastAPI(
        title="execbox",
        version=VERSION,
        summary="Code execution sandbox for code LLMs: warm Jupyter kernels in locked-down containers.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(execute.router)
    app.include_router(batch.router)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_code_bytes * 2 + 65_536,
        batch_max_bytes=settings.max_batch_body_bytes,
    )
    return app


async def _shutdown(services: Services) -> None:
    tasks = list(services.tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await services.sessions.close()
    await services.batch.close()
    await services.pool.close()
    await services.backend.close()


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, also when no Content-Length is sent."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, batch_max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.batch_max_bytes = batch_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_batch = str(scope.get("path", "")).startswith("/v1/batch")
        limit = self.batch_max_bytes if is_batch else self.max_bytes
        setting = "EXECBOX_MAX_BATCH_BODY_BYTES" if is_batch else "EXECBOX_MAX_CODE_BYTES"
        message = f"request body is larger than {limit} bytes; send less ({setting})"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await error_response(413, "request_too_large", message)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await error_response(413, "request_too_large", message)(scope, receive, send)


class _TooLarge(Exception):
    pass
