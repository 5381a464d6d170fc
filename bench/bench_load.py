"""Load: 50 concurrent sessions, each executing in a loop for a minute (`make bench`).

Prints throughput, latency percentiles, errors by code and the server's memory before and
after. Traffic goes to a server this script starts on 127.0.0.1 only; loops stop by time.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
sys.path.insert(0, str(Path(__file__).parent))  # _util
from tests.support.loadgen import run_load
from tests.support.server import local_server

from _util import header, summary_ms

SESSIONS = int(os.environ.get("BENCH_LOAD_SESSIONS", "50"))
SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "60"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"min_ready": "4", "max_total": str(SESSIONS + 4), "acquire_timeout_s": "30"}
        with local_server(Path(tmp) / "server.log", **settings) as server:
            asyncio.run(run_load(server.url, sessions=SESSIONS, seconds=5))  # every kernel started once
            before = rss_mib(server.proc.pid)
            report = asyncio.run(run_load(server.url, sessions=SESSIONS, seconds=SECONDS))
            after = rss_mib(server.proc.pid)
    header(f"load: {SESSIONS} sessions executing in a loop for {SECONDS:g}s")
    print(f"  executions ok      {report.ok}   ({report.throughput:.1f}/s)")
    print(f"  latency            {summary_ms(report.latencies)}")
    print(f"  lost/duplicated    {report.sequence_errors}")
    print(f"  errors by code     {report.status_errors or 'none'}   undocumented 5xx: {report.undocumented_5xx}")
    print(f"  server RSS         {before:.0f} MiB before, {after:.0f} MiB after")


if __name__ == "__main__":
    main()
