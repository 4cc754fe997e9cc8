"""The YAML configuration: loading, secret references, and validation with precise messages.

Every problem is reported as ``<where>: <why>``, where ``<where>`` is the dotted path of the key
(``users.worker.rules``), so ``redisgate check`` can print all of them at once. Secrets come from
``${NAME}`` (environment) or ``${file:/path}`` references and are never part of a message.

The whole file is declared once, in `SCHEMA` below: every key with its type. `check_schema`
walks a parsed document against it, reports every wrong type, unknown key and out-of-range
value, and returns the document normalised (durations in seconds, sizes in bytes, ``None`` for
absent). The builders after it (`_listeners`, `_upstream`, `_users`, ...) only add what a type
cannot say (rule syntax, profiles, scripts, secret references).

Why a small declaration of our own and not pydantic (installed, 2.13): the file has several
either-or forms (`listen` as an address or a list of addresses or mappings, a user as a rule
string, a list or a mapping, `upstream` as an address or a mapping, `multiplex` as a bool or a
number). For one wrong listener address pydantic reported four errors, located as
``listen.list[union[str,L]].0.str`` and the like; turning those back into one ``listen[0].address:
...`` line took more code than these types, and its messages echo the input (secrets) by default.
Here each type says what it expects in words, dispatches unions by the YAML value's kind, and
lists the wrong values it must refuse (`Type.wrong`), from which tests/test_config_schema.py
generates a test per key.

The file itself is read by `read_regular_file` (regular files only, bounded, never blocking) and
parsed by `StrictLoader`: YAML 1.1 safe types, no aliases or anchors, no duplicate keys, nesting
at most `MAX_DEPTH` deep. A YAML error names the line and column, never the line's text.

Contract of the file (keys are a public contract; extend, never rename)::

    listen: 127.0.0.1:6380            # or a list of addresses or {address, tls: {...}}
    upstream: {address, username, password, db, tls, version, connect_timeout,
              handshake_timeout, keepalive, multiplex}
    upstream: {cluster: {seeds: [host:port, ...], refresh}, username, password, tls, ...}
      # or, instead of address, a Sentinel-managed master (redisgate.io.sentinel):
      #   sentinel: {master, addresses: [host:port, ...], username, password, tls}
    users:
      name: "<ACL rules>"             # or a mapping:
      name: {rules, profile, queues, scripts, report_only, learn, certificate,
             require_password, databases, confine_scan,
             allow_flush, allow_kill, allow_debug, allow_function, allow_any_script}
      # scripts: [<sha1>, <script name>, <named set>, {sha1: <own script>, like: <script name>}]
      # certificate: {cn|san_dns|san_uri: <value>, ca: <file>}
    acl_file: users.acl               # more users, in Redis's aclfile format
    metrics: {address: 127.0.0.1:9121}  # the same listener as admin.listen
    admin: {listen: 127.0.0.1:9121}     # HTTP: /metrics, /healthz, /readyz (redisgate.io.admin)
    shutdown: {grace: 10s}              # SIGTERM: time for in-flight replies; durations 10s/500ms/5m/10
    audit: {path: "-", rate: 100, format: json}   # the audit trail (redisgate.audit); none: plain text
    limits: {max_clients, handshake_timeout, acl_log_max_len, max_bulk, max_args,
             auth_timeout, memory_budget, max_clients_per_user, idle_timeout}
    auth_throttle: {max_failures, window, lockout}
    pid_file: /run/redisgate.pid
    log: {level: info}
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import stat
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import yaml

from .policy import contracts, rules, scripts as scriptmod
from .protocol.commands import TABLE

_REF = re.compile(r"\$\{([^}]*)\}")
# upstream.multiplex: at most this many shared links (twemproxy keeps one).
MAX_SHARED_LINKS = 64
# Script permissions beyond the allowlist (the names the script denials mention).
_SCRIPT_FLAGS = ("allow_flush", "allow_kill", "allow_debug", "allow_function", "allow_any_script")

MAX_CONFIG_BYTES = 1024 * 1024          # the config file and acl_file
MAX_SECRET_BYTES = 64 * 1024            # one ${file:...} secret
MAX_DEPTH = 64                          # YAML nesting
MAX_DURATION = 86400.0                  # seconds: any duration setting, at most a day
MAX_KEEPALIVE = 32767                   # seconds: upstream.keepalive (Linux's TCP_KEEPIDLE)


class ConfigError(Exception):
    """Raised with every problem found: ``.problems`` is a list of ``where: why`` lines."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Listener:
    host: str
    port: int
    tls: dict | None = None
    where: str = "listen"


@dataclass
class SentinelConfig:
    """`upstream.sentinel`: the master is the one these sentinels name (redisgate.io.sentinel).
    username/password/tls are the sentinels' own; the data nodes use upstream's."""
    master: str
    addresses: list[tuple[str, int]]
    username: str | None = None
    password: bytes | None = None          # resolved secret; never printed
    tls: dict | None = None                # as upstream.tls, for the sentinel connections


@dataclass
class Upstream:
    host: str = "127.0.0.1"
    port: int = 6379
    username: str | None = None
    password: bytes | None = None          # resolved secret; never printed
    # The password's ${...} reference read again (None: a literal or no password): what the
    # proxy tries when Redis refuses `password` (handshake.Passwords). Not compared, not shown.
    password_reread: "Callable[[], bytes | None] | None" = field(default=None, compare=False,
                                                                 repr=False)
    db: int = 0
    tls: dict | None = None                # None: plain TCP; {} (or `tls: true`): TLS, system CAs
    version: tuple[int, int, int] | None = None   # overrides the probe
    connect_timeout: float = 5.0
    # The proxy's own AUTH / SELECT / HELLO on a new upstream connection must be answered this
    # soon (else the upstream is mute: the connection is given up); 0 in keepalive: no keepalive.
    handshake_timeout: float = 5.0
    keepalive: float = 60.0                 # TCP keepalive's idle time on upstream sockets
    # Shared upstream links for stateless commands (server.SharedLink); 0: one link per client.
    multiplex: int = 0
    embedded: bool = False                  # no upstream configured: start a local redis-server
    # upstream.cluster: a Redis Cluster found from its seeds (host, port then name the first)
    cluster: "ClusterSettings | None" = None
    sentinel: SentinelConfig | None = None  # instead of host/port: follow this Sentinel master

    @property
    def address(self) -> str:
        if self.sentinel is not None:
            return f"sentinel master {self.sentinel.master}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClusterSettings:
    """`upstream.cluster`: the nodes asked for the slot map first, and how often it is re-read
    (it is also re-read after every MOVED and every node that cannot be reached)."""
    seeds: tuple[tuple[str, int], ...]
    refresh: float = 30.0


