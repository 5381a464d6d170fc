"""The Kernel Gateway routes on the fake backend, and its wire models on their own.

Replies are parsed the way jupyter_server's GatewayKernelManager parses them (its
``last_activity`` format, ``connections`` as an int); the websocket is proven with the real
clients in tests/integration/test_gateway*.py.
"""

from __future__ import annotations

import json
import struct
from datetime import datetime

import pytest
from pydantic import SecretStr
from starlette.datastructures import Headers, QueryParams

from execbox_server.api.gateway import gateway_authorization, kernel_id, session_id_of
from execbox_server.gateway.models import (
    Channel,
    InvalidMessage,
    MessageHeader,
    WireProtocol,
    decode,
    encode,
    new_message,
)
from tests.support.app import fast_settings, served

# ------------------------------------------------------------------------------ ids and auth


def test_kernel_ids_are_uuid_shaped_and_map_back_to_their_session() -> None:
    kid = kernel_id("s_0123456789abcdef01234567")
    assert kid == "01234567-89ab-cdef-0123-456700000000"
    assert session_id_of(kid) == "s_0123456789abcdef01234567"
    assert session_id_of(kid.upper()) == "s_0123456789abcdef01234567"


@pytest.mark.parametrize("kid", ["", "nope", "01234567-89ab-cdef-0123-456711111111", "../../v1/sessions"])
def test_a_kernel_id_of_another_shape_names_no_session(kid: str) -> None:
    assert session_id_of(kid) is None


def test_a_session_id_of_another_shape_has_no_kernel_id() -> None:
    assert kernel_id("batch-1") is None


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({"authorization": "token k1"}, "", "Bearer k1"),
        ({"authorization": "Bearer k1"}, "", "Bearer k1"),
        ({}, "token=k1", "Bearer k1"),
        ({"authorization": "Basic eA=="}, "", ""),
        ({}, "", ""),
    ],
)
def test_every_gateway_auth_form_becomes_the_bearer_key(headers: dict[str, str], query: str, expected: str) -> None:
    assert gateway_authorization(Headers(headers), QueryParams(query)) == expected


# ------------------------------------------------------------------------------ messages


def _header(msg_type: str = "execute_request") -> MessageHeader:
    return MessageHeader(msg_id="m1", msg_type=msg_type, session="s", date=1.5)


def test_a_classic_message_round_trips_with_jupyter_servers_top_level_fields() -> None:
    msg = new_message(Channel.IOPUB, "stream", {"name": "stdout", "text": "hi"}, parent=_header(), session="k")
    body = json.loads(encode(msg, WireProtocol.CLASSIC))
    assert body["channel"] == "iopub" and body["msg_type"] == "stream" and body["msg_id"] == body["header"]["msg_id"]
    assert body["parent_header"]["msg_id"] == "m1" and body["parent_header"]["date"] == 1.5  # as the client sent it
    assert datetime.strptime(body["header"]["date"], "%Y-%m-%dT%H:%M:%S.%fZ")
    again = decode(json.dumps(body), WireProtocol.CLASSIC, max_bytes=10_000)
    assert again.content == {"name": "stdout", "text": "hi"} and again.channel is Channel.IOPUB


def test_a_v1_message_round_trips_through_its_offset_table() -> None:
    msg = new_message(Channel.SHELL, "kernel_info_reply", {"status": "ok"}, parent=_header(), session="k")
    frame = encode(msg, WireProtocol.V1)
    assert isinstance(frame, bytes)
    count = struct.unpack_from("<Q", frame)[0]
    offsets = struct.unpack_from(f"<{count}Q", frame, 8)
    assert count == 6 and offsets[0] == 8 * 7 and offsets[-1] == len(frame)
    assert frame[offsets[0] : offsets[1]] == b"shell"
    again = decode(frame, WireProtocol.V1, max_bytes=10_000)
    assert again.msg_type == "kernel_info_reply" and again.parent_header["msg_id"] == "m1"


def test_a_message_without_a_channel_goes_to_shell_as_jupyter_server_assumes() -> None:
    frame = json.dumps({"header": {"msg_id": "1", "msg_type": "execute_request"}, "content": {"code": "1"}})
    assert decode(frame, WireProtocol.CLASSIC, max_bytes=10_000).channel is Channel.SHELL


