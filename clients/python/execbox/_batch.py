"""The I/O-free part of batches of any size: chunks, indices, order, and failures kept as data.

A batch of 100,000 jobs is sent as a sequence of requests ("chunks"), each within the server's
limits: jobs per request (``EXECBOX_BATCH_MAX_JOBS``), body bytes (``EXECBOX_MAX_BATCH_BODY_BYTES``)
and code bytes per job (``EXECBOX_MAX_CODE_BYTES``). The SDK starts from safe sizes and learns
the server's own: a chunk refused with 413 ``request_too_large`` is split (to the limit the
server's message names, else in halves) and sent again. The server checks a whole batch before
it runs any of it, so a refused chunk ran nothing and resending it runs nothing twice. Jobs are
read from the caller's iterable one chunk at a time and serialized once: the client holds one
chunk's body, never the whole batch's.

Every input gets exactly one :class:`JobResult`, with its index in the input. What the service
could not run is a ``service_error`` result (no verdict on the program, see
:attr:`JobStatus.is_verdict`): the unfinished jobs of a chunk whose request failed after the
client's retries or whose stream was cut, and every job after it, which is then not sent at
all (a service that failed once mid-batch is not hammered with the rest). A single job the
server refuses for its own size is an ``error`` verdict naming ``RequestTooLargeError``: the
program is too large to run anywhere on that server. A request the server calls wrong (bad key,
limits above its maxima) raises: no retry or split fixes the caller's mistake.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from execbox._exceptions import APIStatusError, ExecboxError, RequestTooLargeError, StreamError
from execbox._models import BatchJob, ExecutionError, JobResult, JobStatus, Language

__all__ = [
    "BatchRun",
    "Chunk",
    "ChunkLimits",
    "InOrder",
    "JobLike",
    "Jobs",
    "Reorder",
    "callers_mistake",
    "map_jobs",
    "parse_job",
    "same",
    "service_error_result",
    "size_of",
]

JobLike = BatchJob | dict[str, Any] | str
Jobs = Iterable[JobLike]
T = TypeVar("T")

# A job without a timeout of its own gets the server's default, 10 s at most; so does a compile.
_DEFAULT_JOB_TIMEOUT_S = 10.0
_DEFAULT_COMPILE_TIMEOUT_S = 10.0
# Room in a body for `{"jobs":[`, `],"concurrency":N}` and the commas between jobs.
_BODY_OVERHEAD = 64

# What the server's 413 messages name (execbox_server.api.batch, app.BodySizeLimit, api.validation).
_JOBS_LIMIT = re.compile(r"at most (\d+) \(EXECBOX_BATCH_MAX_JOBS\)")
_BODY_LIMIT = re.compile(r"larger than (\d+) bytes; send less \(EXECBOX_MAX_BATCH_BODY_BYTES\)")
_CODE_LIMIT = re.compile(r"at most (\d+) \(EXECBOX_MAX_CODE_BYTES\)")


@dataclass
class ChunkLimits:
    """How large one request of a batch may be; lowered to what a server's refusal names.

    The defaults sit well under the server's (10,000 jobs, 64 MiB): a chunk of 2,000 trivial
    jobs is a few hundred KiB, and bigger chunks buy no throughput (a worker runs one job at a
    time whatever the request size) while costing memory on both ends.
    """

    max_jobs: int = 2_000
    max_body_bytes: int = 8 * 1024 * 1024
    max_code_bytes: int | None = None  # unknown until a server names it

    def __post_init__(self) -> None:
        if self.max_jobs < 1 or self.max_body_bytes < 1024:
            raise ValueError("a chunk must allow at least 1 job and 1024 body bytes")

    def learn(self, message: str, refused_jobs: int, refused_bytes: int) -> bool:
        """Lower the limits after a 413 with ``message`` for a chunk of this size; False if nothing changed."""
        before = (self.max_jobs, self.max_body_bytes, self.max_code_bytes)
        if match := _JOBS_LIMIT.search(message):
            self.max_jobs = max(1, min(self.max_jobs, int(match.group(1))))
        elif match := _BODY_LIMIT.search(message):
            # The body limit counts bytes on the wire; keep a margin for the envelope.
            self.max_body_bytes = max(1024, min(self.max_body_bytes, int(match.group(1)) - _BODY_OVERHEAD))
        elif match := _CODE_LIMIT.search(message):
            self.max_code_bytes = int(match.group(1))
        elif refused_jobs > 1:
            # A refusal we cannot read: halve what was refused.
            self.max_jobs = max(1, min(self.max_jobs, refused_jobs // 2))
            self.max_body_bytes = max(1024, min(self.max_body_bytes, refused_bytes // 2))
        return (self.max_jobs, self.max_body_bytes, self.max_code_bytes) != before


@dataclass
class _Job:
    """One job as sent: its index in the caller's input, its id, its serialized JSON."""

    index: int
    id: str | None
    line: bytes
    code_bytes: int
    run_s: float


