"""execbox.rewards against the real service, with the frameworks' own call shapes.

TRL is not installed here (it needs torch): its reward call is made exactly as
``GRPOTrainer._calculate_rewards`` makes it in trl 1.16.0. verl's reward function is loaded by
verl's own loader (``verl.utils.import_utils.load_extern_object``, a stdlib-only module taken from
verl's wheel: importing ``verl`` itself pulls torch) and called as its naive reward manager calls it
(``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`` with the config's
``reward_kwargs`` merged in), and as its batch manager does.
"""

from __future__ import annotations

import importlib.util
import json
import math
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from execbox import Client
from execbox.rewards import CodeReward, RewardServiceError
from tests.support.server import LocalServer
from tests.support.verl_sf import fetch_wheel

ADD_STDIO = {"inputs": ["1 2\n", "40 2\n"], "outputs": ["3\n", "42\n"]}
ADD_CPP = {**ADD_STDIO, "language": "cpp"}
ADD_APPS = {"fn_name": "add", "inputs": [[1, 2], [40, 2]], "outputs": [3, 42]}
ADD_MBPP = {"test_list": ["assert add(1, 2) == 3", "assert add(40, 2) == 42"]}

PY_STDIO = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
CPP_STDIO = '```cpp\n#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<"\\n";}\n```'
PY_FUNCTION = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
WRONG_FUNCTION = "```python\ndef add(a, b):\n    return a - b\n```"
# Fakes: each must score 0, not 1.
EXIT_EARLY = "```python\nimport os\nos._exit(0)\ndef add(a, b):\n    return a + b\n```"
SYS_EXIT = "```python\nimport sys\nsys.exit(0)\n```"
ALWAYS_EQUAL = (
    "```python\nclass Yes:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Yes()\n```"
)


def trl_call(reward: Any, completions: list[Any], tests: list[Any]) -> Any:
    metrics: dict[str, float] = {}
    rewards = reward(
        prompts=["Add two numbers."] * len(completions),
        completions=completions,
        completion_ids=[[0]] * len(completions),
        tests=tests,
        trainer_state=None,
        log_extra=lambda column, values: None,
        log_metric=metrics.__setitem__,
    )
    assert metrics["execbox/service_errors"] == 0.0
    return rewards


def test_trl_group_of_completions_scored_by_execution(client: Client) -> None:
    completions = [PY_STDIO, CPP_STDIO, PY_FUNCTION, WRONG_FUNCTION, PY_FUNCTION, "no code at all"]
    tests = [ADD_STDIO, ADD_CPP, ADD_APPS, ADD_APPS, ADD_MBPP, ADD_STDIO]
    # Generous limits: a busy CI machine must not turn a slow g++ into a compile timeout.
    reward = CodeReward(client, timeout_s=30, compile_timeout_s=60)
    assert trl_call(reward, completions, tests) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_trl_conversational_completions(client: Client) -> None:
    completions = [[{"role": "assistant", "content": PY_FUNCTION}], [{"role": "assistant", "content": PY_STDIO}]]
    assert trl_call(CodeReward(client), completions, [json.dumps(ADD_APPS), ADD_STDIO]) == [1.0, 1.0]


@pytest.mark.parametrize("fake", [EXIT_EARLY, SYS_EXIT, ALWAYS_EQUAL], ids=["os_exit", "sys_exit", "always_eq"])
@pytest.mark.parametrize("tests", [ADD_APPS, ADD_MBPP], ids=["apps", "mbpp"])
def test_a_solution_that_fakes_its_tests_scores_zero(client: Client, fake: str, tests: dict[str, Any]) -> None:
    assert trl_call(CodeReward(client), [fake], [tests]) == [0.0]


def test_a_service_that_cannot_be_reached_is_never_a_zero_it_raises_or_is_marked() -> None:
    """(A worker lost mid-batch is tests/integration/test_sdk_scale.py's; here the whole service is away.)"""
    with Client("http://127.0.0.1:9", max_retries=0) as dead:  # nothing listens on the discard port
        with pytest.raises(RewardServiceError):
            trl_call(CodeReward(dead, retries=0), [PY_STDIO], [ADD_STDIO])
        marked = CodeReward(dead, retries=0, on_service_error="skip")(completions=[PY_STDIO], tests=[ADD_STDIO])
        assert marked == [None]


