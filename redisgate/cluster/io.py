"""The I/O side of Redis Cluster support (asyncio): the proxy-wide slot map (`ClusterMap`) and
one client connection's connections to the nodes (`ClusterUpstream`).

This is the one module of the subpackage that opens sockets, reads clocks and logs; the
decisions are in `router.Router` (per client) and `topology` (the map).

* `ClusterMap`: discovery from `upstream.cluster.seeds` (then the known nodes) with `CLUSTER
  SLOTS` through the proxy's own upstream identity, a refresh every `refresh`, and one soon (at
  most every `MIN_REFRESH_GAP`) after every MOVED and every node that cannot be reached. It
  reports, with the node's address, in the log and as an audit event (audit.CLUSTER_EVENTS), and
  counts in metrics (the ``redisgate_cluster_*`` families, no address in a label): nodes that
  cannot be reached (reported once per `LOG_EVERY` per node, every one counted), refreshes that
  fail, slots that changed master (a failover: the new master was the old one's replica; else a
  resharding), slots left without a master, and MOVED storms (more than `STORM` redirects
  followed within a second: reported once a second).
* `ClusterUpstream`: what server.ClientConnection sees as its upstream connection (and its
  transport: `write`, `close`, `pause_reading`, ...). Bytes the session writes go to the client's
  Router; the Router's sends go to this client's connection to each node (`NodeLink`, opened on
  first use); the nodes' bytes go back through the Router, whose in-order output reaches the
  session as if from one Redis. A node that cannot be reached, or whose connection is lost,
  fails only the commands sent to it (an `-ERR redisgate: cluster node ... unavailable` each);
  unless the client's transaction, WATCH or subscriptions lived there: then the client's
  upstream fails as a whole (the session closes the client, as after a Redis restart).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter

import hiredis

from ..telemetry import audit, metrics
from ..io import dial
from ..protocol import handshake
from ..io.dial import connect_error
from ..io.flow import Hold
from .router import Hop, Router
from .topology import NodeAddr, Redirect, RedirectKind, Topology, TopologyError, \
    topology_from_slots

log = logging.getLogger("redisgate")

MIN_REFRESH_GAP = 0.2     # seconds between two refreshes asked by events (MOVED, unreachable)
LOG_EVERY = 5.0           # seconds: one "unreachable" line per node at most this often
STORM = 100               # MOVED/ASK followed per second past which a storm is logged
STORM_HOPS = 64           # distinct (kind, from, to) counted per storm window (the rest: not named)
MAX_LOGGED = 1024         # nodes remembered for LOG_EVERY (past that the memory starts again)


class ClusterMap:
    """The proxy's view of the cluster (router.View): see the module docstring."""

    def __init__(self, proxy, settings):
        self.proxy = proxy
        self.seeds = tuple(NodeAddr(h, p) for h, p in settings.seeds)
        self.refresh_every = settings.refresh
        self.topology: Topology | None = None
        self._masters: tuple[NodeAddr, ...] = ()
        self._moved: dict[int, NodeAddr] = {}
        self._task: asyncio.Task | None = None
        self._periodic: asyncio.Task | None = None
        self._again = False
        self._last = 0.0
        self._logged: dict[object, float] = {}   # node (or (node, stage)) -> last reported
        self._storm_start = 0.0
        self._storm_count = 0
        self._storm_hops: Counter = Counter()   # Hop -> redirects in this storm window
        self._storm_asks = 0                    # ... of which ASK (all, not only those named)
        self._storm_logged = 0.0
        self.refreshes = 0
        # upstream.multiplex: per (node, RESP3?), that many server.SharedLink
        self._links: dict[tuple[NodeAddr, bool], list] = {}
        self.followed: Counter = Counter()   # redirects followed, by kind (moved, ask)
        self.closed = False

    # -- router.View

    def master_for(self, slot: int) -> NodeAddr | None:
        node = self._moved.get(slot)
        if node is not None:
            return node
        t = self.topology
        return t.master_for(slot) if t is not None else None

    def masters(self) -> tuple[NodeAddr, ...]:
        return self._masters

    def moved(self, redirect: Redirect) -> None:
        if len(self._moved) < 16384:
            self._moved[redirect.slot] = redirect.node
        self.refresh_soon()

    def setup_commands(self) -> list[bytes]:
        """The proxy's handshake on a node connection (handshake.setup: AUTH; db 0 only)."""
        return [step.command for step in handshake.setup(self.proxy.gate.config.upstream,
                                                         select=False)]

    # -- events

    def report(self, router: Router, client) -> None:
        """Take what a client's Router noted since the last call (ClusterUpstream's and
        ClusterShared's one place for it): its log lines, logged with the client, and the
        redirects it followed (`redirects`)."""
        if router.log:
            for problem in router.log:
                log.error("%s (client %s)", problem.line(), client.session.client_info)
                self._node_error(problem.node, problem.detail, problem.stage)
            router.log.clear()
        if router.redirected:
            hops, router.redirected = router.redirected, {}
            self.redirects(hops)

    def redirects(self, hops: dict[Hop, int]) -> None:
        """MOVED / ASK followed (per Hop, how many): counted by kind; a storm (past STORM within
        a second) is reported once a second, naming the nodes that redirected most."""
        asks = sum(n for hop, n in hops.items() if hop.kind is RedirectKind.ASK)
        n = sum(hops.values())
        self.followed["ask"] += asks
        self.followed["moved"] += n - asks
        if asks:
            metrics.CLUSTER_REDIRECTS.labels("ask").inc(asks)
        if n - asks:
            metrics.CLUSTER_REDIRECTS.labels("moved").inc(n - asks)
        now = time.monotonic()
        if now - self._storm_start >= 1.0:
            self._storm_start, self._storm_count, self._storm_asks = now, 0, 0
            self._storm_hops.clear()
        self._storm_count += n
        self._storm_asks += asks
        window = self._storm_hops
        for hop, k in hops.items():
            if hop in window or len(window) < STORM_HOPS:
                window[hop] += k
        if self._storm_count > STORM and now - self._storm_logged >= 1.0:
            self._storm_logged = now
            self._storm()

    def _storm(self) -> None:
        window = self._storm_hops
        top = window.most_common(8)
        pairs = tuple(f"{audit.safe(str(h.source))}->{audit.safe(str(h.target))}"
                      for h, _ in top)
        asks = self._storm_asks
        metrics.CLUSTER_STORMS.inc()
        log.warning("cluster: MOVED/ASK storm: %d redirects followed within a second (a "
                    "resharding under way, or a stale slot map); most: %s", self._storm_count,
                    ", ".join(f"{h.kind.name} {h.source} -> {h.target} x{k}" for h, k in top))
        audit.emit(audit.Event("cluster-redirect-storm", count=self._storm_count,
                               moved=self._storm_count - asks, ask=asks, nodes=pairs))

    def unreachable(self, node: NodeAddr, reason: str, stage: str = "connect") -> None:
        """A connection to `node` could not be opened (stage ``connect``), was lost (``lost``),
        or the node did not answer a refresh (``refresh``): counted every time, reported once
        per LOG_EVERY per node; the map is refreshed soon (but for ``refresh``: it is being).
        (A Router's `NodeProblem`s, stages ``login`` and ``protocol``: `report`.)"""
        if self.closed:
            return   # (the proxy is stopping: its own links are being closed)
        self._node_error(node, reason, stage)
        if stage != "refresh":
            self.refresh_soon()

    def _node_error(self, node: NodeAddr, reason: str, stage: str) -> None:
        """Count a node's failure; report it (audit, and the log for the unreachable stages:
        a Router's problems were logged with their client) once per LOG_EVERY per node (per
        node and stage for ``login`` / ``protocol``)."""
        metrics.CLUSTER_NODE_ERRORS.labels(stage).inc()
        unreachable = stage in ("connect", "lost", "refresh")
        key = node if unreachable else (node, stage)
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY) < LOG_EVERY:
            return
        if len(self._logged) >= MAX_LOGGED:
            self._logged.clear()
        self._logged[key] = now
        if unreachable:
            log.warning("cluster node %s unreachable: %s", node, reason)
            metrics.inc("upstream_errors", "connect")
        audit.emit(audit.Event("cluster-node-unreachable", node=audit.safe(str(node)),
                               stage=stage, reason=audit.safe(reason, spaces=True)))

    # -- refreshing the map

    async def start(self) -> None:
        await self.refresh()
        self._periodic = self.proxy.tasks.spawn(self._every())

    async def _every(self) -> None:
        while not self.closed:
            await asyncio.sleep(max(self.refresh_every, MIN_REFRESH_GAP))
            self.refresh_soon()

    def refresh_soon(self) -> None:
        if self.closed:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = self.proxy.tasks.spawn(self._refresh_later())

    async def _refresh_later(self) -> None:
        while True:
            wait = self._last + MIN_REFRESH_GAP - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._again = False
            await self.refresh()
            if not self._again or self.closed:
                return

    async def ready(self, timeout: float) -> bool:
        """Whether there is a slot map (one refresh is tried, within `timeout`, when not)."""
        if self.topology is None:
            try:
                await asyncio.wait_for(self.refresh(), timeout)
            except asyncio.TimeoutError:
                pass
        return self.topology is not None

    async def refresh(self) -> bool:
        """Ask the known nodes (masters, replicas, then the seeds) for CLUSTER SLOTS, one after
        the other, until one answers; adopt its map. False (logged) when none did."""
        self._last = time.monotonic()
        candidates: list[NodeAddr] = []
        for node in (self.topology.nodes() if self.topology is not None else ()) + self.seeds:
            if node not in candidates:
                candidates.append(node)
        failures = []
        for node in candidates:
            try:
                topology = await self._ask(node)
            except (OSError, asyncio.TimeoutError, ssl.SSLError, ConnectionError,
                    TopologyError, hiredis.ProtocolError) as e:
                failures.append(f"{node} ({connect_error(e)})")
                self.unreachable(node, connect_error(e), stage="refresh")
                continue
            if not topology.shards:
                failures.append(f"{node} (no slots assigned)")
                continue
            metrics.CLUSTER_REFRESHES.labels("ok").inc()
            self._adopt(topology, node)
            return True
        metrics.CLUSTER_REFRESHES.labels("failed").inc()
        if failures and not self.closed:
            log.error("cluster: refreshing the slot map failed: %s", "; ".join(failures[:8]))
            audit.emit(audit.Event("cluster-refresh-failed", problems=tuple(
                audit.safe(f, spaces=True) for f in failures[:8])))
        return False

    async def _ask(self, node: NodeAddr) -> Topology:
        up = self.proxy.gate.config.upstream
        ssl_ctx, server_hostname = self.proxy.upstream_ssl(node.host)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(node.host, node.port, ssl=ssl_ctx,
                                    server_hostname=server_hostname),
            up.connect_timeout)
        try:
            replies = await asyncio.wait_for(
                dial.ask(reader, writer, up, [b"CLUSTER", b"SLOTS"]), up.connect_timeout)
            for r in replies[:-1]:
                if isinstance(r, hiredis.ReplyError):
                    raise TopologyError(f"the proxy's authentication was refused: {str(r)[:200]}")
            return topology_from_slots(replies[-1], node)
        finally:
            writer.close()

    def _adopt(self, new: Topology, source: NodeAddr) -> None:
        old = self.topology
        self.topology = new
        self._masters = new.masters
        self._moved.clear()
        self.refreshes += 1
        if self._links:   # a node that left the cluster: its shared links go (only its own)
            self._close_links(set(new.nodes()))
        if old is None:
            log.info("cluster: slot map from %s: masters %s; %d replicas%s", source,
                     ", ".join(map(str, new.masters)), sum(len(s.replicas) for s in new.shards),
                     "" if new.covered else f"; {new.owner.count(-1)} slots have no master")
            return
        if old.owner == new.owner and old.shards == new.shards:
            return
        moved: Counter = Counter()
        om, nm = old.owner, new.owner
        for s in range(len(om)):
            a = old.shards[om[s]].master if om[s] >= 0 else None
            b = new.shards[nm[s]].master if nm[s] >= 0 else None
            if a != b:
                moved[(a, b)] += 1
        old_replicas = {s.master: set(s.replicas) for s in old.shards}
        for (a, b), n in sorted(moved.items(), key=lambda kv: str(kv[0])):
            if b is None:
                kind = "unserved"
                log.error("cluster: %d slots of %s have no master now", n, a)
                event = audit.Event("cluster-slots-unserved", previous=_addr(a), slots=n)
            elif a is not None and b in old_replicas.get(a, ()):
                kind = "failover"
                log.warning("cluster: failover: %s replaced %s as master of %d slots", b, a, n)
                event = audit.Event("cluster-failover", node=_addr(b), previous=_addr(a),
                                    slots=n)
            else:
                kind = "reshard"
                log.warning("cluster: %d slots moved from %s to %s (resharding)", n,
                            a or "no master", b)
                event = audit.Event("cluster-slots-moved", node=_addr(b), previous=_addr(a),
                                    slots=n)
            metrics.CLUSTER_OWNER_CHANGES.labels(kind).inc()
            metrics.CLUSTER_SLOTS_CHANGED.labels(kind).inc(n)
            audit.emit(event)
        if not moved and [s.master for s in old.shards] != [s.master for s in new.shards]:
            log.info("cluster: masters now %s", ", ".join(map(str, new.masters)))

    # -- clients

    async def open_client(self, client):
        """(ClusterUpstream, None) for a client connection, or (None, why)."""
        up = self.proxy.gate.config.upstream
        if not await self.ready(up.connect_timeout):
            return None, "no node of the cluster answered CLUSTER SLOTS"
        return ClusterUpstream(client, self), None

    def shared_for(self, client) -> "ClusterShared":
        return ClusterShared(client, self)

    def shared_links(self, node: NodeAddr, resp3: bool) -> list:
        links = self._links.get((node, resp3))
        if links is None:
            from ..io.server import SharedLink   # (here: a cycle, server imports this module)
            n = self.proxy.gate.config.upstream.multiplex
            links = self._links[(node, resp3)] = [
                SharedLink(self.proxy, resp3=resp3, addr=(node.host, node.port)) for _ in range(n)]
        return links

    def _close_links(self, keep: set) -> None:
        for key in [k for k in self._links if k[0] not in keep]:
            for link in self._links.pop(key):
                if link.conn is not None and link.due:
                    # replies still due: it goes when it fails or the proxy stops
                    self._links.setdefault(key, []).append(link)
                    continue
                link.close()
            if not self._links.get(key):
                self._links.pop(key, None)

    def close(self) -> None:
        self.closed = True
        for task in (self._task, self._periodic):
            if task is not None:
                task.cancel()
        for links in self._links.values():
            for link in links:
                link.close()
        self._links.clear()


