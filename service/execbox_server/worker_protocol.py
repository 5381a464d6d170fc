"""The batch worker protocol: what the service's batch runner and a worker's fork server say.

One module for both ends. The service imports it as ``execbox_server.worker_protocol``; the sandbox
image carries the same file as ``/opt/execbox/worker_protocol.py`` (``sandbox_images/python/build.sh``
copies it into the build context), where ``forkserver.py`` imports it. Hence the standard library
only, and nothing of execbox.

Newline-delimited JSON on the worker's unix socket, one client at a time; every line the host sends
is answered by exactly one line, in order::

    host -> worker                                   worker -> host
    {"op": "ping", "v": 3}                           {"pong": true, "v": 3}
    {"v": 3, "code": ..., "stdin": ...,              {"status": ..., "stdout": ..., "stderr": ...,
     "timeout_s": ..., "memory_mb": ...,              "error": ..., "value": ..., "exit_code": ...,
     "max_output_bytes": ..., "tests": ...,           ..., "tests": [...], "compile": {...},
     "program": {"language": ..., "files": ...}}      "binary": ..., "files": {...}, "message": ..., "retire": ...}

Languages: :data:`LANGUAGES` is the one table of what a job can be written in — where its source
goes, how it is compiled and run. Adding a language is one entry here (and its toolchain in the
image). A compiled language's build is sent back once (``binary``) so the host can cache it by
:func:`build_key` and send it with the next job of the same source (``program.binary``): verl sends
one program once per test case, and only the first compiles.

Versions: ``v`` is :data:`PROTOCOL_VERSION`; a line without it is version 1, the protocol as it was
before it carried a version. A worker answers a ping with its own version,
whatever the ping carried, so the host can refuse a worker built from another tree
(:func:`decode_pong`); a worker answers a job request of another version with a ``crashed`` report
that says so (:func:`refusal`) rather than guessing what its fields mean.

Trust: the host decodes what a worker sends as hostile input (a worker runs as root beside
untrusted code): :func:`decode_report` returns a :class:`JobReport` whose every field has its
declared type, or raises :class:`ProtocolError` and nothing else. Sizes are not limited here: the
host spends the job's ``max_output_bytes`` on what reaches its response. Unknown fields are ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

__all__ = [
    "HOME",
    "JOB_STATUSES",
    "LANGUAGES",
    "PROTOCOL_VERSION",
    "TEST_STATUSES",
    "Case",
    "ErrorRecord",
    "JobReport",
    "JobRequest",
    "JobStatusName",
    "JobTests",
    "LanguageSpec",
    "Ping",
    "Program",
    "ProtocolError",
    "StageReport",
    "TestRecord",
    "TestStatusName",
    "VersionMismatch",
    "build_key",
    "decode_pong",
    "decode_report",
    "decode_request",
    "encode_ping",
    "encode_pong",
    "encode_report",
    "encode_request",
    "outcome_count",
    "refusal",
    "sandbox_path",
]

# Raise it whenever a field's name, type or meaning changes; both ends come from one tree.
PROTOCOL_VERSION: Final = 3

# ``crashed``: the program died of a signal it did not ask for; ``service_error``: the worker could
# not run the job at all (a broken request, a worker that cannot be made clean) — no verdict.
JobStatusName = Literal[
    "ok", "error", "timeout", "out_of_memory", "output_limit", "crashed", "compile_error", "service_error"
]
StageStatusName = Literal["ok", "error", "timeout"]
# ``not_run``: the program ended before the harness reported the test. ``returned``: a case of a
# ``collect`` job returned (its value is the outcome; there is no verdict in that mode).
TestStatusName = Literal["passed", "failed", "error", "timeout", "not_run", "returned"]
SemanticsName = Literal["json", "evalplus"]
ModeName = Literal["check", "collect"]
JOB_STATUSES: Final[frozenset[str]] = frozenset(get_args(JobStatusName))
TEST_STATUSES: Final[frozenset[str]] = frozenset(get_args(TestStatusName))
SEMANTICS: Final[frozenset[str]] = frozenset(get_args(SemanticsName))
MODES: Final[frozenset[str]] = frozenset(get_args(ModeName))
# What a check job's outcome can be, and a collect job's (no verdict there).
_CHECK_STATUSES: Final = frozenset({"passed", "failed", "error", "timeout", "not_run"})
_COLLECT_STATUSES: Final = frozenset({"returned", "error", "timeout", "not_run"})
STAGE_STATUSES: Final[frozenset[str]] = frozenset(get_args(StageStatusName))

HOME: Final = "/home/sandbox"  # a job's working directory in the worker (the image's sandbox user)
_WRITABLE = (HOME + "/", "/tmp/")  # where a job's files may go: its scratch, emptied after every job
MAX_PATH = 1024


@dataclass(frozen=True, slots=True)
class LanguageSpec:
    """How a job in one language runs in the worker, in its working directory :data:`HOME`.

    ``compile`` and ``run`` are argv lists. ``run=None`` means the worker's warm Python runs the
    source in-process, as ``python <source>`` would (``__name__ == "__main__"``, ``__file__``
    set), without an interpreter start. ``artifact`` is what ``compile`` builds: the worker sends
    it back so the host can cache it by :func:`build_key`.
    """

    source: str
    compile: tuple[str, ...] | None = None
    artifact: str | None = None
    run: tuple[str, ...] | None = None


# SandboxFusion links -lcrypto -lssl -lpthread; -O2 because reward programs are judged on time.
LANGUAGES: Final[dict[str, LanguageSpec]] = {
    "python": LanguageSpec(source="main.py"),
    "cpp": LanguageSpec(
        source="main.cpp",
        compile=("g++", "-std=c++17", "-O2", "-o", "main", "main.cpp", "-lcrypto", "-lssl", "-lpthread"),
        artifact="main",
        run=("./main",),
    ),
}


def build_key(language: str, code: str) -> str:
    """The compile cache's key: the same source under the same compile command builds the same."""
    spec = LANGUAGES[language]
    digest = hashlib.sha256()
    for part in (language, "\0".join(spec.compile or ()), code):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00\xff")
    return digest.hexdigest()


