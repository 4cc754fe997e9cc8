"""The cluster's slot map (`Topology`) from `CLUSTER SLOTS` / `CLUSTER SHARDS`, and MOVED / ASK.

Pure code: it imports only the standard library, `hiredis` (the reader for replies the proxy
itself consumes) and `slots`. Everything here reads upstream replies, which the proxy trusts less
than its own code: anything that is not what Redis sends raises `TopologyError` (a `ValueError`)
with a short `what: why`, never another exception, and nothing is sized from a declared length.

Endpoints. Redis 7 lists a node by its *preferred endpoint* (`cluster-preferred-endpoint-type`):
an IP, a hostname, `?` (hostname type, but the node has none: unusable) or, for the
`unknown-endpoint` type, NULL / an empty string, meaning "the host you asked, with this port".
The same holds for the empty host of `-MOVED 3999 :6381`. Every parser that can meet that form
takes `asked`, the node the reply came from.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import hiredis

from .slots import SLOTS

__all__ = [
    "TopologyError", "NodeAddr", "SlotRange", "Shard", "Topology", "RedirectKind", "Redirect",
    "parse_slots_reply", "topology_from_slots", "parse_shards_reply", "topology_from_shards",
    "parse_redirect", "read_reply",
]

_MAX_HOST = 255


class TopologyError(ValueError):
    """A reply or error line that is not what Redis Cluster sends."""


@dataclass(frozen=True, slots=True, order=True)
class NodeAddr:
    """A node's address as the cluster gives it (an IP or a hostname, and a TCP port)."""
    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536:
            raise TopologyError(f"port {self.port!r}: not in 1..65535")
        h = self.host
        if not isinstance(h, str) or not h or len(h) > _MAX_HOST or not h.isascii() \
                or not h.isprintable() or " " in h:
            raise TopologyError(f"host {h!r}: not a printable ASCII host name or address")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SlotRange:
    """Slots `start..end`, both included."""
    start: int
    end: int

    def __post_init__(self) -> None:
        for v in (self.start, self.end):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < SLOTS:
                raise TopologyError(f"slot {v!r}: not in 0..{SLOTS - 1}")
        if self.start > self.end:
            raise TopologyError(f"slot range {self.start}-{self.end}: start after end")


@dataclass(frozen=True, slots=True)
class Shard:
    """One master, its replicas, and the slot ranges it serves (may be none)."""
    master: NodeAddr
    replicas: tuple[NodeAddr, ...] = ()
    ranges: tuple[SlotRange, ...] = ()
    master_id: str | None = None


@dataclass(frozen=True)
class Topology:
    """The slot map: `shards`, and for every slot the index of its shard in `shards` (-1: no one
    serves it). Build with `Topology.build` (which checks that no slot is served twice)."""
    shards: tuple[Shard, ...]
    owner: tuple[int, ...] = field(repr=False)

    @classmethod
    def build(cls, shards: list[Shard] | tuple[Shard, ...]) -> "Topology":
        owner = [-1] * SLOTS
        for i, shard in enumerate(shards):
            for r in shard.ranges:
                for s in range(r.start, r.end + 1):
                    if owner[s] != -1:
                        raise TopologyError(
                            f"slot {s}: served by both {shards[owner[s]].master} and {shard.master}")
                    owner[s] = i
        return cls(tuple(shards), tuple(owner))

    def shard_for(self, slot: int) -> Shard | None:
        i = self.owner[slot]
        return self.shards[i] if i >= 0 else None

    def master_for(self, slot: int) -> NodeAddr | None:
        """The master serving `slot`, or None where no one does."""
        i = self.owner[slot]
        return self.shards[i].master if i >= 0 else None

    @property
    def masters(self) -> tuple[NodeAddr, ...]:
        return tuple(s.master for s in self.shards)

    @property
    def covered(self) -> bool:
        """Every slot has a master (`cluster_state:ok` needs that, by default)."""
        return -1 not in self.owner

    def nodes(self) -> tuple[NodeAddr, ...]:
        """Every node, masters first."""
        return self.masters + tuple(r for s in self.shards for r in s.replicas)


# --- reading a raw reply -------------------------------------------------------------------------

