"""HumanEval+ and MBPP+, canonical solutions, all inputs: execbox vs. EvalPlus's own evaluator.

Both tools score the same sample file (every task's ``prompt + canonical_solution``) against the
same release files (../shared/data/evalplus, EvalPlus pointed at them with its override variables),
on this machine, in the same run:

- **cold**: expected outputs computed first (EvalPlus: ``get_groundtruth`` on the host; execbox:
  collect jobs in the sandbox), then every sample on base and plus inputs;
- **warm**: expected outputs from each tool's cache, only the evaluation.

EvalPlus runs with ``--parallel`` = the cores here (its default is half of them) and runs the
solutions unsandboxed on the host; execbox runs each sample's input set as one isolated batch job.
Each tool's scores are checked: the canonical solutions score 1.0 / 1.0 under execbox; the table
shows both tools' pass@1 (EvalPlus 0.3.1 fails HumanEval/32's own canonical solution, see README).
Goal: execbox at least 3x faster, cold and warm.

Run: ``python bench/evalplus.py`` (starts its own server) or ``--url URL``; ``--only humaneval``;
``--report DIR`` also writes execbox's HTML report of each run there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
sys.path.insert(0, str(Path(__file__).parent))  # _util
from tests.support.server import local_server

from _util import header
from execbox import Client
from execbox.evals import Dataset, PlusDataset, compute_groundtruth, evaluate_plus, load_evalplus
from execbox.evals.evalplus import default_dataset_path
from execbox.evals.groundtruth import GroundTruth
from execbox.evals.report import write_html

MEMORY_MB = 4096
PASS_LINE = re.compile(r"pass@1:\s+([0-9.]+)")


@dataclass
class Run:
    tool: str
    phase: str  # cold | warm
    seconds: float
    base: float
    plus: float
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at its start and end
    failing: tuple[str, ...] = ()  # tasks whose canonical solution did not pass base + plus


def load() -> float:
    return os.getloadavg()[0]


def digest_summary(truth: GroundTruth, data: PlusDataset) -> str:
    """Expected values sent as digests (over a worker record), and those that hold floats where
    EvalPlus would compare with a tolerance (the task's atol, or a float output before them)."""
    digests, tolerant = [], []
    for task_id, task in data.tasks.items():
        for name in ("base", "plus"):
            expected = truth.suite(task_id, name).expected
            floats_before = task.atol != 0
            for i, value in enumerate(expected):
                if isinstance(value, dict) and "$digest" in value:
                    digests.append(f"{task_id} {name} {i} ({value['bytes'] / 1e6:.0f} MB)")
                    if value["floats"] and floats_before:
                        tolerant.append(f"{task_id} {name} {i}")
                floats_before = floats_before or _is_floats(value)
    listed = ", ".join(digests) or "-"
    return f"{len(digests)} digests: {listed}; compared with a tolerance by EvalPlus: {tolerant or 'none'}"


def _is_floats(value: object) -> bool:
    # EvalPlus's is_floats on an encoded value (a float, or a non-empty list / tuple of floats).
    if isinstance(value, dict) and "$tuple" in value:
        value = value["$tuple"]
    if isinstance(value, list) and value:
        return all(isinstance(v, float) or (isinstance(v, dict) and "$float" in v) for v in value)
    return isinstance(value, float) or (isinstance(value, dict) and "$float" in value)


@contextmanager
def service(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    # EvalPlus gives each sample 4 GiB (EVALPLUS_MAX_MEMORY_BYTES); so does this server's batch path.
    settings = {"min_ready": "0", "batch_memory_mb": str(MEMORY_MB)}
    with tempfile.TemporaryDirectory() as tmp, local_server(Path(tmp) / "server.log", **settings) as server:
        yield server.url


def execbox_runs(url: str, data: PlusDataset, report_dir: Path | None) -> list[Run]:
    samples = [{"task_id": t, "solution": task.reference} for t, task in data.tasks.items()]
    runs = []
    with tempfile.TemporaryDirectory() as cache, Client(url, timeout=120) as client:
        for phase in ("cold", "warm"):
            started, load_before = time.monotonic(), load()
            truth = compute_groundtruth(
                client, data, directory=Path(cache), refresh=phase == "cold", memory_mb=MEMORY_MB
            )
            report = evaluate_plus(client, data, samples, groundtruth=truth, memory_mb=MEMORY_MB)
            seconds = time.monotonic() - started
            failing = [s.task_id for s in report.samples if not s.plus_passed]
            if failing:
                print(f"    execbox {phase}: canonical solutions failing: {failing}", file=sys.stderr)
                for s in report.samples:
                    if not s.plus_passed:
                        print(f"      {s.task_id}: base {s.base.failure} plus {s.plus and s.plus.failure}")
            runs.append(
                Run(
                    "execbox",
                    phase,
                    seconds,
                    report.base_pass_at_k["pass@1"],
                    report.plus_pass_at_k["pass@1"],
                    (load_before, load()),
                    tuple(failing),
                )
            )
            print(f"    execbox {phase}: {seconds:.1f} s (expected outputs {truth.wall_s:.1f} s)", flush=True)
            if phase == "cold":
                print(f"    {digest_summary(truth, data)}", flush=True)
            if report_dir is not None and phase == "cold":
                write_html(report, str(report_dir / f"{data.name.value}-canonical.html"))
    return runs


def evalplus_runs(data: PlusDataset, parallel: int) -> list[Run]:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.jsonl"
        samples.write_text(
            "".join(json.dumps({"task_id": t, "solution": task.reference}) + "\n" for t, task in data.tasks.items())
        )
        override = "HUMANEVAL_OVERRIDE_PATH" if data.name is Dataset.HUMANEVAL else "MBPP_OVERRIDE_PATH"
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache"), override: data.path, "TERM": "dumb"}
        command = [sys.executable, "-m", "evalplus.evaluate", "--dataset", data.name.value, "--samples", str(samples)]
        command += ["--parallel", str(parallel)]
        for phase in ("cold", "warm"):
            results = Path(tmp, "samples_eval_results.json")
            results.unlink(missing_ok=True)  # else evalplus reloads it
            started, load_before = time.monotonic(), load()
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
            seconds = time.monotonic() - started
            if done.returncode != 0:
                raise RuntimeError(f"evalplus failed:\n{done.stderr[-3000:]}")
            scores = [float(x) for x in PASS_LINE.findall(done.stdout)]
            verdicts = json.loads(results.read_text())["eval"]
            failing = tuple(
                t
                for t, records in verdicts.items()
                if any((r["base_status"], r["plus_status"]) != ("pass", "pass") for r in records)
            )
            runs.append(Run("evalplus", phase, seconds, scores[0], scores[1], (load_before, load()), failing))
            print(f"    evalplus {phase}: {seconds:.1f} s; canonical solutions failing: {list(failing)}", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an execbox service (default: start one)")
    parser.add_argument("--only", choices=[d.value for d in Dataset])
    parser.add_argument("--report", type=Path, help="write execbox's HTML reports into this directory")
    args = parser.parse_args()
    if shutil.which("docker") is None and not args.url:
        sys.exit("bench/evalplus.py needs Docker for its own server, or --url")
    cores = os.cpu_count() or 1
    header("EvalPlus canonical solutions: execbox vs evalplus.evaluate")
    rows = []
    with service(args.url) as url:
        for name in Dataset:
            if args.only and name.value != args.only:
                continue
            path = default_dataset_path(name)
            if path is None:
                sys.exit(f"no {name.release_file}: keep ../shared/data/evalplus beside the checkout")
            data = load_evalplus(name, path)
            inputs = sum(len(t.base_input) + len(t.plus_input) for t in data.tasks.values())
            print(f"  {name.value}+: {len(data)} tasks, {inputs:,} inputs", flush=True)
            ours = execbox_runs(url, data, args.report)
            theirs = evalplus_runs(data, cores)
            rows.append((name, len(data), inputs, ours, theirs))
    print()
    print(
        "| dataset | tasks | inputs | phase | evalplus s | execbox s | speed-up | pass@1 evalplus | pass@1 execbox "
        "| load avg (evalplus / execbox) |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---|---|---|")
    for name, tasks, inputs, ours, theirs in rows:
        for mine, other in zip(ours, theirs, strict=True):
            scores = f"{other.base:.3f} / {other.plus:.3f} | {mine.base:.3f} / {mine.plus:.3f}"
            loads = f"{other.load[0]:.1f}-{other.load[1]:.1f} / {mine.load[0]:.1f}-{mine.load[1]:.1f}"
            print(
                f"| {name.value}+ | {tasks} | {inputs:,} | {mine.phase} | {other.seconds:.1f} | {mine.seconds:.1f} | "
                f"{other.seconds / mine.seconds:.1f}x | {scores} | {loads} |"
            )
    print(f"\nevalplus {_version()}, --parallel {cores}, unsandboxed; execbox: a batch job per sample and input set")
    print("pass@1 columns: base / base + extra")


def _version() -> str:
    from importlib.metadata import version

    return version("evalplus")


if __name__ == "__main__":
    main()
