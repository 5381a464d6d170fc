"""Several real execbox instances on 127.0.0.2, .3, .4 behind a real HAProxy on 127.0.0.1 (tests, bench).

Each instance has its own state dir and node name (the dashed address, as the Helm chart names pods)
and all share the one Docker engine. The proxy's configuration is the Helm chart's, rendered for a
static node list by scripts/render_deploy.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from tests.support.server import LocalServer

__all__ = [
    "Cluster",
    "Node",
    "Proxy",
    "ZoneDns",
    "cluster",
    "ensure_haproxy",
    "free_port_on_all",
    "metric",
    "render_deploy",
    "start_proxy",
    "static_proxy_values",
]

ROOT = Path(__file__).resolve().parents[2]
NODE_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# Three instances warming their pools at once on a busy 2-core machine take a while.
READY_TIMEOUT_S = 300


def render_deploy() -> ModuleType:
    """scripts/render_deploy.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("render_deploy", ROOT / "scripts" / "render_deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("render_deploy", module)
    spec.loader.exec_module(module)
    return module


def ensure_haproxy() -> str:
    """The haproxy binary, installed from Debian when missing (CI runs as root on a clean machine).

    Raises:
        RuntimeError: missing and not installable here.
    """
    found = shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy")
    if found:
        return str(found)
    if os.geteuid() != 0:
        raise RuntimeError("haproxy is not installed: apt-get install haproxy")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "haproxy"]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(install, check=True, env=env, stdout=subprocess.DEVNULL)
    return "/usr/sbin/haproxy"


