"""The wire schema of execbox, defined once.

The service imports these models for its requests and responses, and the SDK parses the
service's answers with them, so client and server cannot drift apart.

What the user's code did is data: an :class:`Execution` with a :class:`ExecutionStatus`.
Only failures of the service or of the transport are exceptions.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from execbox._compat import StrEnum
from execbox._values import Oracle, decode_value

__all__ = [
    "BatchJob",
    "BatchRequest",
    "BatchResponse",
    "BatchResult",
    "BatchSummary",
    "DoneEvent",
    "ErrorBody",
    "ErrorEnvelope",
    "ErrorEvent",
    "ExecuteRequest",
    "Execution",
    "ExecutionError",
    "ExecutionEvent",
    "ExecutionStatus",
    "FileInfo",
    "Info",
    "InfoCapacity",
    "InfoImage",
    "InfoLoad",
    "JobResult",
    "JobStatus",
    "Language",
    "OneShotRequest",
    "Resources",
    "Result",
    "ResultEvent",
    "SessionCreate",
    "SessionInfo",
    "SessionLimits",
    "StageResult",
    "StderrEvent",
    "StdoutEvent",
    "TestCase",
    "TestOutcome",
    "TestSpec",
    "Truncation",
    "parse_event",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)


class _Request(BaseModel):
    # Requests are strict about unknown fields: a typo in a limit must not pass silently.
    model_config = ConfigDict(extra="forbid")


class ExecutionStatus(StrEnum):
    """How an execution ended.

    - ``ok``: the code ran to the end.
    - ``error``: the code raised; see :attr:`Execution.error`.
    - ``timeout``: the server's deadline passed; output up to then is kept.
    - ``interrupted``: stopped by an interrupt request from the client.
    - ``out_of_memory``: the sandbox hit its memory limit and the kernel was killed.
    - ``output_limit``: the code produced more output than the server accepts and was stopped.
    - ``kernel_died``: the kernel process exited or crashed (``os._exit``, a segfault).
    - ``sandbox_lost``: the sandbox container disappeared (killed from outside, engine failure),
      or, from ``Client.map``, the service could not run the code: no verdict on the code.
    """

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    OUT_OF_MEMORY = "out_of_memory"
    OUTPUT_LIMIT = "output_limit"
    KERNEL_DIED = "kernel_died"
    SANDBOX_LOST = "sandbox_lost"

    @property
    def is_verdict(self) -> bool:
        """Whether this says something about the code (everything but ``sandbox_lost``)."""
        return self is not ExecutionStatus.SANDBOX_LOST


class ExecutionError(_Model):
    """An exception raised by the user's code, without ANSI escapes."""

    name: str = Field(description="Exception class name, e.g. ZeroDivisionError.")
    value: str = Field(description="str() of the exception.")
    traceback: list[str] = Field(default_factory=list, description="Traceback lines, ANSI-free.")


class Result(_Model):
    """A rich result: an ``execute_result`` or ``display_data`` MIME bundle.

    Binary types such as ``image/png`` are base64 strings, as Jupyter sends them.
    """

    data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    is_main_result: bool = Field(
        default=False, description="True for the value of the cell's last expression (execute_result)."
    )

    @property
    def text(self) -> str | None:
        value = self.data.get("text/plain")
        return value if isinstance(value, str) else None

    @property
    def png(self) -> bytes | None:
        """The decoded ``image/png``; None when there is none or it is not base64 (the sandbox chose it)."""
        value = self.data.get("image/png")
        if not isinstance(value, str):
            return None
        try:
            return base64.b64decode(value)
        except (binascii.Error, ValueError):
            return None


class Truncation(_Model):
    """What the output caps dropped, counted exactly."""

    stdout_bytes: int = 0
    stderr_bytes: int = 0
    results: int = 0
    traceback_lines: int = 0

    @property
    def any(self) -> bool:
        return bool(self.stdout_bytes or self.stderr_bytes or self.results or self.traceback_lines)


class Resources(_Model):
    """What one execution cost its sandbox, where the engine could tell."""

    wall_ms: float = 0.0
    cpu_ms: float | None = None
    peak_memory_bytes: int | None = None


