"""The locked-down container every sandbox runs in (kernels and batch workers alike).

Every container gets: no network, all capabilities dropped but SETUID/SETGID/KILL for the
root-owned init, no-new-privileges, a read-only root with size-limited tmpfs for HOME and
/tmp, memory = memory+swap, a pids limit, a CPU quota, ``--init`` so the workload is not
PID 1, a private cgroup namespace and no log driver. Its only host directory is its own
per-sandbox IPC directory, bind-mounted at ``/kernel``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import docker.types
from execbox_server.backends.base import SandboxSpec
from execbox_server.backends.docker.engine import (
    LABEL_INSTANCE,
    LABEL_KERNEL,
    LABEL_LOCK,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_ROLE,
    lock_path,
)
from execbox_server.settings import Settings

__all__ = ["ACTIVE_CPU_SHARES", "SANDBOX_UID", "SPARE_CPU_SHARES", "container_args", "sandbox_message_cap"]

SPARE_CPU_SHARES = 128
ACTIVE_CPU_SHARES = 1024
SANDBOX_UID = 90000  # the image's sandbox user; outside the uid ranges of host users
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def sandbox_message_cap(settings: Settings) -> int:
    """What the kernel launcher cuts each outgoing message's text and data to, in wire bytes.

    Half the largest output budget: one message can fill a stream's whole share of it. The
    server refuses (and counts) anything larger, so what it buffers per kernel is bounded in
    bytes by a few of these.
    """
    return max(1 << 20, settings.max_output_bytes_limit // 2)


def container_args(
    settings: Settings, instance_id: str, sandbox_id: str, spec: SandboxSpec, host_dir: Path, *, role: str
) -> dict[str, Any]:
    """Keyword arguments of docker-py's ``containers.run`` for one sandbox."""
    s = settings
    mem = f"{spec.memory_mb}m"
    # exec: a compiled job runs its build from HOME (Docker's tmpfs default is noexec). It is no
    # boundary to lose: the sandbox user can run any code from Python already.
    tmpfs_opts = f"size={s.tmpfs_mb}m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700,nosuid,nodev,exec"
    return {
        "image": s.image,
        "detach": True,
        "init": True,
        "name": f"execbox-{instance_id}-{sandbox_id}",
        "hostname": "sandbox",
        # Root only for the init, which then belongs to another user than the code; the
        # kernel drops to SANDBOX_UID at once (execbox_kernel.py) and keeps no capability.
        "user": "0:0",
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "cap_add": ["SETUID", "SETGID", "KILL"],  # KILL: the root init forwards signals to the kernel
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/home/sandbox": tmpfs_opts, "/tmp": f"size={s.tmpfs_mb}m,mode=1777,nosuid,nodev"},
        "mem_limit": mem,
        "memswap_limit": mem,
        "pids_limit": s.pids_limit,
        # Period/quota rather than nano_cpus: only these can be changed on a running
        # container, which is how a warm kernel gets a session's own CPU limit.
        "cpu_period": 100_000,
        "cpu_quota": int(spec.cpus * 100_000),
        # Spares start at a low CPU weight: starting one costs ~1 s of CPU, which must not be
        # taken from sessions that are running code. Raised when the kernel is leased.
        # A batch worker starts because a job waits for it and serves jobs from then on: it
        # runs at the full weight, or a busy host starves its jobs past their deadlines.
        "cpu_shares": ACTIVE_CPU_SHARES if role == "worker" else SPARE_CPU_SHARES,
        "ulimits": [docker.types.Ulimit(name="nofile", soft=1024, hard=1024)],
        "ipc_mode": "private",
        # Its own cgroup namespace: the sandbox sees "/" instead of the engine's paths.
        "cgroupns": "private",
        # Docker lets any user bind ports below 1024 in a container; restore the default.
        "sysctls": {"net.ipv4.ip_unprivileged_port_start": "1024"},
        "volumes": {str(host_dir): {"bind": "/kernel", "mode": "rw"}},
        "working_dir": "/home/sandbox",
        "environment": {
            "EXECBOX_PREIMPORT": s.preimport,
            # Thread pools sized to the CPU quota, not to the host's cores: threads count
            # against the pids limit and oversubscription only slows the sandbox down.
            **{var: str(max(1, math.ceil(spec.cpus))) for var in _THREAD_VARS},
            "EXECBOX_MAX_MESSAGE_BYTES": str(sandbox_message_cap(s)),
        },
        "labels": {
            LABEL_MANAGED: "1",
            LABEL_INSTANCE: instance_id,
            LABEL_KERNEL: sandbox_id,
            LABEL_ROLE: role,
            # Whoever finds this container on the engine (another instance, with another state
            # dir) can tell whether its owner lives: by this lock (see Engine.reap_orphans).
            LABEL_LOCK: str(lock_path(s.state_dir, instance_id)),
            **({LABEL_NODE: s.node_name} if s.node_name else {}),
        },
        # The kernel's own stdout is never read, and code can write to it through
        # /proc/1/fd/1: no log driver, so a flood costs the engine no JSON encoding.
        "log_config": docker.types.LogConfig(type="none"),
    }
