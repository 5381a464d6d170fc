"""The execbox OCI runtime: oci_restore.py turns a restore's ``create`` into ``runc restore`` and
resolves symlinked bind sources; the sh wrapper (scripts/execbox-runtime) sends only those creates
through it and makes a restored container's ``start`` a no-op. runc is a fake that records its argv."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from execbox_server.backends.docker.oci_restore import RESTORED_MARKER, main, plan, prepare_config

RUNTIME = Path(__file__).resolve().parents[4] / "scripts" / "execbox-runtime"
CID = "c0ffee" * 4
GLOBALS = ["--root", "/run/moby", "--log", "/run/log.json", "--log-format", "json", "--systemd-cgroup"]
SETKEY = {"path": "/proc/1/exe", "args": ["libnetwork-setkey", "-exec-root=/var/run/docker", CID, "abc"]}
OTHER_HOOK = {"path": "/usr/bin/nvidia-hook", "args": ["nvidia-hook", "prestart"]}


def config(*env: str, mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "process": {"env": ["PATH=/usr/bin", *env]},
        "mounts": mounts or [],
        "hooks": {"prestart": [SETKEY, OTHER_HOOK]},
    }


def fake_runc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int = 0) -> Path:
    """An executable that appends its argv (tab-separated, one call a line) to runc.log."""
    script = tmp_path / "runc"
    script.write_text(f"#!/bin/sh\n(IFS=$(printf '\\t'); echo \"$*\") >> {tmp_path / 'runc.log'}\nexit {exit_code}\n")
    script.chmod(0o755)
    monkeypatch.setenv("EXECBOX_RUNC", str(script))
    return script


def runc_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "runc.log"
    return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []


def bundle_with(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


# plan()


def test_template_create_is_passed_to_runc_unchanged() -> None:
    argv = [*GLOBALS, "create", "--bundle", "/b", "--pid-file", "/p", CID]
    assert plan(argv, config("EXECBOX_KERNEL_TEMPLATE=1"), "runc") == (["runc", *argv], None)


@pytest.mark.parametrize("bundle_args", [["--bundle", "/b"], ["--bundle=/b"], ["-b", "/b"]])
def test_restore_create_becomes_runc_restore_of_the_image(bundle_args: list[str]) -> None:
    argv = [*GLOBALS, "create", *bundle_args, "--pid-file", "/p", "--no-pivot", "--no-new-keyring", CID]
    cfg = config("EXECBOX_RESTORE_IMAGE=/ckpt", "EXECBOX_CRIU=/opt/criu")
    restore = ["restore", "--detach", "--bundle", "/b", "--image-path", "/ckpt", "--work-path", "/b/criu-work"]
    command = ["runc", *GLOBALS, "--criu", "/opt/criu", *restore, "--pid-file", "/p", "--no-pivot", CID]
    assert plan(argv, cfg, "runc") == (command, f"/run/moby/{CID}")


def test_restore_without_root_keeps_its_state_under_runcs_default_root() -> None:
    command, state_dir = plan(["create", "--bundle", "/b", CID], config("EXECBOX_RESTORE_IMAGE=/ckpt"), "runc")
    restore = ["restore", "--detach", "--bundle", "/b", "--image-path", "/ckpt", "--work-path", "/b/criu-work"]
    assert command == ["runc", *restore, CID]
    assert state_dir == f"/run/runc/{CID}"


def test_restore_with_a_console_socket_is_refused() -> None:
    with pytest.raises(ValueError, match="terminal"):
        plan(["create", "--bundle", "/b", "--console-socket", "/s", CID], config("EXECBOX_RESTORE_IMAGE=/c"), "runc")


@pytest.mark.parametrize("argv", [[*GLOBALS, "start", CID], ["--root", "/r", "delete", CID]])
def test_anything_but_a_create_is_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError, match="not a create"):
        plan(argv, config("EXECBOX_RESTORE_IMAGE=/c"), "runc")


# prepare_config() / resolve_bind_sources()


def test_symlinked_bind_source_is_replaced_by_its_target(tmp_path: Path) -> None:
    (tmp_path / "docker-init").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "docker-init")
    mounts = [
        {"destination": "/sbin/docker-init", "type": "bind", "source": str(tmp_path / "link")},
        {"destination": "/etc/hosts", "type": "bind", "source": str(tmp_path / "docker-init")},
        {"destination": "/proc", "type": "proc", "source": "proc"},
    ]
    cfg = config("EXECBOX_KERNEL_TEMPLATE=1", mounts=json.loads(json.dumps(mounts)))
    assert prepare_config(cfg)
    assert cfg["mounts"] == [{**mounts[0], "source": str(tmp_path / "docker-init")}, mounts[1], mounts[2]]


def test_restore_drops_only_the_libnetwork_hook() -> None:
    cfg = config("EXECBOX_RESTORE_IMAGE=/ckpt")
    assert prepare_config(cfg)
    assert cfg["hooks"]["prestart"] == [OTHER_HOOK]


def test_template_keeps_the_libnetwork_hook_and_is_unchanged() -> None:
    cfg = config("EXECBOX_KERNEL_TEMPLATE=1")
    assert not prepare_config(cfg)
    assert cfg == config("EXECBOX_KERNEL_TEMPLATE=1")


# main()


def test_main_restores_rewrites_the_config_and_marks_the_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_runc(tmp_path, monkeypatch)
    bundle = bundle_with(tmp_path, config("EXECBOX_RESTORE_IMAGE=/ckpt"))
    root = tmp_path / "root"
    (root / CID).mkdir(parents=True)  # runc's own state dir, made by the real restore
    assert main(["--root", str(root), "create", "--bundle", str(bundle), CID]) == 0
    restore = ["restore", "--detach", "--bundle", str(bundle), "--image-path", "/ckpt"]
    assert runc_calls(tmp_path) == [["--root", str(root), *restore, "--work-path", str(bundle / "criu-work"), CID]]
    assert json.loads((bundle / "config.json").read_text())["hooks"]["prestart"] == [OTHER_HOOK]
    assert (root / CID / RESTORED_MARKER).exists()


def test_main_failed_restore_leaves_no_marker_and_returns_runcs_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_runc(tmp_path, monkeypatch, exit_code=7)
    bundle = bundle_with(tmp_path, config("EXECBOX_RESTORE_IMAGE=/ckpt"))
    (tmp_path / "root" / CID).mkdir(parents=True)
    assert main(["--root", str(tmp_path / "root"), "create", "--bundle", str(bundle), CID]) == 7
    assert not (tmp_path / "root" / CID / RESTORED_MARKER).exists()


def test_main_undoes_a_restore_it_cannot_mark_so_the_engine_never_loses_a_running_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_runc(tmp_path, monkeypatch)
    bundle = bundle_with(tmp_path, config("EXECBOX_RESTORE_IMAGE=/ckpt"))
    root = tmp_path / "root"  # no <root>/<id>: the marker cannot be written
    assert main(["--root", str(root), "create", "--bundle", str(bundle), CID]) == 1
    assert runc_calls(tmp_path)[-1] == ["--root", str(root), "delete", "--force", CID]


def test_a_criu_the_caller_chose_in_either_form_is_kept() -> None:
    for chosen in (["--criu", "/usr/sbin/criu"], ["--criu=/usr/sbin/criu"]):
        argv = [*chosen, "create", "--bundle", "/b", CID]
        command, _ = plan(argv, config("EXECBOX_RESTORE_IMAGE=/ckpt", "EXECBOX_CRIU=/opt/criu"), "runc")
        assert "/opt/criu" not in command and command[1 : 1 + len(chosen)] == chosen


def test_main_without_a_config_exits_2_without_calling_runc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_runc(tmp_path, monkeypatch)
    assert main(["create", "--bundle", str(tmp_path / "missing"), CID]) == 2
    assert runc_calls(tmp_path) == []


# scripts/execbox-runtime


def run_runtime(*argv: str) -> int:
    return subprocess.run([str(RUNTIME), *argv], env=os.environ.copy(), timeout=60, check=False).returncode


def test_start_of_a_restored_container_does_not_call_runc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_runc(tmp_path, monkeypatch)
    (tmp_path / "root" / CID).mkdir(parents=True)
    (tmp_path / "root" / CID / RESTORED_MARKER).touch()
    assert run_runtime("--root", str(tmp_path / "root"), "start", CID) == 0
    assert runc_calls(tmp_path) == []


@pytest.mark.parametrize(
    ("argv", "sent"),
    [
        (["delete", CID], ["delete", "--force", CID]),
        (["--log", "/l", "delete", CID], ["--log", "/l", "delete", "--force", CID]),
        (["delete", "--force", CID], ["delete", "--force", CID]),
    ],
)
def test_delete_of_a_restored_container_is_forced_as_it_already_runs(
    argv: list[str], sent: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_runc(tmp_path, monkeypatch)
    root = tmp_path / "root"
    (root / CID).mkdir(parents=True)
    (root / CID / RESTORED_MARKER).touch()
    assert run_runtime("--root", str(root), *argv) == 0
    assert runc_calls(tmp_path) == [["--root", str(root), *sent]]


@pytest.mark.parametrize(
    "argv",
    [
        ["--root", "ROOT", "start", CID],
        ["--root", "ROOT", "delete", CID],
        ["--root=ROOT", "--log", "/l", "state", CID],
        ["--root", "ROOT", "delete", "--force", CID],
        ["--root", "ROOT", "create", "--bundle", "BUNDLE", "--pid-file", "/p", CID],
    ],
)
def test_other_calls_go_to_runc_unchanged(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_runc(tmp_path, monkeypatch, exit_code=3)
    bundle = bundle_with(tmp_path, config())
    argv = [a.replace("ROOT", str(tmp_path / "root")).replace("BUNDLE", str(bundle)) for a in argv]
    assert run_runtime(*argv) == 3
    assert runc_calls(tmp_path) == [argv]


def test_restore_create_goes_through_oci_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_runc(tmp_path, monkeypatch)
    bundle = bundle_with(tmp_path, config("EXECBOX_RESTORE_IMAGE=/ckpt"))
    (tmp_path / "root" / CID).mkdir(parents=True)
    assert run_runtime("--root", str(tmp_path / "root"), "create", "-b", str(bundle), CID) == 0
    assert [call[2:4] for call in runc_calls(tmp_path)] == [["restore", "--detach"]]
    assert run_runtime("--root", str(tmp_path / "root"), "start", CID) == 0
    assert len(runc_calls(tmp_path)) == 1


def test_template_create_goes_to_runc_with_resolved_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_runc(tmp_path, monkeypatch)
    (tmp_path / "init").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "init")
    mounts = [{"destination": "/sbin/docker-init", "type": "bind", "source": str(tmp_path / "link")}]
    bundle = bundle_with(tmp_path, config("EXECBOX_KERNEL_TEMPLATE=1", mounts=mounts))
    argv = ["--root", str(tmp_path / "root"), "create", "--bundle", str(bundle), CID]
    assert run_runtime(*argv) == 0
    assert runc_calls(tmp_path) == [argv]
    assert json.loads((bundle / "config.json").read_text())["mounts"][0]["source"] == str(tmp_path / "init")
