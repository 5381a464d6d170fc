"""Helpers shared by the benchmarks: percentiles and a printed table."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from typing import Any


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    p50, p90, p99 = pct(ms, 50), pct(ms, 90), pct(ms, 99)
    return f"p50 {p50:8.2f} ms   p90 {p90:8.2f} ms   p99 {p99:8.2f} ms   mean {statistics.mean(ms):8.2f} ms"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import os

    return f"{platform.system()} {platform.release()}, {os.cpu_count()} cores, {cpu}"


def header(title: str) -> None:
    print(f"\n=== {title}")
    print(f"    {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}")


def raw_print1_trips(kc: Any, count: int, *, warmup: int = 20, timeout: float = 30) -> list[float]:
    """``print(1)`` round trips (seconds) through a started ``jupyter_client`` client: the raw
    baseline execbox's REST round trip is compared with. The first cells pay for imports and
    caches, so ``warmup`` of them are not counted."""
    for _ in range(warmup):
        kc.execute_interactive("print(1)", output_hook=lambda m: None, timeout=timeout)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        kc.execute_interactive("print(1)", output_hook=lambda m: None, timeout=timeout)
        times.append(time.perf_counter() - t0)
    return times
