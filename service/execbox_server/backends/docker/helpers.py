"""Helpers the service runs inside a sandbox through the engine: files in and out, process sweep.

They are real files of the image (sandbox_images/python/execbox_files.py, execbox_sweep.py),
started with ``docker exec`` as root with ``python -I -S`` from ``/``: nothing the user's
code planted is imported, and the sandbox user can neither signal nor trace them (the files
helper keeps root as its real and saved uid and uses the sandbox user's only for file access).
Bytes travel over the exec's own stdin and stdout streams; the host never opens, stats or
changes a path the sandbox can write. Each helper ends itself with an alarm, and the service's
own deadline (HELPER_TIMEOUT_S) is a little longer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from typing import Any

import docker.errors
from execbox._codes import ErrorCode
from execbox_server.backends.base import FileRequestError, SandboxGone
from execbox_server.backends.docker.engine import Engine
from execbox_server.errors import EngineUnavailable

__all__ = ["HELPER_TIMEOUT_S", "SandboxHelpers", "read_frames"]

log = logging.getLogger("execbox.backend")

_PYTHON = ("/opt/venv/bin/python", "-I", "-S")
_FILES_HELPER = "/opt/execbox/execbox_files.py"
_SWEEP_HELPER = "/opt/execbox/execbox_sweep.py"
HELPER_TIMEOUT_S = 30.0


class SandboxHelpers:
    def __init__(self, engine: Engine, *, max_file_bytes: int) -> None:
        self._engine = engine
        self._max_file_bytes = max_file_bytes

    async def sweep(self, container_id: str, short_id: str) -> bool:
        """Kill every process in the sandbox but its init and the kernel; False if it could not."""
        try:
            code, out, _err = await self.run(container_id, [*_PYTHON, _SWEEP_HELPER])
        except (SandboxGone, EngineUnavailable, docker.errors.APIError, OSError) as exc:
            log.warning("process sweep of sandbox %s failed: %s", short_id, exc)
            return False
        if code != 0 or not out.startswith(b"swept"):
            log.warning("process sweep of sandbox %s did not finish (exit %s)", short_id, code)
            return False
        return True

    async def files(self, container_id: str, op: str, path: str, data: bytes | None = None) -> Any:
        """Put, get or list files under the sandbox's working directory (see the backend protocol).

        Raises:
            FileRequestError, SandboxGone.
        """
        limit = self._max_file_bytes
        command = [*_PYTHON, _FILES_HELPER, op, path, str(limit)]
        try:
            code, out, err = await self.run(container_id, command, stdin=data, max_output=limit + 2 * 1024 * 1024)
        except docker.errors.APIError as exc:
            raise FileRequestError(ErrorCode.SANDBOX_UNAVAILABLE, f"the sandbox refused: {exc.explanation}") from exc
        except (TimeoutError, OSError) as exc:
            raise FileRequestError(
                ErrorCode.SANDBOX_UNAVAILABLE, f"the sandbox did not complete the file request in time ({exc!r}); retry"
            ) from exc
        header, _, body = out.partition(b"\n")
        try:
            # A listing can be large (10,000 entries): decode it off the event loop.
            answer = json.loads(header) if len(header) < 65_536 else await asyncio.to_thread(json.loads, header)
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            detail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {code}"]
            raise FileRequestError(
                ErrorCode.SANDBOX_UNAVAILABLE, f"the sandbox did not answer the file request: {detail[0][:500]}"
            ) from exc
        if "error" in answer:
            raise FileRequestError(_file_code(answer["error"]), str(answer.get("message", "")))
        if op == "get":
            if len(body) != answer.get("size"):
                raise FileRequestError(ErrorCode.SANDBOX_UNAVAILABLE, "the file changed while it was copied; retry")
            return body
        return answer

    async def run(
        self,
        container_id: str,
        command: list[str],
        *,
        stdin: bytes | None = None,
        max_output: int = 1 << 20,
    ) -> tuple[int | None, bytes, bytes]:
        """Run ``command`` as root in the sandbox; return (exit code, stdout, stderr), each bounded.

        The whole exchange has a deadline (HELPER_TIMEOUT_S); its blocking part runs in the
        engine's ``exec`` thread pool, apart from the calls that kill and inspect.

        Raises:
            SandboxGone, EngineUnavailable, docker.errors.APIError, TimeoutError, OSError.
        """
        deadline = time.monotonic() + HELPER_TIMEOUT_S

        def run() -> tuple[int | None, bytes, bytes]:
            api = self._engine.docker.api
            exec_id = api.exec_create(
                container_id, command, user="0:0", workdir="/", stdin=stdin is not None, environment={}
            )["Id"]
            sock = api.exec_start(exec_id, socket=True)
            raw = getattr(sock, "_sock", sock)
            try:
                raw.settimeout(max(0.1, deadline - time.monotonic()))
                if stdin is not None:
                    raw.sendall(stdin)
                    raw.shutdown(socket.SHUT_WR)
                out, err = read_frames(raw, max_output, deadline)
            finally:
                sock.close()
            code = api.exec_inspect(exec_id).get("ExitCode")
            return code, out, err

        return await self._engine.call("exec", run, timeout=HELPER_TIMEOUT_S + 5)


# The codes the files helper (sandbox_images/python/execbox_files.py) answers with.
_FILE_CODES = {ErrorCode.INVALID_PATH, ErrorCode.FILE_NOT_FOUND, ErrorCode.FILE_TOO_LARGE}


def _file_code(value: object) -> ErrorCode:
    """The helper's refusal as an error code; anything else it might say is an invalid path."""
    return next((code for code in _FILE_CODES if code.value == value), ErrorCode.INVALID_PATH)


_FRAME = struct.Struct(">BxxxL")


def read_frames(sock: socket.socket, limit: int, deadline: float) -> tuple[bytes, bytes]:
    """Read the engine's multiplexed exec stream (8-byte frame headers) until EOF.

    Raises:
        TimeoutError: the deadline passed first.
        OSError: a stream grew past ``limit`` bytes.
    """
    streams = {1: bytearray(), 2: bytearray()}
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the sandbox helper did not finish in time")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            raise
        except OSError:
            chunk = b""
        buf += chunk
        while len(buf) >= _FRAME.size:
            kind, size = _FRAME.unpack_from(buf)
            if len(buf) < _FRAME.size + size:
                break
            out = streams.get(kind)
            if out is not None:
                out += buf[_FRAME.size : _FRAME.size + size]
                if len(out) > limit:
                    raise OSError(f"the sandbox helper wrote more than {limit} bytes")
            del buf[: _FRAME.size + size]
        if not chunk:
            return bytes(streams[1]), bytes(streams[2])
