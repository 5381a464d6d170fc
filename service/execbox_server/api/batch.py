"""Batch execution: many isolated one-shot programs in one request."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from execbox._codes import ErrorCode
from execbox._models import BatchRequest, BatchResponse, JobResult
from execbox_server.api.deps import Owner, ServicesDep
from execbox_server.api.openapi import BODY, LEASE, error_responses, stream_response
from execbox_server.api.streaming import model_response, ndjson_stream, on_client_disconnect
from execbox_server.api.validation import check_code_size
from execbox_server.batch import batch_lanes
from execbox_server.errors import RequestTooLarge
from execbox_server.limits import ResolvedJob, batch_jobs
from execbox_server.settings import Settings

router = APIRouter(
    prefix="/v1",
    tags=["batch"],
    responses=error_responses(ErrorCode.UNAUTHORIZED, ErrorCode.INTERNAL_ERROR),
)

_ERRORS = error_responses(*BODY, *LEASE, ErrorCode.INVALID_LIMITS, ErrorCode.QUOTA_EXCEEDED)


def _check(body: BatchRequest, settings: Settings) -> list[ResolvedJob]:
    """The batch's jobs with their limits, or the reason the whole batch is refused.

    Everything is checked before a quota is taken or a job runs: a batch is refused whole,
    never half run.
    """
    if len(body.jobs) > settings.batch_max_jobs:
        raise RequestTooLarge(
            f"{len(body.jobs)} jobs in one batch; this server accepts at most {settings.batch_max_jobs} "
            "(EXECBOX_BATCH_MAX_JOBS): split the batch"
        )
    for job in body.jobs:
        check_code_size(job.code, settings)
    return batch_jobs(settings, body.jobs)


def _lanes(body: BatchRequest, settings: Settings) -> int:
    """Workers this batch would use without a quota (the runner's own rule)."""
    return batch_lanes(settings, len(body.jobs), body.concurrency)


@router.post(
    "/batch",
    response_model=BatchResponse,
    responses=_ERRORS,
    summary="Run many programs, each in a fresh forked process; results in input order",
)
async def run_batch(body: BatchRequest, request: Request, services: ServicesDep, owner: Owner) -> Response:
    jobs = _check(body, services.settings)
    results: list[JobResult] = []

    async def collect(result: JobResult) -> None:
        results.append(result)

    async with services.quotas.batch(owner, _lanes(body, services.settings)) as slot:
        # Fewer lanes than asked when the key's share is partly used: slower, same results.
        task = asyncio.ensure_future(services.batch.run(owner, jobs, collect, concurrency=slot.granted))

        def stop() -> None:
            task.cancel()  # the client went away: stop feeding workers

        async with on_client_disconnect(request, stop):
            summary = await task
    results.sort(key=lambda r: r.index)
    return model_response(BatchResponse(results=results, summary=summary))


@router.post(
    "/batch/stream",
    responses={
        **_ERRORS,
        **stream_response("BatchStreamLine", "One `result` line per job as it completes, then `summary`"),
    },
    response_class=Response,
    summary="Run many programs; stream each result as NDJSON in completion order",
)
async def run_batch_stream(body: BatchRequest, services: ServicesDep, owner: Owner) -> Response:
    jobs = _check(body, services.settings)
    # Taken now so that "over quota" is a 429 and "no worker free" a 503 with Retry-After,
    # not a line in a 200 stream; the quota is given back when the batch ends.
    slot = services.quotas.batch(owner, _lanes(body, services.settings))
    try:
        first = await services.batch.reserve(owner)
    except BaseException:
        slot.release()
        raise
    return ndjson_stream(
        lambda emit: slot.hold(services.batch.run(owner, jobs, emit, concurrency=slot.granted, first=first)),
        tasks=services.tasks,  # a client that goes away cancels the batch: workers stop being fed
    )
