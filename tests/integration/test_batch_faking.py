"""Verdicts a solution cannot fake (issue 13): every known way to turn a failure into a pass, as a
real batch job against the real worker, must come out failed; a faithful solution passes.

The solution runs in its own process; its cases are judged by the worker's server process against
expected values the solution never had, from typed values it sent over a pipe (never by its own
``__eq__``), on the server's own clock. See README "Security and threat model".
"""

from __future__ import annotations

from typing import Any

import httpx
import pydantic
import pytest

from execbox import Client, JobResult, JobStatus
from execbox._models import TestSpec as Spec  # not collected as a test class
from execbox._values import decode_value, encode_value


def evalplus_tests(cases: list[tuple[list[Any], Any]], **options: Any) -> dict[str, Any]:
    return {
        "entry_point": "f",
        "semantics": "evalplus",
        "atol": 0,
        "cases": [{"input": encode_value(args), "expected": encode_value(out)} for args, out in cases],
        **options,
    }


# f(pairs, wanted): the pairs whose first item is in `wanted`, as a tuple -- tuples and sets in,
# a tuple out, as MBPP+'s inputs are after mbpp_deserialize_inputs.
CASES = [
    ([[(1, "a"), (2, "b")], {1}], ((1, "a"),)),
    ([[(1, "a"), (2, "b"), (3, "c")], {2, 3}], ((2, "b"), (3, "c"))),
    ([[], frozenset()], ()),
]
FAITHFUL = "def f(pairs, wanted):\n    return tuple(p for p in pairs if p[0] in wanted)\n"


def run(client: Client, code: str, tests: dict[str, Any] | None = None, **job: Any) -> JobResult:
    [result] = client.batch([{"code": code, "tests": tests or evalplus_tests(CASES), "timeout_s": 20, **job}])
    return result


def test_a_faithful_solution_passes_with_tuples_and_sets_as_inputs(client: Client) -> None:
    result = run(client, FAITHFUL)
    assert result.passed, result
    assert [decode_value(t.actual) for t in result.tests or []] == [out for _, out in CASES]


def test_a_list_where_a_tuple_is_expected_fails(client: Client) -> None:
    result = run(client, "def f(pairs, wanted):\n    return [p for p in pairs if p[0] in wanted]\n")
    assert result.ok and not result.passed
    assert result.tests is not None and result.tests[0].status == "failed"


FAKES = {
    "os._exit(0) at import": "import os\nos._exit(0)\n" + FAITHFUL,
    "sys.exit(0) at import": "import sys\nsys.exit(0)\n" + FAITHFUL,
    "os._exit(0) in the first call": "import os\ndef f(pairs, wanted):\n    os._exit(0)\n",
    "sys.exit(0) in a call": "import sys\ndef f(pairs, wanted):\n    sys.exit(0)\n",
    "killing its own process": "import os, signal\ndef f(pairs, wanted):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "killing its process group": "import os, signal\ndef f(pairs, wanted):\n    os.killpg(0, signal.SIGKILL)\n",
    "an object equal to everything": (
        "class Anything:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    def __ne__(self, other):\n"
        "        return False\n"
        "    __hash__ = object.__hash__\n"
        "def f(pairs, wanted):\n"
        "    return Anything()\n"
    ),
    "a tuple subclass equal to everything": (
        "class Anything(tuple):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = tuple.__hash__\n"
        "def f(pairs, wanted):\n"
        "    return Anything()\n"
    ),
    "forged 'passed' records on every inherited descriptor": (
        "import os\n"
        "def f(pairs, wanted):\n"
        "    for fd in range(3, 256):\n"
        "        for i in range(3):\n"
        '            line = \'{"kind": "test", "index": %d, "passed": true, "status": "passed"}\\n\' % i\n'
        "            try:\n"
        "                os.write(fd, line.encode())\n"
        "            except OSError:\n"
        "                pass\n"
        "    os._exit(0)\n"
    ),
    "the harness's own reporter, reached through the caller's frames": (
        "import sys\n"
        "def f(pairs, wanted):\n"
        "    frame = sys._getframe(1)\n"
        "    while frame is not None:\n"
        "        g, l = frame.f_globals, frame.f_locals\n"
        "        if '_report' in g and 'result_fd' in l:\n"
        "            for i in range(3):\n"
        "                g['_report'](l['result_fd'], {'kind': 'test', 'index': i, 'status': 'passed',\n"
        "                                               'actual': None, 'error': None, 'duration_ms': 0})\n"
        "            g['_report'] = lambda *a, **k: None  # and silence the harness\n"
        "            return None\n"
        "        frame = frame.f_back\n"
        "    return None\n"
    ),
    "patching the harness's encoder to claim the expected value": (
        "import sys\n"
        "def f(pairs, wanted):\n"
        "    frame = sys._getframe(1)\n"
        "    while frame is not None:\n"
        "        if 'encode_value' in frame.f_globals:\n"
        "            frame.f_globals['encode_value'] = lambda value: {'$tuple': []}\n"
        "        frame = frame.f_back\n"
        "    return None\n"
    ),
    "searching the process for the expected values": (
        "import gc\n"
        "def f(pairs, wanted):\n"
        "    for o in gc.get_objects():\n"
        "        if isinstance(o, dict) and 'expected' in o:\n"
        "            return o['expected']\n"
        "    return None\n"
    ),
    "a forked child that reports after the parent exits": (
        "import os, time\n"
        "def f(pairs, wanted):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(0.2)\n"
        "        for fd in range(3, 64):\n"
        "            for i in range(3):\n"
        "                try:\n"
        '                    os.write(fd, (\'{"kind": "test", "index": %d, "status": "passed"}\\n\' % i).encode())\n'
        "                except OSError:\n"
        "                    pass\n"
        "        os._exit(0)\n"
        "    os._exit(0)\n"
    ),
}


