"""Execution-based evaluation (HumanEval, MBPP, EvalPlus formats) on the batch path."""

from execbox.evals._core import EvalReport, SampleResult, evaluate, pass_at_k
from execbox.evals.datasets import Problem, load_humaneval, load_problems

__all__ = ["EvalReport", "Problem", "SampleResult", "evaluate", "load_humaneval", "load_problems", "pass_at_k"]
