"""The interpreter agent and the data synthesizer against the real service and a scripted
OpenAI-compatible model server on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from execbox import Client
from execbox.agent import AgentConfig, extract_code, run_agent
from execbox.llm import ChatClient
from execbox.synth import UserSimulator, synthesize
from tests.support.fake_llm import fake_llm

TASK = "Write a function that returns the n-th Fibonacci number and test it."
SCRIPT = {
    TASK: [
        "Here is a first try:\n```python\ndef fib(n):\n    return fib(n - 1) + fib(n - 2)\nprint(fib(10))\n```",
        "I forgot the base case.\n```python\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "print(fib(10))\n```",
        "The function works: fib(10) is 55.",
    ]
}


def test_extract_code_takes_the_last_python_block_by_default() -> None:
    reply = "a\n```python\nx = 1\n```\nb\n```py\nx = 2\n```\n```bash\nls\n```"
    assert extract_code(reply) == "x = 2"
    assert extract_code(reply, which="all") == "x = 1\n\nx = 2"
    assert extract_code("no code here") is None


def test_agent_runs_the_loop_with_execution_feedback(client: Client) -> None:
    with fake_llm(SCRIPT) as (url, requests):
        llm = ChatClient(base_url=url, model="fake-coder", max_tokens=256)
        transcript = run_agent(TASK, client=client, llm=llm, config=AgentConfig(max_turns=3))
    assert transcript.final_status == "answered" and transcript.turns == 3
    roles = [m["role"] for m in transcript.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    first_feedback = transcript.messages[3]["content"]
    assert first_feedback.startswith("Execution result: \n") and "RecursionError" in first_feedback
    assert transcript.messages[5]["content"] == "Execution result: \n55"
    assert [e.status.value for e in transcript.executions] == ["error", "ok"]
    assert requests[0]["temperature"] == 0.0 and requests[0]["max_tokens"] == 256  # greedy, token limit


def test_agent_stops_after_max_turns_and_reports_input_requests(client: Client) -> None:
    script = {"ask": ["```python\nname = input('who? ')\n```"] * 5}
    with fake_llm(script) as (url, _):
        llm = ChatClient(base_url=url, model="m")
        transcript = run_agent("ask", client=client, llm=llm, config=AgentConfig(max_turns=2))
    assert transcript.final_status == "max_turns" and transcript.turns == 2
    assert "StdinNotImplementedError" in transcript.messages[3]["content"]


def test_agent_records_llm_failures_as_data(client: Client) -> None:
    llm = ChatClient(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1)
    transcript = run_agent(TASK, client=client, llm=llm)
    assert transcript.final_status == "llm_error" and transcript.error


def test_llm_calls_are_retried_with_backoff(client: Client) -> None:
    with fake_llm(SCRIPT, fail_first=2) as (url, requests):
        transcript = run_agent(TASK, client=client, llm=ChatClient(base_url=url, model="m"))
    assert transcript.final_status == "answered" and len(requests) == 2 + 3


def test_cli_agent_prints_the_conversation(url: str) -> None:
    with fake_llm(SCRIPT) as (llm_url, _):
        exe = os.path.join(os.path.dirname(sys.executable), "execbox")
        out = subprocess.run(
            [exe, "agent", TASK, "--llm-url", llm_url, "--model", "m"],
            capture_output=True,
            text=True,
            env={**os.environ, "EXECBOX_URL": url},
            timeout=120,
        )
    assert out.returncode == 0, out.stderr
    assert "--- assistant" in out.stdout and "Execution result: \n55" in out.stdout
    assert "[answered after 3 turn(s)]" in out.stderr


def write_queries(path: Path, n: int) -> dict[str, list[str]]:
    script = {}
    with path.open("w") as fh:
        for i in range(n):
            query = f"print the square of {i}"
            fh.write(json.dumps({"id": f"q{i}", "query": query}) + "\n")
            script[query] = [f"```python\nprint({i} ** 2)\n```", f"The square of {i} is {i * i}."]
    return script


def test_synth_writes_one_dialogue_per_query_with_a_simulated_user(client: Client, tmp_path: Path) -> None:
    queries, output = tmp_path / "q.jsonl", tmp_path / "out.jsonl"
    script = write_queries(queries, 6)
    user_script = {}
    with fake_llm(script) as (url, _), fake_llm(user_script) as (user_url, user_requests):
        stats = synthesize(
            str(queries),
            str(output),
            client=client,
            llm=ChatClient(base_url=url, model="m"),
            user=UserSimulator(llm=ChatClient(base_url=user_url, model="u")),
            concurrency=3,
        )
    assert stats.written == 6 and stats.failed == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"q{i}" for i in range(6)]
    rec = next(r for r in records if r["id"] == "q3")
    assert rec["final_status"] == "answered" and rec["turns"] == 2
    assert rec["executions"][0]["stdout"] == "9\n"
    assert rec["messages"][3]["content"].startswith("Execution result: \n9\n\nDone.")  # + simulated user
    assert len(user_requests) == 6


def test_synth_resumes_after_a_killed_run_without_duplicates(url: str, tmp_path: Path) -> None:
    queries, output = tmp_path / "q.jsonl", tmp_path / "out.jsonl"
    script = write_queries(queries, 12)
    exe = os.path.join(os.path.dirname(sys.executable), "execbox")
    env = {**os.environ, "EXECBOX_URL": url}
    with fake_llm(script, delay_s=0.3) as (llm_url, _):
        cmd = [
            exe,
            "synth",
            "--input",
            str(queries),
            "--output",
            str(output),
            "--llm-url",
            llm_url,
            "--model",
            "m",
            "--concurrency",
            "2",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not output.exists() or output.read_text().count("\n") < 3):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = output.read_text().count("\n")
        assert 3 <= first < 12
        with output.open("a") as fh:  # a write cut short by the kill
            fh.write('{"id": "q11", "messa')
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    assert sorted(ids) == sorted(f"q{i}" for i in range(12)) and len(ids) == 12
    assert f"{first} already done" in done.stderr
