"""Lua script allowlists and script contracts: which scripts a user may run, and how.

No I/O. A Redis proxy cannot see the keys a Lua script builds at run time (Asynq's scripts build
task keys from an ARGV prefix plus ids read from lists), so it pins the script instead:

* ``ScriptPolicy`` is the per-user allowlist of script SHA1s (``User.scripts``). ``rules.py`` calls
  ``policy.judge(user, spec, args)`` for EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, SCRIPT LOAD, FCALL,
  FCALL_RO and FUNCTION LOAD, after the command bit and the KEYS check passed. ``judge`` returns
  ``None`` (allowed) or a ``Denial`` with ``kind="script"``.
* ``KNOWN_SCRIPTS`` maps the SHA1 of every Asynq script (v0.24.0 .. main) to its
  ``ScriptContract``: how many KEYS it takes, what each KEY looks like relative to the queue
  (``asynq:{Q}:pending``, ...), and which ARGV positions are key prefixes that must equal
  ``asynq:{Q}:t:`` / ``asynq:{Q}:g:`` / ``asynq:{Q}:`` for the *same* ``{Q}`` as the KEYS. Those
  prefixes must also pass the user's key patterns (``user.check_key(key, write)``), because the
  script will read or write keys under them.

* An operator's *own* script can be bound to a known script's contract: a ``scripts:`` entry
  ``{sha1: <hex>, like: dequeueCmd}`` (``resolve_scripts``) allows that SHA1 and enforces the
  ``dequeueCmd`` contract on it (KEYS shapes, one ``{Q}``, ARGV key prefixes) exactly as for
  Asynq's own body. ``ScriptPolicy.custom`` holds these SHA1 -> contract bindings.

The SHA1 values and the KEYS/ARGV layouts are those of Asynq's own Lua scripts, per release (the
SHA1 table is frozen in tests/asynq/reference-sha1.json, which tests/test_scripts.py checks
KNOWN_SCRIPTS against; see tests/asynq/README.md). The tests run their own scripts with those
layouts (tests/asynq_lua/), bound this way.

Queue identity is Redis's hash-tag rule: ``Q`` is the text between ``asynq:{`` and the first
``}``. A queue whose name contains ``}`` therefore never satisfies a contract (its keys would not
share one slot either); profiles refuse such names up front.
"""
from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any, Callable, Iterable, cast

from .rules import Denial

# --------------------------------------------------------------------------------------------
# Releases and roles
# --------------------------------------------------------------------------------------------

RELEASES: tuple[str, ...] = ("v0.24.0", "v0.24.1", "v0.25.0", "v0.25.1", "v0.26.0", "main")
# A release line ("v0.25") stands for all its patch releases.
RELEASE_LINES: dict[str, frozenset[str]] = {
    "v0.24": frozenset({"v0.24.0", "v0.24.1"}),
    "v0.25": frozenset({"v0.25.0", "v0.25.1"}),
    "v0.26": frozenset({"v0.26.0"}),
    "main": frozenset({"main"}),
}
ROLES: tuple[str, ...] = ("producer", "worker", "scheduler", "inspector", "admin", "rate")

_ALL = frozenset(RELEASES)
_FROM_V025 = frozenset({"v0.25.0", "v0.25.1", "v0.26.0", "main"})
_V024 = frozenset({"v0.24.0", "v0.24.1"})

# Who runs what (REDIS-USAGE.md §3 and §8). The worker also runs the client scripts because the
# aggregator enqueues the aggregated task through an ordinary Client.
_CLIENT = frozenset({"producer", "worker", "scheduler"})
_WORKER = frozenset({"worker"})
_SCHEDULER = frozenset({"scheduler"})
_READ = frozenset({"inspector", "admin"})
_ADMIN = frozenset({"admin"})


# --------------------------------------------------------------------------------------------
# Key shapes (one per KEYS position)
# --------------------------------------------------------------------------------------------

_QUEUE_HEAD = b"asynq:{"
# The opening of a queue key's hash tag: what the script contracts' queue keys start with, up to
# the queue name (queue_of). Given to the C lane when a script verdict is built (memo.py): the
# lane finds a call's queue with it, and knows no product's key names itself.
QUEUE_TAG = _QUEUE_HEAD
_DATE = re.compile(rb"\d{4}-\d{2}-\d{2}")


class LaneCheckKind(enum.Enum):
    """One check of a LaneForm on one argument."""
    EXACT = "exact"      # args[index] == value
    ONE_OF = "one_of"    # args[index] in value (a tuple)
    PREFIX = "prefix"    # args[index] starts with value and is longer
    DATE = "date"        # args[index] is value, then a YYYY-MM-DD date


@dataclass(frozen=True, slots=True)
class LaneCheck:
    index: int
    kind: LaneCheckKind
    value: bytes | tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class LaneForm:
    """What every call of one script for one queue must look like to be honoured as the judge
    honoured the one it was made from (_FastContract.lane_form): `numkeys` as written, at least
    `need` arguments, and every check."""
    numkeys: bytes
    need: int
    checks: tuple[LaneCheck, ...]


def queue_of(key: bytes) -> tuple[bytes, bytes] | None:
    """Split ``asynq:{Q}:rest`` into ``(Q, rest)`` by Redis's hash-tag rule; None otherwise.

    ``Q`` is what Redis Cluster hashes (the text up to the first ``}``), so two keys with the same
    ``Q`` always share a slot. An empty ``Q`` is not a queue (Asynq refuses blank names).
    """
    if not key.startswith(_QUEUE_HEAD):
        return None
    close = key.find(b"}", len(_QUEUE_HEAD))
    if close <= len(_QUEUE_HEAD) or key[close + 1:close + 2] != b":":
        return None
    return key[len(_QUEUE_HEAD):close], key[close + 2:]


class Shape:
    """What one KEYS position must look like. ``scope(key)`` returns the key's scope (the queue
    name for queue keys, the hash tag for server keys, ``b""`` for unscoped keys) or None when
    the key does not have this shape."""

    kind = "none"          # scopes of one contract must all be of one kind and equal

    def scope(self, key: bytes) -> bytes | None:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class QueueKey(Shape):
    """``asynq:{Q}:<suffix>`` for one of ``suffixes`` (exact), or, with ``tail``, a suffix that
    starts with ``suffixes[i]`` followed by a non-empty tail (``tail="date"``: a YYYY-MM-DD)."""
    suffixes: tuple[bytes, ...]
    tail: str | None = None      # None: exact; "any": non-empty rest; "date": YYYY-MM-DD
    kind = "queue"

    def scope(self, key: bytes) -> bytes | None:
        split = queue_of(key)
        if split is None:
            return None
        q, rest = split
        for s in self.suffixes:
            if self.tail is None:
                if rest == s:
                    return q
            elif rest.startswith(s) and len(rest) > len(s):
                if self.tail == "any" or _DATE.fullmatch(rest, len(s)):
                    return q
        return None

    def describe(self) -> str:
        tail = {None: "", "any": "<...>", "date": "<YYYY-MM-DD>"}[self.tail]
        alts = "|".join(s.decode() + tail for s in self.suffixes)
        return f"asynq:{{Q}}:{alts}"


