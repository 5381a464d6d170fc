"""Sandbox-produced text made safe for where it goes next: a model's prompt, a UTF-8 file, a terminal.

A sandbox chooses every character of its output. Two kinds of character hurt on the way out:

- lone surrogates (``"\\ud800"``), which Python strings can hold (a JSON ``\\ud800`` escape
  decodes to one) but no UTF-8 encoder accepts: an HTTP body or a file write then raises;
- terminal controls (ESC, CSI, OSC, BEL, C1 codes ...), with which output printed raw moves the
  cursor, clears the screen, renames the window, writes the clipboard (OSC 52) or plants links.
"""

from __future__ import annotations

import re

__all__ = ["escape_controls", "scrub_surrogates", "utf8_bytes"]

_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 controls but newline and tab, DEL, C1 controls (0x9b is CSI and 0x9d OSC to terminals that
# read 8-bit controls) and lone surrogates (written as raw bytes under surrogateescape).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def scrub_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, so that it encodes as UTF-8."""
    return _SURROGATES.sub("\ufffd", text)


def escape_controls(text: str) -> str:
    """``text`` with every control character but newline and tab shown as a visible escape (``\\x1b``)."""
    return _CONTROLS.sub(_visible, text)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def utf8_bytes(json_text: str) -> bytes:
    """A JSON document as UTF-8, lone surrogates kept as ``\\uXXXX`` escapes.

    Surrogates only occur inside JSON strings (keys included), where ``\\udXXX`` is the escape
    that decodes to the same character, so the document reads back unchanged (but for a high and
    a low surrogate side by side, which read back as the one character they encode).
    """
    return json_text.encode("utf-8", "backslashreplace")
