"""Asynq's Lua scripts: the contract table, roles, release lines, named sets, the queue tag.

No I/O; data and the functions that read it. ``KNOWN_SCRIPTS`` maps the SHA1 of every Asynq script
(v0.24.0 .. main) to its ``scripts.ScriptContract``: how many KEYS it takes, what each KEY looks
like relative to the queue (``asynq:{Q}:pending``, ...), and which ARGV positions are key
prefixes that must equal ``asynq:{Q}:t:`` / ``asynq:{Q}:g:`` / ``asynq:{Q}:`` for the *same*
``{Q}`` as the KEYS (the generic checks are ``scripts.check_contract`` and the compiled
``scripts._FastContract``).

The SHA1 values and the KEYS/ARGV layouts are those of Asynq's own Lua scripts, per release
(``rdb.go``, ``inspect.go`` and ``x/rate``; docs/asynq.md, "Scripts", says what the contracts
hold an operator to). The SHA1 table is frozen in tests/asynq/reference-sha1.json, which
tests/test_scripts.py checks KNOWN_SCRIPTS against; see tests/asynq/README.md.

Queue identity is Redis's hash-tag rule: ``Q`` is the text between ``asynq:{`` (``QUEUE_TAG``)
and the first ``}``. A queue whose name contains ``}`` therefore never satisfies a contract (its
keys would not share one slot either); profiles refuse such names up front.

Names for a ``scripts:`` list (``expand_script_names``): a named set of ``SCRIPT_SETS``
(``asynq-v0.26`` a release line, ``asynq-worker`` a role, ``asynq-worker@v0.26`` both,
``asynq-all``) or a script name (``enqueueCmd``); for ``like:`` (``contract_like``): a script name,
optionally at a release line, or a known SHA1.

May import: redisgate.policy.scripts (the generic contract machinery) only.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..policy.scripts import (AnyOf, ExactKey, PrefixArg, PrefixedKey, QueueKey, ScriptContract,
                              Shape, TaggedKey, is_sha1_hex)

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

# Who runs what (Asynq's client, server, scheduler and inspector code: docs/asynq.md has the
# roles and what each sends). The worker also runs the client scripts because the
# aggregator enqueues the aggregated task through an ordinary Client.
_CLIENT = frozenset({"producer", "worker", "scheduler"})
_WORKER = frozenset({"worker"})
_SCHEDULER = frozenset({"scheduler"})
_READ = frozenset({"inspector", "admin"})
_ADMIN = frozenset({"admin"})


# --------------------------------------------------------------------------------------------
# Key shapes (one per KEYS position) and ARGV key prefixes
# --------------------------------------------------------------------------------------------

# The opening of a queue key's hash tag: a queue key is asynq:{<queue>}:<rest> (scripts.queue_of).
# The family's queue_tag: memo.py gives it to the C lane with every SCRIPT verdict.
QUEUE_TAG = b"asynq:{"


def _q(*suffixes: str, tail: str | None = None) -> QueueKey:
    return QueueKey(QUEUE_TAG, tuple(s.encode() for s in suffixes), tail)


PENDING, ACTIVE, SCHEDULED, RETRY = _q("pending"), _q("active"), _q("scheduled"), _q("retry")
ARCHIVED, LEASE, COMPLETED, PAUSED = _q("archived"), _q("lease"), _q("completed"), _q("paused")
GROUPS, AGG_SETS = _q("groups"), _q("aggregation_sets")
PROCESSED_TOTAL, FAILED_TOTAL = _q("processed"), _q("failed")
PROCESSED_DAY, FAILED_DAY = _q("processed:", tail="date"), _q("failed:", tail="date")
TASK = _q("t:", tail="any")
TASK_PREFIX_KEY = _q("t:")                      # archiveCmd passes the bare prefix as KEYS[9]
UNIQUE = _q("unique:", tail="any")
GROUP = _q("g:", tail="any")                    # a group, or a group's aggregation set

# How denials name an ARGV key prefix, by its suffix.
_TASK_PREFIX, _GROUP_PREFIX, _QUEUE_PREFIX = "task key prefix", "group key prefix", \
    "queue key prefix"


def P_READ(i: int) -> PrefixArg:   # noqa: N802 - short names keep the table readable
    return PrefixArg(i, b"t:", False, _TASK_PREFIX)


def P_WRITE(i: int) -> PrefixArg:  # noqa: N802
    return PrefixArg(i, b"t:", True, _TASK_PREFIX)


def G_READ(i: int) -> PrefixArg:   # noqa: N802
    return PrefixArg(i, b"g:", False, _GROUP_PREFIX)


def G_WRITE(i: int) -> PrefixArg:  # noqa: N802
    return PrefixArg(i, b"g:", True, _GROUP_PREFIX)


def Q_READ(i: int) -> PrefixArg:   # noqa: N802
    return PrefixArg(i, b"", False, _QUEUE_PREFIX)


def Q_WRITE(i: int) -> PrefixArg:  # noqa: N802
    return PrefixArg(i, b"", True, _QUEUE_PREFIX)


# --------------------------------------------------------------------------------------------
# Contracts
# --------------------------------------------------------------------------------------------

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


def expand_script_names(items: Iterable[str]) -> set[str]:
    """Resolve a ``scripts:`` list into lowercase SHA1 hex strings.

    Each item is a 40-hex SHA1 (any case), a named set (``asynq-v0.26``, ``asynq-worker``,
    ``asynq-worker@v0.26``, ``asynq-all``) or an Asynq script name (``enqueueCmd``: every known
    version of it). Raises ``ValueError`` naming the first item that is none of these.
    """
    out: set[str] = set()
    for item in items:
        item = item.strip()
        if is_sha1_hex(item):
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
# Own scripts bound to a known contract ({sha1: ..., like: ...}): scripts.bind_script
# --------------------------------------------------------------------------------------------

def contract_like(like: str) -> ScriptContract:
    """The known contract named by a ``like:`` value.

    ``like`` is a script name (``dequeueCmd``: the layout of its newest version, the one in
    ``main``), a name at a release line (``archiveCmd@v0.24``: the 8-KEYS layout of v0.24), or
    the SHA1 of a known script (exactly that version). Raises ``ValueError`` with the reason.
    """
    text = like.strip()
    if is_sha1_hex(text):
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

