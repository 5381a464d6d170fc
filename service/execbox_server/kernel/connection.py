"""An asyncio client for one Jupyter kernel over ZMQ IPC sockets.

This is the only module where raw Jupyter messages exist. It signs and parses them with
``jupyter_client.session.Session`` and hands the rest of the service typed
:mod:`~execbox_server.kernel.events` instead of dicts.

A connection serves one caller at a time (the session lock guarantees it). Messages are
matched strictly by the parent ``msg_id`` of the request, so output of an earlier,
interrupted request or of a background thread never lands in the wrong execution.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from execbox_server.kernel.events import (
    ClearOutput,
    Display,
    Error,
    Idle,
    KernelEvent,
    Reply,
    Stream,
)

__all__ = ["ConnectionFiles", "KernelConnection", "KernelNotReady"]

# Ports are just suffixes of the socket file names with the IPC transport.
_PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}


class KernelNotReady(Exception):
    """The kernel did not answer ``kernel_info`` before the deadline."""


@dataclass(frozen=True)
class ConnectionFiles:
    """Connection details of one kernel, seen from the host and from inside the container."""

    host_dir: Path
    key: str
    container_dir: str = "/kernel"

    @classmethod
    def create(cls, host_dir: Path, *, sandbox_uid: int = 1000) -> ConnectionFiles:
        """Make the per-kernel directory and write the connection file the kernel reads."""
        host_dir.mkdir(mode=0o700, parents=True, exist_ok=False)
        files = cls(host_dir=host_dir, key=secrets.token_hex(32))
        info = {
            "transport": "ipc",
            "ip": f"{files.container_dir}/k",
            "key": files.key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
            **_PORTS,
        }
        path = host_dir / "connection.json"
        path.write_text(json.dumps(info))
        path.chmod(0o400)
        try:
            # The kernel runs as the sandbox user and must create its sockets here.
            os.chown(host_dir, sandbox_uid, sandbox_uid)
            os.chown(path, sandbox_uid, sandbox_uid)
        except PermissionError:
            host_dir.chmod(0o777)
            path.chmod(0o444)
        return files

    def endpoint(self, port_name: str) -> str:
        return f"ipc://{self.host_dir}/k-{_PORTS[port_name]}"


class KernelConnection:
    """Shell, control and IOPub sockets to one kernel, with typed events out."""

    def __init__(self, files: ConnectionFiles, context: zmq.asyncio.Context, *, max_message_bytes: int = 0) -> None:
        self._session = Session(key=files.key.encode(), signature_scheme="hmac-sha256", username="execbox")
        self._shell = context.socket(zmq.DEALER)
        self._control = context.socket(zmq.DEALER)
        self._iopub = context.socket(zmq.SUB)
        for sock in (self._shell, self._control, self._iopub):
            sock.setsockopt(zmq.LINGER, 0)
        # A flood must not grow our memory: bound what ZMQ queues for us.
        self._iopub.setsockopt(zmq.RCVHWM, 10_000)
        if max_message_bytes > 0:
            # A message past this is refused by ZMQ itself before it is buffered here
            # (the sandbox caps its own messages well below; this guards against forgery).
            for sock in (self._shell, self._iopub):
                sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self._shell.connect(files.endpoint("shell_port"))
        self._control.connect(files.endpoint("control_port"))
        self._iopub.connect(files.endpoint("iopub_port"))
        self._poller = zmq.asyncio.Poller()
        self._poller.register(self._shell, zmq.POLLIN)
        self._poller.register(self._iopub, zmq.POLLIN)
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def wait_ready(self, timeout: float) -> None:
        """Return once the kernel answers ``kernel_info`` and its IOPub stream reaches us.

        Raises:
            KernelNotReady: nothing answered within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        iopub_seen = False
        reply_seen = False
        msg_id = None
        while time.monotonic() < deadline:
            if msg_id is None or reply_seen:
                # A SUB socket misses what is published before it has joined, so keep
                # asking until a status message of one of our requests arrives on IOPub.
                msg_id = self._send(self._shell, "kernel_info_request", {})
                reply_seen = False
            remaining = min(deadline - time.monotonic(), 0.2)
            events = dict(await self._poller.poll(max(1, int(remaining * 1000))))
            if self._shell in events:
                msg = self._recv(self._shell)
                if msg and msg["parent_header"].get("msg_id") == msg_id:
                    reply_seen = True
            if self._iopub in events:
                msg = self._recv(self._iopub)
                if msg and msg["msg_type"] == "status":
                    iopub_seen = True
            if iopub_seen and reply_seen:
                self._drain()
                return
        raise KernelNotReady(f"kernel did not answer kernel_info within {timeout:.1f}s")

    async def warm_up(self, code: str, timeout: float) -> None:
        """Run ``code`` without counting it in the history, and drop its output.

        A fresh IPython pays for its first displayhook and its first traceback (hundreds
        of ms); doing that before the kernel joins the pool keeps it off user requests.
        """
        msg_id = self._send(
            self._shell,
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": False,
            },
        )
        deadline = time.monotonic() + timeout
        replied = idle = False
        while not (replied and idle):
            event = await self.next_event(msg_id, deadline - time.monotonic())
            if event is None:
                raise KernelNotReady(f"kernel did not finish its warm-up within {timeout:.1f}s")
            replied = replied or isinstance(event, Reply)
            idle = idle or isinstance(event, Idle)

    def mute_output(self) -> int:
        """Unsubscribe from IOPub and drop what is queued, unparsed; returns the bytes dropped.

        A subscriber that has unsubscribed gets nothing more from the publisher, so a flood
        stops costing the server anything at once.
        """
        self._iopub.setsockopt(zmq.UNSUBSCRIBE, b"")
        dropped = 0
        for _ in range(100_000):
            future = cast("asyncio.Future[list[bytes]]", self._iopub.recv_multipart(zmq.NOBLOCK, copy=True))
            if not future.done() or future.exception() is not None:
                if not future.done():
                    future.cancel()
                break
            dropped += sum(len(frame) for frame in future.result())
        return dropped

    async def unmute_output(self, timeout: float) -> None:
        """Subscribe again and wait until IOPub delivers (a kernel_info round trip).

        Raises:
            KernelNotReady: the output stream did not come back in time.
        """
        self._iopub.setsockopt(zmq.SUBSCRIBE, b"")
        await self.wait_ready(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in (self._shell, self._control, self._iopub):
            sock.close(linger=0)

    # ------------------------------------------------------------------ requests

    def execute(self, code: str) -> str:
        """Send an ``execute_request``; return its msg_id, the key of every event it causes."""
        self._drain()
        return self._send(
            self._shell,
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                # No stdin channel: input() raises StdinNotImplementedError at once
                # instead of hanging until the deadline.
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )

    def interrupt(self) -> None:
        """Ask the kernel to interrupt the running cell (``interrupt_request`` on control)."""
        self._send(self._control, "interrupt_request", {})

    def shutdown(self, *, restart: bool = False) -> None:
        self._send(self._control, "shutdown_request", {"restart": restart})

    async def next_event(self, msg_id: str, timeout: float) -> KernelEvent | None:
        """The next event caused by request ``msg_id``, or None when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            # Take what is already queued without a trip through the poller: most events
            # of a short cell arrive back to back, and each poll costs a watcher set-up.
            # IOPub first: in the kernel, output precedes the reply.
            for sock in (self._iopub, self._shell):
                while _readable(sock):
                    msg = self._recv(sock)
                    if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    event = _to_event(msg, from_shell=sock is self._shell)
                    if event is not None:
                        return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await self._poller.poll(max(1, int(remaining * 1000)))

    # ------------------------------------------------------------------ internals

    def _send(self, sock: zmq.asyncio.Socket, msg_type: str, content: dict[str, Any]) -> str:
        msg = self._session.msg(msg_type, content)
        self._session.send(sock, msg)
        return str(msg["header"]["msg_id"])

    def _recv(self, sock: zmq.asyncio.Socket) -> dict[str, Any] | None:
        # On an asyncio socket a NOBLOCK receive returns an already-settled future.
        future = cast("asyncio.Future[list[bytes]]", sock.recv_multipart(zmq.NOBLOCK, copy=True))
        if not future.done() or future.exception() is not None:
            if not future.done():
                future.cancel()
            return None
        frames = future.result()
        return self._parse(frames)

    def _parse(self, frames: list[bytes]) -> dict[str, Any] | None:
        """Verify and decode one wire message; a malformed or badly signed one is dropped.

        Leaner than ``Session.deserialize``, which also parses every header date with
        dateutil: the executor needs the type, the parent's id and the content only.
        """
        try:
            i = frames.index(b"<IDS|MSG>")
            signature, header, parent, _metadata, content = frames[i + 1 : i + 6]
        except (ValueError, IndexError):
            return None
        expected = self._session.sign([header, parent, _metadata, content])
        if not hmac.compare_digest(signature, expected):
            return None
        try:
            head = json.loads(header)
            return {
                "msg_type": head.get("msg_type"),
                "header": head,
                "parent_header": json.loads(parent) if parent != b"{}" else {},
                "content": json.loads(content),
            }
        except ValueError:
            return None

    def _drain(self) -> None:
        """Drop what is still queued from earlier requests (late replies, stray output)."""
        for sock in (self._shell, self._iopub):
            for _ in range(10_000):
                if not _readable(sock):
                    break
                self._recv(sock)


def _to_event(msg: dict[str, Any], *, from_shell: bool) -> KernelEvent | None:
    msg_type = msg["msg_type"]
    content = msg["content"]
    if from_shell:
        if msg_type != "execute_reply":
            return None
        return Reply(
            status=str(content.get("status", "error")),
            execution_count=content.get("execution_count"),
            ename=content.get("ename"),
            evalue=content.get("evalue"),
            traceback=list(content.get("traceback") or []),
        )
    if msg_type == "stream":
        return Stream(
            name=str(content.get("name", "stdout")),
            text=str(content.get("text", "")),
            dropped=_int(content.get("execbox_dropped")),
        )
    if msg_type in ("display_data", "execute_result", "update_display_data"):
        return Display(
            data=dict(content.get("data") or {}),
            metadata=dict(content.get("metadata") or {}),
            is_main=msg_type == "execute_result",
            dropped=_int(content.get("execbox_dropped")),
        )
    if msg_type == "error":
        return Error(
            ename=str(content.get("ename", "")),
            evalue=str(content.get("evalue", "")),
            traceback=[str(line) for line in content.get("traceback") or []],
        )
    if msg_type == "clear_output":
        return ClearOutput(wait=bool(content.get("wait", False)))
    if msg_type == "status" and content.get("execution_state") == "idle":
        return Idle()
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _readable(sock: zmq.asyncio.Socket) -> bool:
    events = sock.getsockopt(zmq.EVENTS)
    return isinstance(events, int) and bool(events & zmq.POLLIN)
