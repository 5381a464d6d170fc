"""Kernel entry point inside the sandbox: warm the heavy imports, then start ipykernel.

Runs as the unprivileged sandbox user with a read-only root filesystem. Pre-importing
numpy/pandas/matplotlib here moves ~1.5 s of first-use cost into pool warm-up, which the
user never waits for. The modules land in ``sys.modules`` only, not in the user namespace.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys


def _seed_matplotlib_cache() -> None:
    # The font cache was built at image build time under /opt/execbox/mpl (read-only);
    # matplotlib wants a writable config dir, so copy the cache into the tmpfs one.
    src = "/opt/execbox/mpl"
    dst = os.environ.get("MPLCONFIGDIR", "/tmp/.matplotlib")
    if os.path.isdir(src) and not os.path.exists(dst):
        try:
            shutil.copytree(src, dst)
        except OSError:
            pass


def _preimport() -> None:
    names = os.environ.get("EXECBOX_PREIMPORT", "numpy,matplotlib").split(",")
    for name in filter(None, (n.strip() for n in names)):
        try:
            importlib.import_module(name)
        except Exception:  # a missing optional library must never stop the kernel
            pass


def _valid_text(text: str) -> str:
    # A lone surrogate makes the message unserializable and ipykernel would drop it whole.
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _wire_len(value: object) -> int:
    """Bytes ``value`` takes in a message as jupyter_client writes it (JSON, UTF-8)."""
    try:
        return len(json.dumps(value, ensure_ascii=False, default=repr).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError):
        return len(repr(value)) * 6


def _fit(text: str, budget: int, *, tail: bool) -> int:
    """How many characters of ``text`` (from its start, or its end) fit in ``budget`` wire bytes."""
    n = min(len(text), budget)
    while n > 0:
        size = _wire_len(text[-n:] if tail else text[:n])
        if size <= budget:
            return n
        n = min(n - 1, n * budget // size)
    return 0


def _cut(text: str, limit: int) -> tuple[str, int]:
    """Head and tail of ``text`` within ``limit`` wire bytes, and how many characters were cut.

    Measured as the message carries it (JSON escapes a control character into 6 bytes), so
    the server can bound what it buffers per message in bytes.
    """
    if len(text) * 6 <= limit or _wire_len(text) <= limit:
        return text, 0
    half = max(0, limit // 2 - 64)
    head, tail = _fit(text, half, tail=False), _fit(text, half, tail=True)
    dropped = len(text) - head - tail
    cut_tail = text[len(text) - tail :] if tail else ""
    return f"{text[:head]}\n[... {dropped} characters truncated in the sandbox ...]\n{cut_tail}", dropped


def _cap_content(msg_type: str, content: dict, limit: int) -> dict:  # type: ignore[type-arg]
    """Bound one outgoing message. The server caps again; this keeps huge messages off the wire.

    What is cut is recorded under ``execbox_dropped`` (bytes or characters) so the server can
    report it exactly.
    """
    if msg_type == "stream":
        text, dropped = _cut(_valid_text(str(content.get("text", ""))), limit)
        out = {**content, "text": text}
        if dropped:
            out["execbox_dropped"] = dropped
        return out
    if msg_type in ("display_data", "execute_result", "update_display_data"):
        data = content.get("data") or {}
        kept: dict = {}  # type: ignore[type-arg]
        dropped = 0
        budget = limit
        for mime, value in data.items():
            if isinstance(value, str):
                value = _valid_text(value)
                size = _wire_len(value)
                if size > budget and mime.startswith("text/") and budget >= 256:
                    value, cut = _cut(value, budget)
                    dropped += cut
                    size = _wire_len(value)
                elif size > budget:
                    dropped += len(value)
                    continue
            else:
                size = _wire_len(value)
                if size > budget:
                    dropped += size
                    continue
            kept[mime] = value
            budget -= size
        out = {**content, "data": kept}
        if dropped:
            out["execbox_dropped"] = dropped
        return out
    if msg_type in ("error", "execute_reply") and "traceback" in content:
        lines = [_cut(_valid_text(str(line)), 4096)[0] for line in content.get("traceback") or []]
        if len(lines) > 200:
            lines = [*lines[:100], f"[... {len(lines) - 200} traceback entries truncated in the sandbox ...]", *lines[-100:]]
        evalue = _cut(_valid_text(str(content.get("evalue", ""))), 4096)[0]
        ename = _cut(_valid_text(str(content.get("ename", ""))), 512)[0]
        return {**content, "traceback": lines, "evalue": evalue, "ename": ename}
    return content


def _install_output_caps() -> None:
    limit = int(os.environ.get("EXECBOX_MAX_MESSAGE_BYTES", "0") or 0)
    if limit <= 0:
        return
    from jupyter_client.session import Session

    original = Session.send

    def send(self, stream, msg_or_type, content=None, parent=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            if isinstance(msg_or_type, dict):
                msg_or_type = {
                    **msg_or_type,
                    "content": _cap_content(msg_or_type.get("msg_type", ""), msg_or_type.get("content") or {}, limit),
                }
            elif isinstance(content, dict):
                content = _cap_content(msg_or_type, content, limit)
        except Exception:  # capping must never lose the message itself
            pass
        return original(self, stream, msg_or_type, content, parent, *args, **kwargs)

    Session.send = send  # type: ignore[method-assign]


SANDBOX_UID = 90000  # the image's sandbox user (Dockerfile); no host user has it


def _drop_privileges() -> None:
    # The service starts the container as root with only CAP_SETUID/CAP_SETGID, so that the
    # init (PID 1) belongs to root: the sandbox user cannot write to its stdout through
    # /proc/1/fd/1 (a flood into the engine's log pipe) nor signal it. The kernel gives up
    # root here, before anything else runs; setuid from 0 clears every capability it held.
    if os.getuid() != 0:
        return
    os.setgroups([])
    os.setgid(SANDBOX_UID)
    os.setuid(SANDBOX_UID)
    if 0 in os.getresuid() or 0 in os.getresgid():
        raise SystemExit("execbox kernel: could not drop root")


# ------------------------------------------------------------------ templates (restore)
#
# With restore on, the service boots one *template* kernel, checkpoints it (CRIU) and restores
# that image into each new sandbox container instead of booting there. The template differs
# from a normal kernel in two ways:
# - it keeps root as its saved uid until after the restore, running as the sandbox user
#   meanwhile (real and effective ids): where root lacks CAP_SYS_RESOURCE, CRIU cannot dump a
#   process of another uid, so the template takes root back just before the dump. Files it
#   creates (matplotlib's cache, IPython's dir) are the sandbox user's, as in a booted kernel.
# - the host drives those steps with cells run outside the history, before any user code
#   (module ``_execbox_template`` below): ``prepare_checkpoint()`` before the dump, and in each
#   restored copy ``rekey(key, session)``, which takes the key and Jupyter session id that are
#   this sandbox's own, renews every seeded random state the image carries, then gives up root
#   for good. Every restored copy starts as the same bytes; this is what makes it its own.
#   (Cells rather than messages of our own: with ipykernel 7.4 a reply from a custom handler
#   sat unsent in the kernel.)

TEMPLATE_ENV = "EXECBOX_KERNEL_TEMPLATE"


def _act_as_sandbox_user() -> None:
    os.setgroups([])
    os.setresgid(SANDBOX_UID, SANDBOX_UID, 0)
    os.setresuid(SANDBOX_UID, SANDBOX_UID, 0)


def _reseed() -> None:
    """New seeds for every generator the image froze: restored copies must not share a stream."""
    import random
    import tempfile

    random.seed()
    # tempfile's name generator is a Random created on first use: a fresh one on next use.
    tempfile._name_sequence = None  # type: ignore[attr-defined]
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # the legacy global RandomState (np.random.rand and friends)
    ssl = sys.modules.get("ssl")
    if ssl is not None:
        ssl.RAND_add(os.urandom(64), 64.0)


def _template_module() -> object:
    import types

    module = types.ModuleType("_execbox_template")
    state = {"rekeyed": False}

    def prepare_checkpoint() -> None:
        if state["rekeyed"]:
            raise RuntimeError("not a template")
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)

    def rekey(key: str, session_id: str) -> None:
        from IPython import get_ipython

        if state["rekeyed"] or len(key) < 32:
            raise RuntimeError("refused")
        state["rekeyed"] = True
        session = get_ipython().kernel.session  # type: ignore[union-attr]
        # This cell's own reply and everything after it are signed with the new key.
        session.key = key.encode()
        session.session = session_id
        _reseed()
        try:
            # Every id, whatever state the template was checkpointed in (not _drop_privileges,
            # which trusts the real uid alone), then proof that nothing of root is left.
            os.setgroups([])
            os.setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
            os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
            with open("/proc/self/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
            if 0 in os.getresuid() or 0 in os.getresgid() or int(status["CapPrm"], 16) or int(status["CapEff"], 16):
                raise PermissionError("root left")
        except BaseException:
            os._exit(70)  # a kernel that kept root must not serve anyone; the host sees it exit

    module.prepare_checkpoint = prepare_checkpoint  # type: ignore[attr-defined]
    module.rekey = rekey  # type: ignore[attr-defined]
    return module


def main() -> None:
    template = os.environ.get(TEMPLATE_ENV) == "1"
    if template:
        _act_as_sandbox_user()
    else:
        _drop_privileges()
    _seed_matplotlib_cache()
    _install_output_caps()
    _preimport()
    from ipykernel import kernelapp

    argv = sys.argv[1:] + [
        # No sqlite history file: nothing of a session's inputs is written to disk.
        "--HistoryManager.enabled=False",
        # Importing pyplot once the shell exists registers the inline backend's
        # post-execute hook, so plots come back as image/png without the user asking.
        "--IPKernelApp.exec_lines=import matplotlib.pyplot as _execbox_plt; del _execbox_plt",
    ]
    if template:
        sys.modules["_execbox_template"] = _template_module()  # type: ignore[assignment]
    kernelapp.launch_new_instance(argv=argv)


if __name__ == "__main__":
    main()
