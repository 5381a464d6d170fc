"""Operations: Prometheus metrics after known traffic, structured logs with request ids, files in
and out of a session, session expiry and keep-alive, graceful shutdown leaving no container."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import docker
import httpx
import pytest

from execbox import Client, InvalidRequestError, NotFoundError
from tests.conftest import execbox_containers, instance_of
from tests.support.server import LocalServer, start_server


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(
        tmp_path_factory.mktemp("ops") / "ops.log",
        {
            "min_ready": "1",
            "max_total": "6",
            "log_format": "json",
            "session_ttl_s": "3",
            "session_max_lifetime_s": "8",
            "batch_min_workers": "0",
            "shutdown_grace_s": "15",
        },
    )
    yield server
    server.stop()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_known_traffic(ops: LocalServer) -> None:
    before = httpx.get(ops.url + "/metrics").text
    with Client(ops.url) as client, client.session() as s:
        s.run("1")
        s.run("1/0")
        s.run("while True: pass", timeout_s=1)
        s.run("print('x' * 3_000_000)")
        # A one-shot while the session holds its kernel runs on a second kernel. A kernel
        # is counted as started before anyone can lease it, so two starts have completed
        # now — not so for the pool's refill after the session's lease, which is in the
        # background and may still be starting on a busy machine.
        assert client.run("print(2)").stdout == "2\n"
    text = httpx.get(ops.url + "/metrics").text
    assert text.startswith("# HELP") and not re.search(r"s_[0-9a-f]{24}", text)  # templates, never ids
    for status, n in (("ok", 2), ("error", 1), ("timeout", 1)):
        got = metric(text, "execbox_executions_total", kind="session", status=status)
        assert got - metric(before, "execbox_executions_total", kind="session", status=status) == n, status
    assert metric(text, "execbox_output_truncations_total", kind="session") >= 1
    assert metric(text, "execbox_pool_kernels", state="ready") >= 0
    assert "execbox_pool_acquire_wait_seconds_bucket" in text and "execbox_execution_duration_seconds_count" in text
    assert metric(text, "execbox_kernel_starts_total", result="ok") >= 2
    assert (
        metric(
            text, "execbox_http_requests_total", method="POST", route="/v1/sessions/{session_id}/execute", status="200"
        )
        >= 4
    )


def test_every_request_gets_a_request_id_and_one_json_log_line(ops: LocalServer) -> None:
    r = httpx.post(
        ops.url + "/v1/execute", json={"code": "print('secret-code-marker')"}, headers={"X-Request-ID": "rid-42"}
    )
    assert r.headers["x-request-id"] == "rid-42"
    generated = httpx.get(ops.url + "/v1/sessions").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated)
    time.sleep(0.2)
    lines = [json.loads(line) for line in ops.log.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "rid-42" and line["logger"] == "execbox.http"]
    assert len(mine) == 1 and mine[0]["status"] == 200 and mine[0]["msg"] == "POST /v1/execute 200"
    assert "secret-code-marker" not in ops.log.read_text()


def test_api_keys_never_reach_the_log(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "keys.log", {"api_keys": "top-secret-key", "min_ready": "0", "batch_min_workers": "0"}
    )
    try:
        httpx.get(server.url + "/v1/sessions", headers={"Authorization": "Bearer top-secret-key"})
        httpx.get(server.url + "/v1/sessions", headers={"Authorization": "Bearer wrong-key"})
    finally:
        server.stop()
    text = server.log.read_text()
    assert "top-secret-key" not in text and "wrong-key" not in text


def test_files_round_trip_text_and_binary(ops: LocalServer) -> None:
    with Client(ops.url) as client, client.session() as s:
        info = s.upload("data/input.csv", "a,b\n1,2\n")
        assert info.path == "data/input.csv" and info.size == 8
        blob = bytes(range(256)) * 100
        s.upload("blob.bin", blob)
        ex = s.run(
            "import pandas as pd, matplotlib.pyplot as plt\n"
            "df = pd.read_csv('data/input.csv'); df['c'] = df.a + df.b; df.to_csv('out.csv', index=False)\n"
            "plt.plot([1, 2]); plt.savefig('plot.png')\n"
            "print(len(open('blob.bin', 'rb').read()))"
        )
        assert ex.stdout == "25600\n", ex
        assert s.download("out.csv") == b"a,b,c\n1,2,3\n"
        assert s.download("plot.png").startswith(b"\x89PNG")
        assert s.download("blob.bin") == blob
        names = {f.name: f.type for f in s.list_files()}
        assert names["data"] == "dir" and names["out.csv"] == "file"
        assert [f.path for f in s.list_files("data")] == ["data/input.csv"]


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../x", "link/passwd", "link"])
def test_file_paths_cannot_escape_the_working_directory(ops: LocalServer, path: str) -> None:
    with Client(ops.url) as client, client.session() as s:
        s.run("import os; os.symlink('/etc', 'link')")
        with pytest.raises(InvalidRequestError):
            s.download(path)
        with pytest.raises(InvalidRequestError):
            s.upload(path, "x")
        assert s.run("print(open('/etc/hostname').read() != 'x')").stdout == "True\n"


def test_missing_files_are_404_and_big_ones_413(ops: LocalServer) -> None:
    with Client(ops.url) as client, client.session() as s:
        with pytest.raises(NotFoundError):
            s.download("nope.txt")
        r = httpx.put(f"{ops.url}/v1/sessions/{s.id}/files/big.bin", content=b"0" * (33 * 1024 * 1024))
        assert r.status_code == 413


def test_idle_sessions_expire_and_keepalive_extends_them(ops: LocalServer) -> None:
    with Client(ops.url) as client:
        idle = client.session()
        kept = client.session()
        assert idle.info.expires_at <= idle.info.created_at.replace() + (idle.info.expires_at - idle.info.created_at)
        for _ in range(5):
            time.sleep(1)
            kept.keepalive()
        with pytest.raises(NotFoundError):
            client.sessions.get(idle.id)
        assert client.sessions.get(kept.id).id == kept.id
        # The maximum lifetime applies however busy: 8 s after creation it is gone.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                kept.keepalive()
            except NotFoundError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the session outlived its maximum lifetime")


def test_sigterm_lets_running_executions_finish_then_removes_every_container(tmp_path: Path) -> None:
    server = start_server(tmp_path / "term.log", {"min_ready": "2", "shutdown_grace_s": "15", "batch_min_workers": "1"})
    instance = instance_of(server)
    result: dict[str, object] = {}

    def long_run() -> None:
        with Client(server.url) as client:
            s = client.session()
            result["ex"] = s.run("import time; time.sleep(2); print('finished')")
            # No delete afterwards: the server is shutting down and removes the sandbox itself.

    thread = threading.Thread(target=long_run)
    thread.start()
    time.sleep(1.0)
    assert execbox_containers(instance)
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    code = server.proc.wait(30)
    assert code in (0, -signal.SIGTERM)
    ex = result.get("ex")
    assert ex is not None and ex.stdout == "finished\n"  # type: ignore[attr-defined]
    assert not execbox_containers(instance)
    docker.from_env().close()
