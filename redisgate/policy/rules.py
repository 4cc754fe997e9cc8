"""Redis ACL rules: `ACL SETUSER` tokens parsed into compiled users, and the judge. No I/O.

`parse_user(name, rules) -> User` applies the tokens, in order, to a fresh user exactly as Redis 7.0's
`ACL SETUSER` (src/acl.c ACLSetUser / ACLSetSelector) applies them to a user that does not exist yet:
disabled, no passwords, no keys, no channels (Redis 7's default `acl-pubsub-default resetchannels`),
no commands. Every token Redis accepts is accepted with the same effect, every token Redis refuses
raises `RuleError(token, why)` with Redis's reason ("Syntax error", "Unknown command or category name
in ACL", ...). Tokens are case-insensitive where Redis's are. Accepted:

  on off nopass resetpass >password <password #<sha256 hex> !<sha256 hex>
  ~pattern %R~pattern %W~pattern %RW~pattern allkeys resetkeys
  &pattern allchannels resetchannels
  +cmd -cmd +cmd|sub -cmd|sub +cmd|firstarg (+select|0: a first argument of a plain command)
  +@category -@category allcommands nocommands
  reset clearselectors (selector tokens ...) skip-sanitize-payload sanitize-payload

`>password` is accepted here; whether a clear-text password may appear in a configuration is the
config layer's decision. Password hashes are sha256 hex, as Redis stores them; `check_password`
compares against every hash with `hmac.compare_digest`, without an early exit.

Semantics reproduced from Redis 7.0 (tests/test_rules_oracle.py compares thousands of random rule
sets and commands with the real server's ACL DRYRUN):

* Allowing or blocking a container command (`+config`) applies to all its subcommands; `+@cat` and
  `-@cat` apply to every command in the category and, for a container in it, to all its subcommands,
  then to each subcommand that is itself in the category.
* `+cmd|arg` on a command without subcommands allows that first argument (compared with
  strcasecmp, options.word: case-insensitive, up to a NUL) while the command's bit is off; `-cmd|arg` is an unknown command.
* Keys: a key spec's flags decide which patterns apply: ACCESS needs a read (`%R`) pattern,
  INSERT/DELETE/UPDATE a write (`%W`) pattern, both need a pattern with both, a key with none of
  those flags (EXISTS, TYPE, ...) is checked against every pattern. `~*`/`allkeys` skip the check.
* Channels: PUBLISH/SPUBLISH/SUBSCRIBE/SSUBSCRIBE channels are matched against the channel patterns
  as globs; a PSUBSCRIBE pattern must equal one of the channel patterns literally.
* Commands flagged `no_auth` (AUTH, HELLO, QUIT, RESET) pass the command check.
* Selectors: the user may run a command if ANY selector (the root one or a `(...)` one) allows the
  command together with all its keys and channels. The refusal reported is Redis's "relevant error":
  the command, unless some selector got as far as a key or a channel (channel beats key, a later
  argument beats an earlier one).

Stricter than Redis (documented refusals, `Denial.kind` tells them apart from Redis's own):

* kind "keyspace" — commands that reach beyond the keys they name are refused unless the selector
  that allows them has `allkeys` (in addition to the command bit): KEYS, SCAN, RANDOMKEY, FLUSHALL,
  FLUSHDB, SWAPDB, MOVE, COPY ... DB <other db>, SELECT <other db> (other than `judge(..., db=)`),
  DEBUG, CONFIG *, MODULE *, MONITOR, SHUTDOWN, REPLICAOF, SLAVEOF, MIGRATE, CLIENT KILL,
  CLIENT PAUSE, SYNC, PSYNC, CLIENT TRACKING (its invalidation messages name keys outside the
  user's patterns: with BCAST every modified key), CLIENT UNBLOCK (it ends another client's
  blocking command). (The session may still run SCAN/KEYS for a
  `confine_scan` user, rewritten to the user's one key prefix: see confine.py and `read_prefix`.)
* kind "script" — EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, SCRIPT LOAD, FCALL, FCALL_RO, FUNCTION LOAD:
  a script can touch any key and run any command under the proxy's upstream identity. When the
  user has a script policy (`user.scripts`, see scripts.py) it decides, once the command bit and
  the declared KEYS passed; without one only a selector with allkeys and every command may run
  scripts. (Such a selector may run anything anyway, including PUBLISH from a script whatever its
  channel patterns say.)
* kind "secret" — CONFIG GET whose patterns could return the upstream's credentials (see
  secret_config.py) is refused for every user, before its rules are looked at; the session
  enforces it in report-only and learn mode too.
* Tokens containing a NUL byte (other than `>`/`<` passwords) are refused; Redis would silently
  cut them at the NUL. A PSUBSCRIBE pattern is compared with the whole allowed pattern; Redis's
  `strcmp` would stop at a NUL in the channel.

Rendering: `describe()` is Redis's ACL LIST text for the user (flags, `#hash`es, keys, channels, the
command rules found by Redis's greedy category fit, then `(selector)`s), with single commands in
name order where Redis uses its hash-table order. `to_acl_rules()` is `reset` followed by that
text: applied with ACL SETUSER (or `parse_user`) it recreates an equivalent user.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import enum
from dataclasses import dataclass, replace
from itertools import repeat
from typing import (TYPE_CHECKING, Callable, ClassVar, Iterable, Literal, Mapping, NamedTuple,
                    Protocol, final)

from ..protocol import commands, errors
from .glob import Matcher, compile_pattern
from ..protocol.commands import CATEGORY_ORDER, CommandSpec
from ..protocol.options import parse_options, word
from ..protocol.resp import split_args, string2ll
from .secret_config import config_get_reveals_secret

if TYPE_CHECKING:   # scripts imports this module (Denial): the type only, for lane_script
    from .scripts import LaneForm

__all__ = ["RuleError", "Denial", "User", "parse_user", "parse_aclfile", "split_args",
           "CATEGORY_ORDER", "FastKind", "FastVerdict", "Ask", "Allow", "OneKey", "Keys", "Script",
           "ASK", "ALLOW", "ScriptJudge", "ScriptCheck", "CommandSource"]

# Key pattern permission flags (Redis ACL_READ_PERMISSION / ACL_WRITE_PERMISSION).
READ = 1
WRITE = 2
ALL = READ | WRITE

# ACLSetUserStringError() texts, by the errno Redis sets.
ENOENT = "Unknown command or category name in ACL"
EINVAL = "Syntax error"
EEXIST = ("Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not "
          "have any effect. Try 'resetkeys' to start with an empty list of patterns")
EISDIR = ("Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does "
          "not have any effect. Try 'resetchannels' to start with an empty list of channels")
ENODEV = "The password you are trying to remove from the user does not exist"
EBADMSG = ("The password hash must be exactly 64 characters and contain only lowercase "
           "hexadecimal characters")
ECHILD = "Allowing first-arg of a subcommand is not supported"

_HASH_RE = re.compile(rb"[0-9a-f]{64}")
_C_SPACE = b" \t\n\v\f\r\0"   # isspace() in the C locale, plus NUL (ACLStringHasSpaces)

_CHANNEL_COMMANDS = frozenset({"publish", "spublish", "subscribe", "ssubscribe", "psubscribe"})
# Running, loading or managing server-side code: decided by the user's script policy (scripts.py),
# or, without one, allowed only to users with allkeys and every command.
_SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "script|load",
                              "script|flush", "script|kill", "script|debug", "fcall", "fcall_ro"})
_KEYSPACE_COMMANDS = frozenset({
    "keys", "scan", "randomkey", "flushall", "flushdb", "swapdb", "move", "debug", "monitor",
    "shutdown", "replicaof", "slaveof", "migrate", "client|kill", "client|pause", "sync", "psync",
    # Invalidation messages name keys beyond the user's patterns (BCAST: every modified key);
    # UNBLOCK ends another client's blocking command.
    "client|tracking", "client|unblock",
})
_KEYSPACE_CONTAINERS = frozenset({"config", "module"})
_INT_RE = re.compile(rb"-?[1-9][0-9]*|0")   # string2ll's digits, of any length (COPY's DB operands)
_startswith = bytes.startswith

# Special handling codes, by command bit.
_PLAIN, _KEYSPACE, _SCRIPT, _SELECT, _COPY, _CONFIG_GET = 0, 1, 2, 3, 4, 5
_EVALSHA_NAMES = frozenset({"evalsha", "evalsha_ro"})


class FastKind(enum.Enum):
    """What a user's compiled verdict for a command says (User.verdict)."""
    ASK = "ask"          # no shortcut: the general walk decides (and words any denial)
    ALLOW = "allow"      # allowed whatever the arguments
    ONE_KEY = "one key"  # allowed when the one key passes
    KEYS = "keys"        # allowed when every key passes one selector's patterns
    SCRIPT = "script"    # when the keys pass: the script policy decides


