"""execbox fork server: runs many one-shot programs fast, each in a fresh forked child.

Runs inside a locked-down worker container (no network, read-only root, tmpfs, limits) as
three kinds of process besides the container's init, so that no job inherits anything of
another job:

- The **server** (root, holding only CAP_SETUID/SETGID/KILL) speaks to the host over
  ``/kernel/fork.sock``, feeds a job its stdin, reads its output under caps, enforces the wall
  deadline, judges test cases, and makes sure the worker is clean before the next job. It holds
  every request — and never forks.
- The **zygote** (root) imports the common libraries once and forks on request. It never sees a
  job: it receives descriptors (SCM_RIGHTS) and sends back pids and exit statuses, so what a
  child inherits from it is the same for every job (no earlier request in its heap, no next
  request in a buffer).
- A **job**: forked by the zygote, it reads its own request from a memfd only it was given
  (without stdin and without the expected values of its tests, which stay with the server),
  drops to the sandbox user in the empty HOME, its own session and rlimits, and runs.

After every job the server checks, without forking, that no process of the sandbox user is left
and that every place a job can write — HOME, ``/tmp``, ``/dev/shm``, ``/dev/mqueue`` and the
SysV IPC tables — is empty. If not, a **cleaner** forked by the zygote as the sandbox user kills
every process of that user at once (``kill(-1)``: atomic, a fork bomb cannot outrun it) and
empties them. A worker that cannot be made clean says so (``retire``) and serves no other job.

Protocol: ``worker_protocol.py`` beside this file, the very module the host's side
(``service/execbox_server/batch.py``) imports as ``execbox_server.worker_protocol`` — the image
build copies it here. Newline-delimited JSON on a unix socket; one request line in, one answer
line out, in order, one client at a time.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import gc
import importlib
import io
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, NoReturn, TypedDict

# Beside this file in the image: the SDK's typed values (execbox/_values.py), the same file.
from execbox_values import (
    MAX_VALUE_BYTES,
    ORACLES,
    EvalPlusJudge,
    decode_value,
    digest_encoding,
    digest_value,
    encode_allowance_s,
    encode_value,
    encoded_size,
    expected_size,
    truncated,
)

# Beside this file in the image (/opt/execbox, on sys.path as the script's directory).
from worker_protocol import (
    LANGUAGES,
    ErrorRecord,
    JobReport,
    JobRequest,
    JobStatusName,
    JobTests,
    Ping,
    Program,
    ProtocolError,
    StageReport,
    TestRecord,
    decode_request,
    encode_pong,
    encode_report,
    refusal,
    sandbox_path,
)

SANDBOX_UID = 90000  # the image's sandbox user (Dockerfile); no host user has it
SOCKET_PATH = os.environ.get("EXECBOX_FORK_SOCKET", "/kernel/fork.sock")
MPL_CACHE = "/opt/execbox/mpl"  # matplotlib's font list, built with the image
HOME = "/home/sandbox"  # every job's working directory, emptied between jobs (worker_protocol.HOME)
HOME_MODE = 0o700
# Every place the sandbox user can write in a worker (`find / -writable` as that user), and
# the IPC objects that outlive their creator. All of them are empty whenever a job starts.
SCRATCH_DIRS = (HOME, "/tmp", "/dev/shm", "/dev/mqueue")
SYSV_TABLES = ("/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem")
EMPTY_DIR_SIZE = 40  # tmpfs and mqueue count 20 bytes per entry on top of this
MAX_TB_LINES = 100
MAX_RECORD_BYTES = 8 * 1024 * 1024  # one record from a job; a test's actual value is judged whole
MAX_RECORDS_BYTES = 64 * 1024 * 1024  # records of one job besides each case's first; beyond it the job is stopped
# Both well inside the host's margin (batch.py WORKER_MARGIN_S): a worker that cannot clean up
# or reap in time still answers, with "retire", before the host gives up on it.
CLEAN_TIMEOUT_S = 5.0
REPORT_TIMEOUT_S = 5.0  # after its exit or SIGKILL a job is reaped by then, or the worker is broken
# A build bigger than this is not sent back for the host's cache (it must fit one record).
MAX_BUILD_BYTES = 4 * 1024 * 1024
# The compiler is the image's, not the job's: it gets at least this much address space
# (cc1plus maps far more than it touches), whatever the job's own memory limit.
COMPILE_MIN_AS = 2048 * 1024 * 1024
# The compile stage's own deadline is enforced in the job; the server's backstop is this much later.
COMPILE_GRACE_S = 5.0


# ----------------------------------------------------------------------------- protocol


class ChildError(TypedDict):
    """An exception as a job reports it on its result pipe (the server cleans it: _clean_error)."""

    name: str
    value: str
    traceback: list[str]


class ChildTests(TypedDict):
    entry_point: str | None
    inputs: list[Any]
    timeouts: list[float]  # one per input: its own limit
    assertions: str | None
    per_test_timeout_s: float
    semantics: str  # "json" or "evalplus" (typed values, EvalPlus's harness)


class ChildProgram(TypedDict):
    """A program job: where its files go, how it is built and run (worker_protocol.LANGUAGES)."""

    source: str  # absolute path the code is written to
    files: list[list[str]]  # [absolute path, base64]
    compile: list[str] | None
    compile_timeout_s: float
    artifact: str | None
    binary: str | None  # a cached build of this source (base64): written instead of compiling
    run: list[str] | None  # None: run in this warm interpreter


class ChildJob(TypedDict):
    """What a job's process gets: no stdin (a pipe), no id, no expected values."""

    code: str
    timeout_s: float
    memory_mb: int
    limit: int
    tests: ChildTests | None
    program: ChildProgram | None


# Child -> server records, one JSON line each on the result pipe:
#   {"kind": "ready"}  the solution was run: the time of the first case starts (test mode)
#   {"kind": "value", "text": str}
#   {"kind": "error", "error": ChildError}
#   {"kind": "test", "index": int, "status": "returned" | "passed" | "failed" | "error" | "timeout",
#    "actual": Any, "error": ChildError | None, "duration_ms": float}
#   {"kind": "compile", "status": "ok" | "error" | "timeout", "exit_code": int | None, "stdout": str,
#    "stderr": str, "wall_ms": float, "cached": bool, "binary": str | None}
# A compile record is written before any of the job's own code runs (a compiled program is
# exec'd with the pipe closed), and only a language with a compile step may send one.
# The job's own code can write to that pipe too: the server trusts nothing in a record beyond
# what the job could have produced honestly (a case passes only if its actual value equals the
# expected one, which the job never had; a case's time is the server's clock's, not the record's).

_ZYGOTE_JOB = b"J"
_ZYGOTE_CLEAN = b"C"
_ZYGOTE_FETCH = b"F"
_ZYGOTE_READY = b"R"
_ZYGOTE_PID = b"P"
_ZYGOTE_EXIT = b"X"
_PID = struct.Struct("=q")
_EXIT = struct.Struct("=qqddq")  # pid, wait status, user s, system s, max RSS KiB


# ----------------------------------------------------------------------------- the job


