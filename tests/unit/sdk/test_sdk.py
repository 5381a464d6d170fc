"""The SDK against httpx.MockTransport: error mapping, retries, stream decoding, twins."""

from __future__ import annotations

import inspect
import json
from typing import Any

import httpx
import pytest

import execbox
from execbox import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    Client,
    EngineUnavailableError,
    ExecutionFailedError,
    ExecutionStatus,
    InternalServerError,
    InvalidRequestError,
    PoolExhaustedError,
    RateLimitError,
    RequestTooLargeError,
    SessionBusyError,
    SessionNotFoundError,
    StreamError,
)

OK_EXECUTION = {
    "status": "ok",
    "stdout": "hi\n",
    "results": [{"data": {"text/plain": "2"}, "is_main_result": True}],
}
SESSION = {
    "id": "s_1",
    "limits": {"memory_mb": 512, "cpus": 1.0, "timeout_s": 30.0},
    "created_at": "2026-01-01T00:00:00Z",
    "last_used_at": "2026-01-01T00:00:00Z",
    "expires_at": "2026-01-01T00:10:00Z",
}


def envelope(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": f"{code} happened"}}, headers=headers)


def client_with(handler: Any, **kw: Any) -> Client:
    return Client("http://execbox.test", http_client=httpx.Client(transport=httpx.MockTransport(handler)), **kw)


def async_client_with(handler: Any, **kw: Any) -> AsyncClient:
    transport = httpx.MockTransport(handler)
    return AsyncClient("http://execbox.test", http_client=httpx.AsyncClient(transport=transport), **kw)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "session_not_found", SessionNotFoundError),
        (409, "session_busy", SessionBusyError),
        (503, "pool_exhausted", PoolExhaustedError),
        (503, "engine_unavailable", EngineUnavailableError),
        (401, "unauthorized", AuthenticationError),
        (413, "request_too_large", RequestTooLargeError),
        (422, "invalid_request", InvalidRequestError),
        (422, "invalid_limits", InvalidRequestError),
        (429, "too_many_sessions", RateLimitError),
        (500, "internal_error", InternalServerError),
        (502, "bad_gateway", InternalServerError),
    ],
)
def test_status_and_code_map_to_one_exception_class(status: int, code: str, cls: type) -> None:
    with client_with(lambda req: envelope(status, code), max_retries=0) as client:
        with pytest.raises(cls) as info:
            client.sessions.get("s_1")
    assert info.value.status_code == status and info.value.code == code
    assert f"{code} happened" in str(info.value)


def test_a_non_json_error_body_still_maps_by_status() -> None:
    with client_with(lambda req: httpx.Response(502, text="<html>bad gateway</html>"), max_retries=0) as client:
        with pytest.raises(InternalServerError, match="bad gateway"):
            client.sessions.list()


def test_pool_exhausted_is_retried_honouring_retry_after() -> None:
    calls: list[float] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            return envelope(503, "pool_exhausted", {"Retry-After": "0"})
        return httpx.Response(201, json=SESSION)

    with client_with(handler, max_retries=2) as client:
        session = client.sessions.create()
    assert session.id == "s_1" and len(calls) == 3


def test_pool_exhausted_gives_up_after_max_retries_with_retry_after_exposed() -> None:
    with client_with(lambda req: envelope(503, "pool_exhausted", {"Retry-After": "0"}), max_retries=1) as client:
        with pytest.raises(PoolExhaustedError) as info:
            client.run("1")
    assert info.value.retry_after == 0.0


def test_connection_refused_before_sending_is_retried() -> None:
    calls: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=req)
        return httpx.Response(200, json=OK_EXECUTION)

    with client_with(handler) as client:
        assert client.run("print('hi')").stdout == "hi\n"
    assert len(calls) == 2


@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
def test_an_execute_that_may_have_reached_the_server_is_never_resent(exc: type[httpx.HTTPError]) -> None:
    calls: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise exc("boom", request=req)

    with client_with(handler, max_retries=5) as client:
        with pytest.raises(APIConnectionError) as info:
            client.run("x += 1")
    assert len(calls) == 1
    assert isinstance(info.value, APITimeoutError) == (exc is httpx.ReadTimeout)
    assert not isinstance(info.value, httpx.HTTPError)


