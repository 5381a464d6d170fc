"""The EvalPlus release files the evaluation tests read: ../shared/data/evalplus beside the checkout.

CI has them there (the issue's contract), so a missing file fails the test instead of skipping it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

EVALPLUS_DIR = Path(__file__).resolve().parents[5] / "shared" / "data" / "evalplus"
HUMANEVAL_PLUS = EVALPLUS_DIR / "HumanEvalPlus-v0.1.10.jsonl.gz"
MBPP_PLUS = EVALPLUS_DIR / "MbppPlus-v0.2.0.jsonl.gz"


@pytest.fixture(scope="session")
def humaneval_plus_path() -> Path:
    if not HUMANEVAL_PLUS.is_file():
        pytest.fail(f"the EvalPlus release files belong in {EVALPLUS_DIR}")
    return HUMANEVAL_PLUS


@pytest.fixture(scope="session")
def mbpp_plus_path() -> Path:
    if not MBPP_PLUS.is_file():
        pytest.fail(f"the EvalPlus release files belong in {EVALPLUS_DIR}")
    return MBPP_PLUS