class Execution(_Model):
    """The complete feedback of one execution."""

    status: ExecutionStatus
    stdout: str = ""
    stderr: str = ""
    error: ExecutionError | None = None
    results: list[Result] = Field(default_factory=list)
    execution_count: int | None = None
    duration_ms: float = 0.0
    truncated: bool = Field(default=False, description="True when any output cap dropped something.")
    truncation: Truncation = Field(default_factory=Truncation)
    state_lost: bool = Field(
        default=False, description="True when the session's variables are gone (the kernel was replaced)."
    )
    kernel_restarted: bool = Field(
        default=False,
        description=(
            "Deprecated alias of `state_lost`, always equal to it; kept for wire compatibility. Read `state_lost`."
        ),
        json_schema_extra={"deprecated": True},
    )
    resources: Resources = Field(default_factory=Resources)
    message: str | None = Field(
        default=None, description="The server's explanation of a non-ok status that is not a Python error."
    )

    @property
    def ok(self) -> bool:
        return self.status is ExecutionStatus.OK

    @property
    def is_verdict(self) -> bool:
        """False when the service, not the code, decided how this ended (the sandbox was lost)."""
        return self.status.is_verdict

    @property
    def text(self) -> str | None:
        """The ``text/plain`` of the main result (the value of the last expression), if any."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None

    def raise_for_error(self) -> Execution:
        """Raise :class:`execbox.ExecutionFailedError` unless the status is ``ok``; return self."""
        if not self.ok:
            from execbox._exceptions import ExecutionFailedError

            raise ExecutionFailedError(self)
        return self


# ---------------------------------------------------------------- streaming events


class StdoutEvent(_Model):
    type: Literal["stdout"] = "stdout"
    text: str


class StderrEvent(_Model):
    type: Literal["stderr"] = "stderr"
    text: str


class ResultEvent(_Model):
    type: Literal["result"] = "result"
    result: Result


class ErrorEvent(_Model):
    type: Literal["error"] = "error"
    error: ExecutionError


class DoneEvent(_Model):
    type: Literal["done"] = "done"
    execution: Execution


ExecutionEvent = Annotated[
    StdoutEvent | StderrEvent | ResultEvent | ErrorEvent | DoneEvent, Field(discriminator="type")
]
_event_adapter: TypeAdapter[ExecutionEvent] = TypeAdapter(ExecutionEvent)


def parse_event(line: str | bytes) -> ExecutionEvent:
    """Parse one NDJSON line of an execution stream.

    Raises:
        ValidationError: the line is not an event.
    """
    try:
        return _event_adapter.validate_json(line)
    except ValidationError as exc:
        return _event_adapter.validate_python(lenient_json(line, exc))


def lenient_json(text: str | bytes, error: ValidationError) -> Any:
    """``text`` read by Python's json after pydantic's JSON parser gave ``error``; re-raises it if that fails too.

    pydantic's parser stops at 200 levels of nesting while its serializer (the server's) writes
    about 250, and it refuses lone surrogate escapes (``"\\ud800"``), which a relay writing with
    ``json.dumps`` sends. Both are what a sandbox's output may hold, so both must be readable.
    """
    if not any(detail["type"] == "json_invalid" for detail in error.errors()):
        raise error
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise error from None


# ---------------------------------------------------------------- sessions and requests


class SessionLimits(_Model):
    memory_mb: int
    cpus: float
    timeout_s: float = Field(description="Default timeout of an execution in this session.")
    max_output_bytes: int = Field(
        default=1_048_576, description="Output kept per execution: stdout, stderr and rich results together."
    )


class SessionCreate(_Request):
    """Body of ``POST /v1/sessions``; every limit is optional and bounded by the server's maxima."""

    memory_mb: int | None = Field(default=None, ge=32, description="Memory limit (memory+swap) in MiB.")
    cpus: float | None = Field(default=None, gt=0, le=64, description="CPU quota in cores.")
    timeout_s: float | None = Field(default=None, gt=0, description="Default execution timeout, seconds.")
    max_output_bytes: int | None = Field(
        default=None, ge=1024, description="Output kept per execution (stdout, stderr, results together)."
    )


class SessionInfo(_Model):
    id: str
    limits: SessionLimits
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime = Field(description="When the session expires if it stays idle.")
    busy: bool = False
    execution_count: int = 0
    sandbox_id: str | None = Field(
        default=None, description="Short id of the session's current sandbox container (changes on restart)."
    )


class ExecuteRequest(_Request):
    code: str = Field(description="Python (IPython) source to run.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Deadline for this execution; defaults to the session's."
    )


class OneShotRequest(ExecuteRequest):
    memory_mb: int | None = Field(default=None, ge=32)
    cpus: float | None = Field(default=None, gt=0, le=64)
    max_output_bytes: int | None = Field(default=None, ge=1024)


# ---------------------------------------------------------------- batch


