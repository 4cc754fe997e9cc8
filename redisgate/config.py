"""The YAML configuration: loading, secret references, and validation with precise messages.

Every problem is reported as ``<where>: <why>``, where ``<where>`` is the dotted path of the key
(``users.worker.rules``), so ``redisgate check`` can print all of them at once. Secrets come from
``${NAME}`` (environment) or ``${file:/path}`` references and are never part of a message.

Contract of the file (keys are a public contract; extend, never rename)::

    listen: 127.0.0.1:6380            # or a list of {address, tls: {...}}
    upstream: {address, username, password, db, tls, version, connect_timeout, multiplex}
    users:
      name: "<ACL rules>"             # or a mapping:
      name: {rules, profile, queues, scripts, report_only, learn, certificate,
             require_password, databases, confine_scan,
             allow_flush, allow_kill, allow_debug, allow_function, allow_any_script}
      # scripts: [<sha1>, <script name>, <named set>, {sha1: <own script>, like: <script name>}]
    acl_file: users.acl               # more users, in Redis's aclfile format
    metrics: {address: 127.0.0.1:9121}  # the same listener as admin.listen
    admin: {listen: 127.0.0.1:9121}     # HTTP: /metrics, /healthz, /readyz (redisgate.admin)
    shutdown: {grace: 10s}              # SIGTERM: time for in-flight replies; durations 10s/500ms/5m/10
    limits: {max_clients, handshake_timeout, auth_timeout, acl_log_max_len}
    auth_throttle: {max_failures, window, lockout}
    pid_file: /run/redisgate.pid
    log: {level: info}
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_REF = re.compile(r"\$\{([^}]*)\}")
_KNOWN_TOP = {"listen", "upstream", "users", "acl_file", "metrics", "limits", "pid_file", "log",
              "admin", "shutdown", "auth_throttle"}
_KNOWN_UPSTREAM = {"address", "username", "password", "db", "tls", "version", "connect_timeout",
                   "multiplex"}
# upstream.multiplex: at most this many shared links (twemproxy keeps one).
MAX_SHARED_LINKS = 64
# Script permissions beyond the allowlist (the names the script denials mention).
_SCRIPT_FLAGS = ("allow_flush", "allow_kill", "allow_debug", "allow_function", "allow_any_script")
_KNOWN_USER = {"rules", "profile", "profiles", "queues", "scripts", "report_only", "learn",
               "certificate", "require_password", "databases", "confine_scan", *_SCRIPT_FLAGS}
_KNOWN_LIMITS = {"max_clients", "handshake_timeout", "auth_timeout", "acl_log_max_len", "max_bulk",
                 "max_args", "memory_budget"}
_SECONDS_LIMITS = {"handshake_timeout", "auth_timeout"}   # the others are counts


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
class Upstream:
    host: str = "127.0.0.1"
    port: int = 6379
    username: str | None = None
    password: bytes | None = None          # resolved secret; never printed
    db: int = 0
    tls: dict | None = None
    version: tuple[int, int, int] | None = None   # overrides the probe
    connect_timeout: float = 5.0
    # Shared upstream links for stateless commands (server.SharedLink); 0: one link per client.
    multiplex: int = 0
    embedded: bool = False                  # no upstream configured: start a local redis-server

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


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


@dataclass
class Config:
    path: Path | None
    listeners: list[Listener]
    upstream: Upstream
    users: dict[str, UserEntry]
    metrics_address: tuple[str, int] | None = None
    max_clients: int = 10000
    handshake_timeout: float = 10.0
    auth_timeout: float = 10.0        # a connection not logged in this long after accept is closed
    auth_throttle: AuthThrottle = field(default_factory=AuthThrottle)
    acl_log_max_len: int = 128
    max_bulk: int = 512 * 1024 * 1024
    max_args: int = 1024 * 1024
    memory_budget: int = 256 << 20          # bytes of client data buffered in all (server.py)
    pid_file: str | None = None
    log_level: str = "info"
    admin_listen: tuple[str, int] | None = None   # admin.listen, or the older metrics.address
    shutdown_grace: float = 10.0                  # shutdown.grace, seconds
    warnings: list[str] = field(default_factory=list)


def parse_address(text: Any, where: str, problems: list[str]) -> tuple[str, int] | None:
    """``host:port``, ``[::1]:port`` or ``:port``; only a syntax check, no resolution."""
    if isinstance(text, int):
        text = f"127.0.0.1:{text}"
    if not isinstance(text, str) or ":" not in text:
        problems.append(f"{where}: expected 'host:port', got {text!r}")
        return None
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        problems.append(f"{where}: port must be 1-65535, got {port!r}")
        return None
    return host, int(port)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any, where: str, problems: list[str]) -> float | None:
    """``10s``, ``500ms``, ``5m``, ``1h`` or a plain number of seconds; never negative."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value >= 0:
            return float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    problems.append(f"{where}: expected a duration such as 10s, 500ms, 5m or a number of "
                    f"seconds, got {value!r}")
    return None


