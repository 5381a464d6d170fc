"""Output caps applied while output streams in: memory stays bounded whatever the code prints."""

from __future__ import annotations

import re

__all__ = ["HeadTail", "strip_ansi", "truncation_marker"]

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def truncation_marker(dropped_bytes: int) -> str:
    return f"\n[... {dropped_bytes} bytes truncated ...]\n"


class HeadTail:
    """Keeps the first and last ``limit / 2`` bytes of a stream and counts what falls between.

    The tail is trimmed whenever it grows past twice its size, so memory stays within
    ``O(limit)`` however much is fed in.
    """

    def __init__(self, limit: int) -> None:
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def add(self, text: str) -> str:
        """Feed a chunk; return the part of it that went into the head (what may be streamed on)."""
        data = text.encode("utf-8", "replace")
        self.total += len(data)
        room = max(0, self._head_limit - len(self._head))
        kept, rest = data[:room], data[room:]
        self._head += kept
        if rest:
            self._tail += rest
            if len(self._tail) > 2 * self._tail_limit:
                del self._tail[: len(self._tail) - self._tail_limit]
            return kept.decode("utf-8", "ignore")
        return text

    @property
    def dropped(self) -> int:
        return max(0, self.total - len(self._head) - min(len(self._tail), self._tail_limit))

    def text(self) -> str:
        tail = bytes(self._tail[-self._tail_limit :]) if self._tail_limit else b""
        head = bytes(self._head)
        if not self.dropped:
            return (head + tail).decode("utf-8", "replace")
        return head.decode("utf-8", "replace") + truncation_marker(self.dropped) + tail.decode("utf-8", "replace")