class JobStatus(StrEnum):
    """How one batch job ended.

    Every status but ``service_error`` is a verdict on the program:

    - ``crashed``: the program was killed by a signal it did not ask for (segfault, ``os.abort()``).
    - ``compile_error``: the compiler refused the program (``compile`` has its output); nothing ran.
    - ``timeout``: the run (or, with ``compile.status == "timeout"``, the compile) ran out of time.
    - ``service_error``: the service could not run the job (its worker was lost, the engine is down);
      says nothing about the program: run it again. Never score it as a failure.
    """

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    OUTPUT_LIMIT = "output_limit"
    CRASHED = "crashed"
    COMPILE_ERROR = "compile_error"
    SERVICE_ERROR = "service_error"

    @property
    def is_verdict(self) -> bool:
        """Whether this says something about the program (everything but ``service_error``)."""
        return self is not JobStatus.SERVICE_ERROR


class Language(StrEnum):
    """Languages a batch job can be written in (cpp runs only where the sandbox image has g++)."""

    PYTHON = "python"
    CPP = "cpp"


class StageResult(_Model):
    """How a job's compile step ended."""

    status: Literal["ok", "error", "timeout"] = Field(
        description="ok: exit 0; error: the compiler failed (exit_code says how); timeout: killed at compile_timeout_s."
    )
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_ms: float = 0.0
    cached: bool = Field(
        default=False, description="The build came from the compile cache (same source, same compiler): nothing ran."
    )


class TestCase(_Model):
    """One call of the entry point and what it must return.

    With ``semantics="evalplus"`` every value here is a typed value (``execbox._values``:
    ``encode_value``), so tuples, sets, dicts with any keys, inf/nan, complex and bytes survive;
    ``input`` then encodes the list of arguments.
    """

    input: Any = Field(description="Arguments for the entry point (a list is spread).")
    expected: Any = Field(default=None, description="The expected return value (none in collect mode).")
    timeout_s: float | None = Field(
        default=None, gt=0, description="This case's time limit (default: per_test_timeout_s, else the job's)."
    )
    alternatives: list[Any] | None = Field(
        default=None, description="Other return values that pass too (EvalPlus's special oracles; evalplus only)."
    )
    oracle: Oracle | None = Field(default=None, description="Overrides the spec's oracle for this case (evalplus).")
    atol: float | None = Field(default=None, ge=0, description="Overrides the spec's atol for this case (evalplus).")


class TestSpec(_Request):
    """Test-case mode: run the solution, then each case (EvalPlus style) or an assertion script.

    Cases are judged by the worker, outside the solution's process, against expected values the
    solution never sees. An assertion script runs *inside* the solution's process and trusts it
    (README: threat model); :meth:`from_assertions` turns the common forms into cases.
    """

    entry_point: str | None = Field(default=None, description="Function under test.")
    cases: list[TestCase] | None = None
    assertions: str | None = Field(
        default=None,
        description="Test code run after the solution, in its process (trusts the solution); "
        "HumanEval's `check(candidate)` is called.",
    )
    per_test_timeout_s: float | None = Field(default=None, gt=0)
    stop_on_first_failure: bool = True
    atol: float = Field(
        default=1e-6, ge=0, description="Tolerance for float comparisons (evalplus: the task's atol, often 0)."
    )
    semantics: Literal["json", "evalplus"] = Field(
        default="json",
        description="json: plain JSON values, floats within atol. evalplus: typed values, the solution run and "
        "judged as EvalPlus does (Python == by value, its oracles, its float tolerance).",
    )
    mode: Literal["check", "collect"] = Field(
        default="check", description="collect: run every case and return what it returned, without a verdict."
    )
    oracle: Oracle | None = Field(default=None, description="EvalPlus's special oracles (evalplus only).")

    @model_validator(mode="after")
    def _consistent(self) -> TestSpec:
        if self.mode == "collect" and not self.cases:
            raise ValueError("mode 'collect' needs cases")
        if self.semantics == "evalplus":
            if self.assertions is not None or not self.entry_point:
                raise ValueError("semantics 'evalplus' needs an entry_point and cases (no assertions)")
            for i, case in enumerate(self.cases or ()):
                _check_typed_case(i, case)
        elif self.oracle is not None or any(c.oracle or c.alternatives or c.atol is not None for c in self.cases or ()):
            raise ValueError("oracles, alternatives and a case's atol need semantics 'evalplus'")
        return self

    @classmethod
    def from_assertions(
        cls,
        script: str,
        *,
        entry_point: str,
        per_test_timeout_s: float | None = None,
        stop_on_first_failure: bool = True,
    ) -> TestSpec:
        """Cases (semantics ``evalplus``) equivalent to an assertion script, judged outside the solution.

        Understands HumanEval's ``def check(candidate): assert candidate(...) == ...`` and MBPP's
        ``assert f(...) == ...`` lines (see ``execbox._assertions``).

        Raises:
            ValueError: a statement it cannot turn into a case (the message names it); the script
                can still run as ``assertions``, which trusts the solution.
        """
        from execbox._assertions import assertions_to_cases

        cases = assertions_to_cases(script, entry_point=entry_point)
        return cls(
            entry_point=entry_point,
            cases=[TestCase(**case) for case in cases],
            per_test_timeout_s=per_test_timeout_s,
            stop_on_first_failure=stop_on_first_failure,
            atol=0.0,
            semantics="evalplus",
        )