@dataclass(frozen=True)
class TaggedKey(Shape):
    """``<prefix>{<tag>}`` with the hash tag closing the key (``asynq:servers:{host:pid:id}``)."""
    prefix: bytes
    kind = "tag"

    def scope(self, key: bytes) -> bytes | None:
        head = self.prefix + b"{"
        if key.startswith(head) and key.endswith(b"}") and len(key) > len(head) + 1:
            tag = key[len(head):-1]
            if b"}" not in tag:
                return tag
        return None

    def describe(self) -> str:
        return self.prefix.decode() + "{<id>}"


@dataclass(frozen=True)
class PrefixedKey(Shape):
    """``<prefix><non-empty rest>`` (``asynq:scheduler_history:<entry id>``)."""
    prefix: bytes

    def scope(self, key: bytes) -> bytes | None:
        return b"" if key.startswith(self.prefix) and len(key) > len(self.prefix) else None

    def describe(self) -> str:
        return self.prefix.decode() + "<...>"


@dataclass(frozen=True)
class ExactKey(Shape):
    """One of a few fixed key names (``asynq:servers``)."""
    names: tuple[bytes, ...]

    def scope(self, key: bytes) -> bytes | None:
        return b"" if key in self.names else None

    def describe(self) -> str:
        return "|".join(n.decode() for n in self.names)


@dataclass(frozen=True)
class AnyOf(Shape):
    """Any one of several queue shapes (listZSetEntriesCmd takes a state ZSET or a group)."""
    shapes: tuple[Shape, ...]
    kind = "queue"

    def scope(self, key: bytes) -> bytes | None:
        for shape in self.shapes:
            found = shape.scope(key)
            if found is not None:
                return found
        return None

    def describe(self) -> str:
        return " or ".join(s.describe() for s in self.shapes)


def _q(*suffixes: str, tail: str | None = None) -> QueueKey:
    return QueueKey(tuple(s.encode() for s in suffixes), tail)


PENDING, ACTIVE, SCHEDULED, RETRY = _q("pending"), _q("active"), _q("scheduled"), _q("retry")
ARCHIVED, LEASE, COMPLETED, PAUSED = _q("archived"), _q("lease"), _q("completed"), _q("paused")
GROUPS, AGG_SETS = _q("groups"), _q("aggregation_sets")
PROCESSED_TOTAL, FAILED_TOTAL = _q("processed"), _q("failed")
PROCESSED_DAY, FAILED_DAY = _q("processed:", tail="date"), _q("failed:", tail="date")
TASK = _q("t:", tail="any")
TASK_PREFIX_KEY = _q("t:")                      # archiveCmd passes the bare prefix as KEYS[9]
UNIQUE = _q("unique:", tail="any")
GROUP = _q("g:", tail="any")                    # a group, or a group's aggregation set


# --------------------------------------------------------------------------------------------
# Contracts
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrefixArg:
    """ARGV[index] (1-based) is a key prefix: it must equal ``asynq:{Q}:<suffix>`` for the KEYS'
    queue, and the user must be allowed to read (``write=False``) or write keys under it."""
    index: int
    suffix: bytes
    write: bool

    @property
    def label(self) -> str:
        return {b"t:": "task key prefix", b"g:": "group key prefix", b"": "queue key prefix"}[
            self.suffix]


def P_READ(i: int) -> PrefixArg:   # noqa: N802 - short names keep the table readable
    return PrefixArg(i, b"t:", False)


def P_WRITE(i: int) -> PrefixArg:  # noqa: N802
    return PrefixArg(i, b"t:", True)


def G_READ(i: int) -> PrefixArg:   # noqa: N802
    return PrefixArg(i, b"g:", False)


def G_WRITE(i: int) -> PrefixArg:  # noqa: N802
    return PrefixArg(i, b"g:", True)


def Q_READ(i: int) -> PrefixArg:   # noqa: N802
    return PrefixArg(i, b"", False)


def Q_WRITE(i: int) -> PrefixArg:  # noqa: N802
    return PrefixArg(i, b"", True)


@dataclass(frozen=True)
class ScriptContract:
    """How a known script must be called.

    ``keys`` gives the shape of each KEYS position; with ``variadic`` the KEYS are a non-empty
    repetition of ``keys`` (historicalStatsCmd passes processed/failed pairs for n days).
    ``prefixes`` are the ARGV key-prefix positions. ``unchecked`` says, for the operator, which
    keys the script reaches that no proxy can check (they still share the KEYS' hash tag).
    """
    name: str
    sha1: str
    releases: frozenset[str]
    roles: frozenset[str]
    keys: tuple[Shape, ...]
    prefixes: tuple[PrefixArg, ...] = ()
    variadic: bool = False
    unchecked: str = ""
    min_argv: int = 0
    own: bool = False           # an operator's own script bound to this layout (``like:``)

    @property
    def label(self) -> str:
        """How denials name the script: ``dequeueCmd``, or ``own script like dequeueCmd``."""
        return f"own script like {self.name}" if self.own else self.name

    @property
    def numkeys(self) -> int | None:
        """The fixed number of KEYS, or None when it varies."""
        return None if self.variadic else len(self.keys)

    def key_shape(self, i: int) -> Shape:
        return self.keys[i % len(self.keys)] if self.variadic else self.keys[i]


def _c(name: str, sha1: str, releases: frozenset[str], roles: frozenset[str], keys: list[Shape],
       prefixes: Iterable[PrefixArg] = (), **kw: Any) -> ScriptContract:
    return ScriptContract(name, sha1, releases, roles, tuple(keys), tuple(prefixes), **kw)