@dataclass
class UserEntry:
    """One configured user: the compiled rules plus the options around them."""
    name: str
    user: Any                               # rules.User
    certificate: dict | None = None         # {cn|san_dns|san_uri: value[, ca: absolute path]}
    certificate_ca: tuple | None = None     # the certificates in certificate.ca (x509.Certificate)
    require_password: bool = False
    databases: frozenset[int] | None = None  # None: only upstream.db (or any, with allkeys)
    learn: bool = False
    confine_scan: bool = False              # SCAN/KEYS allowed, confined to the one key prefix


@dataclass(frozen=True)
class AuthThrottle:
    """`auth_throttle`: past `max_failures` failed logins within `window` seconds from one address
    or for one user name, that address or name is refused unchecked for `lockout` seconds."""
    max_failures: int = 10
    window: float = 60.0
    lockout: float = 300.0


@dataclass(frozen=True)
class AuditSettings:
    """`audit:`: where the audit trail goes ("-": stdout, else a file, relative to the config's
    directory), at most `rate` lines a second (0: no limit), as JSON lines or plain text."""
    path: str = "-"
    rate: int = 100
    format: str = "json"


@dataclass
class Config:
    path: Path | None
    listeners: list[Listener]
    upstream: Upstream
    users: dict[str, UserEntry]
    metrics_address: tuple[str, int] | None = None
    max_clients: int = 10000
    max_clients_per_user: int = 0     # logged-in connections per user; 0: no limit
    idle_timeout: float = 0.0         # an idle logged-in connection is closed; 0: never
    handshake_timeout: float = 10.0
    auth_timeout: float = 10.0        # a connection not logged in this long after accept is closed
    auth_throttle: AuthThrottle = field(default_factory=AuthThrottle)
    acl_log_max_len: int = 128
    max_bulk: int = 512 * 1024 * 1024
    max_args: int = 1024 * 1024
    auth_timeout: float = 10.0              # seconds a connection may stay unauthenticated
    memory_budget: int = 256 * 1024 * 1024  # bytes of buffered client data, all connections
    auth_throttle: AuthThrottle = field(default_factory=AuthThrottle)
    pid_file: str | None = None
    log_level: str = "info"
    admin_listen: tuple[str, int] | None = None   # admin.listen, or the older metrics.address
    shutdown_grace: float = 10.0                  # shutdown.grace, seconds
    audit: AuditSettings | None = None            # None: no `audit:` section (plain-text lines)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- reading files

class FileProblem(Exception):
    """A file that cannot be used; str() is the reason (never the file's content)."""


def read_regular_file(path: str | os.PathLike, limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file of at most `limit` bytes, and its stat.

    Never blocks: opened with O_NONBLOCK, so a FIFO or a device is refused by `fstat` before any
    read, and `/dev/zero`-like files cannot be read at all. Raises `FileProblem`.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise FileProblem(e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem("not a regular file")
        if st.st_size > limit:
            raise FileProblem(f"larger than {limit} bytes")
        chunks, size = [], 0
        while True:
            try:
                chunk = os.read(fd, limit + 1 - size)
            except OSError as e:
                raise FileProblem(e.strerror or str(e)) from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FileProblem(f"larger than {limit} bytes")
        return b"".join(chunks), st
    finally:
        os.close(fd)


def strip_newlines(data: bytes) -> bytes:
    """A secret read from a file or stdin loses ALL trailing CR and LF bytes, nothing else
    (``${file:...}`` and ``hash-password`` agree, so one secret file hashes one way)."""
    return data.rstrip(b"\r\n")


def write_private(path: str | os.PathLike, data: bytes, mode: int = 0o600, *,
                  replace: bool = True) -> None:
    """Write `data` to `path` with `mode` (default 0600), all at once: the one writer of the
    files the tools make (config, secrets, pid file, certificates and keys).

    Written to a private temporary file next to it (O_CREAT|O_EXCL|O_NOFOLLOW, mode set before
    any byte is written), then renamed over `path`: a symlink planted at `path` is replaced, not
    followed, and an existing file's looser mode does not survive. With `replace=False` an
    existing `path` (or symlink) is left as it is and FileExistsError raised: link() refuses it
    atomically, with no window between a check and the write.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------- YAML

class StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases or anchors (no alias bombs), with duplicate keys refused and
    nesting bounded by MAX_DEPTH."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in a redisgate config",
                event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "YAML anchors (&name) are not allowed in a redisgate config",
                event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        # PyYAML's scalar constructors raise plain ValueError/OverflowError for a month 13, a
        # 5,000-digit integer or `!!float zz`: make them YAML errors with a place.
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, TypeError):
            tag = str(node.tag).rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value as a YAML {tag}", node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                except TypeError:
                    continue
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_shown(key)}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Quoted text in a PyYAML message: token names ('<scalar>') and punctuation stay, anything
# else (characters of the line, which may be part of a password) is replaced.
_QUOTED = re.compile(r"""'([^']*)'|"[^"]*"|`[^`]*`""")


def _unquote_line_text(text: str) -> str:
    def keep(m: re.Match) -> str:
        inner = m.group(1)
        if inner is not None and (re.fullmatch(r"<[a-z ]+>", inner)
                                  or re.fullmatch(r"[^\w\s\\]", inner)):
            return m.group(0)
        return "'…'"
    return _QUOTED.sub(keep, text)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error as 'line L, column C: what', without the snippet of the line (which is where
    a password would be) and without quoted characters from it."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or "syntax error"
    if not str(what).startswith(("duplicate key", "YAML a", "nested more", "cannot read")):
        what = _unquote_line_text(str(what))
    context = getattr(e, "context", None)
    if context and not str(what).startswith(("duplicate key", "YAML a", "nested more")):
        what = f"{_unquote_line_text(str(context))}: {what}"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{what}"


