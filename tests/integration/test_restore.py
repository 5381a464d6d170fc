"""Kernels restored from a checkpoint of a warm template (backends/docker/restore.py), for real:
the engine's ``execbox`` runtime, runc and CRIU, against the service with its defaults.

Where this machine can restore (CRIU >= 4.2 passes ``criu check``, the engine has the runtime)
the service must restore, and each restored kernel must be its own: key, session id, random
state and files. Where it cannot, or a restore fails, kernels boot and /v1/info says why; that
path is tested on every machine.
"""

from __future__ import annotations

import asyncio
import glob
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from execbox import AsyncClient, Client
from tests.support.server import LocalServer, local_server

pytestmark = pytest.mark.integration

CRIU = Path("/opt/execbox/criu/bin/criu")  # the default EXECBOX_CRIU_PATH
_PROBE = (
    "import json, os, random, tempfile, numpy\n"
    "k = get_ipython().kernel\n"
    "print(json.dumps({'random': random.random(), 'numpy': float(numpy.random.rand()),"
    " 'tempname': os.path.basename(tempfile.mktemp()), 'key': k.session.key.decode(),"
    " 'session': k.session.session, 'uids': os.getresuid(), 'gids': os.getresgid(),"
    " 'tmp': sorted(os.listdir('/tmp')), 'mine': os.path.exists('/tmp/written-by-the-other')}))"
)


def _machine_can_restore() -> str | None:
    """Why this machine cannot restore kernels, or None when it can (asked of the tools, not the service)."""
    if not CRIU.exists():
        return f"no CRIU at {CRIU} (scripts/ensure-criu.sh)"
    check = subprocess.run([str(CRIU), "check"], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        return f"criu check failed: {check.stdout[-200:]}{check.stderr[-200:]}"
    runtimes = subprocess.run(
        ["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, timeout=60
    )
    if "execbox" not in json.loads(runtimes.stdout or "{}"):
        return "the engine has no 'execbox' runtime (scripts/ensure-docker.sh starts dockerd with it)"
    return None


@pytest.fixture(scope="module")
def restoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A server of its own (the last test breaks its template), with the defaults."""
    why_not = _machine_can_restore()
    if why_not is not None:
        pytest.skip(f"this machine cannot restore kernels: {why_not}; the boot path is tested below")
    with local_server(tmp_path_factory.mktemp("restore") / "server.log") as server:
        yield server


def test_a_machine_that_can_restore_starts_its_kernels_by_restore(restoring: LocalServer) -> None:
    with Client(restoring.url) as client, client.session() as session:
        assert session.run("print(6 * 7)").stdout == "42\n"
    start = _info(restoring.url)["kernel_start"]
    assert start["mode"] == "restore" and start["reason"] is None, start
    assert start["restored"] >= 1


def test_two_restored_kernels_share_no_key_random_state_or_file(restoring: LocalServer) -> None:
    async def two() -> tuple[dict[str, Any], dict[str, Any]]:
        async with AsyncClient(restoring.url) as client:
            a, b = await asyncio.gather(client.session(), client.session())
            try:
                await a.run("open('/tmp/written-by-the-other', 'w').write('x')")
                first, second = await asyncio.gather(a.run(_PROBE), b.run(_PROBE))
            finally:
                await asyncio.gather(a.close(), b.close())
        assert first.error is None and second.error is None, (first.error, second.error)
        return json.loads(first.stdout), json.loads(second.stdout)

    a, b = asyncio.run(two())
    for name in ("random", "numpy", "tempname", "key", "session"):
        assert a[name] != b[name], f"two restored kernels share {name}: {a[name]!r}"
    assert a["mine"] is True and b["mine"] is False  # /tmp is a copy per sandbox, not shared
    for probe in (a, b):
        # The template ran with root as its saved uid; a restored kernel keeps none of it.
        assert probe["uids"] == [90000, 90000, 90000] and probe["gids"] == [90000, 90000, 90000]
        assert len(str(probe["key"])) == 64


def test_a_failing_restore_is_replaced_by_a_boot_and_after_three_kernels_boot_for_good(
    restoring: LocalServer,
) -> None:
    info = _info(restoring.url)
    templates = glob.glob(f"/run/execbox/{info['instance_id']}/template-*")
    assert len(templates) == 1, templates
    # The checkpoint is gone (a wiped disk, say): every restore fails from here on.
    shutil.rmtree(templates[0])
    with Client(restoring.url) as client:
        for _ in range(4):  # the pool had spares; each later kernel tries a restore first
            with client.session() as session:
                assert session.run("print('still served')").stdout == "still served\n"
    start = _wait_for(restoring.url, lambda info: bool(info["kernel_start"]["mode"] == "boot"))["kernel_start"]
    assert start["mode"] == "boot" and "restores failed in a row" in start["reason"], start
    assert "Traceback" not in restoring.log.read_text()


def test_without_criu_kernels_boot_and_info_says_why(tmp_path: Path) -> None:
    with local_server(tmp_path / "server.log", criu_path="/nonexistent/criu") as server:
        with Client(server.url) as client, client.session() as session:
            assert session.run("print(6 * 7)").stdout == "42\n"
        info = _info(server.url)
    start = info["kernel_start"]
    assert start["mode"] == "boot" and start["restored"] == 0 and start["booted"] >= 1
    assert "/nonexistent/criu" in start["reason"] or "runtime" in start["reason"], start


def _info(url: str) -> dict[str, Any]:
    response = httpx.get(url + "/v1/info", timeout=30)
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


def _wait_for(url: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = _info(url)
        if ok(info) or time.monotonic() > deadline:
            return info
        time.sleep(0.5)
