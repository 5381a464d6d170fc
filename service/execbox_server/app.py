"""The FastAPI application: ``create_app(settings)`` builds backend -> pool -> sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from prometheus_client.core import CounterMetricFamily, Metric
from pydantic import SecretStr
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from execbox._models import InfoImage
from execbox_server.api import batch, execute, files, gateway, health, info, sandboxfusion, sessions
from execbox_server.api.deps import Services, authenticate
from execbox_server.api.openapi import install_openapi, operation_id
from execbox_server.backends.base import SandboxSpec, ServiceBackend
from execbox_server.backends.docker import DockerBackend
from execbox_server.batch import BatchRunner
from execbox_server.errors import RequestTooLarge, Unauthorized, install_error_handlers
from execbox_server.executor import Executor
from execbox_server.gateway import GatewayHub
from execbox_server.observability import Metrics, RequestLog, gauge
from execbox_server.pool import KernelPool
from execbox_server.quotas import QuotaLimits, Quotas
from execbox_server.sessions import SessionManager
from execbox_server.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("execbox")

VERSION = "0.1.0"


def create_app(settings: Settings, *, backend: ServiceBackend | None = None) -> FastAPI:
    """Build the service. Nothing starts until the app's lifespan runs (uvicorn does that)."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sandbox_backend: ServiceBackend = backend or DockerBackend(settings)
        await sandbox_backend.open()
        spec = SandboxSpec(memory_mb=settings.memory_mb, cpus=settings.cpus)
        pool: KernelPool[Any] = KernelPool(
            sandbox_backend,
            spec=spec,
            min_ready=settings.min_ready,
            max_total=settings.max_total,
            max_starting=settings.max_starting,
            max_ready=settings.max_ready,
        )
        manager = SessionManager(settings, pool, Executor(sandbox_backend), sandbox_backend, metrics=metrics)
        batch_runner = BatchRunner(settings, sandbox_backend, metrics=metrics)
        app.state.services = Services(
            settings=settings,
            backend=sandbox_backend,
            pool=pool,
            sessions=manager,
            batch=batch_runner,
            metrics=metrics,
            quotas=Quotas(QuotaLimits.from_settings(settings), sessions_held=lambda owner: len(manager.list(owner))),
        )
        engine = sandbox_backend.engine if isinstance(sandbox_backend, DockerBackend) else None
        app.state.image = InfoImage(
            name=settings.image,
            id=engine.image_id if engine else None,
            digest=engine.image_digest if engine else None,
        )
        metrics.observe_gauges(lambda: _live_metrics(app.state.services))
        pool.start()
        manager.start()
        batch_runner.start()
        if not settings.api_keys:
            log.warning(
                "no EXECBOX_API_KEYS set: authentication is off, listening on loopback only (%s)",
                settings.host,
            )
        log.info(
            "execbox instance %s (node %s) serving image %s",
            sandbox_backend.instance_id,
            settings.node_name or "-",
            settings.image,
        )
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
        generate_unique_id_function=operation_id,
    )
    app.state.gateway = GatewayHub()  # the Kernel Gateway's open websockets, per session
    install_openapi(app)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(info.router)
    app.include_router(sessions.router)
    app.include_router(execute.router)
    app.include_router(batch.router)
    app.include_router(files.router)
    app.include_router(sandboxfusion.router)
    app.include_router(gateway.router)
    # The last added runs first: RequestLog -> KeyCheck -> BodySizeLimit. The key is checked
    # before the size: an unauthenticated caller learns nothing, and no body byte is read for
    # it. (That a client still sending its body can read such an early answer is the HTTP
    # protocol's part: see execbox_server.edge.)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_code_bytes * 2 + 65_536,
        batch_max_bytes=settings.max_batch_body_bytes,
        file_max_bytes=settings.max_file_bytes + 65_536,
    )
    app.add_middleware(KeyCheck, keys=settings.api_keys)
    app.add_middleware(RequestLog, metrics=metrics)
    if settings.node_name:
        # Outermost: every answer says its node, the middlewares' own refusals (401, 413) too.
        app.add_middleware(NodeHeader, node=settings.node_name)
    return app


