"""The problem-file evaluation (execbox.evals.evaluate): a job the service could not run is no
verdict on its sample — retried, then raised or marked, never counted as a failed sample."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from execbox import Client
from execbox.evals import EvalIncompleteError, Problem, evaluate

PROBLEMS = {t: Problem(task_id=t, prompt="", entry_point="f", test_program="check(f)") for t in ("A", "B")}
SAMPLES = [{"task_id": "A", "completion": "pass"}, {"task_id": "B", "completion": "pass"}]


def service(lost: Callable[[str, int], bool], sent: list[str]) -> Client:
    """A batch endpoint whose jobs all pass, except those ``lost(job id, attempt)`` says it lost."""
    attempts: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        jobs = json.loads(request.content)["jobs"]
        lines = []
        for i, job in enumerate(jobs):
            sent.append(job["id"])
            attempt = attempts[job["id"]] = attempts.get(job["id"], 0) + 1
            if lost(job["id"], attempt):
                lines.append({"type": "result", "index": i, "status": "service_error", "message": "worker lost"})
            else:
                tests = [{"index": 0, "passed": True, "status": "passed"}]
                lines.append({"type": "result", "index": i, "status": "ok", "tests": tests, "wall_ms": 1.0})
        lines.append({"type": "summary", "total": len(jobs), "by_status": {}, "wall_ms": 1.0})
        return httpx.Response(200, content="".join(json.dumps(line) + "\n" for line in lines).encode())

    return Client(
        "http://execbox.test", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


def test_a_job_the_service_lost_once_is_sent_again_and_scored_on_its_verdict() -> None:
    sent: list[str] = []
    report = evaluate(service(lambda job, attempt: job == "1" and attempt == 1, sent), PROBLEMS, SAMPLES, ks=(1,))
    assert report.pass_at_k == {"pass@1": 1.0} and report.no_verdict == 0
    assert [s.status for s in report.samples] == ["ok", "ok"]
    assert sent == ["0", "1", "1"]


def test_a_sample_never_run_raises_rather_than_scoring_zero() -> None:
    sent: list[str] = []
    with pytest.raises(EvalIncompleteError, match=r"1 sample\(s\) got no verdict after 3 attempts.*B: worker lost"):
        evaluate(service(lambda job, attempt: job == "1", sent), PROBLEMS, SAMPLES, ks=(1,))
    assert sent == ["0", "1", "1", "1"]


def test_a_sample_never_run_can_be_marked_and_is_left_out_of_pass_at_k() -> None:
    report = evaluate(service(lambda job, attempt: job == "1", []), PROBLEMS, SAMPLES, ks=(1,), on_service_error="mark")
    assert report.pass_at_k == {"pass@1": 1.0} and report.tasks == 1 and report.no_verdict == 1
    marked = report.samples[1]
    assert (marked.task_id, marked.passed, marked.status) == ("B", False, "service_error")
    assert marked.result == "no verdict: worker lost"
    assert report.to_json()["no_verdict"] == 1


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="on_service_error"):
        evaluate(service(lambda job, attempt: False, []), PROBLEMS, SAMPLES, on_service_error="zero")  # type: ignore[arg-type]