def _addr(node: NodeAddr | None) -> str | None:
    """A node's address as the audit shows it (None stays None)."""
    return audit.safe(str(node)) if node is not None else None


class NodeLink(asyncio.Protocol):
    """One client's connection to one node."""

    def __init__(self, owner: "ClusterUpstream", node: NodeAddr):
        self.owner = owner
        self.node = node
        self.transport = None
        self.waiting: list[bytes] = []
        self.dead = False
        self.hold = node   # (its source of flow.Hold.UPSTREAM on the client: one per node)

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
        else:
            self.waiting.append(data)

    async def connect(self) -> None:
        proxy = self.owner.cmap.proxy
        up = proxy.gate.config.upstream
        loop = asyncio.get_running_loop()
        try:
            ssl_ctx, server_hostname = proxy.upstream_ssl(self.node.host)
            await asyncio.wait_for(
                loop.create_connection(lambda: self, self.node.host, self.node.port,
                                       ssl=ssl_ctx, server_hostname=server_hostname),
                up.connect_timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            if not self.dead:
                self.owner.link_failed(self, connect_error(e), "connect")

    def connection_made(self, transport) -> None:
        if self.dead:
            transport.close()
            return
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)
        dial.keepalive(transport, self.owner.cmap.proxy.gate.config.upstream.keepalive)
        if self.owner.reading_paused:
            transport.pause_reading()
        if self.waiting:
            transport.write(b"".join(self.waiting))
            self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        if not self.dead:
            self.owner.node_data(self.node, data)

    def connection_lost(self, exc) -> None:
        if not self.dead:
            self.owner.link_failed(self, "connection lost", "lost")

    def pause_writing(self) -> None:
        self.owner.client.hold_input(Hold.UPSTREAM, True, self.hold)

    def resume_writing(self) -> None:
        self.owner.client.hold_input(Hold.UPSTREAM, False, self.hold)

    def close(self) -> None:
        self.dead = True
        self.owner.client.hold_input(Hold.UPSTREAM, False, self.hold)
        if self.transport is not None:
            self.transport.close()


