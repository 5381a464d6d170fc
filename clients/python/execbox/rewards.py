"""Rewards by execution, with the call shapes of TRL and verl; never a silent 0 for a failure of ours.

TRL (``GRPOTrainer(reward_funcs=[CodeReward(client)])``) calls a reward function as
``reward(prompts=..., completions=..., completion_ids=..., **dataset_columns, trainer_state=...)``
with every dataset column as a list, one item per completion; completions are strings, or chat
messages (``[{"role": "assistant", "content": ...}]``) for a conversational dataset. It returns one
float per completion, or None for "cannot score this one" (TRL leaves such a completion out of its
group's baseline and gives it no advantage).

verl calls a custom ``compute_score(data_source, solution_str, ground_truth, extra_info=None,
**reward_kwargs)`` per completion (its naive reward manager) or ``compute_score(data_sources=...,
solution_strs=..., ground_truths=..., extra_infos=..., **reward_kwargs)`` per batch (its batch
manager); :func:`compute_score` and :func:`compute_score_batch` are those two.

The tests of a problem (the ``tests`` column, verl's ``ground_truth``), read by :func:`parse_tests`:

- function tests, judged by the server where the solution cannot reach (test-case mode, the
  solution's return values compared by value, expected values never in its process):
  ``{"fn_name" | "entry_point": "f", "inputs": [[arg, ...], ...], "outputs": [ret, ...]}`` (the
  APPS/PRIME format verl's code datasets use; an output given as ``[ret]`` also passes for ``ret``,
  as PRIME's checker allows), or HumanEval/MBPP assertions, ``{"entry_point": "f", "test":
  "def check(candidate): ..."}`` / ``{"test_list": ["assert f(1) == 2", ...]}``, converted to cases
  by :meth:`TestSpec.from_assertions` (a script it cannot convert raises ValueError: assertion
  scripts run inside the solution's process, where a solution can fake them, so they are not
  used for rewards);
- stdin/stdout tests: ``{"inputs": ["stdin", ...], "outputs": ["stdout", ...]}`` with an optional
  ``"language": "python" | "cpp"``: one job per input, its stdout compared here (trailing
  whitespace of each line and trailing blank lines ignored) and the run must exit 0.

Every group of completions is one batch request (chunked only past the server's limits). A job the
service could not run (``service_error``) is run again up to ``retries`` times; what still failed
is never scored 0: ``on_service_error`` says what happens — ``"raise"`` (default:
:class:`RewardServiceError`), ``"nan"`` (float NaN) or ``"skip"`` (None; TRL only).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from execbox._async_client import AsyncClient
from execbox._client import Client
from execbox._exceptions import ExecboxError
from execbox._models import JobResult, JobStatus, Language, TestSpec
from execbox._values import encode_value

__all__ = [
    "AsyncCodeReward",
    "CodeReward",
    "FunctionTests",
    "OnServiceError",
    "RewardServiceError",
    "Score",
    "StdioTests",
    "ascore_completions",
    "compute_score",
    "compute_score_batch",
    "extract_code",
    "parse_tests",
    "score_completions",
]

OnServiceError = Literal["raise", "nan", "skip"]
C = TypeVar("C", Client, AsyncClient)
Scoring = Literal["fraction", "all"]

_FENCE = re.compile(r"```([A-Za-z0-9_+#-]*)[ \t]*\n(.*?)```", re.S)
_FENCE_NAMES = {
    Language.PYTHON: {"python", "py", "python3"},
    Language.CPP: {"cpp", "c++", "cc", "cxx"},
}


class RewardServiceError(ExecboxError):
    """The service could not run some completions' tests after retries (``on_service_error="raise"``).

    ``indices`` are the completions without a score; ``reasons`` what the service said.
    """

    def __init__(self, indices: list[int], reasons: list[str]) -> None:
        self.indices = indices
        self.reasons = reasons
        shown = "; ".join(dict.fromkeys(reasons))[:500]
        super().__init__(
            f"{len(indices)} completion(s) could not be scored because the execbox service failed "
            f"(not a verdict on the code; never scored as 0): {shown}"
        )


@dataclass(frozen=True)
class FunctionTests:
    """Cases for a function, judged by the server (test-case mode); ``prefix`` goes before the code."""

    spec: TestSpec
    prefix: str = ""
    language: Language = Language.PYTHON


@dataclass(frozen=True)
class StdioTests:
    """Programs given ``stdin`` and expected to print ``stdout``; compared here."""

    cases: tuple[tuple[str, str], ...]
    language: Language = Language.PYTHON


Tests = FunctionTests | StdioTests


@dataclass(frozen=True)
class Score:
    """One completion's reward: ``value`` None when the service could not run it (``service_error`` says why)."""

    value: float | None
    passed: int
    total: int
    service_error: str | None = None

    def to_verl(self) -> dict[str, Any]:
        """verl's dict form: ``score`` is the reward, the rest goes to its ``reward_extra_info``."""
        value = math.nan if self.value is None else self.value
        return {
            "score": value,
            "passed": self.passed,
            "total": self.total,
            "service_error": self.service_error is not None,
        }


