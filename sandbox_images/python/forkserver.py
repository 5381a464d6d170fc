"""execbox fork server: runs many one-shot programs fast, each in a fresh forked child.

Runs inside a locked-down worker container (no network, read-only root, tmpfs, limits).
The server stays root with only CAP_SETUID/SETGID/KILL, imports the common libraries once,
then for every job forks a child that drops to the sandbox user, gets an empty working
directory, its own process group and rlimits, and runs the program. The server enforces
the wall deadline with SIGKILL of the child's process group, caps the output as it arrives,
and after each job kills every process left in the container (a daemon that called setsid
too), so nothing of one job reaches the next.

Protocol: newline-delimited JSON on a unix socket (``/kernel/fork.sock``); one job line in,
one result line out, in order. Speaks to one client at a time.
"""

from __future__ import annotations

import ast
import gc
import importlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from typing import Any

SANDBOX_UID = 1000
SOCKET_PATH = os.environ.get("EXECBOX_FORK_SOCKET", "/kernel/fork.sock")
JOBS_DIR = "/tmp/jobs"
MAX_TB_LINES = 100


# ----------------------------------------------------------------------------- the child


def _run_child(job: dict[str, Any], workdir: str, result_fd: int) -> None:
    """In the forked child: drop privileges, apply limits, run the program. Never returns."""
    code = 1
    try:
        # Nothing of the server reaches the job: not its listening socket, not the client's.
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != result_fd:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.setsid()
        os.setgroups([])
        os.setgid(SANDBOX_UID)
        os.setuid(SANDBOX_UID)
        os.mkdir(workdir, 0o700)
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(_CHILD_ENV)
        os.environ["HOME"] = workdir
        _set_limits(job)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)  # noqa: SIM115
        sys.argv = ["<job>"]
        if job.get("tests") is not None:
            code = _run_tests(job, result_fd)
        else:
            code = _run_program(job["code"], result_fd)
    except BaseException:  # a failure of the set-up itself
        try:
            traceback.print_exc()
        except BaseException:
            pass
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)


