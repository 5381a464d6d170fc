"""SandboxFusion's wire protocol, and its translation to execbox's batch jobs and sessions.

The models are SandboxFusion's as its server serves them (``sandbox/server/sandbox_api.py`` and
``sandbox/runners/types.py`` of bytedance/SandboxFusion): the same field names in the same order,
the same enum spellings, ``null`` where it sends ``null``. Its callers parse replies with these
shapes (the ``sandbox-fusion`` client with pydantic, verl by key), so nothing is added or renamed.
One extension: ``language`` may be left out and means ``python``.

What runs is an execbox batch job (``/run_code``) or session (``/run_jupyter``) with execbox's
limits policy; the functions here only translate, without I/O, so they are tested on their own:

- :func:`run_code_job`: a request -> the job and its limits, or a 422 a person can act on;
- :func:`unsupported_language`: the ``SandboxError`` reply for a language execbox does not run;
- :func:`run_code_response`: a job's result -> SandboxFusion's verdict (rules below);
- :func:`jupyter_plan`, :func:`cell_result`, :func:`jupyter_response`: the same for notebooks.

How a :class:`~execbox.JobResult` reads in SandboxFusion's terms
-----------------------------------------------------------------

    compile stage (compiled languages only; null for python)
        ok       -> Finished, return_code 0
        error    -> Finished, return_code = the compiler's exit code      (run_result null)
        timeout  -> TimeLimitExceeded, return_code null                  (run_result null)
    run stage
        ok, error      -> Finished, return_code = exit code
        timeout        -> TimeLimitExceeded, return_code null, the output written so far kept
        out_of_memory  -> Finished, return_code = exit code (or -9), a note appended to stderr
        output_limit   -> Finished, return_code = exit code (or -9), a note appended to stderr
        crashed        -> Finished, return_code = minus the signal (-11 for a segfault)
    service_error  -> SandboxError with the service's message: says nothing about the program

``Success`` only when the compile (if any) and the run both finished with 0; ``SandboxError``
only when the service failed; anything else is ``Failed`` with message ``""``. SandboxFusion has
no status for a memory kill, and its callers accept no new enum value, so a memory or output
kill is an ordinary non-zero exit whose stderr ends with execbox's explanation.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import signal
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from execbox._models import (
    BatchJob,
    Execution,
    ExecutionStatus,
    JobResult,
    JobStatus,
    Language,
    StageResult,
)
from execbox_server.errors import InvalidLimits, InvalidRequest
from execbox_server.limits import (
    JobLimits,
    ResolvedJob,
    check_program,
    execution_timeout,
    job_limits,
    session_limits,
)
from execbox_server.settings import Settings
from execbox_server.worker_protocol import LANGUAGES

__all__ = [
    "CellRunResult",
    "CommandRunResult",
    "CommandRunStatus",
    "JupyterPlan",
    "RunCodeRequest",
    "RunCodeResponse",
    "RunJupyterRequest",
    "RunJupyterResponse",
    "RunStatus",
    "cell_result",
    "jupyter_plan",
    "jupyter_response",
    "run_code_job",
    "run_code_response",
    "supported_languages",
    "unsupported_language",
]

WORKDIR = "/home/sandbox"  # where a kernel's file helper reads and writes (execbox_files.py)
# SandboxFusion skips files whose name contains this marker (its dataset tooling uses it).
IGNORED_FILE_MARKER = "IGNORE_THIS_FILE"
NOTE_PREFIX = "[execbox] "


# ---------------------------------------------------------------- wire models (SandboxFusion's)


class _SFModel(BaseModel):
    # SandboxFusion's models are plain pydantic models: unknown fields are ignored, not refused.
    model_config = ConfigDict(extra="ignore")


class RunStatus(StrEnum):
    """The verdict of a whole request."""

    Success = "Success"  # every stage finished with exit code 0
    Failed = "Failed"  # a stage exited non-zero or ran out of time: the program's doing
    SandboxError = "SandboxError"  # the service failed; says nothing about the program


class CommandRunStatus(StrEnum):
    """How one stage (compile or run) ended."""

    Finished = "Finished"
    Error = "Error"
    TimeLimitExceeded = "TimeLimitExceeded"


class CommandRunResult(_SFModel):
    status: CommandRunStatus
    execution_time: float | None = Field(default=None, description="Wall time of the stage, seconds.")
    return_code: int | None = Field(
        default=None, description="Exit code; minus the signal when killed by one; null on TimeLimitExceeded."
    )
    stdout: str | None = None
    stderr: str | None = None


class RunCodeRequest(_SFModel):
    compile_timeout: float = Field(10, description="Seconds the compile step may take (compiled languages).")
    run_timeout: float = Field(10, description="Seconds the program may run, wall clock.")
    memory_limit_MB: int = Field(
        -1, description="Memory limit in MiB; -1 or 0: the server's default; above its maximum: capped to it."
    )
    code: str = Field(examples=['print("hello")'], description="The program.")
    stdin: str | None = Field(default=None, examples=[""], description="Standard input; null: closed at once.")
    language: str = Field(
        default=Language.PYTHON.value,
        examples=["python", "cpp"],
        description="python (the default when left out, an execbox extension) or cpp. Any other language is "
        "answered with status SandboxError and the list of supported ones.",
    )
    files: dict[str, str | None] = Field(
        default_factory=dict,
        description="Files written before the program starts: path -> base64. Paths relative to the working "
        "directory (/home/sandbox) or absolute under /home/sandbox or /tmp; null values are skipped.",
    )
    fetch_files: list[str] = Field(
        default_factory=list,
        description="Files read back after the program ends (also after a timeout): the reply's `files`, keyed by "
        "these exact strings; files that do not exist are left out.",
    )


class RunCodeResponse(_SFModel):
    status: RunStatus
    message: str = Field(description="Empty unless status is SandboxError.")
    compile_result: CommandRunResult | None = Field(default=None, description="Null for interpreted languages.")
    run_result: CommandRunResult | None = Field(default=None, description="Null when the compile did not succeed.")
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict, description="The fetch_files that existed: path -> base64.")


class RunJupyterRequest(_SFModel):
    cells: list[str] = Field(examples=[["a = 123", "a", "print(a)"]], description="Cells run in order in one kernel.")
    cell_timeout: float = Field(0, description="Seconds one cell may take; 0: only total_timeout applies.")
    total_timeout: float = Field(45, description="Seconds all the cells together may take.")
    memory_limit_MB: int = Field(
        -1, description="Memory limit of the kernel in MiB; -1 or 0: the default; above the maximum: capped to it."
    )
    kernel: Literal["python3"] = "python3"
    files: dict[str, str] = Field(
        default_factory=dict,
        description="Files written before the first cell: path (in the working directory) -> base64.",
    )
    fetch_files: list[str] = Field(default_factory=list, description="Files read back after the last cell.")


class CellRunResult(_SFModel):
    stdout: str
    stderr: str
    display: list[dict[str, Any]] = Field(description="MIME bundles of displays and the cell's value, in order.")
    error: list[dict[str, Any]] = Field(description="Errors raised: {ename, evalue, traceback}.")


class RunJupyterResponse(_SFModel):
    status: RunStatus
    message: str
    driver: CommandRunResult | None = Field(
        default=None, description="The run as a whole: TimeLimitExceeded when a timeout stopped it."
    )
    cells: list[CellRunResult] = Field(default_factory=list)
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


# ---------------------------------------------------------------- /run_code: request -> job


def supported_languages() -> list[str]:
    """The ``language`` values execbox runs (the worker protocol's language table)."""
    return list(LANGUAGES)


def unsupported_language(language: str) -> RunCodeResponse | None:
    """The reply to a request in a language execbox does not run; None when it runs it.

    A 200 with ``SandboxError``, as the issue asks: SandboxFusion's callers read the message
    (verl logs it), and the list tells a person what to send instead.
    """
    supported = supported_languages()
    if language in supported:
        return None
    shown = language if len(language) <= 40 else language[:40] + "..."
    return RunCodeResponse(
        status=RunStatus.SandboxError,
        message=f"language {shown!r} is not supported by this execbox server; supported: {', '.join(supported)}",
    )


def run_code_job(request: RunCodeRequest, settings: Settings) -> ResolvedJob:
    """The batch job that runs ``request`` (in a language :func:`unsupported_language` accepts),
    with its limits resolved.

    ``memory_limit_MB`` of 0 or less means the server's default and above the server's maximum
    is capped to it (SandboxFusion's callers send a fixed 1024 whatever the server); a timeout
    above the maximum is refused, never silently lowered.

    Raises:
        InvalidRequest: bad base64, a path outside the sandbox's writable directories.
        InvalidLimits: a timeout above the server's maximum, or not above 0.
    """
    memory_mb = _capped_memory(request.memory_limit_MB, settings.batch_memory_mb)
    try:
        limits = job_limits(
            settings,
            timeout_s=request.run_timeout,
            compile_timeout_s=request.compile_timeout,
            memory_mb=memory_mb,
        )
    except InvalidLimits as exc:
        raise _renamed(exc, {"timeout_s": "run_timeout", "compile_timeout_s": "compile_timeout"}) from None
    try:
        job = BatchJob(
            code=request.code,
            language=Language(request.language),
            stdin=request.stdin,
            timeout_s=limits.timeout_s,
            compile_timeout_s=limits.compile_timeout_s,
            memory_mb=limits.memory_mb,
            # SandboxFusion skips null contents and names carrying its marker; line breaks in
            # base64 (base64.encodebytes writes them) are not errors there either.
            files={
                path: "".join(content.split())
                for path, content in request.files.items()
                if content is not None and IGNORED_FILE_MARKER not in path
            }
            or None,
            fetch_files=list(dict.fromkeys(request.fetch_files)) or None,
        )
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None
    check_program(job)
    return ResolvedJob(job, limits)


def _checked_base64(path: str, content: str) -> str:
    compact = "".join(content.split())
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"files[{path[:100]!r}] is not base64") from None
    return compact


