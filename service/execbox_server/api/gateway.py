"""The Jupyter Kernel Gateway API (``jupyter-websocket`` mode) on execbox sessions.

A gateway kernel is an execbox session: ``POST /api/kernels`` leases a warm kernel from the
same pool, under the same limits, quotas and idle TTL, and it shows in ``GET /v1/sessions``
and in metrics. Its kernel id is the session id written as a UUID (jupyter_server routes
UUID-shaped ids only): ``s_0123...`` <-> ``01234567-89ab-cdef-0123-456700000000``.

Auth: ``Authorization: token KEY`` (the gateway clients' scheme), ``Authorization: Bearer KEY``
and ``?token=KEY`` all stand for the execbox API key KEY; a key sees its own kernels only.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, WebSocket, status
from starlette.datastructures import Headers, QueryParams

from execbox._codes import ErrorCode
from execbox._models import SessionCreate
from execbox_server.api.deps import ServicesDep, authenticate
from execbox_server.api.openapi import BODY, LEASE, error_responses
from execbox_server.api.streaming import model_response
from execbox_server.errors import SessionNotFound, Unauthorized
from execbox_server.gateway import GatewayHub, KernelChannels, WireProtocol, restart_kernel
from execbox_server.gateway.models import (
    V1_SUBPROTOCOL,
    ApiVersion,
    KernelModel,
    KernelSpec,
    KernelSpecFile,
    KernelSpecs,
    KernelStart,
    iso_date,
)
from execbox_server.sessions import SessionEntry
from execbox_server.settings import Settings

__all__ = ["GATEWAY_PREFIX", "gateway_authorization", "is_gateway_path", "kernel_id", "router", "session_id_of"]

GATEWAY_PREFIX = "/api"
KERNEL_NAME = "python3"
# The Kernel Gateway release whose REST and websocket API this follows.
GATEWAY_API_VERSION = "3.0.1"

# Issue 15 (SVC): a session id may end in ".<node>"; the kernel id keeps only the random part
# (UUID-shaped) and the session registry takes an id without a node as its own.
_SESSION_ID = re.compile(r"s_([0-9a-f]{24})(?:\.[a-z0-9-]+)?")
_KERNEL_ID = re.compile(r"([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})00000000")


def kernel_id(session_id: str) -> str | None:
    """The UUID-shaped kernel id of an execbox session id (None for an id of another shape)."""
    match = _SESSION_ID.fullmatch(session_id)
    if match is None:
        return None
    h = match.group(1)
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:24]}00000000"


def session_id_of(kernel: str) -> str | None:
    match = _KERNEL_ID.fullmatch(kernel.lower())
    return "s_" + "".join(match.groups()) if match is not None else None


def is_gateway_path(path: str) -> bool:
    return path == GATEWAY_PREFIX or path.startswith(GATEWAY_PREFIX + "/")


def gateway_authorization(headers: Headers, query: QueryParams) -> str:
    """The caller's key as an ``Authorization: Bearer`` value, from any of the gateway's forms."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and token.strip():
        return f"Bearer {token.strip()}"
    if query.get("token"):
        return f"Bearer {query['token']}"
    return ""


async def gateway_owner(request: Request, services: ServicesDep) -> str | None:
    """Raises Unauthorized: keys are configured and the request carries none that matches."""
    return authenticate(services.settings.api_keys, gateway_authorization(request.headers, request.query_params))


GatewayOwner = Annotated[str | None, Depends(gateway_owner)]


def _hub(request: Request | WebSocket) -> GatewayHub:
    hub: GatewayHub = request.app.state.gateway
    return hub


def _session(services: ServicesDep, owner: str | None, kernel: str) -> SessionEntry:
    session_id = session_id_of(kernel)
    if session_id is None:
        raise SessionNotFound(f"no kernel {kernel!r}; it may have expired or been deleted")
    try:
        return services.sessions.get(owner, session_id)
    except SessionNotFound as exc:
        raise SessionNotFound(f"no kernel {kernel!r}; it may have expired or been deleted") from exc


def _model(session: SessionEntry, hub: GatewayHub) -> KernelModel:
    kid = kernel_id(session.id)
    assert kid is not None  # listed sessions are filtered by kernel_id
    return KernelModel(
        id=kid,
        name=KERNEL_NAME,
        last_activity=iso_date(session.last_used_at),
        execution_state="busy" if session.busy else "idle",
        connections=hub.connections(session.id),
    )


