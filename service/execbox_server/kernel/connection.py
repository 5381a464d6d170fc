"""An asyncio client for one Jupyter kernel, speaking ZMTP 3.0 over the kernel's IPC sockets.

This is the only module where raw Jupyter messages exist. It signs requests with
``jupyter_client.session.Session``, and hands the rest of the service typed
:mod:`~execbox_server.kernel.events` instead of dicts.

Why not libzmq: everything a kernel sends is written by code inside the sandbox, and libzmq
bounds what it buffers in *messages* only. Its per-frame cap does not bound a message of
many frames, which libzmq assembles in full before anyone can look at it (one such message
grew the receiving process by 1 GiB in a trial), and its queues cost up to
``RCVHWM x MAXMSGSIZE``. Reading the frames ourselves bounds the server's memory per kernel
in bytes (one message being assembled, capped, plus a small queue per channel after which
we stop reading and the kernel's own send queue fills up inside its sandbox), counts every
byte and message on every channel, and runs in the event loop without a poller thread.

A connection serves one caller at a time (the session lock guarantees it). Messages are
matched strictly by the parent ``msg_id`` of the request, so output of an earlier,
interrupted request or of a background thread never lands in the wrong execution; they
still count in :class:`~execbox_server.kernel.events.Traffic`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jupyter_client.session import Session

from execbox_server.kernel.events import (
    ClearOutput,
    Display,
    ErrorOutput,
    Idle,
    InputRequest,
    KernelEvent,
    Malformed,
    Reply,
    ShellReply,
    Stream,
    Traffic,
)

__all__ = ["PASSTHROUGH_REQUESTS", "ConnectionFiles", "KernelConnection", "KernelNotReady"]

# Ports are just suffixes of the socket file names with the IPC transport.
_PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Control only ever answers interrupt and shutdown requests with a few hundred bytes.
CONTROL_MAX_MESSAGE_BYTES = 64 * 1024
# Past this many bytes of whole messages waiting on one channel we stop reading it; the
# kernel's socket and send queue fill up (and then drop) inside the sandbox, not here.
MAX_QUEUED_BYTES = 1024 * 1024
MAX_FRAMES = 32  # a Jupyter message has 6 frames plus routing ids and a few buffers
MAX_COMMAND_BYTES = 4096
# Consumed messages between two yields to the event loop: a flood must not starve others.
YIELD_EVERY = 64
# Nested containers kept in display data and metadata; deeper ones are malformed.
MAX_DEPTH = 32
# Shell requests other than execute that may be relayed to a kernel as a client sent them
# (the Kernel Gateway API): each asks for information and changes nothing in the kernel.
PASSTHROUGH_REQUESTS = frozenset(
    {
        "kernel_info_request",
        "complete_request",
        "inspect_request",
        "is_complete_request",
        "history_request",
        "comm_info_request",
    }
)
_PASSTHROUGH_REPLIES = frozenset(t.removesuffix("_request") + "_reply" for t in PASSTHROUGH_REQUESTS)
# The largest such reply passed on (a history or a completion list); a larger one becomes an
# error reply saying so.
MAX_PASSTHROUGH_REPLY_BYTES = 1024 * 1024
MAX_PROMPT_CHARS = 4096

_DELIM = b"<IDS|MSG>"
_GREETING = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)


class KernelNotReady(Exception):
    """The kernel did not answer ``kernel_info`` before the deadline."""


class _ProtocolViolation(Exception):
    """Bytes from the kernel that are not ZMTP, or a message that is not Jupyter."""


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

    @classmethod
    def for_restore(cls, host_dir: Path, *, key: str, sandbox_uid: int = 1000) -> ConnectionFiles:
        """The directory for a kernel restored from a template: no connection file (the kernel
        does not read one; CRIU binds its sockets here again), and the template's key until
        the kernel is given its own (KernelConnection.rekey)."""
        host_dir.mkdir(mode=0o700, parents=True, exist_ok=False)
        try:
            os.chown(host_dir, sandbox_uid, sandbox_uid)
        except PermissionError:
            host_dir.chmod(0o777)
        return cls(host_dir=host_dir, key=key)

    def endpoint(self, port_name: str) -> str:
        return f"ipc://{self.socket_path(port_name)}"

    def socket_path(self, port_name: str) -> str:
        return f"{self.host_dir}/k-{_PORTS[port_name]}"


# ---------------------------------------------------------------------------------- ZMTP


def _frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) < 256:
        return bytes([flags, len(body)]) + body
    return bytes([flags | 2]) + len(body).to_bytes(8, "big") + body


def _ready(socket_type: bytes, identity: bytes = b"") -> bytes:
    def prop(name: bytes, value: bytes) -> bytes:
        return bytes([len(name)]) + name + len(value).to_bytes(4, "big") + value

    body = b"\x05READY" + prop(b"Socket-Type", socket_type)
    if socket_type == b"DEALER":
        # Shell and stdin share one identity: ipykernel sends an input_request to the stdin
        # peer whose identity sent the execute_request on shell (as jupyter_client does).
        body += prop(b"Identity", identity)
    return _frame(body, command=True)


class _Wire(asyncio.Protocol):
    """One ZMTP 3.0 peer (we are SUB or DEALER) that assembles whole messages under byte caps.

    Memory held: the message being assembled (at most ``max_message_bytes``; a larger one is
    skipped as it streams by, never stored), whole messages waiting to be taken (reading
    pauses past ``MAX_QUEUED_BYTES``) and one read chunk.
    """

    def __init__(
        self,
        socket_type: bytes,
        *,
        max_message_bytes: int,
        traffic: Traffic,
        wake: Callable[[], None],
        identity: bytes = b"",
    ):
        self.socket_type = socket_type
        self.identity = identity
        self.max_message_bytes = max_message_bytes
        self.traffic = traffic
        self._wake = wake
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.violation: str | None = None
        self.muted = False
        self._buf = bytearray()
        self._greeted = False
        self._ready = False
        self._frames: list[bytes] = []
        self._size = 0
        self._dropping = False
        self._skip = 0  # body bytes of a dropped frame still to come
        self._skip_more = False
        self._queue: deque[tuple[list[bytes], int]] = deque()
        self._queued = 0
        self._paused = False
        self._pending: list[bytes] = []  # written before the handshake could start

    # --- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # libzmq drops a peer that sends anything past its greeting before it has seen the
        # other side's: the rest waits for the kernel's greeting.
        transport.write(_GREETING)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.traffic.bytes += len(data)
        if self.violation is not None:
            return
        self._buf += data
        try:
            consumed = self._parse()
        except _ProtocolViolation as exc:
            self.violation = str(exc)
            self._buf.clear()
            if self.transport is not None:
                self.transport.close()
            self._wake()
            return
        del self._buf[:consumed]

    # --- taking messages

    def pop(self) -> list[bytes] | None:
        if not self._queue:
            return None
        frames, size = self._queue.popleft()
        self._queued -= size
        if self._paused and self._queued <= MAX_QUEUED_BYTES // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return frames

    def clear(self) -> int:
        dropped = self._queued
        while self.pop() is not None:
            pass
        return dropped

    def send(self, frames: list[bytes]) -> None:
        if self.transport is None or self.lost or self.violation is not None:
            return  # the kernel is unreachable: the caller's liveness checks report it
        last = len(frames) - 1
        self._write(b"".join(_frame(f, more=i < last) for i, f in enumerate(frames)))

    def subscribe(self, on: bool) -> None:
        if self.transport is not None and not self.lost:
            self._write(_frame(b"\x01" if on else b"\x00"))

    def _write(self, data: bytes) -> None:
        if not self._greeted:
            self._pending.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.lost and self.violation is None

    # --- parsing

    def _parse(self) -> int:
        buf = self._buf
        pos, end = 0, len(buf)
        while True:
            if self._skip:
                n = min(self._skip, end - pos)
                pos += n
                self._skip -= n
                if self._skip:
                    return pos
                if not self._skip_more:
                    self._end_message()
                continue
            if not self._greeted:
                if end - pos < 64:
                    return pos
                if buf[pos] != 0xFF or not buf[pos + 9] & 1 or buf[pos + 10] < 3:
                    raise _ProtocolViolation("not a ZMTP 3 greeting")
                if bytes(buf[pos + 12 : pos + 32]).rstrip(b"\x00") != b"NULL":
                    raise _ProtocolViolation("unexpected ZMTP security mechanism")
                self._greeted = True
                pos += 64
                hello = _ready(self.socket_type, self.identity)
                if self.socket_type == b"SUB":
                    hello += b"" if self.muted else _frame(b"\x01")  # subscribe (ZMTP 3.0 form)
                if self.transport is not None:
                    self.transport.write(hello + b"".join(self._pending))
                self._pending = []
                continue
            if end - pos < 2:
                return pos
            flags = buf[pos]
            if flags & ~0x07:
                raise _ProtocolViolation("invalid ZMTP frame flags")
            if flags & 0x02:
                if end - pos < 9:
                    return pos
                size, head = int.from_bytes(buf[pos + 1 : pos + 9], "big"), 9
            else:
                size, head = buf[pos + 1], 2
            if flags & 0x04:
                if size > MAX_COMMAND_BYTES or flags & 0x01:
                    raise _ProtocolViolation("oversized or multipart ZMTP command")
                if end - pos < head + size:
                    return pos
                self._command(bytes(buf[pos + head : pos + head + size]))
                pos += head + size
                continue
            if not self._ready:
                raise _ProtocolViolation("message before the ZMTP handshake")
            more = bool(flags & 0x01)
            if not self._dropping and (
                self.muted or self._size + size > self.max_message_bytes or len(self._frames) >= MAX_FRAMES
            ):
                self._dropping = True
                self._frames = []
                if not self.muted:
                    self.traffic.oversized += 1
            if self._dropping:
                pos += head
                self._skip, self._skip_more = size, more
                if size == 0:
                    self._skip = 0
                    if not more:
                        self._end_message()
                continue
            if end - pos < head + size:
                return pos  # wait for the rest of the body; at most max_message_bytes is held
            with memoryview(buf) as view:
                self._frames.append(bytes(view[pos + head : pos + head + size]))
            self._size += size
            pos += head + size
            if not more:
                self._end_message()

    def _command(self, body: bytes) -> None:
        self.traffic.messages += 1
        name = body[1 : 1 + body[0]] if body else b""
        if not self._ready:
            if name != b"READY":
                raise _ProtocolViolation("the ZMTP handshake did not start with READY")
            self._ready = True
            self._wake()
        elif name == b"ERROR":
            raise _ProtocolViolation("the kernel's socket reported a ZMTP error")
        # Anything else (PING without heartbeats configured, unknown commands) is ignored;
        # it was counted above.

    def _end_message(self) -> None:
        self.traffic.messages += 1
        if not self._dropping:
            self._queue.append((self._frames, self._size))
            self._queued += self._size
            if not self._paused and self._queued > MAX_QUEUED_BYTES and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
        self._frames, self._size, self._dropping = [], 0, False
        self._wake()


# ---------------------------------------------------------------------------------- client


class KernelConnection:
    """Shell, control and IOPub channels to one kernel, with typed events out."""

    def __init__(self, files: ConnectionFiles, *, max_message_bytes: int = 0) -> None:
        self._files = files
        self._session = Session(key=files.key.encode(), signature_scheme="hmac-sha256", username="execbox")
        self._max_message_bytes = max_message_bytes if max_message_bytes > 0 else DEFAULT_MAX_MESSAGE_BYTES
        self.traffic = Traffic()
        self._shell: _Wire | None = None
        self._control: _Wire | None = None
        self._iopub: _Wire | None = None
        self._stdin: _Wire | None = None
        # Non-empty, and never starting with a zero byte (ZMTP reserves those identities).
        self._identity = b"x" + secrets.token_hex(8).encode()
        self._stdin_parent: dict[str, Any] | None = None
        self._arrived = asyncio.Event()
        self._since_yield = 0
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
            await self._connect()
            if self._shell is None or self._iopub is None:
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            if msg_id is None or reply_seen:
                # A subscriber misses what is published before it has joined, so keep
                # asking until a status message of one of our requests arrives on IOPub.
                msg_id = self._send(self._shell, "kernel_info_request", {})
                reply_seen = False
            await self._wait(min(deadline - time.monotonic(), 0.2))
            while (frames := self._shell.pop()) is not None:
                msg = self._parse(frames)
                if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
                    reply_seen = True
            while (frames := self._iopub.pop()) is not None:
                msg = self._parse(frames)
                if msg is not None and msg["msg_type"] == "status":
                    iopub_seen = True
            if iopub_seen and reply_seen:
                self._drain()
                return
        raise KernelNotReady(f"kernel did not answer kernel_info within {timeout:.1f}s")

    async def warm_up(self, code: str, timeout: float) -> None:
        """Run ``code`` without counting it in the history, and drop its output.

        A fresh IPython pays for its first displayhook and its first traceback (hundreds
        of ms); doing that before the kernel joins the pool keeps it off user requests.

        Raises:
            KernelNotReady: the kernel did not finish in time, or broke the protocol.
        """
        msg_id = self._send(self._shell, "execute_request", _execute_content(code, store_history=False))
        deadline = time.monotonic() + timeout
        replied = idle = False
        while not (replied and idle):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelNotReady(f"kernel did not finish its warm-up within {timeout:.1f}s")
            event = await self.next_event(msg_id, remaining)
            if isinstance(event, Malformed):
                raise KernelNotReady(f"kernel broke the protocol during warm-up: {event.reason}")
            replied = replied or isinstance(event, Reply)
            idle = idle or isinstance(event, Idle)

    async def prepare_checkpoint(self, timeout: float) -> None:
        """Ask a template kernel to get ready to be checkpointed (it takes back root; see
        execbox_kernel.py). Outside the history, like the warm-up.

        Raises:
            KernelNotReady: the kernel refused or did not answer in time.
        """
        code = "import _execbox_template as _xb_t\n_xb_t.prepare_checkpoint()\ndel _xb_t"
        await self._template_cell(code, timeout, rekey_to=None)

    async def rekey(self, timeout: float) -> str:
        """Give a kernel restored from a template its own key and session id; return the key.

        The cell is signed with the template's key, which every copy of the template shares;
        the kernel switches inside it, so its reply arrives under the new key and proves the
        switch. A kernel_info round trip then proves both directions before anyone else can
        send it anything. Neither key is stored in the history.

        Raises:
            KernelNotReady: the kernel refused, did not answer in time, or not under the new key.
        """
        deadline = time.monotonic() + timeout
        key = secrets.token_hex(32)
        code = f"import _execbox_template as _xb_t\n_xb_t.rekey({key!r}, {secrets.token_hex(16)!r})\ndel _xb_t"
        await self._template_cell(code, timeout, rekey_to=key)
        await self.wait_ready(max(0.0, deadline - time.monotonic()))
        return key

    async def _template_cell(self, code: str, timeout: float, *, rekey_to: str | None) -> None:
        deadline = time.monotonic() + timeout
        while self._shell is None or self._iopub is None:
            if time.monotonic() >= deadline:
                raise KernelNotReady("the kernel's sockets are not there")
            await self._connect()
            await asyncio.sleep(0.0 if self._shell is not None and self._iopub is not None else 0.02)
        self._drain()
        shell, iopub = self._shell, self._iopub
        msg_id = self._send(shell, "execute_request", _execute_content(code, store_history=False))
        old_session = self._session
        if rekey_to is not None:
            # From inside the cell on, the kernel signs with the new key. A refusal comes before
            # the switch, under the old one: both are read until the cell is over.
            self._session = Session(key=rekey_to.encode(), signature_scheme="hmac-sha256", username="execbox")
        status: str | None = None
        idle = False
        while status is None or not idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelNotReady(f"the kernel did not finish a template step within {timeout:.1f}s")
            for wire in (shell, iopub):
                if wire.violation is not None or wire.lost:
                    raise KernelNotReady(f"the kernel's connection broke during a template step: {wire.violation}")
            for idle_wire in (self._control, self._stdin):
                if idle_wire is not None:
                    idle_wire.clear()  # nothing is expected there; left queued, _wait would never wait
            await self._wait(min(remaining, 0.2))
            for wire in (shell, iopub):
                while (frames := wire.pop()) is not None:
                    msg = self._parse(frames)
                    if msg is None and rekey_to is not None:
                        self._session, tried = old_session, self._session
                        msg = self._parse(frames)
                        self._session = tried
                    if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    if msg["msg_type"] == "execute_reply":
                        status = str(msg["content"].get("status"))
                        if status != "ok":
                            reason = f"{msg['content'].get('ename')}: {msg['content'].get('evalue')}"
                            raise KernelNotReady(f"the kernel refused a template step: {reason[:300]}")
                    elif msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                        idle = True
            await asyncio.sleep(0)
        self._drain()

    def mute_output(self) -> int:
        """Unsubscribe from IOPub and drop what is queued, unparsed; returns the bytes dropped.

        A subscriber that has unsubscribed gets nothing more from the publisher, so a flood
        stops costing the server anything at once; what is already in flight is skipped
        frame by frame without being stored.
        """
        if self._iopub is None:
            return 0
        self._iopub.subscribe(False)
        self._iopub.muted = True
        return self._iopub.clear()

    async def unmute_output(self, timeout: float) -> None:
        """Subscribe again and wait until IOPub delivers (a kernel_info round trip).

        Raises:
            KernelNotReady: the output stream did not come back in time.
        """
        if self._iopub is not None:
            self._iopub.muted = False
            self._iopub.subscribe(True)
        await self.wait_ready(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for wire in (self._shell, self._control, self._iopub, self._stdin):
            if wire is not None and wire.transport is not None:
                wire.transport.abort()

    # ------------------------------------------------------------------ requests

    def execute(self, code: str, *, allow_stdin: bool = False) -> str:
        """Send an ``execute_request``; return its msg_id, the key of every event it causes.

        With ``allow_stdin`` the code's ``input()`` arrives as :class:`InputRequest`, to be
        answered with :meth:`input_reply`; without, ``input()`` fails at once in the kernel.
        """
        self._drain()
        self._stdin_parent = None
        content = _execute_content(code, store_history=True)
        content["allow_stdin"] = allow_stdin and self._stdin is not None and self._stdin.usable
        return self._send(self._shell, "execute_request", content)

    def input_reply(self, value: str) -> None:
        """Answer the last :class:`InputRequest` (the kernel waits for this)."""
        if self._stdin is not None:
            msg = self._session.msg("input_reply", {"value": value}, parent=self._stdin_parent or {})
            self._stdin.send(self._session.serialize(msg, ident=None))

    def request(self, msg_type: str, content: dict[str, Any]) -> str:
        """Send one of :data:`PASSTHROUGH_REQUESTS` on shell; its reply arrives as :class:`ShellReply`.

        Raises:
            ValueError: ``msg_type`` is not a request that may be passed through.
        """
        if msg_type not in PASSTHROUGH_REQUESTS:
            raise ValueError(f"{msg_type!r} is not a request that may be passed to a kernel")
        self._drain()
        return self._send(self._shell, msg_type, content)

    def interrupt(self) -> None:
        """Ask the kernel to interrupt the running cell (``interrupt_request`` on control)."""
        self._send(self._control, "interrupt_request", {})

    def shutdown(self, *, restart: bool = False) -> None:
        self._send(self._control, "shutdown_request", {"restart": restart})

    async def next_event(self, msg_id: str, timeout: float) -> KernelEvent | None:
        """The next event caused by request ``msg_id``, or None.

        None means ``timeout`` passed, or a batch of messages that caused no event for this
        request was consumed: the caller checks its deadline and budget and calls again.
        Every message is counted in :attr:`traffic` whatever it is. A broken protocol on
        any channel comes back as :class:`Malformed`.
        """
        deadline = time.monotonic() + timeout
        handled = 0
        while True:
            for wire in (self._iopub, self._shell, self._control, self._stdin):
                if wire is None:
                    continue
                if wire.violation is not None:
                    return Malformed(wire.violation)
                while (frames := wire.pop()) is not None:
                    handled += 1
                    self._since_yield += 1
                    if self._since_yield >= YIELD_EVERY:
                        # Whatever the messages are, others get the loop every few dozen.
                        self._since_yield = 0
                        await asyncio.sleep(0)
                    event = self._event(frames, msg_id, wire)
                    if event is not None:
                        return event
                    if handled >= YIELD_EVERY:
                        return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await self._wait(remaining)

    def snapshot(self) -> Traffic:
        """A copy of the traffic counters, to budget an execution by their growth."""
        return replace(self.traffic)

    # ------------------------------------------------------------------ internals

    async def _connect(self) -> None:
        """Open the channels that are not open yet; the kernel may still be binding them."""
        loop = asyncio.get_running_loop()
        for attr, port, kind, cap in (
            ("_shell", "shell_port", b"DEALER", self._max_message_bytes),
            ("_iopub", "iopub_port", b"SUB", self._max_message_bytes),
            ("_control", "control_port", b"DEALER", CONTROL_MAX_MESSAGE_BYTES),
            ("_stdin", "stdin_port", b"DEALER", CONTROL_MAX_MESSAGE_BYTES),
        ):
            wire = getattr(self, attr)
            if wire is not None and not wire.lost:
                continue
            fresh = _Wire(
                kind,
                max_message_bytes=cap,
                traffic=self.traffic,
                wake=self._arrived.set,
                identity=self._identity if attr in ("_shell", "_stdin") else b"",
            )
            try:
                await loop.create_unix_connection(_factory(fresh), self._files.socket_path(port))
            except OSError:
                continue  # not bound yet (or gone): the caller retries until its deadline
            if self._closed:
                if fresh.transport is not None:
                    fresh.transport.abort()
                return
            setattr(self, attr, fresh)

    async def _wait(self, timeout: float) -> None:
        if timeout <= 0:
            return
        self._arrived.clear()
        if any(
            w is not None and (w._queue or w.violation) for w in (self._shell, self._iopub, self._control, self._stdin)
        ):
            return
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            pass

    def _send(self, wire: _Wire | None, msg_type: str, content: dict[str, Any]) -> str:
        msg = self._session.msg(msg_type, content)
        if wire is not None:
            wire.send(self._session.serialize(msg))
        return str(msg["header"]["msg_id"])

    def _event(self, frames: list[bytes], msg_id: str, wire: _Wire) -> KernelEvent | None:
        msg = self._parse(frames)
        if msg is None:
            self.traffic.malformed += 1
            return Malformed(f"a malformed message on {_channel(wire, self)} (not a signed Jupyter message)")
        if msg["parent_header"].get("msg_id") != msg_id or wire is self._control:
            self.traffic.ignored += 1
            return None
        if wire is self._stdin:
            return self._input_request(msg)
        try:
            event = _to_event(msg, from_shell=wire is self._shell)
        except _ProtocolViolation as exc:
            self.traffic.malformed += 1
            return Malformed(f"a malformed {str(msg['msg_type'])[:64]!r} message: {exc}")
        if event is None:
            self.traffic.ignored += 1
        return event

    def _input_request(self, msg: dict[str, Any]) -> KernelEvent | None:
        content = msg["content"]
        if msg["msg_type"] != "input_request":
            self.traffic.ignored += 1
            return None
        prompt = content.get("prompt", "")
        if not isinstance(prompt, str):
            self.traffic.malformed += 1
            return Malformed("a malformed 'input_request' message: prompt is not a string")
        self._stdin_parent = msg["header"]
        return InputRequest(prompt=prompt[:MAX_PROMPT_CHARS], password=content.get("password") is True)

    def _parse(self, frames: list[bytes]) -> dict[str, Any] | None:
        """Verify and decode one wire message; None when it is not a signed Jupyter message.

        Leaner than ``Session.deserialize``, which also parses every header date with
        dateutil: the executor needs the type, the parent's id and the content only. Never
        raises, whatever the bytes (bad UTF-8, deep nesting, huge numbers, wrong types).
        """
        try:
            i = frames.index(_DELIM)
            signature, header, parent, metadata, content = frames[i + 1 : i + 6]
        except ValueError:
            return None
        expected = self._session.sign([header, parent, metadata, content])
        if not hmac.compare_digest(signature, expected):
            return None
        try:
            head = json.loads(header)
            parent_header = json.loads(parent) if parent != b"{}" else {}
            body = json.loads(content)
        except (ValueError, RecursionError):
            return None
        if not isinstance(head, dict) or not isinstance(parent_header, dict) or not isinstance(body, dict):
            return None
        msg_type = head.get("msg_type")
        if not isinstance(msg_type, str) or not isinstance(parent_header.get("msg_id", ""), str):
            return None
        return {
            "msg_type": msg_type,
            "header": head,
            "parent_header": parent_header,
            "content": body,
            "content_bytes": len(content),
        }

    def _drain(self) -> None:
        """Drop what is still queued from earlier requests (late replies, stray output).

        Dropped unparsed: they were counted when they arrived.
        """
        for wire in (self._shell, self._iopub, self._control, self._stdin):
            if wire is not None:
                wire.clear()


def _factory(wire: _Wire) -> Callable[[], _Wire]:
    return lambda: wire


def _channel(wire: _Wire, conn: KernelConnection) -> str:
    return "shell" if wire is conn._shell else "control" if wire is conn._control else "iopub"


def _execute_content(code: str, *, store_history: bool) -> dict[str, Any]:
    return {
        "code": code,
        "silent": False,
        "store_history": store_history,
        "user_expressions": {},
        # No stdin channel: input() raises StdinNotImplementedError at once
        # instead of hanging until the deadline.
        "allow_stdin": False,
        "stop_on_error": store_history,
    }


# ---------------------------------------------------------------------------------- events


def _to_event(msg: dict[str, Any], *, from_shell: bool) -> KernelEvent | None:
    """The typed event of one message for our request, None for a type we do not use.

    Raises:
        _ProtocolViolation: a field we use has the wrong type or shape.
    """
    msg_type = msg["msg_type"]
    content = msg["content"]
    if not isinstance(content, dict):
        raise _ProtocolViolation("content is not an object")
    if from_shell:
        if msg_type in _PASSTHROUGH_REPLIES:
            return _shell_reply(msg)
        if msg_type != "execute_reply":
            return None
        count = content.get("execution_count")
        return Reply(
            status=_str(content, "status", "error"),
            execution_count=count if type(count) is int and 0 <= count < 2**53 else None,
            ename=_str(content, "ename", None),
            evalue=_str(content, "evalue", None),
            traceback=_strings(content.get("traceback")),
        )
    if msg_type == "stream":
        return Stream(
            name=_str(content, "name", "stdout"),
            text=_str(content, "text", ""),
            dropped=_int(content.get("execbox_dropped")),
        )
    if msg_type in ("display_data", "execute_result", "update_display_data"):
        data = content.get("data") or {}
        metadata = content.get("metadata") or {}
        if not isinstance(data, dict) or not isinstance(metadata, dict):
            raise _ProtocolViolation("data or metadata is not an object")
        if not _shallow(data) or not _shallow(metadata):
            raise _ProtocolViolation(f"data or metadata nested deeper than {MAX_DEPTH}")
        return Display(
            data=data,
            metadata=metadata,
            is_main=msg_type == "execute_result",
            dropped=_int(content.get("execbox_dropped")),
        )
    if msg_type == "error":
        return ErrorOutput(
            ename=_str(content, "ename", ""),
            evalue=_str(content, "evalue", ""),
            traceback=_strings(content.get("traceback")),
        )
    if msg_type == "clear_output":
        return ClearOutput(wait=content.get("wait") is True)
    if msg_type == "status":
        state = content.get("execution_state")
        if not isinstance(state, str):
            raise _ProtocolViolation("execution_state is not a string")
        return Idle() if state == "idle" else None
    return None


def _shell_reply(msg: dict[str, Any]) -> ShellReply:
    msg_type: str = msg["msg_type"]
    if msg["content_bytes"] > MAX_PASSTHROUGH_REPLY_BYTES:
        content: dict[str, Any] = {
            "status": "error",
            "ename": "ReplyTooLarge",
            "evalue": f"the kernel's {msg_type} was larger than {MAX_PASSTHROUGH_REPLY_BYTES} bytes and was dropped",
            "traceback": [],
        }
        return ShellReply(msg_type=msg_type, content=content)
    if not _shallow(msg["content"]):
        raise _ProtocolViolation(f"content nested deeper than {MAX_DEPTH}")
    return ShellReply(msg_type=msg_type, content=msg["content"])


def _str(content: dict[str, Any], key: str, default: Any) -> Any:
    value = content.get(key, default)
    if value is default or isinstance(value, str):
        return value
    raise _ProtocolViolation(f"{key} is not a string")


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
        raise _ProtocolViolation("traceback is not a list of strings")
    return value


def _int(value: Any) -> int:
    return value if type(value) is int and 0 < value < 2**53 else 0


def _shallow(value: Any) -> bool:
    """Whether ``value`` nests containers at most ``MAX_DEPTH`` deep (iterative: no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= MAX_DEPTH:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True