def _job_child(ctl: socket.socket, fds: list[int], env: dict[str, str]) -> NoReturn:
    """In the forked child: read the request, drop privileges, apply limits, run. Never returns."""
    code = 70
    try:
        ctl.close()
        job_fd, stdin_r, out_w, err_w, result_fd = fds
        os.dup2(stdin_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        # Nothing of the zygote reaches the job but these; received descriptors are inheritable.
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in (job_fd, result_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.set_inheritable(result_fd, False)
        job = _read_job(job_fd)
        os.close(job_fd)
        # When the worker runs out of memory, the job is what the OOM killer should pick.
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
        os.setsid()
        os.setgroups([])
        os.setgid(SANDBOX_UID)
        os.setuid(SANDBOX_UID)
        os.chdir(HOME)
        os.environ.clear()
        os.environ.update(env)
        os.environ["HOME"] = HOME
        _set_limits(job)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
        sys.argv = ["<job>"]
        if job["program"] is not None:
            code = _run_as_program(job, job["program"], result_fd)
        elif job["tests"] is not None:
            code = _run_tests(job, job["tests"], result_fd)
        else:
            code = _run_program(job, result_fd)
    except BaseException:  # a failure of the set-up itself
        try:
            traceback.print_exc()
        except BaseException:
            pass
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)


def _read_job(fd: int) -> ChildJob:
    size = os.fstat(fd).st_size
    data = bytearray()
    while len(data) < size:
        chunk = os.pread(fd, min(size - len(data), 1 << 20), len(data))
        if not chunk:
            break
        data += chunk
    job: ChildJob = json.loads(data)
    return job


def _set_limits(job: ChildJob) -> None:
    timeout = float(job["timeout_s"])
    cpu = max(1, int(timeout) + 1)
    memory = int(job["memory_mb"])
    program = job["program"]
    compiles = program is not None and program["compile"] is not None
    if compiles:
        # The compiler (_build) and the program (_exec) lower these for themselves; the job's
        # own code never runs in this process, so the bounds here only need to hold both.
        cpu = max(cpu, int(program["compile_timeout_s"]) + 1)  # type: ignore[index]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    if memory > 0:
        # Address space: what the warm zygote already maps (numpy, ...) plus the job's budget.
        base = _vm_size()
        limit = base + memory * 1024 * 1024
        if compiles:
            limit = max(limit, COMPILE_MIN_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    fsize = 64 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _vm_size() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * resource.getpagesize()


def _compile_with_value(source: str, filename: str = "<job>") -> tuple[Any, Any]:
    """Compile a program; if it ends in an expression, also compile that to show its value."""
    tree = ast.parse(source, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expression = tree.body.pop()
        assert isinstance(expression, ast.Expr)
        last = compile(ast.Expression(expression.value), filename, "eval")
    return compile(tree, filename, "exec"), last


def _report(result_fd: int, record: dict[str, Any], *, typed: bool = False) -> None:
    try:
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8", "replace")
    except (TypeError, ValueError, RecursionError):
        data = b""
    if len(data) > MAX_RECORD_BYTES and record.get("kind") == "test":
        # A typed value too big for a record travels as its digest (the server compares digests).
        too_big = f"<a value of {len(data)} bytes: more than a test value may have>"
        record = {**record, "actual": digest_encoding(record.get("actual")) if typed else too_big}
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8", "replace")
    if not data or len(data) > MAX_RECORD_BYTES:
        return
    view = memoryview(data)
    while view:
        try:
            written = os.write(result_fd, view)
        except InterruptedError:
            continue
        except OSError:
            return
        view = view[written:]


def _user_tb(exc: BaseException) -> Any:
    """The traceback without this file's own frames: the user sees only their code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def _print_exc(exc: BaseException) -> None:
    traceback.print_exception(type(exc), exc, _user_tb(exc), file=sys.stderr)


def _error_record(exc: BaseException, limit: int) -> ChildError:
    try:
        lines = traceback.format_exception(type(exc), exc, _user_tb(exc))
        flat = "".join(lines).splitlines()
    except BaseException:  # a hostile __str__, a recursion: the type still says what happened
        flat = []
    if len(flat) > MAX_TB_LINES:
        flat = [*flat[:20], f"[... {len(flat) - MAX_TB_LINES} traceback lines truncated ...]", *flat[-80:]]
    try:
        value = str(exc)
    except BaseException:
        value = "<str() of the exception failed>"
    lines, room = [], limit
    for line in flat:  # the whole traceback within the limit: the record must stay small
        if room <= 0:
            break
        lines.append(line[:room])
        room -= len(lines[-1])
    return {"name": type(exc).__name__[:limit], "value": value[:limit], "traceback": lines}


def _jsonable(value: Any) -> Any:
    """A test's actual value as plain JSON data, judged by the server (never by its own __eq__)."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    try:
        if isinstance(value, bool | int | float | str):
            return value  # subclasses: JSON keeps the plain value, not the class's __eq__
        if isinstance(value, list | tuple):
            return [_jsonable(v) for v in value]
        if isinstance(value, dict) and all(type(k) is str for k in value):
            return {k: _jsonable(v) for k, v in value.items()}
        if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
            return _jsonable(value.tolist())  # numpy scalars and arrays: their Python values
        return repr(value)
    except RecursionError:
        return "<a value nested too deeply to compare>"


def _run_program(job: ChildJob, result_fd: int, path: str | None = None) -> int:
    """Run the job's Python in this warm process; with ``path``, as ``python path`` would."""
    limit = job["limit"] + 1  # one byte over: the server sees the cut and says so (truncated)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    if path is not None:
        namespace["__file__"] = path
        sys.argv = [path]
        sys.path.insert(0, HOME)  # the script's directory, as the interpreter puts it first
    try:
        body, last = _compile_with_value(job["code"], path or "<job>")
        exec(body, namespace)
        if last is not None:
            value = eval(last, namespace)
            if value is not None:
                _report(result_fd, {"kind": "value", "text": repr(value)[:limit]})
    except SystemExit as exc:
        code = exc.code
        if code is None or code == 0:
            return 0
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        _report(result_fd, {"kind": "error", "error": _error_record(exc, limit)})
        return code
    except BaseException as exc:
        _report(result_fd, {"kind": "error", "error": _error_record(exc, limit)})
        _print_exc(exc)
        return 1
    return 0


def _write_file(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write one of the job's files as the sandbox user (its permissions are the only ones used)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _run_as_program(job: ChildJob, program: ChildProgram, result_fd: int) -> int:
    """A program as its language runs it: files, source, build (or the cached one), run."""
    try:
        for path, content in program["files"]:
            _write_file(path, base64.b64decode(content))
        _write_file(program["source"], job["code"].encode("utf-8", "surrogateescape"))
    except (OSError, ValueError) as exc:
        print(f"execbox: could not write the job's files: {exc}", file=sys.stderr)
        return 1
    if program["compile"] is not None and not _build(job, program["compile"], program, result_fd):
        return 1
    if program["run"] is None:
        try:
            return _run_program(job, result_fd, path=program["source"])
        finally:
            # Its own source, removed by the job itself (the server, root without DAC rights,
            # cannot enter HOME): a job that leaves nothing else needs no cleaner after it.
            with contextlib.suppress(OSError):
                os.unlink(program["source"])
    _exec(job, program["run"], result_fd)


def _build(job: ChildJob, argv: list[str], program: ChildProgram, result_fd: int) -> bool:
    """Compile (or write the cached build); report the stage. Whether the program may run."""
    limit = job["limit"]
    artifact = os.path.join(HOME, program["artifact"] or "a.out")
    if program["binary"] is not None:
        _write_file(artifact, base64.b64decode(program["binary"]), 0o700)
        _report(result_fd, {"kind": "compile", "status": "ok", "exit_code": 0, "cached": True, "wall_ms": 0.0})
        return True
    timeout = program["compile_timeout_s"]
    memory = int(job["memory_mb"]) * 1024 * 1024
    started = time.monotonic()
    # The compiler's output goes to files in /tmp (bounded by RLIMIT_FSIZE and the tmpfs), read
    # back to the job's limit: a wall of template errors costs no memory here.
    with tempfile.TemporaryFile(dir="/tmp") as out, tempfile.TemporaryFile(dir="/tmp") as err:

        def limits() -> None:
            if memory > 0:
                space = max(memory, COMPILE_MIN_AS)
                resource.setrlimit(resource.RLIMIT_AS, (space, space))
            cpu = max(1, int(timeout) + 1)
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))

        try:
            proc = subprocess.Popen(
                argv,
                cwd=HOME,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=limits,  # safe: the job is single-threaded, nothing else runs in it
            )
        except OSError as exc:
            _report(result_fd, {"kind": "compile", "status": "error", "exit_code": None, "stderr": str(exc)})
            return False
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
        record: dict[str, Any] = {
            "kind": "compile",
            "status": "timeout" if returncode is None else "ok" if returncode == 0 else "error",
            "exit_code": returncode,
            "stdout": _head(out, limit // 4),
            "stderr": _head(err, limit // 2),
            "wall_ms": round((time.monotonic() - started) * 1000, 3),
            "cached": False,
            "binary": None,
        }
    if returncode == 0:
        try:
            with open(artifact, "rb") as fh:
                build = fh.read(MAX_BUILD_BYTES + 1)
            if len(build) <= MAX_BUILD_BYTES:
                record["binary"] = base64.b64encode(build).decode("ascii")
        except OSError:
            pass  # the run reports the missing artifact
    _report(result_fd, record)
    return returncode == 0


def _head(fh: Any, limit: int) -> str:
    fh.seek(0)
    data: bytes = fh.read(limit + 1)
    text = data[:limit].decode("utf-8", "replace")
    return text + "\n[... compiler output truncated ...]\n" if len(data) > limit else text


def _exec(job: ChildJob, argv: list[str], result_fd: int) -> NoReturn:
    """Become the program: same pid, group and pipes; the result pipe closes (O_CLOEXEC)."""
    memory = int(job["memory_mb"]) * 1024 * 1024
    if memory > 0:
        # As SandboxFusion: address space, data and stack all get the job's memory, so deep
        # recursion works as far as memory does.
        for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_STACK):
            resource.setrlimit(limit, (memory, memory))
    cpu = max(1, int(float(job["timeout_s"])) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(os.path.join(HOME, argv[0]), argv)
    except OSError as exc:
        print(f"execbox: could not run {argv[0]}: {exc}", file=sys.stderr, flush=True)
    os._exit(126)


class _TestTimeout(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _TestTimeout()


def _run_tests(job: ChildJob, tests: ChildTests, result_fd: int) -> int:
    """Test-case mode: run the solution once, then each case or the assertions.

    Reports what each case returned; the server, which alone has the expected values, judges.
    """
    limit = job["limit"] + 1  # one byte over: the server sees the cut and says so (truncated)
    evalplus = tests["semantics"] == "evalplus"
    # EvalPlus exec's the solution in fresh globals (no __name__: `if __name__ == "__main__":`
    # blocks do not run) and swallows its I/O; the json semantics run it as a script.
    namespace: dict[str, Any] = {} if evalplus else {"__name__": "__main__", "__builtins__": __builtins__}
    signal.signal(signal.SIGALRM, _alarm)
    try:
        with _swallowed_io(evalplus):
            exec(compile(job["code"], "<solution>", "exec"), namespace)
    except BaseException as exc:
        _report(result_fd, {"kind": "error", "error": _error_record(exc, limit)})
        _print_exc(exc)
        return 1
    entry = tests["entry_point"]
    if tests["assertions"]:
        per_test = tests["per_test_timeout_s"]
        _report(result_fd, {"kind": "ready"})
        started = time.perf_counter()
        outcome: dict[str, Any] = {"kind": "test", "index": 0, "actual": None, "error": None}
        try:
            signal.setitimer(signal.ITIMER_REAL, per_test)
            exec(compile(tests["assertions"], "<tests>", "exec"), namespace)
            if entry and callable(namespace.get("check")):
                namespace["check"](namespace[entry])
            signal.setitimer(signal.ITIMER_REAL, 0)
            outcome["status"] = "passed"
        except _TestTimeout:
            outcome.update(status="timeout", error=_timeout_error(per_test))
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            outcome.update(status="failed", error=_error_record(exc, limit))
        outcome["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        _report(result_fd, outcome)
        return 0  # the program ran; the outcome says whether the tests passed
    fn = namespace.get(entry) if entry else None
    if not callable(fn):
        missing = f"no function {entry!r}" if entry else "test cases need an entry_point"
        _report(result_fd, {"kind": "error", "error": {"name": "NameError", "value": missing}})
        return 1
    encode = _typed if evalplus else _jsonable
    _report(result_fd, {"kind": "ready"})
    for index, raw in enumerate(tests["inputs"]):
        per_test = tests["timeouts"][index]
        outcome = {"kind": "test", "index": index, "actual": None, "error": None}
        started = time.perf_counter()
        try:
            # Decoded afresh for every case: what one call did to its arguments reaches no other.
            args = decode_value(raw) if evalplus else raw
            with _swallowed_io(evalplus):
                signal.setitimer(signal.ITIMER_REAL, per_test)
                started = time.perf_counter()
                actual = fn(*args) if isinstance(args, list) else fn(args)
                duration = time.perf_counter() - started
                signal.setitimer(signal.ITIMER_REAL, 0)
            outcome.update(status="returned", actual=encode(actual))
        except _TestTimeout:
            duration = time.perf_counter() - started
            outcome.update(status="timeout", error=_timeout_error(per_test))
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            duration = time.perf_counter() - started
            outcome.update(status="error", error=_error_record(exc, limit))
        outcome["duration_ms"] = round(duration * 1000, 3)
        _report(result_fd, outcome, typed=evalplus)
    return 0  # the program ran; each outcome says whether its test passed


def _typed(value: Any) -> Any:
    """The typed encoding of a returned value, or its digest when the encoding would not fit a
    record. A long list or tuple is sized a slice at a time first, so a 300 MB output is never
    encoded whole (digest_value hashes it a slice at a time); a smaller value that still does not
    fit is digested by _report."""
    if isinstance(value, list | tuple):
        size = list.__len__(value) if isinstance(value, list) else tuple.__len__(value)
        if size >= 1024 and encoded_size(value, MAX_VALUE_BYTES) is None:
            return digest_value(value)
    return encode_value(value)


class _NoInput(io.StringIO):
    """EvalPlus's stdin while the solution runs: reading it raises."""

    def read(self, *args: Any, **kwargs: Any) -> str:
        raise OSError

    def readline(self, *args: Any, **kwargs: Any) -> str:
        raise OSError

    def readlines(self, *args: Any, **kwargs: Any) -> list[str]:
        raise OSError

    def readable(self, *args: Any, **kwargs: Any) -> bool:
        return False


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


@contextlib.contextmanager
def _swallowed_io(swallow: bool) -> Iterator[None]:
    """EvalPlus's swallow_io: the solution's prints go nowhere, its reads fail."""
    if not swallow:
        yield
        return
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = _NoInput(), _Discard(), _Discard()
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved


def _timeout_error(per_test: float) -> ChildError:
    return {"name": "TimeoutError", "value": f"over {per_test}s", "traceback": []}


# ----------------------------------------------------------------------------- the cleaner


def _cleaner(ctl: socket.socket, protected: set[int]) -> NoReturn:
    """Forked by the zygote: as the sandbox user, kill all its processes, empty its places."""
    ok = False
    try:
        ctl.close()
        os.setgroups([])
        os.setgid(SANDBOX_UID)
        os.setuid(SANDBOX_UID)
        deadline = time.monotonic() + CLEAN_TIMEOUT_S
        me = os.getpid()
        while True:
            # Every process this user may signal, at once: fork cannot outrun it.
            os.kill(-1, signal.SIGKILL)
            if not [p for p in _pids() if p not in protected and p != me]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("processes of the sandbox user survived SIGKILL")
            time.sleep(0.002)  # dying processes (and zombies the init reaps) need a moment
        os.chmod(HOME, HOME_MODE)
        for name in os.listxattr(HOME):
            os.removexattr(HOME, name)
        for path in SCRATCH_DIRS:
            _empty_dir(path, deadline)
        _remove_sysv_ipc()
        ok = _leftovers(protected | {me}) is None
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    os._exit(0 if ok else 1)


def _fetcher(ctl: socket.socket, fds: list[int]) -> NoReturn:
    """Forked by the zygote after a program job: as the sandbox user, read back its fetch_files.

    Only what that user may read, only regular files (opened non-blocking: a FIFO never hangs
    it), at most the job's limit in all. The answer goes into a memfd the server reads.
    """
    ok = False
    try:
        ctl.close()
        request_fd, answer_fd = fds
        os.setgroups([])
        os.setgid(SANDBOX_UID)
        os.setuid(SANDBOX_UID)
        request = json.loads(os.pread(request_fd, os.fstat(request_fd).st_size, 0))
        room = int(request["limit"])
        files: dict[str, str] = {}
        for key, path in request["paths"]:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # a file the program did not make is left out, as SandboxFusion does
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                data = bytearray()
                while len(data) <= room:
                    chunk = os.read(fd, min(1 << 20, room + 1 - len(data)))
                    if not chunk:
                        break
                    data += chunk
            finally:
                os.close(fd)
            encoded = base64.b64encode(data).decode("ascii")
            if len(data) > room or len(encoded) + len(key) > room:
                continue  # over the job's limit: left out (a cut file is no file)
            room -= len(encoded) + len(key)
            files[key] = encoded
        answer = json.dumps(files).encode("ascii")
        view = memoryview(answer)
        while view:
            view = view[os.write(answer_fd, view) :]
        ok = True
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    os._exit(0 if ok else 1)


def _empty_dir(path: str, deadline: float) -> None:
    """Remove everything below ``path``: iterative (any depth), never following a link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    root = os.open(path, flags)
    stack: list[tuple[int, str]] = [(root, "")]  # (directory fd, its name in the one above)
    try:
        while stack:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not empty {path} in time")
            fd = stack[-1][0]
            try:
                names = os.listdir(fd)
            except PermissionError:
                os.fchmod(fd, 0o700)  # ours: a job may have locked its own directory
                names = os.listdir(fd)
            descended = False
            for name in names:
                try:
                    os.unlink(name, dir_fd=fd)
                    continue
                except IsADirectoryError:
                    pass
                except PermissionError:  # EISDIR is EPERM for unlink(2) on some file systems
                    if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise
                try:
                    os.rmdir(name, dir_fd=fd)
                    continue
                except OSError:
                    pass
                with contextlib.suppress(OSError):  # not ours: opening it fails and says so
                    os.chmod(name, 0o700, dir_fd=fd)  # a directory: nothing else can swap it now
                stack.append((os.open(name, flags, dir_fd=fd), name))
                descended = True
                break
            if not descended:
                done, name = stack.pop()
                if stack:
                    os.close(done)
                    os.rmdir(name, dir_fd=stack[-1][0])
    finally:
        for fd, _ in stack:
            if fd != root:
                os.close(fd)
        os.close(root)


def _remove_sysv_ipc() -> None:
    import ctypes  # only here: most jobs leave no IPC object, and numpy has imported it anyway

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_rmid = 0
    for table in SYSV_TABLES:
        with open(table) as fh:
            ids = [int(row.split()[1]) for row in fh.read().splitlines()[1:]]
        for ipc_id in ids:
            if table.endswith("shm"):
                libc.shmctl(ipc_id, ipc_rmid, None)
            elif table.endswith("msg"):
                libc.msgctl(ipc_id, ipc_rmid, None)
            else:
                libc.semctl(ipc_id, 0, ipc_rmid)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _leftovers(protected: set[int]) -> str | None:
    """What a job left behind, or None. Stats and reads only: safe as root, no DAC needed."""
    strays = [pid for pid in _pids() if pid not in protected]
    if strays:
        return f"{len(strays)} processes"
    for path in SCRATCH_DIRS:
        st = os.lstat(path)
        if st.st_size > EMPTY_DIR_SIZE or st.st_nlink != 2:
            return f"files in {path}"
    st = os.lstat(HOME)
    if stat.S_IMODE(st.st_mode) != HOME_MODE or st.st_uid != SANDBOX_UID:
        return f"the mode of {HOME}"
    if os.listxattr(HOME):
        return f"extended attributes on {HOME}"
    for table in SYSV_TABLES:
        with open(table, "rb") as fh:
            if fh.read().count(b"\n") > 1:
                return f"objects in {table}"
    return None


# ----------------------------------------------------------------------------- the zygote


def _preimport() -> None:
    """Import the common libraries once, leaving nothing where jobs write."""
    # Libraries write caches at import (matplotlib its font list): a directory of their own,
    # seeded with the image's build-time cache so nothing is rebuilt, removed afterwards.
    cache = tempfile.mkdtemp(prefix="preimport-", dir="/tmp")
    try:
        if os.path.isdir(MPL_CACHE):
            for name in os.listdir(MPL_CACHE):
                shutil.copy(os.path.join(MPL_CACHE, name), cache)
        os.environ["MPLCONFIGDIR"] = cache
        for name in filter(None, os.environ.get("EXECBOX_PREIMPORT", "numpy").split(",")):
            try:
                importlib.import_module(name.strip())
            except Exception:
                pass
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _fork_when_pids_free(patience_s: float = 3.0) -> int:
    """fork(), waiting out a full pids limit: a fork bomb's processes, SIGKILLed with their group,
    are still being reaped when the cleaner that must sweep the rest is asked for."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return os.fork()
        except BlockingIOError:  # EAGAIN: the container's pids limit
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _zygote(ctl: socket.socket) -> NoReturn:
    """Import the libraries, then fork jobs and cleaners on request. Never holds job data."""
    _preimport()
    env = {
        k: v
        for k, v in os.environ.items()
        if k in ("PATH", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "MPLBACKEND")
        or k.endswith("_NUM_THREADS")
    }
    env["MPLBACKEND"] = "Agg"
    os.chdir("/")
    # Everything imported so far moves to the permanent generation: a child's garbage
    # collections then never walk (and copy-on-write) the zygote's whole heap.
    gc.collect()
    gc.freeze()
    protected = {1, os.getppid(), os.getpid()}
    ctl.send(_ZYGOTE_READY)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 16, 8)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)  # the server is gone
        expected = {_ZYGOTE_JOB: 5, _ZYGOTE_CLEAN: 0, _ZYGOTE_FETCH: 2}.get(msg)
        if expected is None or len(fds) != expected:
            os._exit(1)  # the server broke the protocol: nothing here can be trusted
        pid = _fork_when_pids_free()
        if pid == 0:
            if msg == _ZYGOTE_JOB:
                _job_child(ctl, fds, env)
            if msg == _ZYGOTE_FETCH:
                _fetcher(ctl, fds)
            _cleaner(ctl, protected)
        for fd in fds:
            os.close(fd)
        # A pidfd taken before the child can be reaped names it for sure (no pid reuse, no race).
        pidfd = os.pidfd_open(pid)
        socket.send_fds(ctl, [_ZYGOTE_PID + _PID.pack(pid)], [pidfd])
        os.close(pidfd)
        _, status, usage = os.wait4(pid, 0)
        ctl.send(_ZYGOTE_EXIT + _EXIT.pack(pid, status, usage.ru_utime, usage.ru_stime, usage.ru_maxrss))


class _WorkerBroken(Exception):
    """The zygote is gone or does not answer: this worker runs no more jobs."""


class _Zygote:
    """The server's end of the zygote's control socket."""

    def __init__(self, ctl: socket.socket, pid: int) -> None:
        self.ctl = ctl
        self.pid = pid

    def _recv(self, kind: bytes, size: int, nfds: int, timeout: float) -> tuple[bytes, list[int]]:
        self.ctl.settimeout(timeout)
        try:
            msg, fds, _, _ = socket.recv_fds(self.ctl, 64, 1)
        except OSError as exc:
            raise _WorkerBroken(f"the zygote did not answer: {exc!r}") from exc
        if not msg.startswith(kind) or len(msg) != 1 + size or len(fds) != nfds:
            for fd in fds:
                os.close(fd)
            raise _WorkerBroken(f"the zygote sent {msg[:16]!r}")
        return msg[1:], fds

    def wait_ready(self) -> None:
        self._recv(_ZYGOTE_READY, 0, 0, 300)

    def fork(self, op: bytes, fds: list[int]) -> tuple[int, int]:
        """Have the zygote fork a job (``fds``: its descriptors) or a cleaner; its pid and pidfd."""
        try:
            socket.send_fds(self.ctl, [op], fds)
        except OSError as exc:
            raise _WorkerBroken(f"the zygote is gone: {exc!r}") from exc
        payload, [pidfd] = self._recv(_ZYGOTE_PID, _PID.size, 1, 30)
        (pid,) = _PID.unpack(payload)
        return int(pid), pidfd

    def reaped(self, timeout: float) -> tuple[int, float, int]:
        """Wait status, CPU seconds and max RSS (bytes) of the child forked last, once reaped."""
        payload, _ = self._recv(_ZYGOTE_EXIT, _EXIT.size, 0, timeout)
        _, status, utime, stime, maxrss = _EXIT.unpack(payload)
        return int(status), float(utime + stime), int(maxrss) * 1024

    def clean(self) -> bool:
        _, pidfd = self.fork(_ZYGOTE_CLEAN, [])
        os.close(pidfd)
        status, _, _ = self.reaped(CLEAN_TIMEOUT_S + 2)
        return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    def fetch(self, paths: list[tuple[str, str]], limit: int) -> dict[str, str]:
        """The files at ``paths`` ((key, absolute path)) as the sandbox user reads them, base64."""
        request_fd = os.memfd_create("fetch", os.MFD_CLOEXEC)
        answer_fd = os.memfd_create("files", os.MFD_CLOEXEC)
        try:
            os.write(request_fd, json.dumps({"paths": paths, "limit": limit}).encode("utf-8", "replace"))
            _, pidfd = self.fork(_ZYGOTE_FETCH, [request_fd, answer_fd])
            try:
                ready, _, _ = select.select([pidfd], [], [], CLEAN_TIMEOUT_S)
                if not ready:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
            status, _, _ = self.reaped(REPORT_TIMEOUT_S)
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                return {}
            size = os.fstat(answer_fd).st_size
            raw = json.loads(os.pread(answer_fd, size, 0)) if size else {}
        finally:
            os.close(request_fd)
            os.close(answer_fd)
        # The fetcher ran as the sandbox user beside what a job left: its answer is checked too.
        if not isinstance(raw, dict):
            return {}
        keys = {key for key, _ in paths}
        return {k: v for k, v in raw.items() if k in keys and isinstance(v, str)}


# ----------------------------------------------------------------------------- the server


class _Cap:
    """Head and tail of a byte stream within ``limit``; counts the middle."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.half:
                del self.tail[: len(self.tail) - self.half]

    def text(self) -> tuple[str, int]:
        tail = bytes(self.tail[-self.half :]) if self.tail else b""
        dropped = self.total - len(self.head) - len(tail)
        if dropped <= 0:
            return (bytes(self.head) + tail).decode("utf-8", "replace"), 0
        marker = f"\n[... {dropped} bytes truncated ...]\n"
        return self.head.decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace"), dropped


class _Budget:
    """The job's ``max_output_bytes``, spent field by field; what does not fit is cut and counted."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.cut = False

    def text(self, value: str) -> str:
        data = value.encode("utf-8", "replace")
        if len(data) <= self.left:
            self.left -= len(data)
            return value
        self.cut = True
        marker = f"[... {len(data)} bytes truncated ...]"
        if self.left < len(marker) + 16:
            self.left = 0
            return ""
        kept = data[: self.left - len(marker)].decode("utf-8", "ignore") + marker
        self.left -= len(kept.encode())
        return kept

    def take(self, size: int) -> bool:
        """Spend ``size`` whole, if it fits (else nothing, and the cut is noted)."""
        if size > self.left:
            self.cut = True
            return False
        self.left -= size
        return True

    def json(self, value: Any, *, typed: bool = False) -> Any:
        """A JSON value as is when it fits, else its cut JSON text (typed: a ``$truncated``)."""
        if value is None:
            return None
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            return self.text("<a value that cannot be shown>")
        size = len(text.encode("utf-8", "replace"))
        if size <= self.left:
            self.left -= size
            return value
        if typed:  # a cut encoding would decode as another value: say it was not kept
            self.cut = True
            return truncated(size)
        return self.text(text)

    def error(self, error: ErrorRecord | None) -> ErrorRecord | None:
        if error is None:
            return None
        name = self.text(error.name)
        value = self.text(error.value)
        lines = []
        for line in error.traceback:
            if self.left <= 0:
                self.cut = True
                break
            lines.append(self.text(line))
        return ErrorRecord(name=name, value=value, traceback=tuple(lines))


def _clean_error(raw: Any, limit: int) -> ErrorRecord | None:
    """An error record from the job's pipe, whatever the job wrote there: strings, ``limit`` in all."""
    if not isinstance(raw, dict):
        return None
    name, value, lines = raw.get("name"), raw.get("value"), raw.get("traceback")
    kept: list[str] = []
    room = limit
    for line in lines[: MAX_TB_LINES + 1] if isinstance(lines, list) else []:
        if room <= 0:
            break
        if isinstance(line, str):
            kept.append(line[:room])
            room -= len(kept[-1])
    return ErrorRecord(
        name=name[:limit] if isinstance(name, str) and name else "Error",
        value=value[:limit] if isinstance(value, str) else "",
        traceback=tuple(kept),
    )


def _equal(actual: Any, expected: Any, atol: float) -> bool:
    """The json semantics' comparison: JSON-shaped values, floats within ``atol``."""
    if isinstance(expected, float) or isinstance(actual, float):
        try:
            return abs(float(actual) - float(expected)) <= atol
        except (TypeError, ValueError, OverflowError):
            return False
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(_equal(a, e, atol) for a, e in zip(actual, expected, strict=True))
    return bool(actual == expected)


def _allclose(*args: Any, **kwargs: Any) -> Any:
    # numpy.allclose, as EvalPlus calls it; imported on first use (most jobs never need it).
    import numpy

    return numpy.allclose(*args, **kwargs)


# A case's own time, on the server's clock: the job's SIGALRM can be ignored by the solution,
# this cannot. Generous: it is a backstop, and the clock includes the pipe and the scheduler.
def _case_grace(limit: float) -> float:
    return max(0.5, 0.5 * limit)


class _Verdicts:
    """Test outcomes as the job reports them, judged here against values the job never saw.

    Cases are judged in index order, whatever order the records come in (EvalPlus's judge has
    state: its atol). The first record for a case wins; the job's own code may write records
    too, and gains nothing by it: only a returned value is judged, and only here.
    """

    def __init__(self, tests: JobTests, limit: int, limits: list[float]) -> None:
        self.assertions = bool(tests.assertions)
        self.cases = tests.cases or ()
        self.count = tests.count
        self.collect = tests.mode == "collect" and not self.assertions
        self.typed = tests.semantics == "evalplus"
        self.stop_first = tests.stop_on_first_failure and not self.collect
        self.atol = tests.atol if self.typed else (tests.atol or 1e-6)
        self.oracle = tests.oracle
        self.judge = EvalPlusJudge(tests.atol, _allclose) if self.typed else None
        self.limits = limits  # each case's time limit (one for an assertion script)
        self.limit = limit
        self.kept = 0  # bytes of actual values kept for the response (the rest is judged, not kept)
        self.records: dict[int, tuple[dict[str, Any], int]] = {}  # reported, not judged yet
        self.outcomes: dict[int, TestRecord] = {}
        self.first_failure: int | None = None
        self.next = 0  # the first case not judged yet
        self.clock: float | None = None  # when the next case's time started (the server's clock)
        self.overran: int | None = None  # the case the server's clock ended
        self.allowances: dict[int, float] = {}  # time to encode each case's value, by its expected size
        self.accepted = 0  # bytes of the records taken: one per case, each within MAX_RECORD_BYTES

    def ready(self, now: float) -> None:
        """The solution ran: the first case's time starts."""
        if self.clock is None:
            self.clock = now

    def deadline(self) -> float | None:
        """When the case running now has run out of time, on the server's clock."""
        if self.clock is None or self.next >= self.count or self._done():
            return None
        limit = self.limits[self.next]
        return self.clock + limit + _case_grace(limit) + self._allowance(self.next)

    def _allowance(self, index: int) -> float:
        """The time a right answer takes to encode (and hash) after its call: from the size of the
        expected value, which the job cannot inflate (a collect job has none: its limit is loose)."""
        if not self.typed or self.collect or index >= len(self.cases):
            return 0.0
        if index not in self.allowances:
            self.allowances[index] = encode_allowance_s(expected_size(self.cases[index].expected))
        return self.allowances[index]

    def overrun(self) -> None:
        """The case running now passed its :meth:`deadline`: it timed out, the job is stopped."""
        index = self.next
        self.overran = index
        limit = self.limits[index]
        error = ErrorRecord(name="TimeoutError", value=f"over {limit}s (the worker's clock; the job ignored its alarm)")
        self.outcomes[index] = TestRecord(index=index, passed=False, status="timeout", error=error)
        if self.first_failure is None:
            self.first_failure = index
        self.next = self.count  # nothing after it runs: the job is stopped

    def _done(self) -> bool:
        return self.first_failure is not None and self.stop_first

    def add(self, record: dict[str, Any], size: int, now: float) -> bool:
        """Take one record; True when the job should be stopped (its first failure, if asked)."""
        started = time.monotonic()
        index = record.get("index")
        if type(index) is not int or not 0 <= index < self.count or index in self.records or index < self.next:
            return False
        allowed = ("passed", "failed", "timeout") if self.assertions else ("returned", "error", "timeout")
        if record.get("status") not in allowed:
            return False  # a claim no harness makes (a case "passed"): ignored, the case still needs its record
        self.records[index] = (record, size)
        self.accepted += size
        judged = False
        while self.next in self.records and not self._done():
            self._judge(self.next, *self.records.pop(self.next))
            self.next += 1
            judged = True
        if judged:
            # The next case's time starts when this one's result arrived, plus the time judging
            # it took here (an 8 MB value takes a while): that time is the server's, not the job's.
            self.clock = now + (time.monotonic() - started)
        return self._done()

    def _judge(self, index: int, record: dict[str, Any], size: int) -> None:
        status: Any = record.get("status")  # the job's word: only the values checked below pass
        actual = record.get("actual")
        if self.assertions:
            passed = status == "passed"
            actual = None
        elif status == "returned" and self.collect:
            passed = False  # no verdict: the value is the outcome
        elif status == "returned":
            passed = self._passes(index, actual)
            status = "passed" if passed else "failed"
        else:  # "error" or "timeout" (add() took no other)
            passed, actual = False, None
        if actual is not None and self.kept + size > 2 * self.limit:
            # judged, not kept
            actual = truncated(size) if self.typed else f"<a value of {size} bytes: over the output limit>"
        self.kept += size if actual is not None else 0
        duration = record.get("duration_ms")
        ok_duration = isinstance(duration, int | float) and math.isfinite(duration) and duration >= 0
        self.outcomes[index] = TestRecord(
            index=index,
            passed=passed,
            status=status,
            actual=actual,
            error=_clean_error(record.get("error"), self.limit + 1),
            duration_ms=float(duration) if ok_duration else 0.0,  # type: ignore[arg-type]
        )
        if not passed and not self.collect and self.first_failure is None:
            self.first_failure = index

    def _passes(self, index: int, actual: Any) -> bool:
        case = self.cases[index]
        if self.judge is None:
            try:
                return _equal(actual, case.expected, self.atol)
            except RecursionError:
                return False
        oracle = case.oracle or self.oracle
        try:
            # The requester's values (the host checked them): decoded here, never in the job.
            expected = None if oracle in ("returns", "polynomial_root") else decode_value(case.expected)
            inputs = decode_value(case.input) if oracle == "polynomial_root" else None
            alternatives = [decode_value(alt) for alt in case.alternatives]
        except ValueError:
            return False
        if case.atol is None:
            return self.judge.judge(actual, expected, inputs=inputs, oracle=oracle, alternatives=alternatives)
        # A case's own tolerance (a converted `abs(f(x) - v) < t`): for it alone.
        return EvalPlusJudge(case.atol, _allclose).judge(
            actual, expected, inputs=inputs, oracle=oracle, alternatives=alternatives
        )

    def _last(self) -> int:
        return self.first_failure if self.first_failure is not None and self.stop_first else self.count - 1

    def complete(self) -> bool:
        """Whether the harness reported every test it was meant to run."""
        if self.overran is not None:
            return True  # stopped by the server's clock: that case failed, the job was ended for it
        return all(i in self.outcomes for i in range(self._last() + 1))

    def missing(self) -> int:
        return sum(1 for i in range(self._last() + 1) if i not in self.outcomes)

    def report(self) -> list[TestRecord]:
        """One outcome per test, in order; every test without a verdict counts as not passed."""
        last = self._last() if self.overran is None else self.overran
        return [self.outcomes[i] if i in self.outcomes and i <= last else _not_run(i) for i in range(self.count)]


def _not_run(index: int) -> TestRecord:
    return TestRecord(index=index, passed=False, status="not_run")


class _Records:
    """The job's result pipe: JSON lines, each handled as soon as it is complete."""

    def __init__(self, job: JobRequest, limit: int) -> None:
        self.limit = limit
        self.partial = bytearray()
        self.skipping = False  # inside a line longer than a record may be
        self.total = 0
        self.error: ErrorRecord | None = None
        self.value: str | None = None
        self.verdicts = _Verdicts(job.tests, limit, _case_limits(job)) if job.tests is not None else None
        self.stop = False  # the first failing test was seen and the job asked to stop there
        program = job.program
        # Only a language with a compile step reports one (its program runs with the pipe closed).
        self.compiles = program is not None and LANGUAGES[program.language].compile is not None
        self.compile: StageReport | None = None
        self.build: str | None = None

    def flooded(self) -> bool:
        """More than MAX_RECORDS_BYTES on the pipe besides each case's one record (HumanEval/15's
        outputs alone are more than that: one record per case is bounded by the case count)."""
        accepted = self.verdicts.accepted if self.verdicts is not None else 0
        return self.total - accepted > MAX_RECORDS_BYTES

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        while data:
            end = data.find(b"\n")
            if end < 0:
                self.partial += data
                if len(self.partial) > MAX_RECORD_BYTES:
                    self.partial.clear()
                    self.skipping = True
                return
            line = bytes(self.partial) + data[:end]
            data = data[end + 1 :]
            self.partial.clear()
            if self.skipping:
                self.skipping = False
                continue
            self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return
        if not isinstance(record, dict):
            return
        kind = record.get("kind")
        if kind == "value" and self.value is None and isinstance(record.get("text"), str):
            self.value = record["text"][: self.limit + 1]  # over the limit: the budget cuts and says so
        elif kind == "error" and self.error is None:
            self.error = _clean_error(record.get("error"), self.limit + 1)
        elif kind == "test" and self.verdicts is not None and not self.stop:
            self.stop = self.verdicts.add(record, len(line), time.monotonic())
        elif kind == "ready" and self.verdicts is not None:
            self.verdicts.ready(time.monotonic())
        elif kind == "compile" and self.compiles and self.compile is None:
            self._compiled(record)

    def _compiled(self, record: dict[str, Any]) -> None:
        status = record.get("status")
        code = record.get("exit_code")
        wall = record.get("wall_ms")
        out, err, build = record.get("stdout"), record.get("stderr"), record.get("binary")
        self.compile = StageReport(
            status=status if status in ("ok", "error", "timeout") else "error",
            exit_code=code if type(code) is int and -(2**31) <= code < 2**31 else None,
            stdout=out[: self.limit] if isinstance(out, str) else "",
            stderr=err[: self.limit] if isinstance(err, str) else "",
            wall_ms=float(wall) if isinstance(wall, int | float) and math.isfinite(wall) and wall >= 0 else 0.0,
            cached=record.get("cached") is True,
        )
        if self.compile.status == "ok" and isinstance(build, str):
            self.build = build


def _number(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return min(max(float(value), low), high)


def _case_limits(job: JobRequest) -> list[float]:
    """Each test's time limit: its case's own, else the job's per-test one, else the job's."""
    tests = job.tests
    if tests is None:
        return []
    timeout = _number(job.timeout_s, 10.0, 0.001, 86400.0)
    per_test = _number(tests.per_test_timeout_s, timeout, 0.001, 86400.0)
    if tests.assertions:
        return [per_test]
    return [_number(case.timeout_s, per_test, 0.001, 86400.0) for case in tests.cases or ()]


def _child_job(job: JobRequest, timeout: float, memory: int, limit: int) -> ChildJob:
    tests = job.tests
    child_tests: ChildTests | None = None
    if tests is not None:
        oracles = {tests.oracle, *(case.oracle for case in tests.cases or ())} - {None}
        if not oracles <= ORACLES:
            raise ProtocolError(f"unknown oracle {sorted(map(str, oracles - ORACLES))[0][:30]!r}")
        child_tests = {
            "entry_point": tests.entry_point,
            # Inputs only: the expected values stay here, out of the job's reach.
            "inputs": [case.input for case in tests.cases or ()],
            "timeouts": _case_limits(job),
            "assertions": tests.assertions,
            "per_test_timeout_s": _number(tests.per_test_timeout_s, timeout, 0.001, 86400.0),
            "semantics": tests.semantics,
        }
    return {
        "code": job.code,
        "timeout_s": timeout,
        "memory_mb": memory,
        "limit": limit,
        "tests": child_tests,
        "program": None if job.program is None else _child_program(job.program),
    }


def _child_program(program: Program) -> ChildProgram:
    spec = LANGUAGES[program.language]  # decode_request refused any other
    files = []
    for path, content in program.files:
        full = sandbox_path(path)
        if full is None:  # the host refuses these first: a request that gets here is broken
            raise ProtocolError(f"a file path outside the job's scratch: {path[:100]!r}")
        files.append([full, content])
    return {
        "source": os.path.join(HOME, spec.source),
        "files": files,
        "compile": None if spec.compile is None else list(spec.compile),
        "compile_timeout_s": _number(program.compile_timeout_s, 10.0, 0.001, 86400.0),
        "artifact": spec.artifact,
        "binary": program.binary,
        "run": None if spec.run is None else list(spec.run),
    }


def _fetch_paths(program: Program | None) -> list[tuple[str, str]]:
    if program is None:
        return []
    paths = [(key, sandbox_path(key)) for key in program.fetch_files]
    return [(key, path) for key, path in paths if path is not None]


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _oom_kills() -> int:
    """OOM kills in this container's memory cgroup so far (v1 oom_control, v2 memory.events)."""
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            continue
    return 0


class _Server:
    def __init__(self, zygote: _Zygote) -> None:
        self.zygote = zygote
        self.protected = {1, os.getpid(), zygote.pid}

    def make_clean(self) -> str | None:
        """Leave the worker as a new job must find it; what could not be removed, or None."""
        left = _leftovers(self.protected)
        if left is None:
            return None
        self.zygote.clean()
        return _leftovers(self.protected)

    def run_job(self, job: JobRequest) -> JobReport:
        timeout = _number(job.timeout_s, 10.0, 0.001, 86400.0)
        memory = int(_number(job.memory_mb, 0, 0, 1 << 20))
        limit = int(_number(job.max_output_bytes, 1_048_576, 1024, 1 << 30))
        hard_limit = 8 * limit
        stdin = job.stdin.encode("utf-8", "replace") if job.stdin is not None else b""
        records = _Records(job, limit)

        job_fd = os.memfd_create("job", os.MFD_CLOEXEC)
        try:
            payload = json.dumps(_child_job(job, timeout, memory, limit)).encode("utf-8", "replace")
            view = memoryview(payload)
            while view:
                view = view[os.write(job_fd, view) :]
            del payload, view
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            res_r, res_w = os.pipe()
            in_r, in_w = os.pipe()
            oom_before = _oom_kills()
            started = time.monotonic()
            try:
                pid, pidfd = self.zygote.fork(_ZYGOTE_JOB, [job_fd, in_r, out_w, err_w, res_w])
            finally:
                for fd in (out_w, err_w, res_w, in_r):
                    os.close(fd)
        finally:
            os.close(job_fd)
        os.set_blocking(in_w, False)
        if not stdin:
            os.close(in_w)
            in_w = -1
        caps = {out_r: _Cap(limit // 2), err_r: _Cap(limit // 4)}
        open_fds = {out_r, err_r, res_r}
        status: JobStatusName | None = None
        stopped = False  # by us, at the first failing test
        # A compiled program has two deadlines: its compile's (enforced in the job, this a
        # backstop), then its run's, from the moment the compile reported.
        compiling = records.compiles
        compile_timeout = _number(job.program.compile_timeout_s, 10.0, 0.001, 86400.0) if job.program else 0.0
        deadline = started + (compile_timeout + COMPILE_GRACE_S if compiling else timeout)
        run_started = started
        # The pidfd is readable once the job's process exits: a daemon it left holding the
        # pipes open must not keep the job "running" until its deadline.
        exited, exited_at = False, 0.0
        while open_fds or not exited:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                status = "timeout"
                break
            case_deadline = records.verdicts.deadline() if records.verdicts is not None and not exited else None
            if case_deadline is not None:
                # Past the deadline with nothing waiting on the pipe: the case overran. A record
                # that arrived while the previous one was judged is read first.
                if now >= case_deadline and not (res_r in open_fds and select.select([res_r], [], [], 0)[0]):
                    records.verdicts.overrun()  # type: ignore[union-attr]
                    stopped = True
                    break
                remaining = max(0.0, min(remaining, case_deadline - now))
            wfds = [in_w] if in_w >= 0 and stdin else []
            rfds = list(open_fds) + ([] if exited else [pidfd])
            readable, writable, _ = select.select(rfds, wfds, [], min(remaining, 1.0) if not exited else 0.02)
            if exited and (not readable or time.monotonic() - exited_at > 0.1):
                break  # the job is over; what its leftovers write is not its output
            if pidfd in readable:
                exited, exited_at = True, time.monotonic()
                readable.remove(pidfd)
            for fd in writable:
                try:
                    written = os.write(fd, stdin[:65536])
                    stdin = stdin[written:]
                except BlockingIOError:
                    continue
                except OSError:
                    stdin = b""
                if not stdin:
                    os.close(in_w)
                    in_w = -1
            for fd in readable:
                data = os.read(fd, 65536)
                if not data:
                    open_fds.discard(fd)
                elif fd == res_r:
                    records.feed(data)
                else:
                    caps[fd].add(data)
            if compiling and records.compile is not None:
                compiling = False
                run_started = time.monotonic()
                deadline = run_started + timeout
            if sum(cap.total for cap in caps.values()) > hard_limit or records.flooded():
                status = "output_limit"
                break
            if records.stop and not exited:
                stopped = True
                break
        if status is not None or stopped:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # the job's process, for sure
            except OSError:
                pass
            try:
                os.killpg(pid, signal.SIGKILL)  # and its group, while the group is alive
            except OSError:
                pass
        os.close(pidfd)
        if in_w >= 0:
            os.close(in_w)
        for fd in (out_r, err_r, res_r):
            try:
                # Non-blocking and bounded: a leftover process may still hold the other end.
                os.set_blocking(fd, False)
                drained = 0
                while fd in open_fds and status is None and drained < hard_limit:
                    data = os.read(fd, 65536)
                    if not data:
                        break
                    drained += len(data)
                    if fd == res_r:
                        records.feed(data)
                    else:
                        caps[fd].add(data)
            except OSError:
                pass
            os.close(fd)
        wait_status, cpu_s, peak = self.zygote.reaped(REPORT_TIMEOUT_S)
        wall = time.monotonic() - run_started
        stage = records.compile
        broken_build = False
        if stage is None and records.compiles:
            if status == "timeout":  # the backstop ended a compile that never reported
                stage = StageReport(status="timeout", wall_ms=round(wall * 1000, 3))
            else:  # the job ended without a word about its build: this worker's machinery failed
                broken_build = True
        fetch = _fetch_paths(job.program)
        files = self.zygote.fetch(fetch, limit) if fetch else None
        left = self.make_clean()

        exit_code: int | None = None
        signame: str | None = None
        if stopped:
            pass  # we ended it on purpose: its exit says nothing about the program
        elif os.WIFEXITED(wait_status):
            exit_code = os.WEXITSTATUS(wait_status)
        elif os.WIFSIGNALED(wait_status):
            exit_code = -os.WTERMSIG(wait_status)
            signame = _signal_name(os.WTERMSIG(wait_status))
        error = records.error
        message: str | None = None
        if broken_build:
            status, exit_code, signame, error = "service_error", None, None, None
            message = "the compile step failed in the worker (not the program's fault); see stderr"
        elif stage is not None and stage.status != "ok":
            # Nothing of the program ran: the compile's outcome is the job's.
            status = "timeout" if stage.status == "timeout" else "compile_error"
            exit_code, signame, error = None, None, None
            message = (
                f"the compile did not finish within {compile_timeout}s"
                if stage.status == "timeout"
                else f"the program did not compile (exit code {stage.exit_code}; see compile.stderr)"
            )
        elif status is None:
            if stopped or exit_code == 0:
                status = "ok"
            elif error is not None and error.name == "MemoryError":
                status = "out_of_memory"
            elif signame == "SIGKILL" and _oom_kills() > oom_before:
                status = "out_of_memory"  # the container's OOM killer ended it: counted, not guessed
            elif signame == "SIGXCPU":
                status = "timeout"
            elif signame is not None:
                status = "crashed"
            else:
                status = "error"
        verdicts = records.verdicts
        if verdicts is not None and status == "ok" and not verdicts.complete():
            # os._exit(0) before or during the tests: a program that exits cleanly has not passed.
            status = "error"
            missing = verdicts.missing()
            message = (
                f"the program ended (exit code {exit_code}) before the test harness finished: "
                f"{missing} of {verdicts.count} tests never reported a result and count as not passed"
            )
        elif verdicts is not None and verdicts.overran is not None:
            index = verdicts.overran
            message = (
                f"test {index} ran past its time limit ({verdicts.limits[index]}s) by the worker's clock; "
                "the job was stopped there and the tests after it did not run"
            )
        elif verdicts is not None and stopped:
            message = "stopped after the first failing test (stop_on_first_failure)"

        budget = _Budget(limit)
        stdout, out_dropped = caps[out_r].text()
        stderr, err_dropped = caps[err_r].text()
        # Spent in the order of the report's fields: the output first, test values last.
        stdout, stderr = budget.text(stdout), budget.text(stderr)
        error = budget.error(error)
        value = budget.text(records.value) if records.value is not None else None
        tests = None
        if verdicts is not None:
            tests = tuple(
                replace(
                    outcome, error=budget.error(outcome.error), actual=budget.json(outcome.actual, typed=verdicts.typed)
                )
                for outcome in verdicts.report()
            )
        if stage is not None:
            stage = replace(stage, stdout=budget.text(stage.stdout), stderr=budget.text(stage.stderr))
        if files is not None:
            files = {key: content for key, content in files.items() if budget.take(len(key) + len(content))}
        if left is not None:
            print(f"forkserver: worker not clean after a job ({left}); retiring", file=sys.stderr, flush=True)
        return JobReport(
            status=status,
            stdout=stdout,
            stderr=stderr,
            error=error,
            value=value,
            exit_code=exit_code,
            signal=signame,
            wall_ms=round(wall * 1000, 3),
            cpu_ms=round(cpu_s * 1000, 3),
            peak_memory_bytes=peak,
            truncated=bool(out_dropped or err_dropped or budget.cut),
            tests=tests,
            compile=stage,
            binary=records.build if stage is not None and stage.status == "ok" and not stage.cached else None,
            files=files,
            message=message,
            retire=left is not None,
        )


def _answer(server: _Server, line: bytes) -> tuple[bytes, bool]:
    """The answer to one request line, and whether this worker must stop serving."""
    try:
        request = decode_request(line)
    except ProtocolError as exc:  # another version of the service, or a broken line: run nothing
        return encode_report(refusal(str(exc))), False
    if isinstance(request, Ping):
        return encode_pong(), False  # with this worker's version, whatever the ping's
    try:
        report = server.run_job(request)
    except ProtocolError as exc:  # found while preparing the job, before anything ran
        return encode_report(refusal(str(exc))), False
    except Exception as exc:  # the zygote is gone, or a bug here: this worker's state is unknown
        traceback.print_exc()
        message = f"the batch worker broke while running this job ({exc!r:.500}) and was replaced"
        report = JobReport(status="service_error", message=message, retire=True)
    return encode_report(report), report.retire


def main() -> None:
    for fd in (0, 1, 2):  # received descriptors must never land on 0-2, which a job's dup2 replaces
        try:
            os.fstat(fd)
        except OSError:
            os.open("/dev/null", os.O_RDWR)
    # The zygote comes first: it must never see the host's socket, nor anything sent on it.
    ctl_server, ctl_zygote = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ctl_server.close()
        _zygote(ctl_zygote)
    ctl_zygote.close()
    zygote = _Zygote(ctl_server, pid)
    zygote.wait_ready()
    server = _Server(zygote)
    # A known start: HOME's mode as a job must find it, nothing anywhere.
    if not zygote.clean() or _leftovers(server.protected) is not None:
        sys.exit(f"forkserver: the worker is not clean at start: {_leftovers(server.protected)}")
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if os.path.exists(SOCKET_PATH):
        os.unlink(SOCKET_PATH)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(SOCKET_PATH)
    os.chmod(SOCKET_PATH, 0o600)
    listener.listen(1)
    while True:
        conn, _ = listener.accept()
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                answer, retire = _answer(server, line)
                stream.write(answer)
                stream.flush()
                if retire:
                    # Requests already sent stay unanswered: the host sees the flag and the
                    # closed connection, runs them elsewhere, and removes this worker.
                    sys.exit(1)


if __name__ == "__main__":
    main()
