"""Generate samples from a model endpoint, then evaluate them (``execbox eval … --llm-url``).

Two ways to prompt, as EvalPlus does:

- ``endpoint="chat"`` (instruction models): the task's prompt inside an instruction; the reply's
  code block is the sample (a whole function becomes ``solution``, a continuation ``completion``).
- ``endpoint="completions"`` (base models): the task's prompt itself, continued by the model and
  cut at EvalPlus's stop sequences; the continuation is the ``completion`` (prompt + completion
  is the solution).

``n`` samples per problem are asked for in one request (``n`` in the body); a server that sends
fewer choices is asked again for the rest. At most ``concurrency`` requests are in flight. Each
sample records the tokens of its request (``usage``, the request's count shared by its ``n``
samples), its ``finish_reason``, and on failure its ``error``; the totals are on ``llm.usage``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from execbox._progress import progress_bar
from execbox.agent import extract_code
from execbox.evals.datasets import Problem
from execbox.llm import ChatClient, Generation, LLMError

__all__ = ["COMPLETION_STOP", "INSTRUCTION", "Endpoint", "generate_samples"]

Endpoint = Literal["chat", "completions"]

INSTRUCTION = (
    "Complete the following Python code. Answer with the complete function(s) in one ```python block, "
    "without tests or example usage.\n\n"
)
# What EvalPlus stops a base model's continuation at (its codegen's EOS list).
COMPLETION_STOP = ["<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint("]


def _chat_sample(problem: Problem, reply: str) -> dict[str, Any]:
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


def _chat_prompt(problem: Problem) -> str:
    prompt = problem.prompt if problem.style == "humaneval" else f"{problem.prompt}\n{problem.test_program}"
    return INSTRUCTION + prompt


def generate_samples(
    llm: ChatClient,
    problems: dict[str, Problem],
    *,
    n: int = 1,
    concurrency: int = 4,
    endpoint: Endpoint = "chat",
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """``n`` samples per problem from ``llm``, in task order (greedy when its temperature is 0).

    A failed generation becomes an empty completion (it will fail its tests) and keeps its error.
    """
    if n < 1 or concurrency < 1:
        raise ValueError("n and concurrency must be >= 1")
    bar = progress_bar(len(problems) * n, "sample", progress)

    def ask(problem: Problem, count: int) -> Generation:
        if endpoint == "completions":
            stop = llm.stop if llm.stop is not None else COMPLETION_STOP
            return llm.complete(problem.prompt, n=count, stop=stop)
        return llm.chat_n([{"role": "user", "content": _chat_prompt(problem)}], n=count)

    def one(problem: Problem) -> list[dict[str, Any]]:
        samples: list[dict[str, Any]] = []
        try:
            while len(samples) < n:
                generation = ask(problem, n - len(samples))
                usage = generation.usage.to_json()
                for text, reason in zip(generation.texts, generation.finish_reasons, strict=True):
                    if endpoint == "completions":
                        sample = {"task_id": problem.task_id, "completion": text}
                    else:
                        sample = _chat_sample(problem, text)
                    samples.append({**sample, "finish_reason": reason, "usage": usage})
        except LLMError as exc:
            while len(samples) < n:
                samples.append({"task_id": problem.task_id, "completion": "", "error": str(exc)})
        samples = samples[:n]
        for sample in samples:
            if on_sample is not None:
                on_sample(sample)
            bar.update(1)
        return samples

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="execbox-gen") as pool:
            return [sample for group in pool.map(one, problems.values()) for sample in group]
    finally:
        bar.close()