def free_port_on_all(hosts: Sequence[str]) -> int:
    """A port free on every one of ``hosts`` (the instances share one port on their own addresses)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no port free on all of {hosts}")


@dataclass
class Node:
    """One execbox instance: its name (the node part of its session ids), address and process."""

    name: str
    host: str
    port: int
    state_dir: Path
    log: Path
    settings: dict[str, str]
    server: LocalServer | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, *, wait: bool = True) -> LocalServer:
        env = {**os.environ}
        env.update({f"EXECBOX_{k.upper()}": v for k, v in self.settings.items()})
        env.update(
            EXECBOX_HOST=self.host,
            EXECBOX_PORT=str(self.port),
            EXECBOX_NODE_NAME=self.name,
            EXECBOX_STATE_DIR=str(self.state_dir),
        )
        self.starts += 1
        log = self.log.with_suffix(f".{self.starts}.log")
        proc = subprocess.Popen(
            [sys.executable, "-m", "execbox_server"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        self.server = LocalServer(url=self.url, proc=proc, log=log, env=env)
        if wait:
            try:
                self.server.wait_ready(READY_TIMEOUT_S)
            except BaseException:
                self.server.stop(signal.SIGKILL)
                raise
        return self.server

    def instance(self) -> str:
        """The instance id the running process logged; its containers carry it as a label."""
        assert self.server is not None
        match = re.search(r"execbox instance ([0-9a-f]+)", self.server.log.read_text())
        assert match, f"node {self.name} did not log its instance id"
        return match.group(1)

    def kill(self) -> None:
        """kill -9: no shutdown, its containers stay behind for the next start to reap."""
        assert self.server is not None
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait()


@dataclass
class Proxy:
    url: str
    stats_url: str
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def server_up(self, backend: str, server: str) -> bool:
        """Whether HAProxy's health checks hold ``backend/server`` as UP (its Prometheus exporter)."""
        text = httpx.get(self.stats_url + "/metrics", timeout=5).text
        pattern = f'haproxy_server_status{{proxy="{backend}",server="{server}",state="UP"}} 1'
        return pattern in text

    def servers_up(self, backend: str) -> int:
        text = httpx.get(self.stats_url + "/metrics", timeout=5).text
        return len(re.findall(f'haproxy_server_status{{proxy="{backend}",server="[^"]+",state="UP"}} 1', text))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def wait_server(self, backend: str, server: str, *, up: bool, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_up(backend, server) == up:
                return
            time.sleep(0.1)
        raise RuntimeError(f"HAProxy never saw {backend}/{server} {'up' if up else 'down'}")


@dataclass
class Cluster:
    nodes: list[Node]
    proxy: Proxy
    instances: set[str] = field(default_factory=set)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def metric(url: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """A counter or gauge from an instance's /metrics (summed over the series matching ``labels``)."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        series, _, rest = head.partition("{")
        if series != name:
            continue
        if labels and not all(f'{k}="{v}"' in rest for k, v in labels.items()):
            continue
        total += float(value)
    return total


def static_proxy_values(nodes: Sequence[Node]) -> dict[str, Any]:
    """The chart's values for a proxy on 127.0.0.1 in front of ``nodes`` (static discovery)."""
    render = render_deploy()
    values: dict[str, Any] = render.static_values(
        [(n.name, n.host, n.port) for n in nodes],
        bind="127.0.0.1",
        port=free_port_on_all(["127.0.0.1"]),
        stats_port=free_port_on_all(["127.0.0.1"]),
        maxconn=1000,
    )
    # Faster health checks than the chart's default: the tests wait for HAProxy to see a node go down.
    values["proxy"]["healthCheck"] = {"interval": "500ms", "fall": 2, "rise": 1}
    return values


def start_proxy(values: dict[str, Any], workdir: Path, *, servers_up: int, name: str = "haproxy") -> Proxy:
    """HAProxy with the chart's configuration for ``values``, once ``servers_up`` nodes pass its checks.

    Raises:
        RuntimeError: haproxy exited or never saw the nodes.
    """
    haproxy = ensure_haproxy()
    proxy_values = values["proxy"]
    config = workdir / f"{name}.cfg"
    config.write_text(render_deploy().haproxy_config(values))
    log = workdir / f"{name}.log"
    proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    proxy = Proxy(
        url=f"http://127.0.0.1:{proxy_values['service']['port']}",
        stats_url=f"http://127.0.0.1:{proxy_values['statsPort']}",
        config=config,
        proc=proc,
        log=log,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited:\n{log.read_text()[-3000:]}")
        try:
            if proxy.servers_up("nodes") >= servers_up:
                return proxy
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proxy.stop()
    raise RuntimeError(f"haproxy never saw {servers_up} nodes up:\n{log.read_text()[-3000:]}")


@contextmanager
def cluster(settings: Mapping[str, str], *, count: int = 3, workdir: Path | None = None) -> Iterator[Cluster]:
    """``count`` instances (on 127.0.0.2...) and a proxy; everything stopped and reaped on exit.

    The state dirs are short paths under /tmp (unix socket paths are limited to 107 bytes).
    """
    hosts = NODE_HOSTS[:count]
    port = free_port_on_all(hosts)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ebx-")))
        logs = workdir or tmp
        logs.mkdir(parents=True, exist_ok=True)
        nodes = [
            Node(
                name=host.replace(".", "-"),
                host=host,
                port=port,
                state_dir=tmp / f"s{i}",
                log=logs / f"node{i}",
                settings=dict(settings),
            )
            for i, host in enumerate(hosts)
        ]
        started: list[Node] = []

        def stop_all() -> None:
            for node in started:
                if node.server is not None:
                    node.server.stop()

        stack.callback(stop_all)
        for node in nodes:
            node.state_dir.mkdir()
            node.start(wait=False)
            started.append(node)
        for node in nodes:
            assert node.server is not None
            node.server.wait_ready(READY_TIMEOUT_S)
        proxy = start_proxy(static_proxy_values(nodes), logs, servers_up=len(nodes))
        stack.callback(proxy.stop)
        group = Cluster(nodes=nodes, proxy=proxy, instances={n.instance() for n in nodes})
        yield group


class ZoneDns:
    """A small authoritative DNS server on loopback with a fixed zone of A records, in a thread.

    It stands where CoreDNS stands in Kubernetes, serving what CoreDNS serves for a headless Service:
    ``<service>`` with every endpoint's address and ``<dashed-ip>.<service>`` with one; any other
    name is NXDOMAIN. This lets the chart's DNS-discovery proxy run against real instances here.
    """

    def __init__(self, records: Mapping[str, Sequence[str]]) -> None:
        self.records = {name.lower().rstrip("."): list(addrs) for name, addrs in records.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.queries: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ZoneDns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()  # recvfrom fails, the thread ends
        self._thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                answer = self.answer(packet)
            except (IndexError, struct.error, UnicodeDecodeError):
                continue  # not a query we understand: no answer, as a resolver times out
            try:
                self.sock.sendto(answer, peer)
            except OSError:
                return

    def answer(self, packet: bytes) -> bytes:
        qid, flags = struct.unpack("!HH", packet[:4])
        labels, i = [], 12
        while packet[i]:
            labels.append(packet[i + 1 : i + 1 + packet[i]].decode("ascii"))
            i += 1 + packet[i]
        qtype, _qclass = struct.unpack("!HH", packet[i + 1 : i + 5])
        question = packet[12 : i + 5]
        name = ".".join(labels).lower()
        self.queries.append(name)
        addrs = self.records.get(name)
        rcode = 0 if addrs is not None else 3  # NXDOMAIN
        answers = [a for a in (addrs or []) if qtype == 1]  # A only; AAAA and others: no data
        out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | rcode  # response, authoritative, RD echoed
        body = b"".join(
            struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(a)  # pointer to the question's name
            for a in answers
        )
        return struct.pack("!HHHHHH", qid, out_flags, 1, len(answers), 0, 0) + question + body
