"""HumanEval+ / MBPP+ evaluation with EvalPlus's semantics, on the batch path.

What EvalPlus 0.3.1 does (``evalplus/evaluate.py``, ``evalplus/eval/__init__.py``) and how it is
done here:

- Expected outputs: the canonical solution run on every input (:mod:`.groundtruth`, in the
  sandbox, cached by the dataset's hash).
- One sample, one input set (base, then plus) -> one process that defines the solution and calls
  the entry point on each input in order, stopping at the first failure (EvalPlus's default
  ``fast_check``); here one batch job each, the comparison made by the worker outside the
  solution's process (``semantics="evalplus"``).
- Per-input time limit ``max(min_time_limit, factor x canonical time)`` (1 s, 4x), the whole set
  bounded by ``min(60 s, sum of the limits) + 2 s``; a set that runs past that is ``timeout``,
  an input past its own limit is ``fail`` (EvalPlus catches its alarm as a failure).
- Comparison: the task's ``atol`` (1e-6 forced for float outputs), numpy's ``allclose`` with
  ``rtol=1e-7``, and the special oracles: HumanEval/32's root check, MBPP+'s set-equality,
  not-None, and the alternative answers of Mbpp/164, 295, 558 and 581.
- Result: per sample ``base_status`` / ``plus_status`` (``pass``, ``fail``, ``timeout``) and the
  failing input (the last one judged), in :meth:`PlusReport.eval_results`, EvalPlus's
  ``eval_results.json`` structure; pass@k base and base+plus with the unbiased estimator.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from execbox._client import Client
from execbox._models import BatchJob, JobResult, JobStatus, TestCase, TestOutcome, TestSpec
from execbox._progress import progress_bar
from execbox._values import Oracle, digest_encoding, encode_allowance_s, encode_value, expected_size
from execbox.evals._core import EvalIncompleteError, pass_at_k
from execbox.evals.evalplus import Dataset, PlusDataset, PlusTask, serialize_mbpp_inputs
from execbox.evals.groundtruth import GroundTruth, SuiteTruth, compute_groundtruth, time_limits

__all__ = [
    "DEFAULT_GT_TIME_LIMIT_FACTOR",
    "DEFAULT_MIN_TIME_LIMIT",
    "EvalIncompleteError",
    "Failure",
    "PlusReport",
    "PlusSample",
    "Status",
    "SuiteResult",
    "evaluate_plus",
    "read_evalplus_samples",
]

# evalplus/config.py
DEFAULT_GT_TIME_LIMIT_FACTOR = 4.0
DEFAULT_MIN_TIME_LIMIT = 1.0
# evalplus/eval/__init__.py: untrusted_check's cap on a whole input set (EVALPLUS_TIMEOUT_PER_TASK).
TIMEOUT_PER_TASK_S = 60.0
# untrusted_check adds 1 s to the set's budget and joins the process 1 s after that.
_SET_GRACE_S = 2.0
_RETRIES = 2
MAX_JOB_TIMEOUT_S = 300.0  # EXECBOX_MAX_TIMEOUT_S's default
# An expected value bigger than this goes to the worker as its digest (see _sent_as_digest).
SEND_WHOLE_BYTES = 1024 * 1024
KS = (1, 10, 100)


class Status(StrEnum):
    """EvalPlus's verdict on one input set of one sample."""

    PASS = "pass"
    FAIL = "fail"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Failure:
    """Why an input set failed, for the report: ``wrong answer``, ``exception`` (with its type),
    ``timeout``, ``out of memory``, ``crashed`` or ``incomplete`` (the run ended before its inputs)."""

    category: str
    exception: str | None = None
    input_index: int | None = None
    detail: str | None = None

    @property
    def label(self) -> str:
        return f"{self.category}: {self.exception}" if self.exception else self.category


@dataclass(frozen=True)
class SuiteResult:
    status: Status
    fail_inputs: list[Any]  # as EvalPlus records them: the failing input (the last one judged), or []
    failure: Failure | None
    wall_ms: float
    judged: int  # inputs compared before the run stopped
    total: int


