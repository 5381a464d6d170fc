"""``Client.map`` of 100,000 trivial programs: throughput, and client and server memory.

Baseline, measured in the same run: one batch request of the server's largest size (10,000
jobs, what a caller could send before map chunked), in jobs per second. The 100k map runs in
chunks of the SDK's default size; its ratio to the baseline says what chunking costs.

Memory: the client's peak RSS (VmHWM) over the map, run in a child process so nothing else
of this script counts, and the server's peak RSS sampled every 0.2 s.

    BENCH_MAP_N=100000 .venv/bin/python bench/bench_map.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
sys.path.insert(0, str(Path(__file__).parent))  # _util
from tests.support.server import local_server

from _util import header
from execbox import Client

N = int(os.environ.get("BENCH_MAP_N", "100000"))
BASELINE_N = int(os.environ.get("BENCH_MAP_BASELINE_N", "10000"))

# Run in a child: map N programs, check every result, print jobs/s and peak RSS (MiB).
CHILD = """
import sys, time
from execbox import Client
n = int(sys.argv[2])
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
before = rss('VmRSS:')
with Client(sys.argv[1], timeout=120) as client:
    t0 = time.perf_counter()
    out = client.map((f"{i} * 2" for i in range(n)), progress=False)
    wall = time.perf_counter() - t0
bad = [i for i, r in enumerate(out) if not r.ok or r.text != str(i * 2)]
print(wall, rss('VmHWM:'), before, len(out), len(bad), flush=True)
"""


def rss_mib(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The highest RSS of process ``pid`` seen while this is open."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    header(f"Client.map of {N:,} trivial programs vs one {BASELINE_N:,}-job request")
    with TemporaryDirectory() as tmp, local_server(Path(tmp) / "server.log") as server:
        with Client(server.url, timeout=120) as client:
            client.batch([f"{i}" for i in range(200)], progress=False)  # warm the workers
            t0 = time.perf_counter()
            one = client.batch([f"{i} * 2" for i in range(BASELINE_N)], progress=False)
            baseline_s = time.perf_counter() - t0
        assert all(r.ok for r in one), "the baseline batch failed"
        idle = rss_mib(server.proc.pid)
        with PeakRss(server.proc.pid) as server_peak:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, server.url, str(N)], capture_output=True, text=True, check=True
            )
        wall, client_peak, client_start, count, bad = done.stdout.split()
    rate = N / float(wall)
    base_rate = BASELINE_N / baseline_s
    print(f"  one request of {BASELINE_N:,} jobs   {base_rate:10,.0f} jobs/s")
    print(f"  map of {N:,} (chunked)    {rate:10,.0f} jobs/s   ({float(wall):.1f} s)   ratio {rate / base_rate:.2f}x")
    print(f"  results                   {count} returned, {bad} wrong or not ok")
    print(f"  client RSS                {float(client_start):.0f} MiB at start, peak {float(client_peak):.0f} MiB")
    print(f"  server RSS                {idle:.0f} MiB idle, peak {server_peak.peak:.0f} MiB during the map")


if __name__ == "__main__":
    main()
