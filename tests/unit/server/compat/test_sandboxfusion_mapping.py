"""SandboxFusion's wire format, translated without I/O: a request -> an execbox batch job, a job's
result -> SandboxFusion's verdict, notebook cells -> its cell results. Every reply is also parsed
with the ``sandbox-fusion`` client's own models (pydantic v1, as the client parses them)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from sandbox_fusion import models as client_models

from execbox._models import Execution, ExecutionError, ExecutionStatus, JobResult, JobStatus, Result, StageResult
from execbox_server.compat.sandboxfusion import (
    CommandRunStatus,
    RunCodeRequest,
    RunCodeResponse,
    RunJupyterRequest,
    RunJupyterResponse,
    RunStatus,
    cell_result,
    jupyter_plan,
    jupyter_response,
    run_code_job,
    run_code_response,
    supported_languages,
    unsupported_language,
)
from execbox_server.errors import InvalidLimits, InvalidRequest
from execbox_server.limits import JobLimits
from execbox_server.settings import Settings

SETTINGS = Settings(max_timeout_s=300, batch_memory_mb=1024, max_memory_mb=2048, memory_mb=512)
LIMITS = JobLimits(timeout_s=10, memory_mb=1024, max_output_bytes=1_048_576, compile_timeout_s=10)

# What verl's call_sandbox_api sends, byte for byte (verl 0.9.1, utils.py).
VERL_BODY = {
    "compile_timeout": 10,
    "run_timeout": 10,
    "code": "print(input())",
    "stdin": "1 2\n",
    "memory_limit_MB": 1024,
    "language": "python",
    "files": {},
    "fetch_files": [],
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wire(reply: RunCodeResponse | RunJupyterResponse) -> dict[str, Any]:
    """The reply as the route sends it."""
    return dict(json.loads(reply.model_dump_json()))


def client_parses(reply: RunCodeResponse) -> client_models.RunCodeResponse:
    return client_models.RunCodeResponse(**wire(reply))


def result(status: JobStatus, **fields: Any) -> JobResult:
    return JobResult(index=0, status=status, **fields)


def request(**fields: Any) -> RunCodeRequest:
    return RunCodeRequest.model_validate({"code": "print(1)", **fields})


# ---------------------------------------------------------------- requests


def test_verls_exact_body_becomes_a_python_job_with_its_limits() -> None:
    resolved = run_code_job(RunCodeRequest.model_validate(VERL_BODY), SETTINGS)
    job = resolved.job
    assert job.language.value == "python" and job.code == "print(input())" and job.stdin == "1 2\n"
    assert job.timeout_s == 10 and job.compile_timeout_s == 10 and job.memory_mb == 1024
    assert job.files is None and job.fetch_files is None
    assert resolved.limits.timeout_s == 10 and resolved.limits.memory_mb == 1024


def test_the_clients_own_request_body_validates() -> None:
    body = client_models.RunCodeRequest(code="int main(){}", language="cpp", stdin=None).dict()
    assert RunCodeRequest.model_validate(body).language == "cpp"


def test_language_left_out_means_python_and_unknown_fields_are_ignored() -> None:
    parsed = RunCodeRequest.model_validate({"code": "print(1)", "run_timeout": 3, "extra_field": True})
    assert parsed.language == "python"
    assert run_code_job(parsed, SETTINGS).job.timeout_s == 3


@pytest.mark.parametrize(("asked", "runs_with"), [(-1, 1024), (0, 1024), (256, 256), (100_000, 1024)])
def test_memory_limit_MB_takes_the_default_at_or_below_zero_and_is_capped_at_the_maximum(
    asked: int, runs_with: int
) -> None:
    resolved = run_code_job(request(memory_limit_MB=asked), SETTINGS)
    assert resolved.limits.memory_mb == runs_with and resolved.job.memory_mb == runs_with


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("run_timeout", 301, "run_timeout=301 is above this server's maximum of 300 (EXECBOX_MAX_TIMEOUT_S)"),
        ("compile_timeout", 1000, "compile_timeout=1000 is above this server's maximum of 300"),
        ("run_timeout", 0, "run_timeout=0 is too small"),
    ],
)
def test_a_timeout_out_of_bounds_is_refused_in_the_callers_own_field_name(field: str, value: float, says: str) -> None:
    with pytest.raises(InvalidLimits) as info:
        run_code_job(request(**{field: value}), SETTINGS)
    assert info.value.message.startswith(says), info.value.message


def test_files_null_contents_and_sandboxfusions_ignore_marker_are_skipped_and_line_breaks_allowed() -> None:
    content = base64.encodebytes(b"x" * 100).decode()  # with line breaks
    assert "\n" in content
    files = {"data/in.txt": content, "skip.txt": None, "a_IGNORE_THIS_FILE.txt": b64(b"no")}
    job = run_code_job(request(files=files, fetch_files=["out.txt", "/tmp/o", "out.txt"]), SETTINGS).job
    assert job.files is not None and set(job.files) == {"data/in.txt"}
    assert base64.b64decode(job.files["data/in.txt"]) == b"x" * 100
    assert job.fetch_files == ["out.txt", "/tmp/o"]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"files": {"in.txt": "not base64!"}}, "files['in.txt'] is not base64"),
        ({"files": {"/etc/passwd": b64(b"x")}}, "'/etc/passwd' is outside"),
        ({"files": {"../../etc/x": b64(b"x")}}, "is outside"),
        ({"fetch_files": ["/proc/self/environ"]}, "fetch_files: '/proc/self/environ' is outside"),
    ],
)
def test_a_file_the_sandbox_cannot_take_is_a_422_saying_which(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        run_code_job(request(**fields), SETTINGS)
    assert says in info.value.message


def test_an_unsupported_language_is_a_sandbox_error_listing_the_supported_ones() -> None:
    assert supported_languages() == ["python", "cpp"]
    assert unsupported_language("python") is None and unsupported_language("cpp") is None
    reply = unsupported_language("nodejs")
    assert reply is not None and reply.status is RunStatus.SandboxError
    assert reply.message == "language 'nodejs' is not supported by this execbox server; supported: python, cpp"
    assert client_parses(reply).status == client_models.RunStatus.SandboxError


# ---------------------------------------------------------------- replies


def test_a_python_success_has_sandboxfusions_exact_shape() -> None:
    reply = run_code_response(result(JobStatus.OK, stdout="hi\n", exit_code=0, wall_ms=16.5), request(), LIMITS)
    assert wire(reply) == {
        "status": "Success",
        "message": "",
        "compile_result": None,
        "run_result": {
            "status": "Finished",
            "execution_time": 0.0165,
            "return_code": 0,
            "stdout": "hi\n",
            "stderr": "",
        },
        "executor_pod_name": None,
        "files": {},
    }
    assert list(wire(reply)) == [
        "status",
        "message",
        "compile_result",
        "run_result",
        "executor_pod_name",
        "files",
    ]
    assert client_parses(reply).run_result.stdout == "hi\n"


def test_an_exception_is_failed_with_exit_code_1_and_the_traceback() -> None:
    job = result(JobStatus.ERROR, stderr="Traceback ...\nValueError: x\n", exit_code=1)
    reply = run_code_response(job, request(), LIMITS)
    assert reply.status is RunStatus.Failed and reply.message == ""
    assert reply.run_result is not None and reply.run_result.status is CommandRunStatus.Finished
    assert reply.run_result.return_code == 1 and "ValueError" in (reply.run_result.stderr or "")


def test_a_nonzero_exit_without_an_exception_is_failed_with_that_code() -> None:
    reply = run_code_response(result(JobStatus.ERROR, exit_code=3), request(), LIMITS)
    assert reply.status is RunStatus.Failed and reply.run_result is not None and reply.run_result.return_code == 3


def test_a_timeout_keeps_the_output_written_so_far_and_has_no_return_code() -> None:
    job = result(JobStatus.TIMEOUT, stdout="partial\n", stderr="Sleeping...\n", exit_code=-9, wall_ms=1003)
    reply = run_code_response(job, request(), LIMITS)
    run = reply.run_result
    assert reply.status is RunStatus.Failed
    assert run is not None and run.status is CommandRunStatus.TimeLimitExceeded and run.return_code is None
    assert run.stdout == "partial\n" and run.stderr == "Sleeping...\n" and run.execution_time == 1.003
    assert client_parses(reply).run_result.status == client_models.CommandRunStatus.TimeLimitExceeded


def test_out_of_memory_is_a_failed_exit_with_execboxs_note_never_a_new_status() -> None:
    job = result(JobStatus.OUT_OF_MEMORY, stderr="partial", exit_code=None)
    reply = run_code_response(job, request(), LIMITS)
    run = reply.run_result
    assert reply.status is RunStatus.Failed
    assert run is not None and run.status is CommandRunStatus.Finished and run.return_code == -9
    assert run.stderr == "partial\n[execbox] the program ran out of memory (limit 1024 MiB) and was killed\n"
    client_parses(reply)


def test_output_over_the_limit_is_a_failed_exit_with_the_note_even_if_the_program_said_0() -> None:
    reply = run_code_response(result(JobStatus.OUTPUT_LIMIT, exit_code=0), request(), LIMITS)
    run = reply.run_result
    assert reply.status is RunStatus.Failed and run is not None and run.return_code == -9
    assert "more than the output limit (1048576 bytes)" in (run.stderr or "")


def test_output_cut_without_a_kill_keeps_the_verdict_and_says_so() -> None:
    reply = run_code_response(result(JobStatus.OK, exit_code=0, truncated=True), request(), LIMITS)
    assert reply.status is RunStatus.Success
    assert reply.run_result is not None and "output beyond 1048576 bytes was cut" in (reply.run_result.stderr or "")


@pytest.mark.parametrize(
    ("exit_code", "signal", "code"),
    [(-11, "SIGSEGV", -11), (None, "SIGSEGV", -11), (None, "SIGABRT", -6), (None, None, -9), (None, "SIGWAT", -9)],
)
def test_a_program_killed_by_a_signal_finished_with_minus_the_signal(
    exit_code: int | None, signal: str | None, code: int
) -> None:
    reply = run_code_response(result(JobStatus.CRASHED, exit_code=exit_code, signal=signal), request(), LIMITS)
    assert reply.status is RunStatus.Failed
    assert reply.run_result is not None and reply.run_result.status is CommandRunStatus.Finished
    assert reply.run_result.return_code == code


def test_a_cpp_success_has_both_stages_and_a_cached_build_reads_as_a_finished_compile() -> None:
    compiled = StageResult(status="ok", exit_code=0, wall_ms=0.0, cached=True)
    job = result(JobStatus.OK, stdout="Hello\n", exit_code=0, compile=compiled)
    reply = run_code_response(job, request(language="cpp"), LIMITS)
    assert reply.status is RunStatus.Success
    assert wire(reply)["compile_result"] == {
        "status": "Finished",
        "execution_time": 0.0,
        "return_code": 0,
        "stdout": "",
        "stderr": "",
    }
    assert reply.run_result is not None and reply.run_result.stdout == "Hello\n"
    assert client_parses(reply).compile_result.return_code == 0


def test_a_compile_error_has_the_compilers_output_and_no_run() -> None:
    compiled = StageResult(status="error", exit_code=1, stderr="main.cpp:1:1: error: 'a' does not name a type\n")
    reply = run_code_response(result(JobStatus.COMPILE_ERROR, compile=compiled), request(language="cpp"), LIMITS)
    assert reply.status is RunStatus.Failed and reply.run_result is None
    assert reply.compile_result is not None and reply.compile_result.status is CommandRunStatus.Finished
    assert reply.compile_result.return_code == 1 and "does not name a type" in (reply.compile_result.stderr or "")
    assert wire(reply)["run_result"] is None


def test_a_compile_that_ran_out_of_time_is_a_compile_time_limit_and_no_run() -> None:
    compiled = StageResult(status="timeout", exit_code=None, wall_ms=10_000)
    reply = run_code_response(result(JobStatus.TIMEOUT, compile=compiled), request(language="cpp"), LIMITS)
    assert reply.status is RunStatus.Failed and reply.run_result is None
    assert reply.compile_result is not None and reply.compile_result.status is CommandRunStatus.TimeLimitExceeded
    assert reply.compile_result.return_code is None and reply.compile_result.execution_time == 10.0


def test_a_service_error_is_a_sandbox_error_with_the_services_message() -> None:
    job = result(JobStatus.SERVICE_ERROR, message="the worker running this job was lost and replaced")
    reply = run_code_response(job, request(), LIMITS)
    assert reply.status is RunStatus.SandboxError
    assert reply.message == "the worker running this job was lost and replaced"
    assert reply.run_result is None and reply.compile_result is None and reply.files == {}


def test_fetched_files_are_keyed_by_the_exact_request_strings_and_missing_ones_left_out() -> None:
    fetched = {"./out.txt": b64(b"1"), "/tmp/x": b64(b"2")}
    asked = request(fetch_files=["./out.txt", "/tmp/x", "missing.txt"])
    reply = run_code_response(result(JobStatus.OK, exit_code=0, files=fetched), asked, LIMITS)
    assert reply.files == {"./out.txt": b64(b"1"), "/tmp/x": b64(b"2")}
    assert wire(run_code_response(result(JobStatus.OK, exit_code=0), asked, LIMITS))["files"] == {}


# ---------------------------------------------------------------- notebooks


def execution(status: ExecutionStatus = ExecutionStatus.OK, **fields: Any) -> Execution:
    return Execution(status=status, **fields)


def test_a_cell_reports_streams_displays_and_errors_as_sandboxfusion_does() -> None:
    cell = cell_result(
        execution(
            ExecutionStatus.ERROR,
            stdout="a\n",
            stderr="w\n",
            results=[Result(data={"text/plain": "'hello'"}, is_main_result=True)],
            error=ExecutionError(name="AssertionError", value="", traceback=["Traceback", "AssertionError"]),
        )
    )
    assert cell.model_dump() == {
        "stdout": "a\n",
        "stderr": "w\n",
        "display": [{"text/plain": "'hello'"}],
        "error": [{"ename": "AssertionError", "evalue": "", "traceback": ["Traceback", "AssertionError"]}],
    }


def test_a_cell_execbox_stopped_gets_an_error_saying_why() -> None:
    cell = cell_result(execution(ExecutionStatus.TIMEOUT, stdout="so far", message="did not finish in 2 s"))
    assert cell.error == [{"ename": "TimeoutError", "evalue": "did not finish in 2 s", "traceback": []}]
    assert cell.stdout == "so far"


def test_cells_that_all_ran_are_a_success_even_when_one_raised() -> None:
    runs = [execution(), execution(ExecutionStatus.ERROR, error=ExecutionError(name="E", value="v")), execution()]
    reply = jupyter_response(runs, elapsed_s=0.5, out_of_time=False, files={})
    assert reply.status is RunStatus.Success and len(reply.cells) == 3
    assert reply.driver is not None and reply.driver.status is CommandRunStatus.Finished
    assert reply.driver.return_code == 0
    parsed = client_models.RunJupyterResponse(**wire(reply))
    assert parsed.cells[1].error[0]["ename"] == "E"


def test_a_timeout_is_failed_with_a_driver_time_limit_and_the_cells_run_so_far() -> None:
    runs = [execution(stdout="1\n"), execution(ExecutionStatus.TIMEOUT, stdout="partial")]
    reply = jupyter_response(runs, elapsed_s=2.0, out_of_time=False, files={})
    assert reply.status is RunStatus.Failed
    assert reply.driver is not None and reply.driver.status is CommandRunStatus.TimeLimitExceeded
    assert reply.driver.return_code is None
    assert [c.stdout for c in reply.cells] == ["1\n", "partial"]
    out_of_budget = jupyter_response([execution()], elapsed_s=2.0, out_of_time=True, files={})
    assert out_of_budget.status is RunStatus.Failed and out_of_budget.driver is not None
    assert out_of_budget.driver.status is CommandRunStatus.TimeLimitExceeded


def test_a_kernel_that_died_fails_the_notebook_with_the_reason_and_a_lost_sandbox_is_a_sandbox_error() -> None:
    died = execution(ExecutionStatus.KERNEL_DIED, state_lost=True, message="the kernel exited (os._exit?)")
    reply = jupyter_response([died], elapsed_s=1.0, out_of_time=False, files={})
    assert reply.status is RunStatus.Failed and reply.driver is not None
    assert reply.driver.return_code == 1 and reply.driver.stderr == "the kernel exited (os._exit?)\n"
    lost = execution(ExecutionStatus.SANDBOX_LOST, state_lost=True, message="the container vanished")
    reply = jupyter_response([lost], elapsed_s=1.0, out_of_time=False, files={})
    assert reply.status is RunStatus.SandboxError and reply.message == "the container vanished"
    client_models.RunJupyterResponse(**wire(reply))


def test_a_notebook_request_maps_paths_into_the_working_directory_and_checks_its_timeouts() -> None:
    plan = jupyter_plan(
        RunJupyterRequest(
            cells=["1"],
            cell_timeout=0,
            total_timeout=30,
            memory_limit_MB=100_000,
            files={"/home/sandbox/d/in.txt": b64(b"hi"), "x_IGNORE_THIS_FILE": b64(b"")},
            fetch_files=["out.txt", "./out.txt"],
        ),
        SETTINGS,
    )
    assert plan.total_timeout_s == 30 and plan.cell_timeout_s is None and plan.memory_mb == 2048
    assert plan.uploads == (("d/in.txt", b"hi"),)
    assert plan.fetches == (("out.txt", "out.txt"), ("./out.txt", "out.txt"))


@pytest.mark.parametrize(
    ("fields", "error", "says"),
    [
        ({"total_timeout": 301}, InvalidLimits, "total_timeout=301 is above"),
        ({"cell_timeout": -1}, InvalidLimits, "cell_timeout=-1 is too small"),
        ({"cell_timeout": 500}, InvalidLimits, "cell_timeout=500 is above"),
        ({"files": {"/tmp/x": b64(b"x")}}, InvalidRequest, "outside the kernel's working directory"),
        ({"files": {"x": "@@"}}, InvalidRequest, "is not base64"),
    ],
)
def test_a_notebook_request_the_server_cannot_run_is_refused_saying_why(
    fields: dict[str, Any], error: type[Exception], says: str
) -> None:
    with pytest.raises(error) as info:
        jupyter_plan(RunJupyterRequest.model_validate({"cells": ["1"], **fields}), SETTINGS)
    assert says in str(info.value)
