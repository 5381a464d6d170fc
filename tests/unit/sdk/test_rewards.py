"""execbox.rewards at the transport seam, called exactly as TRL 1.16's GRPOTrainer calls a reward
function (``reward_func(prompts=, completions=, completion_ids=, **columns, trainer_state=,
log_extra=, log_metric=)``): one batch request per group, tests parsed from dataset columns, and a
failure of the service never scored 0."""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

import httpx
import pytest

from execbox import AsyncClient, Client
from execbox.rewards import (
    AsyncCodeReward,
    CodeReward,
    FunctionTests,
    RewardServiceError,
    StdioTests,
    extract_code,
    parse_tests,
)

STDIO = {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10"]}
FUNCTION = {"fn_name": "add", "inputs": [[1, 2], [5, 5]], "outputs": [3, 10]}


class FakeJudge:
    """``/v1/batch/stream`` that 'runs' a job: stdout = the sum of two stdin ints when the code says
    ``ADD``; function tests all pass when the code says ``ADD``. Jobs whose code says ``LOST``
    come back ``service_error`` ``lost_times`` times."""

    def __init__(self, lost_times: int = 0) -> None:
        self.bodies: list[list[dict[str, Any]]] = []
        self.lost_left = lost_times

    def __call__(self, request: httpx.Request) -> httpx.Response:
        jobs = json.loads(request.content)["jobs"]
        self.bodies.append(jobs)
        lost_now = self.lost_left > 0
        self.lost_left -= int(lost_now)
        lines = []
        for i, job in enumerate(jobs):
            line: dict[str, Any] = {"type": "result", "index": i, "status": "ok"}
            good = "ADD" in job["code"]
            if "LOST" in job["code"] and lost_now:
                line = {"type": "result", "index": i, "status": "service_error", "message": "worker lost"}
            elif job.get("tests"):
                cases = job["tests"]["cases"]
                line["tests"] = [
                    {"index": k, "passed": good, "status": "passed" if good else "failed"} for k in range(len(cases))
                ]
            elif job.get("stdin") is not None:
                a, b = map(int, job["stdin"].split())
                line["stdout"] = f"{a + b}\n" if good else "0\n"
            lines.append(line)
        lines.append({"type": "summary", "total": len(jobs), "by_status": {}, "wall_ms": 1.0})
        return httpx.Response(200, content=b"".join(json.dumps(x).encode() + b"\n" for x in lines))


def client_for(judge: FakeJudge) -> Client:
    return Client("http://execbox.test", http_client=httpx.Client(transport=httpx.MockTransport(judge)))


def trl_call(reward: Any, completions: list[Any], tests: list[Any], metrics: dict[str, float]) -> Any:
    """The call GRPOTrainer._calculate_rewards makes (trl 1.16.0), with a dataset column ``tests``."""
    return reward(
        prompts=["p"] * len(completions),
        completions=completions,
        completion_ids=[[1, 2]] * len(completions),
        tests=tests,
        trainer_state=None,
        log_extra=lambda column, values: None,
        log_metric=lambda name, value: metrics.__setitem__(name, value),
    )


def test_trl_shape_scores_a_group_of_string_completions_in_one_batch_request() -> None:
    judge = FakeJudge()
    completions = ["```python\nADD\n```", "```python\nwrong\n```", "ADD", "nothing"]
    metrics: dict[str, float] = {}
    with client_for(judge) as client:
        rewards = trl_call(CodeReward(client), completions, [STDIO, STDIO, FUNCTION, FUNCTION], metrics)
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    assert len(judge.bodies) == 1 and len(judge.bodies[0]) == 2 + 2 + 1 + 1  # stdio: a job per input
    assert metrics == {"execbox/service_errors": 0.0}


def test_trl_shape_takes_conversational_completions() -> None:
    judge = FakeJudge()
    completions = [[{"role": "assistant", "content": "Here:\n```python\nADD\n```"}]]
    with client_for(judge) as client:
        assert trl_call(CodeReward(client), completions, [json.dumps(STDIO)], {}) == [1.0]


def test_a_service_error_is_retried_then_scored_when_the_service_recovers() -> None:
    judge = FakeJudge(lost_times=1)
    with client_for(judge) as client:
        rewards = trl_call(CodeReward(client, retries=1), ["ADD LOST", "ADD"], [STDIO, STDIO], {})
    assert rewards == [1.0, 1.0]
    assert [len(b) for b in judge.bodies] == [4, 2]  # only the lost jobs are sent again


@pytest.mark.parametrize("policy", ["raise", "nan", "skip"])
def test_a_lasting_service_error_is_never_a_zero(policy: str) -> None:
    judge = FakeJudge(lost_times=10)
    metrics: dict[str, float] = {}
    with client_for(judge) as client:
        reward = CodeReward(client, retries=1, on_service_error=policy)  # type: ignore[arg-type]
        if policy == "raise":
            with pytest.raises(RewardServiceError) as info:
                trl_call(reward, ["ADD LOST", "ADD"], [STDIO, STDIO], metrics)
            assert info.value.indices == [0] and "worker lost" in str(info.value)
            return
        rewards = trl_call(reward, ["ADD LOST", "wrong"], [STDIO, STDIO], metrics)
    assert rewards[1] == 0.0  # a verdict stays a verdict
    assert math.isnan(rewards[0]) if policy == "nan" else rewards[0] is None
    assert metrics == {"execbox/service_errors": 1.0}


def test_scoring_all_gives_credit_only_when_every_test_passes() -> None:
    class HalfJudge(FakeJudge):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            jobs = json.loads(request.content)["jobs"]
            lines: list[dict[str, Any]] = [
                {"type": "result", "index": i, "status": "ok", "stdout": "3\n" if i % 2 == 0 else "x"}
                for i in range(len(jobs))
            ]
            lines.append({"type": "summary", "total": len(jobs), "by_status": {}, "wall_ms": 1.0})
            return httpx.Response(200, content=b"".join(json.dumps(x).encode() + b"\n" for x in lines))

    with client_for(HalfJudge()) as client:
        assert trl_call(CodeReward(client), ["c"], [STDIO], {}) == [0.5]
        assert trl_call(CodeReward(client, scoring="all"), ["c"], [STDIO], {}) == [0.0]


def test_a_missing_tests_column_says_which_columns_there_are() -> None:
    with client_for(FakeJudge()) as client, pytest.raises(KeyError, match="tests"):
        CodeReward(client)(completions=["x"], answer=["y"])


def test_reward_functions_have_the_name_trl_logs_them_by() -> None:
    with client_for(FakeJudge()) as client:
        assert CodeReward(client).__name__ == "execbox_code_reward"


# ---------------------------------------------------------------- reading tests and code


def test_apps_function_tests_accept_a_tuple_and_a_wrapped_return_as_prime_does() -> None:
    tests = parse_tests({"fn_name": "f", "inputs": [[1], [2]], "outputs": [[3], [[1, 2]]]})
    assert isinstance(tests, FunctionTests) and tests.spec.semantics == "evalplus"
    cases = tests.spec.cases or []
    assert cases[0].expected == [3] and cases[0].alternatives == [{"$tuple": [3]}, 3]
    assert cases[1].alternatives == [{"$tuple": [[1, 2]]}, [1, 2], {"$tuple": [1, 2]}]


def test_mbpp_and_humaneval_assertions_become_cases_judged_outside_the_solution() -> None:
    mbpp = parse_tests({"test_list": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]})
    assert isinstance(mbpp, FunctionTests) and mbpp.spec.entry_point == "add" and len(mbpp.spec.cases or []) == 2
    assert mbpp.spec.assertions is None
    human = parse_tests({"entry_point": "inc", "test": "def check(candidate):\n    assert candidate(1) == 2\n"})
    assert isinstance(human, FunctionTests) and human.spec.entry_point == "inc"