@dataclass
class Chunk:
    """The jobs of one request; ``results`` fill as the stream delivers them."""

    jobs: list[_Job]
    concurrency: int | None
    arrived: bytearray = field(init=False)
    started: bool = False  # a result of it arrived: it can no longer be resent or split

    def __post_init__(self) -> None:
        self.arrived = bytearray(len(self.jobs))

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def body(self) -> bytes:
        """The JSON body of ``POST /v1/batch/stream`` (a :class:`BatchRequest`), built from the serialized jobs."""
        tail = b"" if self.concurrency is None else b',"concurrency":%d' % self.concurrency
        return b'{"jobs":[' + b",".join(job.line for job in self.jobs) + b"]" + tail + b"}"

    @property
    def body_bytes(self) -> int:
        return sum(len(job.line) for job in self.jobs) + len(self.jobs) + _BODY_OVERHEAD

    @property
    def oldest_missing(self) -> int | None:
        """The input index of its first job without a result yet (None when all arrived)."""
        return next((job.index for job, arrived in zip(self.jobs, self.arrived, strict=True) if not arrived), None)

    @property
    def longest_job_s(self) -> float:
        """The longest a job of this chunk may take (compile and run): bounds the wait between results."""
        return max(job.run_s for job in self.jobs)


def parse_job(job: JobLike) -> BatchJob:
    """A job given as code, a dict or a :class:`BatchJob`, as a :class:`BatchJob`.

    Raises:
        pydantic.ValidationError: a dict with an unknown field or a bad value.
    """
    if isinstance(job, BatchJob):
        return job
    if isinstance(job, str):
        return BatchJob(code=job)
    return BatchJob(**job)


def map_jobs(codes: Iterable[str], *, timeout_s: float | None, memory_mb: int | None) -> Iterator[BatchJob]:
    """``map``'s inputs as jobs, made lazily (a generator of codes stays a generator)."""
    for code in codes:
        yield BatchJob(code=code, timeout_s=timeout_s, memory_mb=memory_mb)


def service_error_result(index: int, job_id: str | None, reason: str) -> JobResult:
    """A job the service could not run, made on the client side: no verdict on the program."""
    return JobResult(index=index, id=job_id, status=JobStatus.SERVICE_ERROR, message=reason)


def _refused_result(job: _Job, message: str) -> JobResult:
    """A job refused for its own size: a verdict (the program cannot run on this server)."""
    return JobResult(
        index=job.index,
        id=job.id,
        status=JobStatus.ERROR,
        error=ExecutionError(name="RequestTooLargeError", value=message),
        message=f"the server refused this job for its size (RequestTooLargeError: {message})",
    )


def _describe(error: ExecboxError) -> str:
    return f"the execbox service could not run this job ({type(error).__name__}: {error})"