@final   # (judge() tells the verdicts apart by `type(fast) is ...`, which final lets mypy narrow)
@dataclass(frozen=True, slots=True)
class Ask:
    """No shortcut: `judge()` takes the general walk. One instance: `ASK`."""
    kind: ClassVar[FastKind] = FastKind.ASK


@final
@dataclass(frozen=True, slots=True)
class Allow:
    """Allowed outright: the first selector with the command's bit has allkeys or the command
    has no keys, no channels, nothing stricter to check. One instance: `ALLOW`."""
    kind: ClassVar[FastKind] = FastKind.ALLOW


@final
@dataclass(frozen=True, slots=True)
class OneKey:
    """While `pos < len(args) <= most` the command's one key is `args[pos]`
    (`spec.keys.single_key`), allowed when it starts with one of `prefixes`, is in `exact` or
    passes `match` (`prefixes` and `exact` are match's plain-prefix and exact-name parts, tried
    first because they are one C call each). Otherwise: the general walk."""
    kind: ClassVar[FastKind] = FastKind.ONE_KEY
    pos: int
    most: int
    prefixes: tuple[bytes, ...]
    exact: frozenset[bytes]
    match: Callable[[bytes], bool]


@final
@dataclass(frozen=True, slots=True)
class Keys:
    """Every key checked against `selector`'s patterns: `plain(args)` (`spec.keys.plain_keys`),
    when not None, gives the keys, which then all need the permission of `keyset` (`prefixes` and
    `match` are its parts); else `spec.keys(args)`. Passing: allowed. Failing: the walk."""
    kind: ClassVar[FastKind] = FastKind.KEYS
    by_sha: ClassVar[bool] = False   # (as Script's: never, for a plain command)
    selector: _Selector
    plain: Callable[[list[bytes]], list[bytes] | None] | None
    prefixes: tuple[bytes, ...]
    match: Callable[[bytes], bool] | None   # None exactly when `plain` is
    keyset: _PatternSet | None              # likewise


@final
@dataclass(frozen=True, slots=True)
class Script:
    """A script command (EVAL, EVALSHA, FCALL, SCRIPT LOAD, ...): its keys as `Keys`, then the
    user's script policy decides (scripts.ScriptPolicy). `by_sha` (EVALSHA, EVALSHA_RO): the
    SHA1's compiled contract (`scripts.ScriptPolicy.by_sha`) is tried first."""
    kind: ClassVar[FastKind] = FastKind.SCRIPT
    selector: _Selector
    plain: Callable[[list[bytes]], list[bytes] | None] | None
    prefixes: tuple[bytes, ...]
    match: Callable[[bytes], bool] | None
    keyset: _PatternSet | None
    by_sha: bool

    @property
    def by_contract(self) -> bool:
        """Whether `judge()` decides a call by the SHA1's compiled contract first, with every
        KEYS name needing one permission: the calls `User.lane_script` can describe."""
        return self.by_sha and self.plain is not None


FastVerdict = Ask | Allow | OneKey | Keys | Script
ASK = Ask()
ALLOW = Allow()


# ----------------------------------------------------------------------------------------------
# What the judge asks of a user's script policy (scripts.ScriptPolicy, set by the config layer)
# ----------------------------------------------------------------------------------------------

class ScriptCheck(Protocol):
    """One allowed SHA1's compiled contract (scripts._FastContract): whether a call keeps to it."""

    def honoured(self, args: list[bytes], user: User, keys: Keys | Script | None = None) -> bool:
        """True: `args` keep to the contract (with `keys`, the user's verdict for the command:
        and every KEYS name passes its key patterns). False: ask the policy's `judge`."""
        ...

    def lane_form(self, args: list[bytes], user: User, keys: Script) -> LaneForm | None:
        """What every call of this script for the queue of `args` must look like to be
        honoured the same way (for redisgate._native._lane); None off honoured's path."""
        ...


class ScriptJudge(Protocol):
    """A user's script policy (`User.scripts`). It may also have `by_sha`, a mapping of the
    allowed SHA1s as sent to True (allowed, no contract) or their `ScriptCheck`, which `judge()`
    consults first for EVALSHA/EVALSHA_RO; a policy without one is only asked `judge`."""

    def judge(self, user: User, spec: CommandSpec, args: list[bytes]) -> Denial | None:
        """None if the script call may run (its command bit and KEYS passed already)."""
        ...


ShaChecks = Mapping[bytes, "ScriptCheck | Literal[True]"]
_NO_CHECKS: ShaChecks = {}   # a policy without `by_sha`


class RuleError(ValueError):
    """An ACL rule Redis would refuse. `token` (redacted if it carries a password), `why` (Redis's
    reason). `str()` is Redis's ACL SETUSER error text without the `ERR ` code."""

    def __init__(self, token: str | None, why: str, line: int | None = None):
        self.token = _redact(token)
        self.why = why
        self.line = line
        if token is None:
            text = why
        else:
            text = f"Error in ACL SETUSER modifier '{self.token}': {why}"
        if line is not None:
            text = f"line {line}: {text}"
        super().__init__(text)


