"""NDJSON streams read without I/O: bytes in, typed items out, in the order they arrive.

An execution stream is events ending with ``done``; a batch stream is job results ending
with a summary. Either may instead end with one ``{"error": {...}}`` line (a failure after
the 200 status was sent), which raises the same exception as that error in a response.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import ValidationError

from execbox._exceptions import StreamError, status_error_for
from execbox._models import (
    BatchSummary,
    DoneEvent,
    ErrorEvent,
    Execution,
    ExecutionError,
    ExecutionEvent,
    JobResult,
    Result,
    ResultEvent,
    StderrEvent,
    StdoutEvent,
    parse_event,
)

__all__ = ["Callbacks", "EventDecoder", "JobDecoder", "LineSplitter", "StreamDecoder", "missing_done"]

E = TypeVar("E")

OnText = Callable[[str], object]
OnResult = Callable[[Result], object]
OnError = Callable[[ExecutionError], object]


class LineSplitter:
    """The lines of an NDJSON body, fed in chunks of bytes as they arrive.

    Lines end at ``\\n`` only. httpx's ``iter_lines`` follows ``str.splitlines`` and also cuts at
    U+0085, U+2028 and U+2029, which JSON leaves unescaped inside strings: one of those in a
    sandbox's output would split an event in two.
    """

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        self._partial += chunk
        if b"\n" not in chunk:
            return []
        *lines, rest = self._partial.split(b"\n")
        self._partial = bytearray(rest)
        return [line.decode("utf-8", "replace") for line in lines]

    def flush(self) -> list[str]:
        """The last line, when the body did not end with a newline."""
        rest, self._partial = bytes(self._partial), bytearray()
        return [rest.decode("utf-8", "replace")] if rest else []


class StreamDecoder(Generic[E]):
    """Chunks of an NDJSON stream -> items, lazily (items before a failing line are delivered).

    ``ended`` turns true at the stream's last line; lines after it are ignored.
    """

    name = "stream"

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self.ended = False

    def feed(self, chunk: bytes) -> Iterator[E]:
        """Raises APIStatusError (an error line), StreamError (a malformed line)."""
        return self._decode(self._lines.feed(chunk))

    def close(self) -> Iterator[E]:
        """The items of an unterminated last line. Raises StreamError when the stream never ended."""
        yield from self._decode(self._lines.flush())
        if not self.ended:
            raise self.missing()

    def missing(self) -> StreamError:
        return StreamError(f"the {self.name} stream ended before its last line (connection cut or server stopped)")

    def _decode(self, lines: list[str]) -> Iterator[E]:
        for raw in lines:
            line = raw.strip()
            if self.ended or not line:
                continue
            _raise_error_line(line, self.name)
            yield from self._parse(line)

    def _parse(self, line: str) -> Iterator[E]:
        raise NotImplementedError


class EventDecoder(StreamDecoder[ExecutionEvent]):
    """An execution stream: typed events, the last one ``done``."""

    name = "execution"

    def missing(self) -> StreamError:
        return missing_done()

    def _parse(self, line: str) -> Iterator[ExecutionEvent]:
        try:
            event = parse_event(line)
        except ValidationError as exc:
            raise StreamError(f"malformed event in the execution stream: {line[:200]!r}") from exc
        self.ended = isinstance(event, DoneEvent)
        yield event


class JobDecoder(StreamDecoder[JobResult]):
    """A batch stream: one :class:`JobResult` per job in completion order, then the summary."""

    name = "batch"

    def missing(self) -> StreamError:
        return StreamError("the batch stream ended without its summary (connection cut or server stopped)")

    def _parse(self, line: str) -> Iterator[JobResult]:
        try:
            data = json.loads(line)
            if isinstance(data, dict) and data.get("type") == "summary":
                BatchSummary.model_validate(data)
                self.ended = True
                return
            result = JobResult.model_validate(data)
        except (ValueError, RecursionError, ValidationError) as exc:
            raise StreamError(f"malformed line in the batch stream: {line[:200]!r}") from exc
        yield result


def missing_done() -> StreamError:
    return StreamError("the execution stream ended without a 'done' event (connection cut or server stopped)")


def _raise_error_line(line: str, stream: str) -> None:
    """Raise the mapped APIStatusError when ``line`` is the error envelope that ends a stream."""
    if not line.startswith('{"error"'):
        return
    try:
        error = json.loads(line)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StreamError(f"malformed error line in the {stream} stream: {line[:200]!r}") from exc
    raise status_error_for(code, message)


@dataclass(frozen=True)
class Callbacks:
    """The per-event callbacks of a run that streams underneath."""

    on_stdout: OnText | None = None
    on_stderr: OnText | None = None
    on_result: OnResult | None = None
    on_error: OnError | None = None

    @property
    def any(self) -> bool:
        return any((self.on_stdout, self.on_stderr, self.on_result, self.on_error))

    def dispatch(self, event: ExecutionEvent) -> Execution | None:
        """Call the callback ``event`` is for; the Execution when ``event`` is ``done``."""
        if isinstance(event, StdoutEvent) and self.on_stdout:
            self.on_stdout(event.text)
        elif isinstance(event, StderrEvent) and self.on_stderr:
            self.on_stderr(event.text)
        elif isinstance(event, ResultEvent) and self.on_result:
            self.on_result(event.result)
        elif isinstance(event, ErrorEvent) and self.on_error:
            self.on_error(event.error)
        elif isinstance(event, DoneEvent):
            return event.execution
        return None
