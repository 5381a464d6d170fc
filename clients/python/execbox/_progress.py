"""Progress bars for ``map``, ``batch``, ``evaluate``, ``synthesize``, rewards and the CLI.

tqdm's bar when tqdm is installed, else a one-line counter of our own on stderr: a bar must not
need an extra to show on a terminal. ``enabled=None`` means "when stderr is a terminal", so a
notebook or a log file gets no carriage returns it did not ask for.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

__all__ = ["Bar", "have_tqdm", "progress_bar"]

# The text bar redraws at most this often: a 100,000-job map must not spend its time printing.
_REDRAW_S = 0.2


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _TextBar:
    """``  12,345/100,000 exec  2,345.1/s`` redrawn in place on ``stream``."""

    def __init__(self, total: int | None, unit: str, stream: TextIO) -> None:
        self._total = total
        self._unit = unit
        self._stream = stream
        self._n = 0
        self._started = time.monotonic()
        self._drawn = 0.0

    def update(self, n: int = 1) -> None:
        self._n += n
        now = time.monotonic()
        if now - self._drawn >= _REDRAW_S:
            self._drawn = now
            self._draw(now)

    def close(self) -> None:
        self._draw(time.monotonic())
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, now: float) -> None:
        rate = self._n / max(now - self._started, 1e-9)
        total = "" if self._total is None else f"/{self._total:,}"
        self._stream.write(f"\r{self._n:,}{total} {self._unit}  {rate:,.1f}/s")
        self._stream.flush()


def have_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def progress_bar(total: int | None, unit: str, enabled: bool | None) -> Bar:
    """A bar on stderr counting to ``total`` (None: unknown), or one that shows nothing.

    ``enabled``: True always, False never, None when stderr is a terminal.
    """
    if enabled is None:
        enabled = _is_terminal(sys.stderr)
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(total, unit, sys.stderr)
    bar: Bar = tqdm(total=total, unit=unit)
    return bar


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