def _capped_memory(requested: int, maximum: int) -> int | None:
    if requested <= 0:
        return None
    return min(requested, maximum)


def _renamed(exc: InvalidLimits, names: dict[str, str]) -> InvalidLimits:
    """The limits policy's message in the caller's field names (``timeout_s=600 ...`` -> ``run_timeout=600 ...``)."""
    message = exc.message
    for ours, theirs in names.items():
        if message.startswith(ours + "="):
            message = theirs + message[len(ours) :]
            break
    return InvalidLimits(message)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


# ---------------------------------------------------------------- /run_code: result -> reply


def run_code_response(result: JobResult, request: RunCodeRequest, limits: JobLimits) -> RunCodeResponse:
    """SandboxFusion's reply for a job's result (the table in this module's docstring)."""
    if result.status is JobStatus.SERVICE_ERROR:
        return RunCodeResponse(
            status=RunStatus.SandboxError,
            message=result.message or "the service could not run the program; retry",
        )
    compile_result = _compile_stage(result.compile) if result.compile is not None else None
    run_result = None
    if result.status is not JobStatus.COMPILE_ERROR and (compile_result is None or _succeeded(compile_result)):
        run_result = _run_stage(result, limits)
    stages = [stage for stage in (compile_result, run_result) if stage is not None]
    ok = run_result is not None and all(_succeeded(stage) for stage in stages)
    fetched = result.files or {}
    return RunCodeResponse(
        status=RunStatus.Success if ok else RunStatus.Failed,
        message="",
        compile_result=compile_result,
        run_result=run_result,
        files={path: fetched[path] for path in request.fetch_files if path in fetched},
    )


