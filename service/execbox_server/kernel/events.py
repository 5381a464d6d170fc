"""Typed kernel events: what the rest of the service sees instead of Jupyter message dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClearOutput", "Display", "Error", "Idle", "KernelEvent", "Reply", "Stream"]


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
class Error:
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


KernelEvent = Stream | Display | Error | ClearOutput | Idle | Reply
