"""The HTTP API against the real service: real Docker, real kernels, real HTTP on loopback."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from pathlib import Path

import docker
import httpx
import pytest


@pytest.fixture()
def http(url: str):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


@pytest.fixture()
def session_id(http: httpx.Client):
    r = http.post("/v1/sessions", json={})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    yield sid
    http.delete(f"/v1/sessions/{sid}")


def run(http: httpx.Client, sid: str, code: str, **kw) -> dict:
    r = http.post(f"/v1/sessions/{sid}/execute", json={"code": code, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_openapi_document_is_served_with_the_execution_schema(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert "/v1/sessions/{session_id}/execute" in doc["paths"]
    props = doc["components"]["schemas"]["Execution"]["properties"]
    assert {
        "status",
        "stdout",
        "stderr",
        "error",
        "results",
        "execution_count",
        "duration_ms",
        "truncated",
    } <= set(props)
    assert http.get("/docs").status_code == 200


def test_session_info_carries_limits_and_times(http: httpx.Client) -> None:
    r = http.post("/v1/sessions", json={"memory_mb": 300, "cpus": 0.5, "timeout_s": 7})
    assert r.status_code == 201
    info = r.json()
    try:
        assert info["limits"] == {
            "memory_mb": 300,
            "cpus": 0.5,
            "timeout_s": 7.0,
            "max_output_bytes": 1_048_576,
        }
        assert info["created_at"] <= info["expires_at"]
        assert http.get(f"/v1/sessions/{info['id']}").json()["id"] == info["id"]
        assert info["id"] in [s["id"] for s in http.get("/v1/sessions").json()]
        # The limits are really applied to the container.
        engine = docker.from_env()
        attrs = engine.api.inspect_container(info["sandbox_id"])["HostConfig"]
        assert attrs["Memory"] == 300 * 1024 * 1024 and attrs["MemorySwap"] == attrs["Memory"]
        assert attrs["CpuQuota"] == 50_000
    finally:
        http.delete(f"/v1/sessions/{info['id']}")


def test_state_persists_across_calls(http: httpx.Client, session_id: str) -> None:
    assert run(http, session_id, "x = 41")["status"] == "ok"
    ex = run(http, session_id, "x += 1\nprint('x is', x)\nx")
    assert ex["status"] == "ok"
    assert ex["stdout"] == "x is 42\n"
    assert ex["results"][0]["data"]["text/plain"] == "42" and ex["results"][0]["is_main_result"]
    assert ex["execution_count"] == 2
    assert ex["duration_ms"] > 0


def test_errors_come_back_as_data_with_an_ansi_free_traceback(http: httpx.Client, session_id: str) -> None:
    ex = run(http, session_id, "def f(d):\n    return 1 / d\nprint('before')\nf(0)")
    assert ex["status"] == "error"
    assert ex["stdout"] == "before\n"
    assert ex["error"]["name"] == "ZeroDivisionError" and ex["error"]["value"] == "division by zero"
    tb = "\n".join(ex["error"]["traceback"])
    assert "\x1b[" not in tb and "return 1 / d" in tb
    assert run(http, session_id, "print('still alive')")["stdout"] == "still alive\n"


def test_stderr_is_separate_from_stdout(http: httpx.Client, session_id: str) -> None:
    ex = run(http, session_id, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert ex["stdout"] == "out\n" and ex["stderr"] == "err\n"


def test_timeout_interrupts_then_the_session_is_usable(http: httpx.Client, session_id: str) -> None:
    run(http, session_id, "y = 'kept'")
    t0 = time.monotonic()
    ex = run(
        http,
        session_id,
        "import time\nprint('start', flush=True)\nwhile True: time.sleep(0.01)",
        timeout_s=1.5,
    )
    assert time.monotonic() - t0 < 1.5 + 5
    assert ex["status"] == "timeout"
    assert ex["stdout"] == "start\n"
    assert ex["state_lost"] is False
    assert run(http, session_id, "print(y)")["stdout"] == "kept\n"


def test_a_kernel_that_ignores_interrupts_is_replaced_and_says_state_lost(http: httpx.Client, session_id: str) -> None:
    run(http, session_id, "z = 1")
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.01)"
    t0 = time.monotonic()
    ex = run(http, session_id, code, timeout_s=1)
    assert time.monotonic() - t0 < 1 + 8
    assert ex["status"] == "timeout" and ex["state_lost"] and ex["kernel_restarted"]
    after = run(http, session_id, "z")
    assert after["status"] == "error" and after["error"]["name"] == "NameError"


def test_matplotlib_plot_comes_back_as_png(http: httpx.Client, session_id: str) -> None:
    ex = run(
        http,
        session_id,
        "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.title('squares')\nplt.show()",
    )
    assert ex["status"] == "ok", ex
    pngs = [r["data"]["image/png"] for r in ex["results"] if "image/png" in r["data"]]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_common_libraries_are_importable(http: httpx.Client, session_id: str) -> None:
    ex = run(
        http,
        session_id,
        "import numpy, pandas, scipy, sympy, matplotlib\nprint(pandas.DataFrame({'a': [1, 2]}).a.sum())",
    )
    assert ex["status"] == "ok" and ex["stdout"] == "3\n"


def test_input_fails_at_once_instead_of_hanging(http: httpx.Client, session_id: str) -> None:
    t0 = time.monotonic()
    ex = run(http, session_id, "input('name? ')", timeout_s=20)
    assert time.monotonic() - t0 < 5
    assert ex["status"] == "error" and ex["error"]["name"] == "StdinNotImplementedError"


def test_one_shot_execution_runs_in_a_fresh_kernel(http: httpx.Client) -> None:
    r = http.post("/v1/execute", json={"code": "secret = 7\nprint(secret * 6)"})
    assert r.status_code == 200 and r.json()["stdout"] == "42\n"
    again = http.post("/v1/execute", json={"code": "secret"}).json()
    assert again["status"] == "error" and again["error"]["name"] == "NameError"


def test_stream_sends_events_as_they_happen_and_ends_with_done(http: httpx.Client, session_id: str) -> None:
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)\n'end'"
    arrivals: list[tuple[float, dict]] = []
    t0 = time.monotonic()
    with http.stream("POST", f"/v1/sessions/{session_id}/execute/stream", json={"code": code}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        for line in r.iter_lines():
            if line:
                arrivals.append((time.monotonic() - t0, json.loads(line)))
    types = [e["type"] for _, e in arrivals]
    assert types[-1] == "done" and types.count("done") == 1
    assert "".join(e["text"] for _, e in arrivals if e["type"] == "stdout") == "0\n1\n2\n"
    assert arrivals[0][0] < arrivals[-1][0] - 0.4  # the first line came before the end
    done = arrivals[-1][1]["execution"]
    assert done["status"] == "ok" and done["stdout"] == "0\n1\n2\n"
    assert done["results"][0]["data"]["text/plain"] == "'end'"


def test_one_shot_stream(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/execute/stream", json={"code": "print('a')\n1/0"}) as r:
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert [e["type"] for e in events] == ["stdout", "error", "done"]
    assert events[-1]["execution"]["status"] == "error"


def test_unknown_session_is_404_with_envelope(http: httpx.Client) -> None:
    for method, path in [
        ("GET", "/v1/sessions/nope"),
        ("DELETE", "/v1/sessions/nope"),
        ("POST", "/v1/sessions/nope/interrupt"),
    ]:
        r = http.request(method, path)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "session_not_found"
    r = http.post("/v1/sessions/nope/execute", json={"code": "1"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_second_execute_while_running_is_409(http: httpx.Client, url: str, session_id: str) -> None:
    done = threading.Event()

    def slow() -> None:
        with httpx.Client(base_url=url, timeout=30) as other:
            other.post(f"/v1/sessions/{session_id}/execute", json={"code": "import time; time.sleep(2)"})
        done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)
    r = http.post(f"/v1/sessions/{session_id}/execute", json={"code": "1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_busy"
    assert http.get(f"/v1/sessions/{session_id}").json()["busy"] is True
    thread.join()
    assert run(http, session_id, "2")["status"] == "ok"


def test_interrupt_stops_a_running_execution(http: httpx.Client, url: str, session_id: str) -> None:
    result: dict = {}

    def long() -> None:
        with httpx.Client(base_url=url, timeout=60) as other:
            result.update(other.post(f"/v1/sessions/{session_id}/execute", json={"code": "while True: pass"}).json())

    thread = threading.Thread(target=long)
    thread.start()
    time.sleep(0.8)
    assert http.post(f"/v1/sessions/{session_id}/interrupt").json() == {"interrupted": True}
    thread.join(10)
    assert result["status"] == "interrupted" and not result["state_lost"]


def test_restart_gives_a_fresh_kernel(http: httpx.Client, session_id: str) -> None:
    run(http, session_id, "v = 1")
    before = http.get(f"/v1/sessions/{session_id}").json()["sandbox_id"]
    info = http.post(f"/v1/sessions/{session_id}/restart").json()
    assert info["sandbox_id"] != before
    assert run(http, session_id, "v")["error"]["name"] == "NameError"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/sessions", {"memory_mb": "lots"}, "memory_mb"),
        ("/v1/sessions", {"timeout_s": -1}, "timeout_s"),
        ("/v1/sessions", {"memroy_mb": 100}, "memroy_mb"),
        ("/v1/execute", {}, "code"),
        ("/v1/execute", {"code": 5}, "code"),
    ],
)
def test_invalid_requests_are_422_naming_the_field(http: httpx.Client, path: str, body: dict, field: str) -> None:
    r = http.post(path, json=body)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and field in err["message"]


def test_limits_above_the_maxima_are_refused(http: httpx.Client) -> None:
    r = http.post("/v1/sessions", json={"memory_mb": 10**6})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_limits"
    assert "maximum" in r.json()["error"]["message"]
    r = http.post("/v1/execute", json={"code": "1", "timeout_s": 10**6})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_limits"


def test_oversized_code_is_413(http: httpx.Client) -> None:
    r = http.post("/v1/execute", json={"code": "#" * 1_100_000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_delete_removes_the_sessions_container(http: httpx.Client) -> None:
    info = http.post("/v1/sessions", json={}).json()
    engine = docker.from_env()
    assert engine.api.inspect_container(info["sandbox_id"])["State"]["Running"]
    assert http.delete(f"/v1/sessions/{info['id']}").status_code == 204
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(info["sandbox_id"])
    assert http.get(f"/v1/sessions/{info['id']}").status_code == 404


def _cpu_weight(container_id: str) -> str:
    """The container's CPU weight as the kernel applies it (cgroup v1 shares or v2 weight)."""
    full = docker.from_env().api.inspect_container(container_id)["Id"]
    for path in (
        f"/sys/fs/cgroup/cpu/docker/{full}/cpu.shares",
        f"/sys/fs/cgroup/docker/{full}/cpu.weight",
        f"/sys/fs/cgroup/system.slice/docker-{full}.scope/cpu.weight",
    ):
        with contextlib.suppress(FileNotFoundError):
            return Path(path).read_text().strip()
    pytest.fail(f"no CPU weight file for container {full}")


