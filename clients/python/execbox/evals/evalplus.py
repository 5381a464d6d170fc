"""EvalPlus datasets (HumanEval+ and MBPP+ release files), read the way ``evalplus`` reads them.

A release file is JSONL (``.jsonl`` or ``.jsonl.gz``), one task per line: ``task_id``, ``prompt``,
``entry_point``, ``canonical_solution``, ``base_input``, ``plus_input``, ``atol``. Expected
outputs are not in the file: EvalPlus computes them by running ``prompt + canonical_solution`` on
every input, and so does :mod:`execbox.evals.groundtruth` (in the sandbox).

MBPP+ stores inputs as JSON, so tuples, sets and complex numbers arrive as lists and strings;
``evalplus.data.mbpp.mbpp_deserialize_inputs`` turns them back per task, and
:func:`deserialize_mbpp_inputs` does the same from the same table of task numbers.

Where the files are found (first hit wins), so ``execbox eval humaneval+`` needs no flag in a
checkout that has ``../shared`` beside it:

1. ``--dataset PATH`` / the ``path`` argument;
2. EvalPlus's own ``HUMANEVAL_OVERRIDE_PATH`` / ``MBPP_OVERRIDE_PATH``;
3. ``$EXECBOX_EVALPLUS_DIR/<release file name>``;
4. ``shared/data/evalplus/<release file name>`` in the current directory or any parent of it,
   then beside the checkout this package was installed from (editable installs).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "DATASET_DIR_ENV",
    "Dataset",
    "PlusDataset",
    "PlusTask",
    "default_dataset_path",
    "deserialize_mbpp_inputs",
    "load_evalplus",
    "serialize_mbpp_inputs",
]

DATASET_DIR_ENV = "EXECBOX_EVALPLUS_DIR"


class Dataset(StrEnum):
    """The two EvalPlus benchmarks, named as ``evalplus.evaluate --dataset`` names them."""

    HUMANEVAL = "humaneval"
    MBPP = "mbpp"

    @property
    def release_file(self) -> str:
        """The file name of the release this version of execbox is checked against."""
        return _RELEASE_FILES[self]

    @property
    def override_env(self) -> str:
        """EvalPlus's own variable naming a local copy of the release file."""
        return "HUMANEVAL_OVERRIDE_PATH" if self is Dataset.HUMANEVAL else "MBPP_OVERRIDE_PATH"


_RELEASE_FILES = {
    Dataset.HUMANEVAL: "HumanEvalPlus-v0.1.10.jsonl.gz",
    Dataset.MBPP: "MbppPlus-v0.2.0.jsonl.gz",
}


@dataclass(frozen=True)
class PlusTask:
    """One task of an EvalPlus release; inputs already deserialised (tuples, sets, complex)."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    base_input: list[list[Any]]
    plus_input: list[list[Any]]
    atol: float

    @property
    def reference(self) -> str:
        """The program EvalPlus runs to compute expected outputs."""
        return self.prompt + self.canonical_solution

    def solution(self, sample: Mapping[str, Any]) -> str:
        """A sample's program as EvalPlus builds it: ``solution``, else ``prompt + completion``."""
        if "solution" in sample:
            return str(sample["solution"])
        return self.prompt + str(sample.get("completion", ""))


@dataclass(frozen=True)
class PlusDataset:
    """A loaded release file."""

    name: Dataset
    path: str
    tasks: dict[str, PlusTask]
    md5: str  # of the decompressed JSONL: the ``hash`` evalplus writes when it reads its own copy
    sha256: str  # of the decompressed JSONL: names the ground-truth cache

    def __len__(self) -> int:
        return len(self.tasks)


