"""Several execbox instances behind one client, without I/O: where each call goes, and what a
node's failure means. The twins probe (``GET /v1/info``) and send; this module decides.

    Client(["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"])

- **Sessions stay where they were made.** A session's kernel lives in one instance, so its
  handle keeps that node and every call of it goes there (the id names the node too:
  ``s_<hex>.<node>``). A node that refuses connections has lost its sessions: their calls
  raise :class:`~execbox.SessionNotFoundError` with reason ``node_unavailable``, never a new
  session on another node.
- **New work goes to the least-loaded healthy node**: one-shot runs and new sessions, scored by
  the node's ``/v1/info`` load (kernels held and awaited) plus what this client sent it since,
  over its kernel capacity. A node that refuses work (connection refused, 503, 429) is skipped
  for the call, which moves on to the next node without counting a retry.
- **Nodes can be discovered by DNS.** ``dns+http://execbox-nodes.ns.svc:8000`` (a Kubernetes
  headless Service) stands for every address the name resolves to, each a node on that port;
  the name is resolved again every :data:`DISCOVERY_TTL_S`, so nodes that join get work and
  nodes that leave get no more (their sessions keep their node until it stops answering).
- **Health is learned from answers and re-probed.** A node that refuses connections is down
  until a probe of ``/v1/info`` answers; probes back off from 1 s to 30 s. Load is refreshed
  when older than :data:`INFO_TTL_S`.
- **Batches are spread** (:class:`Spread`): each node pulls chunks sized to its batch lanes,
  as many at once as its workers can run, so a faster or bigger node takes more; results are
  handed back with their input index. A chunk that fails on a node is sent again elsewhere,
  only its jobs without a result (batch jobs are one-shot programs: running one twice is safe,
  and a result is never reported twice).

One URL (not a ``dns+`` one) is today's client exactly: no probes, no spreading, the same retries.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from execbox._batch import BatchRun, Chunk, callers_mistake
from execbox._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ExecboxError,
    RequestTooLargeError,
    StreamError,
)
from execbox._models import Info, JobResult

__all__ = ["ANY", "Discovery", "Lane", "Node", "NodeSet", "Spread", "Target", "node_of", "parse_urls"]

DEFAULT_URL = "http://127.0.0.1:8000"
# How old a node's load may be before new work is placed by it (one GET /v1/info per node per period).
INFO_TTL_S = 2.0
# A node that refused connections is probed again after this, doubling up to the cap.
PROBE_BACKOFF_S = 1.0
PROBE_BACKOFF_MAX_S = 30.0
# A node that refused work (503, 429) without saying how long: skipped for new work this long.
COOL_DOWN_S = 2.0
# Jobs per batch lane in one chunk: enough that a request's round trip is small beside its work,
# few enough that the chunks of a batch spread over every node and the last one ends soon.
JOBS_PER_LANE = 16
# Chunks one node runs at once: two, so the next is queued while the last jobs of one finish.
MAX_SLOTS = 2
# How often a dns+ URL is resolved again (nodes joining and leaving a Kubernetes DaemonSet).
DISCOVERY_TTL_S = 30.0
DISCOVERY_PREFIX = "dns+"


def parse_urls(base_url: str | Sequence[str] | None) -> list[str]:
    """The client's base URLs: the argument, else ``$EXECBOX_URL`` (commas separate several), else the default.

    Raises:
        ValueError: an empty list, or a URL given twice.
    """
    if base_url is None:
        base_url = os.environ.get("EXECBOX_URL") or DEFAULT_URL
    raw = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [url.strip().rstrip("/") for url in raw if url.strip()]
    if not urls:
        raise ValueError("give at least one execbox URL")
    if len(set(urls)) != len(urls):
        raise ValueError(f"an execbox URL is given twice: {urls}")
    return urls


@dataclass(frozen=True)
class Discovery:
    """A ``dns+http://name:port[/prefix]`` URL: every address ``name`` resolves to is a node."""

    url: str
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Discovery:
        """Raises ValueError: not a ``dns+http(s)://name[:port]`` URL."""
        parts = urlsplit(url.removeprefix(DISCOVERY_PREFIX))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a discovery URL is dns+http://name:port, not {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(url, parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    def urls(self, addresses: Iterable[str]) -> list[str]:
        """The node URLs for the addresses the name resolved to."""
        hosts = sorted({f"[{a}]" if ":" in a else a for a in addresses})
        return [f"{self.scheme}://{host}:{self.port}{self.path}" for host in hosts]


