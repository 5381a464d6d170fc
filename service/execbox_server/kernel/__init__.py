"""The only place raw Jupyter messages exist."""

from execbox_server.kernel.connection import ConnectionFiles, KernelConnection, KernelNotReady
from execbox_server.kernel.events import (
    ClearOutput,
    Display,
    ErrorOutput,
    Idle,
    KernelEvent,
    Malformed,
    Reply,
    Stream,
    Traffic,
)

__all__ = [
    "ClearOutput",
    "ConnectionFiles",
    "Display",
    "ErrorOutput",
    "Idle",
    "KernelConnection",
    "KernelEvent",
    "KernelNotReady",
    "Malformed",
    "Reply",
    "Stream",
    "Traffic",
]