def _redact(token: str | None) -> str | None:
    """Never echo a clear-text password: `>secret` becomes `>***` (also inside a selector)."""
    if token is None:
        return None
    words = token.split(" ")
    out = []
    for w in words:
        core = w.lstrip("(")
        if core[:1] in (">", "<"):
            w = w[:len(w) - len(core)] + core[0] + "***" + (")" if core.endswith(")") else "")
        out.append(w)
    return " ".join(out)


# ----------------------------------------------------------------------------------------------
# Denials
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Denial:
    """Why `User.judge` refused a command.

    kind    "command" | "key" | "channel" (Redis would refuse too) or "keyspace" | "script" |
            "secret" (the proxy is stricter than Redis, see the module docstring)
    object  the command name (str) for command/keyspace/script, the key or channel (bytes)
    reason  a short human explanation for logs and ACL LOG
    command the table name of the refused command (`"config|set"`), used by the NOPERM text
    user    the user's name, used by Redis 7.2's NOPERM text
    """
    kind: str
    object: str | bytes
    reason: str
    command: str = ""
    user: str = ""

    def reply(self, version: errors.Version, user: str | None = None) -> bytes:
        """The exact NOPERM error line the upstream of `version` would send; for kind "script"
        (a refusal of redisgate's own) the reason follows, after a colon."""
        who = self.user if user is None else user
        if self.kind == "key":
            return errors.noperm_key(version, who)
        if self.kind == "channel":
            return errors.noperm_channel(version, who)
        name = self.command or (self.object if isinstance(self.object, str) else "")
        line = errors.noperm_command(version, who, name)
        if self.kind in ("script", "secret") and self.reason:
            # A refusal Redis would not make: say why (the script allowlist, a contract, a flag).
            why = self.reason.replace("\r", " ").replace("\n", " ")
            line = line[:-2] + b": " + why.encode("utf-8", "backslashreplace") + b"\r\n"
        return line

    def dryrun_text(self, version: errors.Version = (7, 0, 0), user: str | None = None) -> str:
        """The text ACL DRYRUN answers (a bulk string, not an error) for this refusal."""
        who = self.user if user is None else user
        prefix = f"User {who}" if tuple(version[:2]) >= (7, 2) else "This user"
        if self.kind in ("key", "channel"):
            obj = self.object.decode("utf-8", "surrogateescape") \
                if isinstance(self.object, (bytes, bytearray)) else str(self.object)
            return f"{prefix} has no permissions to access the '{obj}' {self.kind}"
        name = self.command or str(self.object)
        return f"{prefix} has no permissions to run the '{name}' command"


# ----------------------------------------------------------------------------------------------
# The command catalogue the rules are resolved against
# ----------------------------------------------------------------------------------------------

class CommandSource(Protocol):
    """A stand-in for commands.py's module-level catalogue (`parse_user(..., table=)`)."""

    @property
    def KeyFlag(self) -> type[commands.KeyFlag]: ...

    def categories(self) -> Iterable[str]: ...

    def commands_in_category(self, cat: str) -> Iterable[CommandSpec]: ...


class _Catalog:
    """What the rules need from commands.py, computed once per command table."""

    def __init__(self, table: object, categories: Callable[[], Iterable[str]],
                 in_category: Callable[[str], Iterable[CommandSpec]],
                 keyflag: type[commands.KeyFlag]) -> None:
        self.table = table
        self.keyflag = keyflag
        by_name: dict[str, CommandSpec] = {}
        self.by_category: dict[str, list[CommandSpec]] = {}
        for cat in categories():
            specs = list(in_category(cat))
            self.by_category[cat] = specs
            for spec in specs:
                by_name[spec.name] = spec
                for sub in spec.subcommands.values():
                    by_name[sub.name] = sub
        self.by_name = by_name
        self.top = sorted((s for s in by_name.values() if s.parent is None), key=lambda s: s.name)
        self.size = max(s.bit for s in by_name.values()) + 1
        self.all_bits = frozenset(s.bit for s in by_name.values())
        self.top_in_category = {cat: [s for s in specs if s.parent is None]
                                for cat, specs in self.by_category.items()}
        self.special = bytearray(self.size)
        for spec in by_name.values():
            name = spec.name
            if name in _SCRIPT_COMMANDS or name.startswith("function|"):
                code = _SCRIPT
            elif name == "select":
                code = _SELECT
            elif name == "copy":
                code = _COPY
            elif name == "config|get":
                code = _CONFIG_GET
            elif name in _KEYSPACE_COMMANDS or name.split("|", 1)[0] in _KEYSPACE_CONTAINERS:
                code = _KEYSPACE
            else:
                code = _PLAIN
            self.special[spec.bit] = code
        self.no_auth = frozenset(s.bit for s in by_name.values() if "no_auth" in s.flags)
        self.channel_bits = frozenset(s.bit for s in by_name.values() if s.name in _CHANNEL_COMMANDS)
        self.read_flags = int(keyflag.ACCESS)
        self.write_flags = int(keyflag.INSERT) | int(keyflag.DELETE) | int(keyflag.UPDATE)
        self.not_key = int(keyflag.NOT_KEY)
        self._needed: dict[int, int] = {}

    def needed(self, flags: int) -> int:
        """The pattern permission a key with these key-spec flags needs (READ, WRITE, both, or 0
        for a key checked against every pattern); -1 for NOT_KEY (not checked at all)."""
        n = self._needed.get(flags)
        if n is None:
            if flags & self.not_key:
                n = -1   # getKeysFromCommandWithSpecs(GET_KEYSPEC_DEFAULT) skips them
            else:
                n = (READ if flags & self.read_flags else 0) | \
                    (WRITE if flags & self.write_flags else 0)
            self._needed[flags] = n
        return n

    def lookup(self, name: bytes) -> CommandSpec | None:
        """Redis lookupCommandBySdsLogic, strict: `cmd` or `container|sub`, else None."""
        parts = name.split(b"|")
        if len(parts) > 2 or not parts[0]:
            return None
        try:
            text = [p.decode("ascii").lower() for p in parts]
        except UnicodeDecodeError:
            return None
        base = self.by_name.get(text[0])
        if base is None or base.parent is not None:
            return None
        if len(parts) == 1:
            return base
        if not base.subcommands:
            return None   # strict: `select|0` is not a command name
        return self.by_name.get(text[0] + "|" + text[1])


_CATALOGS: dict[int, _Catalog] = {}