@pytest.mark.parametrize("name", list(FAKES))
def test_a_faking_solution_fails(client: Client, name: str) -> None:
    result = run(client, FAKES[name])
    assert result.status is not JobStatus.SERVICE_ERROR, result
    assert not result.passed, result
    assert result.tests is not None and len(result.tests) == len(CASES)
    assert not any(t.passed for t in result.tests), result.tests
    if result.status is JobStatus.ERROR and result.message:
        assert "test" in result.message  # says why: the run ended before every test reported


SLOW_BUT_RIGHT = {
    "ignoring the alarm": (
        "import signal, time\n"
        "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "def f(pairs, wanted):\n"
        "    time.sleep(4)\n"
        "    return tuple(p for p in pairs if p[0] in wanted)\n"
    ),
    "swallowing the timeout": (
        "import time\n"
        "def f(pairs, wanted):\n"
        "    end = time.monotonic() + 4\n"
        "    while time.monotonic() < end:\n"
        "        try:\n"
        "            time.sleep(0.05)\n"
        "        except BaseException:\n"
        "            pass\n"
        "    return tuple(p for p in pairs if p[0] in wanted)\n"
    ),
}


@pytest.mark.parametrize("name", list(SLOW_BUT_RIGHT))
def test_a_solution_that_outlives_its_case_limit_times_out_on_the_servers_clock(client: Client, name: str) -> None:
    tests = evalplus_tests(CASES)
    tests["cases"][0]["timeout_s"] = 0.3
    result = run(client, SLOW_BUT_RIGHT[name], tests)
    assert not result.passed, result
    assert result.tests is not None and result.tests[0].status == "timeout", result.tests
    assert [t.status for t in result.tests[1:]] == ["not_run", "not_run"]


def test_converted_assertions_fail_a_solution_that_forges_assertion_mode(client: Client) -> None:
    # In assertion mode the checks run in the solution's process: this forger passes there, which
    # is why rewards and evaluation use cases (README: threat model).
    forger = (
        "import os, sys\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        '        os.write(fd, b\'{"kind": "ready"}\\n{"kind": "test", "index": 0, "status": "passed"}\\n\')\n'
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    )
    script = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n"
    spec = Spec.from_assertions(script, entry_point="inc")
    forged = run(client, forger, spec.model_dump(exclude_none=True))
    honest = run(client, "def inc(x):\n    return x + 1\n", spec.model_dump(exclude_none=True))
    assert not forged.passed and honest.passed, (forged, honest)


# ------------------------------------------------------------------ the faithful path


def test_collect_returns_every_output_typed_without_a_verdict(client: Client) -> None:
    canonical = (
        "import math\n"
        "def f(x):\n"
        "    if x == 0:\n"
        "        raise ValueError('zero')\n"
        "    return {'half': x / 2, 'inv': 1 / x, 'set': {x}, 'inf': math.inf, 'key': {(x, x): x}}\n"
    )
    cases = [{"input": encode_value([x])} for x in (2, 0, 4)]
    tests = {"entry_point": "f", "semantics": "evalplus", "mode": "collect", "cases": cases}
    result = run(client, canonical, tests)
    assert result.ok and result.tests is not None, result
    assert [t.status for t in result.tests] == ["returned", "error", "returned"]
    assert not any(t.passed for t in result.tests)
    assert decode_value(result.tests[0].actual) == {
        "half": 1.0,
        "inv": 0.5,
        "set": {2},
        "inf": float("inf"),
        "key": {(2, 2): 2},
    }
    assert result.tests[1].error is not None and result.tests[1].error.name == "ValueError"
    assert all(t.duration_ms >= 0 for t in result.tests)
    # The collected values are the expected ones of a check job: the canonical passes it.
    pairs = zip(cases, result.tests, strict=True)
    checked = [{"input": c["input"], "expected": t.actual} for c, t in pairs if t.status == "returned"]
    again = run(client, canonical, {"entry_point": "f", "semantics": "evalplus", "atol": 0, "cases": checked})
    assert again.passed, again


def test_evalplus_harness_swallows_output_and_skips_main_blocks(client: Client) -> None:
    code = FAITHFUL + "print('noise')\nif __name__ == '__main__':\n    input()\n"
    result = run(client, code)
    assert result.passed, result
    assert "noise" not in result.stdout


def test_a_float_output_within_evalplus_tolerance_passes(client: Client) -> None:
    tests = evalplus_tests([([1.0], 0.3)], atol=0)
    assert run(client, "def f(x):\n    return 0.1 + 0.2 * x\n", tests).passed
    assert not run(client, "def f(x):\n    return 0.31 * x\n", tests).passed


def test_a_typed_value_that_does_not_decode_is_refused_before_it_runs(client: Client, url: str) -> None:
    tests = {"entry_point": "f", "semantics": "evalplus", "cases": [{"input": {"$set": [[1]]}, "expected": 1}]}
    with pytest.raises(pydantic.ValidationError):  # the SDK checks it first
        client.batch([{"code": FAITHFUL, "tests": tests}])
    reply = httpx.post(f"{url}/v1/batch", json={"jobs": [{"code": FAITHFUL, "tests": tests}]}, timeout=60)
    assert reply.status_code == 422, reply.text