def default_dataset_path(dataset: Dataset, *, cwd: str | None = None) -> str | None:
    """Where the release file of ``dataset`` is found without ``--dataset`` (see the module doc), or None."""
    override = os.environ.get(dataset.override_env)
    if override:
        return override
    name = dataset.release_file
    directory = os.environ.get(DATASET_DIR_ENV)
    if directory:
        candidate = Path(directory) / name
        return str(candidate) if candidate.is_file() else None
    start = Path(cwd or os.getcwd()).resolve()
    checkout = Path(__file__).resolve().parents[4]  # clients/python/execbox/evals/ -> the repository's root
    for base in (start, *start.parents, checkout):
        candidate = base / "shared" / "data" / "evalplus" / name
        if candidate.is_file():
            return str(candidate)
    return None


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        raw = fh.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def load_evalplus(dataset: Dataset | str, path: str | None = None) -> PlusDataset:
    """The tasks of an EvalPlus release file, keyed by task id, inputs deserialised as evalplus does.

    Raises:
        FileNotFoundError: no path was given and no release file was found (the message says where
            it looked and how to point at one).
        ValueError: the file is not an EvalPlus release (a record lacks a field).
    """
    name = Dataset(dataset)
    if path is None:
        path = default_dataset_path(name)
        if path is None:
            raise FileNotFoundError(
                f"no {name.release_file} found: pass --dataset PATH, or set {DATASET_DIR_ENV} to the directory "
                f"holding it (or {name.override_env} to the file), or keep shared/data/evalplus/ beside the checkout"
            )
    raw = _read_bytes(path)
    tasks: dict[str, PlusTask] = {}
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        try:
            task_id = str(record["task_id"])
            base, plus = record["base_input"], record["plus_input"]
            if name is Dataset.MBPP:
                base, plus = deserialize_mbpp_inputs(task_id, base), deserialize_mbpp_inputs(task_id, plus)
            tasks[task_id] = PlusTask(
                task_id=task_id,
                prompt=str(record["prompt"]),
                entry_point=str(record["entry_point"]),
                canonical_solution=str(record["canonical_solution"]),
                base_input=list(base),
                plus_input=list(plus),
                atol=float(record["atol"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}, line {number}: not an EvalPlus {name.value}+ record ({exc!r})") from exc
    return PlusDataset(
        name=name,
        path=path,
        tasks=tasks,
        md5=hashlib.md5(raw).hexdigest(),  # evalplus's own dataset hash, not a security measure
        sha256=hashlib.sha256(raw).hexdigest(),
    )


# ---------------------------------------------------------------- MBPP+ inputs
#
# The release stores every input as JSON. For the task numbers below, evalplus 0.3.1
# (evalplus/data/mbpp.py) rebuilds the Python values the canonical solution expects; each shape
# here is one of its cases, written as a function of one input (its argument list).


def _tuples(inp: list[Any]) -> list[Any]:  # every argument is a tuple
    return [tuple(arg) for arg in inp]


def _lists_of_tuples(inp: list[Any]) -> list[Any]:  # every argument is a list of tuples
    return [[tuple(item) for item in arg] for arg in inp]


def _first_list_of_tuples(inp: list[Any]) -> list[Any]:
    return [[tuple(item) for item in inp[0]], inp[1]]


def _second_tuple(inp: list[Any]) -> list[Any]:
    return [inp[0], tuple(inp[1])]


def _first_tuple(inp: list[Any]) -> list[Any]:
    return [tuple(inp[0]), *inp[1:]]


def _tuples_of_tuples(inp: list[Any]) -> list[Any]:
    return [tuple(tuple(item) for item in arg) for arg in inp]


def _first_mixed_tuple(inp: list[Any]) -> list[Any]:
    return [tuple(tuple(item) if isinstance(item, list) else item for item in inp[0])]


def _sets_of(inp: list[Any]) -> list[Any]:
    # As evalplus does: an empty list becomes an empty *dict* ({}), not an empty set.
    return [[set(item) if isinstance(item, list) and item else {} for item in inp[0]]]


def _real_and_complex(inp: list[Any]) -> list[Any]:
    return [float(inp[0]), complex(inp[1])]


def _dict_of_tuples(inp: list[Any]) -> list[Any]:
    return [{key: tuple(value) for key, value in inp[0].items()}, *inp[1:]]


def _complex(inp: list[Any]) -> list[Any]:
    return [complex(inp[0])]


def _all_tuples(value: Any) -> Any:
    return tuple(_all_tuples(item) for item in value) if isinstance(value, list) else value


def _deep_tuples(inp: list[Any]) -> Any:
    # evalplus turns the whole argument list into a tuple too; spread as arguments it is the same.
    return _all_tuples(inp)


_MBPP_SHAPES: list[tuple[Callable[[list[Any]], Any], tuple[int, ...]]] = [
    (_tuples, (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424)),
    (_tuples, (429, 470, 560, 579, 596, 616, 630, 726, 740, 744, 809)),
    (_lists_of_tuples, (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780)),
    (_first_list_of_tuples, (75, 413, 444, 753)),
    (_second_tuple, (106, 750)),
    (_sets_of, (115,)),
    (_real_and_complex, (124,)),
    (_first_tuple, (250, 405, 446, 617, 720, 763, 808, 307)),
    (_tuples_of_tuples, (259, 401, 445)),
    (_first_mixed_tuple, (278,)),
    (_dict_of_tuples, (722,)),
    (_complex, (252,)),
    (_deep_tuples, (580, 615, 791)),
]
_MBPP_BY_TASK = {number: shape for shape, numbers in _MBPP_SHAPES for number in numbers}


def _task_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[-1])


def deserialize_mbpp_inputs(task_id: str, inputs: list[Any]) -> list[Any]:
    """MBPP+ inputs of one task as the canonical solution takes them (see the table above)."""
    shape = _MBPP_BY_TASK.get(_task_number(task_id))
    return inputs if shape is None else [shape(inp) for inp in inputs]


def serialize_mbpp_inputs(task_id: str, inputs: list[Any]) -> list[Any]:
    """Failing inputs as evalplus writes them to ``eval_results.json`` (its ``mbpp_serialize_inputs``):
    only tasks 115, 124 and 252 are turned back into JSON-friendly values there; the rest are left
    for ``json.dump`` (tuples become lists)."""
    number = _task_number(task_id)
    if number == 115:
        return [[[list(item) for item in inp[0]]] for inp in inputs]
    if number in (124, 252):
        return [[str(arg) for arg in inp] for inp in inputs]
    return inputs
