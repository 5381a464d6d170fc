"""The HTTP edge against a real server: per-key quotas, the key checked before any body byte,
deadlines for slow clients (slowloris), and a 413 that ordinary clients can read."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from tests.support.server import LocalServer, start_server

KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"Authorization": "Bearer key-b"}
SETTLE_S = 60  # the longest any of these tests waits for something that must happen


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    # Two keys: each gets half of every global limit by default — 2 of the 4 kernels as
    # sessions, 2 executions at once, 1 of the 2 batch workers. Every kernel is kept warm,
    # so no lease waits for a start on a busy machine. The two timeouts are the settings
    # under test, short so that the tests are quick.
    server = start_server(
        tmp_path_factory.mktemp("edge") / "edge.log",
        {
            "api_keys": "key-a,key-b",
            "min_ready": "4",
            "max_total": "4",
            "max_sessions": "4",
            "batch_workers": "2",
            "batch_min_workers": "0",
            "header_timeout_s": "1",
            "body_timeout_s": "5",
        },
    )
    yield server
    server.stop()


def address(server: LocalServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or SETTLE_S passes: then the test fails)."""
    sock.settimeout(SETTLE_S)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def assert_quota_error(r: httpx.Response, setting: str) -> None:
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded" and setting in error["message"], error
    assert int(r.headers["retry-after"]) >= 1


# ------------------------------------------------------------------ the key before the body


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key"])
def test_a_64_mib_post_without_a_valid_key_is_answered_401_before_its_body_is_sent(
    edge: LocalServer, authorization: str | None
) -> None:
    head = (
        "POST /v1/execute HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        f"Content-Length: {64 * 1024 * 1024}\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + "\r\n"
    )
    with socket.create_connection(address(edge)) as sock:
        sock.sendall(head.encode() + b'{"code": "' + b"x" * 1000)  # and nothing more
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 401 "), response[:200]
    assert b'"code":"unauthorized"' in response