def parse_yaml(data: bytes, where: str) -> Any:
    """Bytes of a config file to a document, or ConfigError with `where: why`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{where}: not UTF-8 text (invalid byte at offset {e.start})"]) from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError([f"{where}: not valid YAML: {_yaml_problem(e)}"]) from None
    except RecursionError:
        raise ConfigError([f"{where}: not valid YAML: nested too deeply"]) from None


# ---------------------------------------------------------------------------- the schema

_BAD = object()     # a value a type refused (the problem is recorded; the key is dropped)


def _shown(value: Any) -> str:
    """A value for an error message: short scalars as written, anything else by its kind."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return "a number of more than 40 digits"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:40]
    if isinstance(value, str):
        if len(value) <= 40 and value.isprintable():
            return repr(value)
        return f"a string of {len(value)} characters"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} value"


def _key_text(key: Any) -> str:
    """A mapping key for the `where` of a message: as written if it is a short printable
    string, else quoted or described (a key must not forge or stretch a message line)."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64 and " " not in key:
        return key
    if isinstance(key, str):
        return repr(key if len(key) <= 40 else key[:40] + "…")
    return _shown(key)


class Type:
    """One declared type: `check` returns the normalised value or records a problem and
    returns _BAD. `kinds`: the Python types of a parsed YAML value it can take (for Either).
    `secret`: never show the value in a message. `wrong`: sample values it must refuse (the
    generated test feeds them to every key)."""
    what = "a value"
    kinds: tuple[type, ...] = (object,)
    secret = False
    wrong: tuple = ()

    def check(self, value: Any, where: str, problems: list[str]) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, where: str, problems: list[str], what: str | None = None) -> Any:
        got = "" if self.secret else f", got {_shown(value)}"
        problems.append(f"{where}: expected {what or self.what}{got}")
        return _BAD


class Bool(Type):
    what = "true or false"
    kinds = (bool,)

    def __init__(self):
        self.wrong = ("false", "yes", "off", 0, 1, [])

    def check(self, value, where, problems):
        return value if isinstance(value, bool) else self.fail(value, where, problems)


class Int(Type):
    kinds = (int,)

    def __init__(self, what: str = "a positive whole number", lo: int = 1, hi: int = 2**31 - 1):
        self.what, self.lo, self.hi = what, lo, hi
        self.wrong = ("1", True, 1.5, float("inf"), [], hi + 1, lo - 1, 10**400)

    def check(self, value, where, problems):
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            return self.fail(value, where, problems)
        return value


_DURATION = re.compile(r"\s*(\d{1,15}(?:\.\d{1,9})?)\s*(ms|s|m|h)?\s*", re.I)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Duration(Type):
    """Seconds: a number, or a string with a unit: 500ms, 10s, 5m, 1h. Finite, > 0, <= a day."""
    what = "a duration > 0 and at most 1 day (seconds, or e.g. 500ms, 10s, 5m)"
    kinds = (int, float, str)

    def __init__(self, *, zero: bool = False):
        self.zero = zero                    # 0 allowed (shutdown.grace: close at once)
        if zero:
            self.what = "a duration >= 0 and at most 1 day (seconds, or e.g. 500ms, 10s, 5m)"
        self.wrong = (".inf", float("inf"), float("nan"), -1, True, "10 parsecs", [], 1e300,
                      10**400, "9" * 5000 + "s", "1.5.5s", "-1s") + (() if zero else (0,))

    def check(self, value, where, problems):
        seconds = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value) if abs(value) < 1e18 else math.inf
        elif isinstance(value, str):
            m = _DURATION.fullmatch(value)
            if m:
                seconds = float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]
        if (seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION
                or (seconds == 0 and not self.zero)):
            return self.fail(value, where, problems)
        return seconds


_SIZE = re.compile(r"\s*(\d{1,18})\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*", re.I)
_SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


class Size(Type):
    """Bytes: a whole number, or a string with a unit: 64k, 256MiB, 1gb."""
    kinds = (int, str)

    def __init__(self, hi: int = 2**40, lo: int = 1):
        self.lo, self.hi = lo, hi
        self.what = f"a size in bytes >= {lo} and at most {hi} (e.g. 65536, 64KiB, 256MiB)"
        self.wrong = ("lots", 0, -1, 1.5, True, float("inf"), [], hi + 1, "9" * 5000) + \
            ((lo - 1,) if lo > 1 else ())

    def check(self, value, where, problems):
        size = None
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str):
            m = _SIZE.fullmatch(value)
            if m:
                size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
        if size is None or not self.lo <= size <= self.hi:
            return self.fail(value, where, problems)
        return size


class Str(Type):
    kinds = (str,)

    def __init__(self, what: str = "a string", *, secret: bool = False, pattern: str | None = None):
        self.what, self.secret = what, secret
        self.pattern = re.compile(pattern) if pattern else None
        self.wrong = (1, True, [], {"a": 1}, "", "a\0b")

    def check(self, value, where, problems):
        if (not isinstance(value, str) or not value.strip() or "\0" in value
                or (self.pattern is not None and not self.pattern.fullmatch(value))):
            return self.fail(value, where, problems)
        return value


class Choice(Type):
    """One of some words (case-insensitive); the lowercased word."""
    kinds = (str,)

    def __init__(self, *words: str):
        self.words = words
        self.what = ", ".join(words[:-1]) + " or " + words[-1]
        self.wrong = ("nonsense", 1, True, [])

    def check(self, value, where, problems):
        if not isinstance(value, str) or value.lower() not in self.words:
            return self.fail(value, where, problems)
        return value.lower()


class Address(Type):
    """``host:port``, ``[::1]:port``, ``:port`` or a bare port number: (host, port)."""
    what = "'host:port'"
    kinds = (str, int)

    def __init__(self):
        self.wrong = ("nowhere", "x:99999", "x:0", True, [], 70000)

    def check(self, value, where, problems):
        if isinstance(value, bool):
            return self.fail(value, where, problems)
        return parse_address(value, where, problems) or _BAD


class TLSVersion(Type):
    what = '"1.2" or "1.3" (TLS 1.0 and 1.1 are not supported)'
    kinds = (str, float)

    def __init__(self):
        self.wrong = ("1.1", 1.0, True, [], "TLSv9")

    def check(self, value, where, problems):
        text = str(value).strip().lower().removeprefix("tlsv")
        if isinstance(value, bool) or not isinstance(value, (str, float)) or text not in ("1.2", "1.3"):
            return self.fail(value, where, problems)
        return text


class Version(Type):
    what = "a Redis version such as '7.0' or '5.0.6'"
    kinds = (str, float, int)

    def __init__(self):
        self.wrong = ("seven", True, [], "7.x")

    def check(self, value, where, problems):
        m = None
        if not isinstance(value, bool) and isinstance(value, (str, float, int)):
            m = re.fullmatch(r"(\d{1,3})\.(\d{1,3})(?:\.(\d{1,4}))?", str(value).strip())
        if not m:
            return self.fail(value, where, problems)
        return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


class ListOf(Type):
    kinds = (list,)

    def __init__(self, item: Type, what: str | None = None, *, min_len: int = 0,
                 max_len: int = 100_000):
        self.item, self.min_len, self.max_len = item, min_len, max_len
        self.what = what or f"a list of {item.what}"
        self.secret = item.secret
        self.wrong = ("x", 1, {"a": 1}, True)

    def check(self, value, where, problems):
        if not isinstance(value, list) or not self.min_len <= len(value) <= self.max_len:
            return self.fail(value, where, problems)
        out = []
        for i, item in enumerate(value):
            got = self.item.check(item, f"{where}[{i}]", problems)
            if got is not _BAD:
                out.append(got)
        return out


class Either(Type):
    """The first alternative whose kind matches the value's Python type."""

    def __init__(self, *alternatives: Type, what: str | None = None):
        self.alternatives = alternatives
        self.what = what or " or ".join(a.what for a in alternatives)
        self.kinds = tuple(k for a in alternatives for k in a.kinds)
        self.secret = any(a.secret for a in alternatives)
        self.wrong = tuple(w for w in ({"zz": 1}, 1.5, True, [], "x")
                           if not isinstance(w, self.kinds) or isinstance(w, bool) and bool not in self.kinds)

    def check(self, value, where, problems):
        for alt in self.alternatives:
            if isinstance(value, alt.kinds) and not (isinstance(value, bool) and bool not in alt.kinds):
                return alt.check(value, where, problems)
        return self.fail(value, where, problems)


