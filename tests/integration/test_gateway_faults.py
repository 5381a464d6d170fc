"""The Kernel Gateway path under keys, limits and faults, on a server of its own (two API keys,
a 3 s cell deadline): each failure is reported to the Jupyter client honestly, and nothing leaks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
import websocket
from jupyter_kernel_client import JupyterKernelClient  # type: ignore[import-untyped]

from tests.conftest import owned_server
from tests.integration.test_gateway import execute_request, of_type, run_raw, warm_kernel_ready
from tests.support.server import LocalServer

KEY_A, KEY_B = "gw-key-one", "gw-key-two"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with owned_server(
        tmp_path_factory.mktemp("gateway") / "server.log",
        {
            "api_keys": f"{KEY_A},{KEY_B}",
            "min_ready": "1",
            "max_total": "4",
            "default_timeout_s": "3",
            "interrupt_grace_s": "1",
        },
    ) as srv:
        yield srv


def start(url: str, key: str) -> str:
    warm_kernel_ready(url)
    r = httpx.post(url + "/api/kernels", headers={"Authorization": f"token {key}"}, json={}, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def connect(url: str, kernel: str, key: str) -> websocket.WebSocket:
    return websocket.create_connection(
        f"{url.replace('http', 'ws')}/api/kernels/{kernel}/channels?token={key}", timeout=60
    )


def model(url: str, kernel: str, key: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/api/kernels/{kernel}", params={"token": key}, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_keys_authenticate_every_form_and_never_see_each_others_kernels(keyed: LocalServer) -> None:
    url = keyed.url
    kernel = start(url, KEY_A)
    assert httpx.get(url + "/api/kernels").status_code == 401
    assert httpx.get(url + "/api/kernels", headers={"Authorization": "token wrong"}).status_code == 401
    assert kernel in [
        k["id"] for k in httpx.get(url + "/api/kernels", headers={"Authorization": f"Bearer {KEY_A}"}).json()
    ]
    assert kernel in [k["id"] for k in httpx.get(url + "/api/kernels", params={"token": KEY_A}).json()]
    assert httpx.get(url + "/api/kernels", params={"token": KEY_B}).json() == []
    assert httpx.get(f"{url}/api/kernels/{kernel}", params={"token": KEY_B}).status_code == 404
    assert httpx.delete(f"{url}/api/kernels/{kernel}", params={"token": KEY_B}).status_code == 404
    with pytest.raises(websocket.WebSocketBadStatusException):
        connect(url, kernel, KEY_B)
    with pytest.raises(websocket.WebSocketBadStatusException):
        connect(url, kernel, "wrong")
    # jupyter-kernel-client sends "Authorization: Bearer" on REST and the websocket.
    warm_kernel_ready(url)
    with JupyterKernelClient(server_url=url, token=KEY_B) as client:
        assert client.execute("print('b')")["outputs"][0]["text"] == "b\n"
    assert httpx.delete(f"{url}/api/kernels/{kernel}", headers={"Authorization": f"token {KEY_A}"}).status_code == 204


def test_a_cell_past_the_deadline_is_stopped_and_said_to_be(keyed: LocalServer) -> None:
    kernel = start(keyed.url, KEY_A)
    ws = connect(keyed.url, kernel, KEY_A)
    try:
        run_raw(ws, "kept = 1")
        out = run_raw(ws, "import time\nprint('before', flush=True)\ntime.sleep(60)")
        assert of_type(out, "stream")[0]["text"] == "before\n"
        reply = of_type(out, "execute_reply")[0]
        assert reply["status"] == "error" and reply["ename"] == "ExecutionTimeout"
        assert "timed out after 3s" in reply["evalue"]
        assert "ExecutionTimeout" in [e["ename"] for e in of_type(out, "error")]
        # The ladder's first step worked: the kernel and its variables are still there.
        assert of_type(run_raw(ws, "kept"), "execute_result")[0]["data"]["text/plain"] == "1"
    finally:
        ws.close()
        httpx.delete(f"{keyed.url}/api/kernels/{kernel}", params={"token": KEY_A})


def test_a_kernel_killed_from_outside_is_reported_lost_and_replaced(keyed: LocalServer) -> None:
    kernel = start(keyed.url, KEY_A)
    ws = connect(keyed.url, kernel, KEY_A)
    try:
        run_raw(ws, "kept = 1")
        session = httpx.get(
            f"{keyed.url}/v1/sessions/s_{kernel.replace('-', '')[:24]}", headers={"Authorization": f"Bearer {KEY_A}"}
        ).json()
        docker.from_env().api.kill(session["sandbox_id"], signal="SIGKILL")
        out = run_raw(ws, "kept")
        reply = of_type(out, "execute_reply")[0]
        assert reply["status"] == "error" and reply["ename"] in ("KernelDied", "SandboxLost")
        assert reply["execbox"]["state_lost"] is True
        # The next cell runs on a fresh kernel, whose messages carry a new kernel session.
        request = execute_request("kept")
        ws.send(json.dumps(request))
        seen: list[dict[str, Any]] = []  # every frame, until the new cell's reply
        while not (seen and seen[-1]["msg_type"] == "execute_reply"):
            seen.append(json.loads(ws.recv()))
        # Before it: what jupyter_server's auto-restarter sends for a kernel that died and was
        # replaced (JupyterLab tells its user the kernel died, and forgets its state).
        assert seen[0]["msg_type"] == "status" and seen[0]["content"]["execution_state"] == "restarting"
        assert seen[0]["parent_header"] == {}
        again = [m for m in seen if m["parent_header"].get("msg_id") == request["header"]["msg_id"]]
        assert again[-1]["content"]["ename"] == "NameError"
        assert again[0]["header"]["session"] != out[0]["header"]["session"]
    finally:
        ws.close()
        httpx.delete(f"{keyed.url}/api/kernels/{kernel}", params={"token": KEY_A})


def test_a_websocket_dropped_mid_cell_interrupts_the_cell_and_keeps_the_kernel(keyed: LocalServer) -> None:
    kernel = start(keyed.url, KEY_A)
    ws = connect(keyed.url, kernel, KEY_A)
    run_raw(ws, "kept = 1")
    ws.send(json.dumps(execute_request("import time\nwhile True: time.sleep(0.1)")))
    deadline = time.monotonic() + 10
    while model(keyed.url, kernel, KEY_A)["execution_state"] != "busy":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    dropped = time.monotonic()
    ws.close()
    while model(keyed.url, kernel, KEY_A)["execution_state"] != "idle":
        time.sleep(0.05)
    # Well before the 3 s deadline: the disconnect, not the deadline, stopped it.
    assert time.monotonic() - dropped < 2.5
    assert model(keyed.url, kernel, KEY_A)["connections"] == 0
    ws = connect(keyed.url, kernel, KEY_A)
    try:
        assert of_type(run_raw(ws, "kept"), "execute_result")[0]["data"]["text/plain"] == "1"
    finally:
        ws.close()
        httpx.delete(f"{keyed.url}/api/kernels/{kernel}", params={"token": KEY_A})


def test_deleting_a_kernel_closes_its_websockets_and_removes_its_container(keyed: LocalServer) -> None:
    kernel = start(keyed.url, KEY_A)
    ws = connect(keyed.url, kernel, KEY_A)
    run_raw(ws, "1")
    sandbox = httpx.get(
        f"{keyed.url}/v1/sessions/s_{kernel.replace('-', '')[:24]}", headers={"Authorization": f"Bearer {KEY_A}"}
    ).json()["sandbox_id"]
    assert httpx.delete(f"{keyed.url}/api/kernels/{kernel}", params={"token": KEY_A}).status_code == 204
    # The server closes the websocket (recv then returns the empty close frame, or raises).
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        while ws.recv():
            pass
        ws.recv()
    running = [c.short_id for c in docker.from_env().containers.list()]
    assert sandbox not in running
