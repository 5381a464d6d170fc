"""Several instances behind one proxy (issue 15), seen from one instance on the fake backend:
session ids name the node, a request for another node's session is refused as such, every
answer says its node, and GET /v1/info describes the instance without a key."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from execbox import ErrorReason
from execbox._models import ErrorEnvelope, Info
from execbox_server.api.gateway import kernel_id, session_id_of
from execbox_server.errors import SessionNotFound
from execbox_server.sessions import SessionIds
from execbox_server.settings import Settings
from tests.support.app import fast_settings, served

KEY = "k-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_ids_without_a_node_name_are_as_before() -> None:
    ids = SessionIds(None)
    new = ids.new()
    assert re.fullmatch(r"s_[0-9a-f]{24}", new)
    assert ids.local(new) == new


def test_ids_with_a_node_name_end_in_it_and_an_id_without_one_is_taken_as_local() -> None:
    ids = SessionIds("node-a")
    new = ids.new()
    assert re.fullmatch(r"s_[0-9a-f]{24}\.node-a", new)
    assert ids.local(new) == new
    assert ids.local(new.partition(".")[0]) == new


@pytest.mark.parametrize("node", ["node-a", None])
def test_an_id_of_another_node_is_refused_with_reason_wrong_node(node: str | None) -> None:
    with pytest.raises(SessionNotFound) as caught:
        SessionIds(node).local("s_0123456789abcdef01234567.node-b")
    assert caught.value.reason == ErrorReason.WRONG_NODE
    assert "node-b" in caught.value.message


@pytest.mark.parametrize("bad", ["Node-A", "node_a", "node.a", "-a", "a-", "x" * 64])
def test_a_node_name_must_be_a_dns_label(bad: str) -> None:
    with pytest.raises(ValidationError, match="EXECBOX_NODE_NAME"):
        Settings(node_name=bad)


def test_an_empty_node_name_means_none() -> None:
    assert Settings(node_name="").node_name is None


def test_a_gateway_kernel_id_stays_uuid_shaped_with_a_node_name() -> None:
    kernel = kernel_id("s_0123456789abcdef01234567.node-a")
    assert kernel == "01234567-89ab-cdef-0123-456700000000"
    assert session_id_of(kernel) == "s_0123456789abcdef01234567"


async def test_sessions_of_a_named_node_carry_it_and_every_answer_says_the_node() -> None:
    async with served(fast_settings(node_name="node-a")) as srv:
        created = await srv.http.post("/v1/sessions", json={})
        assert created.status_code == 201
        assert created.headers["x-execbox-node"] == "node-a"
        session = created.json()["id"]
        assert session.endswith(".node-a")
        ran = await srv.http.post(f"/v1/sessions/{session}/execute", json={"code": "x = 1"})
        assert ran.status_code == 200 and ran.headers["x-execbox-node"] == "node-a"
        assert (await srv.http.get("/v1/nope")).headers["x-execbox-node"] == "node-a"
        # The gateway sees the session under its UUID kernel id and names it on creation.
        kernels = (await srv.http.get("/api/kernels")).json()
        assert [k["id"] for k in kernels] == [kernel_id(session)]
        started = await srv.http.post("/api/kernels", json={})
        assert started.status_code == 201
        assert started.headers["x-execbox-kernel"] == started.json()["id"]
        assert (await srv.http.get(f"/api/kernels/{started.json()['id']}")).status_code == 200


async def test_a_request_for_another_nodes_session_is_404_wrong_node_and_creates_nothing() -> None:
    async with served(fast_settings(node_name="node-a")) as srv:
        other = "s_0123456789abcdef01234567.node-b"
        answer = await srv.http.post(f"/v1/sessions/{other}/execute", json={"code": "print(1)"})
        assert answer.status_code == 404
        error = ErrorEnvelope.model_validate(answer.json()).error
        assert (error.code, error.reason) == ("session_not_found", "wrong_node")
        assert srv.services.sessions.count == 0
        # An unknown session of this very node is a plain not-found, without a reason.
        mine = await srv.http.get("/v1/sessions/s_0123456789abcdef01234567.node-a")
        assert mine.status_code == 404 and "reason" not in mine.json()["error"]


async def test_without_a_node_name_no_header_is_sent() -> None:
    async with served() as srv:
        assert "x-execbox-node" not in (await srv.http.get("/healthz")).headers


async def test_info_describes_the_instance_without_a_key() -> None:
    settings = fast_settings(node_name="node-a", api_keys=KEY, max_sessions=7, batch_lanes=3)
    async with served(settings) as srv:
        refused = await srv.http.get("/v1/sessions")
        assert refused.status_code == 401 and refused.headers["x-execbox-node"] == "node-a"
        await srv.http.post("/v1/sessions", json={}, headers=AUTH)
        answer = await srv.http.get("/v1/info")
        assert answer.status_code == 200
        info = Info.model_validate(answer.json())
        assert info.node == "node-a" and info.instance_id == srv.backend.instance_id
        assert info.accepting
        assert info.image.name == settings.image
        assert (info.capacity.max_sessions, info.capacity.batch_lanes) == (7, 2)  # lanes <= batch_workers (2)
        assert info.load.sessions == 1 and info.load.kernels_leased == 1 and info.load.sessions_busy == 0
        assert KEY not in answer.text