class Struct(Type):
    """A mapping with declared keys; unknown keys are errors; a null value means absent."""
    kinds = (dict,)

    def __init__(self, fields: dict[str, Type], what: str = "a mapping", *,
                 required: tuple[str, ...] = (), closed: bool = False):
        # closed: an unknown key is reported as the whole mapping's wrong shape
        # ("admin: expected {listen: host:port} ..."), for one- or two-key sections.
        self.fields, self.what, self.required, self.closed = fields, what, required, closed
        self.wrong = ("x", 1, [], True)

    def check(self, value, where, problems):
        if not isinstance(value, dict):
            return self.fail(value, where, problems)
        out = {}
        prefix = f"{where}." if where else ""
        for key in value:       # unknown keys first: often a typo that explains the rest
            if (not isinstance(key, str) or key not in self.fields) and self.closed:
                problems.append(f"{where}: expected {self.what} (unknown key {_key_text(key)})")
            elif not isinstance(key, str) or key not in self.fields:
                problems.append(f"{prefix}{_key_text(key)}: unknown setting "
                                f"(known: {', '.join(self.fields)})")
        for key, item in value.items():
            if not isinstance(key, str) or key not in self.fields or item is None:
                continue
            got = self.fields[key].check(item, f"{prefix}{key}", problems)
            if got is not _BAD:
                out[key] = got
        for key in self.required:
            if value.get(key) is None:
                problems.append(f"{prefix}{key}: required")
        return out


class MapOf(Type):
    """A mapping of names the user chooses (user names) to one type."""
    kinds = (dict,)

    def __init__(self, item: Type, what: str, name: Type):
        self.item, self.what, self.name = item, what, name
        self.wrong = ("x", 1, [], True)

    def check(self, value, where, problems):
        if not isinstance(value, dict):
            return self.fail(value, where, problems)
        out = {}
        for key, item in value.items():
            if isinstance(key, int) and not isinstance(key, bool):
                key = str(key)
            if self.name.check(key, f"{where}.{_key_text(key)}", problems) is _BAD:
                continue
            got = self.item.check(item, f"{where}.{key}", problems)
            if got is not _BAD:
                out[key] = got
        return out


class Certificate(Type):
    """`certificate: {cn|san_dns|san_uri: value, ca: <file>}`."""
    what = "exactly one of {cn: ...}, {san_dns: ...}, {san_uri: ...} (optionally with ca: <file>)"
    kinds = (dict,)
    KINDS = ("cn", "san_dns", "san_uri")

    def __init__(self):
        self.value = Str("a non-empty string")
        self.ca = Str("the path of a PEM file of CA certificates")
        self.wrong = ({"email": "x"}, {"cn": "a", "san_dns": "b"}, {"cn": 1}, {"cn": "a", "ca": 1},
                      "alice", [], True)

    def check(self, value, where, problems):
        if (not isinstance(value, dict) or any(k not in (*self.KINDS, "ca") for k in value)
                or sum(k in value for k in self.KINDS) != 1):
            problems.append(f"{where}: expected {self.what}")
            return _BAD
        out = {}
        for key, item in value.items():
            typ = self.ca if key == "ca" else self.value
            got = typ.check(item, f"{where}.{key}", problems)
            if got is _BAD:
                return _BAD
            out[key] = got
        return out


class Scripts(Type):
    """`scripts:` items; their meaning is checked by scripts.resolve_scripts."""
    what = "a list of SHA1 hex values, named sets or {sha1: ..., like: <script name>} mappings"
    kinds = (list,)

    def __init__(self):
        self.wrong = ("x", 1, {"a": 1}, True)

    def check(self, value, where, problems):
        return value if isinstance(value, list) else self.fail(value, where, problems)


class Rules(Type):
    """ACL rules: a string or a list of tokens. Never shown: a literal password may be in them."""
    what = "ACL rules: a string or a list of rule words"
    kinds = (str, list)
    secret = True

    def __init__(self):
        self.wrong = (1, True, {"a": 1}, [1], ["on", []])

    def check(self, value, where, problems):
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(t, str) for t in value):
            return value
        return self.fail(value, where, problems)


_PATH = Str("a file path")
_POSITIVE_INT = Int()

LISTENER_TLS = Struct({
    "cert": _PATH, "key": _PATH, "client_ca": _PATH,
    "client_cert": Choice("none", "optional", "required"),
    "min_version": TLSVersion(), "ciphers": Str("an OpenSSL cipher list string"),
    "handshake_timeout": Duration(),
}, "a mapping with at least cert and key", required=("cert", "key"))