def _catalog(table: CommandSource | commands.CommandTable | None = None) -> _Catalog:
    if table is None or table is commands.TABLE:
        key = id(commands.TABLE)
        if key not in _CATALOGS:
            _CATALOGS[key] = _Catalog(commands.TABLE, commands.categories,
                                      commands.commands_in_category, commands.KeyFlag)
        return _CATALOGS[key]
    if isinstance(table, commands.CommandTable):
        # (It has no categories of its own: commands.categories() are commands.TABLE's.)
        raise TypeError("rules: a command table other than commands.TABLE must be a "
                        "CommandSource (categories, commands_in_category, KeyFlag)")
    key = id(table)
    if key not in _CATALOGS:
        # A stand-in table (tests) carries the module-level functions as attributes.
        _CATALOGS[key] = _Catalog(table, table.categories, table.commands_in_category,
                                  table.KeyFlag)
    return _CATALOGS[key]


# ----------------------------------------------------------------------------------------------
# Parsing: a mutable mirror of Redis's user and aclSelector structs
# ----------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _KeyPattern:
    """A selector's key pattern and its READ|WRITE flags (`%R~` / `%W~` / `~`); a repeated
    pattern adds its flags to the first one's."""
    pattern: bytes
    flags: int


class _SelectorState:
    __slots__ = ("root", "allowed", "future", "allcommands", "firstargs", "allkeys", "patterns",
                 "allchannels", "channels")

    def __init__(self, root: bool) -> None:
        self.root = root
        self.allowed: set[int] = set()       # command bits
        self.future = False                  # Redis's reserved "future commands" bit (+@all)
        self.allcommands = False             # SELECTOR_FLAG_ALLCOMMANDS
        self.firstargs: dict[int, list[bytes]] = {}
        self.allkeys = False
        self.patterns: list[_KeyPattern] = []   # in order
        self.allchannels = False             # acl-pubsub-default resetchannels (Redis 7)
        self.channels: list[bytes] = []

    # ACLSetSelectorCommandBit / ACLChangeSelectorPerm
    def set_bit(self, bit: int, allow: bool) -> None:
        if allow:
            self.allowed.add(bit)
        else:
            self.allowed.discard(bit)
            self.allcommands = False

    def change_perm(self, spec: CommandSpec, allow: bool) -> None:
        self.set_bit(spec.bit, allow)
        self.firstargs.pop(spec.bit, None)
        for sub in spec.subcommands.values():
            self.set_bit(sub.bit, allow)

    def set_category(self, cat: "_Catalog", name: str, allow: bool) -> None:
        for spec in cat.top_in_category[name]:
            self.change_perm(spec, allow)
        for spec in cat.by_category[name]:
            if spec.parent is not None:
                self.change_perm(spec, allow)

    def all_commands(self, cat: "_Catalog", allow: bool) -> None:
        self.allowed = set(cat.all_bits) if allow else set()
        self.future = self.allcommands = allow
        self.firstargs = {}



def _lower(op: bytes) -> bytes:
    return op.lower()   # ASCII-only, as strcasecmp in the C locale


def _set_selector(sel: _SelectorState, op: bytes, cat: _Catalog) -> str | None:
    """ACLSetSelector: apply one selector token. Returns None, or Redis's error reason."""
    low = _lower(op)
    if low in (b"allkeys", b"~*"):
        sel.allkeys = True
        sel.patterns = []
    elif low == b"resetkeys":
        sel.allkeys = False
        sel.patterns = []
    elif low in (b"allchannels", b"&*"):
        sel.allchannels = True
        sel.channels = []
    elif low == b"resetchannels":
        sel.allchannels = False
        sel.channels = []
    elif low in (b"allcommands", b"+@all"):
        sel.all_commands(cat, True)
    elif low in (b"nocommands", b"-@all"):
        sel.all_commands(cat, False)
    elif op[:1] in (b"~", b"%"):
        if sel.allkeys:
            return EEXIST
        offset = 1
        if op[:1] == b"%":
            flags = 0
            while offset < len(op):
                c = op[offset:offset + 1].upper()
                if c == b"R" and not flags & READ:
                    flags |= READ
                elif c == b"W" and not flags & WRITE:
                    flags |= WRITE
                elif c == b"~":
                    offset += 1
                    break
                else:
                    return EINVAL
                offset += 1
            if not flags:
                return EINVAL
        else:
            flags = ALL
        pattern = op[offset:]
        if any(c in _C_SPACE for c in pattern):
            return EINVAL
        for existing in sel.patterns:
            if existing.pattern == pattern:
                existing.flags |= flags
                break
        else:
            sel.patterns.append(_KeyPattern(pattern, flags))
    elif op[:1] == b"&":
        if sel.allchannels:
            return EISDIR
        pattern = op[1:]
        if any(c in _C_SPACE for c in pattern):
            return EINVAL
        if pattern not in sel.channels:
            sel.channels.append(pattern)
    elif op[:1] == b"+" and op[1:2] != b"@":
        if b"|" not in op:
            spec = cat.lookup(op[1:])
            if spec is None:
                return ENOENT
            sel.change_perm(spec, True)
        else:
            base, _, sub = op[1:].rpartition(b"|")
            spec = cat.lookup(base)
            if spec is None:
                return ENOENT
            if spec.parent is not None:
                return ECHILD
            if not sub:
                return EINVAL
            if spec.subcommands:
                spec = cat.lookup(op[1:])
                if spec is None:
                    return ENOENT
                sel.change_perm(spec, True)
            else:
                args = sel.firstargs.setdefault(spec.bit, [])
                if _lower(sub) not in (_lower(a) for a in args):
                    args.append(sub)
    elif op[:1] == b"-" and op[1:2] != b"@":
        spec = cat.lookup(op[1:])
        if spec is None:
            return ENOENT
        sel.change_perm(spec, False)
    elif op[:1] in (b"+", b"-") and op[1:2] == b"@":
        name = _lower(op[2:]).decode("ascii", "replace")
        if name not in cat.by_category:
            return ENOENT
        sel.set_category(cat, name, op[:1] == b"+")
    else:
        return EINVAL
    return None


