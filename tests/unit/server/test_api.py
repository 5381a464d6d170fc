"""The HTTP API end to end on the fake backend: ``create_app`` with its real lifespan (backend ->
pool -> sessions -> batch), the real routers, middleware and error envelope; only the sandboxes
are fakes. What a caller sees: statuses, error codes, streams, and nothing left behind."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from execbox_server import executor as executor_module
from execbox_server.errors import EngineUnavailable
from tests.support.app import Served, fast_settings, served, wait_until
from tests.support.fake_backend import Die, Fail, FakeBackend, FakeKernel, Hang


@pytest.fixture(autouse=True)
def quick_liveness_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "LIVENESS_INTERVAL_S", 0.05)


def error_of(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, str(r.json()["error"]["code"])


def ndjson(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in r.text.splitlines() if line]


async def create(srv: Served, **body: Any) -> str:
    r = await srv.http.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def kernel_of(srv: Served, session_id: str) -> FakeKernel:
    kernel = srv.services.sessions.get(None, session_id).kernel
    assert isinstance(kernel, FakeKernel)
    return kernel


async def test_the_service_is_ready_once_its_pool_is_warm() -> None:
    async with served(warm=False) as srv:
        await wait_until(lambda: srv.services.pool.warm)
        r = await srv.http.get("/readyz")
        assert r.status_code == 200
        assert r.json()["status"] == "ready" and r.json()["pool"]["ready"] == 1
        assert (await srv.http.get("/healthz")).json() == {"status": "ok"}
        metrics = await srv.http.get("/metrics")
        assert "execbox_pool_kernels" in metrics.text


async def test_a_session_keeps_its_variables_over_http_and_delete_destroys_its_sandbox() -> None:
    async with served() as srv:
        sid = await create(srv)
        kernel = kernel_of(srv, sid)
        r1 = await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "x = 20"})
        r2 = await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "print('hi')\nx * 2 + 2"})
        assert r1.status_code == 200 and r2.status_code == 200
        ex = r2.json()
        assert ex["status"] == "ok" and ex["stdout"] == "hi\n"
        assert ex["results"][0]["data"]["text/plain"] == "42" and ex["results"][0]["is_main_result"]
        assert ex["execution_count"] == 2 and ex["state_lost"] is False

        info = (await srv.http.get(f"/v1/sessions/{sid}")).json()
        assert info["execution_count"] == 2 and info["sandbox_id"] == kernel.short_id
        assert [s["id"] for s in (await srv.http.get("/v1/sessions")).json()] == [sid]

        assert (await srv.http.delete(f"/v1/sessions/{sid}")).status_code == 204
        assert kernel.destroyed
        assert error_of(await srv.http.get(f"/v1/sessions/{sid}")) == (404, "session_not_found")
        gone = await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "x"})
        assert error_of(gone) == (404, "session_not_found")


async def test_an_error_in_the_users_code_is_a_200_with_the_error_as_data() -> None:
    async with served() as srv:
        sid = await create(srv)
        r = await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "raise ValueError('bad input')"})
        assert r.status_code == 200
        ex = r.json()
        assert ex["status"] == "error"
        assert (ex["error"]["name"], ex["error"]["value"]) == ("ValueError", "bad input")


async def test_a_streamed_execution_sends_events_then_done_with_the_whole_execution() -> None:
    async with served() as srv:
        sid = await create(srv)
        r = await srv.http.post(f"/v1/sessions/{sid}/execute/stream", json={"code": "print('a')\n7"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = ndjson(r)
        assert [line["type"] for line in lines] == ["stdout", "result", "done"]
        assert lines[0]["text"] == "a\n"
        done = lines[-1]["execution"]
        assert done["status"] == "ok" and done["stdout"] == "a\n" and done["results"][0]["data"]["text/plain"] == "7"


async def test_a_one_shot_execution_runs_on_a_fresh_sandbox_that_is_destroyed_after() -> None:
    async with served() as srv:
        r = await srv.http.post("/v1/execute", json={"code": "sum(range(10))"})
        assert r.status_code == 200 and r.json()["results"][0]["data"]["text/plain"] == "45"
        used = [k for k in srv.backend.kernels if k.conn.executed]
        assert len(used) == 1 and used[0].destroyed
        stream = await srv.http.post("/v1/execute/stream", json={"code": "print(1)"})
        assert ndjson(stream)[-1]["execution"]["stdout"] == "1\n"


async def test_a_kernel_death_is_kernel_died_with_state_lost_and_the_session_goes_on() -> None:
    async with served() as srv:
        srv.backend.script("segfault()", Die(exit_code=139))
        sid = await create(srv)
        before = kernel_of(srv, sid)
        r = await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "segfault()"})
        assert r.status_code == 200
        assert (r.json()["status"], r.json()["state_lost"]) == ("kernel_died", True)
        assert before.destroyed
        after = await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "1 + 1"})
        assert after.json()["status"] == "ok"
        info = (await srv.http.get(f"/v1/sessions/{sid}")).json()
        assert info["sandbox_id"] == kernel_of(srv, sid).short_id != before.short_id


async def test_an_execution_that_fails_inside_the_service_is_reported_on_the_next_response() -> None:
    async with served() as srv:
        srv.backend.script("boom()", Fail(EngineUnavailable("the engine went away")))
        sid = await create(srv)
        await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "x = 1"})
        failed = await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "boom()"})
        assert error_of(failed) == (503, "engine_unavailable")
        assert "next execution reports state_lost" in failed.json()["error"]["message"]
        nxt = (await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "1"})).json()
        assert nxt["status"] == "ok" and nxt["state_lost"] is True and nxt["kernel_restarted"] is True


async def test_a_streamed_failure_inside_the_service_ends_the_stream_with_its_error_code() -> None:
    async with served() as srv:
        srv.backend.script("boom()", Fail(EngineUnavailable("the engine went away")))
        sid = await create(srv)
        r = await srv.http.post(f"/v1/sessions/{sid}/execute/stream", json={"code": "boom()"})
        assert r.status_code == 200  # the stream had started: the error is its last line
        assert ndjson(r)[-1]["error"]["code"] == "engine_unavailable"


async def test_with_the_engine_down_every_kernel_request_is_503_and_no_session_is_created() -> None:
    async with served() as srv:
        srv.backend.engine_down = True
        r = await srv.http.post("/v1/sessions", json={})
        assert error_of(r) == (503, "engine_unavailable")
        assert r.headers["retry-after"] == "2"
        assert error_of(await srv.http.post("/v1/execute", json={"code": "1"})) == (503, "engine_unavailable")
        assert (await srv.http.get("/v1/sessions")).json() == []
        assert srv.services.pool.stats().leased == 0
        assert error_of(await srv.http.get("/readyz")) == (503, "engine_unavailable")


async def test_a_second_execution_in_a_busy_session_is_409_and_an_interrupt_ends_the_first() -> None:
    async with served() as srv:
        srv.backend.script("spin()", Hang())
        sid = await create(srv)
        kernel = kernel_of(srv, sid)
        first = asyncio.ensure_future(srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "spin()"}))
        await wait_until(lambda: kernel.conn.running)
        busy = await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "1"})
        assert error_of(busy) == (409, "session_busy")
        assert (await srv.http.post(f"/v1/sessions/{sid}/interrupt")).json() == {"interrupted": True}
        r = await first
        assert r.json()["status"] == "interrupted" and r.json()["state_lost"] is False


async def test_a_timeout_is_a_200_with_status_timeout() -> None:
    async with served() as srv:
        srv.backend.script("spin()", Hang())
        sid = await create(srv)
        r = await srv.http.post(f"/v1/sessions/{sid}/execute", json={"code": "spin()", "timeout_s": 0.2})
        assert r.status_code == 200 and r.json()["status"] == "timeout"


async def test_limits_over_the_maximum_are_422_invalid_limits() -> None:
    async with served(fast_settings(max_memory_mb=1024)) as srv:
        r = await srv.http.post("/v1/sessions", json={"memory_mb": 2048})
        assert error_of(r) == (422, "invalid_limits")
        assert "EXECBOX_MAX_MEMORY_MB" in r.json()["error"]["message"]
        assert srv.services.sessions.count == 0


async def test_past_max_sessions_a_new_session_is_429() -> None:
    async with served(fast_settings(max_sessions=1)) as srv:
        await create(srv)
        assert error_of(await srv.http.post("/v1/sessions", json={})) == (429, "too_many_sessions")


async def test_restart_over_http_gives_a_new_sandbox() -> None:
    async with served() as srv:
        sid = await create(srv)
        before = kernel_of(srv, sid)
        r = await srv.http.post(f"/v1/sessions/{sid}/restart")
        assert r.status_code == 200 and r.json()["sandbox_id"] != before.short_id
        assert before.destroyed


async def test_a_request_without_the_api_key_is_401_and_reaches_no_sandbox() -> None:
    async with served(fast_settings(api_keys=["k1"])) as srv:
        r = await srv.http.post("/v1/execute", json={"code": "1"})
        assert error_of(r) == (401, "unauthorized")
        assert not any(k.conn.executed for k in srv.backend.kernels)
        ok = await srv.http.post("/v1/execute", json={"code": "1"}, headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200


async def test_a_batch_returns_every_result_in_input_order() -> None:
    async with served() as srv:
        jobs = [{"id": f"j{i}", "code": f"print({i} * {i})"} for i in range(6)]
        jobs.append({"id": "bad", "code": "1 / 0"})
        r = await srv.http.post("/v1/batch", json={"jobs": jobs})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["id"] for x in body["results"]] == [f"j{i}" for i in range(6)] + ["bad"]
        assert [x["stdout"] for x in body["results"][:6]] == [f"{i * i}\n" for i in range(6)]
        assert body["results"][-1]["status"] == "error"
        assert body["summary"]["total"] == 7 and body["summary"]["by_status"] == {"ok": 6, "error": 1}


async def test_a_streamed_batch_sends_one_result_line_per_job_then_the_summary() -> None:
    async with served() as srv:
        r = await srv.http.post("/v1/batch/stream", json={"jobs": [{"code": "print(1)"}, {"code": "print(2)"}]})
        lines = ndjson(r)
        assert [line["type"] for line in lines] == ["result", "result", "summary"]
        assert sorted(line["stdout"] for line in lines[:2]) == ["1\n", "2\n"]


async def test_a_batch_job_over_the_maximum_timeout_refuses_the_whole_batch() -> None:
    async with served(fast_settings(max_timeout_s=60)) as srv:
        jobs = [{"code": "print(1)"}, {"code": "print(2)", "timeout_s": 600}]
        r = await srv.http.post("/v1/batch", json={"jobs": jobs})
        assert error_of(r) == (422, "invalid_limits")
        assert srv.backend.workers == []  # refused before anything ran


async def test_shutdown_destroys_every_sandbox_and_worker() -> None:
    backend = FakeBackend()
    async with served(backend=backend) as srv:
        await create(srv)
        await create(srv)
        await srv.http.post("/v1/batch", json={"jobs": [{"code": "pass"}]})
        assert backend.live and backend.live_workers
    assert backend.closed
    assert backend.live == [] and backend.live_workers == []


async def test_the_app_does_not_start_when_the_engine_is_down() -> None:
    backend = FakeBackend()
    backend.engine_down = True
    with pytest.raises(EngineUnavailable):
        async with served(backend=backend, warm=False):
            pass
