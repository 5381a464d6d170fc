"""The service's two listeners on real sockets (the app on the fake backend): the API port with its
keys, the keyless SandboxFusion port beside it, one lifespan, and a shutdown that stops both."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from execbox_server.app import create_app
from execbox_server.listeners import Listeners
from tests.support.app import fast_settings, wait_until
from tests.support.fake_backend import FakeBackend

KEY = "sf-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_keyless_port_serves_sandboxfusion_without_a_key_and_stops_with_the_main_one() -> None:
    port, sf_port = free_port(), free_port()
    settings = fast_settings(port=port, api_keys=KEY, sandboxfusion_port=sf_port, sandboxfusion_key=KEY)
    backend = FakeBackend(max_file_bytes=settings.max_file_bytes)
    listeners = Listeners(create_app(settings, backend=backend), settings)
    task = asyncio.get_running_loop().create_task(listeners.serve())
    try:
        await wait_until(lambda: listeners.started, timeout=10)
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"http://127.0.0.1:{sf_port}/run_code", json={"code": "print(6 * 7)"})
            assert r.status_code == 200 and r.json()["run_result"]["stdout"] == "42\n"
            assert (await http.get(f"http://127.0.0.1:{sf_port}/v1/ping")).json() == "pong"
            assert (await http.get(f"http://127.0.0.1:{sf_port}/v1/sessions")).status_code == 404

            main = await http.post(f"http://127.0.0.1:{port}/run_code", json={"code": "print(1)"})
            assert main.status_code == 401
    finally:
        listeners.stop()
        await asyncio.wait_for(task, 15)
    assert backend.closed  # the lifespan ran once, and its shutdown after both ports stopped
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as http:
            await http.get(f"http://127.0.0.1:{sf_port}/v1/ping")


def test_without_a_sandboxfusion_port_there_is_one_listener() -> None:
    settings = fast_settings(port=free_port())
    listeners = Listeners(create_app(settings, backend=FakeBackend()), settings)
    assert listeners.sandboxfusion is None and listeners.sandboxfusion_socket is None


def test_a_taken_sandboxfusion_port_fails_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = fast_settings(port=free_port(), sandboxfusion_port=taken.getsockname()[1])
        backend = FakeBackend()
        with pytest.raises(SystemExit):
            Listeners(create_app(settings, backend=backend), settings)
        assert not backend.opened
