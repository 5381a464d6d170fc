"""execbox's Kernel Gateway API vs Jupyter Kernel Gateway itself, measured in the same run.

Two numbers, the same client code against both servers (the raw websocket a smolagents-style
client drives: ``POST /api/kernels``, then ``execute_request`` v5 over
``/api/kernels/{id}/channels``, read until ``status: idle``):

- acquire -> first result: from ``POST /api/kernels`` to the first ``execute_reply`` of
  ``print(1)`` (Kernel Gateway starts a kernel process here; execbox leases a warm sandbox);
- round trip: ``print(1)`` on an open websocket, request sent -> ``status: idle``.

Kernel Gateway runs local, unsandboxed ipykernel processes (``python -m kernel_gateway``);
execbox runs each kernel in its locked-down container. Goals (issue 14): acquire at least 20x
faster, round trip within 1.5x.

    .venv/bin/python bench/bench_gateway.py [--kernels 10] [--trips 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import websocket

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
sys.path.insert(0, str(Path(__file__).parent))  # _util
from tests.support.server import free_port, local_server

from _util import header, pct


def _request(code: str) -> tuple[str, str]:
    msg_id = uuid.uuid4().hex
    body = {
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "", "session": "b", "version": "5.3"},
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": True, "allow_stdin": False},
        "channel": "shell",
    }
    return msg_id, json.dumps(body)


def _until(ws: websocket.WebSocket, msg_id: str, msg_type: str, state: str | None = None) -> None:
    while True:
        msg = json.loads(ws.recv())
        if msg["parent_header"].get("msg_id") != msg_id or msg["msg_type"] != msg_type:
            continue
        if state is None or msg["content"].get("execution_state") == state:
            return


def acquire_to_first_result(http: httpx.Client, url: str) -> float:
    """POST /api/kernels -> first execute_reply of print(1); the kernel is deleted after.

    ``http`` is a client kept open across kernels, as a real caller's is: a module-level
    ``httpx.post`` builds a client (and its TLS context) per call, which costs more than
    execbox's whole lease and would be measured as the server's time."""
    started = time.perf_counter()
    r = http.post(url + "/api/kernels", json={"name": "python3"}, timeout=120)
    r.raise_for_status()
    kid = r.json()["id"]
    ws = websocket.create_connection(f"{url.replace('http', 'ws')}/api/kernels/{kid}/channels", timeout=120)
    try:
        msg_id, frame = _request("print(1)")
        ws.send(frame)
        _until(ws, msg_id, "execute_reply")
        elapsed = time.perf_counter() - started
    finally:
        ws.close()
        http.delete(f"{url}/api/kernels/{kid}", timeout=60)
    return elapsed


def round_trips(http: httpx.Client, url: str, trips: int) -> list[float]:
    r = http.post(url + "/api/kernels", json={"name": "python3"}, timeout=120)
    r.raise_for_status()
    kid = r.json()["id"]
    ws = websocket.create_connection(f"{url.replace('http', 'ws')}/api/kernels/{kid}/channels", timeout=120)
    times = []
    try:
        for i in range(trips + 5):
            msg_id, frame = _request("print(1)")
            started = time.perf_counter()
            ws.send(frame)
            _until(ws, msg_id, "status", "idle")
            if i >= 5:  # warm-up: the first cells pay for imports and caches on both sides
                times.append(time.perf_counter() - started)
    finally:
        ws.close()
        http.delete(f"{url}/api/kernels/{kid}", timeout=60)
    return times


@contextmanager
def kernel_gateway(log: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kernel_gateway",
            f"--KernelGatewayApp.port={port}",
            "--KernelGatewayApp.ip=127.0.0.1",
            "--JupyterWebsocketPersonality.list_kernels=True",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(log.parent / "runtime")},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/api", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kernel gateway did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_warm(url: str, spares: int) -> None:
    deadline = time.monotonic() + 120
    while httpx.get(url + "/readyz", timeout=10).json().get("pool", {}).get("ready", 0) < spares:
        if time.monotonic() > deadline:
            raise RuntimeError("execbox's pool did not warm up")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", type=int, default=10, help="kernels acquired on each server")
    parser.add_argument("--trips", type=int, default=200, help="print(1) round trips on each server")
    args = parser.parse_args()
    header("Kernel Gateway API: execbox (sandboxed, warm pool) vs jupyter_kernel_gateway (local ipykernel)")
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, dict[str, list[float]]] = {}
        with local_server(Path(tmp) / "execbox.log", min_ready="2", max_total="6") as srv, httpx.Client() as http:
            acquire = []
            for _ in range(args.kernels):
                _wait_warm(srv.url, 1)  # a spare is ready, as in steady state
                acquire.append(acquire_to_first_result(http, srv.url))
            _wait_warm(srv.url, 1)
            results["execbox"] = {"acquire": acquire, "trip": round_trips(http, srv.url, args.trips)}
        with kernel_gateway(Path(tmp) / "kg.log") as kg, httpx.Client() as http:
            acquire = [acquire_to_first_result(http, kg) for _ in range(args.kernels)]
            results["kernel_gateway"] = {"acquire": acquire, "trip": round_trips(http, kg, args.trips)}

    def p(name: str, key: str, q: float) -> float:
        return pct(results[name][key], q) * 1000

    print(f"\n{args.kernels} kernels and {args.trips} print(1) round trips on each server\n")
    print("| measure | execbox p50 | execbox p90 | Kernel Gateway p50 | Kernel Gateway p90 | ratio (p50) | goal |")
    print("|---|---|---|---|---|---|---|")
    acq = p("kernel_gateway", "acquire", 50) / p("execbox", "acquire", 50)
    trip = p("execbox", "trip", 50) / p("kernel_gateway", "trip", 50)
    print(
        f"| POST /api/kernels -> first execute_reply | {p('execbox', 'acquire', 50):.1f} ms | "
        f"{p('execbox', 'acquire', 90):.1f} ms | {p('kernel_gateway', 'acquire', 50):.1f} ms | "
        f"{p('kernel_gateway', 'acquire', 90):.1f} ms | execbox {acq:.1f}x faster | >= 20x faster |"
    )
    print(
        f"| print(1) round trip (websocket) | {p('execbox', 'trip', 50):.2f} ms | {p('execbox', 'trip', 90):.2f} ms "
        f"| {p('kernel_gateway', 'trip', 50):.2f} ms | {p('kernel_gateway', 'trip', 90):.2f} ms | "
        f"execbox {trip:.2f}x Kernel Gateway's time | <= 1.5x |"
    )


if __name__ == "__main__":
    main()