class _UserState:
    __slots__ = ("enabled", "nopass", "sanitize", "skip_sanitize", "passwords", "selectors")

    def __init__(self) -> None:
        self.enabled = False
        self.nopass = False
        self.sanitize = False
        self.skip_sanitize = False
        self.passwords: list[str] = []
        self.selectors = [_SelectorState(root=True)]

    def apply(self, op: bytes, cat: _Catalog) -> str | None:
        """ACLSetUser: apply one token. Returns None, or Redis's error reason."""
        if not op:
            return None   # Redis: the empty string is a no-op
        if b"\0" in op and op[:1] not in (b">", b"<", b"#", b"!"):
            return EINVAL  # stricter than Redis, which would cut the token at the NUL
        low = _lower(op)
        if low == b"on":
            self.enabled = True
        elif low == b"off":
            self.enabled = False
        elif low == b"skip-sanitize-payload":
            self.skip_sanitize, self.sanitize = True, False
        elif low == b"sanitize-payload":
            self.skip_sanitize, self.sanitize = False, True
        elif low == b"nopass":
            self.nopass = True
            self.passwords = []
        elif low == b"resetpass":
            self.nopass = False
            self.passwords = []
        elif op[:1] in (b">", b"#", b"<", b"!"):
            # >pw / #hash add a password, <pw / !hash remove one; clear text is hashed at once.
            if op[:1] in (b">", b"<"):
                digest = hashlib.sha256(op[1:]).hexdigest()
            elif _HASH_RE.fullmatch(op[1:]):
                digest = op[1:].decode("ascii")
            else:
                return EBADMSG
            if op[:1] in (b">", b"#"):
                if digest not in self.passwords:
                    self.passwords.append(digest)
                self.nopass = False
            elif digest not in self.passwords:
                return ENODEV
            else:
                self.passwords.remove(digest)
        elif op[:1] == b"(" and op[-1:] == b")" and len(op) >= 2:
            sel = _SelectorState(root=False)
            inner = split_args(op[1:-1])
            if inner is None:
                return EINVAL
            for sub in inner:
                why = _set_selector(sel, sub, cat)
                if why is not None:
                    return why
            self.selectors.append(sel)
        elif low == b"clearselectors":
            del self.selectors[1:]
        elif low == b"reset":
            self.nopass = False
            self.passwords = []
            root = self.selectors[0]
            root.allkeys, root.patterns = False, []
            root.allchannels, root.channels = False, []
            self.enabled = False
            self.skip_sanitize, self.sanitize = False, True
            del self.selectors[1:]
            root.all_commands(cat, False)
        else:
            return _set_selector(self.selectors[0], op, cat)
        return None


def _merge_selectors(tokens: list[bytes]) -> list[bytes]:
    """ACLMergeSelectorArguments: `(a`, `b`, `c)` become the one token `(a b c)`."""
    merged: list[bytes] = []
    selector: bytes | None = None
    for op in tokens:
        # As in Redis, an opening token restarts the selector even inside an open one.
        if op[:1] == b"(" and op[-1:] != b")":
            selector = op
            continue
        if selector is not None:
            selector += b" " + op
            if op[-1:] == b")":
                merged.append(selector)
                selector = None
            continue
        merged.append(op)
    if selector is not None:
        first = selector.split(b" ", 1)[0].decode("utf-8", "surrogateescape")
        raise RuleError(None, f"Unmatched parenthesis in acl selector starting at '{_redact(first)}'.")
    return merged


def _as_bytes(token: str | bytes) -> bytes:
    if isinstance(token, str):
        return token.encode("utf-8", "surrogateescape")
    return bytes(token)


def _as_text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def parse_user(name: str, rules: str | bytes | Iterable[str | bytes],
               table: CommandSource | commands.CommandTable | None = None) -> User:
    """Compile ACL rules into a `User`, applying them to a fresh user as ACL SETUSER would.

    `rules` is a list of tokens (one ACL SETUSER argument each; a selector may be one token
    `(~a +get)` or spread over several, as Redis allows) or one string split like a redis.conf
    line (sdssplitargs: whitespace, with quoting). `table` defaults to commands.TABLE (tests pass a
    stand-in). Raises RuleError for the first token Redis would refuse.
    """
    if isinstance(rules, (str, bytes)):
        tokens = split_args(_as_bytes(rules))
        if tokens is None:
            raise RuleError(None, "Unbalanced quotes in ACL rules")
    else:
        tokens = [_as_bytes(t) for t in rules]
    cat = _catalog(table)
    state = _UserState()
    for op in _merge_selectors(tokens):
        why = state.apply(op, cat)
        if why is not None:
            raise RuleError(_as_text(op), why)
    return User(name, state, cat)


def parse_aclfile(text: str) -> dict[str, list[str]]:
    """Redis aclfile lines (`user <name> <rules...>`) to {name: tokens}, validated as ACL LOAD
    validates them (ACLLoadFromFile): blank lines are skipped, anything else must start with the
    keyword `user` (so comments are errors, as in Redis), names may not repeat, selectors may be
    spread over several words, and every rule must parse. Raises RuleError naming the line."""
    users: dict[str, list[str]] = {}
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip(" \t\r\n")
        if not line:
            continue
        argv = [a for a in line.split(" ") if a]
        if argv[0] != "user" or len(argv) < 2:
            raise RuleError(None, "should start with user keyword followed by the username",
                            line=lineno)
        name = argv[1]
        if any(c in name for c in " \t\n\v\f\r\0"):
            raise RuleError(None, f"username '{name}' contains invalid characters", line=lineno)
        if name in users:
            raise RuleError(None, f"Duplicate user '{name}' found", line=lineno)
        try:
            merged = _merge_selectors([_as_bytes(a) for a in argv[2:]])
        except RuleError as e:
            raise RuleError(None, e.why, line=lineno) from None
        tokens = [_as_text(m.strip(b"\t\r\n")) for m in merged]
        try:
            parse_user(name, tokens)
        except RuleError as e:
            raise RuleError(e.token, e.why, line=lineno) from None
        users[name] = tokens
    return users


# ----------------------------------------------------------------------------------------------
# Compiled form
# ----------------------------------------------------------------------------------------------

class _PatternSet:
    """Several globs as one test: a set of exact strings, one `startswith` tuple, the rest."""

    __slots__ = ("exact", "prefixes", "nonempty", "globs", "matchers")

    def __init__(self, patterns: Iterable[bytes]) -> None:
        exact: set[bytes] = set()
        prefixes: list[bytes] = []
        globs: list[Matcher] = []
        nonempty = False
        for p in patterns:
            m = compile_pattern(p)
            if m.kind == "exact" and m.literal is not None:   # (literal: always, for these two)
                exact.add(m.literal)
            elif m.kind == "prefix" and m.literal is not None:
                prefixes.append(m.literal)
            elif m.kind == "any":
                nonempty = True
            elif m.kind == "glob":
                globs.append(m)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.nonempty = nonempty
        self.matchers = tuple(globs)
        self.globs = tuple(m.match for m in globs)

    def covers_prefix(self, prefix: bytes) -> bool:
        """True if every key that starts with `prefix` (non-empty) passes (a sufficient test,
        see glob.Matcher.covers_prefix)."""
        if not prefix:
            return False
        if self.nonempty or (self.prefixes and prefix.startswith(self.prefixes)):
            return True
        return any(m.covers_prefix(prefix) for m in self.matchers)

    def match(self, s: bytes) -> bool:
        if s in self.exact:
            return True
        if self.prefixes and s.startswith(self.prefixes):
            return True
        if self.nonempty and s:
            return True
        for g in self.globs:
            if g(s):
                return True
        return False


