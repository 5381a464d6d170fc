"""Files in and out of the sandbox's working directory, run by the service through the engine.

Started by the service with ``docker exec`` as root (``python -I -S``, cwd ``/``), it first
becomes the sandbox user for file access while keeping root as its real and saved uid: the
user's code can then neither signal nor trace it (those need a matching real or saved uid),
and it reads and writes only what the sandbox user may. Bytes travel over the exec's own
stdin/stdout streams, so the host never touches a path the sandbox can write.

    execbox_files.py put PATH LIMIT    stdin: the bytes      stdout: one JSON line
    execbox_files.py get PATH LIMIT    stdout: one JSON line, then exactly ``size`` bytes
    execbox_files.py list PATH LIMIT   stdout: one JSON line

Paths are relative to the working directory; absolute paths, ``..``, NUL, backslashes and
symlinks anywhere on the way are refused. Each component is opened relative to its parent's
descriptor with ``O_NOFOLLOW``, so nothing can be swapped in between check and use, and
files are opened ``O_NONBLOCK`` and checked with ``fstat``: a FIFO or a device is refused
instead of blocking. An alarm ends the helper whatever the user's code does.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys

SANDBOX_UID = 90000
ROOT = "/home/sandbox"
ALARM_S = 25
MAX_ENTRIES = 10_000
CHUNK = 1 << 20


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _answer(**fields: object) -> None:
    sys.stdout.buffer.write(json.dumps(fields).encode() + b"\n")
    sys.stdout.buffer.flush()


def _parts(rel: str, *, want_file: bool) -> list[str]:
    if "\0" in rel or rel.startswith("/") or "\\" in rel:
        raise Refused("invalid_path", "give a path relative to the working directory, without NUL or backslashes")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise Refused("invalid_path", "'..' is not allowed: paths stay inside the working directory")
    if want_file and not parts:
        raise Refused("invalid_path", "give a file name")
    return parts


def _open_dir(parts: list[str], *, create: bool) -> int:
    """A descriptor of the directory ``parts`` under ROOT, walked one component at a time."""
    fd = os.open(ROOT, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    for i, part in enumerate(parts):
        where = "/".join(parts[: i + 1])
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                os.close(fd)
                raise Refused("file_not_found", f"no such file or directory: {where}") from None
            os.mkdir(part, 0o755, dir_fd=fd)
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            raise Refused("invalid_path", f"{where} is not a directory (or is a symlink, which is not followed)") from exc
        os.close(fd)
        fd = nxt
    return fd


def _put(parts: list[str], limit: int) -> None:
    # Read (at most one byte past the limit) before touching the file system.
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise Refused("file_too_large", f"the file is larger than the limit of {limit} bytes (EXECBOX_MAX_FILE_BYTES)")
    dfd = _open_dir(parts[:-1], create=True)
    try:
        try:
            fd = os.open(
                parts[-1], os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=dfd
            )
        except OSError as exc:
            raise Refused("invalid_path", f"{'/'.join(parts)} cannot be written: {exc.strerror}") from exc
    finally:
        os.close(dfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused("invalid_path", f"{'/'.join(parts)} is not a regular file")
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    _answer(path="/".join(parts), size=len(data))


def _get(parts: list[str], limit: int) -> None:
    dfd = _open_dir(parts[:-1], create=False)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            raise Refused("file_not_found", f"no such file or directory: {'/'.join(parts)}") from None
        except OSError as exc:
            raise Refused("invalid_path", f"{'/'.join(parts)} cannot be read: {exc.strerror}") from exc
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("invalid_path", f"{'/'.join(parts)} is not a regular file")
        if st.st_size > limit:
            raise Refused(
                "file_too_large", f"{'/'.join(parts)} is {st.st_size} bytes; the limit is {limit} (EXECBOX_MAX_FILE_BYTES)"
            )
        # The file may grow while it is read: never send more than the limit.
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise Refused("file_too_large", f"{'/'.join(parts)} grew past the limit of {limit} bytes while being read")
    finally:
        os.close(fd)
    _answer(path="/".join(parts), size=size)
    for chunk in chunks:
        sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def _list(parts: list[str]) -> None:
    fd = _open_dir(parts, create=False)
    entries = []
    truncated = False
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if len(entries) >= MAX_ENTRIES:
                    truncated = True
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
                name = entry.name
                entries.append({"name": name, "path": "/".join([*parts, name]), "size": st.st_size, "type": kind})
    finally:
        os.close(fd)
    entries.sort(key=lambda e: str(e["name"]))
    _answer(entries=entries, truncated=truncated)


def main() -> None:
    signal.alarm(ALARM_S)
    if os.getuid() == 0:
        # Real and saved uid stay root (the sandbox user cannot signal or trace us); file
        # access uses the effective uid, the sandbox user's.
        os.setgroups([])
        os.setresgid(0, SANDBOX_UID, 0)
        os.setresuid(0, SANDBOX_UID, 0)
    op, rel, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        if op == "put":
            _put(_parts(rel, want_file=True), limit)
        elif op == "get":
            _get(_parts(rel, want_file=True), limit)
        elif op == "list":
            _list(_parts(rel, want_file=False))
        else:
            raise Refused("invalid_request", f"unknown operation {op!r}")
    except Refused as exc:
        _answer(error=exc.code, message=exc.message)
    except OSError as exc:
        _answer(error="invalid_path", message=f"{rel}: {exc.strerror}")


if __name__ == "__main__":
    main()
