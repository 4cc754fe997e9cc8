"""Where one command goes in a Redis Cluster: a typed routing plan, and the merge of split replies.

Pure code: imports only the standard library, `hiredis` (to read the per-node replies it merges)
and the protocol helpers (`redisgate.protocol.resp`, `redisgate.protocol.commands`). The policy has judged the
command before it gets here; `plan()` only decides where it runs.

* `SingleSlot(slot)`: every key (or, for SPUBLISH / SSUBSCRIBE / SUNSUBSCRIBE, every shard
  channel) hashes to `slot`; send the command unchanged to the master of that slot.
* `AnySlot`: no key: any master will do (Redis's own rule; keyspace-wide commands such as DBSIZE,
  SCAN, KEYS, FLUSHALL are *also* AnySlot here: fanning them out is a decision for later).
* `CrossSlot`: keys of more than one slot; the client gets `CROSSSLOT_REPLY`, Redis's own error.
* `Split`: MGET, MSET, DEL, UNLINK, EXISTS, TOUCH whose keys span slots: one sub-command per slot
  (`SlotGroup`: its slot, the positions of its keys among the original keys, its arguments),
  replies merged by `merge()` (MGET: an array in the original key order; MSET: +OK; the others:
  the sum of the integers). Not atomic across slots.
* `AllMasters`: SCRIPT LOAD / EXISTS / FLUSH and FUNCTION LOAD / DELETE / FLUSH / RESTORE, sent
  unchanged to every master, replies merged (LOAD: the one reply, all being the same SHA1 or
  library name; EXISTS: per script the AND; the others: +OK). The first error part wins (then
  the other masters' parts have run: not atomic across masters).

Keys come from `spec.keys(args)` (commands.py), a superset of Redis 7.0's own extraction where
Redis checks too few keys (the hardened forms): a key Redis would not look at still pins the
command to its slot, or makes it CROSSSLOT, so a command never writes a key of a slot the node it
runs on does not own. EVAL / EVALSHA / FCALL route by their KEYS like any other command (no KEYS:
AnySlot). `plan()` passes on `commands.KeyExtractionError`, which the session answers locally
before any routing.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import hiredis

from ..protocol import resp
from ..protocol.commands import CommandSpec
from .slots import key_slot

__all__ = [
    "CROSSSLOT_REPLY", "Merge", "SingleSlot", "AnySlot", "ANY_SLOT", "CrossSlot", "CROSS_SLOT",
    "SlotGroup", "Split", "AllMasters", "Plan", "plan", "merge", "merge_split", "MergeError",
]

CROSSSLOT_REPLY = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"


class Merge(enum.Enum):
    ARRAY_IN_ORDER = "array-in-order"   # MGET
    OK = "ok"                           # MSET, SCRIPT FLUSH: +OK when every part said +OK
    SUM = "sum"                         # DEL, UNLINK, EXISTS, TOUCH
    AND = "and"                         # SCRIPT EXISTS: 1 where every master said 1
    SAME = "same"                       # SCRIPT LOAD: the one reply every master gave


@dataclass(frozen=True, slots=True)
class SingleSlot:
    slot: int


@dataclass(frozen=True, slots=True)
class AnySlot:
    pass


@dataclass(frozen=True, slots=True)
class CrossSlot:
    reply: bytes = CROSSSLOT_REPLY


@dataclass(frozen=True, slots=True)
class SlotGroup:
    """One part of a split command: `args` go to the master of `slot`; `positions` are the
    indexes, among the original command's keys, of the keys this part carries, in order."""
    slot: int
    positions: tuple[int, ...]
    args: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Split:
    groups: tuple[SlotGroup, ...]
    merge: Merge
    nkeys: int


@dataclass(frozen=True, slots=True)
class AllMasters:
    merge: Merge


Plan = SingleSlot | AnySlot | CrossSlot | Split | AllMasters
ANY_SLOT = AnySlot()
CROSS_SLOT = CrossSlot()

@dataclass(frozen=True, slots=True)
class _SplitShape:
    """How a command that may be split by slot lays out its keys: they start at `args[first]`,
    each followed by `step - 1` arguments of its own (MSET's value); `merge` joins the parts."""
    first: int
    step: int
    merge: Merge


_SPLITS: dict[str, _SplitShape] = {
    "mget": _SplitShape(first=1, step=1, merge=Merge.ARRAY_IN_ORDER),
    "mset": _SplitShape(first=1, step=2, merge=Merge.OK),
    "del": _SplitShape(first=1, step=1, merge=Merge.SUM),
    "unlink": _SplitShape(first=1, step=1, merge=Merge.SUM),
    "exists": _SplitShape(first=1, step=1, merge=Merge.SUM),
    "touch": _SplitShape(first=1, step=1, merge=Merge.SUM),
}
_ALL_MASTERS = {"script|load": Merge.SAME, "script|exists": Merge.AND, "script|flush": Merge.OK,
                # FCALL runs on its keys' master: a library must be on every master
                "function|load": Merge.SAME, "function|delete": Merge.OK,
                "function|flush": Merge.OK, "function|restore": Merge.OK}
_SHARD_CHANNELS = frozenset({"spublish", "ssubscribe", "sunsubscribe"})