UPSTREAM_TLS = Struct({
    "ca": _PATH, "server_name": Str("the host name in the Redis certificate"),
    "cert": _PATH, "key": _PATH, "insecure_skip_verify": Bool(), "min_version": TLSVersion(),
}, "a mapping (ca, server_name, cert, key, insecure_skip_verify, min_version)")

LISTENER = Struct({"address": Address(), "tls": LISTENER_TLS},
                  "a mapping {address, tls}", required=("address",))

UPSTREAM_CLUSTER = Struct({
    "seeds": ListOf(Address(), "a list of 'host:port' node addresses", min_len=1, max_len=1000),
    "refresh": Duration(),
}, "a mapping {seeds: [host:port, ...], refresh: <duration>}", required=("seeds",))
_UPSTREAM_TLS_WHAT = "true, false or a mapping (ca, server_name, cert, key, insecure_skip_verify, " \
                     "min_version)"

SENTINEL = Struct({
    "master": Str("the master's name as the sentinels know it",
                  pattern=r"[^\s\x00-\x1f\x7f]{1,256}"),
    "addresses": ListOf(Address(), "a list of sentinel addresses ('host:port')", min_len=1,
                        max_len=64),
    "username": Str("a sentinel user name"),
    "password": Str("a password reference such as ${ENV_NAME} or ${file:/path}", secret=True),
    "tls": Either(Bool(), UPSTREAM_TLS, what=_UPSTREAM_TLS_WHAT),
}, "a mapping {master, addresses, username, password, tls}", required=("master", "addresses"))

UPSTREAM = Struct({
    "address": Address(),
    "sentinel": SENTINEL,
    "username": Str("a Redis user name"),
    "password": Str("a password reference such as ${ENV_NAME} or ${file:/path}", secret=True),
    "db": Int("a database number >= 0", lo=0, hi=2**31 - 1),
    "tls": Either(Bool(), UPSTREAM_TLS, what="true, false or a mapping (ca, server_name, cert, "
                                             "key, insecure_skip_verify, min_version)"),
    "version": Version(),
    "connect_timeout": Duration(),
    "handshake_timeout": Duration(),
    "keepalive": Duration(zero=True),   # 0: off; at most MAX_KEEPALIVE (checked in _upstream)
    "multiplex": Either(Bool(), Int("the number of shared links", lo=0, hi=MAX_SHARED_LINKS),
                        what=f"the number of shared links, 0 (off) to {MAX_SHARED_LINKS}, "
                             "or true/false"),
    "cluster": UPSTREAM_CLUSTER,
}, "a mapping with 'address', 'sentinel' or 'cluster'")

USER = Struct({
    "rules": Rules(),
    "profile": Either(Str("a profile name"), ListOf(Str("a profile name")),
                      what="a profile name or a list of them"),
    "profiles": Either(Str("a profile name"), ListOf(Str("a profile name")),
                       what="a profile name or a list of them"),
    "queues": ListOf(Str("a queue name"), "a list of queue names"),
    "scripts": Scripts(),
    "report_only": Bool(), "learn": Bool(), "require_password": Bool(), "confine_scan": Bool(),
    "certificate": Certificate(),
    "databases": ListOf(Int("a database number >= 0", lo=0), "a list of database numbers"),
    **{flag: Bool() for flag in _SCRIPT_FLAGS},
}, "a rule string or a mapping with 'rules'")

LIMITS = Struct({
    "max_clients": Int(hi=10_000_000),
    "handshake_timeout": Duration(),
    "acl_log_max_len": Int(hi=1_000_000),
    "max_bulk": Size(hi=2**32),
    "max_args": Int(hi=2**31 - 1),
    "auth_timeout": Duration(),
    "memory_budget": Size(lo=1 << 20),     # at least 1 MiB
    "max_clients_per_user": Int("a whole number >= 0 (0: no limit)", lo=0, hi=10_000_000),
    "idle_timeout": Duration(zero=True),   # 0: never
}, "a mapping of limits")

AUTH_THROTTLE = Struct({
    "max_failures": Int(hi=1_000_000), "window": Duration(), "lockout": Duration(),
}, "a mapping {max_failures, window, lockout}")

SCHEMA = Struct({
    "listen": Either(Address(), ListOf(Either(Address(), LISTENER), min_len=1, max_len=64),
                     what="'host:port' or a list of addresses or {address, tls} mappings"),
    "upstream": Either(Address(), UPSTREAM),
    "users": MapOf(Either(Rules(), USER, what="a rule string or a mapping with 'rules'"),
                   "a mapping of user name to rules",
                   Str("a user name without whitespace or control characters",
                       pattern=r"[^\s\x00-\x1f\x7f]{1,256}")),
    "acl_file": _PATH,
    "metrics": Struct({"address": Address()}, "{address: host:port}", required=("address",)),
    "limits": LIMITS,
    "auth_throttle": AUTH_THROTTLE,
    "admin": Struct({"listen": Address()}, "{listen: host:port}", required=("listen",),
                    closed=True),
    "shutdown": Struct({"grace": Duration(zero=True)}, "{grace: <duration>}", closed=True),
    "audit": Struct({
        "path": Str('"-" (stdout) or a file path', pattern=r"[^\x00-\x1f\x7f]{1,4096}"),
        "rate": Int("a whole number of lines per second >= 0 (0: no limit)", lo=0, hi=10_000_000),
        "format": Choice("json", "text"),
    }, "a mapping {path, rate, format}"),
    "pid_file": _PATH,
    "log": Struct({"level": Choice("debug", "info", "warning", "error")}, "{level: ...}"),
}, "a mapping of settings")


def check_schema(raw: Any, problems: list[str]) -> dict:
    """`raw` checked against SCHEMA: the normalised document (bad keys dropped)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping of settings"])
    return SCHEMA.check(raw, "", problems)


def parse_address(text: Any, where: str, problems: list[str]) -> tuple[str, int] | None:
    """``host:port``, ``[::1]:port`` or ``:port``; only a syntax check, no resolution."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = f"127.0.0.1:{text}"
    if not isinstance(text, str) or ":" not in text:
        problems.append(f"{where}: expected 'host:port', got {_shown(text)}")
        return None
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        problems.append(f"{where}: port must be 1-65535, got {_shown(port)}")
        return None
    if any(c.isspace() or c == "\0" for c in host):
        problems.append(f"{where}: expected 'host:port', got {_shown(text)}")
        return None
    return host, int(port)


