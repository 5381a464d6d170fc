"""``GET /v1/info``: one instance described for a proxy, an autoscaler and a multi-node client.

Open without a key, like /readyz: a proxy's health check and an autoscaler have none, and it
says nothing secret (names, sizes and counts). Answered from memory: no engine call but the
cached probe /readyz uses too.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Request

from execbox._codes import ErrorCode
from execbox._models import Info, InfoCapacity, InfoImage, InfoKernelStart, InfoLoad
from execbox_server.api.deps import Services, ServicesDep
from execbox_server.api.openapi import error_responses
from execbox_server.batch import batch_lanes
from execbox_server.errors import EngineUnavailable

__all__ = ["INFO_PATH", "describe", "router"]

INFO_PATH = "/v1/info"

router = APIRouter(tags=["health"], responses=error_responses(ErrorCode.INTERNAL_ERROR))


@router.get(INFO_PATH, response_model=Info, summary="This instance: node, version, image, capacity and load")
async def info(request: Request, services: ServicesDep) -> Info:
    accepting = services.pool.warm
    if accepting:
        try:
            await services.backend.check_engine()  # at most one engine call a second
        except EngineUnavailable:
            accepting = False
    image: InfoImage = request.app.state.image
    return describe(services, image=image, version=request.app.version, accepting=accepting)


def describe(services: Services, *, image: InfoImage, version: str, accepting: bool) -> Info:
    s = services.settings
    pool = services.pool.stats()
    batch = services.batch.stats()
    starts = services.backend.kernel_starts
    return Info(
        node=s.node_name,
        instance_id=services.backend.instance_id,
        version=version,
        accepting=accepting,
        image=image,
        capacity=InfoCapacity(
            max_sessions=s.max_sessions,
            max_kernels=s.max_total,
            min_ready=s.min_ready,
            batch_workers=s.batch_workers,
            batch_lanes=batch_lanes(s, s.batch_max_jobs),
            batch_max_jobs=s.batch_max_jobs,
            max_batch_body_bytes=s.max_batch_body_bytes,
            max_code_bytes=s.max_code_bytes,
            cpus=os.cpu_count() or 1,
        ),
        load=InfoLoad(
            sessions=services.sessions.count,
            sessions_busy=services.sessions.busy_count,
            kernels_ready=pool.ready,
            kernels_starting=pool.starting,
            kernels_leased=pool.leased,
            kernel_waiters=pool.waiting,
            batch_workers_alive=batch["alive"],
            batch_workers_busy=max(0, batch["alive"] - batch["idle"]),
            load_average_1m=round(os.getloadavg()[0], 2),
        ),
        kernel_start=InfoKernelStart(
            mode="restore" if starts.mode == "restore" else "boot",
            reason=starts.reason,
            restored=starts.restored,
            booted=starts.booted,
        ),
    )
