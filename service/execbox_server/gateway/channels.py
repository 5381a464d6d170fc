"""One websocket of ``/api/kernels/{id}/channels``: Jupyter messages in, Jupyter messages out.

Nothing a client sends reaches the kernel as it was sent, and nothing the kernel sends reaches
the client as it was sent:

- ``execute_request`` runs through ``SessionManager.run_reserved``, the path of ``/v1`` sessions:
  the server's deadline and its interrupt ladder, the output caps, ``state_lost``, quotas and
  metrics. Its typed events become ``stream`` / ``display_data`` / ``execute_result`` / ``error``
  messages here, and the Execution becomes the ``execute_reply``; whatever execbox had to do
  (stop the code, replace the kernel, cut output) is told to the client as an ``error`` or a
  ``stream`` on stderr, never hidden.
- Information requests (``kernel_info``, ``complete``, ``inspect``, ``is_complete``,
  ``history``, ``comm_info``) are relayed by ``kernel.KernelConnection.request``; the reply's
  content comes back validated and capped.
- ``input()`` reaches the client (``input_request`` on stdin) only when its ``execute_request``
  set ``allow_stdin``; otherwise it fails at once in the kernel.

Shell requests are served one at a time, in order, as a kernel serves them; ``interrupt_request``
and ``shutdown_request`` (control) act at once. A client that goes away gets its running cell
interrupted, and its queued requests dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Awaitable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from execbox._models import (
    ErrorEvent,
    ExecuteRequest,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    ResultEvent,
    StderrEvent,
    StdoutEvent,
)
from execbox_server.api.deps import Services
from execbox_server.errors import ServiceError, SessionNotFound
from execbox_server.gateway.models import (
    Channel,
    InvalidMessage,
    JupyterMessage,
    MessageHeader,
    WireProtocol,
    decode,
    encode,
    new_message,
)
from execbox_server.kernel import PASSTHROUGH_REQUESTS, InputRequest
from execbox_server.sessions import SessionEntry

__all__ = ["GatewayHub", "KernelChannels", "kernel_session_tag", "restart_kernel"]

log = logging.getLogger("execbox.gateway")

# Requests queued on one websocket; a client past it is misbehaving and is disconnected.
MAX_QUEUED_REQUESTS = 256
# Output messages waiting for a slow client; past it, output is dropped (and the client told).
OUTBOX_BYTES = 4 * 1024 * 1024
PASSTHROUGH_TIMEOUT_S = 10.0
# Close codes: 1008 policy violation, 4004 the kernel does not exist (any more).
CLOSE_POLICY = 1008
CLOSE_GONE = 4004

# What the client sees as the ``ename`` when execbox, not the code, ended a cell.
_STATUS_ENAMES = {
    ExecutionStatus.TIMEOUT: "ExecutionTimeout",
    ExecutionStatus.INTERRUPTED: "ExecutionInterrupted",
    ExecutionStatus.OUT_OF_MEMORY: "OutOfMemory",
    ExecutionStatus.OUTPUT_LIMIT: "OutputLimitExceeded",
    ExecutionStatus.KERNEL_DIED: "KernelDied",
    ExecutionStatus.SANDBOX_LOST: "SandboxLost",
}
_MARKER = re.compile(r"\n\[\.\.\. \d+ bytes truncated \.\.\.\]\n")


def kernel_session_tag(session: SessionEntry) -> str:
    """The ``session`` of messages from the kernel's side: it changes whenever the kernel is
    replaced (restart, ``state_lost``), which is how JupyterLab tells a new kernel from the old."""
    return f"{session.id}-{getattr(session.kernel, 'short_id', 'none')}"


class GatewayHub:
    """The websockets open on each session of this instance: the kernel model counts them, a
    restart tells them, a delete closes them."""

    def __init__(self) -> None:
        self._open: dict[str, set[KernelChannels]] = {}

    def connections(self, session_id: str) -> int:
        return len(self._open.get(session_id, ()))

    def attach(self, channels: KernelChannels) -> None:
        self._open.setdefault(channels.session_id, set()).add(channels)

    def detach(self, channels: KernelChannels) -> None:
        open_ = self._open.get(channels.session_id)
        if open_ is not None:
            open_.discard(channels)
            if not open_:
                del self._open[channels.session_id]

    def status(self, session_id: str, state: str, tag: str) -> None:
        for channels in list(self._open.get(session_id, ())):
            channels.publish_status(state, None, tag)

    def drop_queued(self, session_id: str) -> None:
        for channels in list(self._open.get(session_id, ())):
            channels.drop_queued()

    async def close(self, session_id: str) -> None:
        for channels in list(self._open.get(session_id, ())):
            await channels.close(CLOSE_GONE, "the kernel was shut down")


async def restart_kernel(services: Services, hub: GatewayHub, owner: str | None, session_id: str) -> SessionEntry:
    """Restart as Jupyter does: whatever runs is stopped (interrupt, then the ladder), queued
    requests are dropped, and the session gets a fresh kernel (all variables are lost).

    Raises:
        SessionNotFound; SessionBusy when the running cell could not be stopped in time;
        PoolExhausted / EngineUnavailable when no fresh kernel could be had.
    """
    session = services.sessions.get(owner, session_id)
    # No ``status: restarting`` here: on iopub it means the server restarted a kernel that died
    # (jupyter_server sends it from its auto-restarter only), and JupyterLab answers it with a
    # "The kernel appears to have died" dialog. A client that asked for the restart knows.
    hub.drop_queued(session_id)
    settings = services.settings
    # The ladder's worst case (interrupt, SIGINT, kill) plus a margin for the replacement.
    budget = settings.interrupt_grace_s * 2 + 5
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    while True:
        services.sessions.interrupt(owner, session_id)
        if session.busy and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await session.idle.wait()
        try:
            await services.sessions.restart(owner, session_id)
            break
        except ServiceError:
            # Busy again: a request that was already taken off a queue reserved it first.
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.05)
    tag = kernel_session_tag(session)
    hub.status(session_id, "starting", tag)
    hub.status(session_id, "idle", tag)
    return session


class _Outbox:
    """Frames waiting for the client, sent by one task in order.

    Output (streams, displays) is dropped once ``max_bytes`` wait for a slow client, and counted;
    replies and status messages are always kept (a few per request, requests are bounded), so a
    client never waits forever for an answer.
    """

    def __init__(self, websocket: WebSocket, protocol: WireProtocol, max_bytes: int = OUTBOX_BYTES) -> None:
        self._ws = websocket
        self._protocol = protocol
        self._max_bytes = max_bytes
        self._frames: deque[str | bytes] = deque()
        self._size = 0
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def put(self, msg: JupyterMessage, *, droppable: bool = False) -> bool:
        if self.closed:
            return False
        frame = encode(msg, self._protocol)
        if droppable and self._size + len(frame) > self._max_bytes:
            self.dropped += 1
            return False
        self._frames.append(frame)
        self._size += len(frame)
        self._ready.set()
        return True

    async def run(self) -> None:
        try:
            while True:
                while not self._frames:
                    self._ready.clear()
                    await self._ready.wait()
                frame = self._frames.popleft()
                self._size -= len(frame)
                if isinstance(frame, str):
                    await self._ws.send_text(frame)
                else:
                    await self._ws.send_bytes(frame)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client is gone; the receive side notices and cleans up
        finally:
            self.closed = True
            self._frames.clear()
            self._size = 0


class KernelChannels:
    def __init__(
        self,
        websocket: WebSocket,
        *,
        services: Services,
        hub: GatewayHub,
        owner: str | None,
        session_id: str,
        protocol: WireProtocol,
    ) -> None:
        self.session_id = session_id
        self._ws = websocket
        self._services = services
        self._hub = hub
        self._owner = owner
        self._protocol = protocol
        self._outbox = _Outbox(websocket, protocol)
        self._queue: deque[JupyterMessage] = deque()
        self._queued = asyncio.Event()
        self._closed = False
        self._running: SessionEntry | None = None
        self._input_pending = False
        self._tasks: list[asyncio.Task[None]] = []
        self.malformed = 0

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        """Serve the (accepted) websocket until the client or the kernel goes away."""
        loop = asyncio.get_running_loop()
        self._hub.attach(self)
        sender = loop.create_task(self._outbox.run())
        worker = loop.create_task(self._work())
        keepalive = loop.create_task(self._keepalive())
        # Held by the service too: shutdown cancels a worker still finishing a cell.
        for task in (worker,):
            self._services.tasks.add(task)
            task.add_done_callback(self._services.tasks.discard)
        self._tasks = [sender, keepalive]
        with contextlib.suppress(SessionNotFound):
            session = self._services.sessions.get(self._owner, self.session_id)
            # The kernel's state, without a parent, to the client that just connected: JupyterLab
            # ignores statuses caused by kernel_info (jupyter_server's untracked_message_types),
            # so after it reconnects (a replaced kernel, a restart) this is how it learns "idle".
            self.publish_status("busy" if session.busy else "idle", None, kernel_session_tag(session))
        try:
            await self._receive()
        finally:
            self._closed = True
            self._hub.detach(self)
            self.drop_queued()
            self._queued.set()
            running = self._running
            if running is not None and running.interrupt is not None:
                # The client went away mid-cell: stop it rather than run on to the deadline.
                running.interrupt.set()
            for task in self._tasks:
                task.cancel()
            # The worker ends by itself once the interrupted cell has ended.

    async def close(self, code: int, reason: str) -> None:
        self._closed = True
        self._queued.set()
        if self._ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                await self._ws.close(code, reason)

    def drop_queued(self) -> None:
        self._queue.clear()

    def publish_status(self, state: str, parent: MessageHeader | None, tag: str) -> None:
        self._outbox.put(new_message(Channel.IOPUB, "status", {"execution_state": state}, parent=parent, session=tag))

    # ------------------------------------------------------------------ receiving

    async def _receive(self) -> None:
        max_bytes = self._services.settings.max_code_bytes * 2 + 65_536
        while not self._closed:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = message.get("text")
            if frame is None:
                frame = message.get("bytes") or b""
            try:
                msg = decode(frame, self._protocol, max_bytes=max_bytes)
            except InvalidMessage as exc:
                self.malformed += 1
                log.info("dropped a client message", extra={"fields": {"session": self.session_id, "why": str(exc)}})
                continue
            await self._dispatch(msg)

    async def _dispatch(self, msg: JupyterMessage) -> None:
        kind = msg.msg_type
        if msg.channel is Channel.STDIN:
            if kind == "input_reply" and self._input_pending and self._running is not None:
                self._input_pending = False
                value = msg.content.get("value")
                if self._running.kernel is not None:
                    self._running.kernel.conn.input_reply(value if isinstance(value, str) else "")
            return
        if msg.channel is Channel.CONTROL and kind == "interrupt_request":
            try:
                self._services.sessions.interrupt(self._owner, self.session_id)
                content: dict[str, Any] = {"status": "ok"}
            except SessionNotFound as exc:
                content = _error_content("KernelNotFound", exc.message)
            self._reply(msg, "interrupt_reply", content)
            return
        if kind == "shutdown_request":
            self._spawn(self._shutdown(msg))
            return
        if kind == "execute_request" or kind in PASSTHROUGH_REQUESTS:
            if msg.channel is Channel.IOPUB:
                return
            if len(self._queue) >= MAX_QUEUED_REQUESTS:
                await self.close(CLOSE_POLICY, f"more than {MAX_QUEUED_REQUESTS} requests queued")
                return
            self._queue.append(msg)
            self._queued.set()
            return
        # comm_open / comm_msg / comm_close (widgets), debug_request, and anything unknown: a
        # kernel ignores what it does not handle, and so do we (README lists what is supported).
        log.debug("ignored a %s message on %s", kind[:64], msg.channel.value)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(_logged(work))
        self._tasks.append(task)

    # ------------------------------------------------------------------ serving requests

    async def _work(self) -> None:
        while True:
            while not self._queue:
                if self._closed:
                    return
                self._queued.clear()
                await self._queued.wait()
            msg = self._queue.popleft()
            try:
                await self._serve_one(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gateway request failed")
                self._reply(
                    msg, _reply_type(msg.msg_type), _error_content("InternalError", "the request failed inside execbox")
                )

    async def _serve_one(self, msg: JupyterMessage) -> None:
        try:
            session = await self._reserve()
        except SessionNotFound as exc:
            self._reply(msg, _reply_type(msg.msg_type), _error_content("KernelNotFound", exc.message))
            await self.close(CLOSE_GONE, "the kernel no longer exists")
            return
        if self._closed:
            session.unreserve()
            return
        tag = kernel_session_tag(session)
        self.publish_status("busy", msg.header, tag)
        state_lost = False
        if msg.msg_type == "execute_request":
            state_lost = await self._execute(session, msg)
        else:
            await self._passthrough(session, msg)
        tag = kernel_session_tag(session)
        self.publish_status("idle", msg.header, tag)
        if state_lost:
            # The kernel died (or was replaced) and the session has a fresh one: Jupyter's word
            # for that is ``status: restarting`` without a parent, what jupyter_server's
            # auto-restarter sends, so every client of the kernel drops what it knew of its state
            # (JupyterLab says the kernel died and reconnects).
            self._hub.status(self.session_id, "restarting", tag)

    async def _reserve(self) -> SessionEntry:
        """Wait for the session to be free (another websocket's cell, a /v1 execution), then take it."""
        while True:
            session = self._services.sessions.get(self._owner, self.session_id)
            if not session.busy:
                session.reserve("")
                return session
            await session.idle.wait()

    async def _passthrough(self, session: SessionEntry, msg: JupyterMessage) -> None:
        reply_type = _reply_type(msg.msg_type)
        try:
            reply = await self._services.sessions.kernel_request(
                session, msg.msg_type, msg.content, timeout=PASSTHROUGH_TIMEOUT_S
            )
        except ServiceError as exc:
            self._reply(msg, reply_type, _error_content(exc.code.value, exc.message))
            return
        if reply is None:
            content = _error_content("KernelNotResponding", f"the kernel did not answer {msg.msg_type} in time")
        else:
            content = dict(reply.content)
            if reply.msg_type == "kernel_info_reply":
                # The debugger is not relayed (debug_request is not supported): say so, so that
                # JupyterLab does not offer it.
                content["debugger"] = False
        self._reply(msg, reply_type, content, tag=kernel_session_tag(session))

    async def _execute(self, session: SessionEntry, msg: JupyterMessage) -> bool:
        """Run one ``execute_request``; return whether the kernel's state was lost."""
        content = msg.content
        code = content.get("code")
        settings = self._services.settings
        problem = None
        if not isinstance(code, str):
            problem = "execute_request content has no 'code' string"
        elif len(code.encode("utf-8", "surrogatepass")) > settings.max_code_bytes:
            problem = (
                f"code is larger than this server accepts ({settings.max_code_bytes} bytes, EXECBOX_MAX_CODE_BYTES)"
            )
        if problem is not None or not isinstance(code, str):
            session.unreserve()
            self._finish_refused(msg, "InvalidRequest", problem or "")
            return False
        try:
            slot = self._services.quotas.execution(self._owner)
        except ServiceError as exc:
            session.unreserve()
            self._finish_refused(msg, "QuotaExceeded", exc.message)
            return False
        tag = kernel_session_tag(session)
        silent = content.get("silent") is True
        if not silent:
            self._publish(msg, "execute_input", {"code": code, "execution_count": session.executions + 1}, tag)
        streamed = {"stdout": 0, "stderr": 0}

        async def on_event(event: ExecutionEvent) -> None:
            if silent:
                return
            if isinstance(event, StdoutEvent | StderrEvent):
                streamed[event.type] += len(event.text)
                self._publish(msg, "stream", {"name": event.type, "text": event.text}, tag, droppable=True)
            elif isinstance(event, ResultEvent):
                result = event.result
                if result.is_main_result:
                    body = {"data": result.data, "metadata": result.metadata, "execution_count": session.executions + 1}
                    self._publish(msg, "execute_result", body, tag, droppable=True)
                else:
                    body = {"data": result.data, "metadata": result.metadata, "transient": {}}
                    self._publish(msg, "display_data", body, tag, droppable=True)
            elif isinstance(event, ErrorEvent):
                err = event.error
                body = {"ename": err.name, "evalue": err.value, "traceback": err.traceback}
                self._publish(msg, "error", body, tag, droppable=True)

        async def on_input(request: InputRequest) -> None:
            self._input_pending = True
            self._outbox.put(
                new_message(
                    Channel.STDIN,
                    "input_request",
                    {"prompt": request.prompt, "password": request.password},
                    parent=msg.header,
                    session=tag,
                )
            )

        allow_stdin = content.get("allow_stdin") is True
        self._running = session
        try:
            execution = await slot.hold(
                self._services.sessions.run_reserved(
                    session, ExecuteRequest(code=code), on_event, on_input=on_input if allow_stdin else None
                )
            )
        except ServiceError as exc:
            self._finish_refused(msg, exc.code.value, exc.message, tag=tag)
            return False
        finally:
            self._running = None
            self._input_pending = False
        self._finish(msg, execution, streamed, tag=kernel_session_tag(session), shown=not silent)
        if execution.status is not ExecutionStatus.OK and content.get("stop_on_error", True) is not False:
            self._abort_queued()
        return execution.state_lost

    def _finish(
        self, msg: JupyterMessage, execution: Execution, streamed: dict[str, int], *, tag: str, shown: bool
    ) -> None:
        """What the Execution adds to what was streamed, then the ``execute_reply``."""
        if shown:
            for name, text in (("stdout", execution.stdout), ("stderr", execution.stderr)):
                # The head was streamed; the tail kept past a cut arrives with the cut's marker.
                found = _MARKER.search(text, max(0, streamed[name] - 8))
                if found is not None:
                    self._publish(msg, "stream", {"name": name, "text": text[found.start() :]}, tag)
            notes = []
            if self._outbox.dropped:
                notes.append(f"{self._outbox.dropped} output messages were not sent: the client read too slowly")
                self._outbox.dropped = 0
            if execution.truncated and execution.status is not ExecutionStatus.OUTPUT_LIMIT:
                t = execution.truncation
                notes.append(
                    f"output was cut to this server's limits ({t.stdout_bytes} stdout bytes, {t.stderr_bytes} stderr "
                    f"bytes, {t.results} results, {t.traceback_lines} traceback lines dropped)"
                )
            if notes:
                self._publish(
                    msg, "stream", {"name": "stderr", "text": "".join(f"[execbox] {n}\n" for n in notes)}, tag
                )
        ename = _STATUS_ENAMES.get(execution.status)
        error = execution.error
        if execution.status is ExecutionStatus.INTERRUPTED and not execution.state_lost and error is not None:
            # A client's interrupt that the kernel honoured: its KeyboardInterrupt, as Jupyter shows it.
            ename = None
        if ename is not None:
            # execbox ended the cell: say how, even when the kernel's KeyboardInterrupt was shown.
            evalue = execution.message or execution.status.value
            traceback = [f"{ename}: {evalue}"]
            if shown:
                self._publish(msg, "error", {"ename": ename, "evalue": evalue, "traceback": traceback}, tag)
            reply = _error_content(ename, evalue, traceback)
        elif error is not None or execution.status is ExecutionStatus.ERROR:
            reply = _error_content(
                error.name if error else "Error", error.value if error else "", error.traceback if error else []
            )
        else:
            reply = {"status": "ok", "user_expressions": {}, "payload": []}
        reply["execution_count"] = execution.execution_count
        if execution.state_lost:
            # As a Jupyter client sees a kernel that died: its state is gone.
            reply["execbox"] = {"state_lost": True, "status": execution.status.value}
        self._reply(msg, "execute_reply", reply, tag=tag)

    def _finish_refused(self, msg: JupyterMessage, ename: str, evalue: str, *, tag: str = "") -> None:
        self._publish(msg, "error", {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}, tag)
        reply = _error_content(ename, evalue)
        reply["execution_count"] = None
        self._reply(msg, "execute_reply", reply, tag=tag)

    def _abort_queued(self) -> None:
        """After an error, the cells queued behind it are not run (ipykernel's ``stop_on_error``)."""
        kept: deque[JupyterMessage] = deque()
        while self._queue:
            queued = self._queue.popleft()
            if queued.msg_type != "execute_request":
                kept.append(queued)
                continue
            self.publish_status("busy", queued.header, "")
            self._reply(queued, "execute_reply", {"status": "aborted", "execution_count": None})
            self.publish_status("idle", queued.header, "")
        self._queue = kept

    async def _shutdown(self, msg: JupyterMessage) -> None:
        restart = msg.content.get("restart") is True
        try:
            if restart:
                await restart_kernel(self._services, self._hub, self._owner, self.session_id)
            else:
                self._hub.drop_queued(self.session_id)
                await self._services.sessions.delete(self._owner, self.session_id)
            content: dict[str, Any] = {"status": "ok", "restart": restart}
        except ServiceError as exc:
            content = _error_content(exc.code.value, exc.message)
            content["restart"] = restart
        self._reply(msg, "shutdown_reply", content)
        if not restart and content["status"] == "ok":
            await self._hub.close(self.session_id)

    async def _keepalive(self) -> None:
        """A connected client is not idle: the session's idle expiry is pushed back while the
        websocket is open (its maximum lifetime still applies), as jupyter_server does not cull
        connected kernels."""
        period = max(0.5, min(30.0, self._services.settings.session_ttl_s / 4))
        while not self._closed:
            await asyncio.sleep(period)
            try:
                self._services.sessions.keepalive(self._owner, self.session_id)
            except SessionNotFound:
                await self.close(CLOSE_GONE, "the kernel expired or was deleted")
                return

    # ------------------------------------------------------------------ sending

    def _publish(
        self, parent: JupyterMessage, msg_type: str, content: dict[str, Any], tag: str, *, droppable: bool = False
    ) -> None:
        self._outbox.put(
            new_message(Channel.IOPUB, msg_type, content, parent=parent.header, session=tag), droppable=droppable
        )

    def _reply(self, request: JupyterMessage, msg_type: str, content: dict[str, Any], *, tag: str = "") -> None:
        channel = Channel.CONTROL if request.channel is Channel.CONTROL else Channel.SHELL
        self._outbox.put(new_message(channel, msg_type, content, parent=request.header, session=tag))


def _reply_type(request_type: str) -> str:
    return request_type.removesuffix("_request") + "_reply"


def _error_content(ename: str, evalue: str, traceback: list[str] | None = None) -> dict[str, Any]:
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": traceback or []}


async def _logged(work: Awaitable[None]) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("gateway control request failed")