def resolve_refs(text: str, where: str, problems: list[str], base_dir: Path) -> str | None:
    """Replace ``${NAME}`` and ``${file:path}``; a missing source is a problem, not an empty string."""
    failed = False

    def sub(m: re.Match) -> str:
        nonlocal failed
        ref = m.group(1)
        if ref.startswith("file:"):
            p = Path(ref[5:])
            if not p.is_absolute():
                p = base_dir / p
            try:
                return p.read_text().rstrip("\r\n")
            except OSError as e:
                problems.append(f"{where}: cannot read secret file {str(p)!r}: {e.strerror}")
        elif not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ref):
            problems.append(f"{where}: '${{{ref}}}' is not a valid reference "
                            "(use ${NAME} or ${file:/path})")
        elif ref in os.environ:
            return os.environ[ref]
        else:
            problems.append(f"{where}: environment variable {ref} is not set")
        failed = True
        return ""

    out = _REF.sub(sub, text)
    return None if failed else out


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


def _secure_tokens(tokens: list[str], where: str, problems: list[str], base_dir: Path) -> list[str]:
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
            secret = resolve_refs(body, where, problems, base_dir)
            if secret is None:
                continue
            if not secret:
                problems.append(f"{where}: the password reference {body} is empty")
                continue
            digest = hash_password(secret.encode())
            out.append(digest if tok[0] == ">" else "!" + digest[1:])
        else:
            out.append(tok)
    return out