class BatchRun:
    """One batch of any size, without I/O: what to send next, and what each answer means.

    A client drives it (the sync and async twins alike)::

        while (chunk := run.next_chunk()) is not None:
            yield from run.ready()                      # jobs refused without sending
            try:
                for result in stream(chunk):             # POST /v1/batch/stream
                    yield run.accept(chunk, result)
                yield from run.finished(chunk)
            except ExecboxError as exc:
                yield from run.failed(chunk, exc)        # split, mark, or raise
        yield from run.ready()
    """

    def __init__(self, jobs: Jobs, *, concurrency: int | None, limits: ChunkLimits) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self._source = iter(jobs)
        self._read = 0  # inputs taken from the source so far
        self._carry: _Job | None = None  # read but did not fit the previous chunk
        self._pending: deque[_Job] = deque()  # jobs of refused chunks, to send again
        self._ready: list[JobResult] = []
        self._concurrency = concurrency
        self._limits = limits
        self._stopped: ExecboxError | None = None

    @property
    def read(self) -> int:
        """How many inputs were taken from the caller's iterable so far."""
        return self._read

    @property
    def has_pending(self) -> bool:
        """Jobs taken already wait to be sent (again): a refused chunk's, or a failed node's."""
        return bool(self._pending)

    @property
    def concurrency(self) -> int | None:
        return self._concurrency

    @property
    def max_chunk_jobs(self) -> int:
        return self._limits.max_jobs

    # ------------------------------------------------------------------ what to send

    def next_chunk(self, *, max_jobs: int | None = None, concurrency: int | None = None) -> Chunk | None:
        """The next request's jobs, within the current limits (and ``max_jobs``); None when every
        input was sent. ``concurrency`` replaces the batch's own for this request."""
        if self._stopped is not None:
            return None
        jobs: list[_Job] = []
        size = _BODY_OVERHEAD
        limits = self._limits
        most = limits.max_jobs if max_jobs is None else max(1, min(max_jobs, limits.max_jobs))
        while len(jobs) < most:
            job = self._take()
            if job is None:
                break
            if limits.max_code_bytes is not None and job.code_bytes > limits.max_code_bytes:
                message = (
                    f"code is {job.code_bytes} bytes; this server accepts at most {limits.max_code_bytes} "
                    "(EXECBOX_MAX_CODE_BYTES)"
                )
                self._ready.append(_refused_result(job, message))
                continue
            if jobs and size + len(job.line) + 1 > limits.max_body_bytes:
                self._put_back(job)
                break
            jobs.append(job)
            size += len(job.line) + 1
        return Chunk(jobs, self._concurrency if concurrency is None else concurrency) if jobs else None

    def ready(self) -> list[JobResult]:
        """Results made without the server (jobs refused for their size); each handed out once."""
        ready, self._ready = self._ready, []
        return ready

    # ------------------------------------------------------------------ what came back

    def accept(self, chunk: Chunk, result: JobResult) -> JobResult:
        """``result`` of ``chunk``, its index turned into the index in the caller's input.

        Raises:
            StreamError: the server sent a result for a job it was not sent, or one twice.
        """
        local = result.index
        if not 0 <= local < len(chunk) or chunk.arrived[local]:
            raise StreamError(f"the batch stream sent a result for job {local}, which it was not owed")
        chunk.arrived[local] = 1
        chunk.started = True
        result.index = chunk.jobs[local].index
        return result

    def finished(self, chunk: Chunk) -> list[JobResult]:
        """After the stream's summary: a service error for any job the server did not report."""
        return self._unfinished(chunk, "the server's batch stream ended without a result for this job")

    def failed(self, chunk: Chunk, error: ExecboxError) -> Iterator[JobResult]:
        """What a failed request of ``chunk`` means: the chunk split and queued again, or the
        unfinished jobs (and every one not sent yet) as service errors.

        Raises:
            APIStatusError: a 4xx that says the request is wrong (auth, invalid limits): raised as is.
        """
        if isinstance(error, RequestTooLargeError) and not chunk.started:
            yield from self._too_large(chunk, error)
            return
        if isinstance(error, APIStatusError) and callers_mistake(error):
            raise error
        self._stopped = error
        reason = _describe(error)
        yield from self._unfinished(chunk, reason)
        stop = f"not sent: an earlier part of this batch failed ({type(error).__name__}: {error})"
        while (job := self._take()) is not None:
            yield service_error_result(job.index, job.id, stop)

    def requeue(self, chunk: Chunk) -> None:
        """Send the jobs of ``chunk`` without a result again, first, in a later chunk (its node
        failed; the results that did arrive stay, and are never reported twice)."""
        missing = [job for job, arrived in zip(chunk.jobs, chunk.arrived, strict=True) if not arrived]
        chunk.arrived[:] = b"\x01" * len(chunk)
        self._pending.extendleft(reversed(missing))

    def _too_large(self, chunk: Chunk, error: RequestTooLargeError) -> Iterator[JobResult]:
        learned = self._limits.learn(error.message, len(chunk), chunk.body_bytes)
        if len(chunk) == 1:
            yield _refused_result(chunk.jobs[0], error.message)
            return
        if not learned and self._limits.max_jobs >= len(chunk):
            # The server refused a chunk our limits allow and named nothing new: halve.
            self._limits.max_jobs = max(1, len(chunk) // 2)
        self._pending.extendleft(reversed(chunk.jobs))

    def _unfinished(self, chunk: Chunk, reason: str) -> list[JobResult]:
        missing = [job for job, arrived in zip(chunk.jobs, chunk.arrived, strict=True) if not arrived]
        chunk.arrived[:] = b"\x01" * len(chunk)
        return [service_error_result(job.index, job.id, reason) for job in missing]

    # ------------------------------------------------------------------ the caller's input

    def _take(self) -> _Job | None:
        if self._pending:
            return self._pending.popleft()
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        try:
            raw = next(self._source)
        except StopIteration:
            return None
        index = self._read
        self._read += 1
        parsed = parse_job(raw)
        return _Job(
            index=index,
            id=parsed.id,
            line=parsed.model_dump_json(exclude_none=True).encode(),
            code_bytes=len(parsed.code.encode("utf-8", "surrogatepass")),
            run_s=_run_s(parsed),
        )

    def _put_back(self, job: _Job) -> None:
        if self._pending:
            self._pending.appendleft(job)
        else:
            self._carry = job


def _run_s(job: BatchJob) -> float:
    run = job.timeout_s or _DEFAULT_JOB_TIMEOUT_S
    if job.language is Language.CPP:
        run += job.compile_timeout_s or _DEFAULT_COMPILE_TIMEOUT_S
    return run


def callers_mistake(error: APIStatusError) -> bool:
    """A 4xx that no retry, split or later chunk can fix: the caller's request is wrong."""
    return 400 <= error.status_code < 500 and error.status_code not in (408, 413, 429)


def size_of(items: Iterable[object]) -> int | None:
    """How many items, when the iterable knows (a progress bar's total)."""
    return len(items) if isinstance(items, Sized) else None


def same(result: JobResult) -> JobResult:
    return result


class Reorder:
    """Results released in input order as soon as every earlier input has one; holds only the early ones.

    Chunks run one after another, so what waits here is at most one chunk's results; with
    several nodes, at most the spread's window (:class:`~execbox._nodes.Spread`).
    """

    def __init__(self) -> None:
        self._next = 0
        self._waiting: dict[int, JobResult] = {}

    def add(self, result: JobResult) -> list[JobResult]:
        self._waiting[result.index] = result
        out = []
        while self._next in self._waiting:
            out.append(self._waiting.pop(self._next))
            self._next += 1
        return out

    def finish(self) -> None:
        """Raises ExecboxError when a result is still waiting for an earlier one (a bug: every input gets one)."""
        if self._waiting:
            raise ExecboxError(f"input {self._next} got no result; this is a bug in execbox")


class InOrder(Generic[T]):
    """Results put back in input order as they arrive in any order; one slot per input."""

    def __init__(self, convert: Callable[[JobResult], T]) -> None:
        self._convert = convert
        self._out: list[T | None] = []

    def add(self, result: JobResult) -> None:
        if result.index >= len(self._out):
            self._out.extend([None] * (result.index + 1 - len(self._out)))
        self._out[result.index] = self._convert(result)

    def finish(self, total: int) -> list[T]:
        """The results of inputs ``0 .. total-1``, in order.

        Raises:
            ExecboxError: an input has no result (a bug: every input is owed one).
        """
        self._out.extend([None] * (total - len(self._out)))
        out = [item for item in self._out if item is not None]
        if len(out) != total:
            raise ExecboxError(f"{total - len(out)} of {total} inputs got no result; this is a bug in execbox")
        return out
