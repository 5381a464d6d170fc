"""Sample generation against an OpenAI-compatible server on loopback: both endpoints, n, stop,
seed, max_tokens, bounded concurrency, retries honouring Retry-After, token usage, failures kept."""

from __future__ import annotations

import pytest

from execbox.evals.datasets import Problem
from execbox.evals.generate import COMPLETION_STOP, generate_samples
from execbox.llm import ChatClient, LLMError
from tests.support.fake_openai import fake_openai


def problems(count: int) -> dict[str, Problem]:
    return {
        f"T/{i}": Problem(task_id=f"T/{i}", prompt=f"def f{i}(x):\n", entry_point=f"f{i}", test_program="")
        for i in range(count)
    }


def continuation(prompt: str, i: int) -> str:
    return f"    return x + {i}\n\nif __name__ == '__main__':\n    print(1)\n"


def chat_reply(prompt: str, i: int) -> str:
    name = prompt.split("def ")[1].split("(")[0]
    return f"Sure:\n```python\ndef {name}(x):\n    return x + {i}\n```"


def test_the_completions_endpoint_continues_the_prompt_and_stops_where_evalplus_does() -> None:
    with fake_openai(continuation) as server, ChatClient(server.url, "base", seed=7, max_tokens=64) as llm:
        samples = generate_samples(llm, problems(3), n=2, endpoint="completions", progress=False)
    assert [s["task_id"] for s in samples] == ["T/0", "T/0", "T/1", "T/1", "T/2", "T/2"]
    assert samples[1]["completion"] == "    return x + 1\n" and samples[1]["finish_reason"] == "stop"
    body = next(r for r in server.requests if r["prompt"] == "def f0(x):\n")
    assert body["n"] == 2 and body["seed"] == 7 and body["max_tokens"] == 64
    assert body["stop"] == COMPLETION_STOP
    assert len(server.requests) == 3  # n in one request per problem


def test_the_chat_endpoint_turns_a_restated_function_into_a_solution() -> None:
    with fake_openai(chat_reply) as server, ChatClient(server.url, "chat") as llm:
        [sample] = generate_samples(llm, problems(1), n=1, progress=False)
    assert sample["solution"].strip() == "def f0(x):\n    return x + 0"
    assert "messages" in server.requests[0]


def test_a_server_that_caps_n_is_asked_again_for_the_rest() -> None:
    with fake_openai(continuation, max_n=2) as server, ChatClient(server.url, "base") as llm:
        samples = generate_samples(llm, problems(1), n=5, endpoint="completions", progress=False)
    assert len(samples) == 5 and [r["n"] for r in server.requests] == [5, 3, 1]


def test_usage_is_recorded_per_sample_and_in_total() -> None:
    with fake_openai(continuation) as server, ChatClient(server.url, "base") as llm:
        samples = generate_samples(llm, problems(2), n=3, endpoint="completions", progress=False)
    assert llm.usage.requests == 2 and llm.usage.prompt_tokens == 2 * 2  # "def fN(x):" is two words
    assert llm.usage.completion_tokens == 2 * 3 * 4  # "return x + i" four words per choice
    assert samples[0]["usage"]["completion_tokens"] == 12 and samples[0]["usage"]["requests"] == 0


def test_concurrency_bounds_the_requests_in_flight() -> None:
    with fake_openai(continuation, delay_s=0.05) as server, ChatClient(server.url, "base") as llm:
        generate_samples(llm, problems(12), endpoint="completions", concurrency=3, progress=False)
    assert len(server.requests) == 12 and server.max_in_flight <= 3


def test_rate_limits_and_server_errors_are_retried_honouring_retry_after() -> None:
    failures = [(429, "0.3"), (503, None)]
    with fake_openai(continuation, failures=failures) as server, ChatClient(server.url, "base") as llm:
        generation = llm.complete("def f(x):\n", n=1)
    assert generation.texts and llm.usage.retries == 2
    assert server.arrivals[1] - server.arrivals[0] >= 0.3  # waited what Retry-After asked


def test_a_request_the_server_calls_wrong_is_not_retried() -> None:
    with fake_openai(continuation, failures=[(400, None)]) as server, ChatClient(server.url, "base") as llm:
        with pytest.raises(LLMError, match="400"):
            llm.complete("x")
    assert len(server.requests) == 1


def test_a_failed_generation_is_an_empty_sample_that_keeps_its_error() -> None:
    failures = [(500, "0")] * 3
    with fake_openai(continuation, failures=failures) as server, ChatClient(server.url, "m", max_retries=2) as llm:
        [sample] = generate_samples(llm, problems(1), endpoint="completions", progress=False)
    assert sample["completion"] == "" and "500" in sample["error"] and len(server.requests) == 3
