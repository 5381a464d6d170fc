"""Execution-based evaluation and feedback rendering against the real service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from execbox import Client, render_feedback
from execbox.evals import evaluate, load_humaneval, load_problems, pass_at_k

MBPP_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mbpp"


def test_pass_at_k_estimator_matches_the_closed_form() -> None:
    assert pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 1, 2) == pytest.approx(1 - (4 * 3) / (5 * 4))


def test_canonical_humaneval_solutions_pass_and_broken_ones_fail(client: Client) -> None:
    problems = load_humaneval()
    assert len(problems) == 164
    good = [{"task_id": t, "completion": p.canonical_solution} for t, p in problems.items()]
    report = evaluate(client, problems, good)
    assert report.pass_at_k == {"pass@1": 1.0}, [s.result for s in report.samples if not s.passed][:5]
    broken = [{"task_id": t, "completion": "    return None\n"} for t in problems]
    report = evaluate(client, problems, broken, feedback="opencodeinterpreter")
    assert report.pass_at_k == {"pass@1": 0.0}
    failure = report.samples[0]
    assert failure.result.startswith("failed: ")
    assert failure.feedback and failure.feedback.startswith("Execution result")


@pytest.mark.parametrize(
    "completion",
    [
        "    return sorted(numbers) and False\nimport os\nos._exit(0)\n",  # ends the program before the tests
        "    import os\n    os._exit(0)\n",  # ends it from inside the call the tests make
        "    import sys\n    sys.exit(0)\n",
        "    raise SystemExit(0)\n",
    ],
)
def test_a_sample_that_ends_the_program_before_its_tests_finish_never_passes(client: Client, completion: str) -> None:
    problems = load_humaneval()
    report = evaluate(client, problems, [{"task_id": "HumanEval/0", "completion": completion}])
    assert report.pass_at_k == {"pass@1": 0.0}, report.samples[0]
    assert report.samples[0].result.startswith("failed"), report.samples[0]


def test_timeouts_are_recorded_per_sample(client: Client) -> None:
    problems = load_humaneval()
    sample = {"task_id": "HumanEval/0", "completion": "    while True:\n        pass\n"}
    report = evaluate(client, problems, [sample], timeout_s=1)
    assert report.samples[0].result == "timed out"


@pytest.mark.skipif(not MBPP_DIR.exists(), reason="MBPP data is in ../shared/data/mbpp")
def test_mbpp_reference_solutions_behave_as_documented(client: Client) -> None:
    sanitized = load_problems(str(MBPP_DIR / "sanitized-mbpp.json"))
    samples = [{"task_id": t, "completion": p.canonical_solution} for t, p in sanitized.items()]
    report = evaluate(client, sanitized, samples, timeout_s=10)
    assert len(sanitized) == 427 and report.pass_at_k["pass@1"] == 1.0
    original = load_problems(str(MBPP_DIR / "mbpp.jsonl"))
    samples = [{"task_id": t, "completion": p.canonical_solution} for t, p in original.items()]
    report = evaluate(client, original, samples, timeout_s=10)
    failed = {s.task_id for s in report.samples if not s.passed}
    # Documented: 341, 596 and 642 fail their own asserts; 123 is slow (3-4 s of CPU here).
    assert {"341", "596", "642"} <= failed <= {"123", "341", "596", "642"}


def test_cli_eval_prints_pass_at_k_and_writes_a_report(url: str, tmp_path: Path) -> None:
    problems = load_humaneval()
    samples = tmp_path / "samples.jsonl"
    with samples.open("w") as fh:
        for task_id, p in list(problems.items())[:20]:
            for completion in (p.canonical_solution, "    raise NotImplementedError\n"):
                fh.write(json.dumps({"task_id": task_id, "completion": completion}) + "\n")
    exe = os.path.join(os.path.dirname(sys.executable), "execbox")
    out = subprocess.run(
        [exe, "eval", "humaneval", "--samples", str(samples), "--k", "1,2", "--feedback"],
        capture_output=True,
        text=True,
        env={**os.environ, "EXECBOX_URL": url},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["pass@1: 0.500", "pass@2: 1.000"]
    report = json.loads(Path(f"{samples}.report.json").read_text())
    failures = [s for s in report["samples"] if not s["passed"]]
    assert len(failures) == 20 and all("NotImplementedError" in s["result"] for s in failures)
    assert all(s["feedback"] for s in failures)


# ---------------------------------------------------------------- feedback formats on real executions


def test_opencodeinterpreter_format(client: Client) -> None:
    with client.session() as s:
        assert render_feedback(s.run("x = 1"), style="opencodeinterpreter") == (
            "Code is executed, but result is empty. Please make sure that you include test case in your code."
        )
        assert render_feedback(s.run("print('hi')"), style="opencodeinterpreter") == "Execution result: \nhi"
        long = render_feedback(s.run("print('a' * 600 + 'b' * 600)"), style="opencodeinterpreter")
        assert long == "Execution result: \n" + "a" * 200 + "\n...\n" + "b" * 200
        slow = s.run("import time; time.sleep(5)", timeout_s=1)
        assert render_feedback(slow, style="opencodeinterpreter") == "Execution timed out."


def test_code_feedback_format(client: Client) -> None:
    with client.session() as s:
        plot = s.run("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\nprint('done')")
        assert render_feedback(plot, style="code_feedback") == "Execution result: \ndone\n[image]"
        long = render_feedback(s.run("print('x' * 1000)"), style="code_feedback")
        assert "[Output too much, the middle part output is omitted]" in long
        assert long.startswith("Execution result: \n" + "x" * 200)


def test_execbox_format_labels_sections_and_counts_cuts(client: Client) -> None:
    with client.session(memory_mb=512) as s:
        text = render_feedback(s.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\n1/0"))
        assert text.splitlines()[0] == "Status: error"
        assert "[stdout]\nout" in text and "[stderr]\nerr" in text
        assert text.rstrip().endswith("ZeroDivisionError: division by zero")
        assert "\x1b[" not in text and "/home/" not in text
        plot = render_feedback(s.run("import matplotlib.pyplot as plt\nplt.plot([1])\nplt.show()"))
        assert plot.startswith("[image/png, ") and plot.endswith(" bytes]")
        long = render_feedback(s.run("print('y' * 10000)"), limit=1000, keep=100)
        assert "[... 9800 characters of stdout omitted ...]" in long
        silent = render_feedback(s.run("z = 2"))
        assert silent.startswith("[no output]")


def test_cli_eval_generates_samples_from_a_model_endpoint_then_evaluates(url: str, tmp_path: Path) -> None:
    from execbox.evals.generate import INSTRUCTION
    from tests.support.fake_llm import fake_llm

    problems = load_humaneval()
    script = {}
    for i, (_task_id, p) in enumerate(problems.items()):
        # Even tasks: the model restates the whole function correctly; odd ones: it returns None.
        body = p.canonical_solution if i % 2 == 0 else "    return None\n"
        script[INSTRUCTION + p.prompt] = [f"Here you go:\n```python\n{p.prompt}{body}```"]
    samples = tmp_path / "generated.jsonl"
    exe = os.path.join(os.path.dirname(sys.executable), "execbox")
    with fake_llm(script) as (llm_url, requests):
        out = subprocess.run(
            [exe, "eval", "humaneval", "--samples", str(samples), "--llm-url", llm_url, "--model", "m", "--k", "1"],
            capture_output=True,
            text=True,
            env={**os.environ, "EXECBOX_URL": url},
            timeout=300,
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pass@1: 0.500"
    assert len(requests) == 164 and all(r["temperature"] == 0.0 for r in requests)
    assert sum(1 for _ in samples.open()) == 164
