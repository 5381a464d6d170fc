"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis):
no 5xx other than documented 503s, no crash, no leaked container."""

from __future__ import annotations

import docker
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import execbox_containers, instance_of
from tests.support.server import start_server

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory):
    # Its own small server: fuzzed sessions are never deleted, so a tight pool and session cap
    # turn them into quick 503/429 answers instead of waits.
    server = start_server(
        tmp_path_factory.mktemp("fuzz") / "fuzz.log",
        {
            "min_ready": "1",
            "max_total": "3",
            "max_sessions": "2",
            "acquire_timeout_s": "0.3",
            "batch_min_workers": "0",
            "batch_workers": "1",
            "max_timeout_s": "5",
            "default_timeout_s": "2",
        },
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_answers_with_an_undocumented_server_error(case) -> None:
    if case.body and isinstance(case.body, dict) and "code" in case.body:
        case.body["timeout_s"] = 2  # keep fuzzed executions short
    response = case.call(timeout=60)
    documented_503 = ("pool_exhausted", "engine_unavailable", "sandbox_unavailable")
    assert response.status_code < 500 or (
        response.status_code == 503 and response.json()["error"]["code"] in documented_503
    ), (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body


def test_fuzzing_left_no_stray_container(fuzz_server) -> None:
    # Sessions the fuzzer created are still open (it does not delete them): delete them, then
    # no kernel container may remain beyond the pool's own, and no more workers than allowed.
    import httpx

    server = fuzz_server
    with httpx.Client(base_url=server.url) as http:
        for info in http.get("/v1/sessions").json():
            http.delete(f"/v1/sessions/{info['id']}")
        pool = http.get("/readyz").json()["pool"]
    engine = docker.from_env()
    instance = instance_of(server)

    def alive(role: str) -> int:
        labels = [f"execbox.instance={instance}", f"execbox.role={role}"]
        return len(engine.containers.list(all=True, filters={"label": labels}))

    assert alive("kernel") <= pool["ready"] + pool["starting"] + pool["leased"] + 1
    assert alive("worker") <= 1  # EXECBOX_BATCH_WORKERS of the fuzz server
    assert execbox_containers(instance)  # sanity: the labels are the ones the service uses
