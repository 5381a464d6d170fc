"""The SandboxFusion-compatible API against the real service, proven with the real third-party callers.

Every reply is parsed by the ``sandbox-fusion`` client's own pydantic models (and most requests are
sent by its own ``run_code`` / ``run_jupyter``), and the standard reward cases go through verl's own
``check_correctness`` (its ``sandbox_fusion`` package, loaded from verl's wheel on PyPI), which maps
a reply to True / False / -1 (sandbox or API error) / -2 (runtime error) / -3 (timeout) / -4 (compile
error). Statuses are SandboxFusion's: ``Success`` only when the compile (if any) and the run exited 0,
``Failed`` for anything the user's program did, ``SandboxError`` only for what the service could not do.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import sandbox_fusion as sf

from tests.support.server import LocalServer, free_port, start_server
from tests.support.verl_sf import load_verl_sandbox_fusion

# Every key SandboxFusion's RunCodeResponse carries, in its order: the client tolerates a missing
# optional one, but a caller reading the JSON itself (verl) uses .get on exactly these.
RUN_CODE_KEYS = ["status", "message", "compile_result", "run_result", "executor_pod_name", "files"]
STAGE_KEYS = {"status", "execution_time", "return_code", "stdout", "stderr"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(data: str) -> str:
    return base64.b64decode(data).decode()


def post_run_code(url: str, body: dict[str, Any], *, timeout: float = 60) -> sf.RunCodeResponse:
    """POST /run_code as verl does (plain JSON, no key); the reply must be 200 and parse as SandboxFusion's."""
    r = httpx.post(f"{url}/run_code", json=body, timeout=timeout)
    assert r.status_code == 200, r.text
    data = r.json()
    assert list(data)[: len(RUN_CODE_KEYS)] == RUN_CODE_KEYS, data
    for stage in ("compile_result", "run_result"):
        if data[stage] is not None:
            assert STAGE_KEYS <= set(data[stage]), data
    assert isinstance(data["message"], str) and isinstance(data["files"], dict)
    return sf.RunCodeResponse(**data)


def run(url: str, code: str, language: str = "python", **fields: Any) -> sf.RunCodeResponse:
    """One request through the sandbox-fusion client itself (one attempt: a retry would hide a failure)."""
    request = sf.RunCodeRequest(code=code, language=language, **fields)
    return sf.run_code(request, endpoint=url, max_attempts=1, client_timeout=120)


def summary(resp: sf.RunCodeResponse) -> str:
    mapping = sf.SummaryMapping(
        Success="Success",
        Failed="Failed",
        CompileFailed="CompileFailed",
        CompileTimeout="CompileTimeout",
        RunFailed="RunFailed",
        RunTimeout="RunTimeout",
    )
    return str(sf.summary_run_code_result(resp, mapping))


