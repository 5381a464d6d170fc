"""Expected outputs of an EvalPlus dataset, computed in the sandbox and cached by the dataset's hash.

EvalPlus (``evalplus/evaluate.py``, ``get_groundtruth``) runs ``prompt + canonical_solution`` on
every base and plus input on the host, records each call's time, and pickles the lot under its
cache directory keyed by the dataset's md5. execbox does the same on the batch path, in
``collect`` mode: the canonical solution runs in a sandboxed worker, every case's return value
comes back as a typed encoding (tuples, sets and floats intact) with the call's own time. The
cache is JSON (no pickle: a cache file must not be able to run code when it is read), one file per
dataset hash under :func:`cache_dir`.

Times measured here, in the same sandbox the samples run in, set the samples' per-input time
limits (``max(1 s, 4 x canonical time)``, EvalPlus's floor and factor).

A task whose inputs take longer than one collect job's budget (``Mbpp/599`` computes sums up to
1e8: ~23 s for its 88 plus inputs) is not a failure: the values that came back before the
deadline are kept, and the remaining inputs go out again as a new job, until every input has
a value or a single input alone exceeds the budget.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from execbox._client import Client
from execbox._exceptions import ExecboxError
from execbox._models import BatchJob, JobResult, JobStatus, TestCase, TestSpec
from execbox._progress import progress_bar
from execbox._values import encode_value
from execbox.evals.evalplus import Dataset, PlusDataset, PlusTask

__all__ = [
    "CACHE_DIR_ENV",
    "GroundTruth",
    "GroundTruthError",
    "SuiteTruth",
    "cache_dir",
    "compute_groundtruth",
    "load_groundtruth",
]

CACHE_DIR_ENV = "EXECBOX_CACHE_DIR"
# Bumped when what is cached changes meaning (encoding, timing), so old files are not read.
_FORMAT = 1
# One collect job's budget. A task that needs longer is continued in further jobs (see above);
# a single input that alone needs longer (a loaded machine) gets 4x more, up to the largest
# timeout a service accepts by default.
COLLECT_TIMEOUT_S = 30.0
COLLECT_MAX_TIMEOUT_S = 300.0
# Collect jobs return every output; the server's largest output budget, split further if cut.
COLLECT_OUTPUT_BYTES = 16 * 1024 * 1024
SUITES = ("base", "plus")


class GroundTruthError(ExecboxError):
    """The canonical solution could not produce an expected output (it raised, or one input alone
    ran past the budget): the dataset or the sandbox is not what EvalPlus assumes."""


@dataclass(frozen=True)
class SuiteTruth:
    """Expected outputs (typed encodings) and the canonical solution's time per input, in seconds."""

    expected: list[Any]
    times_s: list[float]


@dataclass(frozen=True)
class GroundTruth:
    dataset: Dataset
    sha256: str
    tasks: dict[str, dict[str, SuiteTruth]]  # task_id -> "base" | "plus" -> truth
    wall_s: float  # how long computing it took (0 when read from the cache)
    cached: bool

    def suite(self, task_id: str, suite: str) -> SuiteTruth:
        return self.tasks[task_id][suite]


