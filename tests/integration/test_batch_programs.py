"""Program jobs on the real service: C++ beside Python, files in and out, the build cache, and the
line between a verdict on the program and a failure of the service."""

from __future__ import annotations

import base64

import httpx
import pytest

from execbox import Client, JobResult, JobStatus

SUM = "#include <iostream>\nint main(){long a,b; std::cin>>a>>b; std::cout<<a+b<<std::endl; return 0;}\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def one(client: Client, **job: object) -> JobResult:
    [result] = client.batch([job])
    return result


def test_a_cpp_program_compiles_reads_stdin_and_answers(client: Client) -> None:
    result = one(client, code=SUM, language="cpp", stdin="40 2")
    assert result.status is JobStatus.OK and result.stdout == "42\n", result
    assert result.compile is not None and result.compile.status == "ok" and result.compile.exit_code == 0


def test_the_same_source_compiles_once_for_one_key(client: Client) -> None:
    source = SUM.replace("a+b", "a*b")  # a source no other test has built
    first = one(client, code=source, language="cpp", stdin="6 7")
    later = [one(client, code=source, language="cpp", stdin=f"{i} 3") for i in range(3)]
    assert first.compile is not None and not first.compile.cached
    assert [r.stdout for r in later] == ["0\n", "3\n", "6\n"]
    assert all(r.compile is not None and r.compile.cached and r.compile.stderr == "" for r in later), later


def test_a_compile_error_is_a_verdict_with_the_compilers_words_and_nothing_runs(client: Client) -> None:
    result = one(client, code="\na=b\n", language="cpp")
    assert result.status is JobStatus.COMPILE_ERROR and result.status.is_verdict
    assert result.compile is not None and result.compile.status == "error" and result.compile.exit_code == 1
    assert "does not name a type" in result.compile.stderr
    assert result.exit_code is None and result.stdout == ""


def test_a_cpp_segfault_is_crashed_with_its_signal_not_a_service_error(client: Client) -> None:
    result = one(client, code="int main(){volatile int*p=nullptr; return *p;}", language="cpp")
    assert result.status is JobStatus.CRASHED and result.exit_code == -11 and result.signal == "SIGSEGV", result


def test_a_cpp_timeout_keeps_what_the_program_flushed(client: Client) -> None:
    code = '#include <cstdio>\nint main(){printf("partial\\n"); fflush(stdout); for(;;){} }'
    result = one(client, code=code, language="cpp", timeout_s=1)
    assert result.status is JobStatus.TIMEOUT and result.stdout == "partial\n", result
    assert result.compile is not None and result.compile.status == "ok"  # the run timed out, not the build


def test_the_compile_has_its_own_deadline(client: Client) -> None:
    # The whole standard library with -O2: over a second of g++ on any machine, never a tenth.
    code = '#include <bits/stdc++.h>\nint main(){ std::map<int, std::string> m; m[1] = "x"; }\n'
    result = one(client, code=code, language="cpp", compile_timeout_s=0.1, timeout_s=30)
    assert result.status is JobStatus.TIMEOUT, result
    assert result.compile is not None and result.compile.status == "timeout" and result.exit_code is None


def test_a_cpp_program_gets_its_memory_limit(client: Client) -> None:
    code = '#include <vector>\n#include <cstdio>\nint main(){std::vector<char> v(600u<<20, 1); printf("%d", v[7]);}'
    result = one(client, code=code, language="cpp", memory_mb=256)
    # std::bad_alloc -> abort: the program's own failure, as under SandboxFusion's rlimits.
    assert result.status is JobStatus.CRASHED and result.signal == "SIGABRT", result
    assert "bad_alloc" in result.stderr


def test_python_runs_as_python_main_py_would(client: Client) -> None:
    code = "import sys\nprint(__name__, __file__, sys.argv)\nraise SystemExit(3)\n"
    result = one(client, code=code)
    assert result.stdout == "__main__ /home/sandbox/main.py ['/home/sandbox/main.py']\n"
    assert result.status is JobStatus.ERROR and result.exit_code == 3


