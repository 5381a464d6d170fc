"""Scale-out: batch throughput with 1, 2 and 3 execbox instances behind HAProxy, and what the proxy costs.

Every instance runs on this machine (127.0.0.2, .3, .4) and shares its cores and Docker engine, as the
multi-instance test does; the proxy is the Helm chart's configuration (static discovery).

1. Batch throughput: BENCH_SCALEOUT_JOBS trivial programs, split into BENCH_SCALEOUT_SPLIT requests per
   instance and sent at once through the proxy (one request runs on one node; leastconn spreads them).
   Reported: jobs/s, the speed-up over one instance, and per-instance efficiency = speed-up / instances.
2. The proxy's added latency: print(1) in a session, directly and through the proxy, interleaved.
3. A killed node: how long the proxy takes to answer its sessions with 404 node_unavailable, before and
   after its health check has noticed.

    .venv/bin/python bench/bench_scaleout.py
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
sys.path.insert(0, str(Path(__file__).parent))  # _util
from tests.support.cluster import Cluster, cluster

from _util import header, pct, summary_ms

JOBS = int(os.environ.get("BENCH_SCALEOUT_JOBS", "3000"))
SPLIT = int(os.environ.get("BENCH_SCALEOUT_SPLIT", "2"))
CALLS = int(os.environ.get("BENCH_SCALEOUT_CALLS", "200"))
CORES = os.cpu_count() or 1
# Each instance as it would be on a host of its own with this machine's cores (one worker per core,
# shared by the SPLIT requests it is sent at once); pools kept small.
SETTINGS = {
    "min_ready": "1",
    "max_total": "4",
    "max_starting": "1",
    "batch_workers": str(CORES),
    "batch_lanes": str(max(1, CORES // SPLIT)),
    "batch_min_workers": str(CORES),
    "acquire_timeout_s": "30",
}


def batch_throughput(group: Cluster, *, direct: bool = False) -> tuple[float, dict[str, int]]:
    """Jobs per second of JOBS programs sent as SPLIT requests per node, and each node's share.

    direct: to the (single) node itself, without the proxy: the baseline the proxy is compared with.
    """
    requests = SPLIT * len(group.nodes)
    jobs = [{"code": f"print({i} + 1)"} for i in range(JOBS)]
    size = -(-JOBS // requests)
    chunks = [jobs[i : i + size] for i in range(0, JOBS, size)]

    def send(chunk: list[dict[str, str]], http: httpx.Client) -> tuple[str, int]:
        r = http.post("/v1/batch", json={"jobs": chunk}, timeout=900)
        r.raise_for_status()
        results = r.json()["results"]
        assert all(res["status"] == "ok" for res in results), "a job failed"
        return r.headers["x-execbox-node"], len(results)

    with httpx.Client(base_url=group.nodes[0].url if direct else group.proxy.url, timeout=900) as http:
        # Warm-up: every node's workers started and its first batch run.
        with concurrent.futures.ThreadPoolExecutor(requests) as pool:
            list(pool.map(lambda c: send(c, http), [jobs[:20]] * requests))
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(requests) as pool:
            shares = list(pool.map(lambda c: send(c, http), chunks))
        elapsed = time.perf_counter() - t0
    by_node: dict[str, int] = {}
    for node, n in shares:
        by_node[node] = by_node.get(node, 0) + n
    return JOBS / elapsed, by_node


def session_latency(group: Cluster) -> tuple[list[float], list[float]]:
    """print(1) in one session: (direct to its node, through the proxy), CALLS each, interleaved."""
    direct_s: list[float] = []
    proxied_s: list[float] = []
    with httpx.Client(base_url=group.proxy.url, timeout=60) as proxied:
        sid = proxied.post("/v1/sessions", json={}).raise_for_status().json()["id"]
        node = group.node(sid.split(".", 1)[1])
        with httpx.Client(base_url=node.url, timeout=60) as direct:
            for client in (direct, proxied):  # connections and the kernel warmed on both paths
                client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(1)"}).raise_for_status()
            for i in range(CALLS * 2):
                client, into = (direct, direct_s) if i % 2 == 0 else (proxied, proxied_s)
                t0 = time.perf_counter()
                client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(1)"}).raise_for_status()
                into.append(time.perf_counter() - t0)
        proxied.delete(f"/v1/sessions/{sid}")
    return direct_s, proxied_s


def unavailable_latency(group: Cluster) -> tuple[float, float]:
    """Seconds to the proxy's 404 node_unavailable for a killed node's session: before, after its check."""
    with httpx.Client(base_url=group.proxy.url, timeout=60) as http:
        victim = group.nodes[-1]
        for _ in range(10):
            sid = http.post("/v1/sessions", json={}).raise_for_status().json()["id"]
            if sid.endswith("." + victim.name):
                break
        else:
            raise RuntimeError(f"no session landed on {victim.name}")
        victim.kill()
        timings = []
        for _ in range(2):
            t0 = time.perf_counter()
            r = http.post(f"/v1/sessions/{sid}/execute", json={"code": "print(1)"})
            timings.append(time.perf_counter() - t0)
            assert r.status_code == 404 and r.json()["error"]["reason"] == "node_unavailable", r.text
            group.proxy.wait_server(f"node_{victim.name}", victim.name, up=False)
        victim.start()
    return timings[0], timings[1]


def main() -> None:
    header(f"Scale-out behind HAProxy: {JOBS} trivial batch jobs, {SPLIT} requests per instance")
    print(f"    load average before: {os.getloadavg()[0]:.2f}; all instances share this machine's {CORES} cores")
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="ebx-bench-") as logs:
        for count in (1, 2, 3):
            with cluster(SETTINGS, count=count, workdir=Path(logs) / str(count)) as group:
                if count == 1:
                    baseline, _ = batch_throughput(group, direct=True)
                    print(f"  1 instance, no proxy: {baseline:8.1f} jobs/s")
                rate, shares = batch_throughput(group)
                rates[count] = rate
                speedup = rate / rates[1]
                split = ", ".join(f"{node} {n}" for node, n in sorted(shares.items()))
                print(
                    f"  {count} instance(s): {rate:8.1f} jobs/s   speed-up x{speedup:4.2f}   "
                    f"per-instance efficiency {speedup / count:5.0%}   ({split})"
                )
                if count == 3:
                    direct, proxied = session_latency(group)
                    added = [p - d for p, d in zip(sorted(proxied), sorted(direct), strict=True)]
                    print(f"\n  print(1) in a session, {CALLS} calls each way, interleaved:")
                    print(f"    direct to its node : {summary_ms(direct)}")
                    print(f"    through the proxy  : {summary_ms(proxied)}")
                    print(
                        f"    proxy adds         : p50 {1000 * (pct(proxied, 50) - pct(direct, 50)):.2f} ms, "
                        f"p99 {1000 * (pct(proxied, 99) - pct(direct, 99)):.2f} ms, "
                        f"mean of quantile differences {1000 * statistics.mean(added):.2f} ms"
                    )
                    before, after = unavailable_latency(group)
                    print("\n  a killed node's session through the proxy (404 node_unavailable):")
                    print(
                        f"    before its health check noticed: {1000 * before:7.1f} ms (connection refused, no retry)"
                    )
                    print(f"    after                          : {1000 * after:7.1f} ms (answered by the proxy)")
    print(
        "\n  Model: one batch request runs on one node; a batch split into at least N concurrent requests runs\n"
        "  on N nodes at once, so on N hosts T(N) ~ N x T(1) x e, where the per-instance efficiency e is lost\n"
        "  only to the split's imbalance and the proxy's hop. Here all instances share one machine's cores, so\n"
        "  on an idle machine T(N) stays near T(1) (e ~ 1/N); on a loaded one, more instances also take a\n"
        "  bigger share of the contended CPU from other work, so T(N) may rise: neither is a cluster's speed-up."
    )


if __name__ == "__main__":
    main()
