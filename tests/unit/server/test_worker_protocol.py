"""The batch worker protocol (service/execbox_server/worker_protocol.py), both ends of it.

The fork server's side is exercised here only through the module it imports (never by running
forkserver.py on the host: its cleanup kills every process it can see); the fork server itself
is tested in real worker containers (tests/integration/test_batch*.py).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execbox._models import JobStatus
from execbox_server import worker_protocol
from execbox_server.worker_protocol import (
    JOB_STATUSES,
    PROTOCOL_VERSION,
    TEST_STATUSES,
    Case,
    ErrorRecord,
    JobReport,
    JobRequest,
    JobTests,
    Ping,
    ProtocolError,
    TestRecord,
    VersionMismatch,
    decode_pong,
    decode_report,
    decode_request,
    encode_ping,
    encode_pong,
    encode_report,
    encode_request,
    outcome_count,
    refusal,
)

ROOT = Path(__file__).resolve().parents[3]

CASES = JobTests(
    entry_point="f",
    cases=(Case([1], 1), Case({"k": [1.5, None]}, "x")),
    per_test_timeout_s=0.5,
    stop_on_first_failure=False,
    atol=0.01,
)
EVALPLUS = JobTests(
    entry_point="f",
    cases=(
        Case({"$tuple": [1]}, {"$set": [1]}, timeout_s=1.5, alternatives=(0,), oracle="set_equal", atol=0.5),
        Case([[1, 2]], None),
    ),
    semantics="evalplus",
    mode="check",
    oracle="not_none",
    atol=0.0,
)
REQUESTS = {
    "plain": JobRequest(code="print(1)", timeout_s=10.0, memory_mb=512, max_output_bytes=1 << 20),
    "stdin": JobRequest(code="input()", timeout_s=0.25, memory_mb=0, max_output_bytes=1024, stdin="a\nb\ud800"),
    "cases": JobRequest(code="def f(x): return x", timeout_s=3, memory_mb=64, max_output_bytes=4096, tests=CASES),
    "evalplus": JobRequest(code="def f(x): return x", timeout_s=3, memory_mb=64, max_output_bytes=4096, tests=EVALPLUS),
    "collect": JobRequest(
        code="def f(x): return x",
        timeout_s=3,
        memory_mb=64,
        max_output_bytes=4096,
        tests=JobTests(entry_point="f", cases=(Case([1]),), semantics="evalplus", mode="collect"),
    ),
    "assertions": JobRequest(
        code="def f(): pass",
        timeout_s=3.0,
        memory_mb=64,
        max_output_bytes=4096,
        tests=JobTests(entry_point="f", assertions="def check(c): assert c() is None"),
    ),
}


def ok_line(**fields: Any) -> bytes:
    return json.dumps({"status": "ok", "stdout": "", "stderr": "", "wall_ms": 1.0, **fields}).encode() + b"\n"


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", list(REQUESTS))
def test_a_request_decodes_on_the_worker_as_the_host_encoded_it(name: str) -> None:
    line = encode_request(REQUESTS[name])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == REQUESTS[name]


def test_a_full_report_decodes_on_the_host_as_the_worker_encoded_it() -> None:
    error = ErrorRecord(name="ValueError", value="bad", traceback=("Traceback", '  File "<job>"', "ValueError: bad"))
    report = JobReport(
        status="error",
        stdout="out\n",
        stderr="err\n",
        error=error,
        value="'v'",
        exit_code=-9,
        signal="SIGKILL",
        wall_ms=12.5,
        cpu_ms=3.25,
        peak_memory_bytes=16 << 20,
        truncated=True,
        tests=(
            TestRecord(index=0, passed=True, status="passed", actual=[1, {"a": None}], duration_ms=0.5),
            TestRecord(index=1, passed=False, status="error", error=error, duration_ms=1.0),
            TestRecord(index=2, passed=False, status="not_run"),
        ),
        message="stopped",
        retire=True,
    )
    assert decode_report(encode_report(report), tests=3) == report


def test_a_report_line_is_ascii_and_keeps_lone_surrogates_as_escapes() -> None:
    line = encode_report(JobReport(status="ok", stdout="a\ud800é"))
    assert line.isascii()
    assert decode_report(line, tests=None).stdout == "a\ud800é"


def test_ping_and_pong_carry_the_version() -> None:
    assert decode_request(encode_ping()) == Ping(PROTOCOL_VERSION)
    decode_pong(encode_pong())  # does not raise
    assert json.loads(encode_pong()) == {"pong": True, "v": PROTOCOL_VERSION}


def test_the_refusal_of_a_request_is_a_service_error_that_keeps_the_worker() -> None:
    report = decode_report(encode_report(refusal("why")), tests=None)
    assert report.status == "service_error" and not report.retire
    assert report.message is not None and "refused the request: why" in report.message


# ------------------------------------------------------------------ versions


def test_a_request_of_another_version_is_refused_with_what_to_do() -> None:
    line = encode_request(REQUESTS["plain"]).replace(b'"v": %d' % PROTOCOL_VERSION, b'"v": 99')
    with pytest.raises(VersionMismatch) as caught:
        decode_request(line)
    assert "version mismatch" in str(caught.value) and "build.sh" in str(caught.value)


def test_a_pong_of_another_version_is_refused_with_what_to_do() -> None:
    with pytest.raises(VersionMismatch) as caught:
        decode_pong(b'{"pong": true, "v": 99}\n')
    assert f"the batch worker speaks 99, the service {PROTOCOL_VERSION}" in str(caught.value)
    assert "rebuild" in str(caught.value)


@pytest.mark.parametrize("version", [True, 1.0, "1", None, [1]])
def test_only_the_integer_version_is_this_version(version: object) -> None:
    with pytest.raises(VersionMismatch):
        decode_pong(json.dumps({"pong": True, "v": version}))
    fields = {"v": version, "code": "", "timeout_s": 1, "memory_mb": 0, "max_output_bytes": 1024}
    with pytest.raises(VersionMismatch):
        decode_request(json.dumps(fields))


def test_lines_without_a_version_are_version_1_and_refused_by_version_3() -> None:
    # What a worker image and a service of before the versioned protocol send. Version 2 added
    # programs (languages, files, builds): an old worker would run a C++ job as Python. Version 3
    # added typed values, collect mode, per-case limits and oracles: an old worker would judge an
    # evalplus job by JSON equality.
    assert PROTOCOL_VERSION == 3
    with pytest.raises(VersionMismatch):
        decode_pong(b'{"id": null, "pong": true}\n')
    old = {"id": "j0", "code": "print(1)", "stdin": None, "timeout_s": 10.0, "memory_mb": 512}
    with pytest.raises(VersionMismatch):
        decode_request(json.dumps({**old, "max_output_bytes": 1024, "tests": None}))
    report = decode_report(ok_line(id="j0", stdout="1\n", retire=False), tests=None)  # an unknown field is ignored
    assert report.stdout == "1\n"


def test_a_pong_must_be_a_pong() -> None:
    for line in (b'{"pong": 1, "v": 1}', b'{"v": 1}', b"[]", b"pong", b""):
        with pytest.raises(ProtocolError) as caught:
            decode_pong(line)
        assert not isinstance(caught.value, VersionMismatch)


# ------------------------------------------------------------------ requests the worker refuses


@pytest.mark.parametrize(
    "fields",
    [
        {"op": "exec"},
        {"code": 1},
        {"code": None},
        {"timeout_s": "1"},
        {"timeout_s": float("nan")},
        {"timeout_s": None},
        {"memory_mb": 1.5},
        {"memory_mb": True},
        {"max_output_bytes": None},
        {"stdin": 5},
        {"tests": []},
        {"tests": {"cases": {"input": 1}}},
        {"tests": {"cases": [[1, 1]]}},
        {"tests": {"entry_point": 3}},
        {"tests": {"stop_on_first_failure": "no"}},
        {"tests": {"atol": -1}},
    ],
)
def test_a_request_with_a_field_of_the_wrong_type_is_refused(fields: dict[str, Any]) -> None:
    request = json.loads(encode_request(REQUESTS["plain"]))
    with pytest.raises(ProtocolError):
        decode_request(json.dumps({**request, **fields}))


@pytest.mark.parametrize("line", [b"{nope\n", b"[1]\n", b"\xff\xfe\n", b"[" * 100_000 + b"]" * 100_000])
def test_a_request_that_is_no_json_object_is_refused(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(line)


# ------------------------------------------------------------------ results the host refuses

GOOD_TESTS = [
    {"index": 0, "passed": True, "status": "passed", "actual": 1, "error": None, "duration_ms": 0.1},
    {"index": 1, "passed": False, "status": "failed", "actual": 3, "error": None, "duration_ms": 0.1},
]
HOSTILE_REPORTS: dict[str, bytes] = {
    "not json": b"{nope\n",
    "not utf-8": b'{"status": "ok", "stdout": "\xff"}\n',
    "a list": b"[1, 2]\n",
    "deep nesting": b"[" * 200_000 + b"]" * 200_000 + b"\n",
    "huge integer": b'{"status": "ok", "exit_code": ' + b"9" * 10_000 + b"}\n",
    "no status": ok_line(status=None),
    "unknown status": ok_line(status="passed"),
    "status not a string": ok_line(status=["ok"]),
    "stdout a list": ok_line(stdout=["a"]),
    "stderr an object": ok_line(stderr={"a": 1}),
    "value a number": ok_line(value=1),
    "message a list": ok_line(message=["m"]),
    "exit code a bool": ok_line(exit_code=True),
    "exit code a float": ok_line(exit_code=1.0),
    "exit code out of range": ok_line(exit_code=2**70),
    "signal with a newline": ok_line(status="crashed", signal="SIG\nKILL"),
    "signal too long": ok_line(status="crashed", signal="S" * 17),
    "signal not ascii": ok_line(status="crashed", signal="SIGKİLL"),
    "wall_ms NaN": b'{"status": "ok", "wall_ms": NaN}\n',
    "cpu_ms infinite": b'{"status": "ok", "cpu_ms": Infinity}\n',
    "wall_ms negative": ok_line(wall_ms=-5),
    "wall_ms a string": ok_line(wall_ms="5"),
    "peak memory a float": ok_line(peak_memory_bytes=1.5),
    "error a string": ok_line(status="error", error="boom"),
    "error without a name": ok_line(status="error", error={"value": "v"}),
    "error name a list": ok_line(status="error", error={"name": ["x"], "value": "v"}),
    "traceback a string": ok_line(status="error", error={"name": "E", "value": "v", "traceback": "tb"}),
    "traceback of numbers": ok_line(status="error", error={"name": "E", "value": "v", "traceback": [1, 2]}),
    "truncated a string": ok_line(truncated="yes"),
    "retire a string": ok_line(retire="yes"),
    "tests for a job without tests": ok_line(tests=GOOD_TESTS),
}


@pytest.mark.parametrize("name", list(HOSTILE_REPORTS))
def test_a_hostile_report_raises_protocol_error(name: str) -> None:
    with pytest.raises(ProtocolError):
        decode_report(HOSTILE_REPORTS[name], tests=None)


HOSTILE_OUTCOMES: dict[str, object] = {
    "not a list": {"index": 0},
    "too many outcomes": [*GOOD_TESTS, {**GOOD_TESTS[0], "index": 2}],
    "indexes out of order": [GOOD_TESTS[1], GOOD_TESTS[0]],
    "an outcome not an object": [1, GOOD_TESTS[1]],
    "passed but failed": [{**GOOD_TESTS[0], "status": "failed"}, GOOD_TESTS[1]],
    "failed but passed": [GOOD_TESTS[0], {**GOOD_TESTS[1], "passed": True}],
    "a status of its own": [{**GOOD_TESTS[0], "status": "great", "passed": False}, GOOD_TESTS[1]],
    "passed as a string": [{**GOOD_TESTS[0], "passed": "true"}, GOOD_TESTS[1]],
    "index a bool": [{**GOOD_TESTS[0], "index": False}, GOOD_TESTS[1]],
    "duration negative": [{**GOOD_TESTS[0], "duration_ms": -1}, GOOD_TESTS[1]],
    "error a list": [{**GOOD_TESTS[0], "error": ["E"]}, GOOD_TESTS[1]],
}


@pytest.mark.parametrize("name", list(HOSTILE_OUTCOMES))
def test_hostile_test_outcomes_raise_protocol_error(name: str) -> None:
    with pytest.raises(ProtocolError):
        decode_report(ok_line(tests=HOSTILE_OUTCOMES[name]), tests=2)


def test_a_check_job_never_returns_values_without_a_verdict_and_a_collect_job_never_passes() -> None:
    returned = [{**GOOD_TESTS[1], "index": 0, "status": "returned"}]
    with pytest.raises(ProtocolError):
        decode_report(ok_line(tests=returned), tests=1)
    with pytest.raises(ProtocolError):
        decode_report(ok_line(tests=GOOD_TESTS[:1]), tests=1, collect=True)
    report = decode_report(ok_line(tests=returned), tests=2, collect=True)
    assert report.tests is not None and [t.status for t in report.tests] == ["returned", "not_run"]


@pytest.mark.parametrize(
    "tests",
    [{"semantics": "python"}, {"mode": "judge"}, {"oracle": 1}, {"cases": [{"input": 1, "timeout_s": -1}]}],
)
def test_a_request_with_unknown_test_semantics_is_refused(tests: dict[str, Any]) -> None:
    fields = {"v": PROTOCOL_VERSION, "code": "", "timeout_s": 1, "memory_mb": 0, "max_output_bytes": 1024}
    with pytest.raises(ProtocolError):
        decode_request(json.dumps({**fields, "tests": {"entry_point": "f", **tests}}))


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
        max_leaves=30,
    ),
    st.sampled_from([None, 0, 1, 2]),
)
def test_whatever_a_worker_sends_the_decoder_returns_a_report_or_raises_protocol_error(
    raw: object, tests: int | None
) -> None:
    for value in (raw, {"status": "ok", **raw} if isinstance(raw, dict) else raw):
        try:
            report = decode_report(json.dumps(value), tests=tests)
        except ProtocolError:
            continue
        assert report.status in JOB_STATUSES
        assert (report.tests is None) == (tests is None)
        assert report.tests is None or [t.index for t in report.tests] == list(range(len(report.tests)))


# ------------------------------------------------------------------ defaults


def test_absent_and_null_fields_take_their_defaults() -> None:
    report = decode_report(b'{"status": "ok", "stdout": null, "error": {"name": "E", "traceback": null}}', tests=None)
    assert report == JobReport(status="ok", error=ErrorRecord(name="E"))


@pytest.mark.parametrize("sent", [None, [], GOOD_TESTS[:1]])
def test_outcomes_the_worker_left_out_are_not_run(sent: list[dict[str, Any]] | None) -> None:
    report = decode_report(ok_line(tests=sent), tests=2)
    assert report.tests is not None and [t.index for t in report.tests] == [0, 1]
    assert report.tests[-1] == TestRecord(index=1, passed=False, status="not_run")


def test_a_test_mode_job_counts_one_outcome_per_case_or_one_for_assertions() -> None:
    assert CASES.count == 2 and JobTests().count == 0
    assert JobTests(assertions="assert True", cases=(Case(1, 1),) * 3).count == 1
    assert JobTests(assertions="", cases=(Case(1, 1),) * 3).count == 3  # an empty script is no script
    assert outcome_count(assertions=True, cases=5) == 1 and outcome_count(assertions=False, cases=5) == 5


# ------------------------------------------------------------------ one module, both ends


def test_job_statuses_are_the_apis() -> None:
    assert {s.value for s in JobStatus} == JOB_STATUSES
    assert TEST_STATUSES == {"passed", "failed", "error", "timeout", "not_run", "returned"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_protocol_module_needs_only_the_standard_library() -> None:
    # The sandbox image runs it with the standard library (and no execbox) beside the fork server.
    assert worker_protocol.__file__ is not None
    imports = _imports(Path(worker_protocol.__file__))
    assert imports <= set(sys.stdlib_module_names) | {"__future__"}, imports


def test_the_fork_server_speaks_through_the_shared_module_and_the_image_carries_it() -> None:
    image = ROOT / "sandbox_images" / "python"
    assert "worker_protocol" in _imports(image / "forkserver.py")
    assert not (image / "worker_protocol.py").exists()  # one copy: build.sh brings it into the context
    build = (image / "build.sh").read_text()
    assert "service/execbox_server/worker_protocol.py" in build
    copy = next(line for line in (image / "Dockerfile").read_text().splitlines() if "/opt/execbox/" in line)
    assert copy.startswith("COPY") and "forkserver.py" in copy and "worker_protocol.py" in copy
