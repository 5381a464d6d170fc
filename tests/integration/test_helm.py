"""The chart's DaemonSet container, as rendered, run for real under Docker with its own restrictions.

There is no cluster here, so the pod spec is translated into `docker run` (the kubelet would make the
same container): its command (the node name from a pod IP), its environment, its hostPath mounts at
their paths, and its security context (user, read-only root, capabilities dropped but the three it
adds, no privilege escalation). Then it must become ready and serve sessions with accounting, files
and batches, and remove every container on SIGTERM.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from execbox._models import BatchResponse, Execution
from tests.conftest import docker_ok
from tests.support.cluster import render_deploy
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICE_IMAGE = "execbox-service:latest"
POD_IP = "127.0.0.5"  # stands for the pod's IP: loopback only here
KEY = "pod-test-key"
NODE = "127-0-0-5"


def ensure_service_image() -> None:
    """The service image, built as `make compose-up` builds it when it is missing."""
    if subprocess.run(["docker", "image", "inspect", SERVICE_IMAGE], capture_output=True).returncode == 0:
        return
    subprocess.run([str(ROOT / "scripts" / "build-context.sh")], check=True, cwd=ROOT, capture_output=True)
    env_file = dict(line.split("=", 1) for line in (ROOT / ".build" / ".env").read_text().splitlines() if "=" in line)
    subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "-t",
            SERVICE_IMAGE,
            "--build-arg",
            f"BASE_IMAGE={env_file['EXECBOX_BASE_IMAGE']}",
            str(ROOT / ".build" / "service"),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )


def docker_run_args(daemonset: dict[str, Any], *, name: str, env: dict[str, str]) -> list[str]:
    """`docker run` for the DaemonSet's one container, from the rendered object (nothing hard-coded)."""
    spec = daemonset["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    sc = c["securityContext"]
    args = ["docker", "run", "-d", "--name", name, "--network", "host", "--user", str(sc["runAsUser"])]
    if sc["readOnlyRootFilesystem"]:
        args.append("--read-only")
    assert sc["capabilities"]["drop"] == ["ALL"]
    args += ["--cap-drop", "ALL"]
    for cap in sc["capabilities"].get("add", []):
        args += ["--cap-add", cap]
    if sc["allowPrivilegeEscalation"] is False:
        args += ["--security-opt", "no-new-privileges"]
    assert not sc["privileged"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in c["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            mode = "ro" if mount.get("readOnly") else "rw"
            args += ["-v", f"{volume['hostPath']['path']}:{mount['mountPath']}:{mode}"]
        else:
            assert "emptyDir" in volume
            args += ["--tmpfs", f"{mount['mountPath']}:size={volume['emptyDir'].get('sizeLimit', '64Mi')[:-2]}m"]
    values = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    sources = {e["name"]: e["valueFrom"] for e in c["env"] if "valueFrom" in e}
    assert sources["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert "secretKeyRef" in sources["EXECBOX_API_KEYS"]
    for key, value in {**values, **env}.items():
        args += ["-e", f"{key}={value}"]
    return [*args, "--entrypoint", c["command"][0], SERVICE_IMAGE, *c["command"][1:]]


@pytest.fixture()
def pod() -> Iterator[str]:
    if not docker_ok():
        pytest.fail("integration tests need a Docker engine and the sandbox image: run 'make test'")
    ensure_service_image()
    state = Path(tempfile.mkdtemp(prefix="ebx-pod-", dir="/run"))
    render = render_deploy()
    values = {
        "apiKeys": {"existingSecret": "execbox-api-keys"},
        "hostPaths": {"stateDir": str(state)},
        "pool": {"minReady": 1},
        "shutdownGraceSeconds": 10,
    }
    daemonset = next(d for d in yaml.safe_load_all(render.helm_template(values)) if d and d["kind"] == "DaemonSet")
    port = free_port()
    name = f"execbox-pod-test-{uuid.uuid4().hex[:8]}"
    # What the kubelet supplies: the pod IP (downward API) and the key (the Secret). The pod listens on
    # 0.0.0.0 in its own network namespace; sharing the host's here, it listens on POD_IP only.
    env = {"POD_IP": POD_IP, "EXECBOX_API_KEYS": KEY, "EXECBOX_HOST": POD_IP, "EXECBOX_PORT": str(port)}
    subprocess.run(docker_run_args(daemonset, name=name, env=env), check=True, capture_output=True)
    url = f"http://{POD_IP}:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            running = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True
            ).stdout.strip()
            assert running == "true", subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
            time.sleep(1)
        else:
            pytest.fail("the pod's container never became ready")
        yield url
        # SIGTERM, as the kubelet sends it: the service removes every container it made.
        subprocess.run(["docker", "stop", "-t", "60", name], check=True, capture_output=True)
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=execbox.node={NODE}"], capture_output=True, text=True
        ).stdout.split()
        assert not left, f"containers left behind by the pod: {left}"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["rm", "-rf", str(state)], check=False)


def test_the_daemonset_container_serves_under_its_own_security_context(pod: str) -> None:
    with httpx.Client(base_url=pod, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as http:
        assert httpx.get(pod + "/v1/sessions").status_code == 401  # the key from the Secret is enforced
        info = http.get("/v1/info").json()
        assert info["node"] == NODE  # the dashed pod IP, from the pod's own command line
        sid = http.post("/v1/sessions", json={}).raise_for_status().json()["id"]
        assert sid.endswith("." + NODE)
        run = http.post(f"/v1/sessions/{sid}/execute", json={"code": "x = bytearray(100 * 2**20)\nprint(len(x))"})
        execution = Execution.model_validate(run.raise_for_status().json())
        assert execution.stdout == f"{100 * 2**20}\n"
        # Accounting from the host's cgroup fs mounted where EXECBOX_CGROUP_ROOT says.
        assert execution.resources.cpu_ms is not None and execution.resources.cpu_ms > 0, execution.resources
        assert execution.resources.peak_memory_bytes is not None
        assert execution.resources.peak_memory_bytes >= 100 * 2**20, execution.resources
        assert http.put(f"/v1/sessions/{sid}/files/a.txt", content=b"hello").status_code in (200, 201)
        assert http.get(f"/v1/sessions/{sid}/files/a.txt").content == b"hello"
        assert http.delete(f"/v1/sessions/{sid}").status_code == 204
        batch = BatchResponse.model_validate(
            http.post("/v1/batch", json={"jobs": [{"code": "print(6 * 7)"}]}).raise_for_status().json()
        )
        assert [(r.status, r.stdout) for r in batch.results] == [("ok", "42\n")]