def sandbox_path(path: str) -> str | None:
    """``path`` of a job's file as an absolute path inside the job's scratch, or None if it is not one.

    Relative paths are relative to :data:`HOME`; absolute ones must lie under HOME or ``/tmp``.
    ``..`` is resolved by name (the worker then opens it as the sandbox user: no symlink it makes
    reaches further than that user can).
    """
    if not path or len(path) > MAX_PATH or "\0" in path:
        return None
    full = posixpath.normpath(posixpath.join(HOME, path))
    return full if full.startswith(_WRITABLE) else None


_INT32 = 2**31
_MAX_SIGNAL_NAME = 16


class ProtocolError(ValueError):
    """A line that is not what this version of the protocol sends."""


class VersionMismatch(ProtocolError):
    """A line of another protocol version: the image and the service come from different trees."""


def _version(raw: dict[str, Any]) -> object:
    return raw.get("v", 1)  # lines of the unversioned protocol are version 1


def _ours(version: object) -> bool:
    return type(version) is int and version == PROTOCOL_VERSION  # not True, not 1.0


def _mismatch(worker: object, host: object) -> str:
    return (
        f"worker protocol version mismatch: the batch worker speaks {str(worker)[:20]}, the service "
        f"{str(host)[:20]}; the sandbox image was built from another execbox tree: rebuild it "
        "(sandbox_images/python/build.sh) or run the service of the image's tree"
    )


# ----------------------------------------------------------------------------- host -> worker


@dataclass(frozen=True, slots=True)
class Ping:
    """``{"op": "ping"}``: is the fork server up, and which version does it speak."""

    v: object = PROTOCOL_VERSION  # what the host said it speaks (a worker answers with its own anyway)


@dataclass(frozen=True, slots=True)
class Case:
    """One test case. With ``semantics="evalplus"`` its values are typed encodings (execbox._values)."""

    input: Any
    expected: Any = None  # the worker keeps it to itself: the job's process never gets it
    timeout_s: float | None = None  # this case's limit; None: the job's per_test_timeout_s
    alternatives: tuple[Any, ...] = ()  # other outputs that pass too (EvalPlus's special oracles)
    oracle: str | None = None  # overrides JobTests.oracle for this case
    atol: float | None = None  # overrides JobTests.atol for this case (evalplus)


