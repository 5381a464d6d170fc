"""SandboxFusion's routes on the real app and the fake backend: verdicts as data, refusals as
execbox's envelope, overload as a fast 504 with Retry-After, notebooks in one fresh kernel,
the main port's auth, and the keyless listener that acts as one key."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sandbox_fusion import models as client_models

from execbox_server import executor as executor_module
from execbox_server.api.deps import authenticate
from execbox_server.api.sandboxfusion import keyless_listener
from execbox_server.app import create_app
from execbox_server.settings import Settings
from tests.support.app import Served, fast_settings, served
from tests.support.fake_backend import FakeKernel, Hang

KEY, OTHER_KEY = "sf-key-0123456789", "other-key-0123456789"


@pytest.fixture(autouse=True)
def quick_liveness_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "LIVENESS_INTERVAL_S", 0.05)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error_of(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, str(r.json()["error"]["code"])


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fingerprint(key: str) -> str | None:
    return authenticate([SecretStr(key)], f"Bearer {key}")


# ---------------------------------------------------------------- /run_code


async def test_run_code_answers_verls_request_with_a_verdict_the_client_parses() -> None:
    async with served() as srv:
        body = {
            "compile_timeout": 10,
            "run_timeout": 10,
            "code": "print(int(input()) * 2)",
            "stdin": "21\n",
            "memory_limit_MB": 1024,
            "language": "python",
            "files": {},
            "fetch_files": [],
        }
        r = await srv.http.post("/run_code", json=body)
        assert r.status_code == 200
        reply = client_models.RunCodeResponse(**r.json())
        assert reply.status == client_models.RunStatus.Success and reply.message == ""
        assert reply.compile_result is None and reply.run_result is not None
        assert reply.run_result.stdout == "42\n" and reply.run_result.return_code == 0
        assert r.json()["executor_pod_name"] is None and r.json()["files"] == {}
        metrics = (await srv.http.get("/metrics")).text
        assert metric(metrics, 'execbox_sandboxfusion_replies_total{route="/run_code",status="Success"}') == 1


async def test_run_code_without_a_language_runs_python_and_a_failing_program_is_failed_not_an_error() -> None:
    async with served() as srv:
        r = await srv.http.post("/run_code", json={"code": "import sys\nprint('x')\nsys.exit(3)"})
        assert r.status_code == 200
        assert r.json()["status"] == "Failed" and r.json()["message"] == ""
        assert r.json()["run_result"]["return_code"] == 3 and r.json()["run_result"]["stdout"] == "x\n"


async def test_an_unsupported_language_is_a_200_sandbox_error_and_runs_nothing() -> None:
    async with served() as srv:
        r = await srv.http.post("/run_code", json={"code": "console.log(1)", "language": "nodejs"})
        assert r.status_code == 200
        assert r.json()["status"] == "SandboxError" and "supported: python, cpp" in r.json()["message"]
        assert srv.backend.workers == []


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        ({"code": "1", "files": {"in.txt": "***"}}, "invalid_request", "files['in.txt'] is not base64"),
        ({"code": "1", "fetch_files": ["/etc/shadow"]}, "invalid_request", "'/etc/shadow' is outside"),
        ({"code": "1", "run_timeout": 10_000}, "invalid_limits", "run_timeout=10000 is above"),
        ({"code": "1", "run_timeout": "soon"}, "invalid_request", "run_timeout"),
        ({"language": "python"}, "invalid_request", "code: Field required"),
    ],
)
async def test_a_request_that_cannot_run_is_a_422_in_execboxs_envelope(
    body: dict[str, Any], code: str, says: str
) -> None:
    async with served() as srv:
        r = await srv.http.post("/run_code", json=body)
        assert error_of(r) == (422, code)
        assert says in r.json()["error"]["message"]


async def test_no_worker_within_the_budget_is_a_fast_504_with_retry_after_counted_in_metrics() -> None:
    settings = fast_settings(batch_workers=1, sandboxfusion_queue_s=0.2)
    async with served(settings) as srv:
        await srv.services.batch.reserve(None)  # the only worker, busy
        started = asyncio.get_running_loop().time()
        r = await srv.http.post("/run_code", json={"code": "print(1)"})
        waited = asyncio.get_running_loop().time() - started
        assert error_of(r) == (504, "queue_timeout")
        assert "EXECBOX_SANDBOXFUSION_QUEUE_S" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) >= 1
        assert 0.15 < waited < 2
        metrics = (await srv.http.get("/metrics")).text
        assert metric(metrics, 'execbox_queue_timeouts_total{route="/run_code"}') == 1


async def test_a_key_at_its_worker_quota_waits_for_a_share_within_the_budget_then_gets_504() -> None:
    settings = fast_settings(
        api_keys=f"{KEY},{OTHER_KEY}", key_max_batch_workers=1, batch_workers=4, sandboxfusion_queue_s=0.3
    )
    async with served(settings) as srv:
        auth = {"Authorization": f"Bearer {KEY}"}
        held = srv.services.quotas.batch(fingerprint(KEY), 1)
        r = await srv.http.post("/run_code", json={"code": "print(1)"}, headers=auth)
        assert error_of(r) == (504, "queue_timeout") and "Retry-After" in r.headers

        # A share given back while the request waits is taken: the request runs.
        asyncio.get_running_loop().call_later(0.1, held.release)
        r = await srv.http.post("/run_code", json={"code": "print(1)"}, headers=auth)
        assert r.status_code == 200 and r.json()["status"] == "Success"


async def test_the_sandboxfusion_routes_need_a_key_on_the_main_port_when_keys_are_on() -> None:
    async with served(fast_settings(api_keys=KEY)) as srv:
        for method, path in [("POST", "/run_code"), ("POST", "/run_jupyter"), ("GET", "/v1/ping")]:
            r = await srv.http.request(method, path, json={"code": "1", "cells": []})
            assert error_of(r) == (401, "unauthorized"), path
        r = await srv.http.post("/run_code", json={"code": "print(1)"}, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["status"] == "Success"


async def test_ping_answers_the_json_string_pong() -> None:
    async with served() as srv:
        r = await srv.http.get("/v1/ping")
        assert r.status_code == 200 and r.json() == "pong"
        assert r.headers["content-type"].startswith("application/json")


# ---------------------------------------------------------------- /run_jupyter


async def test_cells_share_one_fresh_kernel_later_cells_run_after_an_error_and_the_session_is_gone_after() -> None:
    async with served() as srv:
        cells = ["a = 'hello'", "a", "print(a)", "assert False", "print(a)"]
        r = await srv.http.post("/run_jupyter", json={"cells": cells})
        assert r.status_code == 200
        reply = client_models.RunJupyterResponse(**r.json())
        assert reply.status == client_models.RunStatus.Success
        assert reply.cells[1].display == [{"text/plain": "'hello'"}]
        assert reply.cells[2].stdout == "hello\n"
        assert reply.cells[3].error[0]["ename"] == "AssertionError"
        assert reply.cells[4].stdout == "hello\n"
        assert srv.services.sessions.count == 0
        used = [k for k in srv.backend.kernels if "a = 'hello'" in k.conn.executed]
        assert len(used) == 1 and used[0].destroyed


async def test_notebook_files_go_in_before_the_first_cell_and_come_back_by_their_request_names() -> None:
    async with served() as srv:
        body = {
            "cells": ["1"],
            "files": {"data/in.txt": b64(b"payload")},
            "fetch_files": ["/home/sandbox/data/in.txt", "missing.txt"],
        }
        r = await srv.http.post("/run_jupyter", json=body)
        assert r.status_code == 200 and r.json()["status"] == "Success"
        assert r.json()["files"] == {"/home/sandbox/data/in.txt": b64(b"payload")}


async def test_a_notebook_out_of_time_is_failed_with_a_driver_time_limit_and_the_cells_so_far() -> None:
    async with served() as srv:
        srv.backend.script("spin()", Hang())
        body = {"cells": ["print(1)", "spin()", "print(2)"], "total_timeout": 0.5}
        r = await srv.http.post("/run_jupyter", json=body)
        assert r.status_code == 200
        reply = r.json()
        assert reply["status"] == "Failed" and reply["driver"]["status"] == "TimeLimitExceeded"
        assert reply["driver"]["return_code"] is None
        assert [c["stdout"] for c in reply["cells"]] == ["1\n", ""]
        assert reply["cells"][1]["error"][0]["ename"] in {"TimeoutError", "KeyboardInterrupt"}
        client_models.RunJupyterResponse(**reply)
        assert srv.services.sessions.count == 0


async def test_a_cell_timeout_bounds_each_cell() -> None:
    async with served() as srv:
        srv.backend.script("spin()", Hang())
        body = {"cells": ["spin()", "print(2)"], "cell_timeout": 0.3, "total_timeout": 30}
        started = asyncio.get_running_loop().time()
        r = await srv.http.post("/run_jupyter", json=body)
        assert asyncio.get_running_loop().time() - started < 5
        assert r.json()["status"] == "Failed" and r.json()["driver"]["status"] == "TimeLimitExceeded"
        assert len(r.json()["cells"]) == 1


async def test_a_notebook_file_outside_the_working_directory_is_a_422_and_takes_no_kernel() -> None:
    async with served() as srv:
        before = len(srv.backend.kernels)
        r = await srv.http.post("/run_jupyter", json={"cells": ["1"], "files": {"/tmp/x": b64(b"x")}})
        assert error_of(r) == (422, "invalid_request")
        assert len(srv.backend.kernels) == before and srv.services.sessions.count == 0


# ---------------------------------------------------------------- the keyless listener


async def keyless(srv: Served, key: str | None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=keyless_listener(srv.app, key=key))
    return httpx.AsyncClient(transport=transport, base_url="http://sf")


async def test_the_keyless_listener_runs_as_its_key_whatever_authorization_a_caller_sends() -> None:
    async with served(fast_settings(api_keys=f"{KEY},{OTHER_KEY}")) as srv:
        async with await keyless(srv, KEY) as http:
            r = await http.post("/run_code", json={"code": "print(1)"})
            assert r.status_code == 200 and r.json()["status"] == "Success"
            r = await http.post(
                "/run_code", json={"code": "print(2)"}, headers={"Authorization": f"Bearer {OTHER_KEY}"}
            )
            assert r.status_code == 200
            assert {w.owner for w in srv.backend.workers} == {fingerprint(KEY)}
            assert (await http.get("/v1/ping")).json() == "pong"


async def test_the_keyless_listener_serves_only_the_sandboxfusion_routes() -> None:
    async with served(fast_settings(api_keys=KEY)) as srv:
        async with await keyless(srv, KEY) as http:
            for method, path in [("GET", "/v1/sessions"), ("POST", "/v1/execute"), ("GET", "/metrics")]:
                r = await http.request(method, path)
                assert error_of(r) == (404, "not_found"), path
                assert "only the SandboxFusion routes" in r.json()["error"]["message"]


async def test_notebook_kernels_are_fresh_per_request() -> None:
    async with served() as srv:
        await srv.http.post("/run_jupyter", json={"cells": ["secret = 1"]})
        r = await srv.http.post("/run_jupyter", json={"cells": ["secret"]})
        assert r.json()["cells"][0]["error"][0]["ename"] == "NameError"
        kernels = [k for k in srv.backend.kernels if k.conn.executed]
        assert len(kernels) == 2 and all(isinstance(k, FakeKernel) and k.destroyed for k in kernels)


def test_the_openapi_document_describes_the_sandboxfusion_routes_and_their_504() -> None:
    doc = create_app(Settings()).openapi()
    run_code = doc["paths"]["/run_code"]["post"]
    assert run_code["operationId"] == "run_code" and run_code["tags"] == ["sandboxfusion"]
    assert run_code["responses"]["504"]["x-error-codes"] == ["queue_timeout"]
    assert "Retry-After" in run_code["responses"]["504"]["headers"]
    assert doc["paths"]["/run_jupyter"]["post"]["operationId"] == "run_jupyter"
    assert doc["paths"]["/v1/ping"]["get"]["operationId"] == "ping"
    reply = doc["components"]["schemas"]["RunCodeResponse"]
    assert list(reply["properties"]) == [
        "status",
        "message",
        "compile_result",
        "run_result",
        "executor_pod_name",
        "files",
    ]
    assert doc["components"]["schemas"]["RunStatus"]["enum"] == ["Success", "Failed", "SandboxError"]
    assert doc["components"]["schemas"]["CommandRunStatus"]["enum"] == ["Finished", "Error", "TimeLimitExceeded"]
