"""Sessions: stateful kernels, one per session."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from execbox._codes import ErrorCode
from execbox._models import ExecuteRequest, Execution, SessionCreate, SessionInfo
from execbox_server.api.deps import Owner, ServicesDep
from execbox_server.api.openapi import BODY, LEASE, error_responses, stream_response
from execbox_server.api.streaming import done_event, model_response, ndjson_stream, on_client_disconnect
from execbox_server.api.validation import check_code_size

router = APIRouter(
    prefix="/v1/sessions",
    tags=["sessions"],
    responses=error_responses(ErrorCode.UNAUTHORIZED, ErrorCode.INTERNAL_ERROR),
)

_SESSION = (ErrorCode.INVALID_REQUEST, ErrorCode.SESSION_NOT_FOUND)  # it names a session
_EXECUTE = (
    *BODY,
    *LEASE,
    ErrorCode.SESSION_NOT_FOUND,
    ErrorCode.SESSION_BUSY,
    ErrorCode.INVALID_LIMITS,
    ErrorCode.QUOTA_EXCEEDED,
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionInfo,
    responses=error_responses(
        *BODY, *LEASE, ErrorCode.INVALID_LIMITS, ErrorCode.TOO_MANY_SESSIONS, ErrorCode.QUOTA_EXCEEDED
    ),
    summary="Create a session",
)
async def create_session(services: ServicesDep, owner: Owner, body: SessionCreate | None = None) -> Response:
    async with services.quotas.session(owner):
        info = await services.sessions.create(owner, body or SessionCreate())
    return model_response(info, status.HTTP_201_CREATED)


@router.get("", response_model=list[SessionInfo], summary="List your sessions")
async def list_sessions(services: ServicesDep, owner: Owner) -> list[SessionInfo]:
    return services.sessions.list(owner)


@router.get("/{session_id}", response_model=SessionInfo, responses=error_responses(*_SESSION), summary="Get a session")
async def get_session(session_id: str, services: ServicesDep, owner: Owner) -> SessionInfo:
    return services.sessions.info(services.sessions.get(owner, session_id))


@router.delete(
    "/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(*_SESSION),
    summary="Delete a session and its container",
)
async def delete_session(session_id: str, services: ServicesDep, owner: Owner) -> Response:
    await services.sessions.delete(owner, session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{session_id}/execute",
    response_model=Execution,
    responses=error_responses(*_EXECUTE),
    summary="Run code in the session and return the whole Execution",
)
async def execute_in_session(
    session_id: str, body: ExecuteRequest, request: Request, services: ServicesDep, owner: Owner
) -> Response:
    check_code_size(body.code, services.settings)
    async with services.quotas.execution(owner):
        session = services.sessions.reserve(owner, session_id)

        def on_disconnect() -> None:
            if session.interrupt is not None:
                session.interrupt.set()

        async with on_client_disconnect(request, on_disconnect):
            execution = await services.sessions.run_reserved(session, body)
    return model_response(execution)


@router.post(
    "/{session_id}/execute/stream",
    responses={
        **error_responses(*_EXECUTE),
        **stream_response("ExecutionStreamLine", "NDJSON events, the last one `done`"),
    },
    response_class=Response,
    summary="Run code in the session, streaming events as NDJSON",
)
async def execute_in_session_stream(
    session_id: str, body: ExecuteRequest, services: ServicesDep, owner: Owner
) -> Response:
    check_code_size(body.code, services.settings)
    # Taken before the stream starts, so that a key over its quota gets a 429, not a 200
    # stream ending in an error line; given back when the execution ends, not the response.
    slot = services.quotas.execution(owner)
    try:
        session = services.sessions.reserve(owner, session_id)
    except BaseException:
        slot.release()
        raise

    def on_disconnect() -> None:
        if session.interrupt is not None:
            session.interrupt.set()

    return ndjson_stream(
        lambda emit: slot.hold(done_event(services.sessions.run_reserved(session, body, emit))),
        on_disconnect=on_disconnect,
        tasks=services.tasks,
        when_full="drop",
        on_done=slot.release,
    )


@router.post(
    "/{session_id}/keepalive",
    response_model=SessionInfo,
    responses=error_responses(*_SESSION),
    summary="Push the session's idle expiry back (its maximum lifetime still applies)",
)
async def keepalive_session(session_id: str, services: ServicesDep, owner: Owner) -> SessionInfo:
    return services.sessions.keepalive(owner, session_id)


@router.post("/{session_id}/interrupt", responses=error_responses(*_SESSION), summary="Interrupt the running execution")
async def interrupt_session(session_id: str, services: ServicesDep, owner: Owner) -> dict[str, bool]:
    return {"interrupted": services.sessions.interrupt(owner, session_id)}


@router.post(
    "/{session_id}/restart",
    response_model=SessionInfo,
    responses=error_responses(*_SESSION, *LEASE, ErrorCode.SESSION_BUSY),
    summary="Replace the session's kernel with a fresh one (variables are lost)",
)
async def restart_session(session_id: str, services: ServicesDep, owner: Owner) -> SessionInfo:
    return await services.sessions.restart(owner, session_id)
