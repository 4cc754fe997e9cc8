"""Lua script allowlists and script contracts: which scripts a user may run, and how.

No I/O, and no product's names: the script tables come from the registered script family
(``contracts.family()``; today Asynq's, in ``redisgate/asynq/scripts.py``). A Redis proxy cannot
see the keys a Lua script builds at run time (Asynq's scripts build task keys from an ARGV prefix
plus ids read from lists), so it pins the script instead:

* ``ScriptPolicy`` is the per-user allowlist of script SHA1s (``User.scripts``). ``rules.py`` calls
  ``policy.judge(user, spec, args)`` for EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, SCRIPT LOAD, FCALL,
  FCALL_RO and FUNCTION LOAD, after the command bit and the KEYS check passed. ``judge`` returns
  ``None`` (allowed) or a ``Denial`` with ``kind="script"``.
* A ``ScriptContract`` says how a known script must be called: how many KEYS it takes, what each
  KEY looks like (a ``Shape``: ``QueueKey`` ``<tag><Q>}:<suffix>``, ``TaggedKey``,
  ``PrefixedKey``, ``ExactKey``, ``AnyOf``), and which ARGV positions are key prefixes
  (``PrefixArg``) that must equal ``<tag><Q>}:<suffix>`` for the *same* ``Q`` as the KEYS. Those
  prefixes must also pass the user's key patterns (``user.check_key(key, write)``), because the
  script will read or write keys under them. ``check_contract`` is the check, with its reason;
  ``_FastContract`` the same compiled for EVALSHA's hot path, and ``LaneForm`` what it hands
  the C lane (memo.py) for one queue.
* The family's ``known`` contracts (SHA1 -> contract) are enforced by default. An operator's
  *own* script can be bound to a known script's contract: a ``scripts:`` entry
  ``{sha1: <hex>, like: dequeueCmd}`` (``resolve_scripts``) allows that SHA1 and enforces the
  ``dequeueCmd`` contract on it (KEYS shapes, one ``Q``, ARGV key prefixes) exactly as for the
  product's own body. ``ScriptPolicy.custom`` holds these SHA1 -> contract bindings. The tests
  run their own scripts with Asynq's layouts (tests/asynq_lua/), bound this way.

Queue identity is Redis's hash-tag rule: ``Q`` is the text between the family's queue tag
(``asynq:{``) and the first ``}`` (``queue_of``). A queue whose name contains ``}`` therefore
never satisfies a contract (its keys would not share one slot either); profiles refuse such names
up front.

May import: rules (``Denial``), contracts (the registry). Nothing here imports a product package.
"""
from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any, Callable, Iterable, Mapping, cast

from .contracts import family
from .rules import Denial

# --------------------------------------------------------------------------------------------
# Key shapes (one per KEYS position)
# --------------------------------------------------------------------------------------------

_DATE = re.compile(rb"\d{4}-\d{2}-\d{2}")
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")


def is_sha1_hex(text: str) -> bool:
    """Whether ``text`` is a SHA1 digest in hex (40 hex digits, any case)."""
    return _HEX40.fullmatch(text) is not None


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


def split_queue(key: bytes, tag: bytes) -> tuple[bytes, bytes] | None:
    """Split ``<tag>Q}:rest`` into ``(Q, rest)`` by Redis's hash-tag rule; None otherwise.

    ``Q`` is what Redis Cluster hashes (the text up to the first ``}``), so two keys with the same
    ``Q`` always share a slot. An empty ``Q`` is not a queue (Asynq refuses blank names).
    """
    if not key.startswith(tag):
        return None
    close = key.find(b"}", len(tag))
    if close <= len(tag) or key[close + 1:close + 2] != b":":
        return None
    return key[len(tag):close], key[close + 2:]


def queue_of(key: bytes) -> tuple[bytes, bytes] | None:
    """``split_queue`` with the registered family's queue tag (``asynq:{Q}:rest``)."""
    return split_queue(key, family().queue_tag)


