"""A small client for OpenAI-compatible endpoints (vLLM, TGI, llama.cpp, SGLang, OpenAI).

Two endpoints: ``POST {base_url}/chat/completions`` (instruction models; :meth:`ChatClient.chat`)
and ``POST {base_url}/completions`` (base models, prompted with the code to continue, as EvalPlus
evaluates them; :meth:`ChatClient.complete`). Both take ``n``, ``stop``, ``seed``, ``max_tokens``
and ``temperature``, and return a :class:`Generation`: the choices' texts and finish reasons, and
the token usage the endpoint reported, also added up in :attr:`ChatClient.usage` (thread-safe: the
sample generator calls from several threads).

Retried with backoff: 429, 5xx and connection failures (generation has no side effects to fear),
waiting what a ``Retry-After`` header asks (capped at ``MAX_RETRY_AFTER_S``) or else exponential
backoff with jitter. Any other 4xx is not retried: the request itself is wrong.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from execbox._base import parse_retry_after
from execbox._exceptions import ExecboxError
from execbox._text import scrub_surrogates

__all__ = ["ChatClient", "Generation", "LLMError", "Usage"]

MAX_RETRY_AFTER_S = 60.0
_RETRIED_STATUS = {408, 409, 429}


class LLMError(ExecboxError):
    """The model endpoint failed after retries, or answered with something that is not a completion."""


@dataclass
class Usage:
    """Tokens the endpoint reported, and how many requests and retries it took."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    retries: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "requests": self.requests,
            "retries": self.retries,
        }


@dataclass(frozen=True)
class Generation:
    """The answer to one request: ``n`` texts (in choice order), why each ended, and its usage."""

    texts: list[str]
    finish_reasons: list[str | None]
    usage: Usage


@dataclass
class ChatClient:
    """A client of one model at one OpenAI-compatible endpoint.

    ``stop`` and ``seed`` are sent with every request unless a call gives its own; ``seed`` makes
    sampling reproducible where the server supports it (vLLM, OpenAI).
    """

    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0  # greedy by default, as the paper's evaluation
    max_tokens: int = 1024
    timeout_s: float = 120.0
    max_retries: int = 4
    stop: list[str] | None = None
    seed: int | None = None
    top_p: float | None = None
    # An httpx client to send through (a proxy, a test transport); closed by close() either way.
    http_client: httpx.Client | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._http = self.http_client or httpx.Client(timeout=self.timeout_s)
        self._lock = threading.Lock()
        self.usage = Usage()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the two endpoints

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply to ``messages`` (the first choice).

        Raises:
            LLMError: the endpoint failed after retries or the answer was malformed.
        """
        return self.chat_n(messages).texts[0]

    def chat_n(
        self,
        messages: Sequence[dict[str, str]],
        *,
        n: int = 1,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
    ) -> Generation:
        """``n`` replies to ``messages`` from ``/chat/completions``.

        Raises:
            LLMError: the endpoint failed after retries or the answer was malformed.
        """
        # Messages quote sandbox output, which may hold lone surrogates: no UTF-8 body can.
        body = self._body(n, stop, seed, max_tokens)
        body["messages"] = [{key: scrub_surrogates(value) for key, value in m.items()} for m in messages]
        return self._generate("/chat/completions", body, _chat_text)

    def complete(
        self,
        prompt: str,
        *,
        n: int = 1,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
    ) -> Generation:
        """``n`` continuations of ``prompt`` from ``/completions`` (a base model continuing code).

        Raises:
            LLMError: the endpoint failed after retries or the answer was malformed.
        """
        body = self._body(n, stop, seed, max_tokens)
        body["prompt"] = scrub_surrogates(prompt)
        return self._generate("/completions", body, _completion_text)

    # ------------------------------------------------------------------ one request, retried

    def _body(self, n: int, stop: Sequence[str] | None, seed: int | None, max_tokens: int | None) -> dict[str, Any]:
        if n < 1:
            raise ValueError("n must be >= 1")
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": max_tokens or self.max_tokens,
            "n": n,
        }
        stops = list(stop) if stop is not None else self.stop
        if stops:
            body["stop"] = stops[:4] if "api.openai.com" in self.base_url else stops  # OpenAI takes 4 at most
        chosen_seed = seed if seed is not None else self.seed
        if chosen_seed is not None:
            body["seed"] = chosen_seed
        if self.top_p is not None:
            body["top_p"] = self.top_p
        return body

    def _generate(self, path: str, body: dict[str, Any], text_of: Any) -> Generation:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = self.base_url.rstrip("/") + path
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            try:
                response = self._http.post(url, json=body, headers=headers)
                if response.status_code in _RETRIED_STATUS or response.status_code >= 500:
                    last = LLMError(f"{response.status_code} from the model endpoint: {response.text[:200]}")
                    wait = parse_retry_after(response.headers.get("retry-after"))
                elif response.is_error:
                    raise LLMError(f"{response.status_code} from the model endpoint: {response.text[:300]}")
                else:
                    return self._record(_parse(response, text_of), attempt)
            except httpx.HTTPError as exc:
                last = exc
            if attempt < self.max_retries:
                time.sleep(_delay(attempt, wait))
        with self._lock:
            self.usage.requests += 1
            self.usage.retries += self.max_retries
        raise LLMError(f"the model endpoint failed after {self.max_retries + 1} attempts: {last!r}") from last

    def _record(self, generation: Generation, retries: int) -> Generation:
        with self._lock:
            self.usage.prompt_tokens += generation.usage.prompt_tokens
            self.usage.completion_tokens += generation.usage.completion_tokens
            self.usage.requests += 1
            self.usage.retries += retries
        generation.usage.retries = retries
        return generation


def _delay(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(MAX_RETRY_AFTER_S, float(retry_after))
    backoff: float = min(8.0, 0.25 * 2**attempt)
    return backoff * (0.5 + random.random() / 2)


def _parse(response: httpx.Response, text_of: Any) -> Generation:
    try:
        data = response.json()
        choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
        texts = [str(text_of(c) or "") for c in choices]
        reasons = [c.get("finish_reason") for c in choices]
        usage = data.get("usage") or {}
        counted = Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LLMError(f"the model endpoint sent no completion: {response.text[:200]!r}") from exc
    if not texts:
        raise LLMError("the model endpoint sent no choices")
    return Generation(texts=texts, finish_reasons=reasons, usage=counted)


def _chat_text(choice: dict[str, Any]) -> Any:
    return choice["message"]["content"]


def _completion_text(choice: dict[str, Any]) -> Any:
    return choice["text"]
