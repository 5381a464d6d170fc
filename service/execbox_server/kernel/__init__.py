"""The only place raw Jupyter messages exist."""

from execbox_server.kernel.connection import PASSTHROUGH_REQUESTS, ConnectionFiles, KernelConnection, KernelNotReady
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

__all__ = [
    "PASSTHROUGH_REQUESTS",
    "ClearOutput",
    "ConnectionFiles",
    "Display",
    "ErrorOutput",
    "Idle",
    "InputRequest",
    "KernelConnection",
    "KernelEvent",
    "KernelNotReady",
    "Malformed",
    "Reply",
    "ShellReply",
    "Stream",
    "Traffic",
]
