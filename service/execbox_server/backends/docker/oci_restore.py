"""The ``create`` of execbox's OCI runtime (scripts/execbox-runtime) for templates and restores.

Run by the containerd shim as ``python3 -I oci_restore.py <runc's arguments>``, with the
arguments it gives runc for ``create``. Standard library only: it runs under the host's
Python, not the service's environment.

- A template (``EXECBOX_KERNEL_TEMPLATE=1`` in its environment) is created by runc as usual,
  after its bind mounts' sources are resolved: CRIU restores a bind mount by its source
  path, and cannot when that path is a symlink (Docker's ``/usr/bin/docker-init`` is one).
- A restore (``EXECBOX_RESTORE_IMAGE=<checkpoint dir>``) becomes ``runc restore --detach`` of
  that checkpoint into this container's bundle: Docker's own namespaces, cgroup, mounts and
  stdio pipes, the checkpoint's processes. The checkpoint is read in place; each restore has
  its own work dir in the bundle. The marker file then tells the wrapper that ``start`` has
  nothing left to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["RESTORED_MARKER", "main", "plan", "prepare_config", "resolve_bind_sources"]

RESTORED_MARKER = "execbox-restored"
_GLOBAL_VALUED = {"--root", "--log", "--log-format", "--criu", "--rootless"}
_CREATE_VALUED = {"--bundle", "-b", "--pid-file", "--console-socket", "--preserve-fds"}


def _split(argv: list[str]) -> tuple[list[str], dict[str, str], list[str], str]:
    """runc's global options, create's valued options, create's flags, and the container id."""
    globals_: list[str] = []
    i = 0
    while i < len(argv) and argv[i] != "create":
        globals_.append(argv[i])
        if argv[i] in _GLOBAL_VALUED:
            i += 1
            globals_.append(argv[i])
        i += 1
    if i >= len(argv):
        raise ValueError("not a create")
    options: dict[str, str] = {}
    flags: list[str] = []
    ident = ""
    i += 1
    while i < len(argv):
        arg = argv[i]
        if arg in _CREATE_VALUED:
            options["--bundle" if arg == "-b" else arg] = argv[i + 1]
            i += 2
            continue
        if "=" in arg and arg.split("=", 1)[0] in _CREATE_VALUED:
            name, value = arg.split("=", 1)
            options["--bundle" if name == "-b" else name] = value
        elif arg.startswith("-"):
            flags.append(arg)
        else:
            ident = arg
        i += 1
    if not ident:
        raise ValueError("no container id")
    return globals_, options, flags, ident


def _option(args: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def _env(config: dict[str, Any]) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in config.get("process", {}).get("env", []) if "=" in item)
    return {name: value for name, value in pairs}


def resolve_bind_sources(config: dict[str, Any]) -> bool:
    """Replace symlinked bind-mount sources by their targets; True when anything changed."""
    changed = False
    for mount in config.get("mounts", []):
        source = mount.get("source")
        if mount.get("type") == "bind" and isinstance(source, str) and os.path.islink(source):
            mount["source"] = os.path.realpath(source)
            changed = True
    return changed


def prepare_config(config: dict[str, Any]) -> bool:
    """Adapt a template's or a restore's OCI config; True when it changed.

    - bind-mount sources that are symlinks are resolved (see the module docstring);
    - a restore loses the engine's prestart hook (``libnetwork-setkey``). It tells the engine
      which network namespace to configure; a sandbox has no network (``--network none``) and
      CRIU restores the namespace's loopback itself, while the hook costs the engine ~60 ms of
      CPU per start, a third of its share of a restore.
    """
    changed = resolve_bind_sources(config)
    if _env(config).get("EXECBOX_RESTORE_IMAGE") and config.get("hooks"):
        prestart = [h for h in config["hooks"].get("prestart", []) if "libnetwork-setkey" not in h.get("args", [])]
        if prestart != config["hooks"].get("prestart", []):
            config["hooks"]["prestart"] = prestart
            changed = True
    return changed


def plan(argv: list[str], config: dict[str, Any], runc: str) -> tuple[list[str], str | None]:
    """The runc command line for this create, and the container's runc state dir when it is a
    restore (where the marker goes once it succeeded).

    Raises:
        ValueError: the arguments are not a create this module can carry out.
    """
    globals_, options, flags, ident = _split(argv)
    image = _env(config).get("EXECBOX_RESTORE_IMAGE")
    if not image:
        return [runc, *argv], None
    if "--console-socket" in options:
        raise ValueError("a restored sandbox has no terminal")
    bundle = options.get("--bundle", ".")
    command = [runc, *globals_]
    criu = _env(config).get("EXECBOX_CRIU")
    if criu and not any(arg == "--criu" or arg.startswith("--criu=") for arg in globals_):
        command += ["--criu", criu]
    command += ["restore", "--detach", "--bundle", bundle, "--image-path", image]
    command += ["--work-path", str(Path(bundle) / "criu-work")]
    if "--pid-file" in options:
        command += ["--pid-file", options["--pid-file"]]
    command += [flag for flag in flags if flag == "--no-pivot"]
    command.append(ident)
    return command, str(Path(_option(globals_, "--root", "/run/runc")) / ident)


def main(argv: list[str]) -> int:
    runc = os.environ.get("EXECBOX_RUNC", "runc")
    try:
        _, options, _, _ = _split(argv)
        config_path = Path(options.get("--bundle", ".")) / "config.json"
        config = json.loads(config_path.read_text())
        if prepare_config(config):
            config_path.write_text(json.dumps(config))
        command, state_dir = plan(argv, config, runc)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"execbox runtime: {exc}", file=sys.stderr)
        return 2
    if state_dir is None:
        os.execvp(command[0], command)
    # The shim's stdio pipes are passed on: runc maps the checkpoint's stdio onto them.
    try:
        code = subprocess.call(command)
    except OSError as exc:
        print(f"execbox runtime: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 2
    if code != 0:
        return code
    try:
        (Path(state_dir) / RESTORED_MARKER).touch()
    except OSError as exc:
        # Without the marker the engine's start would fail on a running container: undo the
        # restore rather than leave a process the engine believes was never created.
        print(f"execbox runtime: restored, but cannot mark {state_dir}: {exc}", file=sys.stderr)
        subprocess.call([command[0], *_split(argv)[0], "delete", "--force", _split(argv)[3]])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