class Shape:
    """What one KEYS position must look like. ``scope(key)`` returns the key's scope (the queue
    name for queue keys, the hash tag for server keys, ``b""`` for unscoped keys) or None when
    the key does not have this shape."""

    kind = "none"          # scopes of one contract must all be of one kind and equal

    def scope(self, key: bytes) -> bytes | None:  # pragma: no cover - interface
        raise NotImplementedError

    def queue_tag(self) -> bytes | None:
        """The queue tag of a queue shape (its keys are ``<tag>Q}:...``), else None."""
        return None

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class QueueKey(Shape):
    """``<tag>Q}:<suffix>`` (``asynq:{Q}:pending``) for one of ``suffixes`` (exact), or, with
    ``tail``, a suffix that starts with ``suffixes[i]`` followed by a non-empty tail
    (``tail="date"``: a YYYY-MM-DD)."""
    tag: bytes
    suffixes: tuple[bytes, ...]
    tail: str | None = None      # None: exact; "any": non-empty rest; "date": YYYY-MM-DD
    kind = "queue"

    def queue_tag(self) -> bytes | None:
        return self.tag

    def scope(self, key: bytes) -> bytes | None:
        split = split_queue(key, self.tag)
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
        return f"{self.tag.decode()}Q}}:{alts}"


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

    def queue_tag(self) -> bytes | None:
        return next((t for t in (s.queue_tag() for s in self.shapes) if t is not None), None)


# --------------------------------------------------------------------------------------------
# Contracts
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrefixArg:
    """ARGV[index] (1-based) is a key prefix: it must equal ``<tag>Q}:<suffix>`` for the KEYS'
    queue (``asynq:{Q}:t:``), and the user must be allowed to read (``write=False``) or write
    keys under it. ``label`` is how denials name it (``task key prefix``)."""
    index: int
    suffix: bytes
    write: bool
    label: str = "key prefix"


