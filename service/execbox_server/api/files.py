"""Files in and out of a session's working directory."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response, status

from execbox._codes import ErrorCode
from execbox._models import FileInfo
from execbox_server.api.deps import Owner, ServicesDep
from execbox_server.api.openapi import error_responses
from execbox_server.backends.base import FileRequestError, SandboxGone
from execbox_server.errors import FileTooLarge, InvalidPath, SandboxUnavailable, file_error
from execbox_server.sessions import SessionEntry

router = APIRouter(
    prefix="/v1/sessions/{session_id}/files",
    tags=["files"],
    responses=error_responses(
        ErrorCode.UNAUTHORIZED,
        ErrorCode.INTERNAL_ERROR,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.INVALID_PATH,
        ErrorCode.SESSION_NOT_FOUND,
        ErrorCode.FILE_NOT_FOUND,
        ErrorCode.SANDBOX_UNAVAILABLE,
    ),
)


async def _files(services: ServicesDep, session: SessionEntry, op: str, path: str, data: bytes | None = None) -> Any:
    if "\x00" in path or len(path.encode("utf-8", "surrogatepass")) > 1024:
        raise InvalidPath("a path must be at most 1024 bytes and contain no NUL character")
    if session.kernel is None:
        raise SandboxUnavailable("the session's sandbox is being replaced; retry in a moment", retry_after=1)
    session.touch()
    try:
        return await services.backend.files(session.kernel, op, path, data)
    except FileRequestError as exc:
        raise file_error(exc.code, exc.message) from exc
    except SandboxGone as exc:
        raise SandboxUnavailable("the session's sandbox is gone; run code to get a fresh one") from exc


@router.get("", response_model=list[FileInfo], summary="List a directory of the working directory")
async def list_files(session_id: str, services: ServicesDep, owner: Owner, dir: str = "") -> list[FileInfo]:
    answer = await _files(services, services.sessions.get(owner, session_id), "list", dir)
    entries = answer.get("entries")
    if not isinstance(entries, list):
        raise SandboxUnavailable("the sandbox gave a malformed directory listing; retry")
    return [FileInfo.model_validate(e) for e in entries]


@router.put(
    "/{path:path}",
    status_code=status.HTTP_201_CREATED,
    response_model=FileInfo,
    responses=error_responses(ErrorCode.FILE_TOO_LARGE, ErrorCode.REQUEST_TOO_LARGE),
    summary="Upload a file (the raw request body) into the working directory",
)
async def upload_file(session_id: str, path: str, request: Request, services: ServicesDep, owner: Owner) -> FileInfo:
    session = services.sessions.get(owner, session_id)
    data = await request.body()
    if len(data) > services.settings.max_file_bytes:
        raise FileTooLarge(f"the file is {len(data)} bytes; the limit is {services.settings.max_file_bytes}")
    answer = await _files(services, session, "put", path, data)
    return FileInfo(name=PurePosixPath(answer["path"]).name, path=answer["path"], size=answer["size"], type="file")


@router.get(
    "/{path:path}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(ErrorCode.FILE_TOO_LARGE),
    },
    summary="Download a file of the working directory",
)
async def download_file(session_id: str, path: str, services: ServicesDep, owner: Owner) -> Response:
    data = await _files(services, services.sessions.get(owner, session_id), "get", path)
    return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": _disposition(path)})


def _disposition(path: str) -> str:
    """An attachment header for any file name: an ASCII fallback plus the exact name (RFC 6266)."""
    name = PurePosixPath(path).name
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='', errors='replace')}"