@dataclass(frozen=True, slots=True)
class JobTests:
    """Test-case mode: the job's cases (EvalPlus style) or an assertion script."""

    entry_point: str | None = None
    cases: tuple[Case, ...] | None = None
    assertions: str | None = None
    per_test_timeout_s: float | None = None
    stop_on_first_failure: bool = True
    atol: float = 1e-6
    semantics: SemanticsName = "json"  # evalplus: typed values, EvalPlus's harness and judge
    mode: ModeName = "check"  # collect: every case's returned value, no verdict
    oracle: str | None = None  # execbox._values.ORACLES, checked where it is judged

    @property
    def count(self) -> int:
        """How many test outcomes a report of this job carries."""
        return outcome_count(assertions=bool(self.assertions), cases=len(self.cases or ()))


def outcome_count(*, assertions: bool, cases: int) -> int:
    """Outcomes of a test-mode job: one for an assertion script, else one per case."""
    return 1 if assertions else cases


@dataclass(frozen=True, slots=True)
class Program:
    """A job run as a program of :data:`LANGUAGES`: its files, its compile step, what to fetch."""

    language: str
    compile_timeout_s: float = 10.0
    files: tuple[tuple[str, str], ...] = ()  # (path, base64 content), written before it starts
    fetch_files: tuple[str, ...] = ()  # read back after it ends, whatever the ending
    binary: str | None = None  # base64 of a cached build of this source: no compile


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One job, with the limits the host resolved for it (the worker clamps them again)."""

    code: str
    timeout_s: float
    memory_mb: int
    max_output_bytes: int
    stdin: str | None = None
    tests: JobTests | None = None
    program: Program | None = None


def encode_ping() -> bytes:
    return b'{"op": "ping", "v": %d}\n' % PROTOCOL_VERSION


def encode_request(request: JobRequest) -> bytes:
    payload = {
        "v": PROTOCOL_VERSION,
        "code": request.code,
        "stdin": request.stdin,
        "timeout_s": request.timeout_s,
        "memory_mb": request.memory_mb,
        "max_output_bytes": request.max_output_bytes,
        "tests": None if request.tests is None else _tests_wire(request.tests),
        "program": None if request.program is None else _program_wire(request.program),
    }
    return json.dumps(payload).encode() + b"\n"


def _program_wire(program: Program) -> dict[str, Any]:
    return {
        "language": program.language,
        "compile_timeout_s": program.compile_timeout_s,
        "files": [list(f) for f in program.files],
        "fetch_files": list(program.fetch_files),
        "binary": program.binary,
    }


def _tests_wire(tests: JobTests) -> dict[str, Any]:
    cases = None if tests.cases is None else [_case_wire(c) for c in tests.cases]
    return {
        "entry_point": tests.entry_point,
        "cases": cases,
        "assertions": tests.assertions,
        "per_test_timeout_s": tests.per_test_timeout_s,
        "stop_on_first_failure": tests.stop_on_first_failure,
        "atol": tests.atol,
        "semantics": tests.semantics,
        "mode": tests.mode,
        "oracle": tests.oracle,
    }


def _case_wire(case: Case) -> dict[str, Any]:
    return {
        "input": case.input,
        "expected": case.expected,
        "timeout_s": case.timeout_s,
        "alternatives": list(case.alternatives),
        "oracle": case.oracle,
        "atol": case.atol,
    }


def decode_request(line: bytes | str) -> JobRequest | Ping:
    """A line from the host, on the worker's side.

    Raises:
        ProtocolError: not a request of this protocol version (:class:`VersionMismatch`) or a
            broken one; the worker answers with :func:`refusal`.
    """
    raw = _object(line, "request")
    try:
        if "op" in raw:
            if raw["op"] != "ping":
                raise ProtocolError(f"unknown op {str(raw['op'])[:30]!r}")
            return Ping(_version(raw))
        if not _ours(_version(raw)):
            raise VersionMismatch(_mismatch(PROTOCOL_VERSION, _version(raw)))
        tests, program = raw.get("tests"), raw.get("program")
        return JobRequest(
            code=_get(raw, "code", str),
            stdin=_get(raw, "stdin", str, None),
            timeout_s=_float(raw, "timeout_s"),
            memory_mb=_get(raw, "memory_mb", int),
            max_output_bytes=_get(raw, "max_output_bytes", int),
            tests=None if tests is None else _job_tests(tests),
            program=None if program is None else _program(program),
        )
    except ProtocolError:
        raise
    except Exception as exc:  # whatever the line held: one exception type for the caller
        raise ProtocolError(f"a broken request ({exc!r:.200})") from exc


def _program(raw: object) -> Program:
    if not isinstance(raw, dict):
        raise ProtocolError("program is not an object")
    language = _get(raw, "language", str)
    if language not in LANGUAGES:
        raise ProtocolError(f"unknown language {language[:30]!r}")
    files = _get(raw, "files", list, [])
    if not all(isinstance(f, list) and len(f) == 2 and all(type(x) is str for x in f) for f in files):
        raise ProtocolError("a file is not a [path, base64] pair")
    fetch = _get(raw, "fetch_files", list, [])
    if not all(type(f) is str for f in fetch):
        raise ProtocolError("a fetch_files entry is not a string")
    return Program(
        language=language,
        compile_timeout_s=_float(raw, "compile_timeout_s", 10.0),
        files=tuple((f[0], f[1]) for f in files),
        fetch_files=tuple(fetch),
        binary=_get(raw, "binary", str, None),
    )


def _job_tests(raw: object) -> JobTests:
    if not isinstance(raw, dict):
        raise ProtocolError("tests is not an object")
    cases = _get(raw, "cases", list, None)
    if cases is not None and not all(isinstance(c, dict) for c in cases):
        raise ProtocolError("a test case is not an object")
    semantics = _get(raw, "semantics", str, "json")
    mode = _get(raw, "mode", str, "check")
    if semantics not in SEMANTICS or mode not in MODES:
        raise ProtocolError(f"unknown semantics {semantics[:20]!r} or mode {mode[:20]!r}")
    return JobTests(
        entry_point=_get(raw, "entry_point", str, None),
        cases=None if cases is None else tuple(_case(c) for c in cases),
        assertions=_get(raw, "assertions", str, None),
        per_test_timeout_s=_number(raw, "per_test_timeout_s"),
        stop_on_first_failure=_get(raw, "stop_on_first_failure", bool, True),
        atol=_float(raw, "atol", 1e-6),
        semantics=semantics,  # checked against SEMANTICS above
        mode=mode,  # checked against MODES above
        oracle=_get(raw, "oracle", str, None),
    )


def _case(raw: dict[str, Any]) -> Case:
    return Case(
        input=raw.get("input"),
        expected=raw.get("expected"),
        timeout_s=_number(raw, "timeout_s"),
        alternatives=tuple(_get(raw, "alternatives", list, [])),
        oracle=_get(raw, "oracle", str, None),
        atol=_number(raw, "atol"),
    )


# ----------------------------------------------------------------------------- worker -> host


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """An exception as the job raised it (the worker already cut it to the job's limit)."""

    name: str
    value: str = ""
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TestRecord:
    """One test's verdict. The host adds the case's input and expected value (it has them)."""

    __test__ = False  # a protocol record, not a pytest test class

    index: int
    passed: bool
    status: TestStatusName
    actual: Any = None
    error: ErrorRecord | None = None
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class StageReport:
    """How a program's compile step ended (its output is cut to the job's limit by the worker)."""

    status: StageStatusName
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_ms: float = 0.0
    cached: bool = False  # the host sent a build of this source: no compiler ran


@dataclass(frozen=True, slots=True)
class JobReport:
    """How one job ended. Every text field together fits the job's ``max_output_bytes``."""

    status: JobStatusName
    stdout: str = ""
    stderr: str = ""
    error: ErrorRecord | None = None
    value: str | None = None  # repr() of the program's last expression
    exit_code: int | None = None  # negative: the signal that ended it
    signal: str | None = None  # e.g. "SIGKILL"
    wall_ms: float = 0.0
    cpu_ms: float | None = None
    peak_memory_bytes: int | None = None
    truncated: bool = False
    tests: tuple[TestRecord, ...] | None = None  # one per test, in order, for a test-mode job
    compile: StageReport | None = None  # a program with a compile step
    binary: str | None = None  # base64 of a fresh build (the compile ran and succeeded)
    files: dict[str, str] | None = None  # a program's fetch_files that existed: path -> base64
    message: str | None = None
    retire: bool = False  # the worker could not be made clean after this job: it serves no other


def encode_pong() -> bytes:
    return b'{"pong": true, "v": %d}\n' % PROTOCOL_VERSION


def decode_pong(line: bytes | str) -> None:
    """The fork server's answer to :func:`encode_ping`, on the host's side.

    Raises:
        VersionMismatch: a pong of another protocol version (the message says to rebuild the
            sandbox image).
        ProtocolError: not a pong.
    """
    raw = _object(line, "answer to a ping")
    if raw.get("pong") is not True:
        raise ProtocolError("the answer to a ping is not a pong")
    if not _ours(_version(raw)):
        raise VersionMismatch(_mismatch(_version(raw), PROTOCOL_VERSION))


def refusal(reason: str) -> JobReport:
    """The worker's answer to a request it cannot decode (another version, a broken line)."""
    return JobReport(status="service_error", message=f"the batch worker refused the request: {reason}")


def _error_wire(error: ErrorRecord | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"name": error.name, "value": error.value, "traceback": list(error.traceback)}


def encode_report(report: JobReport) -> bytes:
    """One result line. ASCII JSON: a lone surrogate in the job's output travels as an escape."""
    payload = {
        "status": report.status,
        "stdout": report.stdout,
        "stderr": report.stderr,
        "error": _error_wire(report.error),
        "value": report.value,
        "exit_code": report.exit_code,
        "signal": report.signal,
        "wall_ms": report.wall_ms,
        "cpu_ms": report.cpu_ms,
        "peak_memory_bytes": report.peak_memory_bytes,
        "truncated": report.truncated,
        "tests": None if report.tests is None else [_test_wire(t) for t in report.tests],
        "compile": None if report.compile is None else _stage_wire(report.compile),
        "binary": report.binary,
        "files": report.files,
        "message": report.message,
        "retire": report.retire,
    }
    return json.dumps(payload).encode() + b"\n"


def _stage_wire(stage: StageReport) -> dict[str, Any]:
    return {
        "status": stage.status,
        "exit_code": stage.exit_code,
        "stdout": stage.stdout,
        "stderr": stage.stderr,
        "wall_ms": stage.wall_ms,
        "cached": stage.cached,
    }


def _test_wire(test: TestRecord) -> dict[str, Any]:
    return {
        "index": test.index,
        "passed": test.passed,
        "status": test.status,
        "actual": test.actual,
        "error": _error_wire(test.error),
        "duration_ms": test.duration_ms,
    }


def decode_report(line: bytes | str, *, tests: int | None, collect: bool = False) -> JobReport:
    """A worker's result line, on the host's side, as hostile input.

    ``tests`` is how many test outcomes the job's request asked for (:attr:`JobTests.count`), or
    None for a job without tests; ``collect``: the job's mode is ``collect`` (its outcomes are
    ``returned``, never ``passed``). Outcomes the worker left out at the end are ``not_run``.

    Raises:
        ProtocolError: the only exception: not JSON, not an object, a field of the wrong type or
            out of range, an unknown status, outcomes that do not match the job's tests.
    """
    try:
        return _report(_object(line, "result"), tests, collect)
    except ProtocolError:
        raise
    except Exception as exc:  # whatever a worker sends: one exception type for the caller
        raise ProtocolError(f"a broken result ({exc!r:.200})") from exc


def _report(raw: dict[str, Any], count: int | None, collect: bool) -> JobReport:
    status = _get(raw, "status", str)
    if status not in JOB_STATUSES:
        raise ProtocolError(f"unknown status {status[:50]!r}")
    exit_code = _get(raw, "exit_code", int, None)
    if exit_code is not None and not -_INT32 <= exit_code < _INT32:
        raise ProtocolError("exit_code out of range")
    signal_name = _get(raw, "signal", str, None)
    if signal_name is not None and not (
        len(signal_name) <= _MAX_SIGNAL_NAME and signal_name.isascii() and signal_name.isalnum()
    ):
        raise ProtocolError("a signal name that is no signal name")
    return JobReport(
        status=status,  # checked against JOB_STATUSES above
        stdout=_get(raw, "stdout", str, ""),
        stderr=_get(raw, "stderr", str, ""),
        error=_error(raw.get("error")),
        value=_get(raw, "value", str, None),
        exit_code=exit_code,
        signal=signal_name,
        wall_ms=_number(raw, "wall_ms") or 0.0,
        cpu_ms=_number(raw, "cpu_ms"),
        peak_memory_bytes=_get(raw, "peak_memory_bytes", int, None),
        truncated=_get(raw, "truncated", bool, False),
        tests=_tests(raw.get("tests"), count, _COLLECT_STATUSES if collect else _CHECK_STATUSES),
        compile=_stage(raw.get("compile")),
        binary=_base64(raw, "binary"),
        files=_files(raw.get("files")),
        message=_get(raw, "message", str, None),
        retire=_get(raw, "retire", bool, False),
    )


def _tests(raw: object, count: int | None, statuses: frozenset[str]) -> tuple[TestRecord, ...] | None:
    if count is None:
        if raw is not None:
            raise ProtocolError("tests for a job without tests")
        return None
    if raw is None:
        raw = []  # the worker ran no harness at all (a crash before it): every test is missing
    if not isinstance(raw, list):
        raise ProtocolError("tests is not a list")
    if len(raw) > count:
        raise ProtocolError(f"{len(raw)} test outcomes for {count} tests")
    outcomes = [_test(i, item, statuses) for i, item in enumerate(raw)]
    outcomes += [TestRecord(index=i, passed=False, status="not_run") for i in range(len(raw), count)]
    return tuple(outcomes)


def _test(i: int, raw: object, statuses: frozenset[str]) -> TestRecord:
    if not isinstance(raw, dict) or _get(raw, "index", int) != i:
        raise ProtocolError(f"test outcome {i} is not an object with index {i}")
    passed = _get(raw, "passed", bool)
    status = _get(raw, "status", str)
    if status not in statuses or passed != (status == "passed"):
        raise ProtocolError(f"test outcome {i} has status {status[:30]!r} and passed={passed}")
    return TestRecord(
        index=i,
        passed=passed,
        status=status,  # checked against TEST_STATUSES above
        actual=raw.get("actual"),
        error=_error(raw.get("error")),
        duration_ms=_number(raw, "duration_ms") or 0.0,
    )


def _stage(raw: object) -> StageReport | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolError("compile is not an object")
    status = _get(raw, "status", str)
    if status not in STAGE_STATUSES:
        raise ProtocolError(f"unknown compile status {status[:30]!r}")
    exit_code = _get(raw, "exit_code", int, None)
    if exit_code is not None and not -_INT32 <= exit_code < _INT32:
        raise ProtocolError("compile exit_code out of range")
    return StageReport(
        status=status,  # checked against STAGE_STATUSES above
        exit_code=exit_code,
        stdout=_get(raw, "stdout", str, ""),
        stderr=_get(raw, "stderr", str, ""),
        wall_ms=_number(raw, "wall_ms") or 0.0,
        cached=_get(raw, "cached", bool, False),
    )


def _base64(raw: dict[str, Any], name: str) -> str | None:
    value = _get(raw, name, str, None)
    if value is not None:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"{name} is not base64") from exc
    return value  # type: ignore[no-any-return]