def _check_typed_case(index: int, case: TestCase) -> None:
    try:
        args = decode_value(case.input)
        for value in (case.expected, *(case.alternatives or ())):
            decode_value(value)
    except ValueError as exc:
        raise ValueError(f"case {index}: {exc}") from exc
    if not isinstance(args, list):
        raise ValueError(f"case {index}: input must encode the list of arguments")


class TestOutcome(_Model):
    index: int
    passed: bool
    status: str = Field(
        description="passed, failed, error, timeout, not_run (the job ended before this case ran), or "
        "returned (collect mode: no verdict)"
    )
    input: Any = None
    expected: Any = None
    actual: Any = Field(
        default=None,
        description="What the call returned (evalplus: a typed value; {'$truncated': n} when over the output limit).",
    )
    error: ExecutionError | None = None
    duration_ms: float = 0.0


class BatchJob(_Request):
    id: str | None = Field(default=None, max_length=200, description="Your id, echoed in the result.")
    code: str
    language: Language = Field(
        default=Language.PYTHON,
        description="python runs in a warm interpreter as `python main.py` would; cpp is built with "
        "g++ -std=c++17 -O2.",
    )
    stdin: str | None = None
    timeout_s: float | None = Field(default=None, gt=0, description="Of the run (a compile has compile_timeout_s).")
    compile_timeout_s: float | None = Field(default=None, gt=0, description="Of the compile step (cpp).")
    memory_mb: int | None = Field(default=None, ge=16)
    max_output_bytes: int | None = Field(default=None, ge=1024)
    files: dict[str, str] | None = Field(
        default=None,
        description="Files written before the program starts: path -> base64 content. Paths are relative to the "
        "working directory (/home/sandbox) or absolute under /home/sandbox or /tmp.",
    )
    fetch_files: list[str] | None = Field(
        default=None,
        description="Files read back after the program ends (also after a timeout), same paths; missing ones are "
        "left out. Their bytes count against max_output_bytes.",
    )
    tests: TestSpec | None = None


class BatchRequest(_Request):
    jobs: list[BatchJob] = Field(min_length=1, max_length=100_000)
    concurrency: int | None = Field(
        default=None, ge=1, description="Most jobs of this batch running at once (capped by the server's workers)."
    )


class JobResult(_Model):
    """The outcome of one job of a batch (formerly ``BatchResult``): an Execution-like record.

    Not to be confused with :class:`Result`, a rich result (MIME bundle) of an execution.
    """

    type: Literal["result"] = "result"
    index: int = Field(description="Position of the job in the request.")
    id: str | None = None
    status: JobStatus
    stdout: str = ""
    stderr: str = ""
    error: ExecutionError | None = None
    value: str | None = Field(default=None, description="repr() of the program's last expression, if any.")
    exit_code: int | None = None
    signal: str | None = None
    wall_ms: float = 0.0
    cpu_ms: float | None = None
    peak_memory_bytes: int | None = None
    truncated: bool = False
    tests: list[TestOutcome] | None = None
    compile: StageResult | None = Field(default=None, description="The compile step, for a compiled language.")
    files: dict[str, str] | None = Field(default=None, description="The fetch_files that existed: path -> base64.")
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.OK

    @property
    def is_verdict(self) -> bool:
        """False for ``service_error``: the service could not run the job; never score it."""
        return self.status.is_verdict

    @property
    def passed(self) -> bool:
        """Test-case mode: every test passed (and the program itself ran)."""
        return self.ok and (self.tests is None or all(t.passed for t in self.tests))

    def to_execution(self) -> Execution:
        """This job's outcome as an :class:`Execution` (what ``Client.map`` returns)."""
        results = [Result(data={"text/plain": self.value}, is_main_result=True)] if self.value is not None else []
        return Execution(
            status=_JOB_TO_EXECUTION[self.status],
            stdout=self.stdout,
            stderr=self.stderr,
            error=self.error,
            results=results,
            duration_ms=self.wall_ms,
            truncated=self.truncated,
            resources=Resources(wall_ms=self.wall_ms, cpu_ms=self.cpu_ms, peak_memory_bytes=self.peak_memory_bytes),
            message=self.message,
        )


