"""Batches of any size against the real service: many chunks within a server's limits learned from
its refusals, bounded memory on both ends, and an overload and a lost worker during a batch each
reported as service errors, never as verdicts. (The full 100,000-job map is bench/bench_map.py.)"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from execbox import Client, ExecutionStatus, JobStatus
from tests.conftest import instance_of
from tests.support.server import LocalServer, start_server

N = 3_000
SERVER_MAX_JOBS = 500  # below the SDK's default chunk of 2,000: the first request is refused

# The map runs in a child process so that its peak RSS is the SDK's alone.
CHILD = """
import sys
from execbox import Client
n = int(sys.argv[2])
def kib(field):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(field))
start = kib('VmRSS:')
with Client(sys.argv[1], timeout=120) as client:
    out = client.map((f"{i} * 3" for i in range(n)), progress=False)
    limits = client._core.batch_limits
bad = sum(1 for i, r in enumerate(out) if not r.ok or r.text != str(i * 3))
print(len(out), bad, start, kib('VmHWM:'), limits.max_jobs)
"""


def rss_kib(pid: int) -> int:
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    log = tmp_path_factory.mktemp("scale") / "server.log"
    server = start_server(log, {"batch_max_jobs": str(SERVER_MAX_JOBS), "batch_workers": "2", "min_ready": "1"})
    try:
        yield server
    finally:
        server.stop()


def test_a_map_of_many_chunks_returns_every_result_in_order_with_bounded_memory(small_server: LocalServer) -> None:
    peak = {"kib": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["kib"] = max(peak["kib"], rss_kib(small_server.proc.pid))
            stop.wait(0.2)

    idle = rss_kib(small_server.proc.pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, small_server.url, str(N)], capture_output=True, text=True, timeout=900
        )
    finally:
        stop.set()
        sampler.join()
    assert done.returncode == 0, done.stderr[-3000:]
    count, bad, start_kib, peak_kib, learned = map(int, done.stdout.split())
    assert (count, bad) == (N, 0)
    assert learned == SERVER_MAX_JOBS  # learned from the server's 413, not guessed
    # Bounds far above what is needed, far below holding many chunks' bodies and results at once.
    assert peak_kib - start_kib < 150 * 1024, (start_kib, peak_kib)
    assert peak["kib"] - idle < 150 * 1024, (idle, peak["kib"])
    assert "413" in small_server.log.read_text()  # exactly the refused first request


def test_an_overload_during_a_batch_is_reported_as_service_errors_not_verdicts(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "overload.log", {"batch_workers": "1", "acquire_timeout_s": "0.5", "min_ready": "1"}
    )
    try:
        with (
            Client(server.url, timeout=120, max_retries=1) as blocker_client,
            Client(server.url, timeout=120, max_retries=1) as client,
        ):
            blocker = threading.Thread(target=blocker_client.batch, args=(["import time\ntime.sleep(8)"],))
            blocker.start()
            deadline = time.monotonic() + 60
            while not _only_worker_busy(server):
                assert time.monotonic() < deadline, "the blocking batch never got the worker"
                time.sleep(0.1)
            results = client.map([f"{i}" for i in range(50)], progress=False)
            blocker.join()
            assert all(r.status is ExecutionStatus.SANDBOX_LOST and not r.is_verdict for r in results)
            assert "PoolExhaustedError" in (results[0].message or "")
            # The overload passed: the same inputs now run.
            again = client.map([f"{i}" for i in range(50)], progress=False)
            assert [r.text for r in again] == [str(i) for i in range(50)]
    finally:
        server.stop()


def _only_worker_busy(server: LocalServer) -> bool:
    """Whether the server's one batch worker is alive and not idle (read from its metrics)."""
    lines = httpx.get(server.url + "/metrics", timeout=5).text.splitlines()
    gauge = {line.split()[0]: line.split()[1] for line in lines if line.startswith("execbox_batch_workers{")}
    return (
        gauge.get('execbox_batch_workers{state="alive"}') == "1.0"
        and gauge.get('execbox_batch_workers{state="idle"}') == "0.0"
    )


def test_a_worker_killed_during_a_batch_gives_service_errors_and_the_rest_run(tmp_path: Path) -> None:
    server = start_server(tmp_path / "kill.log", {"batch_workers": "2", "batch_lanes": "2", "min_ready": "1"})
    engine = docker.from_env()
    try:
        instance = instance_of(server)
        jobs = [f"import time\ntime.sleep(0.3)\nprint({i})" for i in range(40)]
        killed: list[str] = []
        results = []
        with Client(server.url, timeout=120) as client:
            for result in client.batch_stream(jobs):
                results.append(result)
                if len(results) == 4 and not killed:
                    containers = engine.containers.list(filters={"label": f"execbox.instance={instance}"})
                    victim = next(c for c in containers if c.name.startswith(f"execbox-{instance}-w"))
                    victim.kill()
                    killed.append(victim.name)
        assert killed and len(results) == 40
        lost = [r for r in results if r.status is JobStatus.SERVICE_ERROR]
        # The worker's in-flight jobs come back "lost"; if the kill hit a worker as it started, the
        # server ends the stream with sandbox_start_failed and the SDK marks the rest: service errors too.
        assert lost and all(not r.is_verdict and r.message for r in lost)
        ran = [r for r in results if r.is_verdict]
        assert all(r.ok and r.stdout == f"{r.index}\n" for r in ran) and len(ran) + len(lost) == 40
    finally:
        engine.close()
        server.stop()
