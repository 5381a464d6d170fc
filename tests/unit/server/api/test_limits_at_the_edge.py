"""The API answers a limit over the maximum the same way on every route, before anything runs."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest

from execbox_server.api.deps import Services
from execbox_server.app import create_app
from execbox_server.observability import Metrics
from execbox_server.quotas import QuotaLimits, Quotas
from execbox_server.sessions import SessionManager
from execbox_server.settings import Settings


class NothingMayRun:
    """A pool, batch runner and sandbox seam that fail the test if anything reaches them."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} was reached: the request should have been refused before")


def served(settings: Settings) -> httpx.AsyncClient:
    app = create_app(settings)
    refuse = cast(Any, NothingMayRun())
    app.state.services = Services(
        settings=settings,
        backend=refuse,
        pool=refuse,
        sessions=SessionManager(settings, refuse, refuse, refuse),
        batch=refuse,
        metrics=Metrics(),
        quotas=Quotas(QuotaLimits(), sessions_held=lambda owner: 0),
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


SETTINGS = Settings(max_timeout_s=60, batch_memory_mb=512)
OVER = "timeout_s=61 is above this server's maximum of 60 (EXECBOX_MAX_TIMEOUT_S)"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/sessions", {"timeout_s": 61}),
        ("/v1/execute", {"code": "1", "timeout_s": 61}),
        ("/v1/execute/stream", {"code": "1", "timeout_s": 61}),
    ],
)
async def test_a_timeout_over_the_maximum_is_422_invalid_limits(path: str, body: dict[str, Any]) -> None:
    async with served(SETTINGS) as http:
        r = await http.post(path, json=body)
    assert r.status_code == 422
    assert r.json() == {"error": {"code": "invalid_limits", "message": OVER}}


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/batch/stream"])
async def test_a_batch_with_one_job_over_the_maximum_is_refused_whole_before_any_job_runs(path: str) -> None:
    jobs = [{"code": "1"}, {"code": "2", "timeout_s": 61}, {"code": "3", "memory_mb": 4096}]
    async with served(SETTINGS) as http:
        r = await http.post(path, json={"jobs": jobs})
    assert r.status_code == 422
    assert r.json()["error"] == {
        "code": "invalid_limits",
        "message": f"job 1: {OVER}; no job of the batch was run",
    }


async def test_a_batch_job_may_not_ask_for_more_memory_than_its_worker_has() -> None:
    async with served(SETTINGS) as http:
        r = await http.post("/v1/batch", json={"jobs": [{"code": "1", "memory_mb": 513}]})
    error = r.json()["error"]
    assert r.status_code == 422 and error["code"] == "invalid_limits"
    assert "memory_mb=513 is above this server's maximum of 512 (EXECBOX_BATCH_MEMORY_MB)" in error["message"]