@pytest.fixture(scope="module")
def verl(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """verl's sandbox_fusion package; its wheel is downloaded once into pytest's cache directory."""
    cache = request.config.cache
    directory = cache.mkdir("verl-wheel") if cache is not None else tmp_path_factory.mktemp("verl-wheel")
    return load_verl_sandbox_fusion(Path(directory))


@pytest.fixture()
def verl_url(server: LocalServer) -> str:
    return f"{server.url}/run_code"  # verl takes the full endpoint, the client the server root


# ---------------------------------------------------------------- /run_code, python


def test_python_success_has_no_compile_stage(server: LocalServer) -> None:
    resp = run(server.url, "print('Hello, world!')")
    assert resp.status is sf.RunStatus.Success and resp.message == ""
    assert resp.compile_result is None
    assert resp.run_result is not None
    assert resp.run_result.status is sf.CommandRunStatus.Finished
    assert resp.run_result.return_code == 0
    assert resp.run_result.stdout == "Hello, world!\n" and resp.run_result.stderr == ""
    assert resp.run_result.execution_time is not None and resp.run_result.execution_time >= 0
    assert resp.files == {}
    assert summary(resp) == "Success"


def test_python_runs_as_main_file_in_its_working_directory(server: LocalServer) -> None:
    # verl's fn_name wrapper calls the solution under `if __name__ == '__main__':`.
    resp = run(server.url, "import os\nprint(__name__)\nprint(os.path.basename(__file__), os.getcwd())")
    assert resp.status is sf.RunStatus.Success, resp
    assert resp.run_result is not None
    assert resp.run_result.stdout == "__main__\nmain.py /home/sandbox\n"


def test_python_exception_is_failed_with_the_traceback(server: LocalServer) -> None:
    code = "import sys\nprint('About to raise', file=sys.stderr)\nraise ValueError('This is a runtime error')\n"
    resp = run(server.url, code)
    assert resp.status is sf.RunStatus.Failed and resp.message == ""
    assert resp.run_result is not None
    assert resp.run_result.status is sf.CommandRunStatus.Finished
    assert resp.run_result.return_code == 1
    assert resp.run_result.stderr is not None
    assert resp.run_result.stderr.startswith("About to raise\n")
    assert "ValueError: This is a runtime error" in resp.run_result.stderr
    assert summary(resp) == "RunFailed"


def test_python_syntax_error_is_a_failed_run_not_a_sandbox_error(server: LocalServer) -> None:
    resp = run(server.url, "def broken(:\n    pass\n")
    assert resp.status is sf.RunStatus.Failed
    assert resp.compile_result is None and resp.run_result is not None
    assert resp.run_result.return_code == 1
    assert "SyntaxError" in (resp.run_result.stderr or "")


def test_python_exit_code_is_the_return_code(server: LocalServer) -> None:
    resp = run(server.url, "import sys\nprint('bye')\nsys.exit(3)")
    assert resp.status is sf.RunStatus.Failed
    assert resp.run_result is not None
    assert (resp.run_result.status, resp.run_result.return_code, resp.run_result.stdout) == ("Finished", 3, "bye\n")


def test_output_beyond_a_pipe_buffer_arrives_whole(server: LocalServer) -> None:
    # SandboxFusion reads its pipes only after the exit, so there a program writing more than
    # ~192 KiB blocks until its timeout; execbox drains the output as it comes.
    code = "import sys\nsys.stdout.write('x' * 300_000)\nsys.stderr.write('y' * 200_000)"
    resp = run(server.url, code, run_timeout=5)
    assert resp.status is sf.RunStatus.Success, resp.run_result and resp.run_result.status
    assert resp.run_result is not None
    assert resp.run_result.stdout == "x" * 300_000 and resp.run_result.stderr == "y" * 200_000


def test_output_over_the_limit_fails_the_run_and_says_why(server: LocalServer) -> None:
    resp = run(server.url, "while True:\n    print('x' * 10_000)", run_timeout=10)
    # No new status (the client would refuse it): a Failed run that Finished with a non-zero code.
    assert resp.status is sf.RunStatus.Failed, resp
    assert resp.run_result is not None and resp.run_result.status is sf.CommandRunStatus.Finished
    assert resp.run_result.return_code not in (0, None)
    assert "output limit" in (resp.run_result.stderr or "")


def test_python_timeout_keeps_the_output_written_so_far(server: LocalServer) -> None:
    code = (
        "import sys, time\n"
        "print('partial', flush=True)\n"
        "sys.stderr.write('Sleeping...\\n'); sys.stderr.flush()\n"
        "time.sleep(30)\n"
        "print('never')\n"
    )
    resp = run(server.url, code, run_timeout=1)
    assert resp.status is sf.RunStatus.Failed and resp.message == ""
    assert resp.run_result is not None
    assert resp.run_result.status is sf.CommandRunStatus.TimeLimitExceeded
    assert resp.run_result.return_code is None
    assert resp.run_result.stdout == "partial\n"
    assert resp.run_result.stderr == "Sleeping...\n"
    assert summary(resp) == "RunTimeout"


@pytest.mark.parametrize(("stdin", "seen"), [(None, "''"), ("", "''"), ("hello\nworld", "'hello\\nworld'")])
def test_stdin_is_given_whole_and_closed(server: LocalServer, stdin: str | None, seen: str) -> None:
    # None and "" both mean an empty, closed stdin: a read returns at once instead of blocking.
    resp = run(server.url, "import sys\nprint(repr(sys.stdin.read()))", stdin=stdin, run_timeout=5)
    assert resp.status is sf.RunStatus.Success, resp
    assert resp.run_result is not None and resp.run_result.stdout == seen + "\n"


def test_files_are_written_before_and_fetched_after_the_run(server: LocalServer) -> None:
    code = (
        "data = open('data/in.txt').read()\n"
        "open('out.txt', 'w').write(data.upper())\n"
        "open('/tmp/side.txt', 'w').write('side')\n"
        "print(open('/tmp/given.txt').read())\n"
    )
    resp = run(
        server.url,
        code,
        files={"data/in.txt": b64("abc"), "/tmp/given.txt": b64("absolute")},
        fetch_files=["out.txt", "/tmp/side.txt", "missing.txt"],
    )
    assert resp.status is sf.RunStatus.Success, resp
    assert resp.run_result is not None and resp.run_result.stdout == "absolute\n"
    # Keyed by the exact request string; a file that does not exist is left out.
    assert {k: unb64(v) for k, v in resp.files.items()} == {"out.txt": "ABC", "/tmp/side.txt": "side"}


def test_files_are_fetched_after_a_timeout_too(server: LocalServer) -> None:
    code = "import time\nopen('progress.txt', 'w').write('halfway')\ntime.sleep(30)\n"
    resp = run(server.url, code, run_timeout=1, fetch_files=["progress.txt"])
    assert resp.run_result is not None and resp.run_result.status is sf.CommandRunStatus.TimeLimitExceeded
    assert {k: unb64(v) for k, v in resp.files.items()} == {"progress.txt": "halfway"}


def test_memory_limit_fails_a_program_over_it_and_lets_one_under_it_run(server: LocalServer) -> None:
    over = post_run_code(
        server.url, {"code": "x = bytearray(600 * 1024 * 1024)\nprint('allocated')", "memory_limit_MB": 256}
    )
    # SandboxFusion has no memory status: a program over its limit is a Failed run that Finished.
    assert over.status is sf.RunStatus.Failed, over
    assert over.run_result is not None and over.run_result.status is sf.CommandRunStatus.Finished
    assert over.run_result.return_code not in (0, None)
    assert "allocated" not in (over.run_result.stdout or "")
    under = post_run_code(
        server.url, {"code": "x = bytearray(32 * 1024 * 1024)\nprint('allocated')", "memory_limit_MB": 256}
    )
    assert under.status is sf.RunStatus.Success, under
    assert under.run_result is not None and under.run_result.stdout == "allocated\n"


def test_a_memory_limit_above_the_servers_maximum_is_capped_not_refused(server: LocalServer) -> None:
    resp = post_run_code(server.url, {"code": "print('ok')", "language": "python", "memory_limit_MB": 1_000_000})
    assert resp.status is sf.RunStatus.Success, resp


def test_missing_language_means_python(server: LocalServer) -> None:
    # Some callers (tinker-cookbook's simplest form) send only the code.
    resp = post_run_code(server.url, {"code": "import sys\nprint(sys.version_info[0])"})
    assert resp.status is sf.RunStatus.Success, resp
    assert resp.run_result is not None and resp.run_result.stdout == "3\n"


@pytest.mark.parametrize("language", ["rust", "nodejs", "cobol"])
def test_unsupported_language_is_a_sandbox_error_listing_the_supported_ones(server: LocalServer, language: str) -> None:
    resp = post_run_code(server.url, {"code": "print(1)", "language": language})
    assert resp.status is sf.RunStatus.SandboxError
    assert resp.compile_result is None and resp.run_result is None
    assert language in resp.message
    assert "python" in resp.message and "cpp" in resp.message
    # The client treats SandboxError as a failure of the sandbox: it raises (after its retries).
    with pytest.raises(Exception, match="Sandbox responded with error"):
        sf.run_code(sf.RunCodeRequest(code="print(1)", language="rust"), endpoint=server.url, max_attempts=1)


@pytest.mark.parametrize(
    "body",
    [
        b'{"language": "python"}',  # no code
        b'{"code": "print(1)", "run_timeout": "soon"}',
        b'{"code": 42, "language": "python"}',
        b"{not json",
        b'["print(1)"]',
    ],
)
def test_malformed_request_is_422_in_the_service_envelope(server: LocalServer, body: bytes) -> None:
    r = httpx.post(f"{server.url}/run_code", content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["message"]


# ---------------------------------------------------------------- /run_code, C++

CPP_SUM = """
#include <iostream>
int main() {
    long long a = 0, b = 0, total = 0;
    while (std::cin >> a) total += a;
    std::cout << total << std::endl;
    return 0;
}
"""


def test_cpp_success_reports_both_stages(server: LocalServer) -> None:
    resp = run(server.url, CPP_SUM, "cpp", stdin="1 2 3\n4")
    assert resp.status is sf.RunStatus.Success and resp.message == ""
    assert resp.compile_result is not None
    assert resp.compile_result.status is sf.CommandRunStatus.Finished and resp.compile_result.return_code == 0
    assert resp.run_result is not None
    assert resp.run_result.status is sf.CommandRunStatus.Finished and resp.run_result.return_code == 0
    assert resp.run_result.stdout == "10\n"
    assert summary(resp) == "Success"


def test_cpp_is_cpp17(server: LocalServer) -> None:
    code = (
        "#include <iostream>\n#include <optional>\n#include <string_view>\n"
        'int main() { std::optional<int> x = 41; if (auto y = *x + 1; y == 42) std::cout << std::string_view{"ok"}; }'
    )
    resp = run(server.url, code, "cpp")
    assert resp.status is sf.RunStatus.Success, resp
    assert resp.run_result is not None and resp.run_result.stdout == "ok"


def test_cpp_compile_error_skips_the_run(server: LocalServer) -> None:
    resp = run(server.url, "\na=b\n", "cpp")
    assert resp.status is sf.RunStatus.Failed and resp.message == ""
    assert resp.compile_result is not None
    assert resp.compile_result.status is sf.CommandRunStatus.Finished
    assert resp.compile_result.return_code not in (0, None)
    assert "error" in (resp.compile_result.stderr or "")
    assert resp.run_result is None
    assert summary(resp) == "CompileFailed"


def test_cpp_compile_timeout_skips_the_run(server: LocalServer, verl: ModuleType, verl_url: str) -> None:
    # Each static_assert makes g++ evaluate tens of millions of constexpr steps (seconds each):
    # sixteen of them cannot compile within a second on any machine.
    code = (
        "template <int N> constexpr long spin() { long s = N;"
        " for (long i = 0; i < 200000; ++i) for (long j = 0; j < 200000; ++j) s += i ^ j; return s; }\n"
        + "".join(f"static_assert(spin<{n}>() != 1);\n" for n in range(16))
        + "int main() { return 0; }\n"
    )
    resp = run(server.url, code, "cpp", compile_timeout=1)
    assert resp.status is sf.RunStatus.Failed and resp.message == "", resp
    assert resp.compile_result is not None
    assert resp.compile_result.status is sf.CommandRunStatus.TimeLimitExceeded
    assert resp.compile_result.return_code is None
    assert resp.run_result is None
    assert summary(resp) == "CompileTimeout"
    results, meta = verl.check_correctness(verl_url, {"inputs": [""], "outputs": [""]}, code, timeout=1, language="cpp")
    assert results == [-4] and meta[0]["status"] == "compile_timeout", meta


@pytest.mark.parametrize(
    ("body", "return_code"),
    [
        ('std::cout << "bye" << std::endl; return 3;', 3),
        ('std::cout << "bye" << std::endl; std::abort();', -6),  # a signal is a negative return code
        ('std::cout << "bye" << std::endl; std::raise(SIGSEGV);', -11),
    ],
)
def test_cpp_runtime_error_is_a_failed_run_with_its_return_code(
    server: LocalServer, body: str, return_code: int
) -> None:
    code = "#include <iostream>\n#include <csignal>\n#include <cstdlib>\nint main() { " + body + " }"
    resp = run(server.url, code, "cpp")
    assert resp.status is sf.RunStatus.Failed and resp.message == "", resp
    assert resp.compile_result is not None and resp.compile_result.return_code == 0
    assert resp.run_result is not None
    assert resp.run_result.status is sf.CommandRunStatus.Finished
    assert resp.run_result.return_code == return_code
    assert resp.run_result.stdout == "bye\n"
    assert summary(resp) == "RunFailed"


def test_cpp_timeout_keeps_the_output_written_so_far(server: LocalServer) -> None:
    code = (
        "#include <iostream>\n"
        'int main() { std::cout << "partial" << std::endl; volatile unsigned long n = 0; for (;;) ++n; }'
    )
    resp = run(server.url, code, "cpp", run_timeout=1)
    assert resp.status is sf.RunStatus.Failed
    assert resp.compile_result is not None and resp.compile_result.return_code == 0
    assert resp.run_result is not None
    assert resp.run_result.status is sf.CommandRunStatus.TimeLimitExceeded
    assert resp.run_result.return_code is None
    assert resp.run_result.stdout == "partial\n"
    assert summary(resp) == "RunTimeout"


def test_cpp_files_in_and_out(server: LocalServer) -> None:
    code = (
        "#include <fstream>\n#include <string>\n"
        'int main() { std::ifstream in("in.txt"); std::string s; in >> s;'
        ' std::ofstream("out.txt") << s << s; return 0; }'
    )
    resp = run(server.url, code, "cpp", files={"in.txt": b64("ab")}, fetch_files=["out.txt"])
    assert resp.status is sf.RunStatus.Success, resp
    assert {k: unb64(v) for k, v in resp.files.items()} == {"out.txt": "abab"}


def test_cpp_memory_limit(server: LocalServer) -> None:
    code = (
        "#include <vector>\n#include <iostream>\n"
        'int main() { std::vector<char> v(600u << 20, 1); std::cout << "allocated " << int(v.back()); }'
    )
    over = post_run_code(server.url, {"code": code, "language": "cpp", "memory_limit_MB": 256})
    assert over.status is sf.RunStatus.Failed, over
    assert over.run_result is not None and over.run_result.status is sf.CommandRunStatus.Finished
    assert over.run_result.return_code not in (0, None)
    assert "allocated" not in (over.run_result.stdout or "")


async def test_cpp_same_program_concurrently_through_the_async_client(server: LocalServer) -> None:
    # verl's pattern: one program, one request per test case, all at once (the compile is shared).
    import asyncio

    cases = [(f"{i} {i + 1}", f"{2 * i + 1}\n") for i in range(8)]
    replies = await asyncio.gather(
        *(
            sf.run_code_async(
                sf.RunCodeRequest(code=CPP_SUM, language="cpp", stdin=stdin),
                endpoint=server.url,
                max_attempts=1,
                client_timeout=120,
            )
            for stdin, _ in cases
        )
    )
    for resp, (_, expected) in zip(replies, cases, strict=True):
        assert resp.status is sf.RunStatus.Success, resp
        assert resp.compile_result is not None and resp.compile_result.return_code == 0
        assert resp.run_result is not None and resp.run_result.stdout == expected


# ---------------------------------------------------------------- verl's own caller


def test_verl_scores_correct_output_true(verl: ModuleType, verl_url: str) -> None:
    code = "import sys\ndata = sys.stdin.read()\nprint({'in1': 'out1', 'in2': 'out2'}.get(data, 'unexpected'))\n"
    results, meta = verl.check_correctness(verl_url, {"inputs": ["in1", "in2"], "outputs": ["out1", "out2"]}, code)
    assert results == [True, True], meta
    assert [m["status"] for m in meta] == ["success", "success"]
    assert meta[0]["stdout"] == "out1\n"


def test_verl_scores_wrong_output_false(verl: ModuleType, verl_url: str) -> None:
    results, meta = verl.check_correctness(verl_url, {"inputs": ["x"], "outputs": ["right"]}, "print('wrong')")
    assert results == [False], meta
    assert meta[0]["status"] == "wrong_answer" and meta[0]["stdout"] == "wrong\n"


def test_verl_scores_cpp_compile_error_minus_4_for_every_case(verl: ModuleType, verl_url: str) -> None:
    in_outs = {"inputs": ["1", "2"], "outputs": ["1", "2"]}
    results, meta = verl.check_correctness(verl_url, in_outs, "\na=b\n", language="cpp")
    assert results == [-4, -4], meta
    assert meta[0]["status"] == "compile_error"


def test_verl_scores_cpp_by_stdin_and_stdout(verl: ModuleType, verl_url: str) -> None:
    in_outs = {"inputs": ["1 2", "3 4", "10 -5", ""], "outputs": ["3", "7", "5", "0"]}
    results, meta = verl.check_correctness(verl_url, in_outs, CPP_SUM, language="cpp")
    assert results == [True, True, True, True], meta


def test_verl_scores_runtime_error_minus_2(verl: ModuleType, verl_url: str) -> None:
    results, meta = verl.check_correctness(verl_url, {"inputs": ["x"], "outputs": ["y"]}, "raise ValueError('no')")
    assert results == [-2], meta
    assert meta[0]["status"] == "runtime_error"


def test_verl_scores_timeout_minus_3(verl: ModuleType, verl_url: str) -> None:
    code = "import time\ntime.sleep(30)\nprint('late')"
    results, meta = verl.check_correctness(verl_url, {"inputs": ["x"], "outputs": ["late"]}, code, timeout=2)
    assert results == [-3], meta
    assert meta[0]["status"] == "timeout"


def test_verl_none_and_empty_stdin_read_as_end_of_input(verl: ModuleType, verl_url: str) -> None:
    code = "import sys\nprint(f'got {sys.stdin.readline().strip()!r}')"
    in_outs = {"inputs": [None, "", "hello"], "outputs": ["got ''", "got ''", "got 'hello'"]}
    results, meta = verl.check_correctness(verl_url, in_outs, code, timeout=5)
    assert results == [True, True, True], meta


def test_verl_fn_name_calls_the_solution_method(verl: ModuleType, verl_url: str) -> None:
    code = (
        "class Solution:\n"
        "    def pairSums(self, nums: List[int], k: int) -> List[int]:\n"
        "        return [a + k for a in nums]\n"
    )
    in_outs = {"fn_name": "pairSums", "inputs": ["[1, 2, 3]\n10", "[]\n1"], "outputs": ["[11, 12, 13]", "[]"]}
    results, meta = verl.check_correctness(verl_url, in_outs, code, timeout=5)
    assert results == [True, True], meta


def test_verl_assert_cases_pass_and_a_failed_assert_is_a_runtime_error(verl: ModuleType, verl_url: str) -> None:
    code = "def double(x):\n    return 2 * x\n"
    asserts = ["assert double(2) == 4", "assert double(0) == 0", "assert double(3) == 7"]
    in_outs = {"assert_case": asserts, "inputs": ["", "", ""], "outputs": [None, None, None]}
    results, meta = verl.check_correctness(verl_url, in_outs, code, timeout=5)
    assert results == [True, True, -2], meta


def test_verl_compute_score_of_a_fenced_completion(verl: ModuleType, verl_url: str) -> None:
    completion = "Here you go:\n```python\nn = int(input())\nprint(n * n)\n```"
    tests = {"inputs": ["3", "4", "5"], "outputs": ["9", "16", "26"]}
    score, _ = verl.compute_score(verl_url, None, 1024, completion, tests, continuous=True)
    assert score == pytest.approx(2 / 3)


# ---------------------------------------------------------------- /run_jupyter and /v1/ping


def jupyter(url: str, cells: list[str], **fields: Any) -> sf.RunJupyterResponse:
    request = sf.RunJupyterRequest(cells=cells, **fields)
    return sf.run_jupyter(request, endpoint=url, max_attempts=1, client_timeout=120)


def test_jupyter_cells_share_state_and_show_values(server: LocalServer) -> None:
    resp = jupyter(server.url, ["a = 'hello'", "a", "print(a)", "import sys\nsys.stderr.write('err\\n')"])
    assert resp.status is sf.RunStatus.Success and resp.message == ""
    assert len(resp.cells) == 4
    assert resp.cells[0].stdout == "" and resp.cells[0].display == [] and resp.cells[0].error == []
    assert resp.cells[1].display[0]["text/plain"] == "'hello'"
    assert resp.cells[2].stdout == "hello\n"
    assert resp.cells[3].stderr == "err\n"


def test_jupyter_a_failing_cell_does_not_stop_the_later_ones(server: LocalServer) -> None:
    resp = jupyter(server.url, ["a = 1", "assert False, 'nope'", "print(a + 1)"])
    assert resp.status is sf.RunStatus.Success, resp
    assert resp.cells[1].error[0]["ename"] == "AssertionError"
    assert resp.cells[1].error[0]["evalue"] == "nope"
    assert resp.cells[2].stdout == "2\n" and resp.cells[2].error == []


def test_jupyter_plot_is_display_data(server: LocalServer) -> None:
    cells = ["import matplotlib.pyplot as plt", "plt.plot([1, 2, 3], [2, 3, 5])\nplt.show()"]
    resp = jupyter(server.url, cells)
    assert resp.status is sf.RunStatus.Success, resp
    png = next(d["image/png"] for d in resp.cells[1].display if "image/png" in d)
    assert base64.b64decode(png).startswith(b"\x89PNG")


def test_jupyter_files_in_and_out(server: LocalServer) -> None:
    cells = ["text = open('in.txt').read()", "open('out.txt', 'w').write(text[::-1])"]
    resp = jupyter(server.url, cells, files={"in.txt": b64("abc")}, fetch_files=["out.txt", "nope.txt"])
    assert resp.status is sf.RunStatus.Success, resp
    assert {k: unb64(v) for k, v in resp.files.items()} == {"out.txt": "cba"}


def test_jupyter_timeout_is_failed_and_says_time_limit(server: LocalServer) -> None:
    resp = jupyter(server.url, ["print('started', flush=True)", "import time\ntime.sleep(60)"], total_timeout=2)
    assert resp.status is sf.RunStatus.Failed, resp
    assert resp.driver is not None and resp.driver.status is sf.CommandRunStatus.TimeLimitExceeded


def test_ping_answers_pong(server: LocalServer) -> None:
    r = httpx.get(f"{server.url}/v1/ping", timeout=30)
    assert r.status_code == 200 and r.json() == "pong"


# ---------------------------------------------------------------- overload: 504 with Retry-After

OVERLOAD_QUEUE_S = 0.5


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A server with a single batch worker and a short queue: one long job makes the next request wait."""
    settings = {
        "min_ready": "0",
        "max_total": "2",
        "batch_workers": "1",
        "batch_min_workers": "1",
        "sandboxfusion_queue_s": str(OVERLOAD_QUEUE_S),
        "shutdown_grace_s": "1",
    }
    server = start_server(tmp_path_factory.mktemp("sf-overload") / "server.log", settings)
    yield server
    server.stop()


def overload_count(url: str) -> float:
    """The /metrics counter of /run_code requests answered 504 (no worker within their budget)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    samples = re.findall(r'^execbox_queue_timeouts_total\{route="/run_code"\} ([0-9.e+]+)$', text, re.M)
    return sum(float(s) for s in samples)  # no sample yet: none so far


def hold(url: str, stop: threading.Event) -> None:
    """Keep the only worker busy: resend the long job whenever it was itself turned away."""
    body = {"code": "import time\ntime.sleep(60)", "language": "python", "run_timeout": 60}
    while not stop.is_set():
        try:
            r = httpx.post(f"{url}/run_code", json=body, timeout=90)
        except httpx.HTTPError:
            return  # the server is being stopped under it
        if r.status_code != 504:
            return


def test_a_request_that_cannot_start_in_time_is_answered_504_with_retry_after(one_worker: LocalServer) -> None:
    before = overload_count(one_worker.url)
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        holder: Future[None] = pool.submit(hold, one_worker.url, stop)
        try:
            # The holder may itself wait while a probe runs; each short probe either runs or is turned
            # away, and once the holder runs every probe is turned away: the outcome is certain.
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, "no 504 while the only worker was busy"
                assert not holder.done(), holder.result()
                probe = httpx.post(f"{one_worker.url}/run_code", json={"code": "print(1)"}, timeout=30)
                if probe.status_code == 504:
                    break
                assert probe.status_code == 200, probe.text
            assert int(probe.headers["Retry-After"]) >= 1
            assert overload_count(one_worker.url) >= before + 1
        finally:
            stop.set()
            one_worker.stop()  # ends the holder's 60 s job now


# ---------------------------------------------------------------- the keyless listener


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, str]]:
    """API keys on; the SandboxFusion listener acts as key-sf, whose share is one worker."""
    port = free_port()
    settings = {
        "api_keys": "key-sf,key-other",
        "sandboxfusion_port": str(port),
        "sandboxfusion_key": "key-sf",
        "key_max_batch_workers": "1",
        "batch_workers": "2",
        "batch_min_workers": "0",
        "min_ready": "0",
        "max_total": "2",
        "sandboxfusion_queue_s": str(OVERLOAD_QUEUE_S),
        "shutdown_grace_s": "1",
    }
    server = start_server(tmp_path_factory.mktemp("sf-keyed") / "server.log", settings)
    yield server, f"http://127.0.0.1:{port}"
    server.stop()


