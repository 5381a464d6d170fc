"""`pip install execbox` is the SDK alone: what it resolves to is checked against the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP_DRY_RUN = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
PIP_DRY_RUN += ["--disable-pip-version-check"]

# httpx and pydantic, and what they need; nothing of the service (FastAPI, docker, zmq, ...).
SDK_CLOSURE = {
    "execbox",
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "idna",
    "certifi",
    "sniffio",
    "exceptiongroup",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
}


def _resolve(requirement: str, tmp_path: Path) -> set[str]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [*PIP_DRY_RUN, "--report", str(report), requirement],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"pip could not resolve {requirement}:\n{done.stderr[-2000:]}")
    names = {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}
    return {name.lower().replace("_", "-") for name in names}


def test_the_sdk_install_pulls_only_the_sdks_dependencies(tmp_path: Path) -> None:
    resolved = _resolve(".", tmp_path)
    assert resolved <= SDK_CLOSURE, f"the SDK install pulls in {sorted(resolved - SDK_CLOSURE)}"
    assert {"execbox", "httpx", "pydantic"} <= resolved


def test_the_server_extra_brings_the_service(tmp_path: Path) -> None:
    resolved = _resolve(".[server]", tmp_path)
    assert {"fastapi", "uvicorn", "docker", "jupyter-client", "pyzmq", "prometheus-client"} <= resolved
    # websockets serves the Kernel Gateway's channels; nothing else of uvicorn[standard], which
    # the service never loads.
    assert "websockets" in resolved
    assert not {"uvloop", "watchfiles", "pyyaml"} & resolved, resolved
