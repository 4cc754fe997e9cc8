"""The asyncio/uvloop layer: it only moves bytes between sockets and ``session.Session``.

One upstream connection per client connection, opened when the session asks for it (after the
client authenticated); or, with ``upstream.multiplex: N``, N shared links (``SharedLink``) that
carry every client's stateless commands until a client needs a connection of its own (see
session.Session.shared and mux.Demux). Writes are coalesced per event-loop turn: each
``data_received`` ends in at most one ``write`` per direction, and a shared link writes what all
its clients sent in one turn at once.

Flow control (see ClientConnection): a client whose replies pile up unread (its transport past
its high-water mark) is no longer read, and its upstream no longer read either on a connection
of its own; the proxy never has more than a window of a client's commands forwarded and
unanswered (a few, for big replies), so what a client that stops reading can make Redis or the
proxy hold is bounded; a client that does not read its errors before login is closed past
PRELOGIN_OUTPUT_LIMIT; and past `limits.memory_budget` of buffered client data in all, no client
is read until it is back under (Proxy.check_budget).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import ssl
from pathlib import Path
from time import perf_counter_ns

import hiredis

from . import dial, pidfile
from ..protocol import errors, handshake, resp
from ..telemetry import metrics
from ..config import Config, ConfigError, load_config
from .flow import FlowControl, Hold
from ..telemetry import audit
from .dial import connect_error
from ..telemetry.audit import Event, Peer, safe
from ..session.gate import Gate
from ..protocol.linkstate import LinkState
from ..protocol.mux import Demux
from .resolver import Endpoint, Resolver, UpstreamChange
from ..protocol.resp import ReplyScanner, UpstreamProtocolError
from ..session import Session
from .tasks import TaskSet

# A client connection's steady state in C (setup.py builds it; optional, and off with
# REDISGATE_PURE_PYTHON=1, or REDISGATE_NO_LANE=1 for this part alone): see _lane.c and
# ClientConnection.arm_lane.
try:
    from .._native._lane import Lane, Router
except ImportError:   # not compiled here: every byte takes the Python path
    Lane = Router = None
if os.environ.get("REDISGATE_PURE_PYTHON") or os.environ.get("REDISGATE_NO_LANE"):
    Lane = Router = None

log = logging.getLogger("redisgate")
_ids = itertools.count(1)


class UpstreamConnection(asyncio.Protocol):
    """The upstream side of one client connection."""

    def __init__(self, client: "ClientConnection"):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.epoch = -1     # the resolver's epoch its dial began in (open_upstream sets it)
        # The event loop calls this (looked up when the transport is made); the lane hands
        # what it does not take to client.upstream_data.
        self.data_received = client.upstream_data if client.lane is None \
            else client.lane.upstream_data

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc) -> None:
        client = self.client
        if client.upstream is self:
            client.disarm_lane()
            client.upstream = None
            client.upstream_write = None
            if not client.closed:
                metrics.inc("upstream_errors", "lost")
                client.session.upstream_failed("connection lost")
                client.pump()

    def pause_writing(self):
        self.client.hold_input(Hold.UPSTREAM, True)

    def resume_writing(self):
        self.client.hold_input(Hold.UPSTREAM, False)


_SETUP = object()   # the owner of a shared link's own SELECT / HELLO replies
_AUTH = object()    # the owner of a shared link's AUTH reply (sent alone: connection_made)


class _LinkConnection(asyncio.Protocol):
    """The protocol of one connection of a SharedLink; events of an old connection are ignored."""

    def __init__(self, link: "SharedLink"):
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.epoch = -1     # the resolver's epoch its dial began in (open_upstream sets it)
        if Router is not None and Lane is not None:
            # Replies for clients whose C lanes are armed on the link are routed in C (on the
            # link's LinkState); the rest of a read comes to this class's data_received.
            self.data_received = Router(link.state, self, self.data_received).data_received

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.link.connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.link.conn is self:
            if Router is None and metrics.PY.sample():   # (else the Router's C entry times it)
                t0 = perf_counter_ns()
                self.link.data_received(data)
                metrics.PY.observe(perf_counter_ns() - t0)
                return
            self.link.data_received(data)

    def connection_lost(self, exc) -> None:
        if self.link.conn is self:
            self.link.fail("connection lost", established=True)

    def pause_writing(self):
        if self.link.conn is self:
            self.link.pause_writing()

    def resume_writing(self):
        if self.link.conn is self:
            self.link.resume_writing()


class SharedLink:
    """One upstream connection that many clients' stateless commands share (upstream.multiplex).

    It authenticates as the proxy, like every upstream connection; clients' commands are written
    in the order their sessions produced them, at most once per event-loop turn, and `Demux`
    hands each client its replies. Its books (whose replies come next, what is due, what waits
    for the turn's flush) are its `state`, a linkstate.LinkState, the same object the C lanes
    and the Router keep them in. Opened on first use, and again after it was lost."""

    def __init__(self, proxy: "Proxy", resp3: bool = False, addr=None):
        self.proxy = proxy
        self.resp3 = resp3             # speaks RESP3 (HELLO 3 at set-up), for RESP3 clients
        self.addr = addr               # (host, port): a cluster node's; None: the upstream's
        # For life: the C side (redisgate._native._lane's Lanes and Router) keeps it.
        self.state = LinkState(self._queued)
        self.demux = Demux(self.state)
        self.connecting = False
        self.clients: set[ClientConnection] = set()   # attached: they may have replies due
        # Its writing state (pause_writing: then its clients are held, Hold.UPSTREAM); its
        # reading is never paused.
        self.flow = FlowControl()
        self.waiting = 0               # bytes in `out` while the link is being opened
        self._held_back: set[ClientConnection] = set()   # paused for that (WAITING_LIMIT)
        self._was_connected = False   # (an opening after that is a reconnect, in metrics)
        self.queued = 0                # replies of what waits in `out` for the link to open
        self._moving = None            # a failover: (deadline) while the old master's replies come
        # The AUTH in flight while the link is opened: its password (to pick the other one if
        # Redis refuses it: handshake.Passwords), its reply so far, the fallback tried.
        self._auth_password: bytes | None = None
        self._auth_reply = b""
        self._auth_fallback: str | None = None
        self._auth_retries = 0
        # upstream.handshake_timeout: from the first of the proxy's own commands written (or a
        # second AUTH) until the first reply to it.
        self._handshake_timer: asyncio.TimerHandle | None = None

    # Its books, kept in `state` (read and set here as attributes, as before).
    @property
    def conn(self) -> "_LinkConnection | None":
        return self.state.conn   # type: ignore[return-value]

    @property
    def out(self) -> list[bytes]:
        """Written at the end of this loop turn (or once connected)."""
        return self.state.out

    @property
    def due(self) -> int:
        """Clients' replies still due, all together."""
        return self.state.due

    @due.setter
    def due(self, value: int) -> None:
        self.state.due = value

    @property
    def ready(self) -> bool:
        return self.state.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.state.ready = value

    def _attach(self, conn: "_LinkConnection | None") -> None:
        self.state.attach(conn, None if conn is None else conn.transport.write)

    def send(self, client, data: bytes, replies: int, lane=None) -> None:
        """`client`'s `data`, asking for `replies` replies (LinkState.send; a client's armed
        C lane calls the same in C). `lane`: the client's C Lane, which the link's Router hands
        the replies to while it is armed on this link (None: the Python path's, as a cluster
        node owner's)."""
        self.state.send(client, data, replies, lane)

    def _queued(self, client: "ClientConnection", size: int, replies: int) -> None:
        """LinkState.send queued `size` bytes of `client`'s and nothing will write them yet: the
        turn's flush is scheduled (the state marked it), or the link is not ready."""
        if self.ready:
            asyncio.get_running_loop().call_soon(self.flush)
            return
        # Waiting for the link to be (re)opened: bounded, as a connected link bounds it.
        self.queued += replies
        self.waiting += size
        if self.waiting > WAITING_LIMIT:
            self._held_back.add(client)
            client.hold_input(Hold.LINK_CONNECTING, True)
        if not self.connecting:
            self.connecting = True
            self.proxy.tasks.spawn(self._connect())

    def move(self) -> bool:
        """The upstream master is being failed over: nothing more is written to this link's
        connection (clients' commands wait in `out`, bounded as while connecting); once the
        replies already due came back it is closed, and the link connects to the new master
        (open_upstream waits for it). Replies not back within FAILOVER_DRAIN: `fail`. Whether
        there was a connection to move."""
        if not self.ready or self._moving is not None:
            return False   # (not connected: the next connection goes to the new master)
        self.flush()               # (what this loop turn collected was read before the fence)
        self.ready = False
        self.connecting = True     # (send() queues and does not dial)
        self.queued = 0
        self._moving = asyncio.get_running_loop().time() + FAILOVER_DRAIN
        self._check_moved()
        return True

    def _check_moved(self) -> None:
        if self._moving is None:
            return
        if self.due - self.queued > 0:   # replies still due from the old master
            if asyncio.get_running_loop().time() < self._moving:
                asyncio.get_running_loop().call_later(MOVE_POLL, self._check_moved)
                return
            self._moving = None
            return self.fail("upstream failover: replies did not come back in time",
                             established=True)
        self._moving = None
        conn = self.conn
        self._attach(None)
        if conn is not None:
            conn.transport.close()
        self.proxy.tasks.spawn(self._connect())

    def flush(self) -> None:
        self.state.flush()

    async def _connect(self) -> None:
        protocol, reason = await open_upstream(self.proxy, lambda: _LinkConnection(self),
                                               self.addr)
        if protocol is None:
            self.connecting = False
            self.fail(reason, established=False)

    def connection_made(self, conn: _LinkConnection) -> None:
        if conn.epoch != self.proxy.resolver.epoch:
            conn.transport.close()   # the master moved while connecting: open_upstream retries
            return
        self._attach(conn)
        metrics.inc("upstream_connections", "shared")
        if self._was_connected:
            metrics.inc("upstream_reconnects")
        self._was_connected = True
        conn.transport.set_write_buffer_limits(high=1 << 20)
        up = self.proxy.gate.config.upstream
        steps = handshake.setup(up, resp3=self.resp3)
        setup = [step.command for step in steps if step.purpose != "authentication"]
        # The proxy's own replies (SELECT, HELLO) are values it reads, not bytes it passes
        # on: hiredis reads them, as every reply the proxy itself consumes.
        self._setup_replies = hiredis.Reader()
        if setup:   # the proxy's own commands go first: their replies come first
            self.state.put_first(_SETUP, len(setup))
            self.out[:0] = setup
        if len(setup) < len(steps):
            # Its AUTH goes first and alone; the link stays "connecting" (what clients send
            # waits in `out`) until Redis accepted it: a refused password is tried again with
            # the other one the proxy knows (see data_received), before anything else is sent.
            self.state.put_first(_AUTH, 1)
            self._auth_password, self._auth_reply, self._auth_fallback = up.password, b"", None
            self._auth_retries = 0
            self.connecting = True
            conn.transport.write(steps[0].command)
            self._watch_handshake(conn)
            return
        if setup:
            self._watch_handshake(conn)
        self._opened()

    def _opened(self) -> None:
        self.connecting = False
        self.ready = True
        self.queued = 0
        self.flush()
        self._release_waiting()

    def _fallback_counted(self, ok: bool) -> None:
        """Count and audit how a retried AUTH went (which password, never the password)."""
        assert self._auth_fallback is not None
        metrics.inc("upstream_auth_fallbacks", self._auth_fallback, "ok" if ok else "failed")
        audit.emit(Event("upstream-auth-fallback", reason=f"{self._auth_fallback} password",
                         ok=ok))
        self._auth_fallback = None

    def _authenticated(self, reply: bytes, rest: list) -> bool:
        """The whole reply to the link's AUTH came: open the link (True), or try the other
        password (True: handshake.Passwords.after_refusal), or fail the link (False; `rest`: the
        owners of what came after)."""
        up = self.proxy.gate.config.upstream
        refused = reply[:1] in (b"-", b"!")
        if refused:
            other = self.proxy.gate.passwords.after_refusal(reply, self._auth_password,
                                                            self._auth_retries)
            if other is not None:
                if self._auth_fallback is not None:   # (refused too: the password moved again)
                    self._fallback_counted(ok=False)
                self._auth_retries += 1
                self._auth_fallback, self._auth_password = other.source, other.password
                self.state.put_first(_AUTH, 1)
                self.conn.transport.write(handshake.auth_command(up, other.password))
                self._watch_handshake(self.conn)   # (its reply is timed as the first's)
                return True
        if self._auth_fallback is not None:
            self._fallback_counted(ok=not refused)
        self._auth_password = None
        if refused:
            text = reply[1:].split(b"\r\n", 1)[0]
            log.error("upstream refused the proxy's authentication on a shared link: %s",
                      text.decode("utf-8", "replace")[:200])
            self.fail("upstream authentication failed", established=False, also=rest)
            return False
        self._opened()
        return True

    def _release_waiting(self) -> None:
        self.waiting = 0
        held, self._held_back = self._held_back, set()
        for client in held:
            client.hold_input(Hold.LINK_CONNECTING, False)

    def data_received(self, data: bytes) -> None:
        if self._handshake_timer is not None:   # (the set-up's replies come here, not to C)
            self._handshake_timer.cancel()
            self._handshake_timer = None
        try:
            parts = self.demux.received(data)
        except UpstreamProtocolError as e:
            log.error("upstream protocol error on a shared link: %s", e)
            return self.fail("protocol error", established=True)
        for i, (owner, chunk, replies, whole) in enumerate(parts):
            if owner is _AUTH:
                self._auth_reply = (self._auth_reply + chunk)[:1024]   # (a short line)
                if replies:
                    reply, self._auth_reply = self._auth_reply, b""
                    if not self._authenticated(reply, [p[0] for p in parts[i + 1:]]):
                        return
                continue
            if owner is _SETUP:
                # Parsed, not searched: HELLO's map may hold module arguments that look like
                # error lines. (The demux has framed the chunk: whole replies, valid RESP.)
                reader, refused = self._setup_replies, None
                try:
                    reader.feed(chunk)
                    while (reply := reader.gets()) is not False:
                        if isinstance(reply, hiredis.ReplyError) and refused is None:
                            refused = str(reply)
                except (hiredis.ProtocolError, TypeError) as e:  # (TypeError: a map hiredis
                    # cannot make a dict of)
                    log.error("upstream protocol error on a shared link's setup: %s", e)
                    return self.fail("protocol error", established=False,
                                     also=[p[0] for p in parts[i + 1:]])
                if refused is not None:   # SELECT or HELLO refused
                    log.error("upstream refused the proxy's setup on a shared link: %s",
                              refused[:200])
                    # What Redis answered after it (NOAUTH...) goes nowhere: the owners get
                    # the proxy's error instead.
                    return self.fail("upstream authentication or database selection failed",
                                     established=False, also=[p[0] for p in parts[i + 1:]])
                continue
            self.due -= replies
            owner.shared_replies(chunk, replies, whole)

    def _watch_handshake(self, conn: _LinkConnection) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._handshake_timer = watch_handshake(self.proxy, self._handshake_expired, conn)

    def _handshake_expired(self, conn: _LinkConnection) -> None:
        self._handshake_timer = None
        if self.conn is conn:
            handshake_timed_out(self.proxy, self.addr)
            # While its AUTH is awaited ("connecting") clients' commands wait in `out`: nothing
            # of theirs was sent. Else they went behind SELECT / HELLO and may still run: their
            # replies are lost, as by a Redis restart.
            self.fail(HANDSHAKE_TIMED_OUT, established=not self.connecting)

    def fail(self, reason: str, established: bool, also: list = ()) -> None:
        """The link is unusable: every client with replies due gets errors for them (and, if the
        link had been working, is closed, as by a Redis restart); the next send reconnects."""
        conn = self.conn
        self._attach(None)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if conn is not None and reason not in ("proxy shutting down", HANDSHAKE_TIMED_OUT):
            metrics.inc("upstream_errors", "lost")
        self.ready = self.connecting = False
        self.due = self.queued = 0
        self._moving = None
        self.out.clear()
        if conn is not None:
            conn.transport.close()
        self._release_waiting()
        owners = list(also)
        owners += [o for o in self.demux.forget() if o not in owners]
        for owner in owners:
            if owner is not _SETUP and owner is not _AUTH:
                owner.shared_link_failed(reason, established)
        if self.flow.write_paused:
            self.resume_writing()

    def detach(self, client: "ClientConnection") -> None:
        self.clients.discard(client)
        if client in self._held_back:
            self._held_back.discard(client)
            client.hold_input(Hold.LINK_CONNECTING, False)
        if self.flow.write_paused:
            client.hold_input(Hold.UPSTREAM, False)

    def pause_writing(self):
        self.flow.pause_writing()
        for c in list(self.clients):
            c.hold_input(Hold.UPSTREAM, True)

    def resume_writing(self):
        self.flow.resume_writing()
        for c in list(self.clients):
            c.hold_input(Hold.UPSTREAM, False)

    def close(self) -> None:
        if self.conn is not None:
            self.fail("proxy shutting down", established=True)


async def open_upstream(proxy: "Proxy", factory, addr=None):
    """Connect to the upstream master the resolver names now, or to `addr`, (host, port) of a
    cluster node (TLS if configured, within connect_timeout; while a Sentinel failover is under
    way, waiting up to connect_timeout for the new master; TCP keepalive per upstream.keepalive):
    (protocol, None), or (None, why) after logging and counting the failure. A dial that ends
    after the master changed is closed and made again (a few times at most)."""
    up = proxy.gate.config.upstream
    resolver = proxy.resolver
    loop = asyncio.get_running_loop()
    reason = "the upstream master kept moving"
    for _ in range(3):
        if addr is not None:
            endpoint, epoch = Endpoint(*addr), resolver.epoch
        else:
            endpoint, epoch = await resolver.wait(up.connect_timeout)
        if endpoint is None:
            reason = resolver.unavailable_reason()
            log.warning("upstream %s: %s", up.address, reason)
            metrics.inc("upstream_errors", "connect")
            audit.emit(Event("upstream-unreachable", reason=safe(reason, spaces=True)))
            return None, reason

        def made(epoch=epoch):
            protocol = factory()
            protocol.epoch = epoch
            return protocol
        try:
            ssl_ctx, server_hostname = proxy.upstream_ssl(endpoint.host)
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(made, endpoint.host, endpoint.port,
                                       ssl=ssl_ctx, server_hostname=server_hostname),
                up.connect_timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            reason = connect_error(e)
            if addr is None:   # (a cluster node's: ClusterMap.unreachable logs and counts it)
                log.warning("upstream %s unreachable: %s", endpoint, reason)
                metrics.inc("upstream_errors", "connect")
                audit.emit(Event("upstream-unreachable", address=safe(str(endpoint)),
                                 reason=safe(reason, spaces=True)))
                resolver.unreachable(endpoint, reason)
            return None, reason
        if resolver.epoch == epoch:
            dial.keepalive(transport, up.keepalive)
            return protocol, None
        protocol.transport.close()   # the master moved meanwhile
    return None, reason


HANDSHAKE_TIMED_OUT = "handshake timed out"


def watch_handshake(proxy: "Proxy", expired, *args) -> asyncio.TimerHandle:
    """upstream.handshake_timeout: on a new upstream connection that carries the proxy's own
    AUTH / SELECT / HELLO (handshake.setup), the first reply must come this soon, else
    `expired(*args)` runs (the upstream accepts but does not answer: stopped, hung, not Redis).
    Only the handshake is timed: the replies to clients' commands may rightly take long (BLPOP
    0), so a connection without a handshake of the proxy's is not watched."""
    return asyncio.get_running_loop().call_later(
        proxy.gate.config.upstream.handshake_timeout, expired, *args)


def handshake_timed_out(proxy: "Proxy", addr=None) -> None:
    """Log and count a handshake that went unanswered (watch_handshake)."""
    up = proxy.gate.config.upstream
    where = f"{addr[0]}:{addr[1]}" if addr else up.address
    log.warning("upstream %s did not answer the proxy's handshake within %gs: giving up the "
                "connection (upstream.handshake_timeout)", where, up.handshake_timeout)
    metrics.inc("upstream_errors", "handshake")


class ClientConnection(asyncio.Protocol):
    """One client: feeds the session, writes what it produced, opens the upstream on request."""

    draining = False   # shutting down: what the client sends now is read and dropped (drain())

    # The loop's time at accept: a TLS listener's connection (TLSClientConnection) sets it, and
    # has counted itself in Proxy.accepted; a plain one sets it, and counts, in connection_made.
    accepted: float | None = None
    _counted = False
    _auth_timer = None    # limits.auth_timeout, while not logged in (_watch_login)
    _login_seen = False   # logged in at some point (a RESET's logout restarts the timeout)
    _stall_timer = None   # auth_throttle's delay of this connection (Session.stall)
    _handshake_timer = None   # upstream.handshake_timeout (watch_handshake)
    # limits.idle_timeout (Proxy.sweep_idle): reads that took the Python path (a read the C
    # lane forwards is counted in lane_passed instead, one it gives up on only here); their sum
    # when the sweep last saw it change, and when.
    _reads = 0
    _idle_mark = -1
    _idle_since = 0.0
    close_reason: str | None = None   # why the proxy closed it (the audit's disconnect reason)
    _disconnect_audited = False
    _lane_passed = 0      # requests forwarded by lanes since dropped (drain)
    listener = ""         # "host:port" of the listener that accepted it (a metrics label)

    def __init__(self, proxy: "Proxy", listener_tls=None):
        self.proxy = proxy
        self.listener_tls = listener_tls
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamConnection | None = None
        self.session: Session | None = None
        self.upstream_write = None    # the upstream transport's write(), once connected
        self.closed = False
        # Why reading the client is paused (see hold_input), and whether its writing is (its
        # replies pile up unread: pause_writing).
        self.flow = FlowControl()
        self._connecting = False
        self.id = next(_ids)
        self.link: SharedLink | None = None   # while attached to a shared link
        self.due = 0                          # replies still due on it
        self._await_drain = False             # own upstream ready, shared replies still due
        # Flow control: the most replies that may be due (forwarded, not yet come back); what
        # the client sent past that waits in `_backlog` (one read at most: reading is held).
        # The window is WINDOW_BYTES of replies at the size they have been coming back, within
        # WINDOW_START (before any came back) .. WINDOW_MAX.
        self._window = WINDOW_START
        self._reply_size = 0                  # bytes per reply lately; 0: none seen yet
        self._reply_bytes = 0                 # bytes of replies not ended yet
        self._backlog: bytes | None = None
        self.lane = None
        if Lane is not None and proxy.cluster is None:   # (cluster mode: no C lane yet)
            # The event loop calls data_received (looked up when the transport is made): the
            # lane's, which hands what it does not take to this class's data_received.
            self.lane = Lane(self.data_received, self.upstream_data)
            self.data_received = self.lane.client_data

    def connection_made(self, transport):
        self.transport = transport
        self.flow.transport = transport
        proxy = self.proxy
        if self.accepted is None:
            self.accepted = asyncio.get_running_loop().time()
            self._counted = True
            proxy.accepted += 1
        peer = transport.get_extra_info("peername") or ("?", 0)
        info = f"id={self.id} addr={peer[0]}:{peer[1]}"
        identity = None
        described = None
        if self.listener_tls is not None:
            cert = transport.get_extra_info("peercert")
            if cert:
                described = self.listener_tls.describe(cert)
                identity = proxy.gate.certificate_identity(
                    cert, transport.get_extra_info("verified_chain") or (), described)
                info += f" cert={described}"
        who = Peer(self.id, str(peer[0]), peer[1], described)
        audit.emit(Event("connect", user=safe(identity.user) if identity and identity.user
                         else None, peer=who, info=info))
        self.session = Session(proxy.gate, info, identity, who, address=str(peer[0]),
                               client_id=self.id, lane_scripts=self.lane is not None)
        proxy.clients.add(self)
        if proxy.over_budget:
            self.hold_input(Hold.BUDGET, True)
        metrics.connection_opened(self.listener)
        if self._counted and proxy.accepted > proxy.gate.config.max_clients:
            # (A TLS connection was counted, and refused if need be, at accept.)
            metrics.inc("clients_refused", "max_clients")
            transport.write(errors.max_clients())
            self.close_reason = "max-clients"
            transport.close()
            return
        if proxy._idle_timer is None and proxy.config.idle_timeout:
            proxy.watch_idle()
        self._watch_login()
        self.pump()

    def data_received(self, data: bytes) -> None:
        """Bytes from the client that the C lane gave up on (or all of them, without it)."""
        metrics.PY.bytes_in += len(data)
        if self.draining:
            return
        self._reads += 1
        if Lane is None and metrics.PY.sample():   # (else the lane's C entry times the read)
            t0 = perf_counter_ns()
            self._feed(self._client_data, data, upstream=False)
            metrics.PY.observe(perf_counter_ns() - t0)
            return
        self._feed(self._client_data, data, upstream=False)

    def reloaded(self) -> None:
        """The configuration was reloaded: the session re-checks its user now (not at its next
        command), with whether this listener's current client CA still trusts its certificate."""
        if self.closed or self.session is None:
            return
        cert = self.session.cert
        trusted = True
        if cert is not None:
            trusted = self.listener_tls is not None and self.listener_tls.trusts(cert.chain)
        self._feed(lambda _: self.session.reloaded(trusted), b"", upstream=False)
        if self.session.ending and self.session.end_reason:
            self._audit_disconnect(self.session.end_reason)   # (now: the reload's moment)

    def _audit_disconnect(self, reason: str) -> None:
        """The audit's disconnect event, once per connection."""
        if self._disconnect_audited or self.session is None:
            return
        self._disconnect_audited = True
        session = self.session
        duration = asyncio.get_running_loop().time() - self.accepted
        audit.emit(Event("disconnect", user=safe(session.username) if session.username else None,
                         peer=session.peer, info=session.client_info, reason=reason,
                         duration=round(duration, 3),
                         commands=session.commands + self.lane_passed))

    @property
    def lane_passed(self) -> int:
        """Requests the C lane forwarded for this connection, over its life (drain() drops the
        lane and keeps its count). The lane takes a read whole or not at all, so these and the
        session's `commands` (what took the Python path) never count a request twice."""
        return self._lane_passed + (self.lane.passed if self.lane is not None else 0)

    def upstream_data(self, data: bytes) -> None:
        """Bytes from this client's own upstream connection."""
        timed = self._handshake_timer is not None
        if timed:   # (the lane is never armed before this)
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.disarm_lane()
        due = self._due()
        if Lane is None and metrics.PY.sample():   # (else the lane's C entry times the read)
            t0 = perf_counter_ns()
            self._feed(self.session.upstream_data, data, upstream=True)
            metrics.PY.observe(perf_counter_ns() - t0)
        else:
            self._feed(self.session.upstream_data, data, upstream=True)
        if timed and not self.closed and self.upstream is not None \
                and self.session.auth_retry_due():
            # Redis refused the proxy's AUTH and it went again with the other password: its
            # reply is timed as the first's was.
            self._handshake_timer = watch_handshake(self.proxy, self._handshake_expired,
                                                    self.upstream)
        if due:   # (else pub/sub messages: not replies)
            self._replies_came(len(data), due - self._due())

    # -- flow control

    def _due(self) -> int:
        """Replies the client is owed that are not in the proxy yet (or answered here, waiting
        behind them): the session's reply slots (the lane disarmed)."""
        return self.session.replies_due()

    def _replies_came(self, size: int, replies: int) -> None:
        """`size` bytes of replies came from the upstream, ending `replies` of them: the window
        follows the size replies have (a reply still coming is at least as big as its bytes)."""
        self._reply_bytes += size
        if replies <= 0:
            if self._reply_bytes <= self._reply_size:
                return
            per = self._reply_bytes
        else:
            per = self._reply_bytes // replies
            self._reply_bytes = 0
        seen = self._reply_size
        # Up at once, down by halves: a client cannot shrink it with one small reply.
        self._reply_size = per if per >= seen or not seen else (seen + per) // 2
        self._window = max(1, min(WINDOW_MAX, WINDOW_BYTES // max(self._reply_size, 1)))

    def _client_data(self, data: bytes) -> None:
        """The client's bytes to the session, as many requests as the window has room for
        (whole reads while it is far from full); the rest waits in `_backlog`."""
        backlog, self._backlog = self._backlog, None
        if backlog is not None:
            data = backlog + data if data else backlog
        session = self.session
        step = session.client_data
        pos, end = 0, len(data)
        while pos < end and not self.flow.write_paused:   # (resume_writing brings it back)
            room = self._window - self._due()
            if room <= 0:
                break
            if end - pos > room * SMALLEST_REQUEST:   # could hold more than `room` requests
                cut = requests_end(data, room, pos)
                step(data[pos:cut])
            else:
                cut = end
                step(data[pos:] if pos else data)
            pos = cut
            if session.close or self.closed:
                break
        if pos < end and not session.close and not self.closed:
            self._backlog = data[pos:] if pos else data
            self.proxy.heavy.add(self)
            self.proxy.watch_budget()
            self.hold_input(Hold.WINDOW, True)
        else:
            self.hold_input(Hold.WINDOW, False)
            if not self.flow.write_paused:
                self.proxy.heavy.discard(self)

    def evict(self, why: str) -> None:
        """Close at once, dropping what the client has not read (a closing transport would keep
        it until read)."""
        log.warning("closing %s: %s", self.session.client_info, why)
        self.close_reason = self.close_reason or "memory-budget"
        self.session.abort()
        self.closed = self.flow.closed = True
        self._backlog = None
        self.proxy.heavy.discard(self)
        self.transport.abort()

    def buffered(self) -> int:
        """Bytes this client has in the proxy: unwritten replies, unread-by-Redis commands."""
        size = len(self._backlog) if self._backlog is not None else 0
        if self.transport is not None:
            size += self.transport.get_write_buffer_size()
        if self.session is not None:
            size += self.session.held_bytes()
        return size

    def _feed(self, step, data: bytes, upstream: bool) -> None:
        """Give bytes to the session (`step`), the lane disarmed first; then pump()."""
        session = self.session
        self.disarm_lane()
        try:
            step(data)
        except Exception:   # a bug must cost one connection, never the proxy
            log.exception("internal error on %s%s; closing it",
                          "the upstream of " if upstream else "", session.client_info)
            if not upstream:
                self.transport.write(b"-ERR redisgate internal error; closing the connection\r\n")
            session.abort()
        self.pump()

    def disarm_lane(self) -> None:
        """Take the session back from the C lane (before anything else touches it)."""
        lane = self.lane
        if lane is not None and lane.armed:
            shared = lane.shared
            due = lane.disarm()
            self.session.lane_returned(due)
            if shared:
                self.due += due   # (while armed, the lane kept the link's count for this client)

    def arm_lane(self) -> None:
        """Hand the steady state to the C lane when the session is in it (see _lane.c): on
        its own upstream connection, or on a shared link (whose replies to it the link's
        Router then routes in C)."""
        if self.closed or self._await_drain or self.lane.armed or self._backlog is not None:
            return   # (with a backlog, replies come through Python: they release it)
        self.lane.window = self._window
        link = self.link
        limits = self.session.parser.limits
        if link is not None:
            if link.resp3 != self.session.link_resp3:
                return   # (pump moves the client to its links at its next command)
            handed = self.session.lane_handover(on_link=self.due)
            if handed is not None:
                self.lane.arm(handed[0], None, self.transport.write, handed[1],
                              limits.max_args, limits.max_bulk, link=link.state, owner=self)
                self.due = 0
            return
        if self.upstream_write is None:
            return
        handed = self.session.lane_handover()
        if handed is not None:
            self.lane.arm(handed[0], self.upstream_write, self.transport.write, handed[1],
                          limits.max_args, limits.max_bulk)

    def pump(self) -> None:
        """Do what the session asks (Session.actions()): write, send, open, stall or close."""
        s = self.session
        act = s.actions()
        close = act.close
        if act.stall:
            self._stall(act.stall)
        data = act.to_client
        if data:
            metrics.PY.bytes_out += len(data)
            self.transport.write(data)
            if not s.logged_in and \
                    self.transport.get_write_buffer_size() > PRELOGIN_OUTPUT_LIMIT:
                # Errors answered before login pile up unread: nothing to wait for.
                self.close_reason = "prelogin-output"
                return self.evict(f"over {PRELOGIN_OUTPUT_LIMIT} bytes of replies unread "
                                  "before login")
        data = act.to_upstream
        link = self.link
        if link is not None and link.resp3 != act.link_resp3:
            # The session bound its commands to the other protocol's links (HELLO, RESET) with
            # nothing due on this one, so nothing can come back out of order. (It may have left
            # the links since: its last shared commands go to the links it bound them to.)
            if self.due:
                log.error("internal error on %s: a protocol switch with replies due on its "
                          "shared link; closing it", s.client_info)
                data = b""
                s.abort()
                close = True
            else:
                self._leave_link()
        if data:
            link = self.link
            if link is None and act.via_link:
                # (A client that has just left the link sends its last shared commands here.)
                link = self.link = self.proxy.shared_link(self)
            if link is not None:
                self.due += act.link_replies
                link.send(self, data, act.link_replies, self.lane)
            else:
                write = self.upstream_write
                if write is not None:
                    write(data)
        waiting = s.held_bytes()
        if waiting or self.flow.holds(Hold.CONNECTING):
            # Commands waiting for the upstream connection being opened: bounded, as a
            # connected upstream bounds them (TCP pushes back on the client meanwhile).
            self.hold_input(Hold.CONNECTING, waiting > WAITING_LIMIT)
        if self.upstream is None and act.open_upstream and not self._connecting \
                and not self.closed:
            self._connecting = True
            self.proxy.tasks.spawn(self._connect())
        if s.logged_in is (self._auth_timer is not None):
            self._watch_login()
        if close and not self.closed:
            self.transport.close()
        elif self._backlog is not None and not self.closed and not self.flow.write_paused \
                and self._window > self._due():
            self._feed(self._client_data, b"", upstream=False)   # replies came: room again
        elif self.lane is not None:
            self.arm_lane()

    # -- before login: limits.auth_timeout and auth_throttle's delay

    def _watch_login(self) -> None:
        """limits.auth_timeout: a connection that is not logged in is closed that long after it
        was accepted (or after a RESET logged it out); logging in stops the clock."""
        if self.session.user_entry is not None or self.closed:
            if self._auth_timer is not None:
                self._auth_timer.cancel()
                self._auth_timer = None
            self._login_seen = self._login_seen or self.session.user_entry is not None
            return
        if self._auth_timer is None:
            loop = asyncio.get_running_loop()
            start = loop.time() if self._login_seen else self.accepted
            self._auth_timer = loop.call_at(start + self.proxy.gate.config.auth_timeout,
                                            self._auth_expired)

    def _auth_expired(self) -> None:
        self._auth_timer = None
        if self.closed or self.session.user_entry is not None:
            return
        session = self.session
        audit.emit(Event("auth-timeout", peer=session.peer, info=session.client_info))
        metrics.inc("auth_timeouts")
        self.close_reason = "auth-timeout"
        self.transport.close()

    # -- limits.idle_timeout

    def idle_for(self, now: float) -> float:
        """Seconds this logged-in connection has been idle, as far as the sweep can tell (never
        more than it really was): 0 while it sends, is owed a reply (a blocked BLPOP), is
        subscribed, or is not logged in (limits.auth_timeout's business)."""
        lane = self.lane
        mark = self._reads + self.lane_passed   # (only ever grows: drain keeps the lane's)
        if mark == self._idle_mark:
            if self.session.quiet() and not (
                    self.due or self._backlog is not None or self.draining or self.closed
                    or lane is not None and lane.due and lane.armed):
                return now - self._idle_since
        self._idle_mark = mark
        self._idle_since = now
        return 0.0

    def close_idle(self) -> None:
        self.close_reason = "idle-timeout"   # (audited as the disconnect's reason)
        metrics.inc("idle_timeouts")
        self.session.abort()
        self.transport.close()

    def _stall(self, seconds: float) -> None:
        """auth_throttle refused a login and asked (Actions.stall) that its reply, and the
        reading of what the client sends next, wait: a timer, never a sleep."""
        if self._stall_timer is None and not self.closed:
            self.hold_input(Hold.AUTH_THROTTLE, True)
            self._stall_timer = asyncio.get_running_loop().call_later(seconds, self._unstall)

    def _unstall(self) -> None:
        self._stall_timer = None
        if self.closed:
            return
        self.hold_input(Hold.AUTH_THROTTLE, False)
        self._feed(lambda _: self.session.resume(), b"", upstream=False)

    async def _connect(self) -> None:
        protocol, reason = await self.proxy.open_client_upstream(self)
        if protocol is None:
            self._connecting = False
            if not self.closed:
                self.session.upstream_failed(reason)
                self.pump()
            return
        self._connecting = False
        if self.closed:
            protocol.transport.close()
            return
        self.upstream = protocol
        self.upstream_write = protocol.transport.write
        metrics.inc("upstream_connections", "client")
        protocol.transport.set_write_buffer_limits(high=1 << 20)
        if self.link is not None and self.due:
            self._await_drain = True   # the client's shared replies first (shared_replies)
            return
        self._leave_link()
        self._connected()
        self.pump()

    def _connected(self) -> None:
        """The session's held commands, its handshake first, go to its new upstream connection
        now: the handshake's reply is timed (watch_handshake; a cluster's node connections are
        not: ClusterUpstream opens them as commands need them)."""
        self.session.connected()
        if self.proxy.cluster is None and handshake.setup(self.proxy.gate.config.upstream):
            self._handshake_timer = watch_handshake(self.proxy, self._handshake_expired,
                                                    self.upstream)

    def _handshake_expired(self, upstream: UpstreamConnection) -> None:
        self._handshake_timer = None
        if self.closed or self.upstream is not upstream:
            return
        handshake_timed_out(self.proxy)
        self.disarm_lane()
        self.upstream = None
        self.upstream_write = None
        upstream.transport.abort()
        # The client stays if none of its commands was behind the handshake; else it is closed
        # after their errors, as on a lost connection (they may still run): the session decides.
        self.session.handshake_failed(HANDSHAKE_TIMED_OUT)
        self.pump()

    # -- on a shared link

    def shared_replies(self, data: bytes, replies: int, whole: bool) -> None:
        """Bytes from the shared link that belong to this client: `replies` replies ended in
        them, and if `whole`, nothing but those replies (the link counted them already)."""
        self.disarm_lane()
        self.due -= replies
        if self.closed:
            if not self.due:
                self._leave_link()
            return
        self._replies_came(len(data), replies)
        session = self.session
        try:
            if whole:
                session.upstream_replies(data, replies)
            else:
                session.upstream_data(data)
        except Exception:   # a bug must cost one connection, never the proxy
            log.exception("internal error on the shared upstream of %s; closing it",
                          session.client_info)
            session.abort()
        if not self.due and not session.shared:
            self._leave_link()
            if self._await_drain:
                self._await_drain = False
                self._connected()
        self.pump()

    def shared_link_failed(self, reason: str, established: bool) -> None:
        self.disarm_lane()
        self.due = 0
        self._leave_link()
        if self.closed:
            return
        # (established: replies were lost in flight, as by a Redis restart)
        self.session.upstream_failed(reason, established)
        if self._await_drain:
            self._await_drain = False
        self.pump()

    def _leave_link(self) -> None:
        if self.link is not None:
            self.link.detach(self)
            self.link = None

    def connection_lost(self, exc) -> None:
        self.closed = self.flow.closed = True
        if self.session is not None and not self._disconnect_audited:
            reason = self.close_reason or self.session.end_reason or (
                "shutdown" if self.proxy.shutting_down else
                "client-closed" if exc is None else "connection-error")
            self._audit_disconnect(reason)
        self.proxy.clients.discard(self)
        self.proxy.heavy.discard(self)
        self._backlog = None
        if self._counted:
            self._counted = False
            self.proxy.accepted -= 1
        if self.session is not None:
            self.session.ended()   # (its user's count, limits.max_clients_per_user)
        for timer in (self._auth_timer, self._stall_timer, self._handshake_timer):
            if timer is not None:
                timer.cancel()
        self._auth_timer = self._stall_timer = self._handshake_timer = None
        if self.lane is not None:
            self.disarm_lane()
            self.lane = None      # (it refers back to this object: no cycle left behind)
            del self.data_received
        if self.link is not None and not self.due:
            self._leave_link()   # (with replies due, the link still routes them here)
        metrics.connection_closed()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        self.upstream = None
        self.upstream_write = None

    def pause_writing(self):
        # The client reads slower than replies come: stop reading the upstream's replies (on a
        # connection of its own; a shared link that others use goes on) and the client's
        # commands, so that no more replies than those due (the window) can pile up, in Redis
        # or here.
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()
        self.hold_input(Hold.OUTPUT, True)
        self.flow.pause_writing()
        self.proxy.heavy.add(self)
        self.proxy.watch_budget()

    def resume_writing(self):
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()
        self.flow.resume_writing()
        if self._backlog is None:
            self.proxy.heavy.discard(self)
        elif not self.closed and self._window > self._due():
            self._feed(self._client_data, b"", upstream=False)
        self.hold_input(Hold.OUTPUT, False)

    def hold_input(self, reason: Hold, hold: bool, source: object = None) -> None:
        """Stop (or resume) reading the client while any reason holds (flow.Hold): the upstream
        cannot take more commands (UPSTREAM, CONNECTING, LINK_CONNECTING), the client's replies
        pile up unread (OUTPUT), its window is full (WINDOW), the process is over its memory
        budget (BUDGET), or auth_throttle delays it (AUTH_THROTTLE). `source`: one of several
        independent holders of the same reason (cluster mode: a node connection)."""
        self.flow.hold(reason, hold, source)

    # -- graceful shutdown (Proxy.close)

    def drain(self) -> None:
        """Shutdown began: commands read so far still get their replies; what the client sends
        from now on is read and dropped (read, so that closing never meets unread input and
        resets the connection under replies still on their way)."""
        self.draining = True
        self.disarm_lane()
        if self.lane is not None:
            self._lane_passed += self.lane.passed
        self.lane = None          # never armed again: every reply is counted in Python now
        self.flow.release_all()

    def owes_replies(self) -> bool:
        """Replies still due to commands read before drain() (a blocked BLPOP stays owed)."""
        s = self.session
        return not self.closed and not s.close and not s.ending and (
            s.owes_replies() or bool(self.due)
            or self._backlog is not None)   # (held by the window)

    def finish(self) -> None:
        """Nothing owed: end the connection after the replies written so far. A plain TCP client
        gets an EOF (half close) and is read, and what it sends dropped, until it closes."""
        if self.closed:
            return
        transport = self.transport
        # (uvloop's transports are no asyncio.Transport subclass; _TLSTransport has no EOF of
        # its own: its close() sends TLS's close_notify)
        if getattr(transport, "can_write_eof", None) is not None and transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()


# Before login everything is answered here: a client that lets more than this pile up unread is
# closed (nothing it could be waiting for).
PRELOGIN_OUTPUT_LIMIT = 64 << 10
# A client's window of replies due (see ClientConnection._client_data): WINDOW_BYTES of replies at
# the size they have been coming back, never fewer than 1 nor more than WINDOW_MAX; before any
# reply came back, WINDOW_START. A client that stops reading can make Redis and the proxy hold
# about its window of replies, plus its transport's high-water mark, plus one read of commands.
WINDOW_BYTES = 1 << 20
WINDOW_START = 8
WINDOW_MAX = 1024
# The fewest bytes a request Redis would run can take ("TIME\n"): a read no longer than
# room * SMALLEST_REQUEST cannot overfill the window.
SMALLEST_REQUEST = 5
# limits.idle_timeout's sweep (Proxy.sweep_idle): every tenth of the timeout, at least every
# second, at most 20 times a second.
IDLE_SWEEP_FRACTION = 0.1
IDLE_SWEEP_MIN = 0.05
IDLE_SWEEP_MAX = 1.0
# The memory budget's check (Proxy.check_budget): how often, while clients hold much; and how
# long the proxy stays over it before it closes the client holding the most.
BUDGET_INTERVAL = 0.05
BUDGET_EVICT_AFTER = 2.0
# A failover (Proxy.upstream_changed): how long the replies already due from the old master may
# take before its connections are closed anyway, and how often that is looked at.
FAILOVER_DRAIN = 1.0
MOVE_POLL = 0.01


def requests_end(data: bytes, n: int, pos: int = 0) -> int:
    """Where the first `n` requests in `data` from `pos` end: canonical (`*argc` and `$len`
    headers) or inline (up to a newline). Counts generously (an empty line, `*0`) and gives up
    to len(data) at anything it cannot walk or that is not whole yet: the parser judges that,
    and a request not whole yet is not forwarded."""
    end, find = len(data), data.find
    while n > 0 and pos < end:
        if data[pos] == 42:   # "*"
            eol = find(b"\r\n", pos)
            if eol < 0:
                return end
            try:
                argc = int(data[pos + 1:eol])
            except ValueError:
                return end
            pos = eol + 2
            for _ in range(argc):
                if pos >= end or data[pos] != 36:   # "$"
                    return end
                eol = find(b"\r\n", pos)
                if eol < 0:
                    return end
                try:
                    size = int(data[pos + 1:eol])
                except ValueError:
                    return end
                if size < 0:
                    return end
                pos = eol + 4 + size
                if pos > end:
                    return end
        else:
            eol = find(b"\n", pos)
            if eol < 0:
                return end
            pos = eol + 1
        n -= 1
    return min(pos, end)


# Commands held while an upstream connection or shared link is being opened: past this, stop
# reading the client (or the link's senders) until it is open or has failed.
WAITING_LIMIT = 4 << 20


class _TLSTransport:
    """What ClientConnection sees of a TLS connection: writes are encrypted by the engine."""

    def __init__(self, raw: asyncio.Transport, engine):
        self.raw = raw
        self.engine = engine

    def write(self, data: bytes) -> None:
        self.engine.send(data)
        self.raw.write(self.engine.data_to_send())

    def close(self) -> None:
        self.engine.close()
        out = self.engine.data_to_send()
        if out:
            self.raw.write(out)
        self.raw.close()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def get_extra_info(self, name, default=None):
        if name == "peercert":
            return self.engine.peercert
        if name == "verified_chain":
            return self.engine.verified_chain
        return self.raw.get_extra_info(name, default)

    def pause_reading(self):
        self.raw.pause_reading()

    def resume_reading(self):
        self.raw.resume_reading()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def abort(self) -> None:
        self.engine.close()
        self.raw.abort()


class TLSClientConnection(asyncio.Protocol):
    """A TLS listener's connection: the handshake runs here (in a sans-I/O TLSEngine), so that
    every failed, garbage or slow handshake is seen, audited and closed; then it hands decrypted
    bytes to a ClientConnection. (asyncio and uvloop hide failed handshakes from the app.)"""

    record = None   # the C record layer (tls.record_layer()), when built

    def __init__(self, proxy: "Proxy", tls, listener: str = ""):
        self.proxy = proxy
        self.tls = tls
        self.listener = listener
        self.inner: ClientConnection | None = None
        self.raw: asyncio.Transport | None = None
        if proxy.tls_record is not None:
            # The event loop calls data_received (looked up when the transport is made): the
            # record layer's, which hands reads to the Python method below until the handshake
            # is done, and decrypts them in C after (see _tlsrec.c).
            self.record = proxy.tls_record(self.data_received)
            self.data_received = self.record.data_received

    def connection_made(self, transport):
        from ..tls import TLSEngine   # (deferred: cryptography)
        self.raw = transport
        self.engine = TLSEngine(self.tls.context)   # the current context: a reload applies here
        loop = asyncio.get_running_loop()
        self.accepted = loop.time()
        config = self.proxy.gate.config
        # Not logged in before limits.auth_timeout either (ClientConnection takes over).
        self.timer = loop.call_later(min(self.tls.handshake_timeout, config.auth_timeout),
                                     self._expire)
        # limits.max_clients counts connections from accept, handshakes included.
        self.proxy.accepted += 1
        if self.proxy.accepted > config.max_clients:
            self.timer.cancel()
            metrics.inc("clients_refused", "max_clients")
            transport.close()

    def data_received(self, data: bytes) -> None:
        from ..tls import TLSHandshakeError, TLSRecordError   # (deferred: cryptography)
        engine = self.engine
        try:
            plain = engine.receive(data)
        except (TLSHandshakeError, TLSRecordError) as e:
            return self._fail(str(e))
        out = engine.data_to_send()
        if out:
            self.raw.write(out)
        if self.inner is None:
            if not engine.handshake_done:
                return
            self.timer.cancel()
            self.inner = inner = ClientConnection(self.proxy, self.tls)
            inner.listener = self.listener
            inner.accepted = self.accepted   # (counted here: the inner one does not count)
            transport = _TLSTransport(self.raw, engine)
            if self.record is not None and engine.hand_over(
                    self.record, self.raw.write, inner, inner.data_received, self._record_failed,
                    self.raw.close):
                transport.write = self.record.write   # (what the C lane writes replies with)
            inner.connection_made(transport)
        if plain and not self.inner.closed:
            self.inner.data_received(plain)
        if engine.peer_closed:
            self.raw.close()

    def _record_failed(self, reason: str) -> None:
        """The C record layer met a TLS error after the handshake (as TLSRecordError here)."""
        self.engine.mark_failed()
        self._fail(f"TLS error: {reason}")

    def eof_received(self):
        if self.inner is None:
            from ..tls import handshake_failure_reason   # (deferred: cryptography)
            self._fail(handshake_failure_reason(ConnectionResetError(), self.engine.first_byte))
        return False

    def _expire(self) -> None:
        if self.inner is None:
            from ..tls import handshake_failure_reason   # (deferred: cryptography)
            self._fail(handshake_failure_reason(TimeoutError(), self.engine.first_byte))

    def _fail(self, reason: str) -> None:
        self.timer.cancel()
        peer = self.raw.get_extra_info("peername") or ("?", 0)
        audit.emit(Event("tls-handshake-failed", peer=Peer(None, str(peer[0]), peer[1]),
                         reason=safe(reason, 256, spaces=True)))
        out = self.engine.data_to_send()   # the alert, if any
        if out:
            self.raw.write(out)
        self.raw.close()

    def connection_lost(self, exc) -> None:
        self.timer.cancel()
        self.proxy.accepted -= 1
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self):
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self):
        if self.inner is not None:
            self.inner.resume_writing()


class Proxy:
    """Listeners, the shared Gate, reload on SIGHUP, and the upstream version probe."""

    def __init__(self, config: Config, reuse_port: bool = False):
        self.config = config
        self.gate = Gate(config)
        # `serve --workers N`: every worker opens every listener itself (SO_REUSEPORT).
        self.reuse_port = reuse_port
        self.clients: set[ClientConnection] = set()
        self.accepted = 0    # client connections open, from accept (TLS handshakes included)
        self.servers: list[asyncio.base_events.Server] = []
        self.listener_tls: list = []
        # The listeners served (with listener_tls, index for index): a reload keeps them.
        self.listeners = list(config.listeners)
        # Where the upstream master is (resolver.py): upstream.address, or the one the
        # sentinels name (sentinel.py). Kept for the process's life (a reload does not move it).
        self.resolver = self._make_resolver(config)
        self.resolver.on_change(self.upstream_changed)
        self._moving: set[ClientConnection] = set()   # leaving the old master (upstream_changed)
        self._resolving = False                        # resolver.start() done
        # upstream.cluster: the slot map, and each client's connections to the nodes
        self.cluster = None
        if config.upstream.cluster is not None:
            from ..cluster.io import ClusterMap   # (deferred: only with upstream.cluster)
            self.cluster = ClusterMap(self, config.upstream.cluster)
        # upstream.multiplex takes effect at start (a reload keeps these links). RESP2 and
        # RESP3 clients (go-redis) share links that speak their protocol.
        # (With upstream.cluster, the links are per node: ClusterMap.shared_links.)
        shared = config.upstream.multiplex if self.cluster is None else 0
        self.links = [SharedLink(self) for _ in range(shared)]
        self.links3 = [SharedLink(self, resp3=True) for _ in range(shared)]
        self.shutting_down = False   # set the moment SIGTERM/SIGINT arrives (/readyz says 503)
        self.stop_reason = "stop"    # the audit's shutdown reason: the signal's name
        # Memory budget (limits.memory_budget): clients that may hold much (past their
        # transport's high-water mark, or with a backlog), summed every BUDGET_INTERVAL while any.
        self.heavy: set[ClientConnection] = set()
        self.over_budget = False
        self._over_since = 0.0
        self._budget_timer = None
        self._idle_timer = None      # limits.idle_timeout's sweep (sweep_idle), while it runs
        # Background tasks (upstream connections being opened, the probe's retry, the cluster
        # map's refreshes): kept until done, cancelled and awaited by close().
        self.tasks = TaskSet()
        self._probe_timer = None     # the version probe's retry, while one is due
        self._upstream_tls = None
        self.tls_record = None   # tls.record_layer(), with a TLS listener
        self._build_tls()
        metrics.watch(self)
        metrics.config_loaded(True, reload=False)

    # -- TLS

    def _build_tls(self) -> None:
        base = self.config.path.parent if self.config.path else Path(".")
        self.listener_tls = []
        for i, lst in enumerate(self.config.listeners):
            if lst.tls is not None:
                from ..tls import ListenerTLS, record_layer   # (deferred: cryptography)
                self.tls_record = record_layer()
                self.listener_tls.append(ListenerTLS(
                    lst.tls, base, where=f"{lst.where}.tls",
                    default_handshake_timeout=self.config.handshake_timeout))
            else:
                self.listener_tls.append(None)
        if self.config.upstream.tls is not None:
            from ..tls import UpstreamTLS   # (deferred: cryptography)
            self._upstream_tls = UpstreamTLS(self.config.upstream.tls, base, where="upstream.tls")

    def upstream_ssl(self, host: str | None = None):
        if self._upstream_tls is None:
            return None, None
        return self._upstream_tls.context, self._upstream_tls.server_name(host or self.upstream_host)

    def probe_address(self) -> tuple[str, int]:
        """Where the version probe and the readiness PING go: the upstream; with upstream.cluster,
        a master of the current slot map (before there is one, the first seed)."""
        if self.cluster is not None and self.cluster.masters():
            node = self.cluster.masters()[0]
            return node.host, node.port
        endpoint = self.upstream_endpoint()   # (ConnectionError: no master known now)
        return endpoint.host, endpoint.port

    async def open_client_upstream(self, client: "ClientConnection"):
        """A client connection's own upstream: (protocol, None), or (None, why) after logging.
        One connection to upstream.address; with upstream.cluster, a ClusterUpstream (one
        connection per node the client's commands go to, opened on first use)."""
        if self.cluster is not None:
            return await self.cluster.open_client(client)
        return await open_upstream(self, lambda: UpstreamConnection(client))

    # -- where the upstream is (resolver.py, sentinel.py)

    def _make_resolver(self, config: Config) -> Resolver:
        up = config.upstream
        if up.sentinel is None:
            return Resolver(Endpoint(up.host, up.port))
        from .sentinel import SentinelResolver
        sentinel_tls = None
        if up.sentinel.tls is not None:
            from ..tls import UpstreamTLS
            base = config.path.parent if config.path else Path(".")
            sentinel_tls = UpstreamTLS(up.sentinel.tls, base, where="upstream.sentinel.tls")

        def sentinel_ssl(host: str):
            if sentinel_tls is None:
                return None, None
            return sentinel_tls.context, sentinel_tls.server_name(host)
        return SentinelResolver(up.sentinel, lambda: self.config.upstream, sentinel_ssl,
                                self.upstream_ssl)

    @property
    def upstream_host(self) -> str | None:
        ep = self.resolver.current
        return ep.host if ep is not None else None

    @property
    def upstream_port(self) -> int | None:
        ep = self.resolver.current
        return ep.port if ep is not None else None

    def upstream_endpoint(self) -> Endpoint:
        """The master to dial now; ConnectionError while none is known (or a failover runs)."""
        ep = self.resolver.current
        if ep is None or self.resolver.fenced:
            raise ConnectionError(self.resolver.unavailable_reason())
        return ep

    def upstream_changed(self, change: UpstreamChange) -> None:
        """The resolver fenced the old master or named a new one: the clients with a connection
        of their own to it stop being read, get the replies already due (within
        FAILOVER_DRAIN), and are closed (their clients reconnect, to the new master); shared
        links move (SharedLink.move). A new master's version is probed again."""
        if change.kind == "lift":
            return
        if change.kind == "switch" and change.old is None:
            if self._resolving:   # (found later than at start: start() probes it itself)
                self.tasks.spawn(self.probe_upstream())
            return
        moved = links = 0
        for c in list(self.clients):
            if c.upstream is not None and not c.closed and not c.draining:
                c.drain()
                self._moving.add(c)
                moved += 1
        for link in self.links + self.links3:
            links += link.move()
        if moved:
            log.warning("upstream: closing %d client connection(s) to %s (%s)", moved,
                        change.old, change.reason)
            self.tasks.spawn(self._close_moved(asyncio.get_running_loop().time()
                                               + FAILOVER_DRAIN))
        if moved or links:
            for kind, n in (("client", moved), ("shared", links)):
                metrics.UPSTREAM_MOVED.labels(kind).inc(n)
            audit.emit(Event("failover-moved", old=safe(str(change.old)), clients=moved,
                             links=links, reason=safe(change.reason, spaces=True)))
        if change.kind == "switch":
            self.tasks.spawn(self.probe_upstream())

    async def _close_moved(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        finished: set[ClientConnection] = set()
        while self._moving and loop.time() < deadline:
            for c in list(self._moving):
                if c.closed:
                    self._moving.discard(c)
                elif c not in finished and not c.owes_replies():
                    finished.add(c)
                    c.finish()
            await asyncio.sleep(MOVE_POLL)
        for c in list(self._moving):
            if c.closed:
                continue
            if c not in finished and c.owes_replies():
                log.warning("upstream failover: %s still waited for replies after %.3gs; "
                            "closing it", c.session.client_info, FAILOVER_DRAIN)
            c.transport.close()
        self._moving.clear()

    # -- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        audit.configure(self.config.audit)   # (AuditError: the file cannot be opened)
        for lst, tls in zip(self.listeners, self.listener_tls):
            label = f"{lst.host}:{lst.port}"   # (the configured address: a bounded label)
            if tls is None:
                srv = await loop.create_server(lambda a=label: self._client(a), lst.host,
                                               lst.port, reuse_address=True,
                                               reuse_port=self.reuse_port or None, backlog=1024)
            else:
                srv = await loop.create_server(lambda t=tls, a=label: TLSClientConnection(self, t, a),
                                               lst.host, lst.port, reuse_address=True,
                                               reuse_port=self.reuse_port or None, backlog=1024)
            self.servers.append(srv)
            log.info("listening on %s:%d%s", lst.host, lst.port, " (TLS)" if tls else "")
        for w in self.tls_warnings():
            log.warning("%s", w)
        if self.cluster is not None:
            await self.cluster.start()
        await self.resolver.start()
        self._resolving = True
        await self.probe_upstream()

    def _client(self, listener: str) -> ClientConnection:
        client = ClientConnection(self)
        client.listener = listener
        return client

    def shared_link(self, client: ClientConnection) -> SharedLink:
        if self.cluster is not None:   # the client's router over the nodes' shared links
            return self.cluster.shared_for(client)
        links = self.links3 if client.session.link_resp3 else self.links
        link = links[client.id % len(links)]
        link.clients.add(client)
        if link.flow.write_paused:
            client.hold_input(Hold.UPSTREAM, True)
        return link

    def watch_budget(self) -> None:
        if self._budget_timer is None:
            self._budget_timer = asyncio.get_running_loop().call_later(BUDGET_INTERVAL,
                                                                       self.check_budget)

    def check_budget(self) -> None:
        """Past the memory budget, no client is read (replies due still flow out) until the
        buffered total is back under three quarters of it; a total that stays over for
        BUDGET_EVICT_AFTER costs the client holding the most its connection (as Redis 7's
        maxmemory-clients), so that clients that never read cannot stop everyone for good."""
        self._budget_timer = None
        budget = self.config.memory_budget
        total = sum([c.buffered() for c in self.heavy])
        now = asyncio.get_running_loop().time()
        if total > budget:
            if not self.over_budget:
                log.warning("%d bytes of client data buffered, over limits.memory_budget (%d): "
                            "reading no client until it drains", total, budget)
                self.over_budget = True
                self._over_since = now
                for c in list(self.clients):
                    c.hold_input(Hold.BUDGET, True)
            elif now - self._over_since >= BUDGET_EVICT_AFTER and self.heavy:
                victim = max(self.heavy, key=ClientConnection.buffered)
                victim.evict(f"holds {victim.buffered()} bytes while the proxy is over "
                             "limits.memory_budget")
                self._over_since = now
        elif self.over_budget and total <= budget * 3 // 4:
            self.over_budget = False
            log.warning("client data buffered back under limits.memory_budget: reading clients")
            for c in list(self.clients):
                c.hold_input(Hold.BUDGET, False)
        if self.heavy or self.over_budget:
            self.watch_budget()

    def watch_idle(self) -> None:
        """Run sweep_idle every IDLE_SWEEP_FRACTION of limits.idle_timeout (within
        IDLE_SWEEP_MIN .. IDLE_SWEEP_MAX seconds) while it is set and clients are connected."""
        timeout = self.config.idle_timeout
        if timeout and self._idle_timer is None and not self.shutting_down:
            step = min(max(timeout * IDLE_SWEEP_FRACTION, IDLE_SWEEP_MIN), IDLE_SWEEP_MAX)
            self._idle_timer = asyncio.get_running_loop().call_later(step, self.sweep_idle)

    def sweep_idle(self) -> None:
        """limits.idle_timeout: close every logged-in connection idle that long (see
        ClientConnection.idle_for). One timer for all: nothing is done per command; a connection
        is closed between idle_timeout and idle_timeout plus two sweep steps after its last
        command."""
        self._idle_timer = None
        timeout = self.config.idle_timeout
        if not timeout or not self.clients:
            return
        now = asyncio.get_running_loop().time()
        idle = [c for c in self.clients if c.idle_for(now) >= timeout]
        for c in idle:
            c.close_idle()
        self.watch_idle()

    async def probe_upstream(self) -> None:
        """Learn the upstream's Redis version, so that replies use its wording."""
        if self.gate.config.upstream.version:
            return
        try:
            version = await asyncio.wait_for(self._probe(), self.config.upstream.connect_timeout)
        except Exception as e:   # noqa: BLE001 - any failure means "unknown for now"
            log.warning("could not read the upstream Redis version (%s); assuming %s until it can",
                        e.__class__.__name__ if not str(e) else e,
                        ".".join(map(str, self.gate.upstream_version)))
            if not self.tasks.closed:
                self._probe_timer = asyncio.get_running_loop().call_later(5, self._probe_again)
            return
        self.gate.set_upstream_version(version)
        log.info("upstream %s is Redis %s", self.resolver.describe(), ".".join(map(str, version)))

    def _probe_again(self) -> None:
        self._probe_timer = None
        self.tasks.spawn(self.probe_upstream())

    async def _probe(self) -> tuple[int, int, int]:
        up = self.config.upstream
        host, port = self.probe_address()
        ssl_ctx, server_hostname = self.upstream_ssl(host)
        reader, writer = await asyncio.open_connection(host, port,
                                                       ssl=ssl_ctx, server_hostname=server_hostname)
        try:
            info = (await dial.ask(reader, writer, self.config.upstream,
                                        [b"INFO", b"server"], passwords=self.gate.passwords))[-1]
            if isinstance(info, Exception):
                raise RuntimeError(f"upstream answered {str(info)[:80]}")
            for line in info.decode().splitlines():
                if line.startswith("redis_version:"):
                    parts = (line.split(":", 1)[1].strip().split(".") + ["0", "0"])[:3]
                    version = tuple(int(p) for p in parts)
                    break
            else:
                raise RuntimeError("no redis_version in INFO")
            if version >= (6, 0, 0) and (self.links or up.multiplex and self.cluster is not None):
                try:
                    await self._probe_hello(reader, writer)
                except (OSError, ConnectionError, UpstreamProtocolError) as e:
                    # (hello_reply then builds the reply from the version alone)
                    log.warning("could not read the upstream's HELLO reply (%s)", e)
            return version
        finally:
            writer.close()

    async def _probe_hello(self, reader, writer) -> None:
        """The upstream's replies to HELLO 2 and HELLO 3, which clients on shared links get
        (with the proxy's id for their connection: Gate.hello_reply)."""
        writer.write(b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        scanner, buf, frames = ReplyScanner(resp3=True), b"", []
        while len(frames) < 2:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            base = len(buf)
            buf += data
            frames += [base + f.end for f in scanner.feed(data)]
        first, second = buf[:frames[0]], buf[frames[0]:frames[1]]
        self.gate.set_hello_replies({2: first, 3: second})

    def reload(self) -> bool:
        """Re-read the config and TLS files. On any error the running state is kept. The audit
        file is re-opened first, whatever follows (logrotate's SIGHUP)."""
        audit.reopen()
        path = self.config.path
        try:
            config = load_config(path, allow_embedded=True)
        except ConfigError as e:
            for p in e.problems:
                log.error("reload rejected: %s", p)
            audit.emit(Event("reload", ok=False, problems=tuple(e.problems)))
            metrics.config_loaded(False)
            return False
        if config.upstream.embedded:
            config.upstream = self.config.upstream
        if config.upstream.cluster != self.config.upstream.cluster:
            log.warning("reload: a new upstream.cluster (or a switch between address and cluster) "
                        "takes effect only after a restart")
            config.upstream.cluster = self.config.upstream.cluster
        old = self.config.upstream
        if (config.upstream.host, config.upstream.port, config.upstream.sentinel) != \
                (old.host, old.port, old.sentinel):
            log.warning("reload: a new upstream address or upstream.sentinel takes effect only "
                        "after a restart")
            config.upstream.host, config.upstream.port = old.host, old.port
            config.upstream.sentinel = old.sentinel
        if config.upstream.multiplex != self.config.upstream.multiplex:
            # The shared links are made at start: sessions must not ask for links that are not
            # there (or leave them unused).
            log.warning("reload: a new upstream.multiplex takes effect only after a restart")
            config.upstream.multiplex = self.config.upstream.multiplex
        if config.upstream.password != self.config.upstream.password:
            log.info("upstream.password changed: new upstream connections use the new one; "
                     "open ones stay as they are")
        tls = self._reload_tls(config)
        if tls is None:
            log.error("reload rejected: the TLS settings above cannot be applied; users, rules and "
                      "TLS settings stay as they were")
            audit.emit(Event("reload", ok=False, problems=(
                "TLS settings cannot be applied (the log says which); nothing changed",)))
            metrics.config_loaded(False)
            return False
        listeners, upstream_tls = tls
        for old, (new, where) in zip(self.listener_tls, listeners):
            if old is None or new is old:
                continue
            changed = old.adopt(new)
            log.info("%s: TLS certificate reloaded from %s", old.where, old.cert_path)
            if changed:
                log.info("%s: %s changed; applies to new connections", where, ", ".join(changed))
        if upstream_tls is not None:
            changed = self._upstream_tls.changed_settings(upstream_tls)
            self._upstream_tls = upstream_tls
            log.info("upstream.tls: TLS files reloaded%s", f"; {', '.join(changed)} changed, "
                     "applies to new upstream connections" if changed else "")
        self.gate.reload(config)
        self.config = config
        self.watch_idle()   # (limits.idle_timeout may have been set)
        for w in config.warnings + self.tls_warnings():
            log.warning("%s", w)
        closed = 0
        for client in list(self.clients):
            was = client.session is None or client.session.ending
            try:
                client.reloaded()
            except Exception:   # a bug must cost one connection, never the reload
                log.exception("internal error re-checking %s after the reload; closing it",
                              client.session.client_info)
                client.transport.close()
                continue
            closed += not was and client.session.ending
        log.info("configuration reloaded: %d users%s", len(config.users),
                 f"; {closed} connections closed by the re-check" if closed else "")
        try:
            audit.configure(config.audit)
        except audit.AuditError as e:
            log.error("reload: %s; the audit trail stays as it was", e)
        audit.emit(Event("reload", ok=True, reason=f"{len(config.users)} users" + (
            f", {closed} connections closed by the re-check" if closed else "")))
        metrics.config_loaded(True)
        return True

    def _reload_tls(self, config: Config):
        """The reloaded config's TLS, built in full before anything changes: ([(ListenerTLS or
        None, where)] per running listener, UpstreamTLS or None), or None after logging every
        problem. Listeners keep their addresses (a changed list takes effect after a restart);
        a listener that would switch between plain and TLS, or an upstream between plain and
        TLS, refuses the reload."""
        from ..tls import ListenerTLS, TLSConfigError, UpstreamTLS   # (deferred: cryptography)
        base = config.path.parent if config.path else Path(".")
        by_address = {(lst.host, lst.port): lst for lst in config.listeners}
        running = [(lst.host, lst.port) for lst in self.listeners]
        if set(by_address) != set(running):
            log.warning("reload: listeners added, removed or moved take effect only after a restart")
        ok = True
        listeners = []
        for (address, old) in zip(running, self.listener_tls):
            lst = by_address.get(address)
            if lst is None:
                listeners.append((None, None))
                continue
            if (lst.tls is not None) != (old is not None):
                log.error("%s.tls: switching the listener %s:%d between plain and TLS needs a "
                          "restart", lst.where, *address)
                ok = False
                continue
            if old is None:
                listeners.append((None, None))
                continue
            try:
                listeners.append((ListenerTLS(lst.tls, base, where=old.where,
                                              default_handshake_timeout=config.handshake_timeout),
                                  f"{lst.where}.tls"))
            except TLSConfigError as e:
                log.error("%s: TLS reload failed, still using the previous certificate: %s",
                          old.where, "; ".join(e.problems))
                ok = False
        upstream_tls = None
        if (config.upstream.tls is not None) != (self._upstream_tls is not None):
            log.error("upstream.tls: switching the upstream between plain and TLS needs a restart")
            ok = False
        elif config.upstream.tls is not None:      # {} too: TLS with the system CAs
            try:
                upstream_tls = UpstreamTLS(config.upstream.tls, base, where="upstream.tls")
            except TLSConfigError as e:
                log.error("upstream.tls: TLS reload failed, still using the previous files: %s",
                          "; ".join(e.problems))
                ok = False
        if not ok:
            return None
        # (A listener whose address left the config keeps running as it was.)
        return [(new, where) if new is not None else (old, None)
                for (new, where), old in zip(listeners, self.listener_tls)], upstream_tls

    def tls_warnings(self) -> list[str]:
        from ..tls import ca_scope_warnings   # (deferred: cryptography)
        return ca_scope_warnings(self.listener_tls, self.gate.users)

    async def close(self, timeout: float = 0.0) -> None:
        """Stop, gracefully within ``timeout`` seconds (serve() gives shutdown.grace; 0: close
        every connection at once): stop accepting; let
        every client's commands read so far get their replies (new input is dropped); then end
        each connection (EOF first: see ClientConnection.finish); whatever is still open at the
        deadline (e.g. blocked in BLPOP) is closed."""
        self.shutting_down = True
        loop = asyncio.get_running_loop()
        audit.emit(Event("shutdown", reason=self.stop_reason, grace=timeout))
        deadline = loop.time() + timeout
        for srv in self.servers:
            srv.close()
        for c in list(self.clients):
            c.drain()
        finished: set[ClientConnection] = set()
        linger = None   # when every client had its replies: a moment to close its side
        while self.clients and loop.time() < deadline:
            for c in list(self.clients):
                if c not in finished and not c.owes_replies():
                    finished.add(c)
                    c.finish()
            if linger is None and finished >= self.clients:
                linger = min(deadline, loop.time() + 0.5)
            if linger is not None and loop.time() >= linger:
                break
            await asyncio.sleep(0.02)
        if self.clients:
            owed = sum(1 for c in self.clients if c.owes_replies())
            if owed:
                log.warning("shutdown: %d connection(s) still waiting for replies after %.3gs; "
                            "closing them", owed, timeout)
        for c in list(self.clients):
            if c.transport is not None:
                c.transport.close()
        for link in self.links + self.links3:
            link.close()
        if self.cluster is not None:
            self.cluster.close()
        await self.resolver.stop()
        for timer in (self._probe_timer, self._budget_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._probe_timer = self._budget_timer = self._idle_timer = None
        await self.tasks.close()   # (connection attempts still running: nothing outlives close)
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), max(1.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                pass
        # The closed connections' disconnect events (connection_lost comes a loop turn later),
        # then the audit goes back to the process log (its file is closed).
        settle = loop.time() + 1.0
        while self.clients and audit.configured() and loop.time() < settle:
            await asyncio.sleep(0.01)
        audit.configure(None)


def _install_uvloop() -> None:
    try:
        import uvloop   # (deferred: optional at run time)
    except ImportError:   # pragma: no cover - uvloop is a declared dependency
        log.warning("uvloop is not installed; using the default asyncio loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(config: Config, ready=None, stop: asyncio.Event | None = None,
                worker=None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set), then stop gracefully within
    ``shutdown.grace`` (Proxy.close); a second SIGINT/SIGTERM exits at once. SIGHUP reloads
    config and certificates. ``worker``: a ``workers.WorkerChannel`` when this process is one of
    ``serve --workers N``'s workers (listeners with SO_REUSEPORT; no pid file or admin listener
    of its own: the supervising parent keeps them; reload and stop also come from the parent)."""
    proxy = Proxy(config, reuse_port=worker is not None)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()

    def begin_stop(why: str) -> None:
        if stop.is_set():
            return
        log.info("%s: shutting down (grace %.3gs)", why, proxy.config.shutdown_grace)
        proxy.shutting_down = True
        proxy.stop_reason = why      # (the audit's shutdown event)
        stop.set()

    signalled: list[int] = []

    def on_signal(signum: int) -> None:
        # A worker's stop may come first from the parent (control socket, or its end): only a
        # second *signal* means "at once" (systemd's control-group kill signals the worker too).
        if stop.is_set() and (worker is None or signalled):
            log.warning("%s again: exiting at once", signal.Signals(signum).name)
            if config.pid_file:
                pidfile.release(config.pid_file)
            os._exit(128 + signum)
        signalled.append(signum)
        begin_stop(signal.Signals(signum).name)

    # Before start(): a SIGHUP while it probes the upstream must reload, not end the process;
    # a SIGTERM then stops it as gracefully as later.
    loop.add_signal_handler(signal.SIGHUP, proxy.reload)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    if worker is not None:
        worker.attach(proxy, begin_stop)
    if config.pid_file:
        # After the SIGHUP handler: `redisgate reload` must not end a process without it.
        pidfile.claim(config.pid_file)      # PidFileError: a live redisgate holds it
    try:
        await proxy.start()
    except BaseException:
        if config.pid_file:
            pidfile.release(config.pid_file)
        raise
    if (resp._c_scan is None or Lane is None) and (worker is None or worker.index == 0):
        log.warning("redisgate._native._speedups or redisgate._native._lane is not built (or "
                    "REDISGATE_PURE_PYTHON or REDISGATE_NO_LANE is set): the request parser or "
                    "the connections' steady state runs as pure Python (slower: see "
                    "bench/README.md)")
    admin = None
    if config.admin_listen:
        from .admin import Admin   # (deferred: only with an admin listener)
        admin = Admin(proxy, *config.admin_listen)
        admin.start()
    if worker is not None:
        worker.started()
    if ready is not None:
        ready(proxy)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        # (proxy.config: a reload may have changed shutdown.grace)
        await proxy.close(proxy.config.shutdown_grace)
        if admin is not None:
            await admin.stop()
        if worker is not None:
            await worker.close()
        if config.pid_file:
            pidfile.release(config.pid_file)
        log.info("stopped")


def run(config: Config, ready=None, worker=None) -> None:
    _install_uvloop()
    asyncio.run(serve(config, ready, worker=worker))
