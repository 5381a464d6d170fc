"""Where a fresh sandbox kernel's boot goes, and the fresh-session figures of issue 16.

Part ``breakdown``: starts kernels the way ``KernelSandboxes.start`` does (same image, same
container arguments from ``containers.py``, same connection and warm-up) but step by step, and
times each step from outside:

  engine   docker create / the inspect docker-py's ``containers.create`` does / docker start /
           the inspect ``kernels.py`` does for the init's pid. Wall time of each call, and the
           CPU dockerd + containerd spent meanwhile (sum of ``/proc/<pid>/task/*/schedstat``:
           ns, every thread), and the container's shim with its reaped children (runc create,
           runc start; ``/proc/<shim>/stat`` in clock ticks).
  kernel   timestamps the kernel takes itself, on the same CLOCK_MONOTONIC (no time namespace):
           the container's command is the image's launcher wrapped by a few lines that record
           (monotonic, process CPU) at its first statement, after the launcher's set-up, after
           the pre-imports, after importing ipykernel's app and when the app has initialised;
           the bench reads them back through the kernel once it answers.
  host     first ``kernel_info`` answered (``KernelConnection.wait_ready``), each warm-up cell,
           and the container's own CPU (cgroup v1 ``cpuacct.usage``) at ready and after warm-up.

Part ``engine``: the engine calls of a start, the service's old sequence (docker-py's
``containers.run``: create, inspect, start; then an inspect for the init's pid) against the new
one (``kernels._create_and_start``: create, start; the pid inspect runs while the kernel boots).

Part ``headline`` (a real server, defaults, one persistent HTTP client per loop): sustained
fresh sessions back to back (create -> first result -> delete, never waiting for the pool),
a burst of concurrent creates, the idle-pool path, and ``print(1)`` in an open session vs raw
``jupyter_client`` on a container of the same image.

Part ``cpu`` (a real server per ``--variant``): CPU per fresh session by where it is spent —
dockerd, containerd, the service, the sandboxes (the engine's cgroup ``cpuacct.usage``), and
the rest of the machine (mostly the shims with the runc / CRIU / runtime-wrapper children they
reap, which exit with each container) — over back-to-back sessions with a pool large enough
that none waits. This is the breakdown of a restore next to a boot.

The machine is shared: every run prints the load average; compare figures of one run only.
Run: ``python bench/bench_boot.py [breakdown|engine|headline|all]`` (as root, like the service).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
sys.path.insert(0, str(Path(__file__).parent))  # _util, bench_core

import docker

from _util import header, pct, raw_print1_trips
from execbox_server.backends.base import SandboxSpec
from execbox_server.backends.docker.containers import SANDBOX_UID, container_args, sandbox_message_cap
from execbox_server.backends.docker.kernels import _WARM_UP, seal_dir
from execbox_server.kernel import ConnectionFiles, KernelConnection, Reply, Stream
from execbox_server.settings import Settings

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The image's launcher with timestamps: main() runs unchanged, its steps are wrapped. The marks
# land in builtins (never a file: the host reads nothing the sandbox can write) and are printed
# by a cell once the kernel answers.
_WRAPPER = r"""
import time as _t
_m = [("first_statement", _t.monotonic(), _t.process_time())]
import builtins, sys
sys.path.insert(0, "/opt/execbox")
import execbox_kernel as _k
def _mark(name):
    _m.append((name, _t.monotonic(), _t.process_time()))
def _wrap(fn, name):
    def inner(*a, **kw):
        r = fn(*a, **kw)
        _mark(name)
        return r
    return inner
_k._install_output_caps = _wrap(_k._install_output_caps, "setup")
_pre = _k._preimport
def _preimport():
    _pre()
    _mark("preimport")
    from ipykernel import kernelapp
    _mark("ipykernel_import")
    _start = kernelapp.IPKernelApp.start
    def start(self):
        _mark("app_initialized")
        return _start(self)
    kernelapp.IPKernelApp.start = start