_CONTRACTS: list[ScriptContract] = [
    # --- client (rdb.go) -------------------------------------------------------------------
    _c("enqueueCmd", "98d28b42650870a743450ffda9791e9e19c6991b", _ALL, _CLIENT, [TASK, PENDING]),
    _c("enqueueUniqueCmd", "297b3f9abfd963a3316434ef9d88fc5bf8a7ddc3", _ALL - {"v0.24.0"}, _CLIENT,
       [UNIQUE, TASK, PENDING]),
    _c("enqueueUniqueCmd", "5c5f3ddb39c733a795941120d27bf17a3eae6912", frozenset({"v0.24.0"}),
       _CLIENT, [UNIQUE, TASK, PENDING]),
    _c("scheduleCmd", "8ce6b38a99b73194585c251eb3c2a89559f37a87", _ALL, _CLIENT, [TASK, SCHEDULED]),
    _c("scheduleUniqueCmd", "e9b8aa859a976a1fce09eaf723b4fccd02ba799e", _ALL, _CLIENT,
       [UNIQUE, TASK, SCHEDULED]),
    _c("addToGroupCmd", "074af2c5a4623800684c1b0e4e328c2500f06815", _ALL, _CLIENT,
       [TASK, GROUP, GROUPS]),
    _c("addToGroupUniqueCmd", "deeb77b98fd021a8a0279d8e7dd11a8a4546611a", _ALL, _CLIENT,
       [TASK, GROUP, GROUPS, UNIQUE]),
    # --- server / worker (rdb.go) ----------------------------------------------------------
    _c("dequeueCmd", "a8153319360adc71cdc370107f8ab9786f204765", _ALL, _WORKER,
       [PENDING, PAUSED, ACTIVE, LEASE], [P_WRITE(2)]),
    _c("doneCmd", "1241eaa1c73409baaf1fea0c08d203a4911bda15", _ALL, _WORKER,
       [ACTIVE, LEASE, TASK, PROCESSED_DAY, PROCESSED_TOTAL]),
    _c("doneUniqueCmd", "a2631c71357a54b4c3e7450b1757e7f3f49d6c81", _ALL, _WORKER,
       [ACTIVE, LEASE, TASK, PROCESSED_DAY, PROCESSED_TOTAL, UNIQUE]),
    _c("markAsCompleteCmd", "117dca952700588e559c7ace20b925096d587974", _ALL, _WORKER,
       [ACTIVE, LEASE, COMPLETED, TASK, PROCESSED_DAY, PROCESSED_TOTAL]),
    _c("markAsCompleteUniqueCmd", "ce6833ccce362a8c0ee53beee413341daf52e39c", _ALL, _WORKER,
       [ACTIVE, LEASE, COMPLETED, TASK, PROCESSED_DAY, PROCESSED_TOTAL, UNIQUE]),
    _c("requeueCmd", "f34cbfd11d1fc8019af55b50c447fc68eb8b29e5", _ALL, _WORKER,
       [ACTIVE, LEASE, PENDING, TASK]),
    _c("retryCmd", "65fa409c88198a681c53e0892d8276eca0145694", _ALL, _WORKER,
       [TASK, ACTIVE, LEASE, RETRY, PROCESSED_DAY, FAILED_DAY, PROCESSED_TOTAL, FAILED_TOTAL]),
    _c("archiveCmd", "9c3b1eb9947ce2ee5304ac013a0a365ec364fd2d", _FROM_V025, _WORKER,
       [TASK, ACTIVE, LEASE, ARCHIVED, PROCESSED_DAY, FAILED_DAY, PROCESSED_TOTAL, FAILED_TOTAL,
        TASK_PREFIX_KEY],
       unchecked="deletes evicted archived tasks at KEYS[9]..id"),
    _c("archiveCmd", "04e5ed2a63d5b6b2a20ab17249b2bc262280f6d8", _V024, _WORKER,
       [TASK, ACTIVE, LEASE, ARCHIVED, PROCESSED_DAY, FAILED_DAY, PROCESSED_TOTAL, FAILED_TOTAL]),
    _c("forwardCmd", "522b1a6ae66fe79ea2f24a9af58798ab71879035", _ALL, _WORKER,
       [_q("scheduled", "retry"), PENDING], [P_WRITE(2), G_WRITE(4)],
       unchecked="group key = ARGV[4] .. the task hash's 'group' field"),
    _c("aggregationCheckCmd", "a3812898e6caa8ef58d4cda34cd41a1023157e43", _ALL, _WORKER,
       [GROUP, GROUP, AGG_SETS, GROUPS]),
    _c("readAggregationSetCmd", "74ba718a5ed06d87a29e289ce500f34eac8759fc", _ALL, _WORKER,
       [GROUP], [P_READ(1)]),
    _c("deleteAggregationSetCmd", "f78335554f1a49a26ac08c02e9f50237e38fae18", _ALL, _WORKER,
       [GROUP, AGG_SETS], [P_WRITE(1)]),
    _c("reclaimStateAggregationSetsCmd", "7c08714194a1ed81153180b36590c51f1ccd7d42", _ALL, _WORKER,
       [AGG_SETS],
       unchecked="aggregation-set keys read from the ZSET members, group keys derived from them"),
    _c("deleteExpiredCompletedTasksCmd", "49c4326d80c1db9c476da2aa7f4438d03688f82b", _ALL, _WORKER,
       [COMPLETED], [P_WRITE(2)]),
    _c("listLeaseExpiredCmd", "16988a462595f6ee317be300951533b004f27f5c", _FROM_V025,
       _WORKER | _READ, [LEASE], [P_READ(2)]),
    _c("listLeaseExpiredCmd", "c831eb394e1de1ff49766029720b640ada133ec6", _V024,
       _WORKER | _READ, [LEASE], [P_READ(2)]),
    _c("writeServerStateCmd", "3c8548ad44d0dfcfde50f07ea9271d77f656042c", _ALL, _WORKER,
       [TaggedKey(b"asynq:servers:"), TaggedKey(b"asynq:workers:")], min_argv=2),
    _c("clearServerStateCmd", "79cf8dbc80deca37314fdfdeb9fe33a12c9baad7", _ALL, _WORKER,
       [TaggedKey(b"asynq:servers:"), TaggedKey(b"asynq:workers:")]),
    # --- scheduler (rdb.go) ----------------------------------------------------------------
    _c("writeSchedulerEntriesCmd", "313393fb34cf7668d3ae712d88666ce651da3861", _ALL, _SCHEDULER,
       [TaggedKey(b"asynq:schedulers:")], min_argv=1),
    _c("recordSchedulerEnqueueEventCmd", "5feb3e91ca9086f0335575fa366ac2b94ec7b886", _ALL,
       _SCHEDULER, [PrefixedKey(b"asynq:scheduler_history:")]),
    # --- inspector, read side (inspect.go) -------------------------------------------------
    _c("currentStatsCmd", "8495598cb6d9a2efdaf2ae98021a8f4ef1803b3d", _ALL, _READ,
       [PENDING, ACTIVE, SCHEDULED, RETRY, ARCHIVED, COMPLETED, PROCESSED_DAY, FAILED_DAY,
        PROCESSED_TOTAL, FAILED_TOTAL, PAUSED, GROUPS], [P_READ(1), G_READ(2)]),
    _c("memoryUsageCmd", "d658942234167601d28a4ff18fcae30090f0ccf5", frozenset({"main"}), _READ,
       [ACTIVE, PENDING, SCHEDULED, RETRY, ARCHIVED, COMPLETED, GROUPS], [P_READ(1), G_READ(4)],
       unchecked="runs MEMORY USAGE on every sampled task key"),
    _c("memoryUsageCmd", "0c80fc1868e3aae205155ae2017ce995a3a7cec0", _ALL - {"main"}, _READ,
       [ACTIVE, PENDING, SCHEDULED, RETRY, ARCHIVED, COMPLETED, GROUPS], [P_READ(1), G_READ(4)],
       unchecked="runs MEMORY USAGE on every sampled task key"),
    _c("historicalStatsCmd", "21ba63720a304c8939d592261cb5f6aeacdecad1", _ALL, _READ,
       [PROCESSED_DAY, FAILED_DAY], variadic=True),
    _c("getTaskInfoCmd", "1463a65d3fd6698099862e1314658984affe6ed7", _ALL, _READ,
       [TASK], [Q_READ(3)]),
    _c("groupStatsCmd", "767783fddcb7e4702c368fd352ae6a3d9393d273", _ALL, _READ,
       [GROUPS], [G_READ(1)]),
    _c("listMessagesCmd", "e33b162cbcaa58a573d0f5a5067b4c3e2246e079", _ALL, _READ,
       [_q("pending", "active")], [P_READ(3)]),
    _c("listZSetEntriesCmd", "8ce4326dbba042f10ec098fa779168e0a9e8c6c8", _ALL, _READ,
       [AnyOf((_q("scheduled", "retry", "archived", "completed"), GROUP))], [P_READ(3)]),
    # listServerKeysCmd, listWorkersCmd and listSchedulerKeysCmd have the same source, so one SHA.
    # "Read-only" but it prunes stale entries with ZREMRANGEBYSCORE.
    _c("listServerKeysCmd", "ec6970a9c80b182f05628a1377dcfee7df765fb4", _ALL, _READ,
       [ExactKey((b"asynq:servers", b"asynq:workers", b"asynq:schedulers"))], min_argv=1),
    # --- inspector, admin side (inspect.go) ------------------------------------------------
    _c("runAllAggregatingCmd", "95d6ff8ea96c4e9441a0d202a7babf13c5421285", _ALL, _ADMIN,
       [GROUP, PENDING, GROUPS], [P_WRITE(1)]),
    _c("runTaskCmd", "2fb646810e3433bbe85fba1a6b407eb3eced7b63", _ALL, _ADMIN,
       [TASK, PENDING, GROUPS], [Q_WRITE(2), G_WRITE(3)]),
    _c("runAllCmd", "1d0a1f59e02d7de4c1ffdc680ba4f5984b1a590c", _ALL, _ADMIN,
       [_q("scheduled", "retry", "archived"), PENDING], [P_WRITE(1)]),
    _c("archiveAllAggregatingCmd", "0f24d56b49f2c17216165b5df7914bc75b10c33e", _ALL, _ADMIN,
       [GROUP, ARCHIVED, GROUPS], [P_WRITE(4)]),
    _c("archiveAllPendingCmd", "c78daecbbe3c90b1d8d3470c5c68132818fbdf21", _ALL, _ADMIN,
       [PENDING, ARCHIVED], [P_WRITE(4)]),
    _c("archiveTaskCmd", "c3183bd2c882c715c12e3e44b9c09df7d91de1ad", _ALL, _ADMIN,
       [TASK, ARCHIVED, GROUPS], [Q_WRITE(5), G_WRITE(6)]),
    _c("archiveAllCmd", "7f02b3d3e0a1e6e4ad5aaac4a558573b7b5aa95e", _ALL, _ADMIN,
       [_q("scheduled", "retry"), ARCHIVED], [P_WRITE(4)]),
    _c("updateTaskPayloadCmd", "a0bdc8d8212813666a7df7c612f4b6ee09df0b2d",
       frozenset({"v0.26.0", "main"}), _ADMIN, [TASK]),
    _c("deleteTaskCmd", "ffa79e9140e5aafb8e967e8d3e5f4eaefb648091", _ALL, _ADMIN,
       [TASK, GROUPS], [Q_WRITE(2), G_WRITE(3)],
       unchecked="the unique key named in the task hash's 'unique_key' field"),
    _c("deleteAllCmd", "87a4d4356874805c7c2132b517c0587b9021aba2", _ALL, _ADMIN,
       [_q("scheduled", "retry", "archived", "completed")], [P_WRITE(1)],
       unchecked="the unique keys named in the task hashes' 'unique_key' fields"),
    _c("deleteAllAggregatingCmd", "e90e63534c2b576147c8426713da4c8270138a89", _ALL, _ADMIN,
       [GROUP, GROUPS], [P_WRITE(1)]),
    _c("deleteAllPendingCmd", "8c58fe6e892f2c0a29249a47799023654d4551c9", _ALL, _ADMIN,
       [PENDING], [P_WRITE(1)]),
    _c("removeQueueForceCmd", "a095473ab1d8e275758ea446baa43bb582eac0a8", _ALL, _ADMIN,
       [PENDING, ACTIVE, SCHEDULED, RETRY, ARCHIVED, LEASE], [P_WRITE(1)]),
    _c("removeQueueCmd", "d3473f4c26d0b12bcf434f271d79f9f8431b549c", _ALL, _ADMIN,
       [PENDING, ACTIVE, SCHEDULED, RETRY, ARCHIVED, LEASE], [P_WRITE(1)]),
    # --- x/rate (optional module) ----------------------------------------------------------
    _c("acquireCmd", "c9a270cb181daccd6c0b5fb4764ca1cdb4a89a95", _ALL, frozenset({"rate"}),
       [PrefixedKey(b"asynq:sema:")], min_argv=4),
]