def _set_limits(job: dict[str, Any]) -> None:
    timeout = float(job.get("timeout_s") or 10)
    cpu = max(1, int(timeout) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = int(job.get("memory_mb") or 0)
    if memory > 0:
        # Address space: what the warm parent already maps (numpy, ...) plus the job's budget.
        base = _vm_size()
        limit = base + memory * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    fsize = 64 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _vm_size() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * resource.getpagesize()


def _compile_with_value(source: str) -> tuple[Any, Any]:
    """Compile a program; if it ends in an expression, also compile that to show its value."""
    tree = ast.parse(source, "<job>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
        last = compile(last, "<job>", "eval")
    return compile(tree, "<job>", "exec"), last


def _report(result_fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record, default=repr) + "\n").encode("utf-8", "replace")
    try:
        os.write(result_fd, data[: 4 * 1024 * 1024])
    except OSError:
        pass


def _user_tb(exc: BaseException) -> Any:
    """The traceback without this file's own frames: the user sees only their code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def _print_exc(exc: BaseException) -> None:
    traceback.print_exception(type(exc), exc, _user_tb(exc), file=sys.stderr)


def _error_record(exc: BaseException) -> dict[str, Any]:
    lines = traceback.format_exception(type(exc), exc, _user_tb(exc))
    flat = "".join(lines).splitlines()
    if len(flat) > MAX_TB_LINES:
        flat = [*flat[:20], f"[... {len(flat) - MAX_TB_LINES} traceback lines truncated ...]", *flat[-80:]]
    return {"name": type(exc).__name__, "value": str(exc)[:4000], "traceback": flat}


def _run_program(source: str, result_fd: int) -> int:
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        body, last = _compile_with_value(source)
        exec(body, namespace)
        if last is not None:
            value = eval(last, namespace)
            if value is not None:
                _report(result_fd, {"kind": "value", "text": repr(value)[:1_000_000]})
    except SystemExit as exc:
        code = exc.code
        if code is None or code == 0:
            return 0
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        _report(result_fd, {"kind": "error", "error": _error_record(exc)})
        return code
    except BaseException as exc:
        _report(result_fd, {"kind": "error", "error": _error_record(exc)})
        _print_exc(exc)
        return 1
    return 0


class _TestTimeout(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _TestTimeout()


def _equal(actual: Any, expected: Any, atol: float) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        try:
            return abs(float(actual) - float(expected)) <= atol
        except (TypeError, ValueError):
            return False
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        return len(actual) == len(expected) and all(_equal(a, e, atol) for a, e in zip(actual, expected, strict=True))
    return bool(actual == expected)


def _run_tests(job: dict[str, Any], result_fd: int) -> int:
    """Test-case mode: run the solution once, then each (input, expected) case or the assertions."""
    tests = job["tests"]
    per_test = float(tests.get("per_test_timeout_s") or job.get("timeout_s") or 5)
    stop_first = bool(tests.get("stop_on_first_failure", True))
    atol = float(tests.get("atol") or 1e-6)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    signal.signal(signal.SIGALRM, _alarm)
    try:
        exec(compile(job["code"], "<solution>", "exec"), namespace)
    except BaseException as exc:
        _report(result_fd, {"kind": "error", "error": _error_record(exc)})
        _print_exc(exc)
        return 1
    failed = 0  # counted for stop_on_first_failure; the exit code stays 0 once the solution loaded
    if tests.get("assertions"):
        started = time.perf_counter()
        outcome: dict[str, Any] = {"kind": "test", "index": 0, "input": None, "expected": None}
        try:
            signal.setitimer(signal.ITIMER_REAL, per_test)
            exec(compile(tests["assertions"], "<tests>", "exec"), namespace)
            entry = tests.get("entry_point")
            if entry and callable(namespace.get("check")):
                namespace["check"](namespace[entry])
            outcome.update(passed=True, status="passed")
        except _TestTimeout:
            outcome.update(passed=False, status="timeout", error={"name": "TimeoutError", "value": f"over {per_test}s"})
            failed += 1
        except BaseException as exc:
            outcome.update(passed=False, status="failed", error=_error_record(exc))
            failed += 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        outcome["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        _report(result_fd, outcome)
        return 0  # the program ran; the outcome says whether the tests passed
    entry = tests.get("entry_point")
    fn = namespace.get(entry) if entry else None
    if entry and not callable(fn):
        _report(result_fd, {"kind": "error", "error": {"name": "NameError", "value": f"no function {entry!r}"}})
        return 1
    for index, case in enumerate(tests.get("cases") or []):
        args, expected = case.get("input"), case.get("expected")
        started = time.perf_counter()
        outcome = {"kind": "test", "index": index, "input": args, "expected": expected}
        try:
            signal.setitimer(signal.ITIMER_REAL, per_test)
            actual = fn(*args) if isinstance(args, list) else fn(args)  # type: ignore[misc]
            signal.setitimer(signal.ITIMER_REAL, 0)
            ok = _equal(actual, expected, atol)
            outcome.update(passed=ok, status="passed" if ok else "failed", actual=actual)
        except _TestTimeout:
            outcome.update(passed=False, status="timeout", error={"name": "TimeoutError", "value": f"over {per_test}s"})
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            outcome.update(passed=False, status="error", error=_error_record(exc))
        outcome["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        try:
            json.dumps(outcome.get("actual"))
        except (TypeError, ValueError):
            outcome["actual"] = repr(outcome.get("actual"))
        _report(result_fd, outcome)
        if not outcome["passed"]:
            failed += 1
            if stop_first:
                break
    return 0  # the program ran; each outcome says whether its test passed


# ----------------------------------------------------------------------------- the server


class _Cap:
    """Head and tail of a byte stream within ``limit``; counts the middle."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.half:
                del self.tail[: len(self.tail) - self.half]

    def text(self) -> tuple[str, int]:
        tail = bytes(self.tail[-self.half :]) if self.tail else b""
        dropped = self.total - len(self.head) - len(tail)
        if dropped <= 0:
            return (bytes(self.head) + tail).decode("utf-8", "replace"), 0
        marker = f"\n[... {dropped} bytes truncated ...]\n"
        return self.head.decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace"), dropped


_CLEANER: int | None = None


def _cleanup_later(path: str) -> None:
    """Remove the job's directory as the sandbox user (the server holds no DAC override).

    Runs while the result travels back; the next job waits for it (``_wait_cleanup``), so
    no job ever starts beside the files of the one before.
    """
    global _CLEANER
    try:
        # Most jobs write nothing: an empty directory (tmpfs reports 40 bytes for one) is
        # removed here at once; the parent directory is ours, so no permission on it is needed.
        if os.lstat(path).st_size <= 40:
            os.rmdir(path)
            return
    except FileNotFoundError:
        return  # the job never got as far as creating it
    except OSError:
        pass
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(SANDBOX_UID)
            os.setuid(SANDBOX_UID)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os._exit(0)
    _CLEANER = pid


def _wait_cleanup() -> None:
    global _CLEANER
    if _CLEANER is not None:
        try:
            os.waitpid(_CLEANER, 0)
        except ChildProcessError:
            pass
        _CLEANER = None


def _oom_kills() -> int:
    """OOM kills in this container's memory cgroup so far (v1 oom_control, v2 memory.events)."""
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            continue
    return 0


def _sweep() -> None:
    """Kill every process in the container but the init and this server."""
    me = os.getpid()
    for _ in range(3):
        found = False
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in (1, me):
                try:
                    os.kill(int(name), signal.SIGKILL)
                    found = True
                except OSError:
                    pass
        if not found:
            break
        _reap()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    timeout = float(job.get("timeout_s") or 10)
    limit = int(job.get("max_output_bytes") or 1_048_576)
    hard_limit = 8 * limit
    global _JOB_SEQ
    _JOB_SEQ += 1
    workdir = f"{JOBS_DIR}/j{_JOB_SEQ}"
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    in_r, in_w = os.pipe()
    _wait_cleanup()
    oom_before = _oom_kills()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        os.close(res_r)
        os.close(in_w)
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        _run_child(job, workdir, res_w)
    for fd in (out_w, err_w, res_w, in_r):
        os.close(fd)
    stdin = (job.get("stdin") or "").encode("utf-8", "replace")
    try:
        if stdin:
            os.set_blocking(in_w, False)
            try:
                written = os.write(in_w, stdin[:65536])
                stdin = stdin[written:]
            except BlockingIOError:
                pass
    finally:
        if not stdin:
            os.close(in_w)
            in_w = -1
    caps = {out_r: _Cap(limit // 2), err_r: _Cap(limit // 4)}
    records = bytearray()
    open_fds = {out_r, err_r, res_r}
    status = None
    deadline = started + timeout
    # Readable once the job's process exits: a daemon it left holding the pipes open
    # must not keep the job "running" until its deadline.
    pidfd = os.pidfd_open(pid)
    exited, exited_at = False, 0.0
    while open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status = "timeout"
            break
        wfds = [in_w] if in_w >= 0 and stdin else []
        rfds = list(open_fds) + ([] if exited else [pidfd])
        readable, writable, _ = select.select(rfds, wfds, [], min(remaining, 1.0) if not exited else 0.02)
        if exited and (not readable or time.monotonic() - exited_at > 0.1):
            break  # the job is over; what its leftovers write is not its output
        if pidfd in readable:
            exited, exited_at = True, time.monotonic()
            readable.remove(pidfd)
        for fd in writable:
            try:
                written = os.write(fd, stdin[:65536])
                stdin = stdin[written:]
            except OSError:
                stdin = b""
            if not stdin:
                os.close(in_w)
                in_w = -1
        for fd in readable:
            data = os.read(fd, 65536)
            if not data:
                open_fds.discard(fd)
                continue
            if fd == res_r:
                if len(records) < 16 * 1024 * 1024:
                    records += data
            else:
                caps[fd].add(data)
        if sum(cap.total for cap in caps.values()) > hard_limit:
            status = "output_limit"
            break
    if status is not None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    _, wait_status, usage = os.wait4(pid, 0)
    os.close(pidfd)
    wall = time.monotonic() - started
    if in_w >= 0:
        os.close(in_w)
    for fd in (out_r, err_r, res_r):
        try:
            # Non-blocking: a leftover process may still hold the pipe's other end.
            os.set_blocking(fd, False)
            while fd in open_fds and status is None:
                data = os.read(fd, 65536)
                if not data:
                    break
                if fd == res_r:
                    records += data
                else:
                    caps[fd].add(data)
        except (BlockingIOError, OSError):
            pass
        os.close(fd)
    _sweep()
    _cleanup_later(workdir)

    parsed = []
    for line in bytes(records).splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pass
    error = next((r["error"] for r in parsed if r.get("kind") == "error"), None)
    value = next((r["text"] for r in parsed if r.get("kind") == "value"), None)
    tests = [r for r in parsed if r.get("kind") == "test"]
    exit_code = None
    signame = None
    if os.WIFEXITED(wait_status):
        exit_code = os.WEXITSTATUS(wait_status)
    elif os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        exit_code = -sig
        signame = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    if status is None:
        if exit_code == 0:
            status = "ok"
        elif error is not None and error.get("name") == "MemoryError":
            status = "out_of_memory"
        elif signame == "SIGKILL" and _oom_kills() > oom_before:
            status = "out_of_memory"  # the container's OOM killer ended it: counted, not guessed
        elif signame == "SIGXCPU":
            status = "timeout"
        elif signame is not None:
            status = "crashed"
        else:
            status = "error"
    stdout, out_dropped = caps[out_r].text()
    stderr, err_dropped = caps[err_r].text()
    return {
        "id": job.get("id"),
        "status": status,
        "stdout": stdout,
        "stderr": stderr,
        "error": error,
        "value": value,
        "exit_code": exit_code,
        "signal": signame,
        "wall_ms": round(wall * 1000, 3),
        "cpu_ms": round((usage.ru_utime + usage.ru_stime) * 1000, 3),
        "peak_memory_bytes": usage.ru_maxrss * 1024,
        "truncated": bool(out_dropped or err_dropped),
        "dropped_bytes": out_dropped + err_dropped,
        "tests": tests if job.get("tests") is not None else None,
    }


_CHILD_ENV: dict[str, str] = {}
_JOB_SEQ = 0


def main() -> None:
    global _CHILD_ENV
    for name in filter(None, os.environ.get("EXECBOX_PREIMPORT", "numpy").split(",")):
        try:
            importlib.import_module(name.strip())
        except Exception:
            pass
    _CHILD_ENV = {
        k: v
        for k, v in os.environ.items()
        if k in ("PATH", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "MPLBACKEND")
        or k.endswith("_NUM_THREADS")
    }
    _CHILD_ENV["MPLBACKEND"] = "Agg"
    # Everything imported so far moves to the permanent generation: a child's garbage
    # collections then never walk (and copy-on-write) the parent's whole heap.
    gc.collect()
    gc.freeze()
    os.makedirs(JOBS_DIR, exist_ok=True)
    os.chmod(JOBS_DIR, 0o1733)  # jobs create their own dirs; nobody lists the others
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if os.path.exists(SOCKET_PATH):
        os.unlink(SOCKET_PATH)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(SOCKET_PATH)
    os.chmod(SOCKET_PATH, 0o600)
    server.listen(1)
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    job = json.loads(line)
                    result = run_job(job) if job.get("op") != "ping" else {"id": job.get("id"), "pong": True}
                except Exception as exc:  # a bad job must not end the server
                    result = {"id": None, "status": "error", "error": _error_record(exc), "stdout": "", "stderr": ""}
                stream.write((json.dumps(result, default=repr) + "\n").encode("utf-8", "replace"))
                stream.flush()


if __name__ == "__main__":
    main()