def _succeeded(stage: CommandRunResult) -> bool:
    return stage.status is CommandRunStatus.Finished and stage.return_code == 0


def _compile_stage(stage: StageResult) -> CommandRunResult:
    seconds = stage.wall_ms / 1000
    if stage.status == "timeout":
        return CommandRunResult(
            status=CommandRunStatus.TimeLimitExceeded, execution_time=seconds, stdout=stage.stdout, stderr=stage.stderr
        )
    if stage.status == "ok":
        code = 0
    else:  # the compiler failed: a non-zero code whatever it reported
        code = stage.exit_code if stage.exit_code not in (None, 0) else 1
    return CommandRunResult(
        status=CommandRunStatus.Finished,
        execution_time=seconds,
        return_code=code,
        stdout=stage.stdout,
        stderr=stage.stderr,
    )


def _run_stage(result: JobResult, limits: JobLimits) -> CommandRunResult:
    seconds = result.wall_ms / 1000
    stderr = result.stderr
    status = result.status
    if status is JobStatus.TIMEOUT:
        return CommandRunResult(
            status=CommandRunStatus.TimeLimitExceeded, execution_time=seconds, stdout=result.stdout, stderr=stderr
        )
    if status is JobStatus.OK:
        code = result.exit_code if result.exit_code is not None else 0
    elif status is JobStatus.ERROR:
        code = result.exit_code if result.exit_code not in (None, 0) else 1
    elif status is JobStatus.CRASHED:
        code = _signal_code(result)
    else:  # out_of_memory, output_limit: killed by the service (SIGKILL unless it said otherwise)
        code = result.exit_code if result.exit_code not in (None, 0) else -signal.SIGKILL.value
        stderr = _with_note(stderr, _kill_note(result, limits))
    if result.truncated and status is not JobStatus.OUTPUT_LIMIT:
        stderr = _with_note(stderr, f"output beyond {limits.max_output_bytes} bytes was cut")
    return CommandRunResult(
        status=CommandRunStatus.Finished, execution_time=seconds, return_code=code, stdout=result.stdout, stderr=stderr
    )