class _Selector:
    """One compiled selector: a command bitmap, key pattern sets by needed flags, channels."""

    __slots__ = ("bits", "firstargs", "allkeys", "keysets", "allchannels", "channels",
                 "literal_channels", "everything", "state")

    def __init__(self, state: _SelectorState, cat: _Catalog) -> None:
        self.state = state
        bits = bytearray(cat.size)
        for b in state.allowed:
            bits[b] = 1
        for b in cat.no_auth:
            bits[b] = 1   # CMD_NO_AUTH commands skip the command check
        self.bits = bytes(bits)
        self.firstargs = {b: frozenset(_lower(a) for a in args)
                          for b, args in state.firstargs.items() if args}
        self.allkeys = state.allkeys
        # keysets[needed] holds the patterns whose flags include `needed` (0, READ, WRITE, ALL).
        self.keysets = tuple(_PatternSet(kp.pattern for kp in state.patterns
                                         if kp.flags & needed == needed)
                             for needed in range(4))
        self.allchannels = state.allchannels
        self.channels = _PatternSet(state.channels)
        self.literal_channels = frozenset(state.channels)
        self.everything = state.allkeys and cat.all_bits <= state.allowed


class User:
    """A compiled user. Immutable rules; `report_only` and `scripts` are set by the config layer.

    name, enabled, nopass, report_only, scripts (a scripts.ScriptPolicy or None);
    has_allkeys / allows_all_commands: some selector has allkeys / every command; judge(); check_password(); check_key(); describe(); to_acl_rules().
    """

    def __init__(self, name: str, state: _UserState, cat: _Catalog) -> None:
        self.name = name
        self._state = state
        self._cat = cat
        self.enabled = state.enabled
        self.nopass = state.nopass
        self.report_only = False
        self.scripts: ScriptJudge | None = None
        self._hashes = tuple(h.encode("ascii") for h in state.passwords)
        self._selectors = tuple(_Selector(s, cat) for s in state.selectors)
        self.has_allkeys = any(s.allkeys for s in self._selectors)
        self.allows_all_commands = any(cat.all_bits <= s.allowed for s in state.selectors)
        # judge()'s shortcut per command bit, compiled when the command is first judged (None:
        # not yet).
        self._fast: list[FastVerdict | None] = [None] * cat.size

    def _compile_fast(self, spec: CommandSpec) -> FastVerdict:
        """The verdict judge() starts from for `spec` (see FastKind and its classes).

        It stands for the first selector with the command's bit (where the walk would first look
        at keys). Only "allowed" is ever concluded from it: anything else takes the general walk,
        which produces the exact denial. So every verdict stands for a selector that the general
        walk would also stop at, with the same result.
        """
        cat = self._cat
        bit = spec.bit
        special = cat.special[bit]
        if bit in cat.channel_bits or special not in (_PLAIN, _SCRIPT):
            return ASK
        for sel in self._selectors:
            # The first selector that may pass the command check is where the walk first
            # extracts keys (which may raise KeyExtractionError): the shortcut starts there.
            if sel.bits[bit]:
                break
            if bit in sel.firstargs:
                return ASK   # passes or not on the first argument: the walk decides
        else:
            return ASK
        if special == _PLAIN and (sel.allkeys or not spec.has_keys):
            return ALLOW
        # (`keys` is a plain function: the shapes it may carry are read by name.)
        shape: commands.SingleKey | None = getattr(spec.keys, "single_key", None)
        if special == _PLAIN and shape is not None:
            needed = cat.needed(shape.flags)
            if needed >= 0:
                ps = sel.keysets[needed]
                return OneKey(pos=shape.pos, most=shape.most, prefixes=ps.prefixes,
                              exact=ps.exact, match=ps.match)
        # A script command goes to the policy at the first selector whose keys pass (if a key
        # fails here a later selector may pass: walk then); a plain one is allowed. EVALSHA
        # and EVALSHA_RO are `by_sha`: judge() tries the policy's compiled check for the SHA1
        # itself (ScriptPolicy.judge's own first step) before calling the policy.
        plain: commands.PlainKeys | None = getattr(spec.keys, "plain_keys", None)
        needed = cat.needed(plain.flags) if plain is not None else -1
        keyset = sel.keysets[needed] if needed >= 0 else None
        keys_of = plain.keys if plain is not None and keyset is not None else None
        prefixes = keyset.prefixes if keyset is not None else ()
        match = keyset.match if keyset is not None else None
        if special == _SCRIPT:
            return Script(selector=sel, plain=keys_of, prefixes=prefixes, match=match,
                          keyset=keyset, by_sha=spec.name in _EVALSHA_NAMES)
        return Keys(selector=sel, plain=keys_of, prefixes=prefixes, match=match, keyset=keyset)

    def __repr__(self) -> str:
        return f"<User {self.name} {self.describe()!r}>"

    # -- authentication

    def has_passwords(self) -> bool:
        return bool(self._hashes)

    def check_password(self, password: bytes) -> bool:
        """Does sha256(password) equal one of the user's hashes? Constant time in the password and
        in which hash matches (every hash is compared). `nopass` and `enabled` are the caller's
        business, as in Redis's ACLCheckUserCredentials."""
        digest = hashlib.sha256(password).hexdigest().encode("ascii")
        ok = False
        for h in self._hashes:
            ok |= hmac.compare_digest(digest, h)
        return ok

    # -- the judge

    def judge(self, spec: CommandSpec, args: list[bytes],
              db: int | Iterable[int] = 0) -> Denial | None:
        """None if the user may run `args` (resolved to `spec` by commands.TABLE.lookup), else the
        Denial. `db` is the user's database (or a collection of allowed databases) for the SELECT
        and COPY ... DB checks. May raise commands.KeyExtractionError from `spec.keys(args)`.

        The arity must have been checked: the judge reads the arguments Redis would read.
        """
        # The hot path: most commands are allowed by a verdict compiled per user (_compile_fast).
        fast = self._fast[spec.bit]
        if fast is None:
            fast = self._fast[spec.bit] = self._compile_fast(spec)
        if fast is ALLOW:
            return None
        # (`type(fast) is ...` rather than a local `cls`: mypy narrows on it, the verdict
        # classes being final; CPython specialises type(x) to a few nanoseconds.)
        if type(fast) is OneKey:
            if fast.pos < len(args) <= fast.most:
                key = args[fast.pos]
                if key.startswith(fast.prefixes) or key in fast.exact or fast.match(key):
                    return None
        elif type(fast) is Script or type(fast) is Keys:
            sel, plain = fast.selector, fast.plain
            check: ScriptCheck | Literal[True] | None = None
            script = type(fast) is Script
            if script and fast.by_sha:
                # The arity check guarantees args[1]; `by_sha` maps an allowed SHA1 as sent
                # to True (no contract) or its compiled contract (a policy without one is
                # only asked). With a contract, one call checks the call's shape and,
                # memoised per user and queue, that its KEYS pass the patterns.
                checks: ShaChecks = getattr(self.scripts, "by_sha", _NO_CHECKS)
                check = checks.get(args[1])
                if plain is not None and check is not None and check is not True \
                        and check.honoured(args, self, fast):
                    return None
            keys = plain(args) if plain is not None else None
            match = fast.match
            if keys is not None and match is not None:   # (match: set whenever plain is)
                # All the keys share one permission (EVALSHA's KEYS): C-level checks.
                ok = sel.allkeys or all(map(_startswith, keys, repeat(fast.prefixes))) \
                    or all(map(match, keys))
            else:
                ok = sel.allkeys or self._keys_match(sel, spec, args)
            if ok:
                if not script:
                    return None
                scripts = self.scripts
                if scripts is not None:
                    if check is True or (check is not None and check.honoured(args, self)):
                        return None
                    denial = scripts.judge(self, spec, args)
                    if denial is None:
                        return None
                    return replace(denial, command=denial.command or spec.name,
                                   user=denial.user or self.name)
        return self._walk(spec, args, db)

    def verdict(self, spec: CommandSpec) -> FastVerdict:
        """The verdict judge() starts from for `spec` (compiled once per user and command), for
        callers that inline it (session.Session's memo): ALLOW (judge() returns None whatever
        the arguments), a OneKey (allowed when its key passes; otherwise ask judge()), or
        anything else: ask judge()."""
        fast = self._fast[spec.bit]
        if fast is None:
            fast = self._fast[spec.bit] = self._compile_fast(spec)
        return fast

    def judges_by_sha(self, spec: CommandSpec) -> bool:
        """Whether judge() decides `spec` by the SHA1's compiled contract first: the calls
        lane_script() can describe."""
        fast = self.verdict(spec)
        return type(fast) is Script and fast.by_contract

    def lane_script(self, spec: CommandSpec, args: list[bytes]) -> LaneForm | None:
        """For redisgate._native._lane, after judge() allowed `args` (EVALSHA/EVALSHA_RO) on its
        compiled path: scripts._FastContract.lane_form's form of this script's calls for the
        queue of KEYS[1], which lets the C lane pass them as judge() would; None if judge()
        took another path."""
        fast = self.verdict(spec)
        if type(fast) is not Script or not fast.by_contract or len(args) < 4:
            return None
        checks: ShaChecks = getattr(self.scripts, "by_sha", _NO_CHECKS)
        check = checks.get(args[1])
        if check is None or check is True:
            return None
        return check.lane_form(args, self, fast)

    def _keys_match(self, sel: _Selector, spec: CommandSpec, args: list[bytes]) -> bool:
        """Do all the command's keys pass this selector's patterns?"""
        cat = self._cat
        sets = sel.keysets
        last = None
        for key, flags in spec.keys(args):
            if flags != last:   # a command's keys mostly share their flags
                last = flags
                needed = cat.needed(flags)
                if needed >= 0:
                    ps = sets[needed]
                    prefixes, match = ps.prefixes, ps.match
            if needed >= 0 and not key.startswith(prefixes) and not match(key):
                return False
        return True

    def _script_verdict(self, scripts: ScriptJudge, spec: CommandSpec,
                        args: list[bytes]) -> Denial | None:
        denial = scripts.judge(self, spec, args)
        if denial is None:
            return None
        return replace(denial, command=denial.command or spec.name, user=denial.user or self.name)

    def _walk(self, spec: CommandSpec, args: list[bytes],
              db: int | Iterable[int]) -> Denial | None:
        """judge() the general way: every selector in order, Redis's "relevant error"."""
        bit = spec.bit
        cat = self._cat
        special = cat.special[bit]
        if special == _CONFIG_GET and config_get_reveals_secret(args[2:]):
            # Refused for every user, whatever its rules, before they are looked at: with
            # allkeys and +@all, and in report-only or learn mode too (session.py).
            return Denial("secret", spec.name, "CONFIG GET would reveal the credentials "
                          "redisgate uses upstream (a *pass* parameter, masterauth or "
                          "masteruser)", spec.name, self.name)
        keys = None
        # Redis's "relevant error" (ACLCheckAllUserCommandPerm): the highest ACL_DENIED_* value
        # (command 1, key 2, channel 4), then the highest argument index.
        relevant: _Refusal | None = None
        stricter: Denial | None = None   # a Denial the proxy adds on top of Redis
        for sel in self._selectors:
            # 1. The command bit, or an allowed first argument.
            if not sel.bits[bit]:
                allowed_args = sel.firstargs.get(bit)
                if allowed_args is None or len(args) < 2 or word(args[1]) not in allowed_args:
                    if relevant is None:
                        relevant = _Refusal(1, 0, "command", spec.name)
                    continue
            # 2. Keys.
            if not sel.allkeys and spec.has_keys:
                if keys is None:
                    keys = self._keys(spec, args)
                failed: _Refusal | None = None
                for i, (key, needed) in enumerate(keys):
                    if not sel.keysets[needed].match(key):
                        failed = _Refusal(2, i, "key", key)
                        break
                if failed is not None:
                    if relevant is None or failed[:2] > relevant[:2]:
                        relevant = failed
                    continue
            # 3. Channels.
            if not sel.allchannels and bit in cat.channel_bits:
                failed = None
                for i, (channel, is_pattern) in enumerate(spec.channels(args)):
                    ok = (channel in sel.literal_channels) if is_pattern \
                        else sel.channels.match(channel)
                    if not ok:
                        failed = _Refusal(4, i, "channel", channel)
                        break
                if failed is not None:
                    if relevant is None or failed[:2] > relevant[:2]:
                        relevant = failed
                    continue
            # Redis would run it. 4. The proxy's stricter rules.
            if special == _PLAIN:
                return None
            if special == _SCRIPT:
                if self.scripts is not None:
                    return self._script_verdict(self.scripts, spec, args)
                if sel.everything:
                    return None
                stricter = stricter or Denial(
                    "script", spec.name, "scripts are refused for users with restricted keys or "
                    "commands unless allowlisted", spec.name, self.name)
                continue
            if sel.allkeys or not _reaches_beyond(special, args, db):
                return None
            stricter = stricter or Denial(
                "keyspace", spec.name, f"{spec.name.replace('|', ' ').upper()} reaches beyond the "
                "user's key patterns; it needs allkeys", spec.name, self.name)
        if stricter is not None:
            return stricter
        # Every selector either returned, or set `relevant` or `stricter` (there is always one).
        assert relevant is not None
        kind, obj = relevant.kind, relevant.object
        if kind == "command":
            reason = f"the '{spec.name}' command is not allowed"
        elif kind == "key":
            reason = "the key matches none of the user's key patterns"
        else:
            reason = "the channel matches none of the user's channel patterns"
        return Denial(kind, obj, reason, spec.name, self.name)

    def _keys(self, spec: CommandSpec, args: list[bytes]) -> list[tuple[bytes, int]]:
        """The keys the walk checks, each with the permission it needs (NOT_KEY ones left out)."""
        needed_of = self._cat.needed
        out: list[tuple[bytes, int]] = []
        for key, flags in spec.keys(args):
            needed = needed_of(flags)
            if needed >= 0:
                out.append((key, needed))
        return out

    def read_prefix(self, spec: CommandSpec) -> bytes | None:
        """The one key prefix this user may read with `spec`, when its rules come down to exactly
        that: a single selector allowing the command whose readable keys are one plain `prefix*`
        pattern. What `confine.py` needs to confine SCAN/KEYS; None otherwise."""
        if len(self._selectors) != 1:
            return None
        sel = self._selectors[0]
        keys = sel.keysets[READ]   # patterns with READ
        if not sel.bits[spec.bit] or sel.allkeys or keys.exact or keys.globs or keys.nonempty \
                or len(keys.prefixes) != 1:
            return None
        return keys.prefixes[0]

    def check_key(self, key: bytes, write: bool = False) -> bool:
        """May some selector name `key` for reading (`write=False`: a read pattern) or for
        writing (a write pattern)? allkeys selectors may name any key."""
        needed = WRITE if write else READ
        for s in self._selectors:
            if s.allkeys or s.keysets[needed].match(key):
                return True
        return False

    def check_channel(self, channel: bytes, pattern: bool = False) -> bool:
        """May some selector use `channel` (PUBLISH/SUBSCRIBE), or the PSUBSCRIBE `pattern`?"""
        for s in self._selectors:
            if s.allchannels:
                return True
            if (channel in s.literal_channels) if pattern else s.channels.match(channel):
                return True
        return False

    # -- rendering

    def describe(self) -> str:
        """ACL LIST's text for the user (without the leading `user <name> `)."""
        st = self._state
        parts = []
        if st.enabled:
            parts.append("on")
        else:
            parts.append("off")
        if st.nopass:
            parts.append("nopass")
        if st.skip_sanitize:
            parts.append("skip-sanitize-payload")
        if st.sanitize:
            parts.append("sanitize-payload")
        parts += ["#" + h for h in st.passwords]
        text = " ".join(parts + [_describe_selector(st.selectors[0], self._cat)])
        for sel in st.selectors[1:]:
            text += f" ({_describe_selector(sel, self._cat)})"
        return text

    def to_acl_rules(self) -> str:
        """ACL SETUSER tokens recreating this user (after `reset`, so that applying them to an
        existing Redis user drops whatever it had)."""
        return "reset " + self.describe()


