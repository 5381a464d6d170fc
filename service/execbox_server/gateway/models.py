"""The Jupyter Kernel Gateway's wire models: its REST bodies and the websocket's Jupyter messages.

Written once here, from the Kernel Gateway / jupyter_server REST API and the Jupyter messaging
spec (protocol 5.3). Spellings are the contract: ``last_activity`` is ISO 8601 with
microseconds and a ``Z`` (jupyter_server's GatewayKernelManager parses it with
``%Y-%m-%dT%H:%M:%S.%fZ``), ``connections`` an integer, kernel ids UUID-shaped (jupyter_server
routes ``/api/kernels/(\\w+-\\w+-\\w+-\\w+-\\w+)`` only).

Two websocket encodings exist:

- the classic one: a text frame holding the message as JSON, with a ``channel`` field;
- ``v1.kernel.websocket.jupyter.org``: a binary frame ``[n][offset_0]..[offset_n-1] channel
  header parent_header metadata content buffers...``, every number a little-endian uint64,
  ``offset_0`` where the channel starts and the last offset where the message ends.
"""

from __future__ import annotations

import json
import struct
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "V1_SUBPROTOCOL",
    "ApiVersion",
    "Channel",
    "InvalidMessage",
    "JupyterMessage",
    "KernelModel",
    "KernelSpec",
    "KernelSpecFile",
    "KernelSpecs",
    "KernelStart",
    "MessageHeader",
    "WireProtocol",
    "decode",
    "encode",
    "iso_date",
    "new_message",
]

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
PROTOCOL_VERSION = "5.3"


class WireProtocol(StrEnum):
    CLASSIC = "classic"
    V1 = "v1"


class Channel(StrEnum):
    SHELL = "shell"
    CONTROL = "control"
    STDIN = "stdin"
    IOPUB = "iopub"


class InvalidMessage(Exception):
    """A websocket frame that is not a Jupyter message in the connection's encoding."""


# ------------------------------------------------------------------------------ REST


class ApiVersion(BaseModel):
    version: str = Field(description="The Kernel Gateway release whose API this follows.")
    implementation: str = "execbox"


class KernelSpecFile(BaseModel):
    """A kernel.json, as ``GET /api/kernelspecs`` carries it under ``spec``."""

    argv: list[str]
    display_name: str
    language: str
    interrupt_mode: Literal["signal", "message"] = "message"
    env: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class KernelSpec(BaseModel):
    name: str
    spec: KernelSpecFile
    resources: dict[str, str] = Field(default_factory=dict)


class KernelSpecs(BaseModel):
    default: str
    kernelspecs: dict[str, KernelSpec]


class KernelStart(BaseModel):
    """``POST /api/kernels``. ``env`` is accepted and ignored: a sandbox's environment is the
    image's (jupyter_server always sends its ``KERNEL_*`` variables here)."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    env: dict[str, Any] | None = None


class KernelModel(BaseModel):
    id: str
    name: str
    last_activity: str = Field(description="ISO 8601, UTC, microseconds, 'Z'.")
    execution_state: Literal["idle", "busy", "starting", "restarting", "dead"]
    connections: int


def iso_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------------------ messages


class MessageHeader(BaseModel):
    # Clients add their own fields (and jupyter_server's gateway client sends ``date`` as a
    # float): kept as sent, so a reply's parent_header is exactly the request's header.
    model_config = ConfigDict(extra="allow")

    msg_id: str = Field(max_length=256)
    msg_type: str = Field(max_length=256)
    session: str = ""
    username: str = ""
    version: str = PROTOCOL_VERSION


class JupyterMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # jupyter_server assumes shell when a client leaves the channel out (its GatewayKernelClient does).
    channel: Channel = Channel.SHELL
    header: MessageHeader
    parent_header: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    content: dict[str, Any] = Field(default_factory=dict)

    @property
    def msg_type(self) -> str:
        return self.header.msg_type


def new_message(
    channel: Channel,
    msg_type: str,
    content: dict[str, Any],
    *,
    parent: MessageHeader | None,
    session: str,
    metadata: dict[str, Any] | None = None,
) -> JupyterMessage:
    """A message from the kernel's side, answering (or caused by) ``parent``."""
    header = MessageHeader(
        msg_id=uuid.uuid4().hex,
        msg_type=msg_type,
        session=session,
        username="execbox",
        date=iso_date(datetime.now(UTC)),
    )
    return JupyterMessage(
        channel=channel,
        header=header,
        parent_header=parent.model_dump() if parent is not None else {},
        metadata=metadata or {},
        content=content,
    )


