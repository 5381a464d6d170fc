"""The batch path against the real service: isolation between jobs, every failure status from a
real program, ordering and ids, worker replacement, test-case mode, hostile code as batch jobs."""

from __future__ import annotations

import json

import httpx
import pytest

from execbox import Client, JobResult, JobStatus


def by_id(results: list[JobResult]) -> dict[str | None, JobResult]:
    return {r.id: r for r in results}


def test_jobs_do_not_see_each_others_files_globals_env_or_processes(client: Client) -> None:
    plant = (
        "import os, subprocess, sys\n"
        "open('planted.txt', 'w').write('x')\n"
        "open('/tmp/jobs-planted', 'w').write('x')\n"
        "os.environ['PLANTED'] = '1'\n"
        "import builtins; builtins.PLANTED = True\n"
        "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(60)'])\n"
        "PLANTED_GLOBAL = 1\n"
    )
    check = (
        "import os, builtins\n"
        "def uid(pid):\n"
        "    try:\n"
        "        return next(l.split()[1] for l in open(f'/proc/{pid}/status') if l.startswith('Uid:'))\n"
        "    except (OSError, StopIteration):\n"
        "        return None\n"
        "me, uid_ = str(os.getpid()), str(os.getuid())\n"
        "procs = [p for p in os.listdir('/proc') if p.isdigit() and p != me and uid(p) == uid_]\n"
        # The job's own source (main.py, as `python main.py` has) aside, the directory is empty.
        "print([f for f in os.listdir('.') if f != os.path.basename(__file__)], os.path.exists('/tmp/jobs-planted'),\n"
        "      'PLANTED' in os.environ,\n"
        "      hasattr(builtins, 'PLANTED'), 'PLANTED_GLOBAL' in globals(), len(procs))\n"
    )
    results = client.batch([{"id": "plant", "code": plant}, {"id": "check", "code": check}], concurrency=1)
    r = by_id(results)
    assert r["plant"].ok, r["plant"]
    # No file (not even in /tmp), no variable, no process of the sandbox user but the job itself.
    out = r["check"].stdout.strip()
    assert out == "[] False False False False 0", out


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("while True: pass", JobStatus.TIMEOUT),
        ("x = bytearray(3 * 1024**3)", JobStatus.OUT_OF_MEMORY),
        ("while True: print('x' * 10000)", JobStatus.OUTPUT_LIMIT),
        ("import os; os.abort()", JobStatus.CRASHED),
        ("raise ValueError('no')", JobStatus.ERROR),
        ("import sys; sys.exit(3)", JobStatus.ERROR),
        ("print('fine')", JobStatus.OK),
    ],
)
def test_each_status_comes_from_a_real_program(client: Client, code: str, status: JobStatus) -> None:
    [result] = client.batch([{"code": code, "timeout_s": 2, "memory_mb": 256, "max_output_bytes": 100_000}])
    assert result.status is status, result
    if status is JobStatus.TIMEOUT:
        assert 2000 <= result.wall_ms < 4000
    if status is JobStatus.CRASHED:
        assert result.signal == "SIGABRT"
    if status is JobStatus.OUTPUT_LIMIT:
        assert result.truncated and len(result.stdout) <= 60_000
    if code.startswith("import sys"):
        assert result.exit_code == 3