# ---------------------------------------------------------------- reading tests and completions


def parse_tests(value: Any, *, extra_info: Mapping[str, Any] | None = None) -> Tests:
    """A problem's tests from a dataset column or verl's ``ground_truth`` (a dict or its JSON text).

    Raises:
        ValueError: the value is none of the formats in this module's docstring, or assertions
            that cannot be turned into cases.
    """
    if isinstance(value, FunctionTests | StdioTests):
        return value
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, Mapping):
        raise ValueError(f"tests must be a mapping or its JSON text, not {type(data).__name__}")
    language = Language(data.get("language") or (extra_info or {}).get("language") or Language.PYTHON)
    entry = data.get("fn_name") or data.get("entry_point")
    prefix = str(data.get("prompt_prefix") or data.get("setup") or "")
    if "inputs" in data and "outputs" in data:
        inputs, outputs = list(data["inputs"]), list(data["outputs"])
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        if entry:
            return FunctionTests(_json_cases(str(entry), inputs, outputs, data), prefix, language)
        return StdioTests(tuple((str(i), str(o)) for i, o in zip(inputs, outputs, strict=True)), language)
    script = data.get("test") or data.get("tests") or data.get("assertions")
    if script is None and data.get("test_list") is not None:
        script = "\n".join(data["test_list"])
        prefix = str(data.get("test_setup_code") or "") or prefix
    if isinstance(script, str):
        name = str(entry) if entry else _asserted_name(script)
        spec = TestSpec.from_assertions(script, entry_point=name)
        return FunctionTests(spec, prefix, language)
    raise ValueError("tests need 'inputs'/'outputs' (and 'fn_name' for a function), or assertions in 'test'")


def _json_cases(entry: str, inputs: list[Any], outputs: list[Any], data: Mapping[str, Any]) -> TestSpec:
    """APPS/PRIME cases as typed cases judged like EvalPlus (by value, on the server's side).

    PRIME's checker turns a returned tuple into a list and takes ``[ret]`` for ``ret``: the same
    answers pass here as alternatives.
    """
    cases = []
    for args, expected in zip(inputs, outputs, strict=True):
        accepted = [expected]
        if isinstance(expected, list):
            accepted.append(tuple(expected))
            if len(expected) == 1:
                accepted += [expected[0]] + ([tuple(expected[0])] if isinstance(expected[0], list) else [])
        cases.append(
            {
                "input": encode_value(list(args) if isinstance(args, list) else [args]),
                "expected": encode_value(expected),
                "alternatives": [encode_value(a) for a in accepted[1:]] or None,
            }
        )
    return TestSpec.model_validate(
        {"entry_point": entry, "cases": cases, "semantics": "evalplus", "atol": float(data.get("atol", 0.0))}
    )


def _asserted_name(script: str) -> str:
    """The function an MBPP assertion list calls: the first called name in the first assert."""
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Assert):
            for call in ast.walk(node.test):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id not in _BUILTINS:
                    return call.func.id
    raise ValueError("cannot tell which function the assertions test: give 'entry_point'")