def load_config(path: str | os.PathLike, *, allow_embedded: bool = True) -> Config:
    """Read, resolve and validate a config file. Raises ConfigError listing every problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    return build_config(raw, base_dir=path.parent, path=path, allow_embedded=allow_embedded)


def build_config(raw: Any, *, base_dir: Path = Path("."), path: Path | None = None,
                 allow_embedded: bool = True) -> Config:
    problems: list[str] = []
    warnings: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping of settings"])
    for key in raw:
        if key not in _KNOWN_TOP:
            problems.append(f"{key}: unknown setting (known: {', '.join(sorted(_KNOWN_TOP))})")

    listeners = _listeners(raw.get("listen", "127.0.0.1:6380"), problems)
    upstream = _upstream(raw.get("upstream"), problems, warnings, base_dir, allow_embedded)
    users = _users(raw.get("users"), raw.get("acl_file"), upstream, problems, warnings, base_dir)

    cfg = Config(path=path, listeners=listeners, upstream=upstream, users=users, warnings=warnings)
    metrics = raw.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict) or "address" not in metrics:
            problems.append("metrics: expected {address: host:port}")
        else:
            cfg.metrics_address = parse_address(metrics["address"], "metrics.address", problems)
    _admin(raw, cfg, problems)
    limits = raw.get("limits") or {}
    if not isinstance(limits, dict):
        problems.append("limits: expected a mapping")
        limits = {}
    for key, value in limits.items():
        where = f"limits.{key}"
        if key not in _KNOWN_LIMITS:
            problems.append(f"{where}: unknown limit (known: {', '.join(sorted(_KNOWN_LIMITS))})")
        elif key in _SECONDS_LIMITS:
            seconds = _positive_seconds(value, where, problems)
            if seconds is not None:
                setattr(cfg, key, seconds)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or not math.isfinite(value):
            problems.append(f"{where}: expected a positive number, got {value!r}")
        elif key == "memory_budget" and value < 1 << 20:
            problems.append(f"{where}: expected at least 1048576 (bytes), got {value!r}")
        else:
            setattr(cfg, key, int(value))
    cfg.auth_throttle = _auth_throttle(raw.get("auth_throttle"), problems)
    pid_file = raw.get("pid_file")
    if pid_file is not None:
        cfg.pid_file = str(base_dir / pid_file) if not os.path.isabs(str(pid_file)) else str(pid_file)
    log = raw.get("log") or {}
    level = str(log.get("level", "info")).lower() if isinstance(log, dict) else None
    if level not in {"debug", "info", "warning", "error"}:
        problems.append("log.level: expected debug, info, warning or error")
    else:
        cfg.log_level = level
    if problems:
        raise ConfigError(problems)
    return cfg


def _admin(raw: dict, cfg: Config, problems: list[str]) -> None:
    """``admin: {listen}`` (``metrics: {address}`` names the same listener) and ``shutdown``."""
    admin = raw.get("admin")
    if admin is not None:
        if not isinstance(admin, dict) or set(admin) != {"listen"}:
            problems.append("admin: expected {listen: host:port}")
        else:
            cfg.admin_listen = parse_address(admin["listen"], "admin.listen", problems)
            if cfg.metrics_address and cfg.admin_listen and cfg.metrics_address != cfg.admin_listen:
                problems.append("admin.listen: metrics.address names the same (one) HTTP "
                                "listener with another address; keep one of them")
    if cfg.admin_listen is None:
        cfg.admin_listen = cfg.metrics_address
    shutdown = raw.get("shutdown")
    if shutdown is not None:
        if not isinstance(shutdown, dict) or set(shutdown) - {"grace"}:
            problems.append("shutdown: expected {grace: <duration>}")
        elif "grace" in shutdown:
            grace = parse_duration(shutdown["grace"], "shutdown.grace", problems)
            if grace is not None:
                cfg.shutdown_grace = grace


def _auth_throttle(value: Any, problems: list[str]) -> AuthThrottle:
    if value is None:
        return AuthThrottle()
    if not isinstance(value, dict):
        problems.append("auth_throttle: expected a mapping {max_failures, window, lockout}")
        return AuthThrottle()
    known = {"max_failures", "window", "lockout"}
    settings = {}
    for key, v in value.items():
        where = f"auth_throttle.{key}"
        if key not in known:
            problems.append(f"{where}: unknown setting (known: {', '.join(sorted(known))})")
        elif key == "max_failures":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{where}: expected a whole number of failed logins >= 1, got {v!r}")
            else:
                settings[key] = v
        else:
            seconds = _positive_seconds(v, where, problems)
            if seconds is not None:
                settings[key] = seconds
    return AuthThrottle(**settings)


def _positive_seconds(value: Any, where: str, problems: list[str]) -> float | None:
    """A duration (parse_duration's forms) that is finite and > 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not (value > 0 and math.isfinite(value)):
        problems.append(f"{where}: expected a positive, finite duration (10s, 500ms, 5m or a "
                        f"number of seconds), got {value!r}")
        return None
    seconds = parse_duration(value, where, problems)
    if seconds is not None and not seconds > 0:
        problems.append(f"{where}: expected a positive duration, got {value!r}")
        return None
    return seconds


def _listeners(value: Any, problems: list[str]) -> list[Listener]:
    items = value if isinstance(value, list) else [value]
    out = []
    if not items:
        problems.append("listen: at least one address is needed")
    for i, item in enumerate(items):
        where = f"listen[{i}]" if isinstance(value, list) else "listen"
        tls = None
        if isinstance(item, dict):
            unknown = set(item) - {"address", "tls"}
            if unknown:
                problems.append(f"{where}: unknown keys {sorted(unknown)} (known: address, tls)")
            tls = item.get("tls")
            if tls is not None and not isinstance(tls, dict):
                problems.append(f"{where}.tls: expected a mapping")
                tls = None
            item = item.get("address")
            where_addr = f"{where}.address"
        else:
            where_addr = where
        addr = parse_address(item, where_addr, problems)
        if addr:
            out.append(Listener(addr[0], addr[1], tls, where))
    return out


def _upstream(value: Any, problems: list[str], warnings: list[str], base_dir: Path,
              allow_embedded: bool) -> Upstream:
    if value is None:
        if not allow_embedded:
            problems.append("upstream: required (no embedded default here)")
        return Upstream(embedded=True)
    if isinstance(value, str):
        value = {"address": value}
    if not isinstance(value, dict):
        problems.append("upstream: expected a mapping with at least 'address'")
        return Upstream()
    up = Upstream()
    for key in value:
        if key not in _KNOWN_UPSTREAM:
            problems.append(f"upstream.{key}: unknown setting (known: {', '.join(sorted(_KNOWN_UPSTREAM))})")
    addr = parse_address(value.get("address"), "upstream.address", problems)
    if addr:
        up.host, up.port = addr
    if value.get("username") is not None:
        up.username = str(value["username"])
    pw = value.get("password")
    if pw is not None:
        pw = str(pw)
        if _REF.search(pw):
            resolved = resolve_refs(pw, "upstream.password", problems, base_dir)
            up.password = resolved.encode() if resolved is not None else None
        else:
            warnings.append("upstream.password: a literal password in the config file; "
                            "prefer ${ENV_NAME} or ${file:/path}")
            up.password = pw.encode()
    db = value.get("db", 0)
    if isinstance(db, bool) or not isinstance(db, int) or db < 0:
        problems.append(f"upstream.db: expected a database number >= 0, got {db!r}")
    else:
        up.db = db
    if value.get("tls") is not None:
        if not isinstance(value["tls"], dict):
            problems.append("upstream.tls: expected a mapping")
        else:
            up.tls = value["tls"]
    if value.get("version") is not None:
        m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", str(value["version"]))
        if not m:
            problems.append(f"upstream.version: expected e.g. '7.0' or '5.0.6', got {value['version']!r}")
        else:
            up.version = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    timeout = value.get("connect_timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        problems.append("upstream.connect_timeout: expected a positive number of seconds")
    else:
        up.connect_timeout = float(timeout)
    mux = value.get("multiplex", 0)
    if mux is True:
        mux = 1
    if mux is False or mux is None:
        mux = 0
    if not isinstance(mux, int) or not 0 <= mux <= MAX_SHARED_LINKS:
        problems.append(f"upstream.multiplex: expected the number of shared links, 0 (off) to "
                        f"{MAX_SHARED_LINKS}, or true/false, got {mux!r}")
    else:
        up.multiplex = mux
    return up


def _users(value: Any, acl_file: Any, upstream: Upstream, problems: list[str],
           warnings: list[str], base_dir: Path) -> dict[str, UserEntry]:
    from . import rules  # the rules engine compiles each user once, here

    specs: dict[str, tuple[str, Any]] = {}
    if value is not None and not isinstance(value, dict):
        problems.append("users: expected a mapping of user name to rules")
        value = {}
    for name, spec in (value or {}).items():
        specs[str(name)] = (f"users.{name}", spec)
    if acl_file is not None:
        p = Path(str(acl_file))
        p = p if p.is_absolute() else base_dir / p
        try:
            text = p.read_text()
        except OSError as e:
            problems.append(f"acl_file: cannot read {str(p)!r}: {e.strerror}")
        else:
            try:
                parsed = rules.parse_aclfile(text)
            except rules.RuleError as e:
                problems.append(f"acl_file: {e}")
                parsed = {}
            for name, tokens in parsed.items():
                if name in specs:
                    problems.append(f"acl_file: user {name!r} is also defined under users")
                    continue
                specs[name] = (f"acl_file:{name}", {"rules": tokens})
    if not specs:
        problems.append("users: no users are configured; nobody could connect")

    users: dict[str, UserEntry] = {}
    for name, (where, spec) in specs.items():
        entry = _user(name, where, spec, problems, warnings, base_dir)
        if entry is not None:
            users[name] = entry
    return users


def _user(name: str, where: str, spec: Any, problems: list[str], warnings: list[str],
          base_dir: Path) -> UserEntry | None:
    from . import rules

    if isinstance(spec, (str, list)):
        spec = {"rules": spec}
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a rule string or a mapping with 'rules'")
        return None
    if not re.fullmatch(r"[^\s]+", name):
        problems.append(f"{where}: user names cannot contain whitespace")
        return None
    for key in spec:
        if key not in _KNOWN_USER:
            problems.append(f"{where}.{key}: unknown setting (known: {', '.join(sorted(_KNOWN_USER))})")
    text = spec.get("rules", "")
    tokens = text if isinstance(text, list) else tokenize_rules(str(text or ""))
    tokens = _secure_tokens([str(t) for t in tokens], f"{where}.rules", problems, base_dir)

    profile_names = spec.get("profile", spec.get("profiles"))
    if isinstance(profile_names, str):
        profile_names = [profile_names]
    queues = spec.get("queues")
    scripts: set[str] = set()
    custom_scripts: dict = {}              # own script SHA1 -> bound contract ({sha1, like})
    scripts_given = False
    profile_tokens: list[str] = []
    if queues is not None and (not isinstance(queues, list) or not all(isinstance(q, str) for q in queues)):
        problems.append(f"{where}.queues: expected a list of queue names")
        queues = None
    if profile_names:
        from . import profiles
        for pname in profile_names:
            try:
                ptokens, pscripts = profiles.load_profile(str(pname), queues)
            except profiles.ProfileError as e:
                problems.append(f"{where}.profile: {e}")
                continue
            profile_tokens += ptokens
            scripts |= set(pscripts)
            scripts_given = True
    elif queues is not None:
        problems.append(f"{where}.queues: only meaningful together with an Asynq profile")
    if spec.get("scripts") is not None:
        from . import scripts as scriptmod
        listed = spec["scripts"]
        if not isinstance(listed, list):
            problems.append(f"{where}.scripts: expected a list of SHA1 hex values, named sets "
                            "or {sha1: ..., like: <script name>} mappings")
        else:
            try:
                listed_shas, custom_scripts = scriptmod.resolve_scripts(listed)
                scripts |= listed_shas
                scripts_given = True
            except scriptmod.ScriptListError as e:
                problems.extend(e.lines(f"{where}.scripts"))

    # Profile tokens come first so that the user's own rules can narrow or extend them.
    try:
        user = rules.parse_user(name, profile_tokens + tokens)
    except rules.RuleError as e:
        problems.append(f"{where}.rules: {e}")
        return None
    flags = {}
    for flag in _SCRIPT_FLAGS:
        value = spec.get(flag, False)
        if not isinstance(value, bool):
            problems.append(f"{where}.{flag}: expected true or false, got {value!r}")
        elif value:
            flags[flag] = True
            scripts_given = True
    if scripts_given:
        from . import scripts as scriptmod
        user.scripts = scriptmod.ScriptPolicy(scripts, custom=custom_scripts, **flags)
    user.report_only = bool(spec.get("report_only", False))

    cert = spec.get("certificate")
    cert_ca = None
    if cert is not None:
        selectors = [k for k in cert if k != "ca"] if isinstance(cert, dict) else []
        if (not isinstance(cert, dict) or len(selectors) != 1
                or selectors[0] not in {"cn", "san_dns", "san_uri"}):
            problems.append(f"{where}.certificate: expected exactly one of {{cn: ...}}, "
                            "{san_dns: ...}, {san_uri: ...} (and optionally ca: <file>)")
            cert = None
        elif cert.get("ca") is not None:
            from .tls import load_binding_ca
            cert = dict(cert)
            cert_ca = load_binding_ca(cert["ca"], base_dir, f"{where}.certificate.ca", problems)
            if cert_ca is None:
                cert = None
            else:
                cert["ca"] = str(cert_ca[0])
                cert_ca = cert_ca[1]
    require_password = bool(spec.get("require_password", False))
    if require_password and cert is None:
        problems.append(f"{where}.require_password: only meaningful with 'certificate'")
    elif require_password and not user.has_passwords():
        warnings.append(f"{where}.require_password: the user has no password ('nopass' does not "
                        "count here); nobody can log in as it")
    dbs = spec.get("databases")
    if dbs is not None:
        if not isinstance(dbs, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                and d >= 0 for d in dbs):
            problems.append(f"{where}.databases: expected a list of database numbers")
            dbs = None
        else:
            dbs = frozenset(dbs)
    if user.enabled and not user.nopass and not user.has_passwords() and cert is None:
        warnings.append(f"{where}: user is 'on' but has no password, nopass or certificate; "
                        "nobody can log in as it")
    confine_scan = bool(spec.get("confine_scan", False))
    if confine_scan and not any(user.read_prefix(s) for s in _scan_specs()):
        problems.append(f"{where}.confine_scan: needs rules whose readable keys are exactly one "
                        "plain prefix pattern (e.g. ~tenant1:*) and that allow SCAN or KEYS")
    return UserEntry(name=name, user=user, certificate=cert, certificate_ca=cert_ca,
                     require_password=require_password,
                     databases=dbs, learn=bool(spec.get("learn", False)), confine_scan=confine_scan)


def _scan_specs():
    from .commands import TABLE
    return [TABLE.lookup([b"scan"]), TABLE.lookup([b"keys"])]
