"""One client connection's commands over a Redis Cluster, sans-I/O: where each goes, and its
reply back in the client's order.

The session (session.py) has judged every command, exactly as in front of one Redis, and writes
what passed as if to one upstream connection. A `Router` takes those bytes (`submit`), routes
each command to the master that owns its slot (`route.plan`), and collects per node the bytes to
write (`sends`); the I/O layer (cluster/io.py) writes them on that client's connection to that
node (opened on first use) and hands back what each node answers (`node_data`). The Router puts
the replies back in the order the commands came (`out`), so the session sees one Redis:

* one `Entry` per command, in a queue in command order; a command's reply goes to the client
  once every command before it has its reply. An entry has one part per node the command went to
  (Split, AllMasters, keyspace-wide fan-outs), merged by `route.merge` when all are in.
* per node, a FIFO of `Pending` (which entry and part each reply is for; None: the proxy's own
  command, its reply swallowed). A node's replies come in the order its commands were written.
* `-MOVED` and `-ASK` are followed here (`view.moved` updates the slot map; ASK sends `ASKING`
  first), at most `MAX_REDIRECTS` times per command, then the last error goes to the client.
  Commands of a transaction are not followed (the transaction is pinned to one node).
* MULTI .. EXEC and WATCH are pinned to the node of the first key's slot; a key of another slot
  is answered `-CROSSSLOT` here and EXEC then gets `-EXECABORT` (the pinned node gets DISCARD).
  MULTI and keyless commands before the first key wait until the pin is known.
* A subscribe-family command moves the connection, for the rest of its life, to one node (the
  home master, or the shard channel's master for SSUBSCRIBE), after every reply due elsewhere
  came: from then on its commands go there and that node's bytes pass through unchanged (Redis
  Cluster broadcasts PUBLISH to every node).
* Keyless commands go to the connection's home master (a master picked at random, kept while it
  is a master). DBSIZE (sum), KEYS (concatenated), FLUSHALL / FLUSHDB (+OK), RANDOMKEY (a key of
  a master picked at random among those that have keys) go to every master; SCAN walks the
  masters one after the other (the cursor carries the master's index in its low 10 bits); INFO
  and the rest are the home master's.

`View` is the I/O layer's cluster map (NodeAddr per slot, the masters, the proxy's own setup
commands for a new node connection). Nothing here opens a socket or reads a clock.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import hiredis

from ..protocol import errors, resp
from ..protocol.commands import TABLE, KeyExtractionError
from ..protocol.resp import ReplyScanner, UpstreamProtocolError, encode_command
from .route import (CROSSSLOT_REPLY, AllMasters, AnySlot, CrossSlot, Merge, MergeError,
                    SingleSlot, Split, merge, merge_split, plan)
from .slots import key_slot
from .topology import NodeAddr, Redirect, RedirectKind, TopologyError, parse_redirect

__all__ = ["MAX_REDIRECTS", "View", "Router", "Hop", "NodeProblem", "CLUSTERDOWN_UNSERVED",
           "SCAN_NODE_BITS"]

MAX_REDIRECTS = 5
CLUSTERDOWN_UNSERVED = b"-CLUSTERDOWN Hash slot not served\r\n"
CLUSTERDOWN = b"-CLUSTERDOWN The cluster is down\r\n"
NO_MAP = (b"-ERR redisgate: upstream Redis unavailable (no node of the cluster answered "
          b"CLUSTER SLOTS)\r\n")
SCAN_NODE_BITS = 10          # SCAN's cursor: the master's index in the low bits
_SCAN_NODE_MASK = (1 << SCAN_NODE_BITS) - 1
_OK = b"+OK\r\n"

_SUBSCRIBE_FAMILY = frozenset({"subscribe", "psubscribe", "ssubscribe", "unsubscribe",
                               "punsubscribe", "sunsubscribe"})
# Keyspace-wide commands answered from every master, merged.
_FANOUT = {"dbsize": Merge.SUM, "keys": "concat", "flushall": Merge.OK, "flushdb": Merge.OK,
           "randomkey": "random"}


class View(Protocol):
    def master_for(self, slot: int) -> NodeAddr | None: ...
    def masters(self) -> tuple[NodeAddr, ...]: ...
    def moved(self, redirect: Redirect) -> None: ...
    def setup_commands(self) -> list[bytes]: ...
    def refresh_soon(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Hop:
    """A redirect the Router followed: `kind` (MOVED / ASK), from the node that answered it
    (`source`) to the node it named (`target`). The I/O layer counts them (metrics, storms)."""
    kind: RedirectKind
    source: NodeAddr
    target: NodeAddr


@dataclass(frozen=True, slots=True)
class NodeProblem:
    """Something wrong with a node that the Router saw in its replies: `stage` ``login`` (the
    node refused the proxy's own set-up: authentication or protocol selection) or ``protocol``
    (a malformed reply, or one nobody asked for). `detail` is for the log (no client data)."""
    node: NodeAddr
    stage: str
    detail: str

    def line(self) -> str:
        return f"cluster node {self.node}: {self.detail}"


@dataclass(slots=True, eq=False)
class Entry:
    """One client command's reply: `parts` (raw replies, one per node it went to), then
    `combine(parts)` (None: the one part as it came)."""
    parts: list
    left: int
    combine: Callable[[list], bytes] | None = None


@dataclass(slots=True, eq=False)
class Pending:
    """What a node's next reply is for: part `index` of `entry` (None: swallowed; `setup`: the
    proxy's own login, whose refusal ends the client's upstream)."""
    entry: Entry | None
    index: int = 0
    args: tuple = ()
    redirects: int = 0
    follow: bool = True
    setup: str | None = None


@dataclass(slots=True, eq=False)
class _Node:
    fifo: deque = field(default_factory=deque)
    scanner: ReplyScanner = field(default_factory=lambda: ReplyScanner(resp3=True))
    partial: bytearray = field(default_factory=bytearray)
    passthrough: bool = False     # the pub/sub node, once its own replies are in: bytes pass


class Router:
    """See the module docstring. After `submit`, `node_data` or `node_failed`, the I/O layer
    writes `sends` (NodeAddr -> chunks, emptied by `take_sends`), gives `out` to the session
    (`take_out`), and ends the client's upstream if `fatal` is set."""

    def __init__(self, view: View, rng: random.Random | None = None, shared: bool = False):
        self.view = view
        # On shared links (upstream.multiplex): the links log in (and speak RESP3) by themselves,
        # and the session sends only stateless commands; `expected` counts per node the replies
        # asked since `take_sends`, `replies` the client's replies put in `out`.
        self.shared = shared
        self.expected: dict[NodeAddr, int] = {}
        self.replies = 0
        self.rng = rng or random.Random()
        self.queue: deque[Entry] = deque()
        self.nodes: dict[NodeAddr, _Node] = {}
        self.sends: dict[NodeAddr, list[bytes]] = {}
        self.out: list[bytes] = []
        self.fatal: str | None = None
        self.log: list[NodeProblem] = []  # for the I/O layer's log, audit and metrics
        self.redirected: dict[Hop, int] = {}   # MOVED / ASK followed since the I/O layer looked
        # What the session forwarded, read by the one request parser (protocol.resp), its
        # limits the config's ceilings: the session already held the client to the configured ones.
        self._requests = resp.RequestParser(max_bulk=2**32, max_args=2**31 - 1,
                                            authenticated=True)
        self.resp3 = False
        self.home: NodeAddr | None = None
        # MULTI / WATCH
        self.multi = False
        self.dirty = False
        self.pin: NodeAddr | None = None
        self.pin_slot: int | None = None
        self._multi_buf: list[tuple[tuple, Entry]] = []
        # pub/sub: the node this connection moved to, or the commands waiting to move
        self.pubsub: NodeAddr | None = None
        self._held: list[bytes] | None = None

    # ------------------------------------------------------------------ from the session

    def submit(self, data: bytes) -> None:
        """Commands the session forwarded (whole RESP requests)."""
        if self.fatal is not None:
            return
        parser = self._requests
        parser.feed(data)
        while True:
            try:
                req = parser.next()
            except resp.ProtocolError:   # the session sends only whole, canonical requests
                self.fatal = "internal error: a malformed request for the cluster"
                return
            if req is None:
                return
            args = req.args
            if self._held is not None:
                self._held.append(req.raw if req.raw is not None else encode_command(args))
            elif self.pubsub is not None:
                self._write(self.pubsub, req.raw if req.raw is not None else encode_command(args))
            else:
                self._route(args)

    def _route(self, args: list[bytes]) -> None:
        spec = TABLE.lookup(args)
        name = spec.name if spec is not None else ""
        if name == "auth":
            # The proxy's own login (session.upstream.send_setup): every node connection logs in by
            # itself when it is opened (View.setup_commands).
            return self._local(_OK)
        if not self.view.masters():   # no slot map yet (or none left): ask again
            self.view.refresh_soon()
            if self.multi:
                self.dirty = True
                if name in ("exec", "discard"):
                    buf, self._multi_buf = self._multi_buf, []
                    for _, e in buf:
                        self._fill(e, 0, NO_MAP)
                    self.multi = self.dirty = False
                    self.pin = self.pin_slot = None
            return self._local(NO_MAP)
        if name in _SUBSCRIBE_FAMILY:
            return self._subscribe(args, name)
        if name == "multi" and not self.multi:
            self.multi, self.dirty = True, False
            entry = self._entry()
            if self.pin is not None:
                self._send(self.pin, args, entry, follow=False)
            else:
                self._multi_buf.append((tuple(args), entry))
            return
        if self.multi:
            return self._in_multi(args, spec, name)
        if name == "watch":
            return self._watch(args, spec)
        if name == "unwatch":
            node = self.pin or self._home()
            self.pin = self.pin_slot = None
            return self._send_or_down(node, args, self._entry(), follow=False)
        if name in ("exec", "discard"):
            # Outside MULTI: Redis's "without MULTI" error, from any node.
            return self._send_or_down(self.pin or self._home(), args, self._entry(), follow=False)
        if name == "hello":
            return self._hello(args)
        if name == "reset":
            return self._reset(args)
        if spec is None:
            return self._send_or_down(self._home(), args, self._entry())
        try:
            p = plan(spec, args)
        except KeyExtractionError as e:
            return self._local(e.reply)
        if type(p) is SingleSlot:
            node = self.view.master_for(p.slot)
            if node is None:
                return self._local(CLUSTERDOWN_UNSERVED)
            return self._send(node, args, self._entry(), slot_known=True)
        if type(p) is AnySlot:
            fan = _FANOUT.get(name)
            if fan is not None:
                return self._all_masters(args, fan)
            if name == "scan":
                return self._scan(args)
            return self._send_or_down(self._home(), args, self._entry())
        if type(p) is CrossSlot:
            return self._local(p.reply)
        if type(p) is Split:
            nodes = []
            for g in p.groups:
                node = self.view.master_for(g.slot)
                if node is None:
                    return self._local(CLUSTERDOWN_UNSERVED)
                nodes.append(node)
            split = p
            resp3 = self.resp3
            entry = self._entry(len(nodes), lambda parts: _merged(merge_split, split, parts,
                                                                  resp3))
            for i, (g, node) in enumerate(zip(p.groups, nodes)):
                self._send(node, list(g.args), entry, index=i)
            return
        if type(p) is AllMasters:
            return self._all_masters(args, p.merge)
        raise AssertionError(f"unknown plan {p!r}")

    # -- the kinds of commands

    def _all_masters(self, args, rule) -> None:
        masters = self.view.masters()
        if not masters:
            return self._local(CLUSTERDOWN)
        if rule == "concat":
            combine = _concat
        elif rule == "random":
            rng = self.rng
            combine = lambda parts: _random_key(parts, rng)   # noqa: E731
        else:
            resp3 = self.resp3
            combine = lambda parts: _merged(merge, rule, parts, resp3=resp3)   # noqa: E731
        entry = self._entry(len(masters), combine)
        for i, node in enumerate(masters):
            self._send(node, args, entry, index=i, follow=False)

    def _scan(self, args) -> None:
        masters = sorted(self.view.masters())
        cursor = resp.string2ll(args[1]) if len(args) > 1 else None
        if not masters or cursor is None or cursor < 0:
            # (a malformed cursor: the node's own error)
            return self._send_or_down(self._home(), args, self._entry())
        index, node_cursor = cursor & _SCAN_NODE_MASK, cursor >> SCAN_NODE_BITS
        if index >= len(masters):
            return self._local(b"-ERR invalid cursor\r\n")
        count = len(masters)

        def combine(parts: list) -> bytes:
            raw = parts[0]
            try:
                value = _one(raw)
            except MergeError:
                return raw
            if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], bytes)
                    and isinstance(value[1], list)):
                return raw   # an error reply, or not SCAN's shape: as it came
            nxt = resp.string2ll(value[0])
            if nxt is None or nxt < 0 or nxt >> (64 - SCAN_NODE_BITS):
                return b"-ERR redisgate: a cluster node's SCAN cursor is out of range\r\n"
            if nxt:
                out = (nxt << SCAN_NODE_BITS) | index
            else:
                out = index + 1 if index + 1 < count else 0
            start = raw.index(b"\r\n") + 2                    # past "*2"
            start = raw.index(b"\r\n", start) + 2             # past the cursor's "$n"
            start = raw.index(b"\r\n", start) + 2             # past the cursor
            return b"*2\r\n" + resp.bulk(str(out).encode()) + raw[start:]

        rewritten = [args[0], str(node_cursor).encode(), *args[2:]]
        self._send(masters[index], rewritten, self._entry(1, combine), follow=False)

    def _watch(self, args, spec) -> None:
        try:
            p = plan(spec, args)
        except KeyExtractionError as e:
            return self._local(e.reply)
        if type(p) is not SingleSlot:
            return self._local(CROSSSLOT_REPLY)
        if self.pin is None:
            node = self.view.master_for(p.slot)
            if node is None:
                return self._local(CLUSTERDOWN_UNSERVED)
            self.pin, self.pin_slot = node, p.slot
        elif p.slot != self.pin_slot:
            return self._local(CROSSSLOT_REPLY)
        self._send(self.pin, args, self._entry(), follow=False)

    def _in_multi(self, args, spec, name) -> None:
        if name in ("exec", "discard"):
            return self._end_multi(args, name)
        if name in _SUBSCRIBE_FAMILY or name in ("hello", "reset"):
            self.dirty = True
            return self._local(resp.error(f"ERR redisgate: {name.upper()} inside MULTI is not "
                                          "supported with a Redis Cluster upstream"))
        slot = None
        if spec is not None and name not in ("watch", "multi"):
            try:
                p = plan(spec, args)
            except KeyExtractionError as e:
                self.dirty = True
                return self._local(e.reply)
            if type(p) is SingleSlot:
                slot = p.slot
            elif type(p) in (CrossSlot, Split):
                self.dirty = True
                return self._local(CROSSSLOT_REPLY)
        entry = self._entry()
        if slot is not None:
            if self.pin is None:
                node = self.view.master_for(slot)
                if node is None:
                    self.dirty = True
                    self.queue.pop()
                    return self._local(CLUSTERDOWN_UNSERVED)
                self.pin, self.pin_slot = node, slot
            elif slot != self.pin_slot:
                self.dirty = True
                self.queue.pop()
                return self._local(CROSSSLOT_REPLY)
        if self.pin is None:
            self._multi_buf.append((tuple(args), entry))
            return
        self._flush_multi()
        self._send(self.pin, args, entry, follow=False)

    def _flush_multi(self) -> None:
        buf, self._multi_buf = self._multi_buf, []
        for a, e in buf:
            self._send(self.pin, list(a), e, follow=False)

    def _end_multi(self, args, name) -> None:
        if self.pin is None:
            node = self._home()
            if node is None:
                self._multi_buf, self.multi = [], False
                # (the buffered MULTI's entry waits: answer it and this one)
                return self._down_all()
            self.pin = node
        self._flush_multi()
        if name == "exec" and self.dirty:
            self._send(self.pin, [b"DISCARD"], self._entry(1, lambda parts: errors.execabort()),
                       follow=False)
        else:
            self._send(self.pin, args, self._entry(), follow=False)
        self.multi = self.dirty = False
        self.pin = self.pin_slot = None

    def _down_all(self) -> None:
        """No master to run a transaction on: its waiting entries and EXEC get CLUSTERDOWN."""
        for e in self.queue:
            if e.left:
                for i, part in enumerate(e.parts):
                    if part is None:
                        e.parts[i] = CLUSTERDOWN
                e.left = 0
        self._local(CLUSTERDOWN)

    def _subscribe(self, args, name) -> None:
        if self.multi:
            return self._in_multi(args, None, name)
        node = None
        if name in ("ssubscribe", "sunsubscribe") and len(args) > 1:
            node = self.view.master_for(key_slot(args[1]))
        node = node or self._home()
        if node is None:
            return self._local(CLUSTERDOWN)
        if self.queue:
            self._held = [encode_command(args)]
            self._pubsub_target = node
            return
        self._enter_pubsub(node, [encode_command(args)])

    def _enter_pubsub(self, node: NodeAddr, commands: list[bytes]) -> None:
        self.pubsub = node
        st = self._node(node)
        if not st.fifo and not st.partial and st.scanner.idle:
            st.passthrough = True
        for cmd in commands:
            self._write(node, cmd)

    def _hello(self, args) -> None:
        node = self._home()
        if node is None:
            return self._local(CLUSTERDOWN)
        proto = resp.string2ll(args[1]) if len(args) > 1 else None
        self._send(node, args, self._entry(), follow=False)
        if proto in (2, 3) and (proto == 3) != self.resp3:
            self.resp3 = proto == 3
            # The other node connections speak the client's protocol from now on (their
            # replies to commands sent before it still come in the old one, as they should).
            for other in self.nodes:
                if other != node:
                    self._send(other, [b"HELLO", str(proto).encode()], None, follow=False)

    def _reset(self, args) -> None:
        node = self._home()
        if node is None:
            return self._local(b"+RESET\r\n")
        self.multi = self.dirty = False
        self.pin = self.pin_slot = None
        self._multi_buf = []
        self.resp3 = False
        if node not in self.nodes:
            self._node(node)
        for other in list(self.nodes):
            self._send(other, args, self._entry() if other == node else None, follow=False)
            # RESET logs the connection out: log in again (replies swallowed)
            for cmd in self.view.setup_commands():
                self._write(other, cmd)
                self._expect(other, Pending(None, setup="authentication"))

    # -- plumbing

    def _entry(self, parts: int = 1, combine=None) -> Entry:
        e = Entry([None] * parts, parts, combine)
        self.queue.append(e)
        return e

    def _local(self, reply: bytes) -> None:
        if not self.queue:
            self.out.append(reply)
            self.replies += 1
        else:
            self.queue.append(Entry([reply], 0))

    def _home(self) -> NodeAddr | None:
        masters = self.view.masters()
        if self.home not in masters:
            self.home = self.rng.choice(masters) if masters else None
        return self.home

    def _node(self, node: NodeAddr) -> _Node:
        st = self.nodes.get(node)
        if st is None:
            st = self.nodes[node] = _Node()
            if self.shared:
                return st
            for cmd in self.view.setup_commands():
                self._write(node, cmd)
                self._expect(node, Pending(None, setup="authentication"))
            if self.resp3:
                self._write(node, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
                self._expect(node, Pending(None, setup="protocol selection"))
        return st

    def _write(self, node: NodeAddr, data: bytes) -> None:
        self._node(node) if node not in self.nodes else None
        chunks = self.sends.get(node)
        if chunks is None:
            self.sends[node] = [data]
        else:
            chunks.append(data)

    def _send(self, node: NodeAddr, args, entry: Entry | None, *, index: int = 0,
              follow: bool = True, redirects: int = 0, asking: bool = False,
              slot_known: bool = False) -> None:
        self._node(node)
        if asking:
            self._write(node, b"*1\r\n$6\r\nASKING\r\n")
            self._expect(node, Pending(None))
        self._write(node, encode_command(args))
        self._expect(node, Pending(entry, index, tuple(args), redirects, follow))

    def _expect(self, node: NodeAddr, p: Pending) -> None:
        self.nodes[node].fifo.append(p)
        self.expected[node] = self.expected.get(node, 0) + 1

    def _send_or_down(self, node, args, entry, follow: bool = True) -> None:
        if node is None:
            self._fill(entry, 0, CLUSTERDOWN)
        else:
            self._send(node, args, entry, follow=follow)

    def take_sends(self) -> dict[NodeAddr, list[bytes]]:
        sends, self.sends = self.sends, {}
        self.expected = {}
        return sends

    def take_out(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

    # ------------------------------------------------------------------ from the nodes

    def node_data(self, node: NodeAddr, data: bytes) -> None:
        """Bytes from this client's connection to `node`."""
        st = self.nodes.get(node)
        if st is None or self.fatal is not None:
            return
        if st.passthrough:
            self.out.append(data)
            return
        try:
            frames = st.scanner.feed(data)
        except UpstreamProtocolError as e:
            self.log.append(NodeProblem(node, "protocol", f"protocol error: {e}"))
            return self._lost(node, "protocol error", fatal=True)
        pos = 0
        for frame in frames:
            raw = bytes(data[pos:frame.end])
            if st.partial:
                raw = bytes(st.partial) + raw
                st.partial.clear()
            pos = frame.end
            if frame.kind == b">":
                self.out.append(raw) if not self.queue else self._oob(raw)
                continue
            if not st.fifo:
                if node == self.pubsub:
                    st.passthrough = True
                    self.out.append(raw + bytes(data[pos:]))
                    return
                self.log.append(NodeProblem(node, "protocol", "a reply nobody asked for (dropped)"))
                continue
            p = st.fifo.popleft()
            self._reply(node, p, raw, frame.kind)
            if self.fatal is not None:
                return
            if node == self.pubsub and not st.fifo:
                st.passthrough = True
                if pos < len(data):
                    self.out.append(bytes(data[pos:]))
                return
        if pos < len(data):
            st.partial += data[pos:]

    def _oob(self, raw: bytes) -> None:
        """A push while replies are due: it goes out between whole replies, at once (pushes
        are out of band: the session passes them wherever they come)."""
        self.out.append(raw)

    def _reply(self, node: NodeAddr, p: Pending, raw: bytes, kind: bytes) -> None:
        if p.entry is None:
            if p.setup is not None and kind in (b"-", b"!"):
                text = raw[1:].split(b"\r\n", 1)[0].decode("utf-8", "replace")[:200]
                self.log.append(NodeProblem(node, "login", f"refused the proxy's {p.setup}: {text}"))
                self.fatal = f"upstream {p.setup} failed"
            return
        if kind == b"-" and p.follow and (raw.startswith(b"-MOVED ") or raw.startswith(b"-ASK ")):
            if p.redirects < MAX_REDIRECTS:
                try:
                    r = parse_redirect(raw, node)
                except TopologyError:
                    r = None
                if r is not None:
                    hop = Hop(r.kind, node, r.node)
                    self.redirected[hop] = self.redirected.get(hop, 0) + 1
                    if r.kind is RedirectKind.MOVED:
                        self.view.moved(r)
                    self._send(r.node, list(p.args), p.entry, index=p.index, follow=True,
                               redirects=p.redirects + 1, asking=r.kind is RedirectKind.ASK)
                    return
        self._fill(p.entry, p.index, raw)

    def _fill(self, entry: Entry, index: int, raw: bytes) -> None:
        if entry.parts[index] is None:
            entry.parts[index] = raw
            entry.left -= 1
        self._drain()

    def _drain(self) -> None:
        queue, out = self.queue, self.out
        while queue and not queue[0].left:
            e = queue.popleft()
            out.append(e.combine(e.parts) if e.combine is not None else e.parts[0])
            self.replies += 1
        if not queue and self._held is not None:
            held, self._held = self._held, None
            self._enter_pubsub(self._pubsub_target, held)

    def node_failed(self, node: NodeAddr, reason: str) -> None:
        """The connection to `node` could not be opened, or was lost."""
        self._lost(node, reason, fatal=node == self.pubsub or node == self.pin)

    def _lost(self, node: NodeAddr, reason: str, fatal: bool) -> None:
        st = self.nodes.pop(node, None)
        self.sends.pop(node, None)
        self.expected.pop(node, None)
        if fatal:
            # Its transaction, WATCH or subscriptions are gone: as a Redis restart.
            self.fatal = f"cluster node {node}: {reason}"
            return
        if st is None:
            return
        err = resp.error(f"ERR redisgate: cluster node {node} unavailable ({reason})")
        for p in st.fifo:
            if p.entry is not None:
                self._fill(p.entry, p.index, err)

    @property
    def idle(self) -> bool:
        return not self.queue


def _one(raw: bytes):
    reader = hiredis.Reader()
    try:
        reader.feed(raw)
        v = reader.gets()
    except Exception as e:   # noqa: BLE001
        raise MergeError(str(e)) from None
    if v is False:
        raise MergeError("incomplete")
    return v


def _merged(fn, what, parts, resp3=False) -> bytes:
    try:
        return fn(what, parts, resp3=resp3)
    except MergeError as e:
        return resp.error(f"ERR redisgate: cannot merge the cluster nodes' replies ({e})")


def _random_key(parts: list, rng: random.Random) -> bytes:
    """RANDOMKEY from every master: the key of a master picked at random among those that have
    one (the first error wins; none has a key: the first master's null)."""
    for raw in parts:
        if raw[:1] in (b"-", b"!"):
            return raw
    keys = [raw for raw in parts if raw[:1] == b"$" and raw[1:2] != b"-"]
    return rng.choice(keys) if keys else parts[0]


def _concat(parts: list) -> bytes:
    """KEYS from every master: the arrays' elements, concatenated (first error wins)."""
    bodies, total = [], 0
    for raw in parts:
        if raw[:1] in (b"-", b"!"):
            return raw
        if raw[:1] not in (b"*", b"~"):
            return resp.error("ERR redisgate: cannot merge the cluster nodes' replies (an array "
                              "expected)")
        eol = raw.index(b"\r\n")
        n = resp.string2ll(raw[1:eol])
        if n is None or n < 0:
            return resp.error("ERR redisgate: cannot merge the cluster nodes' replies")
        total += n
        bodies.append(raw[eol + 2:])
    return b"*%d\r\n" % total + b"".join(bodies)