_BUILTINS = {"set", "abs", "round", "sorted", "list", "tuple", "len", "isclose", "str", "int", "float"}


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or the content of its chat messages (the assistant's)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        parts = [m.get("content") or "" for m in completion if isinstance(m, Mapping) and m.get("role") != "user"]
        return "\n".join(str(p) for p in parts)
    raise TypeError(f"a completion is a string or a list of chat messages, not {type(completion).__name__}")


def extract_code(text: str, language: Language = Language.PYTHON) -> str:
    """The code of a completion: its last fenced block in ``language`` (or unlabelled); else the whole text."""
    names = _FENCE_NAMES[language]
    blocks = [body for tag, body in _FENCE.findall(text) if not tag or tag.lower() in names]
    return blocks[-1].strip("\n") if blocks else text


# ---------------------------------------------------------------- scoring


def score_completions(
    client: Client,
    codes: Sequence[str],
    tests: Sequence[Tests],
    *,
    scoring: Scoring = "fraction",
    timeout_s: float = 10.0,
    memory_mb: int | None = None,
    retries: int = 2,
    compile_timeout_s: float | None = None,
) -> list[Score]:
    """Run each code against its tests in one batch; a Score per code (``value`` None: service failure).

    ``scoring``: ``"fraction"`` of tests passed, or ``"all"`` (1.0 only when every test passed).
    """
    plan = _Plan.of(
        codes, tests, scoring=scoring, timeout_s=timeout_s, memory_mb=memory_mb, compile_timeout_s=compile_timeout_s
    )
    results = client.batch(plan.jobs, progress=False)
    for _ in range(retries):
        again = plan.to_retry(results)
        if not again:
            break
        plan.merge(results, again, client.batch([plan.jobs[i] for i in again], progress=False))
    return plan.scores(results)


async def ascore_completions(
    client: AsyncClient,
    codes: Sequence[str],
    tests: Sequence[Tests],
    *,
    scoring: Scoring = "fraction",
    timeout_s: float = 10.0,
    memory_mb: int | None = None,
    retries: int = 2,
    compile_timeout_s: float | None = None,
) -> list[Score]:
    """:func:`score_completions` with an :class:`AsyncClient`."""
    plan = _Plan.of(
        codes, tests, scoring=scoring, timeout_s=timeout_s, memory_mb=memory_mb, compile_timeout_s=compile_timeout_s
    )
    results = await client.batch(plan.jobs, progress=False)
    for _ in range(retries):
        again = plan.to_retry(results)
        if not again:
            break
        plan.merge(results, again, await client.batch([plan.jobs[i] for i in again], progress=False))
    return plan.scores(results)


@dataclass
class _Plan:
    """The jobs of a group of completions and how their results become scores (no I/O).

    Jobs that come back ``service_error`` may be sent again: their result never reached us, and a
    job is a program in a fresh sandbox process with no effect outside it.
    """

    codes: Sequence[str]
    tests: Sequence[Tests]
    scoring: Scoring
    jobs: list[dict[str, Any]]
    owner: list[tuple[int, int]]  # job -> (completion, case; -1 for a function-test job)

    @classmethod
    def of(
        cls,
        codes: Sequence[str],
        tests: Sequence[Tests],
        *,
        scoring: Scoring,
        timeout_s: float,
        memory_mb: int | None,
        compile_timeout_s: float | None = None,
    ) -> _Plan:
        if len(codes) != len(tests):
            raise ValueError(f"{len(codes)} completions but {len(tests)} test sets")
        jobs: list[dict[str, Any]] = []
        owner: list[tuple[int, int]] = []
        for i, (code, test) in enumerate(zip(codes, tests, strict=True)):
            if isinstance(test, FunctionTests):
                spec = test.spec.model_copy(
                    update={
                        "stop_on_first_failure": scoring == "all",
                        "per_test_timeout_s": test.spec.per_test_timeout_s or timeout_s,
                    }
                )
                source = f"{test.prefix}\n{code}" if test.prefix and f"def {spec.entry_point}" not in code else code
                tests_body = spec.model_dump(exclude_none=True)
                jobs.append({"code": source, "tests": tests_body, "timeout_s": _spec_timeout(spec, timeout_s)})
                owner.append((i, -1))
            else:
                for k, (stdin, _) in enumerate(test.cases):
                    jobs.append({"code": code, "stdin": stdin, "language": test.language.value, "timeout_s": timeout_s})
                    owner.append((i, k))
        for job in jobs:
            if memory_mb is not None:
                job["memory_mb"] = memory_mb
            if compile_timeout_s is not None and job.get("language") == Language.CPP.value:
                job["compile_timeout_s"] = compile_timeout_s
        return cls(codes, tests, scoring, jobs, owner)

    @staticmethod
    def to_retry(results: list[JobResult]) -> list[int]:
        return [i for i, r in enumerate(results) if not r.is_verdict]

    @staticmethod
    def merge(results: list[JobResult], again: list[int], rerun: list[JobResult]) -> None:
        for i, result in zip(again, rerun, strict=True):
            result.index = i
            results[i] = result

    def scores(self, results: list[JobResult]) -> list[Score]:
        return _scores(self.codes, self.tests, self.owner, results, self.scoring)


def _spec_timeout(spec: TestSpec, per_case_s: float) -> float:
    """A function-test job runs every case: its budget is the cases' (bounded like EvalPlus: 60 s)."""
    n = len(spec.cases or []) or 1
    return min(60.0, per_case_s * n) + 1.0


def _scores(
    codes: Sequence[str],
    tests: Sequence[Tests],
    owner: list[tuple[int, int]],
    results: list[JobResult],
    scoring: Scoring,
) -> list[Score]:
    passed = [0] * len(codes)
    failures: dict[int, str] = {}
    for (i, case), result in zip(owner, results, strict=True):
        if not result.is_verdict:
            failures.setdefault(i, result.message or "service_error")
            continue
        test = tests[i]
        if isinstance(test, FunctionTests):
            passed[i] += sum(1 for t in result.tests or [] if t.passed) if result.status is JobStatus.OK else 0
        elif result.status is JobStatus.OK and _same_output(result.stdout, test.cases[case][1]):
            passed[i] += 1
    scores = []
    for i, test in enumerate(tests):
        total = len(test.spec.cases or []) if isinstance(test, FunctionTests) else len(test.cases)
        if i in failures:
            scores.append(Score(None, passed[i], total, failures[i]))
            continue
        if total == 0:
            value = 0.0
        elif scoring == "all":
            value = float(passed[i] == total)
        else:
            value = passed[i] / total
        scores.append(Score(value, passed[i], total))
    return scores


def _same_output(actual: str, expected: str) -> bool:
    return _lines(actual) == _lines(expected)


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _apply_policy(scores: list[Score], on_service_error: OnServiceError) -> list[float | None]:
    failed = [i for i, s in enumerate(scores) if s.value is None]
    if failed and on_service_error == "raise":
        raise RewardServiceError(failed, [scores[i].service_error or "" for i in failed])
    marker = math.nan if on_service_error == "nan" else None
    return [s.value if s.value is not None else marker for s in scores]


# ---------------------------------------------------------------- TRL


class _TrlReward(Generic[C]):
    """What TRL's two reward function forms share: options, reading the columns, the policy."""

    def __init__(
        self,
        client: C,
        *,
        tests_column: str = "tests",
        scoring: Scoring = "fraction",
        on_service_error: OnServiceError = "raise",
        retries: int = 2,
        timeout_s: float = 10.0,
        memory_mb: int | None = None,
        compile_timeout_s: float | None = None,
    ) -> None:
        if on_service_error not in ("raise", "nan", "skip"):
            raise ValueError("on_service_error must be 'raise', 'nan' or 'skip'")
        self.client: C = client
        self.tests_column = tests_column
        self.scoring: Scoring = scoring
        self.on_service_error: OnServiceError = on_service_error
        self.retries = retries
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.compile_timeout_s = compile_timeout_s
        self.__name__ = "execbox_code_reward"  # TRL names a reward function's metrics by it

    def _read(self, completions: Sequence[Any], columns: Mapping[str, Any]) -> tuple[list[str], list[Tests]]:
        if self.tests_column not in columns:
            raise KeyError(f"no dataset column {self.tests_column!r} among {sorted(columns)}")
        tests = [parse_tests(t) for t in columns[self.tests_column]]
        codes = [extract_code(completion_text(c), t.language) for c, t in zip(completions, tests, strict=True)]
        return codes, tests

    def _rewards(self, scores: list[Score], columns: Mapping[str, Any]) -> list[float | None]:
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric("execbox/service_errors", float(sum(s.value is None for s in scores)))
        return _apply_policy(scores, self.on_service_error)


class CodeReward(_TrlReward[Client]):
    """A TRL reward function: ``reward(completions, **dataset_columns) -> list[float | None]``.

    Args:
        client: the execbox Client to run on (its base URL and key); not closed here.
        tests_column: the dataset column with each problem's tests (see :func:`parse_tests`).
        scoring: ``"fraction"`` of tests passed, or ``"all"``.
        on_service_error: ``"raise"``, ``"nan"`` or ``"skip"`` (None, which TRL leaves out).
        retries: times a job the service could not run is sent again.
        timeout_s: per test (stdin/stdout) or per case (function tests).
        memory_mb: per job; default the server's.
        compile_timeout_s: of a C++ build; default the server's.

    A ``log_metric`` keyword (TRL passes one) gets ``execbox/service_errors`` per call.
    """

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        """One reward per completion; ``kwargs`` holds the dataset's columns (lists) and TRL's extras.

        Raises:
            KeyError: no ``tests_column`` among the columns. ValueError: tests in no known format.
            RewardServiceError: the service failed some (``on_service_error="raise"``).
        """
        codes, tests = self._read(completions, kwargs)
        scores = score_completions(
            self.client,
            codes,
            tests,
            scoring=self.scoring,
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            retries=self.retries,
            compile_timeout_s=self.compile_timeout_s,
        )
        return self._rewards(scores, kwargs)


class AsyncCodeReward(_TrlReward[AsyncClient]):
    """:class:`CodeReward` for an :class:`AsyncClient`: TRL awaits an async reward function and runs it
    beside the others (``asyncio.gather``), so execution overlaps the other rewards' work."""

    async def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        """See :meth:`CodeReward.__call__`."""
        codes, tests = self._read(completions, kwargs)
        scores = await ascore_completions(
            self.client,
            codes,
            tests,
            scoring=self.scoring,
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            retries=self.retries,
            compile_timeout_s=self.compile_timeout_s,
        )
        return self._rewards(scores, kwargs)


# ---------------------------------------------------------------- verl


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    execbox_url: str | None = None,
    execbox_api_key: str | None = None,
    scoring: Scoring = "fraction",
    on_service_error: Literal["raise", "nan"] = "raise",
    retries: int = 2,
    timeout_s: float = 10.0,
    memory_mb: int | None = None,
    compile_timeout_s: float | None = None,
) -> dict[str, Any]:
    """verl's custom ``compute_score`` for one completion; the keywords come from
    ``custom_reward_function.reward_kwargs``. Returns ``{"score", "passed", "total", "service_error"}``.

    Raises:
        RewardServiceError: the service could not run it (``on_service_error="raise"``); with
            ``"nan"`` the score is NaN and ``service_error`` True.
    """
    [score] = compute_score_batch(
        [data_source],
        [solution_str],
        [ground_truth],
        [extra_info],
        execbox_url=execbox_url,
        execbox_api_key=execbox_api_key,
        scoring=scoring,
        on_service_error=on_service_error,
        retries=retries,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        compile_timeout_s=compile_timeout_s,
    )
    return score


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    *,
    execbox_url: str | None = None,
    execbox_api_key: str | None = None,
    scoring: Scoring = "fraction",
    on_service_error: Literal["raise", "nan"] = "raise",
    retries: int = 2,
    timeout_s: float = 10.0,
    memory_mb: int | None = None,
    compile_timeout_s: float | None = None,
) -> list[dict[str, Any]]:
    """verl's batch reward manager form: every completion of the batch in one batch request."""
    if on_service_error not in ("raise", "nan"):
        raise ValueError("verl needs a number for every completion: on_service_error must be 'raise' or 'nan'")
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    tests = [parse_tests(gt, extra_info=info) for gt, info in zip(ground_truths, infos, strict=True)]
    codes = [extract_code(s, t.language) for s, t in zip(solution_strs, tests, strict=True)]
    with Client(execbox_url, api_key=execbox_api_key) as client:
        scores = score_completions(
            client,
            codes,
            tests,
            scoring=scoring,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            retries=retries,
            compile_timeout_s=compile_timeout_s,
        )
    _apply_policy(scores, on_service_error)  # raises for "raise"
    return [s.to_verl() for s in scores]