def read_reply(raw: bytes) -> object:
    """Exactly one whole RESP reply from `raw`, parsed by hiredis (bulk strings stay bytes).

    An error reply comes back as `hiredis.ReplyError`; a missing, truncated or trailing part,
    or a protocol error, raises TopologyError."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TopologyError(f"reply: bytes expected, not {type(raw).__name__}")
    reader = hiredis.Reader()
    try:
        reader.feed(raw)
        value = reader.gets()
        if value is False:
            raise TopologyError("reply: incomplete")
        if reader.gets() is not False:
            raise TopologyError("reply: more than one reply")
    except TopologyError:
        raise
    except Exception as e:  # hiredis: ProtocolError, or TypeError for a RESP3 map keyed by an array
        raise TopologyError(f"reply: not a valid RESP reply ({type(e).__name__}: {e})") from None
    if reader.has_data():
        raise TopologyError("reply: bytes after the reply")
    return value


def _reject_error(value: object, what: str) -> None:
    if isinstance(value, hiredis.ReplyError):
        raise TopologyError(f"{what}: error reply {str(value)[:200]!r}")


def _int(v: object, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TopologyError(f"{what}: integer expected, got {type(v).__name__}")
    return v


def _text(v: object, what: str) -> str:
    if not isinstance(v, (bytes, str)):
        raise TopologyError(f"{what}: string expected, got {type(v).__name__}")
    if isinstance(v, bytes):
        try:
            v = v.decode("ascii")
        except UnicodeDecodeError:
            raise TopologyError(f"{what}: not ASCII") from None
    return v


def _host(v: object, asked: NodeAddr | None, what: str) -> str | None:
    """The host of an endpoint; the asked node's host for NULL / ''; None for '?' (unusable)."""
    if v is None or v in (b"", ""):
        if asked is None:
            raise TopologyError(f"{what}: empty endpoint, and no asked node to take the host from")
        return asked.host
    h = _text(v, what)
    return None if h == "?" else h


def _node(entry: object, asked: NodeAddr | None, what: str) -> tuple[NodeAddr | None, str | None]:
    """A CLUSTER SLOTS node entry: [endpoint, port, id?, metadata?...] -> (addr or None, id)."""
    if not isinstance(entry, list) or len(entry) < 2:
        raise TopologyError(f"{what}: [endpoint, port, ...] expected")
    host = _host(entry[0], asked, what)
    port = _int(entry[1], what + " port")
    node_id = _text(entry[2], what + " id") if len(entry) > 2 and entry[2] is not None else None
    return (NodeAddr(host, port) if host is not None else None), node_id


# --- CLUSTER SLOTS -------------------------------------------------------------------------------

def parse_slots_reply(raw: bytes, asked: NodeAddr | None = None) -> Topology:
    """The Topology from the raw reply bytes of `CLUSTER SLOTS` sent to `asked`."""
    return topology_from_slots(read_reply(raw), asked)


def topology_from_slots(value: object, asked: NodeAddr | None = None) -> Topology:
    """The Topology from a parsed `CLUSTER SLOTS` reply (hiredis values: lists, ints, bytes).

    Entries with the same master (a master serving several ranges) become one Shard. A master
    whose endpoint is `?` (no hostname known) is an error; such a replica is left out."""
    _reject_error(value, "CLUSTER SLOTS")
    if not isinstance(value, list):
        raise TopologyError("CLUSTER SLOTS: array expected")
    if len(value) > SLOTS:
        raise TopologyError(f"CLUSTER SLOTS: {len(value)} entries, more than there are slots")
    order: list[NodeAddr] = []
    by_master: dict[NodeAddr, _ShardDraft] = {}
    for n, entry in enumerate(value):
        what = f"CLUSTER SLOTS entry {n}"
        if not isinstance(entry, list) or len(entry) < 3:
            raise TopologyError(f"{what}: [start, end, master, replicas...] expected")
        rng = SlotRange(_int(entry[0], what + " start"), _int(entry[1], what + " end"))
        master, master_id = _node(entry[2], asked, what + " master")
        if master is None:
            raise TopologyError(f"{what} master: endpoint '?' (the node has no hostname)")
        replicas: list[NodeAddr] = []
        for j, r in enumerate(entry[3:]):
            addr, _ = _node(r, asked, f"{what} replica {j}")
            if addr is not None and addr != master and addr not in replicas:
                replicas.append(addr)
        seen = by_master.get(master)
        if seen is None:
            order.append(master)
            by_master[master] = _ShardDraft([rng], replicas, master_id)
        else:
            seen.ranges.append(rng)
            for r in replicas:
                if r not in seen.replicas:
                    seen.replicas.append(r)
    return Topology.build([
        Shard(m, tuple(by_master[m].replicas), tuple(by_master[m].ranges), by_master[m].master_id)
        for m in order])


@dataclass(slots=True)
class _ShardDraft:
    """A master's Shard while `topology_from_slots` gathers its entries (the first one's id)."""
    ranges: list[SlotRange]
    replicas: list[NodeAddr]
    master_id: str | None


# --- CLUSTER SHARDS (Redis 7) --------------------------------------------------------------------

def _as_map(v: object, what: str) -> dict[str, object]:
    """A RESP3 map (dict) or a RESP2 flat [key, value, ...] array, keys decoded to str."""
    if isinstance(v, dict):
        items = list(v.items())
    elif isinstance(v, list) and len(v) % 2 == 0:
        items = list(zip(v[0::2], v[1::2]))
    else:
        raise TopologyError(f"{what}: map expected")
    return {_text(k, what + " field"): val for k, val in items}


