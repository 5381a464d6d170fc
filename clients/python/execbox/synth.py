"""The data synthesizer: Code-Feedback-style multi-turn dialogues in bulk.

Reads ``{"id", "query"}`` JSONL, runs the interpreter agent on each query (the paper's
interaction simulation), optionally with a second model playing the user, and appends one
JSON line per dialogue: ``{"id", "messages", "executions", "turns", "final_status"}``.

Resumable: ids already in the output are skipped, and a partial last line left by a killed
run is cut off before anything is appended, so no record is lost or written twice. Each
record is one ``write`` on an ``O_APPEND`` descriptor, flushed to disk before the next.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from execbox._client import Client
from execbox._progress import progress_bar
from execbox._text import utf8_bytes
from execbox.agent import AgentConfig, Transcript, run_agent
from execbox.llm import ChatClient, LLMError

__all__ = ["SynthStats", "UserSimulator", "synthesize"]

DEFAULT_USER_PROMPT = (
    "You are a user who asked a programmer for help. Here is your request, the programmer's last "
    "message and the execution result. In one or two sentences, give natural feedback: point out "
    "what is wrong or what to improve next. Do not write code."
)


@dataclass
class UserSimulator:
    """A second model that plays the user and comments on each execution result."""

    llm: ChatClient
    prompt: str = DEFAULT_USER_PROMPT

    def __call__(self, transcript: Transcript) -> str | None:
        last_assistant = next((m["content"] for m in reversed(transcript.messages) if m["role"] == "assistant"), "")
        execution = transcript.executions[-1] if transcript.executions else None
        result = execution.stdout[-2000:] if execution else ""
        if execution is not None and execution.error is not None:
            result += f"\n{execution.error.name}: {execution.error.value}"
        messages = [
            {"role": "system", "content": self.prompt},
            {
                "role": "user",
                "content": f"Request:\n{transcript.task}\n\nProgrammer:\n{last_assistant}\n\nResult:\n{result}",
            },
        ]
        try:
            return self.llm.chat(messages).strip() or None
        except LLMError:
            return None  # the execution feedback alone still makes a usable turn


@dataclass
class SynthStats:
    written: int = 0
    skipped: int = 0
    failed: int = 0


def _read_queries(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                rec = json.loads(line)
                if "id" not in rec or "query" not in rec:
                    raise ValueError(f"{path}:{n}: each line needs 'id' and 'query'")
                yield rec


def _done_ids(path: str) -> set[str]:
    """Ids already written; cuts off a partial last line left by a killed run."""
    if not os.path.exists(path):
        return set()
    done: set[str] = set()
    good_end = 0
    with open(path, "rb") as fh:
        data = fh.read()
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            done.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError):
            break
        good_end += len(line)
    if good_end != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return done


def _encode_record(record: dict[str, Any]) -> bytes:
    """One JSONL line for ``record``, whatever the sandbox put in its executions.

    Lone surrogates stay as ``\\uXXXX`` escapes (a strict UTF-8 encode would raise). Should the
    executions still not serialize, the dialogue is kept without them and says why.
    """
    try:
        return utf8_bytes(json.dumps(record, ensure_ascii=False) + "\n")
    except (ValueError, TypeError, RecursionError) as exc:
        kept = {**record, "executions": [], "error": f"the executions could not be written as JSON: {exc!r}"}
        return utf8_bytes(json.dumps(kept, ensure_ascii=False) + "\n")


def synthesize(
    queries_path: str,
    output_path: str,
    *,
    client: Client,
    llm: ChatClient,
    config: AgentConfig | None = None,
    user: UserSimulator | None = None,
    concurrency: int = 4,
    progress: bool = False,
) -> SynthStats:
    """Produce one dialogue per query not yet in ``output_path``; returns what was done."""
    done = _done_ids(output_path)
    todo = [q for q in _read_queries(queries_path) if str(q["id"]) not in done]
    stats = SynthStats(skipped=len(done))
    lock = threading.Lock()
    fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    bar = progress_bar(len(todo), unit="dialogue", enabled=progress)

    def one(query: dict[str, Any]) -> None:
        try:
            transcript = run_agent(str(query["query"]), client=client, llm=llm, config=config, user_feedback=user)
            record = {"id": query["id"], **transcript.to_json()}
            del record["task"]
        except Exception as exc:  # a dialogue's failure is data, never the end of the run
            record = {
                "id": query["id"],
                "messages": [],
                "executions": [],
                "turns": 0,
                "final_status": "sandbox_error",
                "error": repr(exc),
            }
        line = _encode_record(record)
        with lock:
            os.write(fd, line)
            os.fsync(fd)
            if record["final_status"] in ("llm_error", "sandbox_error"):
                stats.failed += 1
            stats.written += 1
            bar.update(1)

    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="execbox-synth") as pool:
            list(pool.map(one, todo))
    finally:
        os.close(fd)
        bar.close()
    return stats