def test_a_request_with_a_wrong_key_and_an_ordinary_body_reads_its_401(edge: LocalServer) -> None:
    body = json.dumps({"code": "x = 1\n" * 50_000})  # 300 kB, under the drain bound
    r = requests.post(edge.url + "/v1/execute", data=body, headers={"Authorization": "Bearer nope"}, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    req = urllib.request.Request(edge.url + "/v1/execute", data=body.encode(), headers={"Authorization": "Bearer no"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=60)
    assert info.value.code == 401


# ------------------------------------------------------------------ 413 readable by ordinary clients


def test_a_24_mb_body_is_a_413_that_urllib_and_requests_can_read(edge: LocalServer) -> None:
    body = json.dumps({"code": "x" * 24_000_000}).encode()
    headers = {**KEY_A, "Content-Type": "application/json"}
    # urllib sends Connection: close: the server must not close before the body is read.
    req = urllib.request.Request(edge.url + "/v1/execute", data=body, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=120)
    assert info.value.code == 413
    assert json.loads(info.value.read())["error"]["code"] == "request_too_large"
    for extra in ({}, {"Connection": "close"}):
        r = requests.post(edge.url + "/v1/execute", data=body, headers={**headers, **extra}, timeout=120)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", extra
        assert "EXECBOX_MAX_CODE_BYTES" in r.json()["error"]["message"]


def test_a_chunked_body_over_the_limit_is_a_413_too(edge: LocalServer) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is found while reading
        yield b'{"code": "'
        for _ in range(24):
            yield b"x" * 1_000_000
        yield b'"}'

    r = requests.post(
        edge.url + "/v1/execute", data=chunks(), headers={**KEY_A, "Content-Type": "application/json"}, timeout=120
    )
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "request_too_large"


# ------------------------------------------------------------------ slow clients


def test_a_connection_that_stalls_in_its_request_line_is_closed_while_others_are_served(edge: LocalServer) -> None:
    silent = socket.create_connection(address(edge))  # connects and sends nothing
    stalled = socket.create_connection(address(edge))
    stalled.sendall(b"GET /heal")
    try:
        # Meanwhile the server answers everyone else.
        with httpx.Client(base_url=edge.url, timeout=30) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/v1/sessions", headers=KEY_A).status_code == 200
        assert read_response(stalled).startswith(b"HTTP/1.1 408 ")
        assert read_response(silent).startswith(b"HTTP/1.1 408 ")
    finally:
        silent.close()
        stalled.close()


def test_a_slowloris_that_keeps_trickling_its_headers_is_closed(edge: LocalServer) -> None:
    with socket.create_connection(address(edge)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n")
        sock.settimeout(0.2)
        started = time.monotonic()
        while time.monotonic() - started < SETTLE_S:  # a header line now and then, never the end
            try:
                sock.sendall(b"X-a: b\r\n")
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                answer = b""  # reset while sending: closed as well
            break
        else:
            pytest.fail("the server kept a connection whose headers never ended")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def test_headers_larger_than_the_cap_are_refused(edge: LocalServer) -> None:
    with socket.create_connection(address(edge)) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"a" * 200_000)
            response = read_response(sock)
        except ConnectionResetError:
            response = b""  # closed while we were still sending: refused too
    assert response == b"" or response.startswith(b"HTTP/1.1 431 "), response[:200]


def test_a_body_that_stalls_is_abandoned_and_the_connection_closed(edge: LocalServer) -> None:
    head = (
        "POST /v1/execute HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer key-a\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with socket.create_connection(address(edge)) as sock:
        sock.sendall(head.encode() + b'{"code": "1')  # 11 of 100 bytes, then silence
        assert read_response(sock) == b""  # closed, nothing run


# ------------------------------------------------------------------ per-key quotas


@pytest.fixture()
def warm(edge: LocalServer) -> LocalServer:
    """The server once all 4 kernels are warm spares again (earlier tests' kernels replaced)."""
    deadline = time.monotonic() + 4 * SETTLE_S  # kernel starts, two at a time, on a busy machine
    while httpx.get(edge.url + "/readyz", timeout=30).json().get("pool", {}).get("ready", 0) < 4:
        assert time.monotonic() < deadline, "the pool never refilled"
        time.sleep(0.2)
    return edge


def create(http: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    return http.post("/v1/sessions", json={}, headers=headers)


def test_sessions_past_the_key_quota_are_429_while_another_key_is_served(warm: LocalServer) -> None:
    with httpx.Client(base_url=warm.url, timeout=60) as http:
        mine = [create(http, KEY_A) for _ in range(2)]
        assert [r.status_code for r in mine] == [201, 201], [r.text for r in mine]
        try:
            assert_quota_error(create(http, KEY_A), "EXECBOX_KEY_MAX_SESSIONS")
            # A one-shot holds a kernel like a session: refused as well.
            assert_quota_error(http.post("/v1/execute", json={"code": "1"}, headers=KEY_A), "EXECBOX_KEY_MAX_SESSIONS")
            other = create(http, KEY_B)
            assert other.status_code == 201, other.text
            assert http.delete(f"/v1/sessions/{other.json()['id']}", headers=KEY_B).status_code == 204
            # Deleting one gives its share back.
            gone = mine.pop()
            assert http.delete(f"/v1/sessions/{gone.json()['id']}", headers=KEY_A).status_code == 204
            again = create(http, KEY_A)
            assert again.status_code == 201, again.text
            mine.append(again)
        finally:
            for r in mine:
                http.delete(f"/v1/sessions/{r.json()['id']}", headers=KEY_A)


def open_stream(
    http: httpx.Client, path: str, code: str, headers: dict[str, str]
) -> tuple[httpx.Response, Iterator[dict[str, Any]]]:
    request = http.build_request("POST", path, json={"code": code, "timeout_s": 120}, headers=headers)
    response = http.send(request, stream=True)
    assert response.status_code == 200, response.read()
    return response, (json.loads(line) for line in response.iter_lines() if line)


def test_executions_past_the_key_quota_are_429_until_one_ends(warm: LocalServer) -> None:
    code = "import time\nprint('go', flush=True)\ntime.sleep(120)"
    with httpx.Client(base_url=warm.url, timeout=120) as http:
        ids = [create(http, KEY_A).json()["id"] for _ in range(2)]
        streams = []
        try:
            for sid in ids:
                response, events = open_stream(http, f"/v1/sessions/{sid}/execute/stream", code, KEY_A)
                streams.append((response, events))
                assert next(e for e in events if e.get("type") == "stdout")["text"] == "go\n"
            # Both of key-a's executions run: a third, streamed or not, one-shot or session, is refused.
            assert_quota_error(
                http.post(f"/v1/sessions/{ids[0]}/execute", json={"code": "1"}, headers=KEY_A),
                "EXECBOX_KEY_MAX_EXECUTIONS",
            )
            assert_quota_error(
                http.post("/v1/execute/stream", json={"code": "1"}, headers=KEY_A), "EXECBOX_KEY_MAX_EXECUTIONS"
            )
            # key-b is not starved.
            r = http.post("/v1/execute", json={"code": "print(6 * 7)"}, headers=KEY_B)
            assert r.status_code == 200 and r.json()["stdout"] == "42\n", r.text
            # The share comes back when an execution ends: by the time its done line is read.
            assert http.post(f"/v1/sessions/{ids[0]}/interrupt", headers=KEY_A).json() == {"interrupted": True}
            response, events = streams.pop(0)
            assert [e for e in events if e.get("type") == "done"]
            response.close()
            r = http.post(f"/v1/sessions/{ids[0]}/execute", json={"code": "print('free')"}, headers=KEY_A)
            assert r.status_code == 200 and r.json()["stdout"] == "free\n", r.text
        finally:
            for response, _ in streams:
                response.close()
            for sid in ids:
                http.delete(f"/v1/sessions/{sid}", headers=KEY_A)


def test_batches_past_the_key_worker_quota_are_429_while_another_key_runs(edge: LocalServer) -> None:
    slow = {"jobs": [{"code": "import time; time.sleep(120)", "timeout_s": 150}]}
    with httpx.Client(base_url=edge.url, timeout=120) as http:
        with http.stream("POST", "/v1/batch/stream", json=slow, headers=KEY_A) as running:
            assert running.status_code == 200  # key-a's one worker is taken from here on
            assert_quota_error(
                http.post("/v1/batch", json={"jobs": [{"code": "1"}]}, headers=KEY_A),
                "EXECBOX_KEY_MAX_BATCH_WORKERS",
            )
            r = http.post("/v1/batch", json={"jobs": [{"code": "print(1)"}]}, headers=KEY_B)
            assert r.status_code == 200 and r.json()["results"][0]["stdout"] == "1\n", r.text
        # The stream closed: the batch is cancelled and the share given back.
        deadline = time.monotonic() + SETTLE_S
        while True:
            r = http.post("/v1/batch", json={"jobs": [{"code": "print(2)"}]}, headers=KEY_A)
            if r.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.json()["results"][0]["stdout"] == "2\n", r.text
