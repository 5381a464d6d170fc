"""Core latency benchmarks of execbox, each against a baseline measured in the same run.

1. Session create -> first result from the warm pool, vs. cold: `docker run` + kernel start
   + first execute (the same container flags, no pool).
2. Round trip of `print(1)` through the REST API (SDK, keep-alive HTTP), vs. raw
   `jupyter_client` `execute_interactive` on a container of the same image over IPC.

Run: `make bench` (or `python bench/bench_core.py`). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jupyter_client

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
sys.path.insert(0, str(Path(__file__).parent))  # _util
from tests.support.server import local_server

from _util import header, pct, raw_print1_trips, summary_ms
from execbox import Client
from execbox_server.backends.base import SandboxSpec
from execbox_server.backends.docker import DockerBackend
from execbox_server.settings import Settings

WARM_N = int(os.environ.get("BENCH_WARM_N", "30"))
COLD_N = int(os.environ.get("BENCH_COLD_N", "8"))
RTT_N = int(os.environ.get("BENCH_RTT_N", "300"))


def wait_pool(url: str, ready: int) -> None:
    """Until the pool is warm and idle: replenishing a kernel costs ~1 s of CPU on a 2-core
    machine, so a measurement taken while it runs measures CPU contention, not the warm path."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = httpx.get(url + "/readyz", timeout=5)
        pool = r.json().get("pool", {}) if r.status_code == 200 else {}
        if pool.get("ready", 0) >= ready and pool.get("starting", 1) == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("pool did not refill")


def bench_warm(url: str, count: int = WARM_N) -> list[float]:
    """Session create -> first result from a warm, idle pool (it refills before each)."""
    times = []
    with Client(url) as client:
        for _ in range(count):
            wait_pool(url, 2)
            t0 = time.perf_counter()
            session = client.session()
            ex = session.run("1")
            times.append(time.perf_counter() - t0)
            assert ex.text == "1"
            session.close()
    return times


async def _cold() -> list[float]:
    settings = Settings(state_dir=Path(tempfile.mkdtemp(prefix="xb", dir="/tmp")))
    backend = DockerBackend(settings)
    await backend.open()
    times = []
    try:
        for _ in range(COLD_N):
            t0 = time.perf_counter()
            kernel = await backend.start(SandboxSpec(memory_mb=settings.memory_mb, cpus=settings.cpus))
            msg_id = kernel.conn.execute("1")
            while True:
                event = await kernel.conn.next_event(msg_id, 10)
                if event is not None and type(event).__name__ == "Reply":
                    break
            times.append(time.perf_counter() - t0)
            await backend.destroy(kernel)
    finally:
        await backend.close()
    return times


def bench_rest_rtt(url: str) -> list[float]:
    times = []
    with Client(url) as client, client.session() as s:
        for _ in range(20):
            s.run("print(1)")
        for _ in range(RTT_N):
            t0 = time.perf_counter()
            ex = s.run("print(1)")
            times.append(time.perf_counter() - t0)
            assert ex.stdout == "1\n"
    return times


def bench_raw_rtt(image: str) -> list[float]:
    """jupyter_client's BlockingKernelClient against the same image, IPC transport."""
    d = Path(tempfile.mkdtemp(prefix="xr", dir="/tmp"))
    os.chown(d, 1000, 1000)
    key = secrets.token_hex(16)
    info = {
        "transport": "ipc",
        "ip": "/kernel/k",
        "key": key,
        "signature_scheme": "hmac-sha256",
        "shell_port": 1,
        "iopub_port": 2,
        "stdin_port": 3,
        "control_port": 4,
        "hb_port": 5,
    }
    (d / "connection.json").write_text(json.dumps(info))
    name = f"execbox-bench-raw-{secrets.token_hex(4)}"
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "--init",
            "--network",
            "none",
            "--user",
            "1000:1000",
            "--read-only",
            "--tmpfs",
            "/tmp:uid=1000,gid=1000",
            "--tmpfs",
            "/home/sandbox:uid=1000,gid=1000",
            "--cpus",
            "1",
            "--memory",
            "512m",
            "-v",
            f"{d}:/kernel",
            image,
        ],
        check=True,
        capture_output=True,
    )
    try:
        kc = jupyter_client.BlockingKernelClient()
        kc.load_connection_info({**info, "ip": f"{d}/k", "key": key.encode()})
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        times = raw_print1_trips(kc, RTT_N, timeout=10)
        kc.stop_channels()
        return times
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def main() -> None:
    image = os.environ.get("EXECBOX_IMAGE", "execbox-sandbox-python:latest")
    with tempfile.TemporaryDirectory() as tmp:
        with local_server(Path(tmp) / "server.log", min_ready="2", max_total="8") as server:
            warm = bench_warm(server.url)
            rest = bench_rest_rtt(server.url)
    cold = asyncio.run(_cold())
    raw = bench_raw_rtt(image)

    header("session create -> first result")
    print(f"  execbox warm pool   {summary_ms(warm)}   (n={len(warm)})")
    print(f"  cold docker+kernel  {summary_ms(cold)}   (n={len(cold)})")
    print(f"  speed-up (p50): {pct(cold, 50) / pct(warm, 50):.1f}x   goal: warm p50 < 20 ms")
    header("print(1) round trip")
    print(f"  execbox REST (SDK)  {summary_ms(rest)}   (n={len(rest)})")
    print(f"  raw jupyter_client  {summary_ms(raw)}   (n={len(raw)})")
    print(f"  ratio raw/execbox (p50): {pct(raw, 50) / pct(rest, 50):.2f}x   goal: >= 1 (aim 2)")


if __name__ == "__main__":
    main()