class _Refusal(NamedTuple):
    """A selector's refusal in `User._walk`, ordered as Redis's "relevant error"
    (ACLCheckAllUserCommandPerm): by `rank` (ACL_DENIED_CMD 1, _KEY 2, _CHANNEL 4), then by
    `position` (of the key or channel among the command's); `kind` and `object` make the Denial."""
    rank: int
    position: int
    kind: str
    object: str | bytes


def _reaches_beyond(special: int, args: list[bytes], db: int | Iterable[int]) -> bool:
    """Does this keyspace-wide command reach beyond the user's own keys / database?"""
    if special in (_KEYSPACE, _CONFIG_GET):
        return True
    allowed = {db} if isinstance(db, int) else db
    if special == _SELECT:
        return len(args) < 2 or not _is_db(args[1], allowed)
    if special == _COPY:
        dbs = copy_db_operands(args)
        if not dbs:   # no DB option, or a syntax error (Redis refuses it before copying)
            return False
        # Only the last DB is written into, but every one is parsed first: anything but a plain
        # allowed integer is refused here even where Redis would then refuse it too.
        return not _is_db(dbs[-1], allowed) or any(_INT_RE.fullmatch(d) is None for d in dbs)
    return False


_COPY_OPTIONS = {b"replace": 0, b"db": 1}