def test_a_traceback_shows_the_line_of_the_program(client: Client) -> None:
    result = one(client, code="x = 1\nraise ValueError('bad value')\n")
    assert 'File "/home/sandbox/main.py", line 2' in result.stderr and "raise ValueError('bad value')" in result.stderr


@pytest.mark.parametrize("language", ["python", "cpp"])
def test_files_go_in_before_and_come_back_after_even_after_a_timeout(client: Client, language: str) -> None:
    programs = {
        "python": (
            "import os, time\nos.makedirs('out')\n"
            "open('out/result.txt','w').write(open('data/in.txt').read().upper())\n"
            "open('/tmp/side.bin','wb').write(bytes(range(256)))\ntime.sleep(30)\n"
        ),
        "cpp": (
            "#include <fstream>\n#include <string>\n#include <unistd.h>\n"
            'int main(){std::ifstream i("data/in.txt"); std::string s; i>>s; for(auto&c:s) c=toupper(c);'
            ' system("mkdir -p out"); std::ofstream("out/result.txt")<<s; std::ofstream("/tmp/side.bin")<<"side";'
            " sleep(30);}"
        ),
    }
    result = one(
        client,
        code=programs[language],
        language=language,
        timeout_s=3,
        files={"data/in.txt": b64(b"hello")},
        fetch_files=["out/result.txt", "/tmp/side.bin", "never-made.txt"],
    )
    assert result.status is JobStatus.TIMEOUT, result
    assert result.files is not None and set(result.files) == {"out/result.txt", "/tmp/side.bin"}, result.files
    assert base64.b64decode(result.files["out/result.txt"]) == b"HELLO"


def test_files_of_one_job_are_gone_for_the_next(client: Client) -> None:
    first = one(client, code="print(1)", files={"left.txt": b64(b"x")})
    second = one(client, code="import os\nprint(sorted(os.listdir('.')), os.path.exists('/tmp/x'))")
    assert first.ok and second.stdout == "['main.py'] False\n", second


@pytest.mark.parametrize(
    "job",
    [
        {"code": "print(1)", "files": {"../../etc/passwd": b64(b"x")}},
        {"code": "print(1)", "files": {"/etc/passwd": b64(b"x")}},
        {"code": "print(1)", "files": {"ok.txt": "not base64!"}},
        {"code": "print(1)", "fetch_files": ["/proc/1/environ"]},
        {"code": SUM, "language": "cpp", "tests": {"assertions": "assert True"}},
        {"code": "print(1)", "language": "cobol"},
    ],
    ids=["dotdot", "absolute outside", "bad base64", "fetch outside", "tests in cpp", "unknown language"],
)
def test_a_job_the_service_cannot_run_as_asked_is_refused_whole(url: str, job: dict[str, object]) -> None:
    r = httpx.post(f"{url}/v1/batch", json={"jobs": [{"code": "print(0)"}, job]}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("invalid_request", "invalid_limits"), r.text
    assert len(r.json()["error"]["message"]) > 20


def test_a_compiled_program_cannot_reach_the_result_pipe(client: Client) -> None:
    # Whatever descriptors it finds, none is the pipe its verdict travels on: a forged
    # "compile ok" or error record has nowhere to go.
    code = (
        "#include <cstdio>\n#include <unistd.h>\n#include <cstring>\nint main(){int open=0;"
        'for(int fd=3; fd<1024; fd++){ if(write(fd, "{}\\n", 3) >= 0) open++; } printf("%d", open);}'
    )
    result = one(client, code=code, language="cpp")
    assert result.ok and result.stdout == "0", result


def test_jobs_of_one_source_in_flight_together_compile_it_once(client: Client) -> None:
    # verl's shape: one program, one job per test case, all at once. One compile; the others wait
    # for its build instead of each compiling (on a busy machine, past their deadline).
    source = SUM.replace("a+b", "a-b")  # a source no other test has built
    results = client.batch([{"code": source, "language": "cpp", "stdin": f"{i} 1"} for i in range(6)], concurrency=6)
    assert [r.stdout for r in results] == [f"{i - 1}\n" for i in range(6)], results
    assert sum(1 for r in results if r.compile is not None and not r.compile.cached) == 1, [r.compile for r in results]
