"""Expected outputs: collected in the sandbox, continued where a job stopped (Mbpp/599's slow
ground truth), refused when the canonical solution fails, cached by dataset hash and read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from execbox import Client
from execbox._values import decode_value, encode_value
from execbox.evals.evalplus import Dataset, PlusDataset, PlusTask
from execbox.evals.groundtruth import GroundTruthError, compute_groundtruth, load_groundtruth, time_limits

Answer = Callable[[dict[str, Any], int, list[Any]], dict[str, Any]]


def task(task_id: str, base: list[list[Any]], plus: list[list[Any]]) -> PlusTask:
    return PlusTask(task_id, "", "f", "def f(x):\n    return (x, x)\n", base, plus, 0.0)


def dataset(*tasks: PlusTask, sha: str = "a" * 64) -> PlusDataset:
    return PlusDataset(Dataset.HUMANEVAL, "mem", {t.task_id: t for t in tasks}, "m" * 32, sha)


def service(answer: Answer, jobs_seen: list[dict[str, Any]]) -> Client:
    """A batch endpoint whose worker answers each case with ``answer(job, case index, args)``."""

    def handler(request: httpx.Request) -> httpx.Response:
        jobs = json.loads(request.content)["jobs"]
        lines = []
        for i, job in enumerate(jobs):
            jobs_seen.append(job)
            tests = job["tests"]
            assert tests["mode"] == "collect" and tests["semantics"] == "evalplus"
            outcomes = [answer(job, n, decode_value(case["input"])) for n, case in enumerate(tests["cases"])]
            status = "timeout" if any(o["status"] == "timeout" for o in outcomes) else "ok"
            lines.append({"type": "result", "index": i, "status": status, "tests": outcomes, "wall_ms": 1.0})
        lines.append({"type": "summary", "total": len(jobs), "by_status": {}, "wall_ms": 1.0})
        return httpx.Response(200, content="".join(json.dumps(line) + "\n" for line in lines).encode())

    return Client(
        "http://execbox.test", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


def returned(n: int, value: Any, ms: float = 2.0) -> dict[str, Any]:
    return {"index": n, "passed": False, "status": "returned", "actual": encode_value(value), "duration_ms": ms}


def test_every_input_gets_its_canonical_output_and_time(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    client = service(lambda job, n, args: returned(n, (args[0], args[0]), ms=3.0), seen)
    truth = compute_groundtruth(client, dataset(task("T/0", [[1], [2]], [[3]])), directory=tmp_path)
    suite = truth.suite("T/0", "base")
    assert [decode_value(v) for v in suite.expected] == [(1, 1), (2, 2)]
    assert suite.times_s == [0.003, 0.003]
    assert truth.suite("T/0", "plus").expected == [encode_value((3, 3))]
    assert {job["code"] for job in seen} == {"def f(x):\n    return (x, x)\n"}


def test_a_slow_task_is_continued_from_the_first_input_without_a_value(tmp_path: Path) -> None:
    # Mbpp/599 needs ~23 s for its plus inputs: a job's budget runs out half-way, the rest is sent again.
    seen: list[dict[str, Any]] = []

    def answer(job: dict[str, Any], n: int, args: list[Any]) -> dict[str, Any]:
        if n >= 2:  # every job gets through two inputs only
            return {"index": n, "passed": False, "status": "timeout" if n == 2 else "not_run"}
        return returned(n, args[0] * 10)

    client = service(answer, seen)
    truth = compute_groundtruth(client, dataset(task("Mbpp/599", [[1]], [[i] for i in range(5)])), directory=tmp_path)
    assert [decode_value(v) for v in truth.suite("Mbpp/599", "plus").expected] == [0, 10, 20, 30, 40]
    plus_jobs = [job["id"] for job in seen if job["id"].startswith("Mbpp/599:plus")]
    assert plus_jobs == ["Mbpp/599:plus:0", "Mbpp/599:plus:2", "Mbpp/599:plus:4"]


def test_a_value_cut_for_size_is_collected_again_in_a_job_of_its_own(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def answer(job: dict[str, Any], n: int, args: list[Any]) -> dict[str, Any]:
        first = job["id"].endswith(":0")
        if first and n == 1:
            return {"index": n, "passed": False, "status": "returned", "actual": {"$truncated": 10**7}}
        return returned(n, args[0])

    truth = compute_groundtruth(service(answer, seen), dataset(task("T/0", [[5], [6], [7]], [])), directory=tmp_path)
    assert [decode_value(v) for v in truth.suite("T/0", "base").expected] == [5, 6, 7]
    assert truth.suite("T/0", "plus").expected == []  # Mbpp/793: no plus inputs, no job


def test_a_canonical_solution_that_raises_is_refused_with_the_task_and_input(tmp_path: Path) -> None:
    def answer(job: dict[str, Any], n: int, args: list[Any]) -> dict[str, Any]:
        if args == [2]:
            return {
                "index": n,
                "passed": False,
                "status": "error",
                "error": {"name": "ZeroDivisionError", "value": "x"},
            }
        return returned(n, 1)

    with pytest.raises(GroundTruthError, match=r"T/0 base input 1: ZeroDivisionError"):
        compute_groundtruth(service(answer, []), dataset(task("T/0", [[1], [2]], [[1]])), directory=tmp_path)


def test_one_input_that_alone_outlasts_the_budget_gets_more_then_is_refused(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def answer(job: dict[str, Any], n: int, args: list[Any]) -> dict[str, Any]:
        if job["timeout_s"] >= 120 and args == [2]:  # a slow input on a loaded machine
            return returned(n, 2)
        return {"index": n, "passed": False, "status": "timeout" if n == 0 else "not_run"}

    with pytest.raises(GroundTruthError, match="T/0 base input 0"):
        compute_groundtruth(service(answer, seen), dataset(task("T/0", [[1]], [[2]])), directory=tmp_path)
    assert [job["timeout_s"] for job in seen if job["id"] == "T/0:base:0"] == [30.0, 120.0, 300.0]
    truth = compute_groundtruth(service(answer, []), dataset(task("T/0", [[2]], [])), directory=tmp_path)
    assert truth.suite("T/0", "base").expected == [2]


def test_the_cache_is_read_back_for_the_same_dataset_hash_only(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    client = service(lambda job, n, args: returned(n, {args[0]}), seen)
    data = dataset(task("T/0", [[1]], [[2]]))
    first = compute_groundtruth(client, data, directory=tmp_path)
    assert not first.cached and len(seen) == 2
    again = compute_groundtruth(client, data, directory=tmp_path)
    assert again.cached and again.tasks == first.tasks and len(seen) == 2  # no job sent
    assert decode_value(again.suite("T/0", "plus").expected[0]) == {2}
    assert load_groundtruth(dataset(task("T/0", [[1]], [[2]]), sha="b" * 64), directory=tmp_path) is None
    refreshed = compute_groundtruth(client, data, directory=tmp_path, refresh=True)
    assert not refreshed.cached and len(seen) == 4


def test_a_cache_file_that_does_not_fit_the_dataset_is_ignored(tmp_path: Path) -> None:
    client = service(lambda job, n, args: returned(n, 0), [])
    compute_groundtruth(client, dataset(task("T/0", [[1]], [[2]])), directory=tmp_path)
    # Same hash (a hand-edited file, say), one more input: the cached outputs cannot be used.
    assert load_groundtruth(dataset(task("T/0", [[1], [3]], [[2]])), directory=tmp_path) is None
    (next(tmp_path.rglob("*.json.gz"))).write_bytes(b"not gzip")
    assert load_groundtruth(dataset(task("T/0", [[1]], [[2]])), directory=tmp_path) is None


def test_time_limits_are_evalplus_floor_and_factor() -> None:
    assert time_limits([0.001, 0.3, 2.0], factor=4.0, floor=1.0) == [1.0, 1.2, 8.0]