def copy_db_operands(args: list[bytes]) -> tuple[bytes, ...] | None:
    """The DB operands of `COPY source destination [DB n] [REPLACE]`, in order, as copyCommand
    (Redis 7.0 db.c) reads its options: words compared with strcasecmp (options.word), a DB takes
    the next argument whatever it is, the last DB is the one written into. () without DB (COPY
    stays in the connection's database); None for a syntax error, which Redis refuses before
    copying anything."""
    parsed = parse_options(args, 3, _COPY_OPTIONS)
    if parsed.error is not None:
        return None
    return tuple(o.values[0] for o in parsed.all(b"db"))


def _is_db(arg: bytes, allowed: Iterable[int]) -> bool:
    n = string2ll(arg)   # (allowed: small database numbers)
    return n is not None and n in allowed


# ----------------------------------------------------------------------------------------------
# Rendering (ACLDescribeSelector / ACLDescribeSelectorCommandRules)
# ----------------------------------------------------------------------------------------------

def _describe_selector(sel: _SelectorState, cat: _Catalog) -> str:
    parts = []
    if sel.allkeys:
        parts.append("~*")
    else:
        for kp in sel.patterns:
            prefix = {ALL: "~", READ: "%R~", WRITE: "%W~"}[kp.flags]
            parts.append(prefix + _as_text(kp.pattern))
    if sel.allchannels:
        parts.append("&*")
    else:
        parts.append("resetchannels")
        parts += ["&" + _as_text(c) for c in sel.channels]
    parts.append(_describe_commands(sel, cat))
    return " ".join(parts)


def _describe_commands(sel: _SelectorState, cat: _Catalog) -> str:
    """Redis's greedy fit: start from +@all or -@all, add the categories that fit best, then
    the single commands (and first arguments) that still differ."""
    fake = _SelectorState(root=False)
    if sel.future:
        additive = False
        rules = ["+@all"]
        fake.all_commands(cat, True)
    else:
        additive = True
        rules = ["-@all"]
    temp = _SelectorState(root=False)
    temp.allowed = set(sel.allowed)
    applied: set[str] = set()
    while True:
        best, mindiff, maxsame = None, None, 0
        for name in CATEGORY_ORDER:
            if name in applied or name not in cat.by_category:
                continue
            specs = cat.by_category[name]
            on = sum(1 for s in specs if s.bit in temp.allowed)
            off = len(specs) - on
            diff, same = (off, on) if additive else (on, off)
            if same > diff and (mindiff is None or diff < mindiff
                                or (diff == mindiff and same > maxsame)):
                best, mindiff, maxsame = name, diff, same
        if best is None:
            break
        fake.set_category(cat, best, additive)
        temp.set_category(cat, best, not additive)
        rules.append(("+@" if additive else "-@") + best)
        applied.add(best)

    def single(spec: CommandSpec) -> None:
        userbit = spec.bit in sel.allowed
        if userbit != (spec.bit in fake.allowed):
            rules.append(("+" if userbit else "-") + spec.name)
            fake.change_perm(spec, userbit)
        for sub in sorted(spec.subcommands.values(), key=lambda s: s.name):
            single(sub)
        if not userbit:
            for arg in sel.firstargs.get(spec.bit, ()):
                rules.append(f"+{spec.name}|{_as_text(arg)}")

    for spec in cat.top:
        single(spec)
    return " ".join(rules)
