"""JupyterLab on execbox kernels, in a real browser.

JupyterLab (from PyPI) runs with ``--gateway-url`` at an execbox server and an execbox API key
as its gateway token, as README's "Use execbox from Jupyter" says. Headless Chromium (Debian's),
driven over the Chrome DevTools Protocol, uses it as a person would: the launcher's notebook
card, typing into cells, Shift+Enter, Tab, the toolbar's interrupt and restart buttons.

Everything stays on loopback: JupyterLab listens on 127.0.0.1 with its news feed, update check
and PyPI extension manager off, and Chromium sends any address but loopback to a closed port.
One execbox server, one JupyterLab and one browser page serve the whole module (JupyterLab's
start is the slow part); every test adds its cells to the same notebook.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.conftest import owned_server
from tests.integration.test_gateway import warm_kernel_ready
from tests.support.browser import DevTools, headless_chromium
from tests.support.server import LocalServer, free_port

KEY, OTHER_KEY = "lab-key", "someone-elses-key"
LAB_TOKEN = "lab-browser-token"
KERNEL_NAME = "Python 3 (execbox sandbox)"
# Generous: a busy 2-core machine starts JupyterLab, Chromium and kernels slowly.
START_S = 180.0
CELL_S = 90.0
PLOT = (
    "import matplotlib.pyplot as plt\n"
    "plt.plot([1, 3, 2, 5], marker='o')\n"
    "plt.title('drawn in an execbox sandbox')\n"
    "plt.show()"
)

# The notebook's parts, as JupyterLab 4 renders them.
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"
CELLS = f"document.querySelectorAll('{NOTEBOOK} .jp-Notebook .jp-Cell')"
INDICATOR = f"document.querySelector('{NOTEBOOK} .jp-Notebook-ExecutionIndicator')"


def session_of(kernel: str) -> str:
    """The execbox session id of a gateway kernel id (see api/gateway.py)."""
    return "s_" + kernel.replace("-", "")[:24]


def keyed(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------------------------ the browser


class Page(DevTools):
    """One browser tab over the Chrome DevTools Protocol: script, mouse, keyboard, screenshot.

    Waits are on conditions evaluated in the page, each with its own deadline; a missed one
    saves a screenshot next to the test's files and says what it waited for.
    """

    def __init__(self, ws_url: str, artifacts: Path) -> None:
        super().__init__(ws_url)
        self._artifacts = artifacts
        self.console: list[str] = []
        # The kernel websocket's last frames, for the message of a missed wait.
        self.frames: deque[str] = deque(maxlen=40)

    def on_event(self, message: dict[str, Any]) -> None:
        event = message.get("method")
        if event == "Runtime.consoleAPICalled":
            args = message["params"]["args"]
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif event in ("Network.webSocketFrameSent", "Network.webSocketFrameReceived"):
            payload = message["params"]["response"]["payloadData"]
            self.frames.append(f"{event[24:]}: {payload[:400]}")

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:200]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = CELL_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                shot = self._artifacts / f"timeout-{int(time.time())}.png"
                shot.write_bytes(self.screenshot())
                raise AssertionError(
                    f"waited {timeout:.0f}s for {what}; screenshot: {shot}\nconsole:\n"
                    + "\n".join(self.console[-15:])
                    + "\nkernel websocket:\n"
                    + "\n".join(self.frames)
                )
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (scrolled into view first)."""
        x, y = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def key(self, key: str, code: int, *, shift: bool = False, ctrl: bool = False) -> None:
        modifiers = (8 if shift else 0) | (2 if ctrl else 0)
        for kind in ("rawKeyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key if len(key) > 1 else f"Key{key.upper()}",
                windowsVirtualKeyCode=code,
                modifiers=modifiers,
            )

    def type(self, text: str) -> None:
        # One insertion, as a paste: no auto-closed brackets or auto-indent in between.
        self.call("Input.insertText", text=text)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])


# ------------------------------------------------------------------------------ fixtures


@dataclass
class Lab:
    url: str
    execbox: str
    log: Path

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers={"Authorization": f"token {LAB_TOKEN}"}, timeout=30)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="module")
def execbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """An execbox with API keys (the session server has none): JupyterLab's token is one of them."""
    with owned_server(
        tmp_path_factory.mktemp("lab-execbox") / "server.log",
        {
            "api_keys": f"{KEY},{OTHER_KEY}",
            "min_ready": "1",
            "max_total": "4",
            "interrupt_grace_s": "1.5",
            # A restart waits for a kernel rather than fail while a busy machine starts one.
            "acquire_timeout_s": "120",
        },
    ) as srv:
        yield srv