_k._preimport = _preimport
builtins._xb_boot = _m
_k.main()
"""


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def task_cpu_ns(pid: int | None) -> int:
    """CPU time of every thread of ``pid`` in ns (schedstat), 0 when it is gone."""
    if pid is None:
        return 0
    total = 0
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                total += int(Path(task.path, "schedstat").read_text().split()[0])
    return total


def proc_cpu_with_children_ns(pid: int | None) -> int:
    """utime+stime+cutime+cstime of ``pid`` in ns (clock ticks: 10 ms resolution)."""
    if pid is None:
        return 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    ticks = sum(int(f) for f in fields[11:15])
    return ticks * 1_000_000_000 // CLK_TCK


def find_shim(container_id: str) -> int | None:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(entry.path, "cmdline").read_bytes()
            if b"containerd-shim" in cmd and container_id.encode() in cmd:
                return int(entry.name)
    return None


def cgroup_cpu_ns(container_id: str) -> int:
    for base in ("/sys/fs/cgroup/cpuacct/docker", "/sys/fs/cgroup/cpu/docker"):
        with contextlib.suppress(OSError, ValueError):
            return int(Path(base, container_id, "cpuacct.usage").read_text())
    return 0


@dataclass
class Boot:
    wall: dict[str, float] = field(default_factory=dict)  # step -> seconds
    cpu: dict[str, float] = field(default_factory=dict)  # step -> CPU seconds


class EngineCPU:
    def __init__(self, exec_root: Path) -> None:
        # dockerd's pid file sits next to its exec root (/var/run/docker.pid), containerd's in it.
        self.dockerd = _read_pid(Path(f"{exec_root}.pid"))
        self.containerd = _read_pid(exec_root / "containerd" / "containerd.pid")

    def ns(self) -> int:
        return task_cpu_ns(self.dockerd) + task_cpu_ns(self.containerd)


async def boot_once(
    client: docker.DockerClient,
    settings: Settings,
    kernels_dir: Path,
    engine_cpu: EngineCPU,
    runtime: str | None,
    shares: int | None,
) -> Boot:
    b = Boot()
    kernel_id = secrets.token_hex(6)
    files = ConnectionFiles.create(kernels_dir / kernel_id, sandbox_uid=SANDBOX_UID)
    spec = SandboxSpec(memory_mb=settings.memory_mb, cpus=settings.cpus)
    args = container_args(settings, "bench16", kernel_id, spec, files.host_dir, role="kernel")
    args.pop("detach")
    if shares is not None:
        args["cpu_shares"] = shares
    command = ["/opt/venv/bin/python", "-c", _WRAPPER, "-f", "/kernel/connection.json"]
    create_kwargs, host_config = _split_args(client, args, command, runtime)
    api = client.api
    container_id = ""
    conn: KernelConnection | None = None
    try:
        t, e = time.monotonic(), engine_cpu.ns()
        container_id = api.create_container(host_config=host_config, **create_kwargs)["Id"]
        b.wall["engine create"], b.cpu["engine create"] = time.monotonic() - t, (engine_cpu.ns() - e) / 1e9
        t, e = time.monotonic(), engine_cpu.ns()
        api.inspect_container(container_id)  # what docker-py's containers.create() does after creating
        b.wall["engine inspect (docker-py get)"] = time.monotonic() - t
        b.cpu["engine inspect (docker-py get)"] = (engine_cpu.ns() - e) / 1e9
        t, e = time.monotonic(), engine_cpu.ns()
        t_start = t
        api.start(container_id)
        t_started = time.monotonic()
        b.wall["engine start"], b.cpu["engine start"] = t_started - t, (engine_cpu.ns() - e) / 1e9
        shim = find_shim(container_id)
        b.cpu["shim + runc (create, start)"] = proc_cpu_with_children_ns(shim) / 1e9
        t, e = time.monotonic(), engine_cpu.ns()
        api.inspect_container(container_id)  # kernels.py: the init's pid
        b.wall["engine inspect (pid)"], b.cpu["engine inspect (pid)"] = (
            time.monotonic() - t,
            (engine_cpu.ns() - e) / 1e9,
        )
        conn = KernelConnection(files, max_message_bytes=sandbox_message_cap(settings) + (1 << 20))
        deadline = time.monotonic() + 60
        while True:
            try:
                await conn.wait_ready(timeout=1.0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        t_ready = time.monotonic()
        b.cpu["container at first kernel_info"] = cgroup_cpu_ns(container_id) / 1e9
        seal_dir(files.host_dir)
        for i, code in enumerate(_WARM_UP):
            t = time.monotonic()
            await conn.warm_up(code, timeout=60)
            b.wall[f"warm-up cell {i + 1}"] = time.monotonic() - t
        t_warm = time.monotonic()
        b.cpu["container after warm-up"] = cgroup_cpu_ns(container_id) / 1e9
        marks = await _read_marks(conn)
        names = [m[0] for m in marks]
        at = {m[0]: m[1] for m in marks}
        cpu = {m[0]: m[2] for m in marks}
        b.wall["start -> python first statement"] = at["first_statement"] - t_started
        b.cpu["python interpreter start (process CPU)"] = cpu["first_statement"]
        prev = "first_statement"
        labels = {
            "setup": "launcher set-up (privileges, mpl cache, caps)",
            "preimport": "pre-imports (EXECBOX_PREIMPORT)",
            "ipykernel_import": "import ipykernel.kernelapp",
            "app_initialized": "IPKernelApp.initialize (sockets, shell)",
        }
        for name in names[1:]:
            b.wall[labels[name]] = at[name] - at[prev]
            b.cpu[labels[name]] = cpu[name] - cpu[prev]
            prev = name
        b.wall["app start -> first kernel_info answered"] = t_ready - at[prev]
        b.wall["TOTAL create -> first kernel_info"] = t_ready - (
            t_start - b.wall["engine create"] - b.wall["engine inspect (docker-py get)"]
        )
        b.wall["TOTAL create -> warm (in pool)"] = t_warm - (
            t_start - b.wall["engine create"] - b.wall["engine inspect (docker-py get)"]
        )
        return b
    finally:
        if conn is not None:
            conn.close()
        if container_id:
            t, e = time.monotonic(), engine_cpu.ns()
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(container_id, force=True)
            b.wall["engine remove (after)"], b.cpu["engine remove (after)"] = (
                time.monotonic() - t,
                (engine_cpu.ns() - e) / 1e9,
            )
        shutil.rmtree(files.host_dir, ignore_errors=True)


def _split_args(
    client: docker.DockerClient, args: dict[str, Any], command: list[str], runtime: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """containers.run() keyword arguments -> create_container() arguments and a host config,
    with docker-py's own translation (so the container is exactly the service's)."""
    from docker.models.containers import _create_container_args

    kwargs = dict(args)
    kwargs["command"] = command
    if runtime:
        kwargs["runtime"] = runtime
    kwargs["version"] = client.api._version
    create = _create_container_args(kwargs)
    host_config = create.pop("host_config")
    return create, host_config


async def _read_marks(conn: KernelConnection) -> list[tuple[str, float, float]]:
    msg_id = conn.execute("import builtins; print(repr(builtins._xb_boot))")
    out = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        event = await conn.next_event(msg_id, 5)
        if isinstance(event, Stream):
            out.append(event.text)
        if isinstance(event, Reply):
            break
    import ast

    return list(ast.literal_eval("".join(out)))


def print_breakdown(boots: list[Boot], label: str) -> None:
    header(f"boot breakdown: {label}, n={len(boots)}, load average {load_average()}")
    steps = list(dict.fromkeys(k for b in boots for k in [*b.wall, *b.cpu]))
    print("| step | wall p50 ms | wall min ms | CPU p50 ms |")
    print("|---|---:|---:|---:|")
    for step in steps:
        walls = [b.wall[step] * 1000 for b in boots if step in b.wall]
        cpus = [b.cpu[step] * 1000 for b in boots if step in b.cpu]
        w50 = f"{statistics.median(walls):.1f}" if walls else ""
        wmin = f"{min(walls):.1f}" if walls else ""
        c50 = f"{statistics.median(cpus):.1f}" if cpus else ""
        print(f"| {step} | {w50} | {wmin} | {c50} |")


def run_engine_ab(n: int, docker_url: str | None, exec_root: Path) -> None:
    """The start's engine calls, old vs new, interleaved: docker-py's ``containers.run`` (create,
    inspect, start) plus the pid inspect on the path, against ``_create_and_start`` (create,
    start). Wall until the kernel could be waited for, and dockerd+containerd CPU meanwhile."""
    from execbox_server.backends.docker.kernels import _create_and_start

    settings = Settings(state_dir=Path(tempfile.mkdtemp(prefix="xb16", dir="/tmp")))
    client = docker.DockerClient(base_url=docker_url) if docker_url else docker.from_env()
    engine_cpu = EngineCPU(exec_root)
    spec = SandboxSpec(memory_mb=settings.memory_mb, cpus=settings.cpus)
    # Never-answering containers are enough here: only the engine's part is timed.
    command = ["/opt/venv/bin/python", "-c", "import time; time.sleep(60)"]
    walls: dict[str, list[float]] = {"old": [], "new": []}
    cpus: dict[str, list[float]] = {"old": [], "new": []}
    try:
        for _ in range(n):
            for variant in ("old", "new"):
                sid = secrets.token_hex(6)
                host_dir = settings.state_dir / sid
                host_dir.mkdir(parents=True)
                args = {**container_args(settings, "bench16", sid, spec, host_dir, role="kernel"), "command": command}
                t, e = time.monotonic(), engine_cpu.ns()
                if variant == "old":
                    container_id = str(client.containers.run(**args).id)
                    client.api.inspect_container(container_id)
                else:
                    container_id = _create_and_start(client, args)
                walls[variant].append(time.monotonic() - t)
                cpus[variant].append((engine_cpu.ns() - e) / 1e9)
                client.api.remove_container(container_id, force=True)
    finally:
        client.close()
        shutil.rmtree(settings.state_dir, ignore_errors=True)
    header(f"engine calls on a kernel start, old vs new, n={n}, load average {load_average()}")
    print("| start path | engine calls on the path | wall p50 ms | wall min ms | dockerd+containerd CPU p50 ms |")
    print("|---|---:|---:|---:|---:|")
    for variant, calls in (("old", "create, inspect, start, inspect"), ("new", "create, start")):
        w, c = walls[variant], cpus[variant]
        print(f"| {variant} | {calls} | {_ms(w, 50)} | {min(w) * 1000:.1f} | {_ms(c, 50)} |")


# ---------------------------------------------------------------------------- headline


@contextlib.contextmanager
def _server(settings: dict[str, str]) -> Iterator[Any]:
    from tests.support.server import local_server

    with tempfile.TemporaryDirectory() as tmp, local_server(Path(tmp) / "server.log", **settings) as server:
        yield server


def _sessions_back_to_back(url: str, count: int) -> tuple[list[float], float, int]:
    from execbox import Client

    times: list[float] = []
    failures = 0
    with Client(url, timeout=120) as client:
        t_all = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            try:
                session = client.session()
                ex = session.run("1")
                times.append(time.perf_counter() - t0)
                if ex.text != "1":
                    failures += 1
                session.close()
            except Exception:
                failures += 1
        elapsed = time.perf_counter() - t_all
    return times, count / elapsed, failures


def _burst(url: str, count: int) -> tuple[list[float], int, float]:
    from execbox import AsyncClient

    async def one(client: AsyncClient) -> float | None:
        t0 = time.perf_counter()
        try:
            session = await client.session()
            ex = await session.run("1")
            dt = time.perf_counter() - t0
            await session.close()
            return dt if ex.text == "1" else None
        except Exception:
            return None

    async def go() -> tuple[list[float | None], float]:
        async with AsyncClient(url, timeout=120) as client:
            t0 = time.perf_counter()
            done = await asyncio.gather(*(one(client) for _ in range(count)))
            return list(done), time.perf_counter() - t0

    done, elapsed = asyncio.run(go())
    ok = [d for d in done if d is not None]
    return ok, count - len(ok), elapsed


def _raw_host_rtt(count: int) -> list[float]:
    """``print(1)`` through raw jupyter_client against an ipykernel on the host (no container), IPC."""
    import jupyter_client

    with tempfile.TemporaryDirectory() as tmp:
        km = jupyter_client.KernelManager(kernel_name="python3", transport="ipc", ip=f"{tmp}/k")
        km.start_kernel()
        try:
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=120)
            times = raw_print1_trips(kc, count)
            kc.stop_channels()
            return times
        finally:
            km.shutdown_kernel(now=True)


def _ms(values: list[float], p: float) -> str:
    return f"{pct(values, p) * 1000:.1f}" if values else "n/a"


def _row(figure: str, value: str, goal: str) -> None:
    print(f"| {figure} | {value} | {goal} | {load_average()} |", flush=True)


def run_headline(
    n_sustained: int, n_burst: int, n_idle: int, n_rtt: int, extra: dict[str, str], server_path: str | None
) -> None:
    """Print each figure as soon as it is measured (a failure later loses nothing).

    ``server_path``: a checkout's ``service`` directory the server imports instead of the installed
    one (a worktree of the baseline commit, say), so two versions are compared in one run.
    """
    import bench_core

    bench_core.RTT_N = n_rtt
    settings = {"acquire_timeout_s": "120", **extra}
    if server_path:
        os.environ["PYTHONPATH"] = server_path
    else:
        os.environ.pop("PYTHONPATH", None)
    header(
        f"fresh sessions: server {server_path or 'installed'}, settings {extra or 'defaults'}, acquire_timeout_s 120"
    )
    print("| figure | value | goal | load average |")
    print("|---|---:|---:|---|", flush=True)
    with _server(settings) as server:
        # Settle: the pool's first fill is not part of any figure.
        bench_core.wait_pool(server.url, 2)
        idle = bench_core.bench_warm(server.url, n_idle)
        _row("idle pool: create -> first result p50", f"{_ms(idle, 50)} ms (p90 {_ms(idle, 90)})", "<= 20 ms")
        rest = bench_core.bench_rest_rtt(server.url)
        _row("print(1) REST in an open session p50", f"{_ms(rest, 50)} ms (p90 {_ms(rest, 90)})", "<= raw")
        bench_core.wait_pool(server.url, 2)
        times, rate, failed = _sessions_back_to_back(server.url, n_sustained)
        _row("sustained back to back: rate", f"{rate:.2f}/s (n={len(times)}, failed {failed})", ">= 10/s")
        _row("sustained: create -> first result p50", f"{_ms(times, 50)} ms (p90 {_ms(times, 90)})", "<= 100 ms")
        bench_core.wait_pool(server.url, 2)
        times, failed, elapsed = _burst(server.url, n_burst)
        _row(
            f"burst of {n_burst} concurrent creates: p99",
            f"{_ms(times, 99)} ms (p50 {_ms(times, 50)}, served {len(times)}, failed {failed}, "
            f"all done in {elapsed:.1f} s)",
            "<= 5000 ms",
        )


def _machine_cpu_s() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    """A process's CPU with its reaped children's, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _cpu_snapshot(engine: EngineCPU, server_pid: int, cgroup: Path) -> tuple[float, ...]:
    """CPU seconds so far: dockerd, containerd, the service, the sandboxes, the whole machine."""
    return (
        _proc_cpu_s(engine.dockerd),
        _proc_cpu_s(engine.containerd),
        _proc_cpu_s(server_pid),
        int(cgroup.read_text()) / 1e9,
        _machine_cpu_s(),
    )