def cache_dir() -> Path:
    """``$EXECBOX_CACHE_DIR``, else ``$XDG_CACHE_HOME/execbox``, else ``~/.cache/execbox``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "execbox"


def _cache_file(dataset: PlusDataset, directory: Path) -> Path:
    return directory / "evalplus" / f"{dataset.name.value}-{dataset.sha256[:32]}-v{_FORMAT}.json.gz"


def load_groundtruth(dataset: PlusDataset, *, directory: Path | None = None) -> GroundTruth | None:
    """The cached expected outputs of ``dataset``, or None when there are none (or they do not fit it)."""
    path = _cache_file(dataset, directory or cache_dir())
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            document = json.load(fh)
    except (OSError, ValueError):
        return None
    if document.get("sha256") != dataset.sha256 or document.get("format") != _FORMAT:
        return None
    tasks = {
        task_id: {
            suite: SuiteTruth(expected=value["expected"], times_s=value["times_s"]) for suite, value in by.items()
        }
        for task_id, by in document["tasks"].items()
    }
    for task_id, task in dataset.tasks.items():
        by = tasks.get(task_id)
        if (
            by is None
            or len(by["base"].expected) != len(task.base_input)
            or len(by["plus"].expected) != len(task.plus_input)
        ):
            return None
    return GroundTruth(dataset=dataset.name, sha256=dataset.sha256, tasks=tasks, wall_s=0.0, cached=True)


def _store(truth: GroundTruth, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": _FORMAT,
        "dataset": truth.dataset.value,
        "sha256": truth.sha256,
        "tasks": {
            task_id: {suite: {"expected": t.expected, "times_s": t.times_s} for suite, t in by.items()}
            for task_id, by in truth.tasks.items()
        },
    }
    # Written beside, then renamed: a reader never sees half a cache file.
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    with gzip.open(partial, "wt", encoding="utf-8") as fh:
        json.dump(document, fh)
    partial.replace(path)


@dataclass
class _Pending:
    """Inputs of one task's suite still without a value; ``start`` is the first of them."""

    task: PlusTask
    suite: str
    start: int
    expected: list[Any]
    times_s: list[float]
    memory_mb: int | None = None
    timeout_s: float = COLLECT_TIMEOUT_S

    @property
    def inputs(self) -> list[Any]:
        return self.task.base_input if self.suite == "base" else self.task.plus_input

    def job(self) -> BatchJob:
        cases = [TestCase(input=encode_value(list(inp))) for inp in self.inputs[self.start :]]
        return BatchJob(
            id=f"{self.task.task_id}:{self.suite}:{self.start}",
            code=self.task.reference,
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            max_output_bytes=COLLECT_OUTPUT_BYTES,
            tests=TestSpec(
                entry_point=self.task.entry_point,
                cases=cases,
                semantics="evalplus",
                mode="collect",
                per_test_timeout_s=self.timeout_s,
            ),
        )

    def take(self, result: JobResult) -> bool:
        """Keep the values ``result`` brought back; True when the suite is complete.

        Raises:
            GroundTruthError: the canonical solution raised, or one input alone ran out of the
                largest budget.
        """
        label = f"{self.task.task_id} {self.suite} input {{}}"
        returned = 0
        for outcome in sorted(result.tests or [], key=lambda o: o.index):
            if outcome.status != "returned":
                break
            if _truncated(outcome.actual):
                break
            self.expected.append(outcome.actual)
            self.times_s.append(outcome.duration_ms / 1000.0)
            returned += 1
        self.start += returned
        if self.start == len(self.inputs):
            return True
        stopped = next((o for o in result.tests or [] if o.index == returned), None)
        if (stopped is not None and stopped.error is not None and stopped.error.name == "MemoryError") or (
            returned == 0 and result.status is JobStatus.OUT_OF_MEMORY
        ):
            raise GroundTruthError(
                f"the canonical solution ran out of memory on {label.format(self.start)} "
                f"(memory_mb={self.memory_mb or 'the server default'}): EvalPlus gives it 4 GiB; "
                "pass memory_mb=4096 (execbox eval --memory-mb 4096) to a server whose batch_memory_mb allows it"
            )
        if stopped is not None and stopped.status == "error":
            error = stopped.error
            what = f"{error.name}: {error.value}" if error else "an error"
            raise GroundTruthError(f"the canonical solution raised on {label.format(self.start)}: {what}")
        timed_out = result.status is JobStatus.TIMEOUT or (stopped is not None and stopped.status == "timeout")
        if returned == 0 and timed_out and self.timeout_s < COLLECT_MAX_TIMEOUT_S:
            self.timeout_s = min(self.timeout_s * 4, COLLECT_MAX_TIMEOUT_S)
            return False
        if returned == 0:
            # Nothing came back although the job started at this input: it alone ran out of time
            # or output, or the reference program itself failed (it does not define the function).
            why = result.message or (result.error.name if result.error else result.status.value)
            raise GroundTruthError(f"no expected output for {label.format(self.start)}: {why}")
        return False


def _truncated(value: Any) -> bool:
    return isinstance(value, dict) and "$truncated" in value


def compute_groundtruth(
    client: Client,
    dataset: PlusDataset,
    *,
    directory: Path | None = None,
    refresh: bool = False,
    memory_mb: int | None = None,
    progress: bool | None = False,
) -> GroundTruth:
    """Expected outputs of every input of ``dataset``: from the cache, else computed in the sandbox
    (and then cached). ``memory_mb``: of each collect job (EvalPlus allows 4 GiB; Mbpp/255's
    canonical solution needs more than 1 GiB on one of its inputs).

    Raises:
        GroundTruthError: the canonical solution failed on an input (see the class).
        ExecboxError subclasses: the service could not be used; a job it could not run
            (``service_error``) is sent again, twice at most, before this is raised.
    """
    where = directory or cache_dir()
    if not refresh:
        cached = load_groundtruth(dataset, directory=where)
        if cached is not None:
            return cached
    started = time.monotonic()
    pending = [_Pending(task, suite, 0, [], [], memory_mb) for task in dataset.tasks.values() for suite in SUITES]
    done: list[_Pending] = [p for p in pending if not p.inputs]
    todo = [p for p in pending if p.inputs]
    bar = progress_bar(len(todo), unit="suite", enabled=progress)
    lost: dict[str, int] = {}
    try:
        while todo:
            again: list[_Pending] = []
            for result in client.batch_stream(p.job() for p in todo):
                item = todo[result.index]
                if result.status is JobStatus.SERVICE_ERROR:
                    key = f"{item.task.task_id}:{item.suite}"
                    lost[key] = lost.get(key, 0) + 1
                    if lost[key] > 2:
                        raise GroundTruthError(f"the service could not run {key}: {result.message}")
                    again.append(item)
                elif item.take(result):
                    done.append(item)
                    bar.update(1)
                else:
                    again.append(item)
            todo = again
    finally:
        bar.close()
    tasks: dict[str, dict[str, SuiteTruth]] = {task_id: {} for task_id in dataset.tasks}
    for item in done:
        tasks[item.task.task_id][item.suite] = SuiteTruth(expected=item.expected, times_s=item.times_s)
    truth = GroundTruth(
        dataset=dataset.name,
        sha256=dataset.sha256,
        tasks=tasks,
        wall_s=round(time.monotonic() - started, 3),
        cached=False,
    )
    _store(truth, _cache_file(dataset, where))
    return truth


def time_limits(times_s: Sequence[float], *, factor: float, floor: float) -> list[float]:
    """EvalPlus's per-input limits: ``max(floor, factor * canonical time)``."""
    return [max(floor, factor * t) for t in times_s]
