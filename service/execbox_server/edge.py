"""The HTTP protocol uvicorn runs for us: its httptools protocol plus the deadlines it lacks.

uvicorn has no deadline for reading a request: a client that connects and sends nothing, or
half a request line and then one byte now and then (slowloris), holds a connection and its
parser state for as long as it likes, and enough of them exhaust the server's file
descriptors and memory. This protocol closes a connection whose request line and headers are
not complete within ``header_timeout_s`` of their first byte (or of the connection, for the
first request), whose headers grow past ``MAX_HEADER_BYTES``, or whose body stalls for
``body_timeout_s`` between two reads while the server waits for it. Idle keep-alive
connections between requests stay governed by uvicorn's ``timeout_keep_alive``.

It also lets a client read an answer sent before its body was read (401 from the key check,
413 from the size limit). uvicorn closes a ``Connection: close`` connection right after such
an answer, with the rest of the body unread in the socket; the kernel then resets the
connection, and a client still writing its body (urllib, requests with ``Connection:
close``) sees a broken pipe, never the answer. Here the answer is sent at once, the sending
side is shut, and the rest of the body is read and dropped — up to ``LINGER_MAX_BYTES``
within ``LINGER_TIMEOUT_S`` — before the connection closes. On a kept-alive connection
uvicorn drops the rest of the body itself; the same bound applies.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["GuardedHttpToolsProtocol", "guarded_protocol"]

# Request line plus headers; far above what any client of this API sends (uvicorn's h11
# protocol stops at 16 KiB), far below what would hurt.
MAX_HEADER_BYTES = 64 * 1024
# The rest of a body answered early is dropped up to this much, so that a client that
# sends a body over the limit by mistake still reads its 413. Dropping costs bandwidth, not
# memory: nothing is kept.
LINGER_MAX_BYTES = 128 * 1024 * 1024
LINGER_TIMEOUT_S = 30.0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size cap and a body idle deadline."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_pending = False  # the request being parsed still has body bytes to come
        self._dropped = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._close_when_drained = False

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_clock()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        self._stop_body_clock()
        self._stop_lingering()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        head = self._header_timer
        super().data_received(data)
        if head is not None and self._header_timer is head and not self.transport.is_closing():
            # The same request's head before and after this chunk: the parser buffers it all.
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._stop_header_clock()
                self._answer_and_close(431, "Request Header Fields Too Large")

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._start_header_clock()

    def on_headers_complete(self) -> None:
        self._stop_header_clock()
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # handed to the WebSocket protocol: none of this connection is ours any more
        self._body_pending, self._dropped, self._close_when_drained = True, 0, False
        if self.cycle is not None and not isinstance(self.cycle.transport, _CloseAfterBody):
            self.cycle.transport = _CloseAfterBody(self, self.cycle.transport)
        self._restart_body_clock()  # stopped again at once when the message has no body

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None and self.cycle.response_complete:
            self._dropped += len(body)  # answered already: uvicorn drops it
            if self._dropped > LINGER_MAX_BYTES:
                self._close_now()
        super().on_body(body)
        self._restart_body_clock()

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._stop_body_clock()
        super().on_message_complete()
        if self._close_when_drained:
            self._close_now()
        else:
            self._stop_lingering()

    def on_response_complete(self) -> None:
        if self._body_pending and not self._close_when_drained and not self.transport.is_closing():
            self._start_lingering()  # kept alive: bound what uvicorn will drop
        super().on_response_complete()

    # ------------------------------------------------------------------ answered before the body

    def close_after_body(self, seen_by: _CloseAfterBody) -> None:
        """A request's cycle closes the connection: close it, but if that request's body is
        still coming, let the client finish sending it (bounded) so it can read the answer."""
        transport = self.transport
        current = self.cycle is not None and self.cycle.transport is seen_by
        if not current or not self._body_pending or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # the answer is all the client gets: it reads it, then EOF
        self._close_when_drained = True
        self._start_lingering()

    def _start_lingering(self) -> None:
        if self._linger_timer is None:
            self._linger_timer = self.loop.call_later(LINGER_TIMEOUT_S, self._close_now)

    def _stop_lingering(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _close_now(self) -> None:
        self._stop_lingering()
        self._close_when_drained = False
        if not self.transport.is_closing():
            self.transport.close()

    # ------------------------------------------------------------------ clocks

    def _start_header_clock(self) -> None:
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _restart_body_clock(self) -> None:
        self._stop_body_clock()
        self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)

    def _stop_body_clock(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        self.logger.info("closing a connection whose request head took over %.0fs", self.header_timeout_s)
        self._answer_and_close(408, "Request Timeout")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.flow is not None and self.flow.read_paused:
            # Reading is paused because the application has not taken what arrived: the
            # wait is ours, not the client's.
            self._restart_body_clock()
            return
        self.logger.info("closing a connection whose request body stalled for %.0fs", self.body_timeout_s)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # the application sees http.disconnect

    def _answer_and_close(self, status: int, reason: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        # Only between responses: never write into the middle of another response.
        if self.cycle is None or self.cycle.response_complete:
            body = reason.encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
            )
        self.transport.close()


class _CloseAfterBody(asyncio.Transport):
    """The transport as one request's cycle sees it: ``close`` waits for the request body.

    uvicorn's cycle closes the connection itself once a response that does not keep it
    alive is complete; this is the one seam through which that close can be deferred.
    """

    def __init__(self, protocol: GuardedHttpToolsProtocol, transport: asyncio.Transport) -> None:
        super().__init__()
        self._protocol = protocol
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._protocol.close_after_body(self)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


def guarded_protocol(*, header_timeout_s: float, body_timeout_s: float) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``http=``), with these deadlines."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