# ---------------------------------------------------------------- verl


@pytest.fixture(scope="module")
def verl_loader(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """verl's ``verl/utils/import_utils.py`` (stdlib only), taken from its wheel and imported alone."""
    cache = request.config.cache
    directory = Path(cache.mkdir("verl-wheel")) if cache is not None else tmp_path_factory.mktemp("verl-wheel")
    target = directory / "verl_import_utils.py"
    if not target.exists():
        with zipfile.ZipFile(fetch_wheel(directory)) as zf:
            target.write_bytes(zf.read("verl/utils/import_utils.py"))
    spec = importlib.util.spec_from_file_location("verl_import_utils", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reward_file(tmp_path: Path) -> Path:
    """The file a verl config names in ``custom_reward_function.path`` (README's example)."""
    path = tmp_path / "execbox_reward.py"
    path.write_text("from execbox.rewards import compute_score, compute_score_batch  # noqa: F401\n")
    return path


def test_verl_naive_manager_call_shape(verl_loader: ModuleType, server: LocalServer, tmp_path: Path) -> None:
    fn = verl_loader.load_extern_object(module_path=str(reward_file(tmp_path)), object_name="compute_score")
    reward_kwargs = {"execbox_url": server.url}  # custom_reward_function.reward_kwargs

    def call(solution: str, ground_truth: Any, extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
        # verl.trainer.ppo.reward._call_with_kwargs: {**kwargs, **extra_kwargs}
        kwargs = {"data_source": "codecontests", "solution_str": solution, "ground_truth": ground_truth}
        return fn(**{**kwargs, "extra_info": extra_info or {}, **reward_kwargs})  # type: ignore[no-any-return]

    assert call(PY_STDIO, json.dumps(ADD_STDIO))["score"] == 1.0
    slow_ok = {"timeout_s": 30, "compile_timeout_s": 60}  # reward_kwargs too: g++ on a busy machine
    assert (
        fn(
            data_source="cc",
            solution_str=CPP_STDIO,
            ground_truth=json.dumps(ADD_STDIO),
            extra_info={"language": "cpp"},
            **reward_kwargs,
            **slow_ok,
        )["score"]
        == 1.0
    )
    assert call(WRONG_FUNCTION, json.dumps(ADD_APPS)) == {"score": 0.0, "passed": 0, "total": 2, "service_error": False}
    assert call(EXIT_EARLY, ADD_APPS)["score"] == 0.0


def test_verl_batch_manager_call_shape_and_service_errors(
    verl_loader: ModuleType, server: LocalServer, tmp_path: Path
) -> None:
    fn = verl_loader.load_extern_object(module_path=str(reward_file(tmp_path)), object_name="compute_score_batch")
    scores = fn(
        data_sources=["a", "b", "c"],
        solution_strs=[PY_STDIO, PY_FUNCTION, WRONG_FUNCTION],
        ground_truths=[json.dumps(ADD_STDIO), json.dumps(ADD_MBPP), json.dumps(ADD_APPS)],
        extra_infos=[{}, {}, {}],
        execbox_url=server.url,
    )
    assert [s["score"] for s in scores] == [1.0, 1.0, 0.0]
    dead = {"execbox_url": "http://127.0.0.1:9", "retries": 0}
    with pytest.raises(RewardServiceError):
        fn(data_sources=["a"], solution_strs=[PY_STDIO], ground_truths=[ADD_STDIO], extra_infos=[{}], **dead)
    [marked] = fn(
        data_sources=["a"],
        solution_strs=[PY_STDIO],
        ground_truths=[ADD_STDIO],
        extra_infos=[{}],
        on_service_error="nan",
        **dead,
    )
    assert math.isnan(marked["score"]) and marked["service_error"] is True
