"""CPU time and peak memory of a container, read from its cgroup (v1 or v2) with no engine call.

The files are found under ``EXECBOX_CGROUP_ROOT``: ``/sys/fs/cgroup`` for a service on the host.
A service in a container sees only its own cgroup there, so it mounts the host's
``/sys/fs/cgroup`` elsewhere and points the setting at it (docker-compose.yml does). Mounted
read-only, the peak cannot be reset before each execution: ``peak_memory_bytes`` is then the
sandbox's peak since it started (never lower than the execution's own).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from execbox_server.backends.base import Usage

__all__ = ["CgroupFiles"]


class CgroupFiles:
    """A container's accounting files, opened once and read with pread.

    On the hot path of every execution, path lookups and opens cost more than the reads.
    Files that do not exist (another cgroup version, a service in its own cgroup namespace)
    read as None.
    """

    def __init__(self, container_id: str, *, root: Path) -> None:
        self._container_id = container_id
        self._root = root
        self._fds: dict[str, int] | None = None

    def usage(self) -> Usage:
        fds = self._open()
        cpu = _pread_int(fds.get("cpuacct.usage"))
        if cpu is None:
            usec = _pread_keyed(fds.get("cpu.stat"), "usage_usec")
            cpu = usec * 1000 if usec is not None else None
        peak = _pread_int(fds.get("memory.max_usage_in_bytes")) or _pread_int(fds.get("memory.peak"))
        return Usage(cpu_ns=cpu, peak_memory_bytes=peak)

    def reset_peak_memory(self) -> None:
        fds = self._open()
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            fd = fds.get(name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.pwrite(fd, b"0\n", 0)

    def set_cpu_shares(self, shares: int) -> bool:
        """Write the container's CPU weight straight into its cgroup; False when that cannot be done
        (no such file, a read-only mount), and the caller asks the engine instead.

        A ``docker update`` is a round trip through dockerd, containerd and runc: tens of ms of
        wall time on a busy machine, during which a just-leased kernel runs its first cells at
        the spare weight. The engine's record keeps the spare weight; nothing reads it back.
        """
        v1 = _cgroup_file(self._root, self._container_id, "cpu", "cpu.shares")
        if v1 is not None:
            target, value = v1, shares
        else:
            v2 = _cgroup_file(self._root, self._container_id, "", "cpu.weight")
            if v2 is None:
                return False
            # runc's conversion of cpu-shares [2, 262144] to cgroup v2's cpu.weight [1, 10000].
            target, value = v2, 1 + ((shares - 2) * 9999) // 262142
        try:
            target.write_text(f"{value}\n")
        except OSError:
            return False
        return True

    def close(self) -> None:
        for fd in (self._fds or {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}

    def _open(self) -> dict[str, int]:
        if self._fds is None:
            cid, root = self._container_id, self._root
            found = {
                "cpuacct.usage": (_cgroup_file(root, cid, "cpuacct", "cpuacct.usage"), os.O_RDONLY),
                "cpu.stat": (_cgroup_file(root, cid, "", "cpu.stat"), os.O_RDONLY),
                "memory.max_usage_in_bytes": (
                    _cgroup_file(root, cid, "memory", "memory.max_usage_in_bytes"),
                    os.O_RDWR,
                ),
                "memory.peak": (_cgroup_file(root, cid, "", "memory.peak"), os.O_RDWR),
            }
            self._fds = {}
            for name, (path, mode) in found.items():
                if path is None:
                    continue
                # A read-only mount refuses O_RDWR: read the peak without resetting it then.
                for attempt in dict.fromkeys((mode, os.O_RDONLY)):
                    try:
                        self._fds[name] = os.open(path, attempt | os.O_CLOEXEC)
                    except OSError:
                        continue
                    break
        return self._fds


def _cgroup_file(root: Path, container_id: str, controller: str, name: str) -> Path | None:
    candidates = [
        root / controller / "docker" / container_id / name,  # the cgroupfs driver
        root / controller / "system.slice" / f"docker-{container_id}.scope" / name,  # the systemd driver
    ]
    for path in candidates:
        if path.exists():
            return path
    return None


def _pread_int(fd: int | None) -> int | None:
    if fd is None:
        return None
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pread_keyed(fd: int | None, key: str) -> int | None:
    if fd is None:
        return None
    try:
        for line in os.pread(fd, 4096, 0).decode().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None
