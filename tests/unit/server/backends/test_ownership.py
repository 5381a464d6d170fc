"""Which containers on a shared engine an instance may remove at start-up (Engine.reap_orphans),
on a scripted container listing with real lock files and real flocks; and the labels and the
cgroup root those decisions and the accounting rest on."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from execbox_server.backends.base import SandboxSpec
from execbox_server.backends.docker.cgroups import CgroupFiles
from execbox_server.backends.docker.containers import container_args
from execbox_server.backends.docker.engine import (
    LABEL_INSTANCE,
    LABEL_LOCK,
    LABEL_MANAGED,
    LABEL_NODE,
    Engine,
    NodeNameInUse,
    lock_path,
)
from execbox_server.settings import Settings


class ScriptedEngine(Engine):
    """An Engine whose container listing is given and whose removals are recorded."""

    def __init__(self, settings: Settings, containers: list[dict[str, Any]]) -> None:
        super().__init__(settings, instance_id="self00000000")
        self.containers = containers
        self.removed: list[str] = []

    async def _list(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.containers)

    async def _remove_now(self, container_id: str) -> None:
        self.removed.append(container_id)

    async def call(self, purpose: Any, fn: Any, *, timeout: float | None = None) -> Any:
        # The only engine call left: inspecting a stopped container for when it stopped.
        return {"State": {"FinishedAt": self.finished_at}}

    finished_at = "2020-01-01T00:00:00.123456789Z"


def short_dir() -> Path:
    # Socket paths are short: a state dir of its own, not pytest's long tmp_path.
    return Path(tempfile.mkdtemp(prefix="xb-"))


@pytest.fixture()
def dirs() -> Iterator[tuple[Path, Path]]:
    """This instance's state dir and a neighbour's (another instance with another state dir)."""
    yield short_dir(), short_dir()


def container(
    cid: str, owner: str, *, lock: Path | None, node: str | None = None, state: str = "running"
) -> dict[str, Any]:
    labels = {LABEL_MANAGED: "1", LABEL_INSTANCE: owner}
    if lock is not None:
        labels[LABEL_LOCK] = str(lock)
    if node is not None:
        labels[LABEL_NODE] = node
    return {"Id": cid, "Labels": labels, "State": state}


def make_lock(state_dir: Path, owner: str, *, held: bool) -> tuple[Path, int | None]:
    path = lock_path(state_dir, owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    if held:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live instance holds it
        return path, fd
    os.close(fd)  # a dead one's flock died with it; the file stays
    return path, None


async def test_a_live_neighbours_containers_are_kept_whatever_its_state_dir(dirs: tuple[Path, Path]) -> None:
    mine, theirs = dirs
    lock, fd = make_lock(theirs, "live00000000", held=True)
    engine = ScriptedEngine(Settings(state_dir=mine), [container("c1", "live00000000", lock=lock)])
    try:
        assert await engine.reap_orphans() == 0
        assert engine.removed == []
        assert lock.exists()
    finally:
        assert fd is not None
        os.close(fd)


async def test_a_dead_instances_containers_files_and_lock_are_removed(dirs: tuple[Path, Path]) -> None:
    mine, theirs = dirs
    lock, _ = make_lock(theirs, "dead00000000", held=False)
    (theirs / "dead00000000" / "k1").mkdir(parents=True)
    engine = ScriptedEngine(
        Settings(state_dir=mine),
        [container("c1", "dead00000000", lock=lock), container("c2", "dead00000000", lock=lock, state="exited")],
    )
    assert await engine.reap_orphans() == 2
    assert sorted(engine.removed) == ["c1", "c2"]
    assert not lock.exists() and not (theirs / "dead00000000").exists()


async def test_a_running_container_whose_lock_is_missing_is_left_alone_and_logged(
    dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    mine, theirs = dirs
    lock = lock_path(theirs, "gone00000000")  # never created: another mount namespace, or wiped
    engine = ScriptedEngine(
        Settings(state_dir=mine, node_name="node-a"),
        [container("c1", "gone00000000", lock=lock, node="node-b"), container("c2", "gone00000000", lock=lock)],
    )
    with caplog.at_level(logging.WARNING, logger="execbox.backend"):
        assert await engine.reap_orphans() == 0
    assert engine.removed == []
    assert "label=execbox.instance=gone00000000" in caplog.text


async def test_a_container_whose_lock_is_missing_is_removed_once_stopped_for_long(dirs: tuple[Path, Path]) -> None:
    mine, theirs = dirs
    lock = lock_path(theirs, "gone00000000")
    listing = [container("c1", "gone00000000", lock=lock, state="exited"), container("c2", "gone00000000", lock=lock)]
    engine = ScriptedEngine(Settings(state_dir=mine), listing)
    assert await engine.reap_orphans() == 1
    assert engine.removed == ["c1"]
    # Stopped a moment ago: its owner may be reading why (an OOM kill) before it removes it.
    recent = ScriptedEngine(Settings(state_dir=mine), listing)
    recent.finished_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    assert await recent.reap_orphans() == 0


async def test_this_nodes_earlier_containers_are_removed_even_without_their_lock(dirs: tuple[Path, Path]) -> None:
    mine, _ = dirs
    lock = lock_path(mine, "prev00000000")  # the state dir was wiped with the pod
    engine = ScriptedEngine(
        Settings(state_dir=mine, node_name="node-a"),
        [container("c1", "prev00000000", lock=lock, node="node-a")],
    )
    assert await engine.reap_orphans() == 1
    assert engine.removed == ["c1"]


async def test_a_live_instance_with_the_same_node_name_stops_the_start(dirs: tuple[Path, Path]) -> None:
    mine, theirs = dirs
    lock, fd = make_lock(theirs, "twin00000000", held=True)
    engine = ScriptedEngine(
        Settings(state_dir=mine, node_name="node-a"),
        [container("c1", "twin00000000", lock=lock, node="node-a")],
    )
    try:
        with pytest.raises(NodeNameInUse, match="node-a"):
            await engine.reap_orphans()
        assert engine.removed == []
    finally:
        assert fd is not None
        os.close(fd)


async def test_containers_from_before_the_lock_label_use_this_state_dirs_lock(dirs: tuple[Path, Path]) -> None:
    mine, _ = dirs
    make_lock(mine, "old000000000", held=False)
    engine = ScriptedEngine(Settings(state_dir=mine), [container("c1", "old000000000", lock=None)])
    assert await engine.reap_orphans() == 1


def test_every_container_names_its_lock_and_node() -> None:
    settings = Settings(state_dir=Path("/run/execbox"), node_name="node-a")
    labels = container_args(settings, "abc", "k1", SandboxSpec(memory_mb=256, cpus=1), Path("/x"), role="kernel")[
        "labels"
    ]
    assert labels[LABEL_LOCK] == "/run/execbox/instances/abc.lock"
    assert labels[LABEL_NODE] == "node-a"
    plain = container_args(Settings(), "abc", "k1", SandboxSpec(memory_mb=256, cpus=1), Path("/x"), role="worker")
    assert LABEL_NODE not in plain["labels"]


def test_accounting_reads_the_cgroup_files_under_the_configured_root(tmp_path: Path) -> None:
    # The engine host's cgroup v1 tree as a service in a container sees it mounted elsewhere.
    cid = "f" * 64
    for controller, name, value in (
        ("cpuacct", "cpuacct.usage", "1500000\n"),
        ("memory", "memory.max_usage_in_bytes", "4096\n"),
    ):
        d = tmp_path / controller / "docker" / cid
        d.mkdir(parents=True)
        (d / name).write_text(value)
    files = CgroupFiles(cid, root=tmp_path)
    try:
        usage = files.usage()
        assert (usage.cpu_ns, usage.peak_memory_bytes) == (1_500_000, 4096)
        files.reset_peak_memory()
        assert (tmp_path / "memory" / "docker" / cid / "memory.max_usage_in_bytes").read_text().startswith("0")
    finally:
        files.close()
    assert CgroupFiles(cid, root=tmp_path / "elsewhere").usage().cpu_ns is None
