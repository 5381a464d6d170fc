"""Starting a kernel sandbox: the engine calls on the start's path, and what a kernel that never
answers reports. The engine is a recording fake; the container arguments are the real ones."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from execbox_server.backends.base import SandboxSpec
from execbox_server.backends.docker.containers import container_args
from execbox_server.backends.docker.kernels import KernelSandboxes, _create_and_start
from execbox_server.kernel import KernelNotReady
from execbox_server.settings import Settings

T = TypeVar("T")


class RecordingAPI:
    """The low-level docker-py calls a start makes, in order."""

    _version = "1.41"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def create_container(self, **kwargs: Any) -> dict[str, str]:
        self.calls.append(("create_container", kwargs))
        return {"Id": "c0ffee" * 10 + "abcd"}

    def start(self, container: str) -> None:
        self.calls.append(("start", {"container": container}))

    def inspect_container(self, container: str) -> dict[str, Any]:
        self.calls.append(("inspect_container", {"container": container}))
        return {"State": {"Running": True, "Pid": 0}}


def _settings(**overrides: Any) -> Settings:
    return Settings(state_dir=Path(tempfile.mkdtemp(prefix="xb-")), **overrides)


def test_a_sandbox_is_created_and_started_in_two_engine_calls_with_its_lockdown_intact() -> None:
    settings = _settings()
    host_dir = settings.state_dir / "k1"
    args = container_args(settings, "inst", "k1", SandboxSpec(memory_mb=512, cpus=1.0), host_dir, role="kernel")
    api = RecordingAPI()

    container_id = _create_and_start(SimpleNamespace(api=api), args)

    assert [name for name, _ in api.calls] == ["create_container", "start"]
    assert api.calls[1][1] == {"container": container_id}
    create = api.calls[0][1]
    assert create["name"] == "execbox-inst-k1"
    assert create["image"] == settings.image
    assert create["labels"]["execbox.kernel"] == "k1"
    host = create["host_config"]
    # What containers.run() would have sent: the sandbox's lockdown survives the translation.
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETUID"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "none"
    assert host["Init"] is True
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024
    assert host["PidsLimit"] == settings.pids_limit
    assert host["CgroupnsMode"] == "private"
    assert host["IpcMode"] == "private"
    assert host["LogConfig"]["Type"] == "none"
    assert host["Binds"] == [f"{host_dir}:/kernel:rw"]
    assert set(host["Tmpfs"]) == {"/home/sandbox", "/tmp"}


class FakeEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api = RecordingAPI()
        self.docker = SimpleNamespace(api=self.api)

    async def call(self, purpose: str, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        return fn()


class SilentConnection:
    """A kernel that runs but never answers kernel_info."""

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        raise KernelNotReady(f"kernel did not answer kernel_info within {timeout:.1f}s")


async def test_a_kernel_that_never_answers_reports_the_whole_start_budget_not_its_last_slice() -> None:
    engine = FakeEngine(_settings(kernel_start_timeout_s=1.5))
    sandboxes = KernelSandboxes(engine)  # type: ignore[arg-type]
    kernel = SimpleNamespace(conn=SilentConnection(), container_id="c1", pidfd=None, destroyed=False)

    t0 = time.monotonic()
    with pytest.raises(KernelNotReady, match=r"within 1\.5s \(EXECBOX_KERNEL_START_TIMEOUT_S\)"):
        await sandboxes._wait_ready(kernel)  # type: ignore[arg-type]
    assert time.monotonic() - t0 >= 1.5
    # Between slices it asked the engine whether the container still runs (it does).
    assert {name for name, _ in engine.api.calls} == {"inspect_container"}
