"""EvalPlus's bookkeeping around the worker's verdicts: statuses, failing inputs, pass@k, the
summary lines, eval_results.json, sample files, special oracles, and what a lost job does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from execbox import Client
from execbox._models import JobResult, JobStatus
from execbox._models import TestOutcome as Outcome  # not collected as a test class
from execbox._values import decode_value, digest_value, encode_value
from execbox.evals.evalplus import Dataset, PlusDataset, PlusTask, load_evalplus
from execbox.evals.groundtruth import GroundTruth, SuiteTruth
from execbox.evals.plus import (
    EvalIncompleteError,
    Status,
    _digit_distance,
    _suite,
    _surface_area,
    evaluate_plus,
    read_evalplus_samples,
    results_path,
)

GOOD = "def f(x):\n    return x + 1\n"
PLUS_BUG = "def f(x):\n    return x + 1 if x < 100 else 0\n"  # right on small inputs only
BAD = "def f(x):\n    return x\n"


def plus_task(task_id: str = "T/0", entry_point: str = "f", atol: float = 0.0) -> PlusTask:
    return PlusTask(task_id, "", entry_point, GOOD, [[1], [2]], [[5], [500], [7]], atol)


def dataset(*tasks: PlusTask, name: Dataset = Dataset.HUMANEVAL) -> PlusDataset:
    return PlusDataset(name, "mem", {t.task_id: t for t in tasks}, "0123456789abcdef" * 2, "s" * 64)


def truth(data: PlusDataset, time_s: float = 0.001) -> GroundTruth:
    def suite(inputs: list[list[Any]]) -> SuiteTruth:
        return SuiteTruth([encode_value(i[0] + 1) for i in inputs], [time_s] * len(inputs))

    tasks = {t.task_id: {"base": suite(t.base_input), "plus": suite(t.plus_input)} for t in data.tasks.values()}
    return GroundTruth(data.name, data.sha256, tasks, 0.0, True)


def judging_service(seen: list[dict[str, Any]], lost: Callable[[dict[str, Any]], bool] = lambda job: False) -> Client:
    """A batch endpoint that judges as the worker does for these tiny programs: it runs nothing, it
    evaluates ``f`` from the three known sources (GOOD, PLUS_BUG, BAD) on each case in order."""
    known = {GOOD: lambda x: x + 1, PLUS_BUG: lambda x: x + 1 if x < 100 else 0, BAD: lambda x: x}

    def handler(request: httpx.Request) -> httpx.Response:
        jobs = json.loads(request.content)["jobs"]
        lines = []
        for i, job in enumerate(jobs):
            seen.append(job)
            if lost(job):
                lines.append({"type": "result", "index": i, "status": "service_error", "message": "worker lost"})
                continue
            f = known[job["code"]]
            outcomes, failed = [], False
            for n, case in enumerate(job["tests"]["cases"]):
                if failed:
                    outcomes.append({"index": n, "passed": False, "status": "not_run"})
                    continue
                ok = f(*decode_value(case["input"])) == decode_value(case["expected"])
                outcomes.append({"index": n, "passed": ok, "status": "passed" if ok else "failed"})
                failed = not ok
            lines.append({"type": "result", "index": i, "status": "ok", "tests": outcomes, "wall_ms": 5.0})
        lines.append({"type": "summary", "total": len(jobs), "by_status": {}, "wall_ms": 1.0})
        return httpx.Response(200, content="".join(json.dumps(line) + "\n" for line in lines).encode())

    return Client(
        "http://execbox.test", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


def test_pass_fail_and_plus_only_failures_are_scored_as_evalplus_does() -> None:
    data = dataset(plus_task("T/0"), plus_task("T/1"))
    samples = [
        {"task_id": "T/0", "solution": GOOD},
        {"task_id": "T/0", "solution": PLUS_BUG},
        {"task_id": "T/1", "solution": BAD},
        {"task_id": "T/1", "solution": PLUS_BUG},
    ]
    seen: list[dict[str, Any]] = []
    report = evaluate_plus(judging_service(seen), data, samples, groundtruth=truth(data))
    assert [(s.task_id, s.completion_id, s.base.status, s.plus and s.plus.status) for s in report.samples] == [
        ("T/0", 0, Status.PASS, Status.PASS),
        ("T/0", 1, Status.PASS, Status.FAIL),
        ("T/1", 0, Status.FAIL, Status.FAIL),
        ("T/1", 1, Status.PASS, Status.FAIL),
    ]
    assert report.base_pass_at_k == {"pass@1": 0.75}
    assert report.plus_pass_at_k == {"pass@1": 0.25}
    assert report.summary_lines() == [
        "humaneval (base tests)",
        "pass@1:\t0.750",
        "humaneval+ (base + extra tests)",
        "pass@1:\t0.250",
    ]
    # The failing input is the one the run stopped at (the last judged), as EvalPlus records it.
    plus_bug = report.samples[1].plus
    assert plus_bug is not None and plus_bug.fail_inputs == [[500]] and plus_bug.judged == 2
    assert plus_bug.failure is not None and plus_bug.failure.label == "wrong answer"
    # Every job: evalplus semantics, stop at the first failure, a limit per case, the set's budget.
    job = seen[0]
    assert job["tests"]["semantics"] == "evalplus" and job["tests"]["stop_on_first_failure"] is True
    assert [c["timeout_s"] for c in job["tests"]["cases"]] == [1.0, 1.0]
    assert job["timeout_s"] == pytest.approx(min(60.0, 2.0) + 2.0)


def test_eval_results_json_has_evalplus_structure(tmp_path: Path) -> None:
    data = dataset(plus_task("T/0"))
    samples = [{"task_id": "T/0", "completion": GOOD}, {"task_id": "T/0", "solution": BAD}]
    report = evaluate_plus(judging_service([]), data, samples, groundtruth=truth(data))
    path = tmp_path / "eval_results.json"
    report.write_eval_results(path)
    document = json.loads(path.read_text())
    assert set(document) == {"date", "hash", "eval"} and document["hash"] == data.md5
    assert document["eval"]["T/0"] == [
        {
            "task_id": "T/0",
            "solution": GOOD,  # prompt ("") + completion
            "base_status": "pass",
            "plus_status": "pass",
            "base_fail_tests": [],
            "plus_fail_tests": [],
        },
        {
            "task_id": "T/0",
            "solution": BAD,
            "base_status": "fail",
            "plus_status": "fail",
            "base_fail_tests": [[1]],
            "plus_fail_tests": [[5]],
        },
    ]


def test_pass_at_k_appears_only_where_every_task_has_k_samples() -> None:
    data = dataset(plus_task("T/0"), plus_task("T/1"))
    samples = [{"task_id": "T/0", "solution": GOOD}] * 10 + [{"task_id": "T/1", "solution": PLUS_BUG}] * 10
    report = evaluate_plus(judging_service([]), data, samples, groundtruth=truth(data))
    assert report.base_pass_at_k == {"pass@1": 1.0, "pass@10": 1.0}
    assert report.plus_pass_at_k == {"pass@1": 0.5, "pass@10": 0.5}
    assert report.summary_lines()[2:4] == ["pass@10:\t1.000", "humaneval+ (base + extra tests)"]


def test_base_only_sends_no_plus_jobs_and_prints_no_plus_line() -> None:
    data = dataset(plus_task("T/0"))
    seen: list[dict[str, Any]] = []
    report = evaluate_plus(
        judging_service(seen), data, [{"task_id": "T/0", "solution": GOOD}], groundtruth=truth(data), base_only=True
    )
    assert len(seen) == 1 and report.summary_lines() == ["humaneval (base tests)", "pass@1:\t1.000"]
    assert report.eval_results()["eval"]["T/0"][0]["plus_status"] is None


def test_time_limits_follow_the_canonical_solutions_time() -> None:
    data = dataset(plus_task("T/0"))
    seen: list[dict[str, Any]] = []
    evaluate_plus(
        judging_service(seen), data, [{"task_id": "T/0", "solution": GOOD}], groundtruth=truth(data, time_s=5.0)
    )
    plus = next(job for job in seen if job["id"].endswith(":plus"))
    assert [c["timeout_s"] for c in plus["tests"]["cases"]] == [20.0, 20.0, 20.0]
    assert plus["timeout_s"] == 62.0  # min(60, 60) + 2: EvalPlus's cap on a whole set


def test_a_job_the_service_could_not_run_is_retried_then_reported_never_scored() -> None:
    data = dataset(plus_task("T/0"))
    attempts: list[dict[str, Any]] = []
    flaky = {"left": 1}

    def lose_once(job: dict[str, Any]) -> bool:
        if job["id"].endswith(":plus") and flaky["left"]:
            flaky["left"] -= 1
            return True
        return False

    report = evaluate_plus(
        judging_service(attempts, lose_once), data, [{"task_id": "T/0", "solution": GOOD}], groundtruth=truth(data)
    )
    assert report.plus_pass_at_k == {"pass@1": 1.0} and len(attempts) == 3
    with pytest.raises(EvalIncompleteError, match="no verdict"):
        evaluate_plus(
            judging_service([], lambda job: True), data, [{"task_id": "T/0", "solution": GOOD}], groundtruth=truth(data)
        )


def test_unknown_tasks_are_refused_and_missing_ones_listed() -> None:
    data = dataset(plus_task("T/0"), plus_task("T/1"))
    with pytest.raises(KeyError, match="T/9"):
        evaluate_plus(judging_service([]), data, [{"task_id": "T/9", "solution": GOOD}], groundtruth=truth(data))
    report = evaluate_plus(judging_service([]), data, [{"task_id": "T/1", "solution": GOOD}], groundtruth=truth(data))
    assert report.missing_tasks == ["T/0"]


def result(status: JobStatus, outcomes: list[dict[str, Any]], **fields: Any) -> JobResult:
    tests = [Outcome(**o) for o in outcomes]
    return JobResult(index=0, status=status, tests=tests, wall_ms=1.0, **fields)


@pytest.mark.parametrize(
    ("job", "status", "fail_inputs", "label"),
    [
        # An input past its own limit: EvalPlus's alarm is caught as a failure ("fail").
        (
            result(
                JobStatus.OK,
                [{"index": 0, "passed": True, "status": "passed"}, {"index": 1, "passed": False, "status": "timeout"}],
            ),
            Status.FAIL,
            [[2]],
            "timeout",
        ),
        # The whole set out of budget: "timeout"; the failing input is the last one judged.
        (
            result(
                JobStatus.TIMEOUT,
                [{"index": 0, "passed": True, "status": "passed"}, {"index": 1, "passed": False, "status": "not_run"}],
            ),
            Status.TIMEOUT,
            [[1]],
            "timeout",
        ),
        (
            result(
                JobStatus.OK,
                [{"index": 0, "passed": False, "status": "error", "error": {"name": "TypeError", "value": "bad"}}],
            ),
            Status.FAIL,
            [[1]],
            "exception: TypeError",
        ),
        # The program never defined the function: no input judged, nothing recorded as failing.
        (
            result(JobStatus.ERROR, [], error={"name": "SyntaxError", "value": "invalid syntax"}),
            Status.FAIL,
            [],
            "exception: SyntaxError",
        ),
        # Ended before every input reported (os._exit in the solution): never a pass.
        (
            result(
                JobStatus.ERROR, [{"index": 0, "passed": True, "status": "passed"}], message="1 case never reported"
            ),
            Status.FAIL,
            [[1]],
            "incomplete",
        ),
        (result(JobStatus.OUT_OF_MEMORY, []), Status.FAIL, [], "out of memory"),
    ],
)
def test_worker_verdicts_map_to_evalplus_status_and_failure_category(
    job: JobResult, status: Status, fail_inputs: list[Any], label: str
) -> None:
    from execbox.evals.plus import _judge, _suite

    task = PlusTask("T/0", "", "f", GOOD, [[1], [2]], [], 0.0)
    suite = _suite(Dataset.HUMANEVAL, task, "base", SuiteTruth([2, 3], [0.0, 0.0]), factor=4.0, floor=1.0)
    judged = _judge(suite, job)
    assert (judged.status, judged.fail_inputs) == (status, fail_inputs)
    assert judged.failure is not None and judged.failure.label == label


def test_special_oracles_are_set_per_task_as_evalplus_keys_them(mbpp_plus_path: Path) -> None:
    from execbox.evals.plus import _suite

    data = load_evalplus(Dataset.MBPP, str(mbpp_plus_path))

    # Mbpp/164 (are_equivalent) and Mbpp/295 (sum_div) left MBPP+ in v0.2.0; their oracles stay.
    extra = {
        t: PlusTask(t, "", name, "", [[1]], [], 0.0) for t, name in (("164", "are_equivalent"), ("295", "sum_div"))
    }

    def spec(task_id: str) -> Any:
        t = data.tasks.get(task_id) or extra[task_id.split("/")[1]]
        fake = SuiteTruth([None] * len(t.base_input), [0.0] * len(t.base_input))
        return _suite(Dataset.MBPP, t, "base", fake, factor=4.0, floor=1.0).spec

    assert spec("Mbpp/2").oracle == "set_equal"
    assert spec("Mbpp/164").oracle == "returns"
    not_none = spec("Mbpp/787")  # text_match_three: expected is "the canonical output was not None"
    assert not_none.oracle == "not_none" and {c.expected for c in not_none.cases} == {False}
    assert all(c.alternatives == [0] for c in spec("Mbpp/295").cases)
    assert spec("Mbpp/3").oracle is None and all(c.alternatives is None for c in spec("Mbpp/3").cases)


def test_the_alternative_answers_match_evalplus_oracles_on_every_input(mbpp_plus_path: Path) -> None:
    from evalplus.eval._special_oracle import _digit_distance_nums, _surface_Area

    data = load_evalplus(Dataset.MBPP, str(mbpp_plus_path))
    for task_id, ours, theirs in (
        ("Mbpp/581", _surface_area, _surface_Area),
        ("Mbpp/558", _digit_distance, _digit_distance_nums),
    ):
        task = data.tasks[task_id]
        for inp in task.base_input + task.plus_input:
            assert ours(*inp) == theirs(*inp), (task_id, inp)


def test_samples_are_read_from_a_jsonl_file_or_evalplus_directory(tmp_path: Path) -> None:
    file = tmp_path / "samples.jsonl"
    file.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "x"}) + "\n\n")
    assert read_evalplus_samples(str(file)) == [{"task_id": "HumanEval/0", "completion": "x"}]
    assert results_path(str(file)) == str(tmp_path / "samples_eval_results.json")
    folder = tmp_path / "run"
    for n in (10, 2):
        (folder / "HumanEval_0").mkdir(parents=True, exist_ok=True)
        (folder / "HumanEval_0" / f"{n}.py").write_text(f"# {n}")
    assert read_evalplus_samples(str(folder)) == [
        {"task_id": "HumanEval/0", "solution": "# 2"},
        {"task_id": "HumanEval/0", "solution": "# 10"},
    ]
    assert results_path(str(folder)) == str(folder / "eval_results.json")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "HumanEval/0", "completion": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        read_evalplus_samples(str(bad))


def test_expected_values_over_a_megabyte_are_sent_as_digests_unless_they_hold_floats() -> None:
    big_ints, big_floats, small = list(range(300_000)), [0.5] * 300_000, [1, 2]
    task = PlusTask("T/0", "", "f", GOOD, [[1], [2], [3]], [], 0.0)
    data = dataset(task)
    suite_truth = SuiteTruth([encode_value(v) for v in (big_ints, big_floats, small)], [0.001] * 3)
    suite = _suite(data.name, task, "base", suite_truth, factor=4.0, floor=1.0)
    sent = [case.expected for case in suite.spec.cases or []]
    assert sent[0] == digest_value(big_ints) and sent[0]["floats"] is False
    assert sent[1] == encode_value(big_floats)  # a tolerance may apply: sent whole
    assert sent[2] == small
    # Their encoding time is in the set's budget (the worker's clock grants it per case too).
    assert suite.timeout_s > 3 * 1.0 + 2.0 + 2 * 2.0


def test_a_set_of_huge_outputs_asks_no_more_time_than_a_service_allows() -> None:
    # Mbpp/255: ~1 GB of outputs, hashed in the sandbox; the job's timeout stays within 300 s.
    task = PlusTask("T/0", "", "f", GOOD, [[1]], [], 0.0)
    huge = {"$digest": "sha256:" + "0" * 64, "bytes": 2 * 10**9, "floats": False}
    suite = _suite(dataset(task).name, task, "base", SuiteTruth([huge], [0.001]), factor=4.0, floor=1.0)
    assert suite.timeout_s == 300.0 and (suite.spec.cases or [])[0].expected == huge
