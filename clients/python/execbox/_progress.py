"""Progress bars for ``map``, ``evaluate``, ``synthesize`` and the CLI, when tqdm is installed."""

from __future__ import annotations

import importlib.util
from typing import Any, Protocol

__all__ = ["Bar", "have_tqdm", "progress_bar"]


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def have_tqdm() -> bool:
    return importlib.util.find_spec("tqdm") is not None


def progress_bar(total: int, *, unit: str, enabled: bool) -> Bar:
    """A tqdm bar on stderr, or one that shows nothing when not ``enabled``.

    Raises:
        ImportError: ``enabled`` but tqdm is not installed (``pip install 'execbox[progress]'``).
    """
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("a progress bar needs tqdm: pip install 'execbox[progress]'") from exc
    bar: Bar = tqdm(total=total, unit=unit)
    return bar