def _files(raw: object) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolError("files is not an object")
    for path in raw:
        _base64(raw, path)
    return dict(raw)


def _error(raw: object) -> ErrorRecord | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolError("error is not an object")
    lines = _get(raw, "traceback", list, [])
    if not all(type(line) is str for line in lines):
        raise ProtocolError("a traceback line is not a string")
    return ErrorRecord(name=_get(raw, "name", str), value=_get(raw, "value", str, ""), traceback=tuple(lines))


# ----------------------------------------------------------------------------- fields

_REQUIRED: Any = object()


def _object(line: bytes | str, what: str) -> dict[str, Any]:
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError) as exc:  # a huge integer is a ValueError too
        raise ProtocolError(f"the {what} is not JSON ({str(exc)[:100]})") from exc
    if not isinstance(raw, dict):
        raise ProtocolError(f"the {what} is not a JSON object")
    return raw


def _get(raw: dict[str, Any], name: str, kind: type, default: Any = _REQUIRED) -> Any:
    """``raw[name]`` if it has type ``kind`` exactly (a bool is no int); ``default`` if absent or null."""
    value = raw.get(name)
    if value is None and default is not _REQUIRED:
        return default
    if type(value) is not kind:
        raise ProtocolError(f"{name} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _number(raw: dict[str, Any], name: str) -> float | None:
    """A finite non-negative number as a float; None if absent or null."""
    value = raw.get(name)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ProtocolError(f"{name} is not a finite non-negative number")
    return float(value)


def _float(raw: dict[str, Any], name: str, default: float | None = None) -> float:
    """:func:`_number` that must be there, unless it has a ``default``."""
    value = _number(raw, name)
    if value is None:
        if default is None:
            raise ProtocolError(f"{name} is missing")
        return default
    return value