def test_a_leased_kernel_runs_at_the_normal_cpu_weight_from_its_first_cell(http: httpx.Client) -> None:
    # Spares boot at a low weight so they yield to live sessions; a lease raises it before the
    # create returns, not after an engine round trip the first cells would run behind.
    info = http.post("/v1/sessions", json={}).json()
    try:
        assert _cpu_weight(info["sandbox_id"]) in ("1024", "39")  # v1 shares, v2 weight
    finally:
        http.delete(f"/v1/sessions/{info['id']}")


def test_container_is_locked_down(http: httpx.Client) -> None:
    info = http.post("/v1/sessions", json={}).json()
    try:
        host = docker.from_env().api.inspect_container(info["sandbox_id"])["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETUID"]
        assert host["ReadonlyRootfs"] is True
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["PidsLimit"] > 0 and host["CpuQuota"] > 0
        assert host["Memory"] == host["MemorySwap"] > 0
        assert host["Init"] is True
        ex = run(
            http,
            info["id"],
            "import os, socket\nprint(os.getuid())\n"
            "try:\n    open('/etc/evil', 'w')\nexcept OSError as e:\n    print('ro', e.errno)\n"
            "print(sorted(n for _, n in socket.if_nameindex()))\n"
            "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
            "print(status['CapEff'].strip(), status['CapPrm'].strip(), status['NoNewPrivs'].strip())\n"
            "try:\n    open('/proc/1/fd/1', 'w')\nexcept OSError as e:\n    print('init stdout', e.errno)",
        )
        assert ex["stdout"].splitlines() == [
            "90000",
            "ro 30",
            "['lo']",
            "0000000000000000 0000000000000000 1",
            "init stdout 13",
        ], ex
    finally:
        http.delete(f"/v1/sessions/{info['id']}")


def test_a_print_of_control_characters_is_cut_in_the_sandbox_by_wire_bytes_and_still_arrives(
    http: httpx.Client,
) -> None:
    """JSON escapes each control character into 6 bytes: the sandbox cuts by wire bytes, so a
    legitimate large print fits the server's per-message cap instead of being dropped whole."""
    info = http.post("/v1/sessions", json={"max_output_bytes": 16 * 1024 * 1024}).json()
    try:
        ex = run(http, info["id"], "print('\\x01' * 3_000_000)")
        assert ex["status"] == "ok", ex["message"]
        assert ex["truncated"] and ex["truncation"]["stdout_bytes"] > 0
        assert ex["stdout"].startswith("\x01" * 100_000) and "truncated in the sandbox" in ex["stdout"]
    finally:
        http.delete(f"/v1/sessions/{info['id']}")
