"""Typed kernel events: what the rest of the service sees instead of Jupyter message dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ClearOutput",
    "Display",
    "ErrorOutput",
    "Idle",
    "InputRequest",
    "KernelEvent",
    "Malformed",
    "Reply",
    "ShellReply",
    "Stream",
    "Traffic",
]


@dataclass(frozen=True, slots=True)
class Stream:
    name: str  # "stdout" or "stderr"
    text: str
    dropped: int = 0  # characters the sandbox already cut from this message


@dataclass(frozen=True, slots=True)
class Display:
    data: dict[str, Any]
    metadata: dict[str, Any]
    is_main: bool  # execute_result (the cell's value) rather than display_data
    dropped: int = 0  # characters the sandbox already cut from this bundle


@dataclass(frozen=True, slots=True)
class ErrorOutput:
    """An ``error`` message on iopub: the traceback the kernel published for the user's code.

    Named for what it is, output about a Python error, so it is never mistaken for a failure
    of the kernel or the service.
    """

    ename: str
    evalue: str
    traceback: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClearOutput:
    wait: bool


@dataclass(frozen=True, slots=True)
class Idle:
    """The kernel finished publishing output for the request."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The ``execute_reply``: the request is complete."""

    status: str
    execution_count: int | None
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ShellReply:
    """A shell reply other than ``execute_reply`` (``kernel_info_reply``, ``complete_reply``, ...)
    to a request sent with ``KernelConnection.request``.

    ``content`` is a JSON object within the reply cap and nesting depth; one too large to pass on
    arrives as an ``error`` reply saying so.
    """

    msg_type: str
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InputRequest:
    """The code called ``input()`` (or ``getpass``) in a request that allowed stdin."""

    prompt: str
    password: bool


@dataclass(frozen=True, slots=True)
class Malformed:
    """The kernel broke the protocol: a message that is not a well-formed, signed Jupyter
    message, or raw bytes that are not ZMTP. Only code inside the sandbox can cause this, and
    after it the kernel's replies can no longer be trusted."""

    reason: str


@dataclass(slots=True)
class Traffic:
    """Everything received from one kernel since its connection opened, whatever it was.

    The executor budgets an execution by the growth of these counters, so messages it never
    sees as events (other parents, unknown types, bad signatures, dropped oversized ones)
    cost the sandbox exactly as much as output does.
    """

    messages: int = 0  # whole messages and ZMTP commands, on every channel
    bytes: int = 0  # raw bytes read from the kernel's sockets
    ignored: int = 0  # well-formed, but for another request or of a type the service does not use
    malformed: int = 0
    oversized: int = 0  # dropped unread: larger than the per-message cap


KernelEvent = Stream | Display | ErrorOutput | ClearOutput | Idle | Reply | ShellReply | InputRequest | Malformed
