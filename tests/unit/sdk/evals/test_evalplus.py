"""EvalPlus release files read as ``evalplus`` reads them: the shared files, MBPP+'s typed inputs
(checked against evalplus's own ``mbpp_deserialize_inputs`` on every task), where files are found."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from execbox.evals.evalplus import (
    DATASET_DIR_ENV,
    Dataset,
    default_dataset_path,
    deserialize_mbpp_inputs,
    load_evalplus,
    serialize_mbpp_inputs,
)


def test_humaneval_plus_loads_with_the_hash_evalplus_records(humaneval_plus_path: Path) -> None:
    dataset = load_evalplus(Dataset.HUMANEVAL, str(humaneval_plus_path))
    assert len(dataset) == 164 and next(iter(dataset.tasks)) == "HumanEval/0"
    # The README's hashes of the decompressed JSONL (evalplus hashes the file it reads: its own
    # decompressed copy when it downloads the release).
    assert dataset.md5 == "fe585eb4df8c88d844eeb463ea4d0302"
    assert dataset.sha256 == "42526ec0e7d5f3ee0b06d6ced98f8c8bae3d76519151bfb3d36f79010645bd7f"
    assert sum(len(t.base_input) for t in dataset.tasks.values()) == 1570
    assert sum(len(t.plus_input) for t in dataset.tasks.values()) == 122683
    assert {t for t, task in dataset.tasks.items() if task.atol} == {"HumanEval/2", "HumanEval/4", "HumanEval/32"}


def test_a_sample_is_its_solution_or_the_prompt_followed_by_its_completion(humaneval_plus_path: Path) -> None:
    task = load_evalplus(Dataset.HUMANEVAL, str(humaneval_plus_path)).tasks["HumanEval/0"]
    assert task.solution({"task_id": "HumanEval/0", "completion": "    return 1\n"}) == task.prompt + "    return 1\n"
    assert task.solution({"task_id": "HumanEval/0", "solution": "x = 1", "completion": "ignored"}) == "x = 1"
    assert task.reference == task.prompt + task.canonical_solution


def test_plain_and_gzipped_release_files_load_alike(humaneval_plus_path: Path, tmp_path: Path) -> None:
    plain = tmp_path / "HumanEvalPlus.jsonl"
    plain.write_bytes(gzip.decompress(humaneval_plus_path.read_bytes()))
    a = load_evalplus("humaneval", str(plain))
    b = load_evalplus("humaneval", str(humaneval_plus_path))
    assert a.tasks == b.tasks and a.md5 == b.md5


def test_mbpp_plus_inputs_are_deserialised_exactly_as_evalplus_does(mbpp_plus_path: Path) -> None:
    from evalplus.data.mbpp import mbpp_deserialize_inputs, mbpp_serialize_inputs

    dataset = load_evalplus(Dataset.MBPP, str(mbpp_plus_path))
    assert len(dataset) == 378 and dataset.md5 == "ee43ecabebf20deef4bb776a405ac5b1"
    with gzip.open(mbpp_plus_path, "rt") as fh:
        raw = {r["task_id"]: r for r in map(json.loads, fh)}
    typed = 0
    for task_id, task in dataset.tasks.items():
        for ours, field in ((task.base_input, "base_input"), (task.plus_input, "plus_input")):
            # list(): Mbpp/793's plus_input is released as {} (no inputs), which iterates as [] does.
            theirs = list(mbpp_deserialize_inputs(task_id, raw[task_id][field]))
            # Compared with every container's type (== takes {} for set() and 1 for 1.0); an argument
            # list's own type does not matter, it is spread into the call.
            assert _args(ours) == _args(theirs), (task_id, field)
            # Failing inputs are written with json.dump: the same JSON text is the same result file.
            assert json.dumps(serialize_mbpp_inputs(task_id, ours)) == json.dumps(
                mbpp_serialize_inputs(task_id, theirs)
            )
        typed += raw[task_id]["base_input"] != task.base_input
    assert typed > 50  # the table did change the inputs of the tasks it names


def _args(inputs: list[Any]) -> object:
    return [_typed(list(inp)) for inp in inputs]


def _typed(value: object) -> object:
    """A value with every container's type spelled out, so tuple vs list and {} vs set() differ."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_typed(v) for v in value])
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(map(repr, value)))
    if isinstance(value, dict):
        return ("dict", [(_typed(k), _typed(v)) for k, v in value.items()])
    return (type(value).__name__, value)


def test_inputs_of_tasks_outside_the_table_are_left_as_json() -> None:
    inputs = [[[1, 2], "a"]]
    assert deserialize_mbpp_inputs("Mbpp/3", inputs) is inputs
    assert deserialize_mbpp_inputs("Mbpp/2", [[[1, 2], [3]]]) == [[(1, 2), (3,)]]
    assert deserialize_mbpp_inputs("Mbpp/115", [[[[1], []]]]) == [[[{1}, {}]]]


def test_the_release_file_is_found_by_flag_then_evalplus_variable_then_directory_then_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HUMANEVAL_OVERRIDE_PATH", "MBPP_OVERRIDE_PATH", DATASET_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    project = tmp_path / "work" / "checkout" / "sub"
    project.mkdir(parents=True)
    shared = tmp_path / "work" / "shared" / "data" / "evalplus"
    shared.mkdir(parents=True)
    (shared / Dataset.MBPP.release_file).write_text("")
    # Found from any directory below the one holding shared/ (a checkout beside ../shared).
    found = default_dataset_path(Dataset.MBPP, cwd=str(project))
    assert found == str(shared / Dataset.MBPP.release_file)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / Dataset.MBPP.release_file).write_text("")
    monkeypatch.setenv(DATASET_DIR_ENV, str(elsewhere))
    assert default_dataset_path(Dataset.MBPP, cwd=str(project)) == str(elsewhere / Dataset.MBPP.release_file)
    monkeypatch.setenv("MBPP_OVERRIDE_PATH", "/data/MbppPlus.jsonl")
    assert default_dataset_path(Dataset.MBPP, cwd=str(project)) == "/data/MbppPlus.jsonl"
    # A directory named in the variable that lacks the file is an answer too: not found.
    monkeypatch.delenv("MBPP_OVERRIDE_PATH")
    monkeypatch.setenv(DATASET_DIR_ENV, str(tmp_path / "empty"))
    assert default_dataset_path(Dataset.MBPP, cwd=str(project)) is None


def test_a_missing_dataset_says_how_to_point_at_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATASET_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    with pytest.raises(FileNotFoundError, match="--dataset"):
        load_evalplus("humaneval")


def test_a_file_that_is_not_an_evalplus_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"task_id": "x/1", "prompt": "", "test": "", "entry_point": "f"}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        load_evalplus("humaneval", str(path))