def read_secret_file(path: Path, where: str, problems: list[str],
                     warnings: list[str] | None = None) -> str | None:
    """A ``${file:...}`` secret: a regular file of at most MAX_SECRET_BYTES, UTF-8, with all
    trailing CR/LF removed. A file others (or a group we are not in) can read is a warning."""
    try:
        data, st = read_regular_file(path, MAX_SECRET_BYTES)
    except FileProblem as e:
        problems.append(f"{where}: cannot read secret file {str(path)!r}: {e}")
        return None
    if warnings is not None and _exposed(st):
        warnings.append(f"{where}: secret file {str(path)!r} is readable by group or others "
                        f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    try:
        return strip_newlines(data).decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{where}: secret file {str(path)!r} is not UTF-8 text")
        return None


def _exposed(st: os.stat_result) -> bool:
    """Whether others, or a group this process is not in, may read or write a secret file.
    A group of our own is how a secret is meant to be shared with the proxy (Kubernetes mounts
    a Secret 0440 with the pod's fsGroup), so that alone is not a warning."""
    if st.st_mode & 0o007:
        return True
    return bool(st.st_mode & 0o070) and st.st_gid not in {os.getegid(), *os.getgroups()}


def resolve_refs(text: str, where: str, problems: list[str], base_dir: Path,
                 warnings: list[str] | None = None) -> str | None:
    """Replace ``${NAME}`` and ``${file:path}``; a missing source is a problem, not an empty string."""
    failed = False

    def sub(m: re.Match) -> str:
        nonlocal failed
        ref = m.group(1)
        if ref.startswith("file:"):
            p = Path(ref[5:])
            if not p.is_absolute():
                p = base_dir / p
            secret = read_secret_file(p, where, problems, warnings)
            if secret is not None:
                return secret
        elif not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ref):
            problems.append(f"{where}: a reference is not valid (use ${{NAME}} or ${{file:/path}})")
        elif ref in os.environ:
            return os.environ[ref]
        else:
            problems.append(f"{where}: environment variable {ref} is not set")
        failed = True
        return ""

    out = _REF.sub(sub, text)
    return None if failed else out


def _reread_secret(text: str, base_dir: Path) -> bytes | None:
    """The secret `text` (``${file:...}`` / ``${NAME}``) refers to now, or None when it cannot
    be read (no message: the caller keeps what it has)."""
    problems: list[str] = []
    value = resolve_refs(text, "upstream.password", problems, base_dir)
    return value.encode() if value is not None and not problems else None


def hash_password(secret: bytes) -> str:
    return "#" + hashlib.sha256(secret).hexdigest()


def tokenize_rules(text: str) -> list[str]:
    """Split an ACL rule string on whitespace, keeping a selector ``( ... )`` as one token."""
    tokens, depth, cur = [], 0, []
    for ch in text:
        if ch == "(" and not cur and depth == 0:
            depth = 1
            cur.append(ch)
        elif depth:
            cur.append(ch)
            if ch == ")":
                depth = 0
                tokens.append("".join(cur))
                cur = []
        elif ch.isspace():
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        tokens.append("".join(cur))
    return tokens


def _secure_tokens(tokens: list[str], where: str, problems: list[str], base_dir: Path,
                   warnings: list[str] | None = None) -> list[str]:
    """Turn ``>${REF}`` passwords into ``#sha256``; refuse literal plaintext passwords."""
    out = []
    for tok in tokens:
        if tok.startswith(">") or tok.startswith("<"):
            body = tok[1:]
            if not _REF.fullmatch(body):
                problems.append(
                    f"{where}: a literal password ('{tok[0]}...') is not allowed in a config file; "
                    f"use #<sha256-hex> (redisgate hash-password) or {tok[0]}${{ENV_NAME}} / "
                    f"{tok[0]}${{file:/path}}")
                continue
            secret = resolve_refs(body, where, problems, base_dir, warnings)
            if secret is None:
                continue
            if not secret:
                problems.append(f"{where}: a password reference is empty")
                continue
            digest = hash_password(secret.encode())
            out.append(digest if tok[0] == ">" else "!" + digest[1:])
        else:
            out.append(tok)
    return out


_RULE_WORD = re.compile(r"[+\-~%&(]|(on|off|nopass|resetpass|reset|allkeys|resetkeys|allchannels|"
                        r"resetchannels|allcommands|nocommands|clearselectors)$", re.I)


def _rule_error(e: Exception, tokens: list[str]) -> str:
    """A RuleError's text without any token that may be a password: a malformed `#hash` (often a
    password typed after `#`) or a bare word that is no ACL rule (often a forgotten `>`)."""
    token = getattr(e, "token", None)
    why = getattr(e, "why", None)
    if token is None or why is None:
        return str(e)
    if token.startswith(("#", "!")) or not _RULE_WORD.match(token):
        n = tokens.index(token) + 1 if token in tokens else None
        shown = (f"{token[0]}..." if token.startswith(("#", "!")) else "...") + \
            (f" (word {n}, not shown: it may be a password)" if n else " (not shown)")
        text = f"Error in ACL SETUSER modifier '{shown}': {why}"
        line = getattr(e, "line", None)
        return f"line {line}: {text}" if line is not None else text
    return str(e)


def load_config(path: str | os.PathLike, *, allow_embedded: bool = True) -> Config:
    """Read, resolve and validate a config file. Raises ConfigError listing every problem."""
    path = Path(path)
    try:
        data, _ = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileProblem as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from None
    raw = parse_yaml(data, str(path))
    return build_config(raw, base_dir=path.parent, path=path, allow_embedded=allow_embedded)


