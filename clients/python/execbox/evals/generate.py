"""Generate samples from a model endpoint, then evaluate them (``execbox eval … --llm-url``)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from execbox.agent import extract_code
from execbox.evals.datasets import Problem
from execbox.llm import ChatClient, LLMError

__all__ = ["generate_samples"]

INSTRUCTION = (
    "Complete the following Python code. Answer with the complete function(s) in one ```python block, "
    "without tests or example usage.\n\n"
)


def _sample(problem: Problem, reply: str) -> dict[str, Any]:
    code = extract_code(reply, which="all")
    if code is None:
        return {"task_id": problem.task_id, "completion": reply, "raw": reply}
    # A model that restates the whole function gives a full solution; one that continues the
    # prompt gives a completion to append to it.
    if problem.entry_point and f"def {problem.entry_point}" in code:
        return {"task_id": problem.task_id, "solution": problem.setup + "\n" + code, "raw": reply}
    if problem.style == "mbpp":
        return {"task_id": problem.task_id, "solution": code, "raw": reply}
    return {"task_id": problem.task_id, "completion": code, "raw": reply}


def generate_samples(
    llm: ChatClient,
    problems: dict[str, Problem],
    *,
    n: int = 1,
    concurrency: int = 4,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """``n`` samples per problem from ``llm`` (greedy when its temperature is 0), in task order.

    A failed generation becomes an empty completion (it will fail its tests) and keeps its error.
    """
    jobs = [(problem, i) for problem in problems.values() for i in range(n)]

    def one(job: tuple[Problem, int]) -> dict[str, Any]:
        problem, _ = job
        prompt = problem.prompt if problem.style == "humaneval" else f"{problem.prompt}\n{problem.test_program}"
        try:
            reply = llm.chat([{"role": "user", "content": INSTRUCTION + prompt}])
            sample = _sample(problem, reply)
        except LLMError as exc:
            sample = {"task_id": problem.task_id, "completion": "", "error": str(exc)}
        if on_sample is not None:
            on_sample(sample)
        return sample

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="execbox-gen") as pool:
        return list(pool.map(one, jobs))