def test_stdio_tests_carry_their_language_from_the_tests_or_verls_extra_info() -> None:
    assert parse_tests(STDIO) == StdioTests((("1 2\n", "3\n"), ("5 5\n", "10")))
    cpp = parse_tests(json.dumps(STDIO), extra_info={"language": "cpp"})
    assert isinstance(cpp, StdioTests) and cpp.language.value == "cpp"


def test_tests_in_no_known_format_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_tests({"answer": 3})
    with pytest.raises(ValueError):
        parse_tests({"inputs": ["1"], "outputs": []})


def test_code_is_the_last_fenced_block_of_the_language_else_the_text() -> None:
    text = "```python\nfirst\n```\nthen\n```cpp\nint main(){}\n```\n```py\nlast\n```"
    assert extract_code(text) == "last"
    assert extract_code(text, parse_tests({**STDIO, "language": "cpp"}).language) == "int main(){}"
    assert extract_code("print(1)") == "print(1)"


async def test_the_async_reward_is_awaited_as_trl_awaits_an_async_callable_instance() -> None:
    judge = FakeJudge(lost_times=1)
    transport = httpx.MockTransport(judge)
    async with AsyncClient("http://execbox.test", http_client=httpx.AsyncClient(transport=transport)) as client:
        reward = AsyncCodeReward(client, retries=1)
        # trl.trainer.utils.is_async_callable: a callable instance whose __call__ is a coroutine function.
        assert inspect.iscoroutinefunction(reward.__call__)
        rewards = await reward(
            prompts=["p", "p"], completions=["ADD LOST", "wrong"], completion_ids=[[0], [0]], tests=[STDIO, FUNCTION]
        )
    assert rewards == [1.0, 0.0] and [len(b) for b in judge.bodies] == [3, 2]