def run_cpu(n: int, variants: list[tuple[str, dict[str, str]]], exec_root: Path) -> None:
    from execbox import Client

    engine = EngineCPU(exec_root)
    cgroup = Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")
    header(f"CPU per fresh session, {n} back to back per variant (a pool of 8, never waited for)")
    print("| variant | sessions/s | dockerd | containerd | service | sandboxes | rest (shims, runc, CRIU) | total |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for name, settings in variants:
        settings = {"min_ready": "8", "max_starting": "8", "acquire_timeout_s": "120", **settings}
        with _server(settings) as server, Client(server.url, timeout=120) as client:
            from bench_core import wait_pool

            wait_pool(server.url, 8)
            before = _cpu_snapshot(engine, server.proc.pid, cgroup)
            t0 = time.perf_counter()
            for _ in range(n):
                session = client.session()
                session.run("1")
                session.close()
            elapsed = time.perf_counter() - t0
            wait_pool(server.url, 8)  # the refills of those sessions, and their removals, done
            after = _cpu_snapshot(engine, server.proc.pid, cgroup)
        d = [(a - b) / n * 1000 for a, b in zip(after, before, strict=True)]
        rest = d[4] - sum(d[:4])
        print(
            f"| {name} | {n / elapsed:.2f} | {d[0]:.0f} ms | {d[1]:.0f} ms | {d[2]:.0f} ms | {d[3]:.0f} ms | "
            f"{rest:.0f} ms | {d[4]:.0f} ms |",
            flush=True,
        )
    print(f"load average after: {load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", default="all", choices=["breakdown", "engine", "headline", "cpu", "all"])
    parser.add_argument("-n", type=int, default=int(os.environ.get("BENCH_BOOT_N", "8")))
    parser.add_argument("--docker-url", default=None, help="engine to start containers on (default: DOCKER_HOST)")
    parser.add_argument("--exec-root", default="/var/run/docker", help="that engine's exec root (for its pids)")
    parser.add_argument(
        "--runtime", action="append", default=[], help="OCI runtime(s) to compare (default: the engine's)"
    )
    parser.add_argument(
        "--shares",
        action="append",
        type=int,
        default=[],
        help="CPU weight(s) of the booting container (default: a spare's)",
    )
    parser.add_argument("--sustained", type=int, default=40)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--idle", type=int, default=20)
    parser.add_argument("--rtt", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], help="server setting k=v (without EXECBOX_)")
    parser.add_argument(
        "--server-path", action="append", default=[], help="a checkout's service/ dir to run the server from (repeat)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="headline once per variant, same run: NAME:k=v,k=v (e.g. boot:restore=off restore:restore=auto)",
    )
    parser.add_argument("--skip-raw", action="store_true", help="no raw jupyter_client baseline")
    args = parser.parse_args()
    if args.part in ("breakdown", "all"):
        variants = [(r, s) for r in args.runtime or [None] for s in args.shares or [None]]
        # Interleaved, so a change in the machine's load hits every variant alike.
        results: dict[tuple[str | None, int | None], list[Boot]] = {v: [] for v in variants}
        for _ in range(args.n):
            for v in variants:
                results[v] += _boots(1, args.docker_url, Path(args.exec_root), *v)
        for (r, s), boots in results.items():
            print_breakdown(boots, f"runtime {r or 'default'}, cpu shares {s or 'spare (128)'}")
    if args.part in ("engine", "all"):
        run_engine_ab(args.n, args.docker_url, Path(args.exec_root))
    named = [(v.split(":", 1)[0], _kvs(v.split(":", 1)[1] if ":" in v else "")) for v in args.variant]
    if args.part == "cpu":
        run_cpu(args.n, named or [("boot", {"restore": "off"}), ("restore", {"restore": "auto"})], Path(args.exec_root))
    if args.part in ("headline", "all"):
        extra = dict(kv.split("=", 1) for kv in args.set)
        variants = [v.split(":", 1) for v in args.variant] or [["", ""]]
        for path in args.server_path or [None]:
            for name, kvs in variants:
                settings = {**extra, **_kvs(kvs)}
                if name:
                    header(f"variant {name}")
                run_headline(args.sustained, args.burst, args.idle, args.rtt, settings, path)
        if not args.skip_raw:
            raw = _raw_host_rtt(args.rtt)
            _row("print(1) raw jupyter_client, host kernel p50", f"{_ms(raw, 50)} ms (p90 {_ms(raw, 90)})", "")


def _kvs(text: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def _boots(n: int, docker_url: str | None, exec_root: Path, runtime: str | None, shares: int | None) -> list[Boot]:
    settings = Settings(state_dir=Path(tempfile.mkdtemp(prefix="xb16", dir="/tmp")))
    kernels_dir = settings.state_dir / "k"
    kernels_dir.mkdir(parents=True)
    settings.state_dir.chmod(0o711)
    kernels_dir.chmod(0o711)
    client = docker.DockerClient(base_url=docker_url) if docker_url else docker.from_env()
    engine_cpu = EngineCPU(exec_root)
    try:
        return [asyncio.run(boot_once(client, settings, kernels_dir, engine_cpu, runtime, shares)) for _ in range(n)]
    finally:
        client.close()


if __name__ == "__main__":
    main()
