"""The load scenario at a reduced size: no request lost or duplicated, no undocumented 5xx,
the server's memory flat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.loadgen import run_load
from tests.support.server import start_server


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_concurrent_sessions_in_a_loop_lose_nothing(tmp_path: Path) -> None:
    server = start_server(tmp_path / "load.log", {"min_ready": "2", "max_total": "12", "acquire_timeout_s": "10"})
    try:
        warmup = asyncio.run(run_load(server.url, sessions=10, seconds=3))
        assert warmup.ok > 0
        before = rss_mib(server.proc.pid)
        report = asyncio.run(run_load(server.url, sessions=10, seconds=10))
        after = rss_mib(server.proc.pid)
    finally:
        server.stop()
    assert report.create_failures == 0
    assert report.sequence_errors == 0, "an execution was lost or ran twice"
    assert report.undocumented_5xx == 0, report.status_errors
    assert not report.status_errors, report.status_errors
    assert report.ok > 100
    assert after - before < 40, f"server RSS grew from {before:.0f} to {after:.0f} MiB"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