def test_server_errors_other_than_pool_exhausted_are_not_retried() -> None:
    calls: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return envelope(500, "internal_error")

    with client_with(handler, max_retries=3) as client:
        with pytest.raises(InternalServerError):
            client.run("1")
    assert len(calls) == 1


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def test_stream_decodes_typed_events_in_order_and_callbacks_fire() -> None:
    body = ndjson(
        {"type": "stdout", "text": "a"},
        {"type": "stderr", "text": "b"},
        {"type": "result", "result": {"data": {"text/plain": "1"}}},
        {"type": "done", "execution": OK_EXECUTION},
    )
    handler = lambda req: httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})  # noqa: E731
    with client_with(handler) as client:
        assert [e.type for e in client.run_stream("x")] == ["stdout", "stderr", "result", "done"]
        out: list[str] = []
        err: list[str] = []
        ex = client.run("x", on_stdout=out.append, on_stderr=err.append)
    assert out == ["a"] and err == ["b"] and ex.ok


def test_a_stream_cut_short_raises_stream_error() -> None:
    body = ndjson({"type": "stdout", "text": "a"})
    with client_with(lambda req: httpx.Response(200, content=body)) as client:
        with pytest.raises(StreamError, match="without a 'done'"):
            list(client.run_stream("x"))


def test_a_malformed_stream_line_raises_stream_error() -> None:
    with client_with(lambda req: httpx.Response(200, content=b'{"type": "nope"}\n')) as client:
        with pytest.raises(StreamError, match="malformed"):
            list(client.run_stream("x"))


def test_an_error_line_in_a_stream_raises_the_mapped_error() -> None:
    body = b'{"error": {"code": "pool_exhausted", "message": "later"}}\n'
    with client_with(lambda req: httpx.Response(200, content=body), max_retries=0) as client:
        with pytest.raises(PoolExhaustedError):
            list(client.run_stream("x"))


def test_session_context_deletes_the_session_even_on_error() -> None:
    seen: list[tuple[str, str]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, req.url.path))
        if req.method == "POST" and req.url.path == "/v1/sessions":
            return httpx.Response(201, json=SESSION)
        return httpx.Response(204)

    with client_with(handler) as client:
        with pytest.raises(RuntimeError):
            with client.session(timeout_s=5):
                raise RuntimeError("user code blew up")
    assert seen[-1] == ("DELETE", "/v1/sessions/s_1")


def test_api_key_is_sent_as_bearer_and_env_fallbacks_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBOX_URL", "http://from-env.test")
    monkeypatch.setenv("EXECBOX_API_KEY", "k-env")
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=[])

    with Client(http_client=httpx.Client(transport=httpx.MockTransport(handler))) as client:
        client.sessions.list()
    assert seen[0].url.host == "from-env.test"
    assert seen[0].headers["authorization"] == "Bearer k-env"


def test_execution_helpers() -> None:
    ok = execbox.Execution.model_validate(OK_EXECUTION)
    assert ok.ok and ok.text == "2" and ok.raise_for_error() is ok
    bad = execbox.Execution(
        status=ExecutionStatus.ERROR, error={"name": "ZeroDivisionError", "value": "division by zero"}
    )
    with pytest.raises(ExecutionFailedError, match="ZeroDivisionError: division by zero") as info:
        bad.raise_for_error()
    assert info.value.execution is bad


def batch_answer(req: httpx.Request, *, cut_after: int | None = None) -> httpx.Response:
    """A fake /v1/batch/stream: results in reverse (completion) order, then the summary."""
    jobs = json.loads(req.content)["jobs"]
    lines = [
        {"type": "result", "index": i, "status": "error" if job["code"] == "1/0" else "ok", "stdout": job["code"]}
        for i, job in reversed(list(enumerate(jobs)))
    ]
    if cut_after is not None:
        lines = lines[:cut_after]
    else:
        lines.append({"type": "summary", "total": len(jobs), "by_status": {}, "wall_ms": 1.0})
    return httpx.Response(200, content=ndjson(*lines))


