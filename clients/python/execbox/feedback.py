"""Execution feedback rendered as the text a model reads.

Three conventions:

- ``opencodeinterpreter``: OpenCodeInterpreter's inference loop — ``Execution result: \\n`` +
  output; an empty output asks for a test case; a timeout is ``Execution timed out.``;
  output over ``limit`` (1,000) characters keeps the first and last ``keep`` (200).
- ``code_feedback``: the Code-Feedback collection format — images as ``[image]``, output over
  ``limit`` (500) characters cut to head and tail with a note that the middle was omitted.
- ``execbox`` (default): stdout, stderr and the error in labelled sections, a short ANSI-free
  traceback without host paths, images as placeholders with their size, exact counts of
  what was cut, and the status when it is not a plain success.

Everything here comes from the sandbox, so it is read as untrusted: any MIME key, any JSON
value under it, image data that is not base64, lone surrogates. Rendering never raises, and
the text it returns always encodes as UTF-8 (lone surrogates become U+FFFD), so it can go into
a model's prompt as is.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

from execbox._models import Execution, ExecutionStatus
from execbox._text import scrub_surrogates

__all__ = ["FeedbackStyle", "render_feedback"]

FeedbackStyle = Literal["execbox", "opencodeinterpreter", "code_feedback"]

OCI_EMPTY = "Code is executed, but result is empty. Please make sure that you include test case in your code."
OCI_TIMEOUT = "Execution timed out."
_HOST_PATH = re.compile(r'File "(/[^"]*/)([^/"]+)"')


def render_feedback(
    execution: Execution,
    *,
    style: FeedbackStyle = "execbox",
    limit: int | None = None,
    keep: int | None = None,
    traceback_lines: int = 12,
) -> str:
    """The feedback text for ``execution`` in ``style``; ``limit``/``keep`` override the style's cuts.

    Never raises on what a sandbox produced; the text returned always encodes as UTF-8.
    """
    if style == "opencodeinterpreter":
        text = _oci(execution, limit or 1000, keep or 200)
    elif style == "code_feedback":
        text = _code_feedback(execution, limit or 500, keep or 200)
    else:
        text = _execbox(execution, limit or 4000, keep or 1500, traceback_lines)
    return scrub_surrogates(text)


def _plain_output(execution: Execution, image: str) -> str:
    parts = [execution.stdout]
    for result in execution.results:
        if "image/png" in result.data:
            parts.append(image)
        elif result.text is not None:
            parts.append(result.text + "\n")
    if execution.stderr:
        parts.append(execution.stderr)
    if execution.error is not None:
        parts.append(_short_traceback(execution, 50) + "\n")
    return "".join(parts).rstrip("\n")


def _oci(execution: Execution, limit: int, keep: int) -> str:
    if execution.status is ExecutionStatus.TIMEOUT:
        return OCI_TIMEOUT
    output = _plain_output(execution, "[image]\n")
    if not output.strip():
        return OCI_EMPTY
    if len(output) > limit:
        output = output[:keep] + "\n...\n" + output[-keep:]
    return "Execution result: \n" + output


def _code_feedback(execution: Execution, limit: int, keep: int) -> str:
    if execution.status is ExecutionStatus.TIMEOUT:
        return OCI_TIMEOUT
    output = _plain_output(execution, "[image]\n")
    if len(output) > limit:
        omitted = "[Output too much, the middle part output is omitted]"
        output = f"{output[:keep]}\n{omitted}\n End part of output:\n{output[-keep:]}"
    return "Execution result: \n" + output if output.strip() else OCI_EMPTY


def _cut(text: str, limit: int, keep: int, what: str) -> str:
    if len(text) <= limit:
        return text
    omitted = len(text) - 2 * keep
    return f"{text[:keep]}\n[... {omitted} characters of {what} omitted ...]\n{text[-keep:]}"


def _png_note(value: object) -> str:
    """A placeholder for an image/png value, which the sandbox may have made anything at all."""
    if not isinstance(value, str):
        return "[image/png, not a base64 string]"
    try:
        size = len(base64.b64decode(value))
    except (binascii.Error, ValueError):  # bad padding, or non-ASCII characters
        return "[image/png, not valid base64]"
    return f"[image/png, {size} bytes]"


def _short_traceback(execution: Execution, max_lines: int) -> str:
    error = execution.error
    if error is None:
        return ""
    # Cut before rewriting paths: the sandbox decides how many lines there are.
    lines = [line for line in error.traceback if line.strip() and not set(line.strip()) <= {"-"}]
    if len(lines) > max_lines:
        dropped = len(lines) - max_lines
        lines = [*lines[: max_lines // 2], f"[... {dropped} traceback lines omitted ...]", *lines[-(max_lines // 2) :]]
    lines = [_HOST_PATH.sub(lambda m: f'File "{m.group(2)}"', line) for line in lines]
    if not lines or not lines[-1].startswith(error.name):
        lines.append(f"{error.name}: {error.value}".rstrip())
    return "\n".join(lines)


def _execbox(execution: Execution, limit: int, keep: int, tb_lines: int) -> str:
    sections: list[str] = []
    status = execution.status
    if status is not ExecutionStatus.OK:
        note = f"Status: {status.value}"
        if execution.message:
            note += f" ({execution.message})"
        sections.append(note)
    if execution.stdout:
        sections.append("[stdout]\n" + _cut(execution.stdout.rstrip("\n"), limit, keep, "stdout"))
    if execution.stderr:
        sections.append("[stderr]\n" + _cut(execution.stderr.rstrip("\n"), limit, keep, "stderr"))
    for result in execution.results:
        if "image/png" in result.data:
            sections.append(_png_note(result.data["image/png"]))
        elif result.text is not None:
            label = "[result]" if result.is_main_result else "[display]"
            sections.append(f"{label}\n" + _cut(result.text, limit, keep, "the result"))
    if execution.error is not None:
        sections.append("[error]\n" + _cut(_short_traceback(execution, tb_lines), limit, keep, "the traceback"))
    t = execution.truncation
    if execution.truncated:
        cut = [
            f"{n} {what}"
            for n, what in (
                (t.stdout_bytes, "bytes of stdout"),
                (t.stderr_bytes, "bytes of stderr"),
                (t.results, "rich results"),
                (t.traceback_lines, "traceback lines"),
            )
            if n
        ]
        sections.append("[note] the sandbox cut " + ", ".join(cut))
    if execution.state_lost:
        sections.append("[note] the interpreter was restarted: variables and imports from before are gone")
    if not sections:
        return "[no output] the code ran without printing anything; print or return a value to see a result"
    return "\n".join(sections)
