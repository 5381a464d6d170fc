"""SandboxFusion's routes (``/run_code``, ``/run_jupyter``, ``/v1/ping``) on execbox's workers and kernels.

The wire models and their translation live in :mod:`execbox_server.compat.sandboxfusion`; here
they meet the services, with the rest of the API's auth, quotas, limits and metrics. Overload
is a fast 504 with Retry-After (``queue_timeout``): verl retries a 504 and nothing else, and
a request queued past the caller's own HTTP timeout would be scored as a failed program.

:func:`keyless_listener` serves these routes (and only these) on a second port without an
API key, as the owner of ``EXECBOX_SANDBOXFUSION_KEY``: verl's URL carries no credentials.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from execbox._codes import ErrorCode
from execbox._models import ExecuteRequest, Execution, SessionCreate
from execbox_server.api.deps import Owner, Services, ServicesDep
from execbox_server.api.openapi import BODY, error_responses
from execbox_server.api.streaming import model_response, on_client_disconnect
from execbox_server.api.validation import check_code_size
from execbox_server.backends.base import FileRequestError, SandboxGone
from execbox_server.compat.sandboxfusion import (
    JupyterPlan,
    RunCodeRequest,
    RunCodeResponse,
    RunJupyterRequest,
    RunJupyterResponse,
    jupyter_plan,
    jupyter_response,
    run_code_job,
    run_code_response,
    stops_notebook,
    unsupported_language,
)
from execbox_server.errors import (
    PoolExhausted,
    QueueTimeout,
    QuotaExceeded,
    SandboxUnavailable,
    SessionNotFound,
    error_response,
    file_error,
)
from execbox_server.quotas import Slot

__all__ = ["SANDBOXFUSION_PATHS", "keyless_listener", "router"]

# SandboxFusion serves these at its root; so does execbox (verl's URL is the full /run_code URL).
SANDBOXFUSION_PATHS = frozenset({"/run_code", "/run_jupyter", "/v1/ping"})
QUOTA_POLL_S = 0.05

router = APIRouter(
    tags=["sandboxfusion"],
    responses=error_responses(ErrorCode.UNAUTHORIZED, ErrorCode.INTERNAL_ERROR),
)

_WAITS = (
    ErrorCode.QUEUE_TIMEOUT,
    ErrorCode.ENGINE_UNAVAILABLE,
    ErrorCode.SANDBOX_START_FAILED,
    ErrorCode.SHUTTING_DOWN,
)


@router.post(
    "/run_code",
    response_model=RunCodeResponse,
    responses=error_responses(*BODY, *_WAITS, ErrorCode.INVALID_LIMITS),
    summary="SandboxFusion: run one program (python or cpp) on a warm worker",
    description=(
        "SandboxFusion's `/run_code`: the verdict is data (HTTP 200 with `Success`, `Failed` or `SandboxError`). "
        "A request no worker could take within `EXECBOX_SANDBOXFUSION_QUEUE_S` is answered 504 with "
        "Retry-After. An unsupported language is a 200 `SandboxError` listing the supported ones."
    ),
)
async def run_code(body: RunCodeRequest, request: Request, services: ServicesDep, owner: Owner) -> Response:
    refusal = unsupported_language(body.language)
    if refusal is not None:
        return _reply("/run_code", services, refusal)
    settings = services.settings
    check_code_size(body.code, settings)
    resolved = run_code_job(body, settings)
    deadline = time.monotonic() + settings.sandboxfusion_queue_s
    async with await _batch_share(services, owner, deadline, "/run_code"):
        task = asyncio.ensure_future(
            services.batch.run_one(owner, resolved, queue_timeout_s=max(0.0, deadline - time.monotonic()))
        )

        def stop() -> None:
            task.cancel()  # the caller went away: its worker is freed, not kept to the deadline

        async with (
            on_client_disconnect(request, stop),
            _queue_timeout(
                services, "/run_code", f"{settings.sandboxfusion_queue_s:g} s, EXECBOX_SANDBOXFUSION_QUEUE_S"
            ),
        ):
            result = await task
    return _reply("/run_code", services, run_code_response(result, body, resolved.limits))


@router.post(
    "/run_jupyter",
    response_model=RunJupyterResponse,
    responses=error_responses(
        *BODY,
        *_WAITS,
        ErrorCode.INVALID_LIMITS,
        ErrorCode.INVALID_PATH,
        ErrorCode.FILE_TOO_LARGE,
        ErrorCode.TOO_MANY_SESSIONS,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.SANDBOX_UNAVAILABLE,
    ),
    summary="SandboxFusion: run notebook cells in order in one fresh kernel",
    description=(
        "SandboxFusion's `/run_jupyter`: the cells run in one fresh kernel, state carried across them; a cell "
        "that raises does not stop the later ones. `total_timeout` bounds them all and `cell_timeout` (0: none) "
        "each; a timeout answers `Failed` with driver `TimeLimitExceeded` and the cells run so far."
    ),
)
async def run_jupyter(body: RunJupyterRequest, request: Request, services: ServicesDep, owner: Owner) -> Response:
    settings = services.settings
    for cell in body.cells:
        check_code_size(cell, settings)
    plan = jupyter_plan(body, settings)
    started = time.monotonic()
    async with (
        services.quotas.session(owner),
        _queue_timeout(services, "/run_jupyter", f"{settings.acquire_timeout_s:g} s, EXECBOX_ACQUIRE_TIMEOUT_S"),
    ):
        # A session of its own, deleted after: the kernel is fresh, serves this request only,
        # and counts against the key's sessions while it runs.
        info = await services.sessions.create(
            owner, SessionCreate(memory_mb=plan.memory_mb, timeout_s=plan.total_timeout_s)
        )
    try:
        reply = await _run_notebook(services, owner, info.id, body, plan, request, started)
    finally:
        with contextlib.suppress(SessionNotFound):
            await asyncio.shield(services.sessions.delete(owner, info.id))
    return _reply("/run_jupyter", services, reply)


@router.get(
    "/v1/ping",
    response_model=str,
    summary='SandboxFusion: liveness, answered with the JSON string "pong"',
)
async def ping() -> str:
    return "pong"


# ---------------------------------------------------------------- internals


def _reply(route: str, services: Services, reply: RunCodeResponse | RunJupyterResponse) -> Response:
    services.metrics.sandboxfusion_replies.labels(route, reply.status.value).inc()
    return model_response(reply)


@contextlib.asynccontextmanager
async def _queue_timeout(services: Services, route: str, budget: str) -> AsyncIterator[None]:
    """No worker or kernel within the budget: a 504 the caller retries, counted in /metrics."""
    try:
        yield
    except PoolExhausted as exc:
        services.metrics.queue_timeouts.labels(route).inc()
        raise QueueTimeout(f"{exc.message} (waited {budget})", retry_after=exc.retry_after or 1) from exc


async def _batch_share(services: Services, owner: str | None, deadline: float, route: str) -> Slot:
    """One batch worker of the key's quota, waited for until ``deadline``.

    A key at its quota is overloaded like a server with no worker free: the request waits for
    a share within its budget, then gets the same retryable 504 (a 429 would score as a failed
    program in verl, which retries nothing but 504).
    """
    while True:
        try:
            return services.quotas.batch(owner, 1)
        except QuotaExceeded as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                services.metrics.queue_timeouts.labels(route).inc()
                budget = services.settings.sandboxfusion_queue_s
                raise QueueTimeout(
                    f"{exc.message} (waited {budget:g} s, EXECBOX_SANDBOXFUSION_QUEUE_S)",
                    retry_after=exc.retry_after or 1,
                ) from exc
            # Quotas have no waiters to wake; a share frees when a job ends, so a short poll
            # loses at most this much of the budget.
            await asyncio.sleep(min(QUOTA_POLL_S, remaining))


async def _run_notebook(
    services: Services,
    owner: str | None,
    session_id: str,
    body: RunJupyterRequest,
    plan: JupyterPlan,
    request: Request,
    started: float,
) -> RunJupyterResponse:
    entry = services.sessions.get(owner, session_id)
    kernel = entry.kernel
    for path, data in plan.uploads:
        await _files(services, kernel, "put", path, data)
    deadline = started + plan.total_timeout_s
    executions: list[Execution] = []
    out_of_time = False
    gone = False

    def on_disconnect() -> None:
        nonlocal gone
        gone = True
        if entry.interrupt is not None:
            entry.interrupt.set()

    async with services.quotas.execution(owner), on_client_disconnect(request, on_disconnect):
        for cell in body.cells:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or gone:
                out_of_time = not gone
                break
            timeout = remaining if plan.cell_timeout_s is None else min(plan.cell_timeout_s, remaining)
            execution = await services.sessions.execute(owner, session_id, ExecuteRequest(code=cell, timeout_s=timeout))
            executions.append(execution)
            if stops_notebook(execution):
                break
    files, notes = await _fetch(services, kernel if entry.kernel is kernel else None, plan)
    return jupyter_response(
        executions,
        elapsed_s=time.monotonic() - started,
        out_of_time=out_of_time,
        files=files,
        message="; ".join(notes),
    )


async def _fetch(services: Services, kernel: object | None, plan: JupyterPlan) -> tuple[dict[str, str], list[str]]:
    """The fetch_files that exist, base64; and why any that may exist could not be read."""
    if not plan.fetches:
        return {}, []
    if kernel is None:
        return {}, ["fetch_files: the kernel's sandbox was replaced after a cell killed it; its files are gone"]
    files: dict[str, str] = {}
    notes = []
    for key, path in plan.fetches:
        try:
            data = await services.backend.files(kernel, "get", path)
        except FileRequestError as exc:
            if exc.code is not ErrorCode.FILE_NOT_FOUND:  # missing files are left out, as SandboxFusion does
                notes.append(f"fetch_files[{key[:100]!r}]: {exc.message}")
            continue
        except SandboxGone:
            notes.append("fetch_files: the kernel's sandbox is gone")
            break
        files[key] = base64.b64encode(data).decode("ascii")
    return files, notes


async def _files(services: Services, kernel: object | None, op: str, path: str, data: bytes) -> None:
    if kernel is None:
        raise SandboxUnavailable("the notebook's sandbox is being replaced; retry", retry_after=1)
    if len(data) > services.settings.max_file_bytes:
        raise file_error(
            ErrorCode.FILE_TOO_LARGE,
            f"files[{path[:100]!r}] is {len(data)} bytes; the limit is {services.settings.max_file_bytes} "
            "(EXECBOX_MAX_FILE_BYTES)",
        )
    try:
        await services.backend.files(kernel, op, path, data)
    except FileRequestError as exc:
        raise file_error(exc.code, f"files[{path[:100]!r}]: {exc.message}") from exc
    except SandboxGone as exc:
        raise SandboxUnavailable("the notebook's sandbox is gone; retry", retry_after=1) from exc


# ---------------------------------------------------------------- the keyless listener


def keyless_listener(app: ASGIApp, *, key: str | None) -> ASGIApp:
    """``app`` as the keyless SandboxFusion listener serves it: only :data:`SANDBOXFUSION_PATHS`,
    every request made as the owner of ``key`` (None: authentication is off).

    Any ``Authorization`` a caller sends is replaced, so this port grants exactly one key's
    rights, whoever connects: bind it to loopback or a trusted network.
    """
    authorization = f"Bearer {key}".encode("latin-1") if key is not None else None

    async def listener(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets; the lifespan is the main listener's (this one runs with it off)
        if scope.get("path") not in SANDBOXFUSION_PATHS:
            answer = error_response(
                404,
                ErrorCode.NOT_FOUND,
                "this listener serves only the SandboxFusion routes (/run_code, /run_jupyter, /v1/ping); "
                "use the main port, with an API key, for the rest of the API",
            )
            await answer(scope, receive, send)
            return
        headers = [(name, value) for name, value in scope.get("headers", []) if name != b"authorization"]
        if authorization is not None:
            headers.append((b"authorization", authorization))
        await app({**scope, "headers": headers}, receive, send)

    return listener
