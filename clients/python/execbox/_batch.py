"""The I/O-free part of batches: the request, its timeout, and ``map``'s collection of results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from execbox._exceptions import ExecboxError
from execbox._models import BatchJob, BatchRequest, Execution, ExecutionError, ExecutionStatus, JobResult
from execbox._progress import progress_bar
from execbox._streams import JobDecoder

__all__ = ["Jobs", "MapCollector", "batch_body", "failure_execution", "longest_job_s"]

Jobs = Sequence[BatchJob | dict[str, Any] | str]

# A job without a timeout of its own gets the server's default, 10 s at most.
_DEFAULT_JOB_TIMEOUT_S = 10.0


def batch_body(jobs: Jobs, concurrency: int | None) -> dict[str, Any]:
    """The body of ``POST /v1/batch/stream``; jobs may be code strings, dicts or :class:`BatchJob`."""
    parsed = [
        job if isinstance(job, BatchJob) else BatchJob(code=job) if isinstance(job, str) else BatchJob(**job)
        for job in jobs
    ]
    return BatchRequest(jobs=parsed, concurrency=concurrency).model_dump(exclude_none=True)


def longest_job_s(body: dict[str, Any]) -> float:
    return max((job.get("timeout_s") or _DEFAULT_JOB_TIMEOUT_S) for job in body["jobs"])


def failure_execution(error: ExecboxError) -> Execution:
    """An Execution standing for a service failure, for batch helpers that keep errors as data."""
    return Execution(
        status=ExecutionStatus.ERROR,
        error=ExecutionError(name=type(error).__name__, value=str(error)),
        message=f"the execbox service could not run this code: {error}",
    )


class MapCollector:
    """What ``map`` does without I/O: the jobs, results put back in input order, a progress bar."""

    def __init__(self, codes: Sequence[str], *, timeout_s: float | None, memory_mb: int | None, progress: bool) -> None:
        self.jobs = [{"code": code, "timeout_s": timeout_s, "memory_mb": memory_mb} for code in codes]
        self._out: list[Execution | None] = [None] * len(codes)
        self._bar = progress_bar(len(codes), unit="exec", enabled=progress)

    def add(self, result: JobResult) -> None:
        self._out[result.index] = result.to_execution()
        self._bar.update(1)

    def fail(self, error: ExecboxError) -> None:
        """Every input without a result yet gets ``error`` as data."""
        failure = failure_execution(error)
        self._out = [item if item is not None else failure for item in self._out]

    def finish(self) -> list[Execution]:
        self._bar.close()
        self.fail(JobDecoder().missing())
        return [item for item in self._out if item is not None]
