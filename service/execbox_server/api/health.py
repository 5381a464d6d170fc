"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from execbox._codes import ErrorCode
from execbox_server.api.deps import ServicesDep
from execbox_server.api.openapi import error_responses
from execbox_server.errors import EngineUnavailable, PoolWarming

router = APIRouter(tags=["health"], responses=error_responses(ErrorCode.INTERNAL_ERROR))


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/readyz",
    responses=error_responses(ErrorCode.ENGINE_UNAVAILABLE, ErrorCode.POOL_WARMING),
    summary="Ready to serve: engine reachable and the pool warm",
)
async def readyz(services: ServicesDep) -> Any:
    try:
        # Cached: this route is open to anyone, and one engine call per probe is a lever.
        await services.backend.check_engine()
    except EngineUnavailable as exc:
        return exc.response()
    stats = services.pool.stats()
    if not services.pool.warm:
        return PoolWarming(f"the pool has {stats.ready} of {stats.min_ready} warm kernels ready").response()
    return JSONResponse(
        {
            "status": "ready",
            "pool": {"ready": stats.ready, "starting": stats.starting, "leased": stats.leased},
        }
    )
