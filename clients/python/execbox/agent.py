"""The interpreter agent: the OpenCodeInterpreter loop at inference time.

Ask the model; run the code it wrote (the last ```python block by default) in one stateful
session; give the rendered execution feedback back as the next user turn; stop when the
model answers without code or after ``max_turns``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from execbox._client import Client, Session
from execbox._exceptions import ExecboxError
from execbox._models import Execution
from execbox.feedback import FeedbackStyle, render_feedback
from execbox.llm import ChatClient, LLMError

__all__ = ["AgentConfig", "Transcript", "extract_code", "run_agent"]

DEFAULT_SYSTEM = (
    "You are an expert Python programmer. Write code in ```python blocks; it will be executed and you "
    "will see the execution result. Refine your code until it works, then answer without code."
)
_BLOCK = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.S)


def extract_code(reply: str, *, which: Literal["last", "all", "first"] = "last") -> str | None:
    """The code to run from a model reply: the last ```python block (or all, or the first)."""
    blocks: list[str] = [str(b).strip("\n") for b in _BLOCK.findall(reply) if b.strip()]
    if not blocks:
        return None
    if which == "all":
        return "\n\n".join(blocks)
    return blocks[0] if which == "first" else blocks[-1]


@dataclass
class AgentConfig:
    max_turns: int = 3
    code_blocks: Literal["last", "all", "first"] = "last"
    feedback_style: FeedbackStyle = "opencodeinterpreter"
    system_prompt: str | None = DEFAULT_SYSTEM
    timeout_s: float = 30.0
    memory_mb: int | None = None


@dataclass
class Transcript:
    task: str
    messages: list[dict[str, str]] = field(default_factory=list)
    executions: list[Execution] = field(default_factory=list)
    turns: int = 0
    final_status: str = "max_turns"  # answered | max_turns | llm_error | sandbox_error
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "messages": self.messages,
            "executions": [e.model_dump(mode="json") for e in self.executions],
            "turns": self.turns,
            "final_status": self.final_status,
            "error": self.error,
        }


def run_agent(
    task: str,
    *,
    client: Client,
    llm: ChatClient,
    config: AgentConfig | None = None,
    on_message: Callable[[dict[str, str]], None] | None = None,
    user_feedback: Callable[[Transcript], str | None] | None = None,
) -> Transcript:
    """Run the generate-execute-refine loop for ``task``; failures end up in the transcript.

    ``user_feedback``, when given, adds natural-language feedback (a simulated user) after
    the execution result of each turn.
    """
    cfg = config or AgentConfig()
    transcript = Transcript(task=task)

    def say(role: str, content: str) -> None:
        message = {"role": role, "content": content}
        transcript.messages.append(message)
        if on_message is not None:
            on_message(message)

    if cfg.system_prompt:
        say("system", cfg.system_prompt)
    say("user", task)
    session: Session | None = None
    try:
        for _ in range(cfg.max_turns):
            reply = llm.chat(transcript.messages)
            transcript.turns += 1
            say("assistant", reply)
            code = extract_code(reply, which=cfg.code_blocks)
            if code is None:
                transcript.final_status = "answered"
                return transcript
            if session is None:
                session = client.session(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb)
            execution = session.run(code)
            transcript.executions.append(execution)
            feedback = render_feedback(execution, style=cfg.feedback_style)
            extra = user_feedback(transcript) if user_feedback is not None else None
            say("user", feedback if not extra else f"{feedback}\n\n{extra}")
        transcript.final_status = "max_turns"
    except LLMError as exc:
        transcript.final_status, transcript.error = "llm_error", str(exc)
    except ExecboxError as exc:
        transcript.final_status, transcript.error = "sandbox_error", str(exc)
    finally:
        if session is not None:
            try:
                session.close()
            except ExecboxError:
                pass
    return transcript
