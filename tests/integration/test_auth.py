"""Authentication: bearer keys, constant-time check, sessions visible only to their key."""

from __future__ import annotations

import httpx
import pytest

from execbox import AuthenticationError, Client, SessionNotFoundError
from tests.support.server import LocalServer, start_server


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(
        tmp_path_factory.mktemp("auth") / "auth.log",
        {"api_keys": "key-one,key-two", "min_ready": "1", "max_total": "4"},
    )
    yield server
    server.stop()


def test_v1_calls_need_a_valid_bearer_key(keyed: LocalServer) -> None:
    with httpx.Client(base_url=keyed.url) as http:
        assert http.get("/healthz").status_code == 200  # probes stay open
        missing = http.get("/v1/sessions")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        wrong = http.post("/v1/execute", json={"code": "1"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        basic = http.get("/v1/sessions", headers={"Authorization": "Basic a2V5LW9uZQ=="})
        assert basic.status_code == 401
        ok = http.get("/v1/sessions", headers={"Authorization": "Bearer key-one"})
        assert ok.status_code == 200


def test_the_key_is_checked_before_the_body_is_read(keyed: LocalServer) -> None:
    # Neither a malformed body (422) nor an oversized one (413) is looked at for a caller
    # without a valid key: it gets 401 and learns nothing about the body rules.
    with httpx.Client(base_url=keyed.url, timeout=60) as http:
        malformed = http.post("/v1/execute", content=b"{not json", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 401, malformed.text
        oversized = http.post("/v1/sessions", content=b"x" * (3 * 1024 * 1024), headers={"Authorization": "Bearer no"})
        assert oversized.status_code == 401, oversized.text
        keyed_malformed = http.post(
            "/v1/execute",
            content=b"{not json",
            headers={"Content-Type": "application/json", "Authorization": "Bearer key-one"},
        )
        assert keyed_malformed.status_code == 422  # with a key, the body rules apply as before


def test_a_session_is_visible_only_to_the_key_that_created_it(keyed: LocalServer) -> None:
    with Client(keyed.url, api_key="key-one") as one, Client(keyed.url, api_key="key-two") as two:
        with one.session() as s:
            assert s.run("print('mine')").stdout == "mine\n"
            assert [i.id for i in one.sessions.list()] == [s.id]
            assert two.sessions.list() == []
            with pytest.raises(SessionNotFoundError):
                two.sessions.get(s.id)
            with pytest.raises(SessionNotFoundError):
                two.sessions.delete(s.id)
            r = httpx.post(
                f"{keyed.url}/v1/sessions/{s.id}/execute",
                json={"code": "1"},
                headers={"Authorization": "Bearer key-two"},
            )
            assert r.status_code == 404
            assert one.sessions.get(s.id).id == s.id  # untouched by the other key


def test_the_sdk_raises_authentication_error_without_a_key(keyed: LocalServer) -> None:
    with Client(keyed.url, api_key="") as anonymous:
        with pytest.raises(AuthenticationError):
            anonymous.sessions.list()


def test_listening_beyond_loopback_without_keys_is_refused() -> None:
    from execbox_server.settings import Settings

    with pytest.raises(ValueError, match="without authentication"):
        Settings(host="0.0.0.0", api_keys=[])
    assert Settings(host="0.0.0.0", api_keys=["k"]).host == "0.0.0.0"