def test_with_keys_the_main_port_refuses_keyless_run_code(keyed: tuple[LocalServer, str]) -> None:
    main, _ = keyed
    r = httpx.post(f"{main.url}/run_code", json={"code": "print(1)"}, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    with_key = httpx.post(
        f"{main.url}/run_code", json={"code": "print(1)"}, headers={"Authorization": "Bearer key-other"}, timeout=60
    )
    assert with_key.status_code == 200 and sf.RunCodeResponse(**with_key.json()).status is sf.RunStatus.Success


def test_the_keyless_listener_serves_only_the_sandboxfusion_routes(keyed: tuple[LocalServer, str]) -> None:
    _, sf_url = keyed
    resp = run(sf_url, "print('no key needed')")
    assert resp.status is sf.RunStatus.Success
    assert resp.run_result is not None and resp.run_result.stdout == "no key needed\n"
    assert httpx.get(f"{sf_url}/v1/ping", timeout=30).json() == "pong"
    assert httpx.get(f"{sf_url}/v1/sessions", timeout=30).status_code == 404
    assert httpx.post(f"{sf_url}/v1/batch", json={"jobs": [{"code": "1"}]}, timeout=30).status_code == 404


def test_the_keyless_listener_acts_as_its_configured_key(keyed: tuple[LocalServer, str]) -> None:
    main, sf_url = keyed
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        holder: Future[None] = pool.submit(hold, sf_url, stop)
        try:
            # Once the keyless holder runs, key-sf's one worker is taken: key-sf is turned away on
            # either port, while key-other still runs.
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, "the keyless listener never used key-sf's worker"
                assert not holder.done(), holder.result()
                as_sf = httpx.post(
                    f"{main.url}/run_code",
                    json={"code": "print(1)"},
                    headers={"Authorization": "Bearer key-sf"},
                    timeout=30,
                )
                if as_sf.status_code == 504:
                    break
                assert as_sf.status_code == 200, as_sf.text
            assert httpx.post(f"{sf_url}/run_code", json={"code": "print(1)"}, timeout=30).status_code == 504
            other = httpx.post(
                f"{main.url}/run_code",
                json={"code": "print('other')"},
                headers={"Authorization": "Bearer key-other"},
                timeout=60,
            )
            assert other.status_code == 200 and sf.RunCodeResponse(**other.json()).status is sf.RunStatus.Success
        finally:
            stop.set()
            main.stop()