KNOWN_SCRIPTS: dict[str, ScriptContract] = {c.sha1: c for c in _CONTRACTS}
assert len(KNOWN_SCRIPTS) == len(_CONTRACTS), "duplicate SHA1 in the contract table"
SCRIPT_NAMES: frozenset[str] = frozenset(c.name for c in _CONTRACTS)


def _shas(pred: Callable[[ScriptContract], bool]) -> frozenset[str]:
    return frozenset(c.sha1 for c in _CONTRACTS if pred(c))


# Named sets usable in a config's ``scripts:`` list and in profiles. ``asynq-<line>`` is every
# script of that release line (all roles); ``asynq-<role>`` is one role's scripts for every
# release from v0.24.0 to main. ``asynq-<role>@<line>`` (e.g. asynq-worker@v0.26) intersects them.
SCRIPT_SETS: dict[str, frozenset[str]] = {
    **{f"asynq-{line}": _shas(lambda c: bool(c.releases & rel))
       for line, rel in RELEASE_LINES.items()},
    "asynq-all": frozenset(KNOWN_SCRIPTS),
    **{f"asynq-{role}": _shas(lambda c: role in c.roles) for role in ROLES},
}

_HEX40 = re.compile(r"[0-9a-fA-F]{40}")


def expand_script_names(items: Iterable[str]) -> set[str]:
    """Resolve a ``scripts:`` list into lowercase SHA1 hex strings.

    Each item is a 40-hex SHA1 (any case), a named set (``asynq-v0.26``, ``asynq-worker``,
    ``asynq-worker@v0.26``, ``asynq-all``) or an Asynq script name (``enqueueCmd``: every known
    version of it). Raises ``ValueError`` naming the first item that is none of these.
    """
    out: set[str] = set()
    for item in items:
        item = item.strip()
        if _HEX40.fullmatch(item):
            out.add(item.lower())
        elif item in SCRIPT_SETS:
            out |= SCRIPT_SETS[item]
        elif "@" in item and item.split("@", 1)[0] in SCRIPT_SETS \
                and item.split("@", 1)[1] in RELEASE_LINES:
            base, line = item.split("@", 1)
            out |= SCRIPT_SETS[base] & SCRIPT_SETS[f"asynq-{line}"]
        elif item in SCRIPT_NAMES:
            out |= _shas(lambda c: c.name == item)
        else:
            known = ", ".join(sorted(SCRIPT_SETS))
            raise ValueError(f"unknown script {item!r}: expected a 40-hex SHA1, an Asynq script "
                             f"name (e.g. enqueueCmd), or a named set ({known}; "
                             f"'<set>@<line>' with line in {', '.join(RELEASE_LINES)})")
    return out


