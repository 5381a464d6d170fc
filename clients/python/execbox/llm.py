"""A minimal client for OpenAI-compatible chat-completions endpoints (vLLM, TGI, llama.cpp, OpenAI).

Only ``POST {base_url}/chat/completions`` is used. Rate limits, server errors and connection
failures are retried with backoff (generation has no side effects to fear).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from execbox._exceptions import ExecboxError
from execbox._text import scrub_surrogates

__all__ = ["ChatClient", "LLMError"]


class LLMError(ExecboxError):
    """The model endpoint failed after retries, or answered with something that is not a chat completion."""


@dataclass
class ChatClient:
    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0  # greedy by default, as the paper's evaluation
    max_tokens: int = 1024
    timeout_s: float = 120.0
    max_retries: int = 4
    # An httpx client to send through (a proxy, a test transport); closed by close() either way.
    http_client: httpx.Client | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._http = self.http_client or httpx.Client(timeout=self.timeout_s)

    def close(self) -> None:
        self._http.close()

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply to ``messages``.

        Raises:
            LLMError: the endpoint failed after retries or the answer was malformed.
        """
        body: dict[str, Any] = {
            "model": self.model,
            # Messages quote sandbox output, which may hold lone surrogates: no UTF-8 body can.
            "messages": [{key: scrub_surrogates(value) for key, value in m.items()} for m in messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                r = self._http.post(self.base_url.rstrip("/") + "/chat/completions", json=body, headers=headers)
                if r.status_code == 429 or r.status_code >= 500:
                    last = LLMError(f"{r.status_code} from the model endpoint: {r.text[:200]}")
                else:
                    r.raise_for_status()
                    return str(r.json()["choices"][0]["message"]["content"] or "")
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                last = exc
                if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
                    break  # 4xx other than 429: retrying will not help
            if attempt < self.max_retries:
                time.sleep(min(8.0, 0.25 * 2**attempt) * (0.5 + random.random() / 2))
        raise LLMError(f"the model endpoint failed: {last!r}") from last
