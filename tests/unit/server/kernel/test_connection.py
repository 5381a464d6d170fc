"""The kernel connection against libzmq peers standing in for a hostile kernel (no Docker).

The peers bind the IPC sockets a kernel would, sign with the connection's key, and send
what code inside a sandbox could: floods of messages the service does not use, one message
of very many frames, garbage. The connection must count everything, hold a bounded number
of bytes, hand control back regularly and never raise.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from jupyter_client.session import Session

from execbox_server.kernel import ConnectionFiles, KernelConnection, Malformed, Stream
from execbox_server.kernel.connection import MAX_QUEUED_BYTES, YIELD_EVERY


class FakeKernel:
    """libzmq sockets bound where the kernel's would be, and a session with the same key."""

    def __init__(self, files: ConnectionFiles) -> None:
        self.ctx = zmq.Context()
        self.iopub = self.ctx.socket(zmq.PUB)
        self.iopub.setsockopt(zmq.SNDHWM, 0)
        self.shell = self.ctx.socket(zmq.ROUTER)
        self.control = self.ctx.socket(zmq.ROUTER)
        for sock, port in ((self.shell, "shell_port"), (self.iopub, "iopub_port"), (self.control, "control_port")):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(files.endpoint(port))
        self.session = Session(key=files.key.encode(), signature_scheme="hmac-sha256")

    def publish(self, msg_type: str, content: Any, parent: dict[str, Any]) -> None:
        msg = self.session.msg(msg_type, content if isinstance(content, dict) else {}, parent=parent)
        if not isinstance(content, dict):
            msg["content"] = content  # str/bytes: sent as they are, still signed
        self.session.send(self.iopub, msg)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.fixture()
def files(tmp_path: Path) -> ConnectionFiles:
    return ConnectionFiles(host_dir=tmp_path, key="k" * 64)


@pytest.fixture()
def kernel(files: ConnectionFiles) -> Iterator[FakeKernel]:
    k = FakeKernel(files)
    yield k
    k.close()


async def connect(files: ConnectionFiles, **kw: Any) -> KernelConnection:
    conn = KernelConnection(files, **kw)
    await conn._connect()
    # Let the handshakes and the subscription reach the peers.
    for _ in range(50):
        await asyncio.sleep(0.01)
        if all(w is not None and w._ready for w in (conn._shell, conn._iopub, conn._control)):
            break
    await asyncio.sleep(0.05)
    return conn


PARENT = {"msg_id": "ours"}


async def test_a_flood_without_events_is_counted_and_hands_control_back(
    files: ConnectionFiles, kernel: FakeKernel
) -> None:
    conn = await connect(files)
    n = 47 * YIELD_EVERY  # whole batches: the last call need not wait for more
    for i in range(n):
        kind = i % 3
        if kind == 0:
            kernel.publish("stream", {"name": "stdout", "text": "x"}, {"msg_id": "someone-else"})
        elif kind == 1:
            kernel.publish("execbox_bogus", {"x": 1}, PARENT)
        else:
            kernel.publish("comm_msg", {"data": {}}, PARENT)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.3)  # all of it has arrived (or is queued on the peer's side)
    t0 = time.monotonic()
    calls = 0
    while conn.traffic.ignored < n and time.monotonic() - t0 < 10:
        assert await conn.next_event("ours", 30) is None
        calls += 1
    elapsed = time.monotonic() - t0
    task.cancel()
    # Every message counted, none an event; next_event came back after each bounded batch
    # (not at its 30 s timeout), and other tasks ran in between.
    assert conn.traffic.messages >= n and conn.traffic.ignored == n
    assert calls == n // YIELD_EVERY and elapsed < 10
    assert ticks >= calls // 2
    conn.close()


async def test_one_message_of_many_frames_is_dropped_as_it_streams_by(
    files: ConnectionFiles, kernel: FakeKernel
) -> None:
    conn = await connect(files, max_message_bytes=4 * 1024 * 1024)
    chunk = zmq.Frame(b"z" * (1 << 20))
    for _ in range(300):  # 300 MiB in one message: libzmq would hold all of it
        kernel.iopub.send(chunk, zmq.SNDMORE, copy=False)
    kernel.iopub.send(b"end")
    wire = conn._iopub
    assert wire is not None
    peak = 0
    t0 = time.monotonic()
    while conn.traffic.oversized == 0 or conn.traffic.bytes < 300 << 20:
        await asyncio.sleep(0.01)
        peak = max(peak, len(wire._buf) + wire._size + wire._queued)
        assert time.monotonic() - t0 < 30, conn.traffic
    # Held at most the per-message cap plus a read chunk; nothing queued from it.
    assert peak <= 4 * 1024 * 1024 + 512 * 1024, peak
    assert conn.traffic.oversized == 1 and wire._queued == 0
    # The stream goes on afterwards.
    kernel.publish("stream", {"name": "stdout", "text": "after"}, PARENT)
    event = await conn.next_event("ours", 5)
    assert event == Stream(name="stdout", text="after")
    conn.close()