def build_config(raw: Any, *, base_dir: Path = Path("."), path: Path | None = None,
                 allow_embedded: bool = True) -> Config:
    problems: list[str] = []
    warnings: list[str] = []
    doc = check_schema(raw, problems)

    listeners = _listeners(doc.get("listen", ("127.0.0.1", 6380)), problems)
    upstream = _upstream(doc.get("upstream"), raw.get("upstream") if isinstance(raw, dict) else None,
                         problems, warnings, base_dir, allow_embedded)
    users = _users(doc.get("users"), doc.get("acl_file"), problems, warnings, base_dir)
    if upstream.cluster is not None:
        for name, entry in users.items():
            if entry.databases is not None and entry.databases - {0}:
                problems.append(f"users.{name}.databases: a Redis Cluster has only database 0")

    cfg = Config(path=path, listeners=listeners, upstream=upstream, users=users, warnings=warnings)
    if "metrics" in doc and "address" in doc["metrics"]:
        cfg.metrics_address = doc["metrics"]["address"]
    # admin.listen and the older metrics.address name the same (one) HTTP listener.
    admin_listen = doc.get("admin", {}).get("listen")
    if admin_listen and cfg.metrics_address and admin_listen != cfg.metrics_address:
        problems.append("admin.listen: metrics.address names the same (one) HTTP listener with "
                        "another address; keep one of them")
    cfg.admin_listen = admin_listen or cfg.metrics_address
    if "grace" in doc.get("shutdown", {}):
        cfg.shutdown_grace = doc["shutdown"]["grace"]
    for key, value in doc.get("limits", {}).items():
        setattr(cfg, key, value)
    if 0 < cfg.max_clients < cfg.max_clients_per_user:
        warnings.append(f"limits.max_clients_per_user: {cfg.max_clients_per_user} is more than "
                        f"limits.max_clients ({cfg.max_clients}); only max_clients applies")
    cfg.auth_throttle = AuthThrottle(**doc.get("auth_throttle", {}))
    pid_file = doc.get("pid_file")
    if pid_file is not None:
        cfg.pid_file = pid_file if os.path.isabs(pid_file) else str(base_dir / pid_file)
    cfg.log_level = doc.get("log", {}).get("level", "info")
    if isinstance(raw, dict) and raw.get("audit") is not None and "audit" in doc:
        cfg.audit = _audit(doc["audit"], base_dir, problems)
    _tls_warnings(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _audit(doc: dict, base_dir: Path, problems: list[str]) -> AuditSettings:
    settings = AuditSettings(**doc)
    if settings.path != "-":
        path = Path(settings.path) if os.path.isabs(settings.path) else base_dir / settings.path
        settings = AuditSettings(str(path), settings.rate, settings.format)
        if path.is_dir():
            problems.append(f"audit.path: {str(path)!r} is a directory; name a file in it")
        elif not path.parent.is_dir():
            problems.append(f"audit.path: directory {str(path.parent)!r} does not exist")
    return settings


def _tls_warnings(cfg: Config) -> None:
    """A listener's own `ciphers` that admits weak TLS 1.2 suites (CBC, RSA key exchange, ...)."""
    from .tls import weak_cipher_suites   # (deferred: tls imports cryptography, heavy)
    for lst in cfg.listeners:
        ciphers = (lst.tls or {}).get("ciphers")
        weak = weak_cipher_suites(ciphers) if ciphers else []
        if weak:
            shown = ", ".join(weak[:3]) + (f" and {len(weak) - 3} more" if len(weak) > 3 else "")
            cfg.warnings.append(f"{lst.where}.tls.ciphers: {ciphers!r} admits weak cipher suites "
                                f"({shown}: CBC, no forward secrecy, anonymous, PSK, under 128 "
                                "bits or a security level below 2); omit it to use redisgate's "
                                "default (ECDHE with AES-GCM or ChaCha20)")


def _listeners(value: Any, problems: list[str]) -> list[Listener]:
    if isinstance(value, tuple):
        return [Listener(value[0], value[1])]
    out = []
    for i, item in enumerate(value):
        where = f"listen[{i}]"
        if isinstance(item, tuple):
            out.append(Listener(item[0], item[1], None, where))
        elif "address" in item:
            out.append(Listener(*item["address"], item.get("tls"), where))
    return out


def _upstream(value: Any, raw: Any, problems: list[str], warnings: list[str], base_dir: Path,
              allow_embedded: bool) -> Upstream:
    if value is None:
        if raw is None:
            if not allow_embedded:
                problems.append("upstream: required (no embedded default here)")
            return Upstream(embedded=True)
        return Upstream()
    if isinstance(value, tuple):
        return Upstream(host=value[0], port=value[1])
    up = Upstream()
    # Where the data nodes are: exactly one of these forms (each builder checks its own keys).
    forms = [k for k in ("address", "sentinel", "cluster")
             if isinstance(raw, dict) and raw.get(k) is not None]
    if len(forms) > 1:
        problems.append(f"upstream: only one of {', '.join(forms)}")
    elif not forms:
        problems.append("upstream: 'address', 'sentinel' or 'cluster' is required")
    if "address" in value:
        up.host, up.port = value["address"]
    cluster = value.get("cluster")
    if cluster is not None and cluster.get("seeds"):
        up.cluster = ClusterSettings(tuple(cluster["seeds"]), cluster.get("refresh", 30.0))
        up.host, up.port = up.cluster.seeds[0]
        if value.get("db"):
            problems.append("upstream.db: a Redis Cluster has only database 0")
    up.username = value.get("username")
    up.password = _password(value.get("password"), "upstream.password", problems, warnings,
                            base_dir)
    if up.password is not None and _REF.search(value.get("password") or ""):
        up.password_reread = partial(_reread_secret, value["password"], base_dir)
    up.db = value.get("db", 0)
    up.tls = _tls_setting(value.get("tls"))
    if "sentinel" in value:
        sen = value["sentinel"]
        password = _password(sen.get("password"), "upstream.sentinel.password", problems,
                             warnings, base_dir)
        if "master" in sen and "addresses" in sen and len(forms) == 1:
            up.sentinel = SentinelConfig(
                master=sen["master"], addresses=list(sen["addresses"]),
                username=sen.get("username"), password=password,
                tls=_tls_setting(sen.get("tls")))
    up.version = value.get("version")
    up.connect_timeout = value.get("connect_timeout", 5.0)
    up.handshake_timeout = value.get("handshake_timeout", 5.0)
    up.keepalive = value.get("keepalive", 60.0)
    if up.keepalive > MAX_KEEPALIVE:
        problems.append(f"upstream.keepalive: at most {MAX_KEEPALIVE}s (the kernel's limit "
                        "for TCP_KEEPIDLE), or 0 for no keepalive")
    mux = value.get("multiplex", 0)
    up.multiplex = int(mux)
    return up


def _password(pw: str | None, where: str, problems: list[str], warnings: list[str],
              base_dir: Path) -> bytes | None:
    """A password setting of the proxy's own (upstream, sentinel): `${ENV}` / `${file:}`
    references resolved; a literal is accepted with a warning."""
    if pw is None:
        return None
    if _REF.search(pw):
        resolved = resolve_refs(pw, where, problems, base_dir, warnings)
        return resolved.encode() if resolved is not None else None
    warnings.append(f"{where}: a literal password in the config file; "
                    "prefer ${ENV_NAME} or ${file:/path}")
    return pw.encode()


def _tls_setting(tls: Any) -> dict | None:
    """An upstream-side `tls`: None for plain TCP, {} (`true`) for TLS with the system CAs."""
    return None if tls is None or tls is False else ({} if tls is True else tls)


def _users(value: Any, acl_file: Any, problems: list[str],
           warnings: list[str], base_dir: Path) -> dict[str, UserEntry]:
    specs: dict[str, tuple[str, Any]] = {}
    for name, spec in (value or {}).items():
        specs[name] = (f"users.{name}", spec)
    if acl_file is not None:
        p = Path(acl_file)
        p = p if p.is_absolute() else base_dir / p
        text = None
        try:
            text = read_regular_file(p, MAX_CONFIG_BYTES)[0].decode("utf-8")
        except FileProblem as e:
            problems.append(f"acl_file: cannot read {str(p)!r}: {e}")
        except UnicodeDecodeError as e:
            problems.append(f"acl_file: {str(p)!r} is not UTF-8 text (invalid byte at offset {e.start})")
        if text is not None:
            try:
                parsed = rules.parse_aclfile(text)
            except rules.RuleError as e:
                problems.append(f"acl_file: {_rule_error(e, [])}")
                parsed = {}
            for name, tokens in parsed.items():
                if name in specs:
                    problems.append(f"acl_file: user {name!r} is also defined under users")
                    continue
                specs[name] = (f"acl_file:{name}", {"rules": tokens})
    if not specs and "users" not in problems_keys(problems):
        problems.append("users: no users are configured; nobody could connect")

    users: dict[str, UserEntry] = {}
    for name, (where, spec) in specs.items():
        entry = _user(name, where, spec, problems, warnings, base_dir)
        if entry is not None:
            users[name] = entry
    return users


def problems_keys(problems: list[str]) -> set[str]:
    """The top-level keys that already have a problem."""
    return {p.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0] for p in problems}