def test_results_stream_in_completion_order_and_carry_index_and_id(url: str, client: Client) -> None:
    # Two workers already up: otherwise "error" waits for a worker start, which can take
    # longer than "slow" on a busy machine.
    client.batch(["import time; time.sleep(0.5)"] * 2, concurrency=2)
    jobs = [
        {"id": "slow", "code": "import time; time.sleep(2.0); print('slow')"},
        {"id": "fast", "code": "print('fast')"},
        {"id": "error", "code": "1/0"},
    ]
    with httpx.stream("POST", f"{url}/v1/batch/stream", json={"jobs": jobs}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    results, summary = lines[:-1], lines[-1]
    assert summary["type"] == "summary" and summary["total"] == 3
    assert summary["by_status"] == {"ok": 2, "error": 1}
    assert {(x["index"], x["id"]) for x in results} == {(0, "slow"), (1, "fast"), (2, "error")}
    order = [x["id"] for x in results]
    assert order.index("error") < order.index("slow")  # completion order, not input order


def test_non_streaming_batch_returns_results_in_input_order(url: str) -> None:
    body = {"jobs": [{"code": f"import time; time.sleep({0.3 - i * 0.1}); print({i})"} for i in range(3)]}
    data = httpx.post(f"{url}/v1/batch", json=body, timeout=60).json()
    assert [x["stdout"] for x in data["results"]] == ["0\n", "1\n", "2\n"]


def test_a_fork_bomb_is_contained_and_the_next_job_runs_normally(client: Client) -> None:
    results = client.batch(
        [
            {"id": "bomb", "code": "import os\nwhile True:\n    os.fork()", "timeout_s": 3},
            {"id": "after", "code": "print('after')"},
        ],
        concurrency=1,
    )
    r = by_id(results)
    assert r["bomb"].status in (JobStatus.TIMEOUT, JobStatus.ERROR, JobStatus.CRASHED, JobStatus.OUT_OF_MEMORY)
    assert r["after"].ok and r["after"].stdout == "after\n"


def test_a_job_that_kills_its_worker_is_reported_and_the_worker_replaced(client: Client) -> None:
    # The fork server runs as another user than the job: the job cannot signal it. A job
    # that exhausts the worker's whole memory can take the worker down with it; either
    # way every job gets a result and later jobs run.
    results = client.batch(
        [
            {"id": "kill", "code": "import os; os.kill(1, 9); os.kill(os.getppid(), 9)"},
            {"id": "next", "code": "print('next')"},
        ],
        concurrency=1,
    )
    r = by_id(results)
    assert r["kill"].status is JobStatus.ERROR and r["kill"].error.name == "PermissionError"
    assert r["next"].stdout == "next\n"


def test_test_case_mode_reports_each_case_with_actual_values(client: Client) -> None:
    [result] = client.batch(
        [
            {
                "code": "def add(a, b):\n    return a + b if a < 5 else a - b\n",
                "tests": {
                    "entry_point": "add",
                    "cases": [
                        {"input": [1, 2], "expected": 3},
                        {"input": [7, 1], "expected": 8},
                        {"input": [0.1, 0.2], "expected": 0.3},
                    ],
                    "stop_on_first_failure": False,
                },
            }
        ]
    )
    assert result.ok and not result.passed
    outcomes = [(t.index, t.passed, t.actual) for t in result.tests or []]
    assert outcomes == [(0, True, 3), (1, False, 6), (2, True, pytest.approx(0.3))]


def test_test_case_mode_stops_at_first_failure_and_times_out_per_test(client: Client) -> None:
    code = "def f(x):\n    while x > 5:\n        pass\n    return x\n"
    cases = [{"input": [1], "expected": 1}, {"input": [9], "expected": 9}, {"input": [2], "expected": 2}]
    [result] = client.batch([{"code": code, "tests": {"entry_point": "f", "cases": cases, "per_test_timeout_s": 0.5}}])
    assert [t.status for t in result.tests or []] == ["passed", "timeout", "not_run"]


def test_assertion_mode_runs_humaneval_style_checks(client: Client) -> None:
    code = "def inc(x):\n    return x + 1\n"
    good = "def check(candidate):\n    assert candidate(1) == 2\n"
    bad = "def check(candidate):\n    assert candidate(1) == 3, 'off by one'\n"
    results = client.batch(
        [
            {"id": "good", "code": code, "tests": {"entry_point": "inc", "assertions": good}},
            {"id": "bad", "code": code, "tests": {"entry_point": "inc", "assertions": bad}},
        ]
    )
    r = by_id(results)
    assert r["good"].passed
    assert not r["bad"].passed and r["bad"].tests[0].error.value == "off by one"


def test_stdin_is_fed_to_the_program(client: Client) -> None:
    [result] = client.batch([{"code": "a, b = map(int, input().split()); print(a + b)", "stdin": "2 40\n"}])
    assert result.stdout == "42\n"


def test_map_uses_the_batch_path_and_keeps_input_order(client: Client) -> None:
    results = client.map(["print(1)", "1/0", "2 + 3"], timeout_s=5)
    assert [r.status.value for r in results] == ["ok", "error", "ok"]
    assert results[2].text == "5" and results[1].error.name == "ZeroDivisionError"


HOSTILE_AS_JOBS = [
    ("loop swallowing interrupts", "while True:\n    try:\n        while True: pass\n    except BaseException: pass"),
    ("sigint ignored", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"),
    ("segfault", "import ctypes\nctypes.string_at(0)"),
    ("memory bomb", "''.join(__import__('itertools').repeat('a'))"),
    ("disk fill", "f = open('big', 'wb')\nwhile True:\n    f.write(b'0' * 2**20)"),
    ("fd exhaustion", "import os\nfds = [os.open('/dev/null', os.O_RDONLY) for _ in range(10**6)]"),
    ("no interface but loopback", "import os\nassert os.listdir('/sys/class/net') != ['lo'], 'isolated'"),
    ("stdin", "input()"),
]


@pytest.mark.parametrize(("name", "code"), HOSTILE_AS_JOBS, ids=[n for n, _ in HOSTILE_AS_JOBS])
def test_hostile_code_as_a_batch_job_is_contained(client: Client, name: str, code: str) -> None:
    [result] = client.batch([{"code": code, "timeout_s": 3, "memory_mb": 256}])
    assert result.status is not JobStatus.OK, result
    assert result.wall_ms < 8000
    [after] = client.batch(["print('still fine')"])
    assert after.stdout == "still fine\n"


# ------------------------------------------------------------------ the harness must finish

CASES = [{"input": [1], "expected": 2}, {"input": [2], "expected": 3}, {"input": [3], "expected": 4}]
FORGE = (
    "import os\n"
    "for fd in range(3, 64):\n"
    "    for i in range(3):\n"
    '        line = \'{"kind": "test", "index": %d, "passed": true, "status": "passed", "actual": %d}\\n\'\n'
    "        try:\n"
    "            os.write(fd, (line % (i, i + 2)).encode())\n"
    "        except OSError:\n"
    "            pass\n"
)
EARLY_EXITS = {
    "exit at the top": ("import os\nos._exit(0)\ndef inc(x):\n    return x + 1\n", CASES),
    "exit inside the function": (
        "import os\ndef inc(x):\n    if x == 2:\n        os._exit(0)\n    return x + 1\n",
        CASES,
    ),
    "forged outcomes, then exit": (FORGE + "os._exit(0)\n", CASES),
    "forged outcomes from the function": (
        "def inc(x):\n" + "".join("    " + line + "\n" for line in FORGE.splitlines()) + "    os._exit(0)\n",
        CASES,
    ),
    "assertions, exit at the top": ("import os\nos._exit(0)\ndef inc(x):\n    return x + 1\n", None),
    "assertions, exit inside the function": ("import os\ndef inc(x):\n    os._exit(0)\n", None),
}


@pytest.mark.parametrize("name", list(EARLY_EXITS))
def test_a_solution_that_exits_before_its_tests_finish_never_passes(client: Client, name: str) -> None:
    code, cases = EARLY_EXITS[name]
    tests: dict[str, object]
    if cases is None:
        tests = {"entry_point": "inc", "assertions": "def check(candidate):\n    assert candidate(1) == 2\n"}
    else:
        tests = {"entry_point": "inc", "cases": cases, "stop_on_first_failure": False}
    [result] = client.batch([{"code": code, "tests": tests}])
    assert result.status is JobStatus.ERROR, result
    assert not result.passed
    assert result.message and "test" in result.message, result.message
    expected_count = len(cases) if cases is not None else 1
    assert result.tests is not None and len(result.tests) == expected_count, result.tests
    assert [t.index for t in result.tests] == list(range(expected_count))
    if name == "exit inside the function":
        assert [t.status for t in result.tests] == ["passed", "not_run", "not_run"]
    else:
        assert not any(t.passed for t in result.tests)


def test_cases_after_the_first_failure_are_reported_as_not_run(client: Client) -> None:
    code = "def inc(x):\n    return x + 1 if x != 2 else 0\n"
    [result] = client.batch([{"code": code, "tests": {"entry_point": "inc", "cases": CASES}}])
    assert result.ok and not result.passed, result
    assert [(t.index, t.status, t.passed) for t in result.tests or []] == [
        (0, "passed", True),
        (1, "failed", False),
        (2, "not_run", False),
    ]
    assert [t.input for t in result.tests or []] == [[1], [2], [3]]
    assert [t.expected for t in result.tests or []] == [2, 3, 4]


def test_a_solution_never_sees_the_expected_values(client: Client) -> None:
    # Reading them from the harness's frames was enough to pass every test once.
    code = (
        "import gc, sys\n"
        "def inc(x):\n"
        "    f = sys._getframe(1)\n"
        "    while f is not None:\n"
        "        for v in f.f_locals.values():\n"
        "            if isinstance(v, dict) and 'expected' in v:\n"
        "                return v['expected']\n"
        "        f = f.f_back\n"
        "    for o in gc.get_objects():\n"
        "        if isinstance(o, dict) and 'expected' in o and o.get('input') == [x]:\n"
        "            return o['expected']\n"
        "    return None\n"
    )
    [result] = client.batch([{"code": code, "tests": {"entry_point": "inc", "cases": CASES}}])
    assert not result.passed, result
    assert result.tests is not None and result.tests[0].actual is None


# ------------------------------------------------------------------ every byte counts


def content_bytes(result: JobResult) -> int:
    """Bytes of everything a program (or its test cases) put into the result."""

    def size(value: object) -> int:
        if value is None:
            return 0
        if isinstance(value, str):
            return len(value.encode())
        return len(json.dumps(value, ensure_ascii=False).encode())

    total = size(result.stdout) + size(result.stderr) + size(result.value)
    errors = [result.error] + [t.error for t in result.tests or []]
    for error in errors:
        if error is not None:
            total += size(error.name) + size(error.value) + sum(size(line) for line in error.traceback)
    for t in result.tests or []:
        total += size(t.input) + size(t.expected) + size(t.actual)
    return total


BIG = 200_000
OVER_THE_CAP = {
    "value": f"'v' * {BIG}",
    "error value": f"raise ValueError('e' * {BIG})",
    "error name": f"raise type('N' * {BIG}, (Exception,), {{}})()",
    # 40 frames, each named by a 1000-character function name (source lines of "<job>" are not shown).
    "traceback lines": "".join(f"def f{i}_{'t' * 1000}():\n    f{i + 1}_{'t' * 1000}()\n" for i in range(40))
    + f"def f40_{'t' * 1000}():\n    1/0\nf0_{'t' * 1000}()",
    # A SyntaxError's traceback quotes the offending line.
    "long source line in traceback": "x = (" + "1, " * 20_000 + ") )",
    # Each part under the cap, together over it (and under the hard stop at 8x).
    "everything at once": (
        "import sys\nprint('o' * 1500)\nprint('e' * 900, file=sys.stderr)\nraise ValueError('v' * 3000)"
    ),
}


@pytest.mark.parametrize("name", list(OVER_THE_CAP))
def test_every_field_of_a_program_result_counts_against_max_output_bytes(client: Client, name: str) -> None:
    limit = 4096
    [result] = client.batch([{"code": OVER_THE_CAP[name], "max_output_bytes": limit}])
    assert content_bytes(result) <= limit, (name, content_bytes(result))
    assert result.truncated


def test_test_case_values_count_against_max_output_bytes(client: Client) -> None:
    limit = 4096
    big = "i" * 50_000
    code = "def f(x):\n    if x == 'raise':\n        raise ValueError('r' * 100000)\n    return x * 3\n"
    cases = [
        {"input": [big], "expected": "e" * 50_000},
        {"input": ["raise"], "expected": 1},
        {"input": ["a"], "expected": "aaa"},
    ]
    tests = {"entry_point": "f", "cases": cases, "stop_on_first_failure": False}
    [result] = client.batch([{"code": code, "tests": tests, "max_output_bytes": limit}])
    assert content_bytes(result) <= limit, content_bytes(result)
    assert result.truncated
    # Verdicts come from the full values, whatever the response could carry of them.
    assert [t.passed for t in result.tests or []] == [False, False, True]