# A deprecated name, kept for code written against execbox 0.1 (the service imports it too).
BatchResult = JobResult

_JOB_TO_EXECUTION = {
    JobStatus.OK: ExecutionStatus.OK,
    JobStatus.ERROR: ExecutionStatus.ERROR,
    JobStatus.TIMEOUT: ExecutionStatus.TIMEOUT,
    JobStatus.OUT_OF_MEMORY: ExecutionStatus.OUT_OF_MEMORY,
    JobStatus.OUTPUT_LIMIT: ExecutionStatus.OUTPUT_LIMIT,
    JobStatus.CRASHED: ExecutionStatus.KERNEL_DIED,
    JobStatus.COMPILE_ERROR: ExecutionStatus.ERROR,
    JobStatus.SERVICE_ERROR: ExecutionStatus.SANDBOX_LOST,  # not a verdict, like a lost sandbox
}


class BatchSummary(_Model):
    type: Literal["summary"] = "summary"
    total: int
    by_status: dict[str, int]
    wall_ms: float


class BatchResponse(_Model):
    results: list[JobResult]
    summary: BatchSummary


class FileInfo(_Model):
    name: str
    path: str = Field(description="Relative to the session's working directory.")
    size: int
    type: Literal["file", "dir", "symlink"]


class ErrorBody(_Model):
    code: str
    message: str
    # Sent only when there is one (an ``execbox._codes.ErrorReason`` value); a str, not the enum,
    # so that an older client still parses a reason added later.
    reason: str | None = None


class InfoImage(_Model):
    name: str = Field(description="The sandbox image as configured (EXECBOX_IMAGE).")
    id: str | None = Field(None, description="The engine's image id, read at start-up; null if it could not say.")
    digest: str | None = Field(None, description="The image's first repository digest; null for a local build.")


class InfoCapacity(_Model):
    max_sessions: int = Field(description="Most sessions held at once (EXECBOX_MAX_SESSIONS).")
    max_kernels: int = Field(description="Most kernels alive at once: sessions and one-shots (EXECBOX_MAX_TOTAL).")
    min_ready: int = Field(description="Warm kernels kept ready (EXECBOX_MIN_READY).")
    batch_workers: int = Field(description="Most batch workers alive at once (EXECBOX_BATCH_WORKERS).")
    batch_lanes: int = Field(description="Most workers one batch request uses at once.")
    batch_max_jobs: int = Field(description="Most jobs in one batch request.")
    max_batch_body_bytes: int
    max_code_bytes: int
    cpus: int = Field(description="CPUs of the machine the service runs on.")


class InfoLoad(_Model):
    sessions: int
    sessions_busy: int = Field(description="Sessions running an execution now.")
    kernels_ready: int
    kernels_starting: int
    kernels_leased: int = Field(description="Kernels held by sessions and running one-shot executions.")
    kernel_waiters: int = Field(description="Requests waiting for a kernel.")
    batch_workers_alive: int
    batch_workers_busy: int
    load_average_1m: float = Field(description="The machine's 1-minute load average.")


class InfoKernelStart(_Model):
    mode: Literal["restore", "boot"] = Field(
        description="restore: new kernels are restored from a checkpoint of a warm template kernel, each into its "
        "own container; boot: each boots (EXECBOX_RESTORE, README: Fresh sessions)."
    )
    reason: str | None = Field(None, description="Why kernels boot rather than restore; null when they restore.")
    restored: int = Field(description="Kernels restored since start-up.")
    booted: int = Field(
        description="Kernels booted since start-up (fall-backs after a failed restore included; the template not)."
    )


class Info(_Model):
    """``GET /v1/info``: what a proxy, an autoscaler or a multi-node client needs to know of one instance."""

    node: str | None = Field(description="EXECBOX_NODE_NAME: the node named in this instance's session ids.")
    instance_id: str = Field(description="This process's id on the engine (changes at each start).")
    version: str
    accepting: bool = Field(description="Serving new work: the pool is warm and the service not shutting down.")
    image: InfoImage
    capacity: InfoCapacity
    load: InfoLoad
    # Optional: a server from before restore existed does not send it, and the SDK must still
    # place work on it.
    kernel_start: InfoKernelStart | None = Field(None, description="How new kernels start on this instance.")


class ErrorEnvelope(_Model):
    error: ErrorBody
