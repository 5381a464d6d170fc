"""The in-sandbox helpers on their own (sandbox_images/python/execbox_files.py, execbox_sweep.py).

The file functions run here against a temporary root instead of /home/sandbox; their ``main``
(which changes uids) and the sweep's killing are never run on the host: those are covered in
real sandboxes by tests/integration/test_host_boundary.py and the hostile cases xb-002/003.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

IMAGE = Path(__file__).resolve().parents[3] / "sandbox_images" / "python"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"sandbox_{name}", IMAGE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Out:
    """What the helper writes to stdout (the exec stream): a JSON line, then bytes."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def answer(self) -> tuple[dict[str, object], bytes]:
        header, _, body = self.buffer.getvalue().partition(b"\n")
        return json.loads(header), body


@pytest.fixture()
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = _load("execbox_files")
    monkeypatch.setattr(module, "ROOT", str(tmp_path))
    return module


def _run(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch, op: str, path: str, limit: int, data: bytes = b""
) -> tuple[dict[str, object], bytes]:
    out = _Out()
    monkeypatch.setattr(sys, "stdout", out)
    stdin = io.TextIOWrapper(io.BytesIO(data))
    monkeypatch.setattr(sys, "stdin", stdin)
    try:
        parts = module._parts(path, want_file=op != "list")
        {
            "put": lambda: module._put(parts, limit),
            "get": lambda: module._get(parts, limit),
            "list": lambda: module._list(parts),
        }[op]()
    except module.Refused as exc:
        return {"error": exc.code, "message": exc.message}, b""
    return out.answer()


def test_put_get_and_list_round_trip(files: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    answer, _ = _run(files, monkeypatch, "put", "data/in.csv", 100, b"a,b\n1,2\n")
    assert answer == {"path": "data/in.csv", "size": 8}
    assert (tmp_path / "data" / "in.csv").read_bytes() == b"a,b\n1,2\n"
    answer, body = _run(files, monkeypatch, "get", "data/in.csv", 100)
    assert answer["size"] == 8 and body == b"a,b\n1,2\n"
    answer, _ = _run(files, monkeypatch, "list", "data", 100)
    assert answer["entries"] == [{"name": "in.csv", "path": "data/in.csv", "size": 8, "type": "file"}]


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a\\b", "a\x00b", ""])
def test_paths_outside_the_working_directory_are_refused(
    files: ModuleType, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    answer, _ = _run(files, monkeypatch, "get", path, 100)
    assert answer["error"] == "invalid_path"


def test_symlinks_fifos_and_devices_are_refused_without_blocking(
    files: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text("host")
    os.symlink(tmp_path / "secret", tmp_path / "link")
    os.symlink("/", tmp_path / "root")
    os.mkfifo(tmp_path / "pipe")
    os.symlink("/dev/zero", tmp_path / "zero")
    for op, path in [
        ("get", "link"),
        ("get", "root/etc/passwd"),
        ("get", "pipe"),
        ("put", "pipe"),
        ("get", "zero"),
        ("put", "link"),
    ]:
        answer, _ = _run(files, monkeypatch, op, path, 100, b"x")
        assert answer["error"] == "invalid_path", (op, path, answer)
    assert (tmp_path / "secret").read_text() == "host"


def test_sizes_over_the_limit_are_refused_both_ways(
    files: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    answer, _ = _run(files, monkeypatch, "put", "big", 10, b"x" * 11)
    assert answer["error"] == "file_too_large" and not (tmp_path / "big").exists()
    (tmp_path / "big").write_bytes(b"x" * 11)
    answer, body = _run(files, monkeypatch, "get", "big", 10)
    assert answer["error"] == "file_too_large" and body == b""


def test_a_missing_file_is_not_found(files: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    answer, _ = _run(files, monkeypatch, "get", "nope/x", 10)
    assert answer["error"] == "file_not_found"


def test_the_sweep_finds_this_processes_children_by_parent_and_start_time() -> None:
    sweep = _load("execbox_sweep")
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        found = {pid: (ppid, start) for pid, ppid, start in sweep._processes()}
        assert found[child.pid][0] == os.getpid()
        assert found[child.pid][1] >= found.get(os.getpid(), (0, 0))[1]
    finally:
        child.kill()
        child.wait()