def _signal_code(result: JobResult) -> int:
    """Minus the signal that killed the program, as SandboxFusion reports it (-11: a segfault)."""
    if result.exit_code is not None and result.exit_code < 0:
        return result.exit_code
    name = (result.signal or "").upper()
    try:
        return -signal.Signals[name if name.startswith("SIG") else "SIG" + name].value
    except KeyError:
        # Killed by a signal the worker could not name: still a failure, never a 0.
        return result.exit_code if result.exit_code not in (None, 0) else -signal.SIGKILL.value


def _kill_note(result: JobResult, limits: JobLimits) -> str:
    if result.status is JobStatus.OUT_OF_MEMORY:
        return f"the program ran out of memory (limit {limits.memory_mb} MiB) and was killed"
    return f"the program printed more than the output limit ({limits.max_output_bytes} bytes) and was killed"


def _with_note(stderr: str, note: str) -> str:
    separator = "" if not stderr or stderr.endswith("\n") else "\n"
    return f"{stderr}{separator}{NOTE_PREFIX}{note}\n"


# ---------------------------------------------------------------- /run_jupyter


@dataclass(frozen=True, slots=True)
class JupyterPlan:
    """A notebook request checked against the server's limits, ready to run."""

    total_timeout_s: float
    cell_timeout_s: float | None  # None: only the total applies
    memory_mb: int | None  # None: the server's default
    uploads: tuple[tuple[str, bytes], ...]  # (path relative to the working directory, bytes)
    fetches: tuple[tuple[str, str], ...]  # (the request's string, path relative to the working directory)


def jupyter_plan(request: RunJupyterRequest, settings: Settings) -> JupyterPlan:
    """What a ``/run_jupyter`` request runs with.

    Raises:
        InvalidRequest: bad base64, a path outside the working directory.
        InvalidLimits: a timeout above the server's maximum or not above 0 (``cell_timeout`` 0
            means none, as in SandboxFusion).
    """
    renames = {"timeout_s": "total_timeout", "memory_mb": "memory_limit_MB"}
    memory_mb = _capped_memory(request.memory_limit_MB, settings.max_memory_mb)
    try:
        session_limits(settings, timeout_s=request.total_timeout, memory_mb=memory_mb)
    except InvalidLimits as exc:
        raise _renamed(exc, renames) from None
    cell_timeout = None
    if request.cell_timeout:
        try:
            cell_timeout = execution_timeout(settings, request.cell_timeout, request.cell_timeout)
        except InvalidLimits as exc:
            raise _renamed(exc, {"timeout_s": "cell_timeout"}) from None
    uploads = []
    for path, content in request.files.items():
        if IGNORED_FILE_MARKER in path:
            continue
        rel = _workdir_path(path, "files")
        uploads.append((rel, base64.b64decode(_checked_base64(path, content))))
    fetches = tuple((path, _workdir_path(path, "fetch_files")) for path in dict.fromkeys(request.fetch_files))
    return JupyterPlan(
        total_timeout_s=request.total_timeout,
        cell_timeout_s=cell_timeout,
        memory_mb=memory_mb,
        uploads=tuple(uploads),
        fetches=fetches,
    )