def test_map_keeps_input_order_and_turns_service_failures_into_data_that_is_no_verdict() -> None:
    with client_with(batch_answer) as client:
        results = client.map(["a", "1/0", "c"])
    assert [r.stdout for r in results] == ["a", "1/0", "c"]
    assert [r.status for r in results] == [ExecutionStatus.OK, ExecutionStatus.ERROR, ExecutionStatus.OK]
    assert all(r.is_verdict for r in results)
    with client_with(lambda req: batch_answer(req, cut_after=1)) as client:
        cut = client.map(["a", "b", "c"])
    assert cut[2].ok and cut[2].is_verdict  # arrived before the cut
    assert cut[0].status is ExecutionStatus.SANDBOX_LOST and not cut[0].is_verdict
    assert cut[0].error is None and "StreamError" in (cut[0].message or "")
    with client_with(lambda req: envelope(500, "internal_error"), max_retries=0) as client:
        failed = client.map(["a", "b"])
    assert all(not r.is_verdict and "InternalServerError" in (r.message or "") for r in failed)


def test_batch_stream_retries_pool_exhaustion_before_the_stream_starts() -> None:
    calls: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return envelope(503, "pool_exhausted", {"Retry-After": "0"})
        return batch_answer(req)

    with client_with(handler) as client:
        results = client.batch(["x", "y"])
    assert [r.index for r in results] == [0, 1] and len(calls) == 2


async def test_async_twin_behaves_like_the_sync_client() -> None:
    body = ndjson({"type": "stdout", "text": "a"}, {"type": "done", "execution": OK_EXECUTION})

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/sessions" and req.method == "POST":
            return httpx.Response(201, json=SESSION)
        if req.url.path.endswith("/stream"):
            return httpx.Response(200, content=body)
        if req.method == "DELETE":
            return httpx.Response(204)
        return envelope(409, "session_busy")

    async with async_client_with(handler, max_retries=0) as client:
        async with client.session() as session:
            events = [e.type async for e in session.run_stream("x")]
            assert events == ["stdout", "done"]
            with pytest.raises(SessionBusyError):
                await session.run("x")


def test_closed_client_says_so() -> None:
    client = client_with(lambda req: httpx.Response(200, json=[]))
    client.close()
    with pytest.raises(execbox.ExecboxError, match="closed"):
        client.sessions.list()


def _public(cls: type) -> set[str]:
    return {n for n, _ in inspect.getmembers(cls) if not n.startswith("_")}


@pytest.mark.parametrize(
    ("sync", "async_"),
    [
        (execbox.Client, execbox.AsyncClient),
        (execbox.Session, execbox.AsyncSession),
        (execbox.Sessions, execbox.AsyncSessions),
    ],
)
def test_sync_and_async_twins_expose_the_same_methods(sync: type, async_: type) -> None:
    assert _public(sync) == _public(async_)
    for name in _public(sync):
        a, b = getattr(sync, name), getattr(async_, name)
        if callable(a) and callable(b):
            pa = [p for p in inspect.signature(a).parameters if p != "self"]
            pb = [p for p in inspect.signature(b).parameters if p != "self"]
            assert pa == pb, name


def test_public_surface_is_exactly_all() -> None:
    public = {
        n for n, v in vars(execbox).items() if (not n.startswith("_") or n == "__version__") and not inspect.ismodule(v)
    }
    assert sorted(execbox.__all__) == sorted(public)
    for name in execbox.__all__:
        assert hasattr(execbox, name)


async def test_async_batch_and_map_twin_the_sync_ones() -> None:
    async def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        assert body.get("concurrency") in (None, 4)
        return batch_answer(req)

    async with async_client_with(handler) as client:
        results = await client.map(["1"] * 20, concurrency=4)
        assert len(results) == 20 and all(r.ok for r in results)
        ordered = await client.batch(["a", "b", "c"])
        assert [r.stdout for r in ordered] == ["a", "b", "c"]
