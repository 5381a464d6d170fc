"""A leased kernel's CPU weight written straight into its cgroup (v1 shares, v2 weight), and the
answer that sends the caller to the engine when the file cannot be written."""

from __future__ import annotations

from pathlib import Path

from execbox_server.backends.docker.cgroups import CgroupFiles
from execbox_server.backends.docker.containers import ACTIVE_CPU_SHARES, SPARE_CPU_SHARES

CID = "c0ffee" * 10


def test_cgroup_v1_gets_the_shares_themselves(tmp_path: Path) -> None:
    shares = tmp_path / "cpu" / "docker" / CID / "cpu.shares"
    shares.parent.mkdir(parents=True)
    shares.write_text(f"{SPARE_CPU_SHARES}\n")
    assert CgroupFiles(CID, root=tmp_path).set_cpu_shares(ACTIVE_CPU_SHARES)
    assert shares.read_text() == f"{ACTIVE_CPU_SHARES}\n"


def test_cgroup_v2_gets_the_weight_runc_would_write(tmp_path: Path) -> None:
    weight = tmp_path / "system.slice" / f"docker-{CID}.scope" / "cpu.weight"
    weight.parent.mkdir(parents=True)
    weight.write_text("5\n")
    assert CgroupFiles(CID, root=tmp_path).set_cpu_shares(1024)
    assert weight.read_text() == "39\n"  # runc: 1 + (1024 - 2) * 9999 // 262142


def test_no_cgroup_file_sends_the_caller_to_the_engine(tmp_path: Path) -> None:
    assert not CgroupFiles(CID, root=tmp_path).set_cpu_shares(ACTIVE_CPU_SHARES)


def test_an_unwritable_cgroup_file_sends_the_caller_to_the_engine(tmp_path: Path) -> None:
    # A directory where the file should be: the write fails as on a read-only mount.
    (tmp_path / "cpu" / "docker" / CID / "cpu.shares").mkdir(parents=True)
    assert not CgroupFiles(CID, root=tmp_path).set_cpu_shares(ACTIVE_CPU_SHARES)