@dataclass(frozen=True)
class PlusSample:
    task_id: str
    completion_id: int
    solution: str
    base: SuiteResult
    plus: SuiteResult | None  # None with base_only

    @property
    def base_passed(self) -> bool:
        return self.base.status is Status.PASS

    @property
    def plus_passed(self) -> bool:
        """EvalPlus's "+" verdict: base and plus both pass."""
        return self.base_passed and self.plus is not None and self.plus.status is Status.PASS


@dataclass
class PlusReport:
    dataset: Dataset
    dataset_hash: str  # md5 of the release JSONL, the hash EvalPlus writes
    date: str
    samples: list[PlusSample]
    base_pass_at_k: dict[str, float]
    plus_pass_at_k: dict[str, float]
    wall_s: float
    groundtruth_s: float
    groundtruth_cached: bool
    canonical_s: dict[str, float] = field(default_factory=dict)  # task_id -> canonical time, base + plus
    missing_tasks: list[str] = field(default_factory=list)  # tasks of the dataset without a sample

    def summary_lines(self) -> list[str]:
        """What ``evalplus.evaluate`` prints: ``humaneval (base tests)`` then ``pass@1:\\t0.xxx`` ..."""
        name = self.dataset.value
        lines = [f"{name} (base tests)"]
        lines += [f"{k}:\t{v:.3f}" for k, v in self.base_pass_at_k.items()]
        if self.plus_pass_at_k:
            lines.append(f"{name}+ (base + extra tests)")
            lines += [f"{k}:\t{v:.3f}" for k, v in self.plus_pass_at_k.items()]
        return lines

    def eval_results(self) -> dict[str, Any]:
        """EvalPlus's ``eval_results.json``: ``{"date", "hash", "eval": {task_id: [per sample]}}``."""
        by_task: dict[str, list[dict[str, Any]]] = {}
        for sample in self.samples:
            fail_base, fail_plus = sample.base.fail_inputs, sample.plus.fail_inputs if sample.plus else []
            if self.dataset is Dataset.MBPP:
                fail_base = serialize_mbpp_inputs(sample.task_id, fail_base)
                fail_plus = serialize_mbpp_inputs(sample.task_id, fail_plus)
            by_task.setdefault(sample.task_id, []).append(
                {
                    "task_id": sample.task_id,
                    "solution": sample.solution,
                    "base_status": sample.base.status.value,
                    "plus_status": sample.plus.status.value if sample.plus else None,
                    "base_fail_tests": fail_base,
                    "plus_fail_tests": fail_plus,
                }
            )
        return {"date": self.date, "hash": self.dataset_hash, "eval": by_task}

    def write_eval_results(self, path: str | os.PathLike[str]) -> None:
        # json.dump as EvalPlus does (tuples become lists; NaN stays NaN, as Python's json writes it).
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.eval_results(), fh)


def results_path(samples: str) -> str:
    """Where EvalPlus writes its results for ``samples``: ``<dir>/eval_results.json`` for a directory
    of samples, ``<name>_eval_results.json`` beside a ``<name>.jsonl`` file."""
    if os.path.isdir(samples):
        return os.path.join(samples, "eval_results.json")
    stem = samples[: -len(".jsonl")] if samples.endswith(".jsonl") else samples
    return f"{stem}_eval_results.json"


def read_evalplus_samples(path: str) -> list[dict[str, Any]]:
    """Samples as ``evalplus`` reads them (``load_solutions``): a JSONL file of ``task_id`` plus
    ``solution`` or ``completion`` (strings), or a directory ``<task_id with / as _>/<n>.py`` of
    whole solutions.

    Raises:
        ValueError: a record without ``task_id`` or with neither field as a string.
        OSError: the path cannot be read.
    """
    if os.path.isdir(path):
        samples = []
        for task_dir in sorted(Path(path).iterdir()):
            if not task_dir.is_dir():
                continue
            files = sorted((f for f in task_dir.iterdir() if f.suffix == ".py" and f.is_file()), key=_solution_number)
            for file in files:
                samples.append({"task_id": task_dir.name.replace("_", "/"), "solution": file.read_text("utf-8")})
        return samples
    from execbox.evals.datasets import _read

    samples = _read(path)
    for i, sample in enumerate(samples, start=1):
        if "task_id" not in sample:
            raise ValueError(f"line {i} of {path} has no task_id")
        fields = [sample[k] for k in ("solution", "completion") if k in sample]
        if not fields or not all(isinstance(value, str) for value in fields):
            raise ValueError(f"line {i} of {path} needs a solution or completion string")
        sample["task_id"] = str(sample["task_id"])
    return samples