def write_lab_config(root: Path) -> dict[str, str]:
    """A JupyterLab that touches nothing outside its temporary root and never leaves loopback."""
    for name in ("config", "data", "runtime", "settings", "workspaces", "notebooks"):
        (root / name).mkdir()
    config = {
        "ServerApp": {"root_dir": str(root / "notebooks"), "allow_root": True, "terminals_enabled": False},
        "IdentityProvider": {"token": LAB_TOKEN},
        "LabApp": {
            "news_url": None,
            "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
            "extension_manager": "readonly",
            "user_settings_dir": str(root / "settings"),
            "workspaces_dir": str(root / "workspaces"),
        },
    }
    (root / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    # The "get notified about official Jupyter news?" toast would ask to fetch a feed (and cover the page).
    notification = root / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false"}))
    # JupyterLab drops completions that take over 1 s, and a kernel's first (jedi) completion
    # on a busy machine takes longer, with or without a sandbox around it.
    completer = root / "settings" / "@jupyterlab" / "completer-extension" / "manager.jupyterlab-settings"
    completer.parent.mkdir(parents=True)
    completer.write_text(json.dumps({"providerTimeout": 60_000}))
    return {
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_DATA_DIR": str(root / "data"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
    }


@pytest.fixture(scope="module")
def lab(execbox: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("jupyterlab")
    port = free_port()
    env = {**os.environ, **write_lab_config(root), "JUPYTER_GATEWAY_AUTH_TOKEN": KEY}
    log = root / "jupyterlab.log"
    # README's command line: ``jupyter lab --gateway-url=...`` with the key in the environment.
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}"]
    argv += ["--ServerApp.port_retries=0", f"--gateway-url={execbox.url}"]
    proc = subprocess.Popen(argv, env=env, cwd=root, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    running = Lab(url=f"http://127.0.0.1:{port}", execbox=execbox.url, log=log)
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, f"JupyterLab exited:\n{log.read_text()[-3000:]}"
            try:
                running.get("/api/status")
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, f"JupyterLab never answered:\n{log.read_text()[-3000:]}"
                time.sleep(0.2)
        yield running
    finally:
        # SIGTERM: jupyter_server shuts its kernels down on the way out (DELETE on the gateway).
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    sessions = httpx.get(execbox.url + "/v1/sessions", headers=keyed(KEY), timeout=30).json()
    assert sessions == [], "JupyterLab's shutdown left execbox sessions behind"


@pytest.fixture(scope="module")
def page(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    artifacts = tmp_path_factory.mktemp("browser")
    with headless_chromium("the JupyterLab test", window="1280,860") as ws_url:
        tab = Page(ws_url, artifacts)
        try:
            tab.call("Runtime.enable")
            tab.call("Page.enable")
            tab.call("Network.enable")
            yield tab
        finally:
            tab.close()


@pytest.fixture(scope="module")
def notebook(lab: Lab, page: Page) -> str:
    """A new notebook opened from the launcher on the execbox kernel; its kernel id."""
    page.call("Page.navigate", url=f"{lab.url}/lab?token={LAB_TOKEN}")
    card = f'.jp-LauncherCard[data-category="Notebook"][title="{KERNEL_NAME}"]'
    page.wait(f"!!document.querySelector({json.dumps(card)})", "the launcher's execbox notebook card", START_S)
    page.click(card)
    # The indicator says idle before the notebook has a kernel: wait for JupyterLab's session,
    # then for its websocket at execbox, then for the kernel's idle.
    deadline = time.monotonic() + START_S
    while not (sessions := [s for s in lab.get("/api/sessions") if s["type"] == "notebook" and s["kernel"]]):
        assert time.monotonic() < deadline, "JupyterLab never started the notebook's kernel"
        time.sleep(0.1)
    kernel = str(sessions[0]["kernel"]["id"])
    while model(lab.execbox, kernel)["connections"] < 1:
        assert time.monotonic() < deadline, "JupyterLab never connected to the kernel's channels"
        time.sleep(0.1)
    page.wait(f"{INDICATOR}?.dataset.status === 'idle'", "the new notebook's kernel to be idle", START_S)
    return kernel


# ------------------------------------------------------------------------------ cells


def cell_count(page: Page) -> int:
    return int(page.js(f"{CELLS}.length"))


def cell(i: int) -> str:
    return f"{CELLS}[{i}]"


def outputs(page: Page, i: int) -> str:
    return str(page.js(f"{cell(i)}.querySelector('.jp-OutputArea').innerText"))


def type_into_last_cell(page: Page, code: str) -> int:
    """Type ``code`` into the notebook's last (empty) cell; its index."""
    i = cell_count(page) - 1
    editor = f"{NOTEBOOK} .jp-Notebook .jp-Cell:last-child .cm-content"
    assert page.js(f"document.querySelector('{editor}').innerText.trim()") == ""
    page.click(editor)
    page.wait(f"document.activeElement === document.querySelector('{editor}')", "the cell editor to have focus")
    page.type(code)
    page.wait(f"document.querySelector('{editor}').innerText === {json.dumps(code)}", "the typed code in the cell")
    return i


def cell_done(i: int) -> str:
    """Run and answered: JupyterLab shows ``[*]`` until the execute_reply, then the reply's
    execution count (none when the kernel was lost, but then there is an error), and the
    kernel is idle."""
    prompt = f"{cell(i)}.querySelector('.jp-InputArea-prompt').innerText.trim()"
    output = f"{cell(i)}.querySelector('.jp-OutputArea').innerText.trim()"
    return f"{INDICATOR}.dataset.status === 'idle' && {prompt} !== '[*]:' && ({prompt} !== '[ ]:' || {output} !== '')"


def run_cell(page: Page, code: str) -> int:
    """Type ``code`` into the last cell, Shift+Enter, and wait for it; its index."""
    i = type_into_last_cell(page, code)
    page.key("Enter", 13, shift=True)
    page.wait(cell_done(i), f"cell {i} to run: {code!r}")
    return i


def model(execbox_url: str, kernel: str) -> dict[str, Any]:
    r = httpx.get(f"{execbox_url}/api/kernels/{kernel}", headers={"Authorization": f"token {KEY}"}, timeout=30)
    r.raise_for_status()
    return dict(r.json())


def sandbox_id(execbox_url: str, kernel: str) -> str | None:
    r = httpx.get(f"{execbox_url}/v1/sessions/{session_of(kernel)}", headers=keyed(KEY), timeout=30)
    r.raise_for_status()
    found = r.json()["sandbox_id"]
    return str(found) if found else None


# ------------------------------------------------------------------------------ tests


def test_a_notebook_prints_and_plots_on_an_execbox_kernel(lab: Lab, page: Page, notebook: str, tmp_path: Path) -> None:
    i = run_cell(page, "print(6*7)")
    assert outputs(page, i).strip() == "42"

    j = run_cell(page, PLOT)
    image = f"{cell(j)}.querySelector('.jp-OutputArea img')"
    page.wait(f"!!{image} && {image}.complete && {image}.naturalWidth > 200", "the plot to render")
    assert page.js(f"{image}.src").startswith("data:image/png;base64,")

    # The notebook's kernel is an execbox session of the lab's key, and of no other key.
    kernels = httpx.get(lab.execbox + "/api/kernels", headers={"Authorization": f"token {KEY}"}, timeout=30).json()
    assert [k["id"] for k in kernels] == [notebook]
    assert kernels[0]["connections"] >= 1  # JupyterLab's websocket, relaying the browser's
    mine = httpx.get(lab.execbox + "/v1/sessions", headers=keyed(KEY), timeout=30).json()
    assert [s["id"] for s in mine] == [session_of(notebook)]
    assert httpx.get(lab.execbox + "/v1/sessions", headers=keyed(OTHER_KEY), timeout=30).json() == []
    shot = page.screenshot()
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000
    (tmp_path / "jupyterlab-gateway.png").write_bytes(shot)
    target = os.environ.get("EXECBOX_JUPYTERLAB_SCREENSHOT")  # set to refresh docs/images/ for the README
    if target:
        Path(target).write_bytes(shot)

    # And the notebook's variables live in that session: execbox's own API reads them.
    run_cell(page, "from_the_notebook = 6 * 7")
    r = httpx.post(
        f"{lab.execbox}/v1/sessions/{session_of(notebook)}/execute",
        headers=keyed(KEY),
        json={"code": "from_the_notebook"},
        timeout=60,
    )
    assert r.json()["results"][0]["data"]["text/plain"] == "42", r.text


def test_tab_completion_comes_from_the_sandbox_kernel(page: Page, notebook: str) -> None:
    run_cell(page, "import math")
    i = type_into_last_cell(page, "math.flo")
    page.key("Tab", 9)
    # Only the kernel knows math's members: "floor" is in no cell's text. JupyterLab shows the
    # one match in its completer, or (in some versions) inserts it at once.
    editor = f"{cell(i)}.querySelector('.cm-content')"
    offered = "Array.from(document.querySelectorAll('.jp-Completer-item')).some(e => e.innerText.includes('floor'))"
    inserted = f"{editor}.innerText === 'math.floor'"
    page.wait(f"{offered} || {inserted}", "the kernel's completions")
    if not page.js(inserted):
        page.key("Enter", 13)
        page.wait(inserted, "the completion in the cell")
    page.key("Enter", 13, shift=True)
    page.wait(cell_done(i), "the completed cell to run")
    result = outputs(page, i)
    assert "floor" in result and "Error" not in result  # the completed name, evaluated


def test_interrupt_and_restart_from_the_toolbar_reach_the_sandbox(lab: Lab, page: Page, notebook: str) -> None:
    seen_console = len(page.console)
    run_cell(page, "kept = 'still here'")
    i = type_into_last_cell(page, "import time\nprint('sleeping', flush=True)\ntime.sleep(600)")
    page.key("Enter", 13, shift=True)
    # Interrupt once the code runs (its first line printed), not while the request is on its way.
    page.wait(f"{cell(i)}.querySelector('.jp-OutputArea').innerText.includes('sleeping')", "the cell to start")
    page.click(f"{NOTEBOOK} .jp-Toolbar [data-command='notebook:interrupt-kernel']")
    page.wait(cell_done(i), "the interrupted cell to end")
    assert "KeyboardInterrupt" in outputs(page, i)
    assert outputs(page, run_cell(page, "print(kept)")).strip() == "still here"  # an interrupt keeps state

    before = sandbox_id(lab.execbox, notebook)
    warm_kernel_ready(lab.execbox)
    page.click(f"{NOTEBOOK} .jp-Toolbar [data-command='notebook:restart-kernel']")
    page.wait("!!document.querySelector('.jp-Dialog .jp-mod-accept')", "the restart dialog")
    page.click(".jp-Dialog .jp-mod-accept")
    deadline = time.monotonic() + CELL_S
    while sandbox_id(lab.execbox, notebook) in (before, None):  # a fresh sandbox, under the same kernel id
        assert time.monotonic() < deadline, "the restart never reached execbox"
        time.sleep(0.1)
    page.wait(f"{INDICATOR}.dataset.status === 'idle'", "the restarted kernel to be idle")
    j = run_cell(page, "kept")
    assert "NameError" in outputs(page, j)
    assert page.js(f"{cell(j)}.querySelector('.jp-InputArea-prompt').innerText.trim()") == "[1]:"
    # A restart the user asked for is not reported as a kernel that died.
    assert not [line for line in page.console[seen_console:] if "autorestarting" in line]
    assert not page.js("!!document.querySelector('.jp-Dialog')")


def test_a_kernel_killed_from_outside_is_reported_as_dead_and_replaced(lab: Lab, page: Page, notebook: str) -> None:
    run_cell(page, "kept = 1")
    warm_kernel_ready(lab.execbox)  # the replacement
    docker.from_env().api.kill(str(sandbox_id(lab.execbox, notebook)), signal="SIGKILL")
    i = run_cell(page, "kept")
    assert "KernelDied" in outputs(page, i) or "SandboxLost" in outputs(page, i)
    # JupyterLab's own words for a kernel its server had to restart.
    text = page.wait("document.querySelector('.jp-Dialog')?.innerText", "JupyterLab's 'Kernel Restarting' dialog")
    assert "appears to have died" in text
    page.click(".jp-Dialog .jp-mod-accept")
    page.wait("!document.querySelector('.jp-Dialog')", "the dialog to close")
    page.wait(f"{INDICATOR}.dataset.status === 'idle'", "the replaced kernel to be idle")
    j = run_cell(page, "kept")
    assert "NameError" in outputs(page, j)
    kernels = httpx.get(lab.execbox + "/api/kernels", headers={"Authorization": f"token {KEY}"}, timeout=30).json()
    assert [k["id"] for k in kernels] == [notebook]  # the same kernel, on a fresh sandbox
