"""One limits policy: what a request may ask for, resolved against the server's settings.

Sessions, one-shot executions, batch jobs (and any compatibility endpoint that translates
its requests to these) resolve their limits here and nowhere else:

- a limit left out gets the setting's default;
- a limit above the server's maximum is refused with 422 ``invalid_limits``, naming the
  field, the value, the maximum and the setting that sets it. Never silently lowered: a
  caller who asked for 600 s and got 300 s would read a timeout as its code's fault;
- a limit below the floor the request models declare is refused the same way (our own
  models reject it first; an adapter with looser models gets the same answer).

    kind        field             default                      maximum
    session     memory_mb         EXECBOX_MEMORY_MB            EXECBOX_MAX_MEMORY_MB
    one-shot    cpus              EXECBOX_CPUS                 EXECBOX_MAX_CPUS
                timeout_s         EXECBOX_DEFAULT_TIMEOUT_S    EXECBOX_MAX_TIMEOUT_S
                max_output_bytes  EXECBOX_MAX_OUTPUT_BYTES     EXECBOX_MAX_OUTPUT_BYTES_LIMIT
    execution   timeout_s         the session's timeout_s      EXECBOX_MAX_TIMEOUT_S
    batch job   timeout_s         EXECBOX_BATCH_DEFAULT_TIMEOUT_S  EXECBOX_MAX_TIMEOUT_S
                compile_timeout_s EXECBOX_BATCH_COMPILE_TIMEOUT_S  EXECBOX_MAX_TIMEOUT_S
                memory_mb         EXECBOX_BATCH_MEMORY_MB      EXECBOX_BATCH_MEMORY_MB (the worker's)
                max_output_bytes  EXECBOX_MAX_OUTPUT_BYTES     EXECBOX_MAX_OUTPUT_BYTES_LIMIT
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from execbox._models import BatchJob, Language, SessionLimits
from execbox_server.errors import InvalidLimits, InvalidRequest
from execbox_server.settings import Settings
from execbox_server.worker_protocol import sandbox_path

__all__ = [
    "JobLimits",
    "ResolvedJob",
    "batch_jobs",
    "check_program",
    "execution_timeout",
    "job_limits",
    "one_shot_limits",
    "session_limits",
]

# The floors the request models declare (SessionCreate, OneShotRequest, BatchJob; a unit test
# keeps them equal), as (minimum, whether the minimum itself is allowed).
_FLOORS: dict[str, tuple[float, bool]] = {
    "timeout_s": (0, False),
    "compile_timeout_s": (0, False),
    "cpus": (0, False),
    "max_output_bytes": (1024, True),
}
N = TypeVar("N", int, float)

SANDBOX_MEMORY_FLOOR_MB = 32  # memory_mb of SessionCreate and OneShotRequest
JOB_MEMORY_FLOOR_MB = 16  # memory_mb of BatchJob


@dataclass(frozen=True, slots=True)
class JobLimits:
    """What one batch job runs with, every limit resolved."""

    timeout_s: float
    memory_mb: int
    max_output_bytes: int
    compile_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ResolvedJob:
    """A batch job as the API accepted it and the limits it runs with."""

    job: BatchJob
    limits: JobLimits


def session_limits(
    settings: Settings,
    *,
    memory_mb: int | None = None,
    cpus: float | None = None,
    timeout_s: float | None = None,
    max_output_bytes: int | None = None,
) -> SessionLimits:
    """The limits of a new session; ``timeout_s`` is its executions' default.

    Raises:
        InvalidLimits: a limit is above the server's maximum (or below its floor).
    """
    s = settings
    return SessionLimits(
        memory_mb=_resolve(
            "memory_mb", memory_mb, s.memory_mb, s.max_memory_mb, "EXECBOX_MAX_MEMORY_MB", SANDBOX_MEMORY_FLOOR_MB
        ),
        cpus=_resolve("cpus", cpus, s.cpus, s.max_cpus, "EXECBOX_MAX_CPUS"),
        timeout_s=_resolve("timeout_s", timeout_s, s.default_timeout_s, s.max_timeout_s, "EXECBOX_MAX_TIMEOUT_S"),
        max_output_bytes=_resolve(
            "max_output_bytes",
            max_output_bytes,
            s.max_output_bytes,
            s.max_output_bytes_limit,
            "EXECBOX_MAX_OUTPUT_BYTES_LIMIT",
        ),
    )


def one_shot_limits(
    settings: Settings,
    *,
    memory_mb: int | None = None,
    cpus: float | None = None,
    timeout_s: float | None = None,
    max_output_bytes: int | None = None,
) -> SessionLimits:
    """The limits of a one-shot execution: those of a session that runs once.

    Raises:
        InvalidLimits: see :func:`session_limits`.
    """
    return session_limits(
        settings, memory_mb=memory_mb, cpus=cpus, timeout_s=timeout_s, max_output_bytes=max_output_bytes
    )


def execution_timeout(settings: Settings, requested: float | None, default: float) -> float:
    """The timeout of one execution in a session whose default is ``default``.

    Raises:
        InvalidLimits: ``requested`` is above ``max_timeout_s``.
    """
    return _resolve("timeout_s", requested, default, settings.max_timeout_s, "EXECBOX_MAX_TIMEOUT_S")


def job_limits(
    settings: Settings,
    *,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    max_output_bytes: int | None = None,
    compile_timeout_s: float | None = None,
) -> JobLimits:
    """The limits of one batch job. A job runs inside a worker, so it can have at most the
    worker's memory (``batch_memory_mb``), which is also its default.

    Raises:
        InvalidLimits: a limit is above the server's maximum (or below its floor).
    """
    s = settings
    return JobLimits(
        timeout_s=_resolve("timeout_s", timeout_s, s.batch_default_timeout_s, s.max_timeout_s, "EXECBOX_MAX_TIMEOUT_S"),
        memory_mb=_resolve(
            "memory_mb", memory_mb, s.batch_memory_mb, s.batch_memory_mb, "EXECBOX_BATCH_MEMORY_MB", JOB_MEMORY_FLOOR_MB
        ),
        max_output_bytes=_resolve(
            "max_output_bytes",
            max_output_bytes,
            s.max_output_bytes,
            s.max_output_bytes_limit,
            "EXECBOX_MAX_OUTPUT_BYTES_LIMIT",
        ),
        compile_timeout_s=_resolve(
            "compile_timeout_s", compile_timeout_s, s.batch_compile_timeout_s, s.max_timeout_s, "EXECBOX_MAX_TIMEOUT_S"
        ),
    )


def check_program(job: BatchJob) -> None:
    """What a job asks of its worker besides limits: its files' paths and contents, tests in Python.

    Raises:
        InvalidRequest: a path outside the job's scratch, content that is not base64, tests for a
            language other than Python.
    """
    if job.tests is not None and job.language is not Language.PYTHON:
        raise InvalidRequest(
            f"tests run in Python only; for {job.language.value}, send one job per case (stdin in, stdout to compare)"
        )
    for path, content in (job.files or {}).items():
        _check_path(path, "files")
        try:
            base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"files[{path[:100]!r}] is not base64") from None
    for path in job.fetch_files or []:
        _check_path(path, "fetch_files")


def _check_path(path: str, field: str) -> None:
    if sandbox_path(path) is None:
        raise InvalidRequest(
            f"{field}: {path[:100]!r} is outside the job's scratch: give a path relative to the working directory "
            "(/home/sandbox) or an absolute one under /home/sandbox or /tmp"
        )


def batch_jobs(settings: Settings, jobs: Sequence[BatchJob]) -> list[ResolvedJob]:
    """Every job of a batch with its limits; one job out of bounds refuses the whole batch.

    Called before anything runs, so a batch never half-runs because of a limit.

    Raises:
        InvalidLimits: a job's limit is out of bounds; the message starts with its index.
    """
    resolved = []
    for index, job in enumerate(jobs):
        try:
            limits = job_limits(
                settings,
                timeout_s=job.timeout_s,
                memory_mb=job.memory_mb,
                max_output_bytes=job.max_output_bytes,
                compile_timeout_s=job.compile_timeout_s,
            )
            check_program(job)
        except (InvalidLimits, InvalidRequest) as exc:
            raise type(exc)(f"job {index}: {exc.message}; no job of the batch was run") from None
        resolved.append(ResolvedJob(job, limits))
    return resolved


def _resolve(field: str, requested: N | None, default: N, maximum: N, setting: str, floor: float | None = None) -> N:
    if requested is None:
        return default
    if requested > maximum:
        raise InvalidLimits(
            f"{field}={_show(requested)} is above this server's maximum of {_show(maximum)} ({setting})"
        )
    minimum, inclusive = (floor, True) if floor is not None else _FLOORS[field]
    if requested < minimum or (requested == minimum and not inclusive):
        bound = "at least" if inclusive else "more than"
        raise InvalidLimits(f"{field}={_show(requested)} is too small: it must be {bound} {_show(minimum)}")
    return requested


def _show(value: float) -> str:
    # 300, not 300.0: the message quotes a setting the way its operator wrote it.
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