@dataclass(frozen=True)
class ScriptContract:
    """How a known script must be called.

    ``keys`` gives the shape of each KEYS position; with ``variadic`` the KEYS are a non-empty
    repetition of ``keys`` (historicalStatsCmd passes processed/failed pairs for n days).
    ``prefixes`` are the ARGV key-prefix positions. ``unchecked`` says, for the operator, which
    keys the script reaches that no proxy can check (they still share the KEYS' hash tag).
    ``queue_tag`` (derived) is the tag of its queue shapes (one per contract), which the ARGV
    key prefixes are built from; None for a contract without queue keys.
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
    queue_tag: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tags = {t for t in (s.queue_tag() for s in self.keys) if t is not None}
        if len(tags) > 1:
            raise ValueError(f"{self.name}: queue keys of several tags {sorted(tags)}")
        tag = next(iter(tags), None)
        if self.prefixes and tag is None:
            raise ValueError(f"{self.name}: ARGV key prefixes need queue KEYS to take Q from")
        object.__setattr__(self, "queue_tag", tag)

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


# --------------------------------------------------------------------------------------------
# Named scripts, and own scripts bound to a known contract ({sha1: ..., like: ...})
# --------------------------------------------------------------------------------------------

def expand_script_names(items: Iterable[str]) -> set[str]:
    """Resolve a ``scripts:`` list into lowercase SHA1 hex strings: the registered family's
    ``expand_names`` (for Asynq: a 40-hex SHA1, a named set such as ``asynq-worker@v0.26``, or a
    script name such as ``enqueueCmd``). Raises ``ValueError`` naming the first unknown item."""
    return family().expand_names(items)


def contract_like(like: str) -> ScriptContract:
    """The known contract named by a ``like:`` value (the family's ``contract_like``: for Asynq a
    script name, ``<name>@<line>`` or a known SHA1). Raises ``ValueError`` with the reason."""
    return family().contract_like(like)


class BindError(ValueError):
    """A bad ``{sha1, like}`` binding; ``field`` is the culprit: ``"sha1"`` or ``"like"``."""

    def __init__(self, field_: str, why: str):
        super().__init__(why)
        self.field = field_


def bind_script(sha1: str, like: str) -> ScriptContract:
    """The contract of ``like`` (see ``contract_like``) for the own script ``sha1``.

    Raises ``BindError`` for a malformed SHA1, a SHA1 that is one of the family's own scripts
    (its contract is fixed; list it as a plain SHA1 instead), or an unknown ``like``.
    """
    if not isinstance(sha1, str) or not is_sha1_hex(sha1.strip()):
        raise BindError("sha1", f"expected a 40-hex SHA1, got {sha1!r}")
    sha = sha1.strip().lower()
    known = family()
    if sha in known.known:
        raise BindError("sha1", f"{sha} is {known.title}'s own {known.known[sha].name}, which is "
                                "already bound to its contract; list it as a plain SHA1")
    try:
        base = contract_like(like)
    except ValueError as e:
        raise BindError("like", str(e)) from None
    # No releases: the binding belongs to no release of the product, so no named set picks it
    # up.
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
    * for a SHA1 in ``contracts`` (by default the script family's known scripts) the call must
      honour the contract: the KEYS count and shapes, one ``{Q}`` across all KEYS, and each ARGV
      key prefix equal to the one for that ``{Q}`` and allowed by ``user.check_key(prefix,
      write)``;
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
    contracts: Mapping[str, ScriptContract] = field(default_factory=lambda: family().known)
    custom: dict[str, ScriptContract] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def hex_of(sha: str | bytes) -> str:
            text = sha.decode() if isinstance(sha, bytes) else str(sha)
            if not is_sha1_hex(text):
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
        # (every contract with ARGV prefixes has queue KEYS: ScriptContract.__post_init__)
        assert scope is not None and contract.queue_tag is not None
        expected = contract.queue_tag + scope + b"}:" + p.suffix
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
    reason. The shape: numkeys written canonically, KEYS that are all ``<tag>Q}:...`` queue
    keys (one suffix per position for suffix tails), enough ARGV. Per queue name the expected
    key names and ARGV prefixes are built once (``_per_queue``, bounded: queue names come from
    clients), so a call costs one tuple comparison for the fixed key names and a
    ``startswith`` per task or stats key.
    """

    __slots__ = ("contract", "numkeys", "n", "need", "shapes", "prefixes", "tag", "skip",
                 "_per_queue")

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
        self.tag = self.shapes[0].tag       # (one tag per contract: ScriptContract)
        self.skip = len(self.tag)
        self._per_queue: dict[bytes, _QueueEntry] = {}

    def _build(self, q: bytes) -> _QueueEntry:
        """What a call for queue q must look like: (the KEYS positions with one possible name,
        as an itemgetter, and those names; the other exact positions with their possible
        names; the positions with a suffix tail: (index, prefix, is_date); the ARGV prefixes:
        (index, expected value, write); the dates seen valid; per user, whether the user may use
        those ARGV prefixes)."""
        head = self.tag + q + b"}:"
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
        k0 = args[3]   # its queue: split_queue(), inlined
        skip = self.skip
        close = k0.find(b"}", skip)
        if close <= skip or not k0.startswith(self.tag):
            return False
        entry = self._per_queue.get(k0[skip:close])
        if entry is None:
            split = split_queue(k0, self.tag)
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
        """For redisgate._native._lane: when ``honoured(args, user, keys)``, what every call for the
        queue of KEYS[1] (``split_queue``) must look like to be honoured the same way (LaneForm).
        The user's permissions for that queue's names and ARGV prefixes were part of the
        verdict, so the form holds for this user and verdict only. None when the call does not
        take honoured's path."""
        if not self.honoured(args, user, keys):
            return None
        split = split_queue(args[3], self.tag)
        assert split is not None   # (honoured)
        head = self.tag + split[0] + b"}:"
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