def _live_metrics(services: Services) -> list[Metric]:
    stats = services.pool.stats()
    batch = services.batch.stats()
    starts = CounterMetricFamily("execbox_kernel_starts", "Kernel starts by result.", labels=["result"])
    starts.add_metric(["ok"], stats.starts)
    starts.add_metric(["failed"], stats.start_failures)
    return [
        gauge(
            "execbox_pool_kernels",
            "Kernels by state.",
            {"ready": stats.ready, "starting": stats.starting, "leased": stats.leased},
            "state",
        ),
        gauge("execbox_pool_waiting", "Requests waiting for a kernel.", {"": stats.waiting}),
        gauge("execbox_pool_max_total", "Most kernels alive at once.", {"": stats.max_total}),
        gauge("execbox_sessions", "Open sessions.", {"": services.sessions.count}),
        gauge(
            "execbox_batch_workers",
            "Batch workers by state.",
            {"alive": batch["alive"], "idle": batch["idle"]},
            "state",
        ),
        starts,
    ]


async def _shutdown(services: Services) -> None:
    tasks = list(services.tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await services.sessions.close()
    await services.batch.close()
    await services.pool.close()
    await services.backend.close()


class KeyCheck:
    """Refuse an API request (``/v1``, the SandboxFusion routes) without a valid key before any byte
    of its body is read.

    FastAPI reads and parses a request's body before it resolves dependencies, so the check
    in ``get_owner`` alone lets anyone make the server read and parse up to the body limit.
    """

    def __init__(self, app: ASGIApp, *, keys: list[SecretStr]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and self.keys and (_is_api_path(path) or gateway.is_gateway_path(path)):
            authorization = _header(scope, b"authorization").decode("latin-1")
            if gateway.is_gateway_path(path):
                # The Kernel Gateway's clients send "token KEY" or ?token=KEY.
                authorization = gateway.gateway_authorization(Headers(scope=scope), QueryParams(scope["query_string"]))
            try:
                authenticate(self.keys, authorization)
            except Unauthorized as exc:
                await exc.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return b""


def _is_api_path(path: str) -> bool:
    if path == info.INFO_PATH:
        return False  # open like /readyz: a proxy's health check has no key
    return path == "/v1" or path.startswith("/v1/") or path in sandboxfusion.SANDBOXFUSION_PATHS


class NodeHeader:
    """Add ``X-Execbox-Node: <node>`` to every HTTP response, so a proxy or client that sent a
    request to a pool of instances learns which one answered (and holds the session it made)."""

    def __init__(self, app: ASGIApp, *, node: str) -> None:
        self.app = app
        self.header = (b"x-execbox-node", node.encode("ascii"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_node(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_node)


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, also when no Content-Length is sent."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, batch_max_bytes: int, file_max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.batch_max_bytes = batch_max_bytes
        self.file_max_bytes = file_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        # A SandboxFusion request is a one-job batch, files included (base64 in the JSON body).
        if path.startswith("/v1/batch") or path in sandboxfusion.SANDBOXFUSION_PATHS:
            limit, setting = self.batch_max_bytes, "EXECBOX_MAX_BATCH_BODY_BYTES"
        elif "/files/" in path:
            limit, setting = self.file_max_bytes, "EXECBOX_MAX_FILE_BYTES"
        else:
            limit, setting = self.max_bytes, "EXECBOX_MAX_CODE_BYTES"
        message = f"request body is larger than {limit} bytes; send less ({setting})"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await RequestTooLarge(message).response()(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise _TooLarge(message)
            return msg

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await RequestTooLarge(message).response()(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    # An HTTPException, because FastAPI turns any other error raised while it reads the body
    # into "400 There was an error parsing the body"; this one it re-raises, and the app's
    # handler answers 413 request_too_large.
    def __init__(self, message: str) -> None:
        super().__init__(413, detail=message)