def _user(name: str, where: str, spec: Any, problems: list[str], warnings: list[str],
          base_dir: Path) -> UserEntry | None:
    if isinstance(spec, (str, list)):
        spec = {"rules": spec}
    text = spec.get("rules", "")
    tokens = text if isinstance(text, list) else tokenize_rules(text)
    tokens = _secure_tokens([str(t) for t in tokens], f"{where}.rules", problems, base_dir,
                            warnings)

    profile_names = spec.get("profile", spec.get("profiles"))
    if isinstance(profile_names, str):
        profile_names = [profile_names]
    queues = spec.get("queues")
    scripts: set[str] = set()
    custom_scripts: dict = {}              # own script SHA1 -> bound contract ({sha1, like})
    scripts_given = False
    profile_tokens: list[str] = []
    if profile_names:
        for pname in profile_names:
            try:
                ptokens, pscripts = contracts.family().load_profile(pname, queues)
            except contracts.ProfileError as e:
                problems.append(f"{where}.profile: {e}")
                continue
            profile_tokens += ptokens
            scripts |= set(pscripts)
            scripts_given = True
    elif queues is not None:
        problems.append(f"{where}.queues: only meaningful together with an Asynq profile")
    if spec.get("scripts") is not None:
        try:
            listed_shas, custom_scripts = scriptmod.resolve_scripts(spec["scripts"])
            scripts |= listed_shas
            scripts_given = True
        except scriptmod.ScriptListError as e:
            problems.extend(e.lines(f"{where}.scripts"))

    # Profile tokens come first so that the user's own rules can narrow or extend them.
    try:
        user = rules.parse_user(name, profile_tokens + tokens)
    except rules.RuleError as e:
        problems.append(f"{where}.rules: {_rule_error(e, tokens)}")
        return None
    flags = {}
    for flag in _SCRIPT_FLAGS:
        if spec.get(flag, False):
            flags[flag] = True
            scripts_given = True
    if scripts_given:
        user.scripts = scriptmod.ScriptPolicy(scripts, custom=custom_scripts, **flags)
    user.report_only = spec.get("report_only", False)

    cert = spec.get("certificate")
    cert_ca = None
    if cert is not None:
        if cert.get("ca") is not None:
            from .tls import load_binding_ca   # (deferred: tls imports cryptography, heavy)
            cert = dict(cert)
            cert_ca = load_binding_ca(cert["ca"], base_dir, f"{where}.certificate.ca", problems)
            if cert_ca is None:
                cert = None
            else:
                cert["ca"] = str(cert_ca[0])
                cert_ca = cert_ca[1]
    require_password = spec.get("require_password", False)
    if require_password and cert is None:
        problems.append(f"{where}.require_password: only meaningful with 'certificate'")
    elif require_password and not user.has_passwords():
        warnings.append(f"{where}.require_password: the user has no password ('nopass' does not "
                        "count here); nobody can log in as it")
    dbs = spec.get("databases")
    if dbs is not None:
        dbs = frozenset(dbs)
    if not user.enabled:
        # (e.g. {profile: asynq-producer, certificate: {cn: producer}} without `rules: on`: its
        # clients would get a bare NOAUTH; the audit says `disabled`)
        warnings.append(f"{where}: user is not 'on' (users start 'off'; add 'on' to its rules); "
                        "nobody can log in as it")
    elif not user.nopass and not user.has_passwords() and cert is None:
        warnings.append(f"{where}: user is 'on' but has no password, nopass or certificate; "
                        "nobody can log in as it")
    confine_scan = spec.get("confine_scan", False)
    if confine_scan and not any(user.read_prefix(s) for s in _scan_specs()):
        problems.append(f"{where}.confine_scan: needs rules whose readable keys are exactly one "
                        "plain prefix pattern (e.g. ~tenant1:*) and that allow SCAN or KEYS")
    return UserEntry(name=name, user=user, certificate=cert, certificate_ca=cert_ca,
                     require_password=require_password,
                     databases=dbs, learn=spec.get("learn", False), confine_scan=confine_scan)


def _scan_specs():
    return [TABLE.lookup([b"scan"]), TABLE.lookup([b"keys"])]