class _Delivery:
    """What ClusterUpstream and ClusterShared share: the Router's replies go to the client at
    once when a node's data brought them, or once on the next loop turn when the client's own
    pump did (`_deliver`, each class's own)."""
    _soon = False

    def _deliver_now_or_soon(self, now: bool) -> None:
        if now:
            self._deliver()
        elif not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        raise NotImplementedError


class ClusterUpstream(_Delivery):
    """One client connection's upstream in cluster mode (and its own transport): see the module
    docstring."""

    def __init__(self, client, cmap: ClusterMap):
        self.client = client
        self.cmap = cmap
        self.router = Router(cmap)
        self.links: dict[NodeAddr, NodeLink] = {}
        self.transport = self
        self.closed = False
        self.reading_paused = False
        self._soon = False

    # -- the transport ClientConnection writes to

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.router.submit(data)
        self._after(now=False)   # (inside the client's pump: replies go out on the next turn)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass   # (each node connection has its own)

    def pause_reading(self) -> None:
        self.reading_paused = True
        for link in self.links.values():
            if link.transport is not None:
                link.transport.pause_reading()

    def resume_reading(self) -> None:
        self.reading_paused = False
        for link in self.links.values():
            if link.transport is not None:
                link.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        for link in self.links.values():
            link.close()
        self.links.clear()

    def is_closing(self) -> bool:
        return self.closed

    # -- the nodes

    def node_data(self, node: NodeAddr, data: bytes) -> None:
        if self.closed:
            return
        self.router.node_data(node, data)
        self._after(now=True)

    def link_failed(self, link: NodeLink, reason: str, stage: str) -> None:
        if self.closed or self.links.get(link.node) is not link:
            return
        del self.links[link.node]
        link.close()
        self.cmap.unreachable(link.node, reason, stage)
        self.router.node_failed(link.node, reason)
        self._after(now=True)

    def _after(self, now: bool) -> None:
        router = self.router
        self.cmap.report(router, self.client)
        for node, chunks in router.take_sends().items():
            link = self.links.get(node)
            if link is None:
                link = self.links[node] = NodeLink(self, node)
                self.cmap.proxy.tasks.spawn(link.connect())
            link.send(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if router.fatal is not None or router.out:
            self._deliver_now_or_soon(now)

    def _deliver(self) -> None:
        self._soon = False
        client = self.client
        if self.closed or client.upstream is not self:
            return
        out = self.router.take_out()
        if out:
            client.upstream_data(out[0] if len(out) == 1 else b"".join(out))
        fatal = self.router.fatal
        if fatal is not None and not self.closed and client.upstream is self:
            self.close()
            client.upstream = None
            client.upstream_write = None
            if not client.closed:
                client.session.upstream_failed(fatal)
                client.pump()


class _NodeOwner:
    """The owner of one client's replies on one node's shared link (mux.Demux routes by it)."""
    __slots__ = ("shared", "node")

    def __init__(self, shared: "ClusterShared", node: NodeAddr):
        self.shared = shared
        self.node = node

    def shared_replies(self, data: bytes, replies: int, whole: bool) -> None:
        self.shared.node_data(self.node, data)

    def shared_link_failed(self, reason: str, established: bool) -> None:
        self.shared.cmap.unreachable(self.node, reason, "lost" if established else "connect")
        self.shared.node_failed(self.node, reason)

    def hold_input(self, reason: Hold, hold: bool, source: object = None) -> None:
        self.shared.client.hold_input(reason, hold, source)


class ClusterShared(_Delivery):
    """What server.ClientConnection sees as its shared link in cluster mode (upstream.multiplex):
    the session's stateless commands go through this client's Router (shared: no login or
    protocol set-up of its own) to the shared links of each node (`ClusterMap.shared_links`);
    the Router's in-order replies come back through `client.shared_replies`, all whole. A lost
    link fails only the commands sent on it (stateless: the client stays)."""

    def __init__(self, client, cmap: ClusterMap):
        self.client = client
        self.cmap = cmap
        self.resp3 = client.session.link_resp3
        self.router = Router(cmap, shared=True)
        self.owners: dict[NodeAddr, _NodeOwner] = {}
        self.used: set = set()
        self._soon = False

    def send(self, client, data: bytes, replies: int, lane=None) -> None:
        # (server.SharedLink.send's signature; `lane`, the client's C lane, is None: no lane in
        # cluster mode)
        self.router.submit(data)
        self._after(now=False)

    def node_data(self, node: NodeAddr, data: bytes) -> None:
        self.router.node_data(node, data)
        self._after(now=True)

    def node_failed(self, node: NodeAddr, reason: str) -> None:
        self.router.node_failed(node, reason)
        self._after(now=True)

    def _after(self, now: bool) -> None:
        router = self.router
        self.cmap.report(router, self.client)
        counts = router.expected
        for node, chunks in router.take_sends().items():
            owner = self.owners.get(node)
            if owner is None:
                owner = self.owners[node] = _NodeOwner(self, node)
            links = self.cmap.shared_links(node, self.resp3)
            link = links[self.client.id % len(links)]
            if link not in self.used:
                self.used.add(link)
                link.clients.add(self.client)
                if link.flow.write_paused:
                    self.client.hold_input(Hold.UPSTREAM, True)
            link.send(owner, chunks[0] if len(chunks) == 1 else b"".join(chunks),
                      counts.get(node, 0))
        if router.fatal is not None:   # (shared: only an internal error can set it)
            log.error("cluster: %s (client %s); closing it", router.fatal,
                      self.client.session.client_info)
            self.client.session.abort()
        if router.out:
            self._deliver_now_or_soon(now)

    def _deliver(self) -> None:
        self._soon = False
        client = self.client
        out = self.router.take_out()
        n, self.router.replies = self.router.replies, 0
        if out and client.link is self:
            client.shared_replies(out[0] if len(out) == 1 else b"".join(out), n, True)
        elif client.session.close:
            client.pump()

    def detach(self, client) -> None:
        for link in self.used:
            link.detach(client)
            for owner in self.owners.values():
                link.detach(owner)
        self.used.clear()
