"""Debian's headless Chromium for the tests that look at a page (the EvalPlus HTML report,
JupyterLab on execbox kernels): found or installed, started on its own profile with the DevTools
protocol on a free port, and nothing sent anywhere but loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket

__all__ = ["DevTools", "chromium", "headless_chromium"]


def chromium(purpose: str) -> str:
    """Debian's chromium, installed with apt-get when missing (CI runs as root on Debian)."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False, capture_output=True, timeout=1200
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.fail(f"{purpose} needs Debian's chromium: apt-get install chromium")
    return found


@contextmanager
def headless_chromium(purpose: str, *, window: str, args: Sequence[str] = ()) -> Iterator[str]:
    """A headless Chromium with one blank tab; yields that tab's DevTools websocket URL.

    Raises:
        AssertionError: Chromium exited or did not open its DevTools port within a minute.
    """
    profile = tempfile.mkdtemp(prefix="execbox-chromium-")
    try:
        argv = [
            chromium(purpose),
            "--headless",
            "--no-sandbox",  # root in CI; the only pages are the test's own, on loopback
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={window}",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            # Any address but loopback (never proxied) goes to a closed port: nothing leaves.
            "--proxy-server=http://127.0.0.1:9",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            *args,
            "about:blank",
        ]
        # Its own process group: the renderers and crash handler it forks keep writing to the
        # profile after the browser process exits unless the whole group is stopped.
        # Its scratch files (org.chromium.Chromium.*) go inside the profile, removed with it.
        scratch = Path(profile) / "tmp"
        scratch.mkdir()
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(scratch)},
            start_new_session=True,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
                time.sleep(0.1)
            port = int(port_file.read_text().splitlines()[0])
            targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=10).json()
            yield str(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        finally:
            _stop_group(proc)
    finally:
        _remove_profile(Path(profile))


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to Chromium's process group, SIGKILL to what is left after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _remove_profile(profile: Path) -> None:
    """Remove the profile; a child that outlived its group (re-parented helpers) may still be
    finishing a write, so a non-empty directory is retried for a few seconds, then left."""
    deadline = time.monotonic() + 10
    while True:
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                shutil.rmtree(profile, ignore_errors=True)
                return
            time.sleep(0.2)


class DevTools:
    """One tab over the Chrome DevTools Protocol: a command and its answer; the events that
    arrive meanwhile go to :meth:`on_event` (nothing by default)."""

    def __init__(self, ws_url: str) -> None:
        # Chromium refuses DevTools websockets that send an Origin it was not told to allow.
        self._ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self._next = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            self.on_event(message)

    def on_event(self, message: dict[str, Any]) -> None:
        """An event that arrived while a command waited for its answer."""

    def wait_event(self, name: str, deadline: float) -> None:
        """Read events until ``name`` arrives.

        Raises:
            TimeoutError: the deadline passed first.
        """
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            if message.get("method") == name:
                return
            self.on_event(message)
        raise TimeoutError(name)

    def close(self) -> None:
        self._ws.close()