# --------------------------------------------------------------------------------------------
# Own scripts bound to a known contract ({sha1: ..., like: ...})
# --------------------------------------------------------------------------------------------

def contract_like(like: str) -> ScriptContract:
    """The known contract named by a ``like:`` value.

    ``like`` is a script name (``dequeueCmd``: the layout of its newest version, the one in
    ``main``), a name at a release line (``archiveCmd@v0.24``: the 8-KEYS layout of v0.24), or
    the SHA1 of a known script (exactly that version). Raises ``ValueError`` with the reason.
    """
    text = like.strip()
    if _HEX40.fullmatch(text):
        contract = KNOWN_SCRIPTS.get(text.lower())
        if contract is None:
            raise ValueError(f"{text!r} is not the SHA1 of a known Asynq script")
        return contract
    name, _, line = text.partition("@")
    if name not in SCRIPT_NAMES:
        raise ValueError(f"unknown script {text!r} (known: {', '.join(sorted(SCRIPT_NAMES))}; "
                         f"optionally '<name>@<line>' with line in {', '.join(RELEASE_LINES)}, "
                         "or the SHA1 of a known script)")
    if line and line not in RELEASE_LINES:
        raise ValueError(f"unknown Asynq release line {line!r} in {text!r} "
                         f"(known: {', '.join(RELEASE_LINES)})")
    wanted = RELEASE_LINES[line] if line else frozenset({"main"})
    for c in _CONTRACTS:
        if c.name == name and c.releases & wanted:
            return c
    raise ValueError(f"{name} does not exist in Asynq {line}")


class BindError(ValueError):
    """A bad ``{sha1, like}`` binding; ``field`` is the culprit: ``"sha1"`` or ``"like"``."""

    def __init__(self, field_: str, why: str):
        super().__init__(why)
        self.field = field_


def bind_script(sha1: str, like: str) -> ScriptContract:
    """The contract of ``like`` (see ``contract_like``) for the own script ``sha1``.

    Raises ``BindError`` for a malformed SHA1, a SHA1 that is one of Asynq's own scripts (its
    contract is fixed; list it as a plain SHA1 instead), or an unknown ``like``.
    """
    if not isinstance(sha1, str) or not _HEX40.fullmatch(sha1.strip()):
        raise BindError("sha1", f"expected a 40-hex SHA1, got {sha1!r}")
    sha = sha1.strip().lower()
    if sha in KNOWN_SCRIPTS:
        raise BindError("sha1", f"{sha} is Asynq's own {KNOWN_SCRIPTS[sha].name}, which is "
                                "already bound to its contract; list it as a plain SHA1")
    try:
        base = contract_like(like)
    except ValueError as e:
        raise BindError("like", str(e)) from None
    # No releases: the binding belongs to no Asynq release, so no named set picks it up.
    return replace(base, sha1=sha, releases=frozenset(), own=True)


