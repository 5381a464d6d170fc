"""An OpenAI-compatible server on loopback with both endpoints, for the generation tests.

``POST /v1/chat/completions`` and ``POST /v1/completions`` in the real wire format, with ``n``
choices (at most ``max_n`` per request, as servers that cap it do), ``stop`` applied to the text,
and ``usage`` counted in whitespace-separated words. ``reply(prompt, i)`` makes choice ``i``'s text.
``failures`` answers the first requests with ``(status, Retry-After or None)``. It records every
request body, when it arrived, and the most requests it had in flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAI", "fake_openai"]


@dataclass
class FakeOpenAI:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    max_in_flight: int = 0


def _words(text: str) -> int:
    return len(text.split())


@contextmanager
def fake_openai(
    reply: Callable[[str, int], str],
    *,
    failures: Sequence[tuple[int, str | None]] | None = None,
    max_n: int = 128,
    delay_s: float = 0.0,
) -> Iterator[FakeOpenAI]:
    state = FakeOpenAI()
    left = list(failures or [])
    lock = threading.Lock()
    in_flight = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        counted = False  # this request is in the in-flight count

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            # Out of flight before the first byte: the client may send its next request as soon
            # as it has this reply, and must not find this one still counted.
            self._leave_flight()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            path = self.path.rstrip("/")
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self._send(404, {"error": {"message": "no such route"}})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state.requests.append(body)
                state.arrivals.append(time.monotonic())
                failure = left.pop(0) if left else None
                in_flight["n"] += 1
                state.max_in_flight = max(state.max_in_flight, in_flight["n"])
            self.counted = True
            try:
                if failure is not None:
                    status, retry_after = failure
                    self._send(
                        status,
                        {"error": {"message": "try later"}},
                        {"Retry-After": retry_after} if retry_after else None,
                    )
                    return
                time.sleep(delay_s)
                self._answer(path, body)
            finally:
                self._leave_flight()

        def _leave_flight(self) -> None:
            with lock:
                if self.counted:
                    self.counted = False
                    in_flight["n"] -= 1

        def _answer(self, path: str, body: dict[str, Any]) -> None:
            chat = path.endswith("/chat/completions")
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            choices: list[dict[str, Any]] = []
            texts: list[str] = []
            for i in range(min(int(body.get("n", 1)), max_n)):
                text, reason = reply(prompt, i), "length"
                for stop in body.get("stop") or []:
                    if stop in text:
                        text, reason = text[: text.index(stop)], "stop"
                texts.append(text)
                if chat:
                    choices.append(
                        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                    )
                else:
                    choices.append({"index": i, "text": text, "finish_reason": reason})
            usage = {
                "prompt_tokens": _words(prompt),
                "completion_tokens": sum(_words(text) for text in texts),
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            self._send(
                200,
                {
                    "id": f"cmpl-{len(state.requests)}",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": choices,
                    "usage": usage,
                    "system_fingerprint": f"seed-{body.get('seed')}",
                },
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
