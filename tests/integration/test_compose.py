"""The compose stack end to end: build (offline), up, healthy, run code through it, down with
nothing left behind. Uses Debian's docker-compose 1.29 or `docker compose` v2, whichever exists
(installing Debian's when running as root and neither does)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
import httpx
import pytest

from execbox import Client
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def compose_command() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "docker-compose"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
        )
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_stack_serves_and_leaves_nothing_behind() -> None:
    compose = compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor docker-compose is available (and it could not be installed)")
    subprocess.run([str(ROOT / "scripts" / "build-context.sh")], check=True, cwd=ROOT, capture_output=True)
    Path("/run/execbox").mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "EXECBOX_PORT": str(port),
        "EXECBOX_MIN_READY": "1",
        "COMPOSE_DOCKER_CLI_BUILD": "0",
        "DOCKER_BUILDKIT": "0",
    }
    base = [*compose, "-p", f"execbox-test-{port}", "--env-file", str(ROOT / ".build" / ".env")]
    up = subprocess.run([*base, "up", "-d", "--build"], cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            logs = subprocess.run([*base, "logs"], cwd=ROOT, env=env, capture_output=True, text=True).stdout
            pytest.fail(f"the compose service never became ready:\n{logs[-3000:]}")
        with Client(url) as client:
            assert client.run("print(6 * 7)").stdout == "42\n"
            with client.session() as s:
                s.run("x = 1")
                assert s.run("x + 1").text == "2"
                # Accounting from the host's cgroup files, though the service runs in a container.
                used = s.run("b = bytearray(64 * 2**20); sum(i * i for i in range(300_000))")
                assert used.resources.cpu_ms is not None and used.resources.cpu_ms > 0, used
                assert used.resources.peak_memory_bytes is not None, used
                assert used.resources.peak_memory_bytes >= 64 * 2**20, used
        assert "execbox_pool_kernels" in httpx.get(url + "/metrics").text
    finally:
        down = subprocess.run([*base, "down", "--remove-orphans"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr[-2000:]
    engine = docker.from_env()
    project = [
        c.name
        for c in engine.containers.list(all=True, filters={"label": f"com.docker.compose.project=execbox-test-{port}"})
    ]
    assert not project, project
    # The service removed its sandboxes on the way out (SIGTERM -> graceful shutdown).
    running = [
        c
        for c in engine.containers.list(all=True, filters={"label": "execbox.managed=1"})
        if c.labels.get("execbox.instance")
        and not Path(f"/run/execbox/instances/{c.labels['execbox.instance']}.lock").exists()
    ]
    assert not running, [c.name for c in running]
