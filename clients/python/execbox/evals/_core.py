"""Evaluation by execution: every sample in its own fresh process on the batch path.

A job the service could not run (``service_error``: engine down, worker lost, overload) is no
verdict on its sample: it is sent again (twice at most), and a sample still without a verdict
then raises :class:`EvalIncompleteError` or, with ``on_service_error="mark"``, is reported as
such and left out of pass@k — never counted as a failed sample.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from execbox._client import Client
from execbox._exceptions import ExecboxError
from execbox._models import ExecutionError, JobResult, JobStatus
from execbox._progress import progress_bar
from execbox.evals.datasets import Problem
from execbox.feedback import FeedbackStyle, render_feedback

__all__ = [
    "EvalIncompleteError",
    "EvalReport",
    "OnServiceError",
    "SampleResult",
    "evaluate",
    "pass_at_k",
]

OnServiceError = Literal["raise", "mark"]
RETRIES = 2  # a job the service could not run is sent this many more times


class EvalIncompleteError(ExecboxError):
    """Some samples got no verdict: the service could not run their jobs (engine down, worker lost),
    also after retries. Nothing is scored: a missing verdict is not a failure of the sample."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), computed stably."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


@dataclass
class SampleResult:
    task_id: str
    index: int
    passed: bool
    result: str  # "passed", "failed: <error>", "timed out", "no verdict: <why>" (a service error)
    status: str
    error: str | None = None
    feedback: str | None = None


@dataclass
class EvalReport:
    pass_at_k: dict[str, float]
    samples: list[SampleResult]
    tasks: int
    wall_s: float
    per_task: dict[str, dict[str, int]] = field(default_factory=dict)
    # Samples the service could not run (on_service_error="mark"): in `samples`, not in pass@k.
    no_verdict: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "pass_at_k": self.pass_at_k,
            "tasks": self.tasks,
            "wall_s": self.wall_s,
            "per_task": self.per_task,
            "no_verdict": self.no_verdict,
            "samples": [asdict(s) for s in self.samples],
        }


def _failure(result: JobResult) -> ExecutionError | None:
    """The error that decided a failing sample: its first failed test's, else the program's."""
    failed = next((t for t in result.tests or [] if not t.passed and t.error is not None), None)
    return failed.error if failed is not None else result.error


def _describe(result: JobResult) -> tuple[bool, str, str | None]:
    # Passed only when the harness ran and reported every test passing: a program that exits
    # before its tests (os._exit(0) in the solution) gets no verdict, and so never passes.
    tests = result.tests or []
    if result.status is JobStatus.OK and tests and all(t.passed for t in tests):
        return True, "passed", None
    if result.status is JobStatus.TIMEOUT or any(t.status == "timeout" for t in tests):
        return False, "timed out", "timed out"
    error = _failure(result)
    if error is not None:
        detail = f"{error.name}: {error.value}".rstrip(": ")
        failing = next((line.strip() for line in reversed(error.traceback) if "assert" in line), None)
        if error.name == "AssertionError" and failing:
            detail = f"AssertionError: {failing}"
        return False, f"failed: {detail}", detail
    reason = result.message or ("no test verdict" if result.status is JobStatus.OK else result.status.value)
    return False, f"failed: {reason}", reason


def evaluate(
    client: Client,
    problems: dict[str, Problem],
    samples: Sequence[dict[str, Any]],
    *,
    ks: Sequence[int] = (1, 10, 100),
    timeout_s: float = 3.0,
    memory_mb: int | None = None,
    feedback: FeedbackStyle | None = None,
    progress: bool = False,
    on_service_error: OnServiceError = "raise",
) -> EvalReport:
    """Run every sample against its problem's tests, each in isolation; compute pass@k.

    A job the service could not run is sent again, :data:`RETRIES` times at most; a sample still
    without a verdict raises (``on_service_error="raise"``) or is marked (``"mark"``: its result
    says why, ``status`` is ``service_error``, and pass@k leaves it out).

    Raises:
        KeyError: a sample names a task that is not among ``problems``.
        EvalIncompleteError: samples without a verdict after retries (``on_service_error="raise"``).
    """
    if on_service_error not in ("raise", "mark"):
        raise ValueError("on_service_error must be 'raise' or 'mark'")
    started = time.monotonic()
    jobs = []
    for i, sample in enumerate(samples):
        problem = problems[sample["task_id"]]
        # The tests run in the batch harness, which reports a verdict only once they ran: a
        # solution cannot pass by ending the program before them.
        jobs.append(
            {
                "id": str(i),
                "code": problem.solution(sample),
                "tests": {"assertions": problem.test_program},
                "timeout_s": timeout_s,
                "memory_mb": memory_mb,
            }
        )
    results: list[SampleResult | None] = [None] * len(samples)
    bar = progress_bar(len(jobs), unit="sample", enabled=progress)
    todo = list(range(len(jobs)))
    lost: dict[int, str] = {}
    try:
        for _ in range(RETRIES + 1):
            lost = {}
            for batch_result in client.batch_stream([jobs[i] for i in todo]):
                i = todo[batch_result.index]
                if batch_result.status is JobStatus.SERVICE_ERROR:
                    lost[i] = batch_result.message or "the service could not run the job"
                    continue
                results[i] = _sample_result(samples[i], i, batch_result, feedback)
                bar.update(1)
            todo = sorted(lost)
            if not todo:
                break
    finally:
        bar.close()
    if lost and on_service_error == "raise":
        first = min(lost)
        raise EvalIncompleteError(
            f"{len(lost)} sample(s) got no verdict after {RETRIES + 1} attempts (the service could not run them), "
            f"e.g. {samples[first]['task_id']}: {lost[first]}"
        )
    for i, why in lost.items():
        results[i] = SampleResult(
            task_id=samples[i]["task_id"], index=i, passed=False, result=f"no verdict: {why}", status="service_error"
        )
    done = [r for r in results if r is not None]
    scored = [r for r in done if r.status != JobStatus.SERVICE_ERROR.value]
    per_task: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "c": 0})
    for r in scored:
        per_task[r.task_id]["n"] += 1
        per_task[r.task_id]["c"] += int(r.passed)
    scores: dict[str, float] = {}
    smallest = min(v["n"] for v in per_task.values()) if per_task else 0
    for k in ks:
        if k <= smallest:
            values = [pass_at_k(v["n"], v["c"], k) for v in per_task.values()]
            scores[f"pass@{k}"] = sum(values) / len(values)
    return EvalReport(
        pass_at_k=scores,
        samples=done,
        tasks=len(per_task),
        wall_s=round(time.monotonic() - started, 3),
        per_task=dict(per_task),
        no_verdict=len(lost),
    )


def _sample_result(
    sample: dict[str, Any], i: int, batch_result: JobResult, feedback: FeedbackStyle | None
) -> SampleResult:
    passed, text, error = _describe(batch_result)
    fb = None
    if feedback is not None and not passed:
        shown = batch_result.model_copy(update={"error": _failure(batch_result)})
        fb = render_feedback(shown.to_execution(), style=feedback)
    return SampleResult(
        task_id=sample["task_id"],
        index=i,
        passed=passed,
        result=text,
        status=batch_result.status.value,
        error=error,
        feedback=fb,
    )