async def test_a_reader_that_falls_behind_stops_reading_instead_of_queueing(
    files: ConnectionFiles, kernel: FakeKernel
) -> None:
    conn = await connect(files)
    text = "q" * 60_000
    for _ in range(400):  # ~24 MB published, never taken
        kernel.publish("stream", {"name": "stdout", "text": text}, PARENT)
    await asyncio.sleep(1.0)
    wire = conn._iopub
    assert wire is not None and wire._paused
    assert wire._queued <= MAX_QUEUED_BYTES + 256 * 1024
    conn.close()


async def test_the_control_channel_is_capped_and_drained(files: ConnectionFiles, kernel: FakeKernel) -> None:
    conn = await connect(files)
    conn.interrupt()  # the kernel learns our routing id from it
    ident = kernel.control.recv_multipart()[0]
    for _ in range(200):
        kernel.control.send_multipart([ident, b"junk" * 1000])
    kernel.control.send_multipart([ident, b"x" * (256 * 1024)])  # past the control cap: dropped
    await asyncio.sleep(0.3)
    assert await conn.next_event("ours", 0.5) is not None or conn.traffic.messages >= 201
    assert conn.traffic.oversized >= 1
    assert (conn._control is not None and conn._control._queued == 0) or conn.traffic.malformed >= 1
    conn.close()


GARBAGE: list[tuple[str, str, Any]] = [
    ("content is a list", "stream", "[1, 2, 3]"),
    ("content is not UTF-8", "stream", b'{"name": "stdout", "text": "\xff\xfe"}'),
    ("a number too long to parse", "stream", '{"name": "stdout", "text": ' + "9" * 5000 + "}"),
    ("nesting deeper than the parser goes", "display_data", '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    (
        "metadata nested deeper than kept",
        "display_data",
        '{"data": {}, "metadata": {"m": ' + "[" * 500 + "]" * 500 + "}}",
    ),
    ("stream text is an object", "stream", '{"name": "stdout", "text": {"a": 1}}'),
    ("traceback is a number", "error", '{"ename": "E", "evalue": "v", "traceback": 7}'),
    ("data is a list", "display_data", '{"data": [["text/plain", "x"]], "metadata": {}}'),
    ("execution_state is a list", "status", '{"execution_state": ["idle"]}'),
]


@pytest.mark.parametrize(("what", "msg_type", "content"), GARBAGE, ids=[g[0] for g in GARBAGE])
async def test_signed_garbage_is_reported_as_malformed_never_raised(
    files: ConnectionFiles, kernel: FakeKernel, what: str, msg_type: str, content: Any
) -> None:
    conn = await connect(files)
    kernel.publish(msg_type, content, PARENT)
    event = await conn.next_event("ours", 5)
    assert isinstance(event, Malformed), (what, event)
    assert conn.traffic.malformed == 1
    conn.close()


async def test_wrong_types_in_header_or_parent_are_malformed(files: ConnectionFiles, kernel: FakeKernel) -> None:
    conn = await connect(files)
    s = kernel.session
    for header, parent in ((["a", "list"], {}), ({"msg_type": 3}, {}), ({"msg_type": "stream"}, ["x"])):
        frames = [json.dumps(header).encode(), json.dumps(parent).encode(), b"{}", b'{"name": "stdout", "text": "x"}']
        kernel.iopub.send_multipart([b"<IDS|MSG>", s.sign(frames), *frames])
        assert isinstance(await conn.next_event("ours", 5), Malformed)
    # Unsigned, and not ZMTP-framed Jupyter at all: malformed too.
    kernel.iopub.send_multipart([b"<IDS|MSG>", b"bad", b"{}", b"{}", b"{}", b"{}"])
    assert isinstance(await conn.next_event("ours", 5), Malformed)
    kernel.iopub.send_multipart([b"just", b"frames"])
    assert isinstance(await conn.next_event("ours", 5), Malformed)
    conn.close()
