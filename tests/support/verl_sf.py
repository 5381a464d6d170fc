"""verl's SandboxFusion caller, loaded on its own from verl's wheel on PyPI.

verl scores code rewards with ``verl/utils/reward_score/sandbox_fusion/`` (``check_correctness``,
``compute_score``): one ``POST /run_code`` per test case. That subpackage needs only ``requests``,
but importing the top-level ``verl`` package pulls in torch, so only the subpackage is taken out of
the wheel and imported under a name of its own. The wheel comes from PyPI (``pip download``), once
per cache directory; nothing else is fetched.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

__all__ = ["VERL_VERSION", "extract_subpackage", "fetch_wheel", "load_package", "load_verl_sandbox_fusion"]

VERL_VERSION = "0.9.1"
SUBPACKAGE = "verl/utils/reward_score/sandbox_fusion/"


def fetch_wheel(cache: Path, version: str = VERL_VERSION) -> Path:
    """verl's wheel in ``cache``, downloaded from the package index (no dependencies) if it is not there yet.

    Raises:
        RuntimeError: pip could not download it (the message carries pip's output).
    """
    found = sorted(cache.glob(f"verl-{version}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache), f"verl=={version}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = sorted(cache.glob(f"verl-{version}-*.whl"))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"pip download verl=={version} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return found[0]


def extract_subpackage(wheel: Path, dest: Path) -> Path:
    """Unpack only the ``sandbox_fusion`` subpackage of verl's wheel into ``dest``; returns its directory.

    Raises:
        RuntimeError: the wheel has no such subpackage (verl moved it).
    """
    target = dest / "sandbox_fusion"
    if (target / "__init__.py").exists():
        return target
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.startswith(SUBPACKAGE) and n.endswith(".py")]
        if not members:
            raise RuntimeError(f"{wheel.name} has no {SUBPACKAGE}")
        target.mkdir(parents=True, exist_ok=True)
        for name in members:
            relative = name[len(SUBPACKAGE) :]
            if "/" in relative:  # only the package's own modules; it has no subfolders
                continue
            (target / relative).write_bytes(zf.read(name))
    return target


def load_package(directory: Path, name: str) -> ModuleType:
    """Import the package in ``directory`` as ``name`` (its relative imports resolve inside it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {directory} as {name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_verl_sandbox_fusion(cache: Path, version: str = VERL_VERSION) -> ModuleType:
    """verl's ``sandbox_fusion`` package, imported as ``verl_sandbox_fusion`` (``check_correctness`` and
    ``compute_score`` are its names; its ``utils`` module holds the HTTP call): the wheel is downloaded into
    ``cache`` on first use."""
    directory = extract_subpackage(fetch_wheel(cache, version), cache / f"verl-{version}")
    return load_package(directory, "verl_sandbox_fusion")
