"""A scripted OpenAI-compatible chat-completions server on loopback, for tests and demos.

It speaks the real wire format (``POST /v1/chat/completions`` -> a ``chat.completion``
object), so any OpenAI-compatible client works against it. Replies come from a script:
``{task: [reply for turn 1, reply for turn 2, ...]}``, where the task is the first user
message; past the script's end it answers without code. ``delay_s`` slows every answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["fake_llm"]


@contextmanager
def fake_llm(
    script: dict[str, list[str]], *, delay_s: float = 0.0, fail_first: int = 0
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yield ``(base_url, requests)``; ``fail_first`` answers 503 to the first N requests."""
    requests: list[dict[str, Any]] = []
    failures = {"left": fail_first}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                requests.append(body)
                fail = failures["left"] > 0
                failures["left"] -= int(fail)
            if fail:
                self.send_response(503)
                self.end_headers()
                return
            time.sleep(delay_s)
            messages = body["messages"]
            task = next(m["content"] for m in messages if m["role"] == "user")
            turn = sum(1 for m in messages if m["role"] == "assistant")
            replies = script.get(task, [])
            content = replies[turn] if turn < len(replies) else "Done."
            answer = {
                "id": f"chatcmpl-{len(requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":  # a demo endpoint: python -m tests.support.fake_llm SCRIPT.json
    import sys

    with open(sys.argv[1]) as fh, fake_llm(json.load(fh)) as (url, _):
        print(url, flush=True)
        threading.Event().wait()
