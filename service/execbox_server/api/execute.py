"""One-shot execution: a fresh kernel, run, destroy."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from execbox._codes import ErrorCode
from execbox._models import Execution, OneShotRequest
from execbox_server.api.deps import Owner, ServicesDep
from execbox_server.api.openapi import BODY, LEASE, error_responses, stream_response
from execbox_server.api.streaming import done_event, model_response, ndjson_stream, on_client_disconnect
from execbox_server.api.validation import check_code_size

router = APIRouter(
    prefix="/v1",
    tags=["execute"],
    responses=error_responses(ErrorCode.UNAUTHORIZED, ErrorCode.INTERNAL_ERROR),
)

_ERRORS = error_responses(*BODY, *LEASE, ErrorCode.INVALID_LIMITS, ErrorCode.QUOTA_EXCEEDED)


@router.post("/execute", response_model=Execution, responses=_ERRORS, summary="Run code once in a fresh sandbox")
async def execute(body: OneShotRequest, request: Request, services: ServicesDep, owner: Owner) -> Response:
    check_code_size(body.code, services.settings)
    async with services.quotas.one_shot(owner):
        kernel, limits = await services.sessions.lease_one_shot(body)
        interrupted = asyncio.Event()
        async with on_client_disconnect(request, interrupted.set):
            execution = await services.sessions.run_one_shot(kernel, limits, body.code, interrupted=interrupted)
    return model_response(execution)


@router.post(
    "/execute/stream",
    responses={**_ERRORS, **stream_response("ExecutionStreamLine", "NDJSON events, the last one `done`")},
    response_class=Response,
    summary="Run code once in a fresh sandbox, streaming events as NDJSON",
)
async def execute_stream(body: OneShotRequest, services: ServicesDep, owner: Owner) -> Response:
    check_code_size(body.code, services.settings)
    # Taken before the stream starts (a 429, not an error line in a 200 stream); given back
    # when the execution ends.
    slot = services.quotas.one_shot(owner)
    try:
        kernel, limits = await services.sessions.lease_one_shot(body)
    except BaseException:
        slot.release()
        raise
    interrupted = asyncio.Event()
    return ndjson_stream(
        lambda emit: slot.hold(
            done_event(
                services.sessions.run_one_shot(kernel, limits, body.code, on_event=emit, interrupted=interrupted)
            )
        ),
        on_disconnect=interrupted.set,
        tasks=services.tasks,
        when_full="drop",
        on_done=slot.release,
    )
