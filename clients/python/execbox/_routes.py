"""Every endpoint of the service as a :class:`Call` or :class:`StreamCall`, built once for both twins."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from execbox._base import PROBE_TIMEOUT_S, Call, ClientCore, StreamCall, parse_list, parse_model
from execbox._batch import Chunk
from execbox._exceptions import ExecboxError
from execbox._models import (
    ExecuteRequest,
    Execution,
    ExecutionEvent,
    FileInfo,
    Info,
    JobResult,
    OneShotRequest,
    SessionCreate,
    SessionInfo,
)
from execbox._streams import EventDecoder, JobDecoder

__all__ = ["Routes"]

# Beyond an execution's own deadline, the server may need a few seconds for the timeout
# ladder (interrupt grace, kill, replacement) before it answers.
EXECUTION_MARGIN_S = 15.0
# Between two results of a batch stream: the longest job's timeout plus the worker's margin.
BATCH_MARGIN_S = 30.0


class Routes:
    """The requests of a client configured by ``core``."""

    def __init__(self, core: ClientCore) -> None:
        self._core = core

    # ------------------------------------------------------------------ one-shot and batch

    def run(self, code: str, timeout_s: float | None, memory_mb: int | None, cpus: float | None) -> Call[Execution]:
        body = _one_shot(code, timeout_s, memory_mb, cpus)
        return Call("POST", "/v1/execute", parse_model(Execution), json=body, timeout=self._exec_timeout(timeout_s))

    def run_stream(
        self, code: str, timeout_s: float | None, memory_mb: int | None, cpus: float | None
    ) -> StreamCall[ExecutionEvent]:
        body = _one_shot(code, timeout_s, memory_mb, cpus)
        return StreamCall("/v1/execute/stream", body, self._exec_timeout(timeout_s), EventDecoder)

    def batch_chunk(self, chunk: Chunk) -> StreamCall[JobResult]:
        """One request of a batch (see :mod:`execbox._batch`); its results carry indices within it."""
        timeout = self._core.http_timeout(max(self._core.timeout, chunk.longest_job_s + BATCH_MARGIN_S))
        return StreamCall("/v1/batch/stream", None, timeout, JobDecoder, content=chunk.body)

    # ------------------------------------------------------------------ sessions

    def create_session(self, timeout_s: float | None, memory_mb: int | None, cpus: float | None) -> Call[SessionInfo]:
        body = SessionCreate(memory_mb=memory_mb, cpus=cpus, timeout_s=timeout_s).model_dump(exclude_none=True)
        return Call("POST", "/v1/sessions", parse_model(SessionInfo), json=body)

    def list_sessions(self) -> Call[list[SessionInfo]]:
        return Call("GET", "/v1/sessions", parse_list(SessionInfo))

    def get_session(self, session_id: str) -> Call[SessionInfo]:
        return Call("GET", f"/v1/sessions/{session_id}", parse_model(SessionInfo))

    def delete_session(self, session_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/sessions/{session_id}", _nothing)

    def execute(self, session: SessionInfo, code: str, timeout_s: float | None) -> Call[Execution]:
        body = ExecuteRequest(code=code, timeout_s=timeout_s).model_dump(exclude_none=True)
        timeout = self._exec_timeout(timeout_s or session.limits.timeout_s)
        return Call("POST", f"/v1/sessions/{session.id}/execute", parse_model(Execution), json=body, timeout=timeout)

    def execute_stream(self, session: SessionInfo, code: str, timeout_s: float | None) -> StreamCall[ExecutionEvent]:
        body = ExecuteRequest(code=code, timeout_s=timeout_s).model_dump(exclude_none=True)
        timeout = self._exec_timeout(timeout_s or session.limits.timeout_s)
        return StreamCall(f"/v1/sessions/{session.id}/execute/stream", body, timeout, EventDecoder)

    def interrupt(self, session_id: str) -> Call[bool]:
        return Call("POST", f"/v1/sessions/{session_id}/interrupt", _interrupted)

    def restart(self, session_id: str) -> Call[SessionInfo]:
        return Call("POST", f"/v1/sessions/{session_id}/restart", parse_model(SessionInfo))

    def keepalive(self, session_id: str) -> Call[SessionInfo]:
        return Call("POST", f"/v1/sessions/{session_id}/keepalive", parse_model(SessionInfo))

    # ------------------------------------------------------------------ nodes

    def info(self) -> Call[Info]:
        """``GET /v1/info``: a node's capacity and load (unauthenticated); a quick probe of its health."""
        return Call("GET", "/v1/info", parse_model(Info), timeout=httpx.Timeout(PROBE_TIMEOUT_S))

    # ------------------------------------------------------------------ files

    def upload(self, session_id: str, path: str, data: bytes | str) -> Call[FileInfo]:
        content = data.encode() if isinstance(data, str) else data
        return Call("PUT", _file(session_id, path), parse_model(FileInfo), content=content)

    def download(self, session_id: str, path: str) -> Call[bytes]:
        return Call("GET", _file(session_id, path), _content)

    def list_files(self, session_id: str, directory: str) -> Call[list[FileInfo]]:
        return Call("GET", f"/v1/sessions/{session_id}/files?dir={quote(directory)}", parse_list(FileInfo))

    def _exec_timeout(self, timeout_s: float | None) -> httpx.Timeout:
        """The HTTP timeout of an execute call: the execution's deadline plus the ladder."""
        return self._core.http_timeout(max(self._core.timeout, (timeout_s or self._core.timeout) + EXECUTION_MARGIN_S))


def _one_shot(code: str, timeout_s: float | None, memory_mb: int | None, cpus: float | None) -> dict[str, Any]:
    body = OneShotRequest(code=code, timeout_s=timeout_s, memory_mb=memory_mb, cpus=cpus)
    return body.model_dump(exclude_none=True)


def _file(session_id: str, path: str) -> str:
    return f"/v1/sessions/{session_id}/files/{quote(path, safe='')}"


def _nothing(response: httpx.Response) -> None:
    return None


def _content(response: httpx.Response) -> bytes:
    return response.content


def _interrupted(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError as exc:
        raise ExecboxError(f"the server sent a response this SDK cannot read: {response.text[:200]!r}") from exc
    return isinstance(body, dict) and bool(body.get("interrupted"))