def encode(msg: JupyterMessage, protocol: WireProtocol) -> str | bytes:
    header = msg.header.model_dump()
    if protocol is WireProtocol.CLASSIC:
        body: dict[str, Any] = {
            "channel": msg.channel.value,
            "header": header,
            "parent_header": msg.parent_header,
            "metadata": msg.metadata,
            "content": msg.content,
            # Top-level copies, as jupyter_server's kernel websocket sends them.
            "msg_id": msg.header.msg_id,
            "msg_type": msg.header.msg_type,
            "buffers": [],
        }
        return json.dumps(body, ensure_ascii=False, allow_nan=False)
    parts = [msg.channel.value.encode()] + [
        json.dumps(part, ensure_ascii=False, allow_nan=False).encode()
        for part in (header, msg.parent_header, msg.metadata, msg.content)
    ]
    count = len(parts) + 1
    offsets = [8 * (1 + count)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"<{count + 1}Q", count, *offsets) + b"".join(parts)


def decode(frame: str | bytes, protocol: WireProtocol, *, max_bytes: int) -> JupyterMessage:
    """One client frame as a message.

    Binary buffers (comm messages of widgets) are not supported: a v1 frame's buffers are
    ignored, and a classic binary frame is refused.

    Raises:
        InvalidMessage: not a Jupyter message in this encoding, or larger than ``max_bytes``.
    """
    if len(frame) > max_bytes:
        raise InvalidMessage(f"message of {len(frame)} bytes is over this server's limit of {max_bytes}")
    try:
        if protocol is WireProtocol.CLASSIC:
            if not isinstance(frame, str):
                raise InvalidMessage("binary frames (messages with buffers) are not supported")
            return JupyterMessage.model_validate_json(frame)
        if not isinstance(frame, bytes):
            raise InvalidMessage(f"the {V1_SUBPROTOCOL} protocol sends binary frames")
        return _decode_v1(frame)
    except ValidationError as exc:
        # Never the input in the message: it may be the user's code.
        problems = [(e["loc"], e["type"]) for e in exc.errors(include_url=False, include_input=False)[:3]]
        raise InvalidMessage(f"not a Jupyter message: {problems}") from exc


def _decode_v1(frame: bytes) -> JupyterMessage:
    if len(frame) < 8:
        raise InvalidMessage("truncated v1 frame")
    (count,) = struct.unpack_from("<Q", frame)
    if not 6 <= count <= 64 or len(frame) < 8 * (1 + count):
        raise InvalidMessage("bad v1 offset table")
    offsets = struct.unpack_from(f"<{count}Q", frame, 8)
    if offsets[0] != 8 * (1 + count) or list(offsets) != sorted(offsets) or offsets[-1] > len(frame):
        raise InvalidMessage("bad v1 offsets")
    channel, header, parent, metadata, content = (frame[offsets[i] : offsets[i + 1]] for i in range(5))
    try:
        return JupyterMessage(
            channel=Channel(channel.decode()),
            header=MessageHeader.model_validate_json(header),
            parent_header=_object(parent),
            metadata=_object(metadata),
            content=_object(content),
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidMessage(f"not a Jupyter message: {str(exc)[:200]}") from exc


def _object(part: bytes) -> dict[str, Any]:
    value = json.loads(part) if part else {}
    if not isinstance(value, dict):
        raise InvalidMessage("a message part is not a JSON object")
    return value