class ScriptListError(ValueError):
    """Every problem of a ``scripts:`` list: ``problems`` holds ``(path, why)`` pairs, where
    ``path`` is the position inside the list (``[2]``, ``[2].like``)."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"scripts{path}: {why}" for path, why in problems))
        self.problems = problems

    def lines(self, where: str) -> list[str]:
        """``<where><path>: <why>`` per problem, e.g. ``users.w.scripts[2].like: unknown ...``."""
        return [f"{where}{path}: {why}" for path, why in self.problems]


_BIND_KEYS = ("sha1", "like")


def resolve_scripts(items: Any) -> tuple[set[str], dict[str, ScriptContract]]:
    """Resolve a user's ``scripts:`` list into (allowed SHA1s, own SHA1 -> bound contract).

    Each item is what ``expand_script_names`` accepts (a SHA1, a script name, a named set), or a
    mapping ``{sha1: <40 hex>, like: <known script>}``: an operator's own script that is
    allowed and held to the contract of the script it is like. The bound SHA1s are in the
    returned allowlist too. Raises ``ScriptListError`` listing every bad item.
    """
    if not isinstance(items, (list, tuple)):
        raise ScriptListError([("", "expected a list of SHA1s, script or set names, or "
                                    "{sha1: ..., like: ...} mappings")])
    shas: set[str] = set()
    custom: dict[str, ScriptContract] = {}
    bound_at: dict[str, tuple[int, str]] = {}       # sha1 -> (item index, like as written)
    problems: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            unknown = [k for k in item if k not in _BIND_KEYS]
            for key in unknown:
                problems.append((f"[{i}].{key}", "unknown setting (known: like, sha1)"))
            missing = [k for k in _BIND_KEYS if k not in item]
            if missing:
                problems.append((f"[{i}]", "an own script needs both 'sha1' and 'like' "
                                           f"(missing: {', '.join(missing)})"))
                continue
            if unknown:
                continue
            sha, like = item["sha1"], item["like"]
            if not isinstance(sha, str):
                problems.append((f"[{i}].sha1", f"expected a 40-hex SHA1 string, got {sha!r} "
                                                "(quote it in YAML)"))
                continue
            if not isinstance(like, str):
                problems.append((f"[{i}].like", f"expected a script name, got {like!r}"))
                continue
            try:
                contract = bind_script(sha, like)
            except BindError as e:
                problems.append((f"[{i}].{e.field}", str(e)))
                continue
            earlier = custom.get(contract.sha1)
            if earlier is not None and earlier != contract:
                j, earlier_like = bound_at[contract.sha1]
                problems.append((f"[{i}].like", f"{contract.sha1} is already bound to "
                                                f"{earlier_like!r} at [{j}]"))
                continue
            custom[contract.sha1] = contract
            bound_at.setdefault(contract.sha1, (i, like.strip()))
            shas.add(contract.sha1)
        elif isinstance(item, (str, int)) and not isinstance(item, bool):
            try:
                shas |= expand_script_names([str(item)])
            except ValueError as e:
                problems.append((f"[{i}]", str(e)))
        else:
            problems.append((f"[{i}]", "expected a SHA1, a script or set name, or "
                                       f"{{sha1: ..., like: ...}}, got {item!r}"))
    if problems:
        raise ScriptListError(problems)
    return shas, custom


# --------------------------------------------------------------------------------------------
# Denials
# --------------------------------------------------------------------------------------------

def make_denial(command: str, reason: str) -> Denial:
    """A ``kind="script"`` denial of ``command`` (the table name, ``"evalsha"``): a
    ``rules.Denial``. The SHA1 and the failure go in ``reason``, which ends up in the ACL log."""
    return Denial(kind="script", object=command, reason=reason, command=command)


def _show(value: bytes, limit: int = 80) -> str:
    """A printable excerpt of an argument for a denial reason (never a whole payload)."""
    text = value[:limit].decode("utf-8", "backslashreplace")
    return text + ("..." if len(value) > limit else "")


# --------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------

_RUN = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro"})
_EVALSHA = frozenset({"evalsha", "evalsha_ro"})
_FUNCTION_CALLS = frozenset({"fcall", "fcall_ro"})


def _command_name(spec: Any, args: list[bytes]) -> str:
    """``spec.name`` (``"script|load"``), or the same spelled from args when spec is missing."""
    name: str | None = getattr(spec, "name", None)
    if name:
        return name
    if not args:
        return ""
    head = args[0].decode("latin-1").lower()
    if head in ("script", "function") and len(args) > 1:
        return f"{head}|{args[1].decode('latin-1').lower()}"
    return head


@dataclass
class ScriptPolicy:
    """A user's script allowlist. Deny by default: an empty policy refuses every script.

    * EVALSHA / EVALSHA_RO pass only for an allowed SHA1 (hex, any case);
    * EVAL / EVAL_RO / SCRIPT LOAD pass only if sha1(body) is allowed (go-redis falls back from
      EVALSHA to EVAL with the full body after NOSCRIPT, and BatchEnqueue SCRIPT LOADs);
    * SCRIPT EXISTS and SCRIPT HELP pass; SCRIPT FLUSH / KILL / DEBUG, FUNCTION * and FCALL /
      FCALL_RO are refused unless the matching ``allow_*`` flag is set;
    * for a SHA1 in ``contracts`` (the Asynq scripts) the call must honour the contract: the
      KEYS count and shapes, one ``{Q}`` across all KEYS, and each ARGV key prefix equal to the
      one for that ``{Q}`` and allowed by ``user.check_key(prefix, write)``;
    * ``custom`` maps an operator's own script SHA1s to the contract they are bound to
      (``resolve_scripts``): each of them is allowed, and held to that contract like the
      original. A SHA1 in both ``contracts`` and ``custom`` takes the ``custom`` contract.

    ``allow_any_script`` lifts the SHA1 allowlist (contracts of known scripts still apply unless
    ``enforce_contracts`` is False); it is meant for users that already have ``+@all``.
    """
    allowed_shas: Iterable[str] = ()
    allow_flush: bool = False
    allow_kill: bool = False
    allow_debug: bool = False
    allow_function: bool = False
    allow_any_script: bool = False
    enforce_contracts: bool = True
    contracts: dict[str, ScriptContract] = field(default_factory=lambda: KNOWN_SCRIPTS)
    custom: dict[str, ScriptContract] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def hex_of(sha: str | bytes) -> str:
            text = sha.decode() if isinstance(sha, bytes) else str(sha)
            if not _HEX40.fullmatch(text):
                raise ValueError(f"not a SHA1 hex digest: {text!r}")
            return text.lower()

        custom = {hex_of(sha): c for sha, c in self.custom.items()}
        shas = {hex_of(sha) for sha in self.allowed_shas} | set(custom)
        self.allowed_shas = frozenset(shas)
        self.custom = custom
        # Lookups happen on the wire bytes; keep a bytes view so the hot path never decodes.
        self._allowed = frozenset(s.encode() for s in shas)
        self._contracts = {sha.encode(): c for sha, c in self.contracts.items()}
        self._contracts.update((sha.encode(), c) for sha, c in custom.items())
        # EVALSHA's hot path, by SHA1 exactly as go-redis sends it (lowercase hex): True (allowed,
        # no contract) or a compiled contract check (see _FastContract). Anything else, or a check
        # that cannot say yes, takes the general path, which gives the exact denial.
        self.by_sha: dict[bytes, _FastContract | bool] = {}
        for sha in self._allowed:
            contract = self._contracts.get(sha) if self.enforce_contracts else None
            if contract is None:
                self.by_sha[sha] = True
            else:
                fast = _FastContract.compile(contract)
                if fast is not None:
                    self.by_sha[sha] = fast

    def allows(self, sha1_hex: str | bytes) -> bool:
        """Whether a SHA1 (hex, any case) is on this allowlist."""
        sha = sha1_hex.encode() if isinstance(sha1_hex, str) else sha1_hex
        return self.allow_any_script or sha.lower() in self._allowed

    def judge(self, user: Any, spec: Any, args: list[bytes]) -> Denial | None:
        """``None`` if the script command may run, else a ``Denial`` with ``kind="script"``.

        ``spec`` is the command's ``commands.CommandSpec`` (only ``.name`` is used). Commands
        that are not script commands, and script commands too short to run (Redis answers their
        arity error), return ``None``: they are not this policy's business.
        """
        if len(args) > 2:
            fast = self.by_sha.get(args[1])
            if fast is not None and getattr(spec, "name", None) in _EVALSHA \
                    and (fast is True or fast.honoured(args, user)):  # type: ignore[union-attr]
                return None
        name = _command_name(spec, args)
        if name in _RUN:
            if len(args) < 3:
                return None
            if name.startswith("evalsha"):
                sha = args[1].lower()
                if len(sha) != 40 or not _HEX40.fullmatch(sha.decode("latin-1")):
                    return make_denial(name, f"{name}: '{_show(args[1], 48)}' is not a SHA1 digest")
            else:
                sha = hashlib.sha1(args[1]).hexdigest().encode()
            return self._judge_run(user, name, sha, args)
        if name == "script|load":
            if len(args) < 3:
                return None
            sha = hashlib.sha1(args[2]).hexdigest().encode()
            if self.allow_any_script or sha in self._allowed:
                return None
            return make_denial(name, f"script load: script {self._label(sha)} is not in this "
                                     "user's script allowlist")
        if name in ("script|flush", "script|kill", "script|debug"):
            flag = {"script|flush": self.allow_flush, "script|kill": self.allow_kill,
                    "script|debug": self.allow_debug}[name]
            if flag:
                return None
            sub = name.split("|")[1]
            return make_denial(name, f"script {sub} is not allowed for this user "
                                     f"(needs allow_{sub})")
        if name in _FUNCTION_CALLS or name.startswith("function|"):
            if self.allow_function:
                return None
            return make_denial(name, f"{name.replace('|', ' ')}: Redis functions are not "
                                     "allowed for this user (needs allow_function)")
        return None

    def _label(self, sha: bytes) -> str:
        contract = self._contracts.get(sha)
        return f"{contract.label} ({sha.decode()})" if contract else sha.decode()

    def _judge_run(self, user: Any, name: str, sha: bytes,
                   args: list[bytes]) -> Denial | None:
        if not (self.allow_any_script or sha in self._allowed):
            return make_denial(name, f"{name}: script {self._label(sha)} is not in this user's "
                                     "script allowlist")
        contract = self._contracts.get(sha) if self.enforce_contracts else None
        if contract is None:
            return None
        why = check_contract(contract, args, user)
        if why is None:
            return None
        return make_denial(name, f"{name}: {contract.label} ({sha.decode()}) {why}")


def check_contract(contract: ScriptContract, args: list[bytes], user: Any = None) -> str | None:
    """Why ``args`` (a whole EVAL/EVALSHA command) break ``contract``, or None if they honour it.

    With ``user``, each ARGV key prefix must also pass ``user.check_key(prefix, write)``.
    """
    raw = args[2]
    if not raw.isdigit():
        return f"numkeys must be a non-negative integer, got '{_show(raw, 24)}'"
    numkeys = int(raw)
    if numkeys > len(args) - 3:
        return f"numkeys {numkeys} is more than the {len(args) - 3} arguments given"
    if contract.variadic:
        if numkeys == 0 or numkeys % len(contract.keys):
            return f"takes a non-zero multiple of {len(contract.keys)} KEYS, got {numkeys}"
    elif numkeys != len(contract.keys):
        return f"takes {len(contract.keys)} KEYS, got {numkeys}"
    keys = args[3:3 + numkeys]
    argv = args[3 + numkeys:]

    scope = None
    for i, key in enumerate(keys):
        shape = contract.key_shape(i)
        found = shape.scope(key)
        if found is None:
            return f"KEYS[{i + 1}] must look like {shape.describe()}, got '{_show(key)}'"
        if scope is None:
            scope = found
        elif found != scope:
            what = "queue {Q}" if shape.kind == "queue" else "hash tag"
            return (f"KEYS[{i + 1}] '{_show(key)}' is not in the same {what} as KEYS[1] "
                    f"'{_show(keys[0])}'")

    need = max([p.index for p in contract.prefixes] + [contract.min_argv])
    if len(argv) < need:
        return f"needs at least {need} ARGV, got {len(argv)}"
    for p in contract.prefixes:
        assert scope is not None  # every contract with ARGV prefixes has KEYS
        expected = _QUEUE_HEAD + scope + b"}:" + p.suffix
        value = argv[p.index - 1]
        if value != expected:
            return (f"ARGV[{p.index}] ({p.label}) must be '{_show(expected)}' for the KEYS' queue, "
                    f"got '{_show(value)}'")
        if user is not None and not _user_may(user, value, p.write):
            access = "write" if p.write else "read"
            return (f"ARGV[{p.index}] ({p.label}) '{_show(value)}': this user may not {access} "
                    "keys under it")
    return None


# _FastContract's per-queue entry: (exact KEYS positions as an itemgetter with their names, or
# None; positions with several possible names; positions with a suffix tail; ARGV prefixes; the
# dates seen valid; per user, may it use the ARGV prefixes; per judge shortcut, does it cover the
# KEYS names).
_QueueEntry = tuple[
    tuple[Callable[[list[bytes]], Any], Any] | None,
    tuple[tuple[int, frozenset[bytes]], ...],
    tuple[tuple[int, bytes, bool], ...],
    tuple[tuple[int, bytes, bool], ...],
    set[bytes],
    dict[Any, bool],
    dict[int, tuple[tuple[Any, ...], bool]],
]


class _FastContract:
    """A compiled ``check_contract(contract, args, user) is None`` for the common call shape.

    ``honoured(args, user)`` is True only if ``check_contract`` would return None; False means
    "not this shape, or broken": the caller then runs ``check_contract`` for the verdict and its
    reason. The shape: numkeys written canonically, KEYS that are all ``asynq:{Q}:...`` queue
    keys (one suffix per position for suffix tails), enough ARGV. Per queue name the expected
    key names and ARGV prefixes are built once (``_per_queue``, bounded: queue names come from
    clients), so a call costs one tuple comparison for the fixed key names and a
    ``startswith`` per task or stats key.
    """

    __slots__ = ("contract", "numkeys", "n", "need", "shapes", "prefixes", "_per_queue")

    MAX_QUEUES = 64
    MAX_SHORTCUTS = 1024   # users x (EVALSHA, EVALSHA_RO) remembered per queue

    @classmethod
    def compile(cls, contract: ScriptContract) -> "_FastContract | None":
        if contract.variadic or not contract.keys:
            return None
        for shape in contract.keys:
            if type(shape) is not QueueKey or (shape.tail is not None and len(shape.suffixes) != 1):
                return None
        return cls(contract)

    def __init__(self, contract: ScriptContract) -> None:
        self.contract = contract
        self.n = len(contract.keys)
        self.numkeys = b"%d" % self.n
        self.need = 3 + self.n + max([p.index for p in contract.prefixes] + [contract.min_argv])
        self.shapes = cast(tuple[QueueKey, ...], contract.keys)   # (compile checked)
        self.prefixes = contract.prefixes
        self._per_queue: dict[bytes, _QueueEntry] = {}

    def _build(self, q: bytes) -> _QueueEntry:
        """What a call for queue q must look like: (the KEYS positions with one possible name,
        as an itemgetter, and those names; the other exact positions with their possible
        names; the positions with a suffix tail: (index, prefix, is_date); the ARGV prefixes:
        (index, expected value, write); the dates seen valid; per user, whether the user may use
        those ARGV prefixes)."""
        head = _QUEUE_HEAD + q + b"}:"
        one: list[int] = []
        names: list[bytes] = []
        several: list[tuple[int, frozenset[bytes]]] = []
        tails: list[tuple[int, bytes, bool]] = []
        for i, shape in enumerate(self.shapes, 3):
            if shape.tail is not None:
                tails.append((i, head + shape.suffixes[0], shape.tail == "date"))
            elif len(shape.suffixes) == 1:
                one.append(i)
                names.append(head + shape.suffixes[0])
            else:
                several.append((i, frozenset(head + s for s in shape.suffixes)))
        exact: tuple[Callable[[list[bytes]], Any], Any] | None
        if len(one) > 1:
            exact = (itemgetter(*one), tuple(names))
        elif one:
            exact = (itemgetter(one[0]), names[0])
        else:
            exact = None
        argv = tuple((3 + self.n + p.index - 1, head + p.suffix, p.write) for p in self.prefixes)
        per = self._per_queue
        if len(per) >= self.MAX_QUEUES:
            per.clear()
        entry: _QueueEntry = (exact, tuple(several), tuple(tails), argv, set(), {}, {})
        per[q] = entry
        return entry

    @staticmethod
    def _covers(entry: _QueueEntry, keys: Any) -> bool:
        """Whether every KEYS name a call for this queue may hold passes the key patterns of
        `keys` (rules.User's verdict for the command, a rules.Script: its selector and key
        pattern set): each fixed name, and every name under each tail prefix."""
        keyset = keys.keyset
        if keys.selector.allkeys:
            return True
        if keyset is None:
            return False
        exact, several, tails = entry[0], entry[1], entry[2]
        names: list[bytes] = [] if exact is None else \
            list(exact[1]) if type(exact[1]) is tuple else [exact[1]]
        for _, options in several:
            names += options
        return all(map(keyset.match, names)) \
            and all(keyset.covers_prefix(prefix) for _, prefix, _ in tails)

    def honoured(self, args: list[bytes], user: Any, keys: Any = None) -> bool:
        """(See the class.) With `keys`, the user's verdict for this command (see
        _covers), True also says that every KEYS name passes the shortcut's key patterns: the
        caller may skip checking them one by one. False: ask check_contract, and check the keys."""
        if args[2] != self.numkeys or len(args) < self.need:
            return False
        k0 = args[3]   # its queue: queue_of(), inlined
        close = k0.find(b"}", 7)
        if close <= 7 or not k0.startswith(_QUEUE_HEAD):
            return False
        entry = self._per_queue.get(k0[7:close])
        if entry is None:
            split = queue_of(k0)
            if split is None:
                return False
            entry = self._build(split[0])
        exact, several, tails, argv, dates, user_may, covered = entry
        if keys is not None:
            # Memoised by the shortcut itself (one per user and command: EVALSHA and EVALSHA_RO
            # need other permissions), held so that its id stays its own.
            memo = covered.get(id(keys))
            if memo is None or memo[0] is not keys:
                if len(covered) >= self.MAX_SHORTCUTS:
                    covered.clear()
                memo = covered[id(keys)] = (keys, self._covers(entry, keys))
            if not memo[1]:
                return False
        if exact is not None and exact[0](args) != exact[1]:
            return False
        for index, names in several:
            if args[index] not in names:
                return False
        for index, prefix, date in tails:
            key = args[index]
            if not key.startswith(prefix) or len(key) <= len(prefix):
                return False
            if date and key not in dates:
                # The day's stats key: the date changes once a day, so remember the good ones.
                if not _DATE.fullmatch(key, len(prefix)):
                    return False
                if len(dates) >= 8:
                    dates.clear()
                dates.add(key)
        if argv:
            for index, expected, write in argv:
                if args[index] != expected:
                    return False
            try:
                may = user_may.get(user)
            except TypeError:   # a stand-in user object that cannot be a dict key
                return all(_user_may(user, e, w) for _, e, w in argv)
            if may is None:
                may = user_may[user] = all(_user_may(user, e, w) for _, e, w in argv)
            return may
        return True

    def lane_form(self, args: list[bytes], user: Any, keys: Any) -> LaneForm | None:
        """For redisgate._lane: when ``honoured(args, user, keys)``, what every call for the
        queue of KEYS[1] (``queue_of``) must look like to be honoured the same way (LaneForm).
        The user's permissions for that queue's names and ARGV prefixes were part of the
        verdict, so the form holds for this user and verdict only. None when the call does not
        take honoured's path."""
        if not self.honoured(args, user, keys):
            return None
        split = queue_of(args[3])
        assert split is not None   # (honoured)
        head = _QUEUE_HEAD + split[0] + b"}:"
        checks: list[LaneCheck] = []
        for i, shape in enumerate(self.shapes, 3):
            if shape.tail is not None:
                kind = LaneCheckKind.DATE if shape.tail == "date" else LaneCheckKind.PREFIX
                checks.append(LaneCheck(i, kind, head + shape.suffixes[0]))
            elif len(shape.suffixes) == 1:
                checks.append(LaneCheck(i, LaneCheckKind.EXACT, head + shape.suffixes[0]))
            else:
                checks.append(LaneCheck(i, LaneCheckKind.ONE_OF,
                                        tuple(head + x for x in shape.suffixes)))
        for p in self.prefixes:
            checks.append(LaneCheck(3 + self.n + p.index - 1, LaneCheckKind.EXACT,
                                    head + p.suffix))
        return LaneForm(numkeys=self.numkeys, need=self.need, checks=tuple(checks))


def _user_may(user: Any, prefix: bytes, write: bool) -> bool:
    """Whether the user's key patterns allow keys under ``prefix`` (deny if it cannot tell)."""
    if getattr(user, "has_allkeys", False) is True:
        return True
    check = getattr(user, "check_key", None)
    if check is None:
        return False
    return bool(check(prefix, write))