def parse_shards_reply(raw: bytes, asked: NodeAddr | None = None) -> Topology:
    """The Topology from the raw reply bytes of `CLUSTER SHARDS` sent to `asked`."""
    return topology_from_shards(read_reply(raw), asked)


def topology_from_shards(value: object, asked: NodeAddr | None = None) -> Topology:
    """The Topology from a parsed `CLUSTER SHARDS` reply (RESP2 or RESP3 shapes).

    A shard's master is its node with role `master`; a shard without one (failover under way) is
    left out, so its slots have no master until the next refresh. Replicas whose health is not
    `online`, or whose endpoint is `?`, are left out. A node's port is `port`, else `tls-port`."""
    _reject_error(value, "CLUSTER SHARDS")
    if not isinstance(value, list):
        raise TopologyError("CLUSTER SHARDS: array expected")
    if len(value) > SLOTS:
        raise TopologyError(f"CLUSTER SHARDS: {len(value)} shards, more than there are slots")
    shards = []
    for n, item in enumerate(value):
        what = f"CLUSTER SHARDS shard {n}"
        m = _as_map(item, what)
        slots = m.get("slots")
        nodes = m.get("nodes")
        if not isinstance(slots, list) or len(slots) % 2 or not isinstance(nodes, list):
            raise TopologyError(f"{what}: slots (pairs) and nodes expected")
        ranges = tuple(SlotRange(_int(slots[i], what + " slot"), _int(slots[i + 1], what + " slot"))
                       for i in range(0, len(slots), 2))
        master = master_id = None
        replicas = []
        for j, node in enumerate(nodes):
            nw = f"{what} node {j}"
            f = _as_map(node, nw)
            port = f.get("port", f.get("tls-port"))
            host = _host(f.get("endpoint", f.get("ip")), asked, nw + " endpoint")
            role = _text(f.get("role", b""), nw + " role")
            health = _text(f.get("health", b"online"), nw + " health")
            addr = NodeAddr(host, _int(port, nw + " port")) if host is not None else None
            if role == "master":
                if master is not None:
                    raise TopologyError(f"{what}: two masters")
                if addr is None:
                    raise TopologyError(f"{nw}: master endpoint '?' (the node has no hostname)")
                master = addr
                node_id = f.get("id")
                master_id = _text(node_id, nw + " id") if node_id is not None else None
            elif addr is not None and health == "online" and addr not in replicas:
                replicas.append(addr)
        if master is None:
            continue
        shards.append(Shard(master, tuple(r for r in replicas if r != master), ranges, master_id))
    return Topology.build(shards)


# --- MOVED / ASK ---------------------------------------------------------------------------------

class RedirectKind(enum.Enum):
    MOVED = "MOVED"   # the slot lives there now: update the map, resend there
    ASK = "ASK"       # only this command, preceded by ASKING, goes there


@dataclass(frozen=True, slots=True)
class Redirect:
    kind: RedirectKind
    slot: int
    node: NodeAddr


_KINDS = {b"MOVED": RedirectKind.MOVED, b"ASK": RedirectKind.ASK}


def parse_redirect(error: bytes | str, asked: NodeAddr | None = None) -> Redirect | None:
    """A MOVED / ASK error as a Redirect; None for any other error.

    `error` is the raw error reply (`-MOVED 3999 127.0.0.1:6381\\r\\n`) or its text without the
    `-` and CRLF (hiredis's ReplyError message). An empty host (`:6381`) is `asked`'s host.
    A line that starts with MOVED or ASK but is not `<slot> <host>:<port>` raises TopologyError.
    """
    if isinstance(error, str):
        try:
            error = error.encode("ascii")
        except UnicodeEncodeError:
            return None
    if not isinstance(error, (bytes, bytearray)):
        raise TopologyError(f"redirect: bytes expected, not {type(error).__name__}")
    line = bytes(error)
    if line.startswith(b"-"):
        line = line[1:]
    if line.endswith(b"\r\n"):
        line = line[:-2]
    word, _, rest = line.partition(b" ")
    kind = _KINDS.get(word)
    if kind is None:
        return None
    what = f"{word.decode()} redirect"
    parts = rest.split(b" ")
    if len(parts) != 2:
        raise TopologyError(f"{what}: '<slot> <host>:<port>' expected")
    slot_b, endpoint = parts
    if not slot_b.isdigit() or len(slot_b) > 5 or int(slot_b) >= SLOTS:
        raise TopologyError(f"{what}: slot is not in 0..{SLOTS - 1}")
    host_b, colon, port_b = endpoint.rpartition(b":")
    if not colon or not port_b.isdigit() or len(port_b) > 5:
        raise TopologyError(f"{what}: '<host>:<port>' expected")
    if host_b.startswith(b"[") and host_b.endswith(b"]"):
        host_b = host_b[1:-1]
    host = _host(host_b, asked, what)
    if host is None:
        raise TopologyError(f"{what}: endpoint '?' (the node has no hostname)")
    return Redirect(kind, int(slot_b), NodeAddr(host, int(port_b)))