def plan(spec: CommandSpec, args: list[bytes]) -> Plan:
    """The routing plan of `args` (a whole command line, `spec = TABLE.lookup(args)`)."""
    name = spec.name
    m = _ALL_MASTERS.get(name)
    if m is not None:
        return AllMasters(m)
    if name in _SHARD_CHANNELS:
        # shard channels hash like keys (Redis's key specs mark them NOT_KEY, so keys() skips them)
        names = args[1:] if name != "spublish" else args[1:2]
    else:
        names = [k for k, _ in spec.keys(args)]
    if not names:
        return ANY_SLOT
    first = key_slot(names[0])
    for k in names[1:]:
        if key_slot(k) != first:
            break
    else:
        return SingleSlot(first)
    shape = _SPLITS.get(name)
    if shape is not None:
        body = args[shape.first:]
        step = shape.step
        if len(body) % step == 0 and len(body) // step == len(names):
            return _split(args[0], body, step, shape.merge)
    return CROSS_SLOT


def _split(cmd: bytes, body: list[bytes], step: int, rule: Merge) -> Split:
    by_slot: dict[int, tuple[list[int], list[bytes]]] = {}
    for i in range(0, len(body), step):
        slot = key_slot(body[i])
        g = by_slot.get(slot)
        if g is None:
            g = by_slot[slot] = ([], [cmd])
        g[0].append(i // step)
        g[1].extend(body[i:i + step])
    groups = tuple(SlotGroup(s, tuple(p), tuple(a)) for s, (p, a) in by_slot.items())
    return Split(groups, rule, len(body) // step)


# --- merging the parts' replies ------------------------------------------------------------------

class MergeError(ValueError):
    """A part's reply is not the shape its command always has (the I/O layer answers an error)."""


def _one(raw: bytes) -> object:
    reader = hiredis.Reader()
    try:
        reader.feed(raw)
        v = reader.gets()
        rest = reader.gets()
    except Exception as e:  # hiredis: ProtocolError, or TypeError for a RESP3 map keyed by an array
        raise MergeError(f"part reply: not a valid RESP reply ({type(e).__name__}: {e})") from None
    if v is False or rest is not False or reader.has_data():
        raise MergeError("part reply: not exactly one reply")
    return v


def merge(rule: Merge, replies: Sequence[bytes], *, positions: Sequence[Sequence[int]] = (),
          nkeys: int = 0, resp3: bool = False) -> bytes:
    """The one reply the client gets for a split or all-masters command.

    `replies` holds each part's raw reply, in the order of `Split.groups` (with `positions` and
    `nkeys` from the Split, for ARRAY_IN_ORDER) or of the masters. If a part answered an error,
    the client gets the first such error, unchanged. Use `merge_split(split, replies)` for a
    Split."""
    values = [_one(r) for r in replies]
    if not values:
        raise MergeError("no part replies")
    for raw, v in zip(replies, values):
        if isinstance(v, hiredis.ReplyError):
            return bytes(raw)
    if rule is Merge.SUM:
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(ints) != len(values):
            raise MergeError("SUM: integer replies expected")
        return resp.integer(sum(ints))
    if rule is Merge.OK:
        if not all(v == b"OK" for v in values):
            raise MergeError("OK: +OK replies expected")
        return b"+OK\r\n"
    if rule is Merge.SAME:
        if any(bytes(r) != bytes(replies[0]) for r in replies):
            raise MergeError("SAME: the masters' replies differ")
        return bytes(replies[0])
    if rule is Merge.AND:
        arrays = [v for v in values if isinstance(v, list)]
        if len(arrays) != len(values) or len({len(v) for v in arrays}) != 1:
            raise MergeError("AND: integer arrays of one length expected")
        cols = zip(*arrays)
        out = []
        for col in cols:
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in col):
                raise MergeError("AND: integer arrays expected")
            out.append(resp.integer(1 if all(x == 1 for x in col) else 0))
        return resp.array(out)
    if rule is Merge.ARRAY_IN_ORDER:
        if len(positions) != len(values):
            raise MergeError("ARRAY_IN_ORDER: one position list per part expected")
        slots: list[bytes | None] = [None] * nkeys
        filled = [False] * nkeys
        for pos, v in zip(positions, values):
            if not isinstance(v, list) or len(v) != len(pos):
                raise MergeError("ARRAY_IN_ORDER: an array of one element per key expected")
            for p, x in zip(pos, v):
                if not 0 <= p < nkeys or filled[p] or not (x is None or isinstance(x, bytes)):
                    raise MergeError("ARRAY_IN_ORDER: bulk strings or nulls at distinct positions")
                slots[p] = x
                filled[p] = True
        if not all(filled):
            raise MergeError("ARRAY_IN_ORDER: a key has no reply")
        return resp.array([resp.bulk(x, resp3) for x in slots])
    raise MergeError(f"unknown merge rule {rule!r}")


def merge_split(split: Split, replies: Sequence[bytes], resp3: bool = False) -> bytes:
    """`merge` for a Split: `replies[i]` is the raw reply to `split.groups[i].args`."""
    if len(replies) != len(split.groups):
        raise MergeError("one reply per group expected")
    return merge(split.merge, replies, positions=[g.positions for g in split.groups],
                 nkeys=split.nkeys, resp3=resp3)
