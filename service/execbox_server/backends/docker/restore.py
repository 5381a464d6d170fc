"""Kernels restored from a checkpoint of one warm template instead of booted, one per container.

A boot costs ~1.2 CPU-seconds (Python, numpy, matplotlib, IPython); a restore ~0.2. How:

1. At start-up, one template kernel boots in a sandbox container like any other (through the
   engine's ``execbox`` runtime, scripts/execbox-runtime) with ``EXECBOX_KERNEL_TEMPLATE=1``,
   warms up, takes root back (execbox_kernel.py explains why) and is checkpointed by runc and
   CRIU into a directory only root can read. Its container is then removed.
2. Each new sandbox is a new container with its own namespaces, cgroup, limits and IPC
   directory, created by the engine as usual; the runtime restores the checkpoint into it
   (``runc restore``) instead of starting a process. Nothing is shared with another sandbox:
   every restore gets private copies of the template's memory and files.
3. The restored kernel answers under the template's key, is given a key and session id of its
   own, re-seeds every random generator the image froze, and drops to the sandbox user for
   good, before it is handed to anyone (KernelConnection.rekey).

Where this machine cannot (no CRIU >= 4.2, an engine without the runtime, the service in a
container, a checkpoint that fails) kernels boot, and ``KernelStarts.reason`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from execbox_server.backends.docker.engine import Engine

log = logging.getLogger("execbox.backend")

__all__ = ["RESTORE_ENV", "TEMPLATE_ENV", "CheckpointFailed", "Template", "checkpoint", "unavailable"]

TEMPLATE_ENV = "EXECBOX_KERNEL_TEMPLATE"  # execbox_kernel.py and scripts/execbox-runtime know it too
RESTORE_ENV = "EXECBOX_RESTORE_IMAGE"  # oci_restore.py reads it, with EXECBOX_CRIU
# Where runc keeps the engine's containers' state (dockerd's exec root; one dir per runtime).
_RUNC_STATE = "/run/docker/runtime-*/moby/{id}/state.json"
_CHECK_TIMEOUT_S = 60.0
_CHECKPOINT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Template:
    image_dir: Path
    key: str


class CheckpointFailed(Exception):
    """runc or CRIU could not checkpoint the template kernel."""


async def unavailable(engine: Engine) -> str | None:
    """Why kernels cannot be restored on this machine, or None when they can."""
    settings = engine.settings
    if settings.restore == "off":
        return "EXECBOX_RESTORE=off"
    info = await engine.call("control", lambda: engine.docker.info())
    runtimes = info.get("Runtimes") or {}
    if settings.restore_runtime not in runtimes:
        return (
            f"the engine has no {settings.restore_runtime!r} runtime: start dockerd with "
            f"--add-runtime {settings.restore_runtime}=<repo>/scripts/execbox-runtime (scripts/ensure-docker.sh does)"
        )
    # dockerd's exec root, where runc keeps its containers' state: on the engine's host only.
    on_host = await asyncio.to_thread(os.path.isdir, "/run/docker")
    if shutil.which("runc") is None or not on_host:
        return "runc and the engine's container state are not visible here (the service runs in a container?)"
    criu = settings.criu_path
    if not os.access(criu, os.X_OK):
        return f"no CRIU at {criu} (EXECBOX_CRIU_PATH; scripts/ensure-criu.sh installs CRIU >= 4.2 there)"
    code, output = await _run([str(criu), "check"], _CHECK_TIMEOUT_S)
    if code != 0:
        # The detail (host paths, kernel features) goes to the log; /v1/info is open to all.
        log.warning("`criu check` failed: %s", output.strip()[-1000:])
        return "`criu check` fails on this machine (the log has its output)"
    return None


async def checkpoint(engine: Engine, container_id: str, image_dir: Path) -> None:
    """Checkpoint the container's processes into ``image_dir`` (made here, root-only); they exit.

    Raises:
        CheckpointFailed: with the end of CRIU's own log.
    """
    states = await asyncio.to_thread(glob.glob, _RUNC_STATE.format(id=container_id))
    if not states:
        raise CheckpointFailed(f"runc has no state for container {container_id[:12]}")
    root = str(Path(states[0]).parent.parent)
    await asyncio.to_thread(image_dir.mkdir, mode=0o700, parents=True)
    work = image_dir.with_name(image_dir.name + ".work")
    command = ["runc", "--root", root, "--criu", str(engine.settings.criu_path), "checkpoint"]
    command += ["--image-path", str(image_dir), "--work-path", str(work), container_id]
    code = -1
    try:
        code, output = await _run(command, _CHECKPOINT_TIMEOUT_S)
        if code != 0:
            detail = await asyncio.to_thread(_criu_errors, work)
            raise CheckpointFailed(f"runc checkpoint exited {code}: {output.strip()[-300:]} {detail}".strip())
    finally:
        # A half-written image is of no use; CRIU's logs went into the exception above.
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, ignore_errors=True))
        if code != 0:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, image_dir, ignore_errors=True))


async def _run(command: list[str], timeout: float) -> tuple[int, str]:
    """Run a host command; its exit code and combined output (-1 when it could not run)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own group: runc's CRIU child is stopped with it, on a timeout or a cancellation.
            start_new_session=True,
        )
    except OSError as exc:
        return -1, str(exc)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            return -1, f"{command[0]} did not finish within {timeout:g}s"
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _criu_errors(work: Path) -> str:
    lines: list[str] = []
    for path in sorted(work.glob("*.log")):
        with open(path, errors="replace") as fh:
            lines += [line.strip() for line in fh if "Error" in line]
    return " | ".join(lines[-3:])[-600:]