def _spec(settings: Settings) -> KernelSpec:
    return KernelSpec(
        name=KERNEL_NAME,
        spec=KernelSpecFile(
            argv=["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="Python 3 (execbox sandbox)",
            language="python",
            interrupt_mode="message",
            metadata={
                "execbox": {
                    "image": settings.image,
                    "memory_mb": settings.memory_mb,
                    "cpus": settings.cpus,
                    "timeout_s": settings.default_timeout_s,
                    "network": False,
                }
            },
        ),
    )


router = APIRouter(
    prefix=GATEWAY_PREFIX,
    tags=["jupyter kernel gateway"],
    # INVALID_REQUEST: FastAPI's own 422 for a malformed path or query, in our envelope.
    responses=error_responses(ErrorCode.UNAUTHORIZED, ErrorCode.INTERNAL_ERROR, ErrorCode.INVALID_REQUEST),
)
_KERNEL = error_responses(ErrorCode.SESSION_NOT_FOUND)


@router.get("", response_model=ApiVersion, summary="The gateway API version")
async def api_version(owner: GatewayOwner) -> ApiVersion:
    return ApiVersion(version=GATEWAY_API_VERSION)


@router.get("/kernelspecs", response_model=KernelSpecs, summary="The one kernel spec: Python 3 in a sandbox")
async def kernelspecs(services: ServicesDep, owner: GatewayOwner) -> KernelSpecs:
    return KernelSpecs(default=KERNEL_NAME, kernelspecs={KERNEL_NAME: _spec(services.settings)})


@router.get(
    "/kernelspecs/{name}",
    response_model=KernelSpec,
    responses=error_responses(ErrorCode.NOT_FOUND),
    summary="A kernel spec",
)
async def kernelspec(name: str, services: ServicesDep, owner: GatewayOwner) -> KernelSpec:
    if name != KERNEL_NAME:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no kernel spec {name!r}; this server offers {KERNEL_NAME!r}")
    return _spec(services.settings)


@router.get("/kernels", response_model=list[KernelModel], summary="List your kernels (your sessions)")
async def list_kernels(request: Request, services: ServicesDep, owner: GatewayOwner) -> list[KernelModel]:
    hub = _hub(request)
    return [
        _model(services.sessions.get(owner, info.id), hub)
        for info in services.sessions.list(owner)
        if kernel_id(info.id) is not None
    ]


@router.post(
    "/kernels",
    status_code=status.HTTP_201_CREATED,
    response_model=KernelModel,
    responses=error_responses(
        *BODY, *LEASE, ErrorCode.NOT_FOUND, ErrorCode.TOO_MANY_SESSIONS, ErrorCode.QUOTA_EXCEEDED
    ),
    summary="Start a kernel: lease a warm sandbox (a new session)",
)
async def start_kernel(
    request: Request, services: ServicesDep, owner: GatewayOwner, body: KernelStart | None = None
) -> Response:
    name = (body.name if body else None) or KERNEL_NAME
    if name != KERNEL_NAME:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no kernel spec {name!r}; this server offers {KERNEL_NAME!r}")
    # ``env`` is ignored: the sandbox's environment is the image's, whatever the client sends.
    async with services.quotas.session(owner):
        info = await services.sessions.create(owner, SessionCreate())
    model = _model(services.sessions.get(owner, info.id), _hub(request))
    response = model_response(model, status.HTTP_201_CREATED)
    response.headers["Location"] = f"{GATEWAY_PREFIX}/kernels/{model.id}"
    # Issue 15 (SVC): a proxy learns which node holds this kernel from this header and X-Execbox-Node.
    response.headers["X-Execbox-Kernel"] = model.id
    return response


@router.get("/kernels/{kernel}", response_model=KernelModel, responses=_KERNEL, summary="Get a kernel")
async def get_kernel(kernel: str, request: Request, services: ServicesDep, owner: GatewayOwner) -> KernelModel:
    return _model(_session(services, owner, kernel), _hub(request))


@router.delete(
    "/kernels/{kernel}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_KERNEL,
    summary="Shut a kernel down: delete its session and container",
)
async def delete_kernel(kernel: str, request: Request, services: ServicesDep, owner: GatewayOwner) -> Response:
    session = _session(services, owner, kernel)
    hub = _hub(request)
    hub.drop_queued(session.id)
    await services.sessions.delete(owner, session.id)
    await hub.close(session.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/kernels/{kernel}/interrupt",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_KERNEL,
    summary="Interrupt the running cell (execbox's interrupt ladder)",
)
async def interrupt_kernel(kernel: str, services: ServicesDep, owner: GatewayOwner) -> Response:
    session = _session(services, owner, kernel)
    services.sessions.interrupt(owner, session.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/kernels/{kernel}/restart",
    response_model=KernelModel,
    responses=error_responses(*LEASE, ErrorCode.SESSION_NOT_FOUND, ErrorCode.SESSION_BUSY),
    summary="Restart a kernel: stop what runs, then a fresh sandbox (variables are lost)",
)
async def restart(kernel: str, request: Request, services: ServicesDep, owner: GatewayOwner) -> KernelModel:
    session = _session(services, owner, kernel)
    hub = _hub(request)
    return _model(await restart_kernel(services, hub, owner, session.id), hub)


@router.websocket("/kernels/{kernel}/channels")
async def channels(websocket: WebSocket, kernel: str) -> None:
    """The kernel's channels as Jupyter messages: classic JSON text frames, or the
    ``v1.kernel.websocket.jupyter.org`` binary frames when the client offers that subprotocol."""
    services = websocket.app.state.services
    try:
        owner = authenticate(
            services.settings.api_keys, gateway_authorization(websocket.headers, websocket.query_params)
        )
        session = _session(services, owner, kernel)
    except (Unauthorized, SessionNotFound) as exc:
        # Before accept: the handshake is answered with 403, and the client learns nothing more.
        await websocket.close(code=1008, reason=exc.message[:120])
        return
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    protocol = WireProtocol.V1 if V1_SUBPROTOCOL in offered else WireProtocol.CLASSIC
    await websocket.accept(subprotocol=V1_SUBPROTOCOL if protocol is WireProtocol.V1 else None)
    await KernelChannels(
        websocket, services=services, hub=_hub(websocket), owner=owner, session_id=session.id, protocol=protocol
    ).serve()