@pytest.mark.parametrize(
    ("frame", "protocol"),
    [
        ("not json", WireProtocol.CLASSIC),
        (json.dumps({"header": {"msg_type": "x"}}), WireProtocol.CLASSIC),  # no msg_id
        (json.dumps({"header": {"msg_id": "1", "msg_type": "x"}, "channel": "hb"}), WireProtocol.CLASSIC),
        (json.dumps({"header": {"msg_id": "1", "msg_type": "x"}, "content": []}), WireProtocol.CLASSIC),
        (b"\x00\x01", WireProtocol.CLASSIC),  # classic binary frames carry buffers: not supported
        (b"\x00" * 7, WireProtocol.V1),
        (struct.pack("<Q", 1 << 40), WireProtocol.V1),
        (struct.pack("<7Q", 6, 56, 61, 60, 62, 63, 64) + b"shell" + b"{}" * 4, WireProtocol.V1),  # not ascending
        ("{}", WireProtocol.V1),
        ("[" * 100_000, WireProtocol.CLASSIC),
    ],
)
def test_a_frame_that_is_not_a_jupyter_message_is_refused(frame: str | bytes, protocol: WireProtocol) -> None:
    with pytest.raises(InvalidMessage):
        decode(frame, protocol, max_bytes=1 << 20)


def test_a_message_over_the_size_limit_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(InvalidMessage, match="over this server's limit"):
        decode("x" * 101, WireProtocol.CLASSIC, max_bytes=100)


def test_a_refusal_never_quotes_the_message() -> None:
    frame = json.dumps({"header": {"msg_type": "execute_request"}, "content": {"code": "SECRET_CODE"}})
    with pytest.raises(InvalidMessage) as caught:
        decode(frame, WireProtocol.CLASSIC, max_bytes=10_000)
    assert "SECRET_CODE" not in str(caught.value)


# ------------------------------------------------------------------------------ REST


async def test_a_gateway_kernel_is_a_session_of_the_same_pool() -> None:
    async with served() as srv:
        r = await srv.http.post("/api/kernels", json={"name": "python3", "env": {"KERNEL_USERNAME": "x"}})
        assert r.status_code == 201
        model = r.json()
        assert r.headers["location"] == f"/api/kernels/{model['id']}"
        assert set(model) == {"id", "name", "last_activity", "execution_state", "connections"}
        datetime.strptime(model["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")  # GatewayKernelManager's parse
        assert int(model["connections"]) == 0 and model["execution_state"] == "idle"
        sessions = (await srv.http.get("/v1/sessions")).json()
        assert [s["id"] for s in sessions] == [session_id_of(model["id"])]
        assert [k["id"] for k in (await srv.http.get("/api/kernels")).json()] == [model["id"]]
        assert (await srv.http.post(f"/api/kernels/{model['id']}/interrupt")).status_code == 204
        restarted = await srv.http.post(f"/api/kernels/{model['id']}/restart")
        assert restarted.status_code == 200 and restarted.json()["id"] == model["id"]
        assert (await srv.http.delete(f"/api/kernels/{model['id']}")).status_code == 204
        assert (await srv.http.get(f"/api/kernels/{model['id']}")).status_code == 404
        assert (await srv.http.get("/v1/sessions")).json() == []


async def test_an_unknown_kernel_spec_is_404_and_starts_nothing() -> None:
    async with served() as srv:
        assert (await srv.http.post("/api/kernels", json={"name": "ir"})).status_code == 404
        assert (await srv.http.get("/api/kernelspecs/ir")).status_code == 404
        spec = (await srv.http.get("/api/kernelspecs")).json()
        assert spec["default"] == "python3" and list(spec["kernelspecs"]) == ["python3"]
        assert (await srv.http.get("/v1/sessions")).json() == []


async def test_gateway_routes_take_the_token_forms_and_refuse_without_a_key() -> None:
    async with served(fast_settings(api_keys=[SecretStr("k1")])) as srv:
        assert (await srv.http.get("/api/kernels")).status_code == 401
        assert (await srv.http.post("/api/kernels", json={})).status_code == 401
        assert (await srv.http.get("/api/kernels", headers={"Authorization": "token k1"})).status_code == 200
        assert (await srv.http.get("/api/kernels?token=k1")).status_code == 200
        assert (await srv.http.get("/api/kernels?token=k2")).status_code == 401