def _workdir_path(path: str, field: str) -> str:
    """``path`` relative to the kernel's working directory, the only place its files can be moved."""
    if not path or "\x00" in path or "\\" in path:
        raise InvalidRequest(f"{field}: {path!r} is not a file path (empty, or with NUL or a backslash)")
    full = posixpath.normpath(posixpath.join(WORKDIR, path))
    if not full.startswith(WORKDIR + "/"):
        raise InvalidRequest(
            f"{field}: {path!r} is outside the kernel's working directory; /run_jupyter moves files only "
            f"relative to it ({WORKDIR})"
        )
    return full[len(WORKDIR) + 1 :]


# Execution statuses that end a notebook: the kernel stopped in the middle of a cell, so later
# cells would run without the state the earlier ones built (or not at all).
_STOPPING_NAMES = {
    ExecutionStatus.TIMEOUT: "TimeoutError",
    ExecutionStatus.INTERRUPTED: "KeyboardInterrupt",
    ExecutionStatus.OUT_OF_MEMORY: "MemoryError",
    ExecutionStatus.OUTPUT_LIMIT: "OutputLimitExceeded",
    ExecutionStatus.KERNEL_DIED: "KernelDied",
    ExecutionStatus.SANDBOX_LOST: "SandboxLost",
}


def cell_result(execution: Execution) -> CellRunResult:
    """One cell as SandboxFusion reports it; a cell execbox stopped gets an error saying why."""
    errors: list[dict[str, Any]] = []
    if execution.error is not None:
        error = execution.error
        errors.append({"ename": error.name, "evalue": error.value, "traceback": list(error.traceback)})
    stopped = _STOPPING_NAMES.get(execution.status)
    if stopped is not None and execution.error is None:
        errors.append({"ename": stopped, "evalue": execution.message or execution.status.value, "traceback": []})
    return CellRunResult(
        stdout=execution.stdout,
        stderr=execution.stderr,
        display=[dict(result.data) for result in execution.results],
        error=errors,
    )


def stops_notebook(execution: Execution) -> bool:
    """Whether no further cell may run after this one (an error in the code does not stop it)."""
    return execution.status not in (ExecutionStatus.OK, ExecutionStatus.ERROR) or execution.state_lost


def jupyter_response(
    executions: list[Execution],
    *,
    elapsed_s: float,
    out_of_time: bool,
    files: dict[str, str],
    message: str = "",
) -> RunJupyterResponse:
    """The reply for the cells that ran.

    - every cell ran (errors in the code included): Success, driver Finished with 0;
    - a timeout stopped it (``out_of_time``: the total budget, or a cell's): Failed, driver
      TimeLimitExceeded, and the cells that ran so far (SandboxFusion sends none);
    - the kernel died, ran out of memory or flooded its output: Failed, driver Finished with 1
      and the reason in its stderr;
    - the sandbox was lost: SandboxError.
    """
    cells = [cell_result(execution) for execution in executions]
    last = executions[-1] if executions else None
    if last is not None and last.status is ExecutionStatus.SANDBOX_LOST:
        return RunJupyterResponse(
            status=RunStatus.SandboxError,
            message=last.message or "the kernel's sandbox was lost; retry",
            cells=cells,
        )
    timed_out = out_of_time or (last is not None and last.status is ExecutionStatus.TIMEOUT)
    if timed_out:
        driver = CommandRunResult(
            status=CommandRunStatus.TimeLimitExceeded, execution_time=elapsed_s, stdout="", stderr=""
        )
        return RunJupyterResponse(status=RunStatus.Failed, message=message, driver=driver, cells=cells, files=files)
    if last is not None and stops_notebook(last):
        reason = last.message or f"the cell ended with status {last.status.value}"
        driver = CommandRunResult(
            status=CommandRunStatus.Finished, execution_time=elapsed_s, return_code=1, stdout="", stderr=reason + "\n"
        )
        return RunJupyterResponse(status=RunStatus.Failed, message=message, driver=driver, cells=cells, files=files)
    driver = CommandRunResult(
        status=CommandRunStatus.Finished, execution_time=elapsed_s, return_code=0, stdout="", stderr=""
    )
    return RunJupyterResponse(status=RunStatus.Success, message=message, driver=driver, cells=cells, files=files)