def node_of(session_id: str) -> str | None:
    """The node a session id names (``s_<hex>.<node>``), or None for a single node's id."""
    _, dot, node = session_id.partition(".")
    return node if dot and node else None


@dataclass(eq=False)
class Node:
    """One execbox instance as this client knows it."""

    url: str
    name: str | None = None  # learned from /v1/info, the X-Execbox-Node header or a session id
    info: Info | None = None
    info_at: float = -math.inf
    down: bool = False  # refused connections; probed again from retry_at
    failures: int = 0
    retry_at: float = 0.0
    cool_until: float = 0.0  # refused work (503, 429): no new work until then
    inflight: int = 0  # this client's calls to it now
    placed: int = 0  # new work sent since its load was read
    probing: bool = False

    def __str__(self) -> str:
        return f"node {self.name} ({self.url})" if self.name else self.url

    def usable(self, now: float) -> bool:
        """Healthy, taking work, and not cooling down after a refusal."""
        return not self.down and self.cool_until <= now and (self.info is None or self.info.accepting)

    @property
    def load(self) -> float:
        """How full its kernels are, counting what this client sent it since the load was read."""
        mine = self.inflight + self.placed
        if self.info is None:
            return float(mine)
        held = self.info.load.kernels_leased + self.info.load.kernel_waiters
        return (held + mine) / max(1, self.info.capacity.max_kernels)

    @property
    def lanes(self) -> int:
        return self.info.capacity.batch_lanes if self.info is not None else 4

    @property
    def slots(self) -> int:
        """Chunks it runs at once for this client: no more than its workers can serve in parallel."""
        if self.info is None:
            return 1
        capacity = self.info.capacity
        return max(1, min(MAX_SLOTS, capacity.batch_workers // max(1, capacity.batch_lanes)))

    @property
    def chunk_jobs(self) -> int:
        """Jobs in one chunk sent to it."""
        size = self.lanes * JOBS_PER_LANE
        return min(size, self.info.capacity.batch_max_jobs) if self.info is not None else size

    @property
    def free_workers(self) -> int:
        if self.info is None:
            return 0
        return self.info.capacity.batch_workers - self.info.load.batch_workers_busy


@dataclass(frozen=True)
class Target:
    """Where a call goes: a given node, or (``node`` None) the least-loaded healthy one.

    ``session_id``: the call is bound to that session, so its node being gone means the
    session is lost.
    """

    node: Node | None = None
    session_id: str | None = None


ANY = Target()


class NodeSet:
    """The client's nodes and what it knows of them; safe to share between threads."""

    def __init__(self, urls: Sequence[str], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.discoveries = tuple(Discovery.parse(url) for url in urls if url.startswith(DISCOVERY_PREFIX))
        self._static = [url for url in urls if not url.startswith(DISCOVERY_PREFIX)]
        self.nodes = tuple(Node(url) for url in self._static)
        self._found: dict[Discovery, list[str]] = {}
        self._discovered_at = -math.inf
        self._discovering = False
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def single(self) -> bool:
        """One URL: the client behaves as a single-node client always did (no probes, no spreading)."""
        return len(self.nodes) == 1 and not self.discoveries

    # ------------------------------------------------------------------ choosing

    def pick(self, avoid: Collection[Node] = ()) -> Node:
        """The node for new work: the least-loaded usable one not in ``avoid``; failing that the least
        loaded usable one; failing that the one down the shortest (the call will tell)."""
        if self.single:
            return self.nodes[0]
        with self._lock:
            if not self.nodes:
                names = ", ".join(d.url for d in self.discoveries)
                raise APIConnectionError(f"no execbox node to send to: {names} resolved to no address")
            now = self._clock()
            usable = [n for n in self.nodes if n.usable(now)]
            fresh = [n for n in usable if n not in avoid]
            if fresh or usable:
                node = min(fresh or usable, key=lambda n: (n.load, n.inflight))
            else:
                node = min(self.nodes, key=lambda n: (n.down, max(n.retry_at, n.cool_until)))
            node.placed += 1
            return node

    def has_other(self, avoid: Collection[Node]) -> bool:
        """Whether a usable node outside ``avoid`` is left (a refused call moves there at once)."""
        now = self._clock()
        return any(n.usable(now) and n not in avoid for n in self.nodes)

    def named(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def unnamed(self) -> list[Node]:
        return [n for n in self.nodes if n.name is None]

    def serving(self, url: str) -> Node:
        """The node a request to ``url`` went to (a new one if discovery dropped it meanwhile)."""
        matches = [n for n in self.nodes if url.startswith(n.url)]
        return max(matches, key=lambda n: len(n.url)) if matches else Node(url.split("/v1/", 1)[0])

    def batch_nodes(self) -> list[Node]:
        """Usable nodes that run batch jobs, the most free workers first."""
        now = self._clock()
        nodes = [n for n in self.nodes if n.usable(now) and (n.info is None or n.info.capacity.batch_workers > 0)]
        return sorted(nodes, key=lambda n: -n.free_workers)

    @contextmanager
    def busy(self, node: Node) -> Iterator[None]:
        """Count a call in flight to ``node`` (new work avoids busy nodes between load readings)."""
        with self._lock:
            node.inflight += 1
        try:
            yield
        finally:
            with self._lock:
                node.inflight -= 1

    # ------------------------------------------------------------------ learning

    def discovery_due(self) -> tuple[Discovery, ...]:
        """The ``dns+`` names to resolve now (none, or all once per :data:`DISCOVERY_TTL_S`), claimed."""
        with self._lock:
            if not self.discoveries or self._discovering:
                return ()
            if self._clock() - self._discovered_at < DISCOVERY_TTL_S:
                return ()
            self._discovering = True
            return self.discoveries

    def discovered(self, found: dict[Discovery, list[str] | None]) -> None:
        """The addresses each name resolved to (None: it failed; its previous nodes stay). Nodes
        already known keep what is known of them; nodes no longer listed get no new work."""
        with self._lock:
            self._discovering = False
            self._discovered_at = self._clock()
            for discovery, addresses in found.items():
                if addresses is not None:
                    self._found[discovery] = discovery.urls(addresses)
            known = {node.url: node for node in self.nodes}
            urls = list(dict.fromkeys([*self._static, *(u for d in self.discoveries for u in self._found.get(d, []))]))
            self.nodes = tuple(known.get(url) or Node(url) for url in urls)

    def due(self) -> list[Node]:
        """Nodes to probe now (load older than :data:`INFO_TTL_S`, or down and due again), each
        claimed so that concurrent callers do not probe it twice."""
        if self.single:
            return []
        with self._lock:
            now = self._clock()
            due = [
                n
                for n in self.nodes
                if not n.probing and (n.retry_at <= now if n.down else now - n.info_at >= INFO_TTL_S)
            ]
            for node in due:
                node.probing = True
            return due

    def probed(self, node: Node, info: Info | None) -> None:
        """A probe answered: the node is up; ``info`` is its load (None from a server without /v1/info)."""
        with self._lock:
            node.probing = False
            node.down = False
            node.failures = 0
            node.info = info
            node.info_at = self._clock()
            node.placed = 0
            if info is not None and info.node:
                node.name = info.node

    def reachable(self, node: Node) -> None:
        """``node`` answered a call: whatever refused before, it is up (its load is read at the next probe)."""
        if node.down:
            with self._lock:
                node.down = False
                node.failures = 0

    def unclaim(self, node: Node) -> None:
        """A probe of ``node`` ended, however it ended (cancelled too): it may be claimed again."""
        node.probing = False

    def unreachable(self, node: Node) -> None:
        """The node refused a connection (or a probe failed): down until a later probe answers."""
        with self._lock:
            node.probing = False
            node.down = True
            node.failures += 1
            node.retry_at = self._clock() + min(PROBE_BACKOFF_MAX_S, PROBE_BACKOFF_S * 2 ** (node.failures - 1))

    def refusing(self, node: Node, retry_after: float | None) -> None:
        """The node answered but refused work (overloaded, warming): no new work for a while."""
        with self._lock:
            wait = COOL_DOWN_S if retry_after is None else min(PROBE_BACKOFF_MAX_S, retry_after)
            node.cool_until = max(node.cool_until, self._clock() + wait)

    def named_by(self, node: Node, name: str | None) -> None:
        """Learn ``node``'s name from an ``X-Execbox-Node`` header or a session id it made."""
        if name and node.name != name:
            with self._lock:
                node.name = name


@dataclass(eq=False)
class Lane:
    """One chunk of a batch in flight on one node."""

    node: Node
    chunk: Chunk
    closed: bool = False  # ended (or given up on): anything more it delivers is ignored


@dataclass
class Spread:
    """One batch over several nodes, without I/O. A client drives it::

        while True:
            for lane in spread.plan():        # start each: POST /v1/batch/stream to lane.node
                start(lane)
            yield from spread.ready()
            if not spread.busy:
                break
            lane, item = next event           # a result, the end of a lane, or its failure
            yield from spread.accept(lane, item) / spread.finished(lane) / spread.failed(lane, error)

    A chunk that fails on a node goes back, its jobs without a result first in line, for any
    node to take; after ``max_failovers`` failures in a row with no chunk finishing between them,
    the rest of the batch is marked as service errors, as on one node.

    Memory stays bounded: no chunk is started while the inputs read run more than ``window``
    past the oldest job without a result, so a consumer that restores input order holds at
    most ``window`` results, whatever a slow node does.
    """

    run: BatchRun
    nodes: NodeSet
    concurrency: int | None
    max_failovers: int
    open: list[Lane] = field(default_factory=list)
    failovers: int = 0
    stash: list[JobResult] = field(default_factory=list)
    window: int = field(init=False)

    def __post_init__(self) -> None:
        per_pass = sum(n.slots * n.chunk_jobs for n in self.nodes.nodes)
        self.window = max(self.run.max_chunk_jobs, 8 * per_pass)

    @property
    def busy(self) -> bool:
        return bool(self.open)

    def plan(self) -> list[Lane]:
        """The chunks to start now: one per free slot of each usable node, sized for it."""
        started: list[Lane] = []
        candidates = self.nodes.batch_nodes()
        if not candidates and not self.open:
            # Every node is down or refusing: try the likeliest; its failure counts as a failover.
            try:
                candidates = [self.nodes.pick()]
            except APIConnectionError as exc:  # no node at all (a dns+ name resolving to nothing)
                chunk = self.run.next_chunk()
                if chunk is not None:
                    self.stash.extend(self.run.failed(chunk, exc))
                return started
        for node in candidates:
            slots = 1 if self.concurrency is not None else node.slots
            while sum(1 for lane in self.open if lane.node is node) < slots and self._window_open():
                share = None if self.concurrency is None else max(1, self.concurrency // len(candidates))
                chunk = self.run.next_chunk(max_jobs=node.chunk_jobs, concurrency=share)
                if chunk is None:
                    return started
                lane = Lane(node, chunk)
                self.open.append(lane)
                started.append(lane)
        return started

    def ready(self) -> list[JobResult]:
        """Results made without a node: jobs refused for their size, or a batch with no node to go to."""
        ready, self.stash = self.stash + self.run.ready(), []
        return ready

    def accept(self, lane: Lane, result: JobResult) -> list[JobResult]:
        """A result streamed by ``lane``, with its input index (nothing from a lane given up on)."""
        if lane.closed:
            return []
        try:
            return [self.run.accept(lane.chunk, result)]
        except StreamError as exc:
            return self.failed(lane, exc)

    def finished(self, lane: Lane) -> list[JobResult]:
        """``lane``'s stream ended with its summary."""
        if lane.closed:
            return []
        self._close(lane)
        self.failovers = 0  # the budget is for failures in a row: a long batch may outlive many blips
        return self.run.finished(lane.chunk)

    def failed(self, lane: Lane, error: ExecboxError) -> list[JobResult]:
        """``lane``'s request failed: split it (413), raise (the caller's mistake), send its jobs
        without a result to other nodes, or, with no node left to try, mark them as service errors.

        Raises:
            APIStatusError: a request the server calls wrong (bad key, limits above its maxima).
        """
        if lane.closed:
            return []
        self._close(lane)
        chunk = lane.chunk
        if (isinstance(error, RequestTooLargeError) and not chunk.started) or (
            isinstance(error, APIStatusError) and callers_mistake(error)
        ):
            return list(self.run.failed(chunk, error))
        if isinstance(error, APIConnectionError) and not isinstance(error, APITimeoutError):
            self.nodes.unreachable(lane.node)
        else:
            self.nodes.refusing(lane.node, error.retry_after if isinstance(error, APIStatusError) else None)
        self.failovers += 1
        if self.failovers <= self.max_failovers:
            self.run.requeue(chunk)
            return []
        return list(self.run.failed(chunk, error))

    def close(self) -> None:
        """Give up on every lane in flight (the consumer stopped)."""
        for lane in self.open:
            lane.closed = True
        self.open.clear()

    def _close(self, lane: Lane) -> None:
        lane.closed = True
        self.open.remove(lane)

    def _window_open(self) -> bool:
        if self.run.has_pending:
            return True  # jobs sent again are the oldest: sending them releases results, holds none
        oldest = [i for i in (lane.chunk.oldest_missing for lane in self.open) if i is not None]
        return not oldest or self.run.read - min(oldest) < self.window