def _solution_number(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


# ---------------------------------------------------------------- special oracles
#
# evalplus/eval/__init__.py (unsafe_execute) and _special_oracle.py, keyed, as there, by entry point.

MBPP_SET_EQUAL = frozenset(
    {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum"}
    | {"intersection_array", "find_dissimilar", "Diff"}
)
MBPP_NOT_NONE = frozenset({"check_str", "text_match_three", "text_starta_endb"})


def _surface_area(base_edge: float, height: float) -> int:
    """Mbpp/581's second reading of "height": the pyramid's perpendicular height, rounded."""
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 2 * base_edge * slant)


def _digit_distance(a: int, b: int) -> int:
    """Mbpp/558's second reading: both numbers zero-padded to the same length."""
    sa, sb = str(a), str(b)
    width = max(len(sa), len(sb))
    return sum(abs(int(x) - int(y)) for x, y in zip(sa.zfill(width), sb.zfill(width), strict=True))


@dataclass(frozen=True)
class _Checks:
    """How one task's outputs are judged: an oracle for every case, alternatives per input."""

    oracle: Oracle | None = None
    not_none: bool = False  # expected is "the canonical output was not None"

    def alternatives(self, entry_point: str, inp: Sequence[Any]) -> list[Any] | None:
        if entry_point == "sum_div":
            return [0]
        if entry_point == "surface_Area":
            return [encode_value(_surface_area(*inp))]
        if entry_point == "digit_distance_nums":
            return [encode_value(_digit_distance(*inp))]
        return None


def _checks(dataset: Dataset, task: PlusTask) -> _Checks:
    name = task.entry_point
    if dataset is Dataset.HUMANEVAL:
        return _Checks(oracle="polynomial_root" if name == "find_zero" else None)
    if name == "are_equivalent":
        return _Checks(oracle="returns")
    if name in MBPP_SET_EQUAL:
        return _Checks(oracle="set_equal")
    if name in MBPP_NOT_NONE:
        return _Checks(oracle="not_none", not_none=True)
    return _Checks()


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class _Suite:
    """One task's input set, encoded once and shared by all of that task's samples."""

    task: PlusTask
    name: str
    inputs: list[Any]
    spec: TestSpec  # built (and validated) once, shared by every sample's job
    timeout_s: float


def _suite(dataset: Dataset, task: PlusTask, name: str, truth: SuiteTruth, *, factor: float, floor: float) -> _Suite:
    inputs = task.base_input if name == "base" else task.plus_input
    checks = _checks(dataset, task)
    limits = time_limits(truth.times_s, factor=factor, floor=floor)
    cases = []
    encoding = 0.0
    for inp, expected, limit in zip(inputs, truth.expected, limits, strict=True):
        size = expected_size(expected)
        encoding += encode_allowance_s(size)
        if checks.not_none:
            expected = expected is not None
        elif size > SEND_WHOLE_BYTES and checks.oracle is None:
            expected = _sent_as_digest(expected)
        # Built from this module's own encodings, so not validated again here (124,253 cases of
        # HumanEval+ took seconds); the service validates every request it gets.
        cases.append(
            TestCase.model_construct(
                input=encode_value(list(inp)),
                expected=expected,
                timeout_s=limit,
                alternatives=checks.alternatives(task.entry_point, inp),
            )
        )
    spec = TestSpec.model_construct(
        entry_point=task.entry_point,
        cases=cases,
        semantics="evalplus",
        mode="check",
        oracle=checks.oracle,
        atol=task.atol,
        stop_on_first_failure=True,
    )
    # Plus the time the right answers take to encode after their calls (outside EvalPlus's limits
    # too), which only matters for outputs of many megabytes (Mbpp/255: ~1 GB of them).
    # At most a service's default largest timeout: Mbpp/255's ~1 GB of outputs would ask for more.
    budget = min(min(TIMEOUT_PER_TASK_S, sum(limits)) + _SET_GRACE_S + encoding, MAX_JOB_TIMEOUT_S)
    return _Suite(task, name, inputs, spec, budget)


def _sent_as_digest(expected: Any) -> Any:
    """A big expected value as its digest, unless it holds floats (a digest cannot apply atol).

    Every sample's job carries its task's expected values: HumanEval/15's plus outputs alone are
    over a batch request's 64 MiB. Compared by digest, the value must be the same encoding, which
    is EvalPlus's ``==`` for values without floats but for ``1 == True`` (README)."""
    if isinstance(expected, dict) and "$digest" in expected:
        return expected
    digest = digest_encoding(expected)
    return expected if digest["floats"] else digest


def _job(suite: _Suite, solution: str, *, memory_mb: int | None, ident: str) -> BatchJob:
    return BatchJob(id=ident, code=solution, timeout_s=suite.timeout_s, memory_mb=memory_mb, tests=suite.spec)


def _judge(suite: _Suite, result: JobResult) -> SuiteResult:
    """EvalPlus's status and failing input from the worker's per-case verdicts."""
    outcomes = sorted(result.tests or [], key=lambda o: o.index)
    judged = [o for o in outcomes if o.status != "not_run"]
    total = len(suite.inputs)
    all_passed = len(judged) == total and all(o.passed for o in judged)
    if result.status is JobStatus.OK and all_passed:
        return SuiteResult(Status.PASS, [], None, result.wall_ms, total, total)
    # A set that ran out of its whole budget is EvalPlus's "timeout"; an input past its own limit
    # is a failure there (the alarm is caught like any exception).
    status = (
        Status.TIMEOUT
        if result.status is JobStatus.TIMEOUT and not any(o.status == "timeout" for o in judged)
        else Status.FAIL
    )
    fail_inputs = [suite.inputs[judged[-1].index]] if judged else []
    return SuiteResult(status, fail_inputs, _failure(result, judged), result.wall_ms, len(judged), total)


def _failure(result: JobResult, judged: list[TestOutcome]) -> Failure:
    bad = next((o for o in judged if not o.passed), None)
    if bad is not None:
        if bad.status == "timeout":
            return Failure("timeout", input_index=bad.index, detail=_short(bad.error.value) if bad.error else None)
        if bad.status == "error" and bad.error is not None:
            return Failure("exception", bad.error.name, bad.index, _short(bad.error.value))
        return Failure("wrong answer", input_index=bad.index)
    if result.status is JobStatus.TIMEOUT:
        return Failure("timeout", detail=result.message)
    if result.status is JobStatus.OUT_OF_MEMORY:
        return Failure("out of memory", detail=result.message)
    if result.status is JobStatus.CRASHED:
        return Failure("crashed", detail=result.signal or result.message)
    if result.error is not None:
        return Failure("exception", result.error.name, None, _short(result.error.value))
    return Failure("incomplete", detail=result.message or result.status.value)


def _short(text: str | None, limit: int = 300) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "…"


# ---------------------------------------------------------------- evaluation


def _scores(per_task: Mapping[str, tuple[int, int, int]]) -> tuple[dict[str, float], dict[str, float]]:
    """pass@k base and base+plus for each k every task has enough samples for (EvalPlus's rule)."""
    if not per_task:
        return {}, {}
    smallest = min(n for n, _, _ in per_task.values())
    base, plus = {}, {}
    for k in KS:
        if smallest >= k:
            base[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c, _ in per_task.values()) / len(per_task)
            plus[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, _, c in per_task.values()) / len(per_task)
    return base, plus


def evaluate_plus(
    client: Client,
    dataset: PlusDataset,
    samples: Iterable[Mapping[str, Any]],
    *,
    base_only: bool = False,
    min_time_limit: float = DEFAULT_MIN_TIME_LIMIT,
    gt_time_limit_factor: float = DEFAULT_GT_TIME_LIMIT_FACTOR,
    memory_mb: int | None = None,
    groundtruth: GroundTruth | None = None,
    cache: Path | None = None,
    refresh_groundtruth: bool = False,
    progress: bool | None = False,
) -> PlusReport:
    """Score EvalPlus samples (``task_id`` + ``solution`` or ``completion``) on base and plus inputs.

    ``groundtruth``: expected outputs already computed (else from the cache in ``cache``, default
    :func:`~execbox.evals.groundtruth.cache_dir`, else computed in the sandbox and cached).

    Raises:
        KeyError: a sample names a task that is not in ``dataset``.
        GroundTruthError: the expected outputs could not be computed.
        EvalIncompleteError: jobs the service could not run, also after retries (nothing is scored).
        ExecboxError subclasses: the service could not be used.
    """
    started = time.monotonic()
    samples = list(samples)
    unknown = sorted({str(s["task_id"]) for s in samples} - set(dataset.tasks))
    if unknown:
        raise KeyError(f"samples name tasks not in {dataset.name.value}+: {', '.join(unknown[:5])}")
    truth = groundtruth or compute_groundtruth(
        client,
        dataset,
        directory=cache,
        refresh=refresh_groundtruth,
        memory_mb=memory_mb,
        progress=progress,
    )
    completion_ids: Counter[str] = Counter()
    entries = []  # (task_id, completion_id, solution)
    for sample in samples:
        task_id = str(sample["task_id"])
        entries.append((task_id, completion_ids[task_id], dataset.tasks[task_id].solution(sample)))
        completion_ids[task_id] += 1
    suite_names = ("base",) if base_only else ("base", "plus")
    suites: dict[tuple[str, str], _Suite] = {}

    def suite_of(task_id: str, name: str) -> _Suite:
        # Built when its first job is sent (a chunk at a time): the workers start at once rather
        # than after every task's cases were encoded.
        if (task_id, name) not in suites:
            suites[task_id, name] = _suite(
                dataset.name,
                dataset.tasks[task_id],
                name,
                truth.suite(task_id, name),
                factor=gt_time_limit_factor,
                floor=min_time_limit,
            )
        return suites[task_id, name]

    plan = [(i, name) for i in range(len(entries)) for name in suite_names]
    verdicts: dict[tuple[int, str], SuiteResult] = {}
    bar = progress_bar(len(plan), unit="job", enabled=progress)
    try:
        todo, attempts = plan, 0
        while todo:
            jobs = (
                _job(
                    suite_of(entries[i][0], name),
                    entries[i][2],
                    memory_mb=memory_mb,
                    ident=f"{entries[i][0]}#{entries[i][1]}:{name}",
                )
                for i, name in todo
            )
            lost = []
            for result in client.batch_stream(jobs):
                i, name = todo[result.index]
                if result.status is JobStatus.SERVICE_ERROR:
                    lost.append((todo[result.index], result.message))
                    continue
                verdicts[i, name] = _judge(suites[entries[i][0], name], result)
                bar.update(1)
            attempts += 1
            if lost and attempts > _RETRIES:
                first = lost[0]
                raise EvalIncompleteError(
                    f"{len(lost)} job(s) got no verdict after {attempts} attempts (the service could not run them), "
                    f"e.g. {entries[first[0][0]][0]} {first[0][1]}: {first[1]}"
                )
            todo = [key for key, _ in lost]
    finally:
        bar.close()
    order = {task_id: n for n, task_id in enumerate(dataset.tasks)}
    results = sorted(
        (
            PlusSample(
                task_id=task_id,
                completion_id=cid,
                solution=solution,
                base=verdicts[i, "base"],
                plus=None if base_only else verdicts[i, "plus"],
            )
            for i, (task_id, cid, solution) in enumerate(entries)
        ),
        key=lambda s: (order[s.task_id], s.completion_id),
    )
    per_task: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for s in results:
        counts = per_task[s.task_id]
        counts[0] += 1
        counts[1] += int(s.base_passed)
        counts[2] += int(s.plus_passed)
    base_scores, plus_scores = _scores({t: (n, b, p) for t, (n, b, p) in per_task.items()})
    return PlusReport(
        dataset=dataset.name,
        dataset_hash=dataset.md5,
        date=datetime.now().strftime("%Y-%m-%d %H:%M"),
        samples=results,
        base_pass_at_k=base_scores,
        plus_pass_at_k={} if base_only else plus_scores,
        wall_s=round(time.monotonic() - started, 3),
        groundtruth_s=truth.wall_s,
        groundtruth_cached=truth.cached,
        canonical_s={
            task_id: round(sum(sum(truth.suite(task_id, name).times_s) for name in ("base", "plus")), 6)
            for task_id in completion_ids
        },
        missing_tasks=[t for t in dataset.tasks if t not in completion_ids],
    )
