"""The audit trail: one typed event per thing an operator must be able to see, and one emitter.

Log-safe text
-------------
Every log line, audit line, metric label and ACL LOG field that carries text a client controls
goes through `safe()`: user names, certificate CN/SAN values, keys, channels, denial reasons.
The result is bounded (the first `LIMIT` bytes, then a marker saying how many were cut) and
escaped: printable ASCII stays, a backslash becomes ``\\\\``, a space and every other byte
(CR, LF, NUL, control, non-ASCII) becomes ``\\xNN``. So one value is one token of one line: it
can neither start a line nor look like another ``key=value`` field of it.

A name a client sent before it logged in is only ever shown if it is a configured user's name
(`login_name`); any other name may be a password typed into the user-name slot, so it becomes
``unknown:<8 hex>``, an HMAC under a key made at process start: attempts with the same name can
be told apart within one run, and nothing can be checked against the log offline.

Events and the one emitter
--------------------------
Everything audited is an `Event` (a frozen dataclass; unset fields are left out of the output)
handed to `emit()`. Nothing else writes to the ``redisgate.audit`` logger. To audit something
new (a limit, a metric-worthy refusal, a rotation), build an Event and call `emit`::

    from . import audit
    audit.emit(audit.Event("upstream-lost", user=audit.safe(session.username),
                           peer=session.peer, info=session.client_info, reason="..."))

(in session.py: ``self._audit("upstream-lost", reason=...)`` fills in the connection). A
caller on a path a client can repeat at will (a refusal) asks ``wanted(kind, user)`` first and
builds nothing when the event would not be written (the process log drops it, or the rate limit
replaces it: it is counted then), then calls ``emit(event, admitted=True)``. Where
the proxy closes a connection for a reason of its own (a limit, an idle timeout), set
``ClientConnection.close_reason`` (``"max-clients-per-user"``, ``"idle-timeout"``) before closing
it: server.py emits the connection's one ``disconnect`` event, with that reason, its duration and
its command count, when the connection is gone (a session that ends itself sets
``Session.end_reason``).

- `event`: one of `EVENTS` (a new kind: add it there, and to `_TEXT` if the plain-text form
  should show it);
- `user`: a configured user's name, or `login_name(...)` for a name sent at login; never raw
  client text. Every other client-chosen string goes through `safe()` before it is put in an
  Event (`emit` does not escape: it cannot tell a key from a reason);
- `peer`: the connection (`Peer`: the proxy's id, ``addr:port``, the TLS identity); `info`:
  the connection's ``client_info`` text (``id=.. addr=..``), used by the plain-text form;
- never a password, a value or a whole argument list.

What `emit` does depends on the configuration's `audit:` section (`configure`, called by
server.Proxy at start and on reload):

- no `audit:` section: today's plain-text lines, through the ``redisgate.audit`` logger and the
  process's log handlers (stderr), unthrottled; events without a plain-text form (connect,
  reload, ...) are not written, nor the upstream's (`UPSTREAM_EVENTS`: the process log has a
  line for each);
- `audit: {format: json}` (the default once the section exists): one JSON object per line to
  `path` (``-``: stdout; else a file, created 0640, appended to, re-opened by `reopen()` on
  SIGHUP / `redisgate reload`), with ``ts`` (RFC 3339, UTC, milliseconds) first;
- `audit: {format: text}`: the plain-text lines, to `path`.

With a section, at most `rate` lines a second of each event kind are written (0: no limit;
reload, shutdown, master-changed, failover-moved and the worker events always are); past that,
each (user, event) gets one ``suppressed`` line a second with the number of lines it replaced.
`emit` runs on the event loop and never blocks on anything but the write itself; it is called
for connections, logins, refusals and the upstream's and the workers' events only, never for an
allowed command.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable, Container

if TYPE_CHECKING:   # the type only: the audit does not load the config layer (YAML, schema)
    from ..config import AuditSettings

LIMIT = 128
UNKNOWN = "unknown"

_ESCAPE = tuple(chr(b) if 0x21 <= b <= 0x7e and b != 0x5c else f"\\x{b:02x}" for b in range(256))
_ESCAPE = _ESCAPE[:0x5c] + ("\\\\",) + _ESCAPE[0x5d:]
_ESCAPE_SPACES = (*_ESCAPE[:0x20], " ", *_ESCAPE[0x21:])
_KEY = os.urandom(32)   # per process: the unknown-name tags are not comparable across runs

logger = logging.getLogger("redisgate.audit")


def safe(value: str | bytes | None, limit: int = LIMIT, spaces: bool = False) -> str:
    """`value` as one bounded, escaped token (see the module docstring); ``-`` for None.
    `spaces`: keep spaces as they are (for free text written last on its line)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = value.encode("utf-8", "backslashreplace")
    head = value[:limit]
    table = _ESCAPE_SPACES if spaces else _ESCAPE
    text = "".join([table[b] for b in head])
    if len(value) > limit:
        text += f"...[+{len(value) - limit} bytes]"
    return text


def unknown_tag(name: bytes) -> str:
    """``unknown:<8 hex>`` for a name that is no configured user's."""
    return f"{UNKNOWN}:{hmac.new(_KEY, name, hashlib.sha256).hexdigest()[:8]}"


def login_name(name: bytes, users: Container[str]) -> str:
    """What the audit log shows for a name sent at login: the configured user's name (escaped),
    else `unknown_tag`."""
    try:
        text = name.decode()
    except UnicodeDecodeError:
        return unknown_tag(name)
    return safe(text) if text in users else unknown_tag(name)


def user_label(name: str | bytes | None, users: Container[str]) -> str:
    """What metric labels and ACL LOG entries show for a user name: a configured user's name, or
    ``unknown`` (nothing a client chose, so the label set is bounded by the configuration)."""
    if isinstance(name, bytes):
        try:
            name = name.decode()
        except UnicodeDecodeError:
            return UNKNOWN
    return name if name is not None and name in users else UNKNOWN


# ---------------------------------------------------------------------------- events

# The upstream's events: a master that could not be reached, the sentinels (upstream.sentinel)
# and the failovers followed. The process log (logger ``redisgate``) has a line for each of them
# already, so without an `audit:` section they are not written a second time.
UPSTREAM_EVENTS = frozenset({
    "upstream-unreachable", "sentinel-error", "resolution-failed", "master-rejected",
    "failover-started", "switch-master", "master-changed", "failover-lifted", "failover-moved",
})

EVENTS = frozenset({
    "connect", "disconnect", "auth-ok", "auth-failed", "logout", "auth-timeout", "denied",
    "lockout", "reload", "tls-handshake-failed", "upstream-lost", "upstream-auth-fallback",
    "shutdown", "suppressed",
    # where the upstream is (server.open_upstream, sentinel.py) and the worker processes
    *UPSTREAM_EVENTS, "worker-restart", "worker-gave-up",
})
# Never rate limited: rare by construction, and what an operator must always see.
_ALWAYS = frozenset({"reload", "shutdown", "suppressed", "master-changed", "failover-moved",
                     "worker-restart", "worker-gave-up"})

# auth-failed reasons (login.Outcome and auth_throttle, in the audit's words).
AUTH_REASONS = {
    "unknown-user": "unknown-user", "wrong-password": "wrong-password",
    "password-required": "wrong-password", "disabled": "disabled",
    "cert-required": "cert-only", "cert-mismatch": "cert-only", "cert-unmapped": "cert-unmapped",
}


@dataclass(frozen=True, slots=True)
class Peer:
    """A client connection as the audit names it."""
    id: int | None        # the proxy's connection id (None: before there is one, a TLS handshake)
    host: str
    port: int
    tls_identity: str | None = None   # the verified certificate's description (escaped)

    @property
    def client(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# An event's JSON object after "ts" (Event.record; named here: inside Event, `object` is a field).
AuditRecord = dict[str, object]


@dataclass(frozen=True, slots=True)
class Event:
    """One audit event. Which fields an event kind carries:

    connect              (peer, user when logged in at connect by a certificate or nopass)
    disconnect           reason, duration (s), commands (requests received)
    auth-ok              via (password/certificate/nopass), method (auth/hello/connect/reset)
    auth-failed          user (the name tried: login_name), reason (AUTH_REASONS values or
                         locked-out), via
    logout               via (RESET)
    auth-timeout         (limits.auth_timeout passed before a login)
    denied               command, subcommand, kind (command|key|channel|script|database|
                         keyspace|secret), object (the key, channel or SHA1; escaped, cut),
                         rule (the rule family that refused it), report_only, reason
    lockout              scope (address|user), seconds, failures, window
    reload               ok, problems
    tls-handshake-failed reason
    upstream-lost        reason
    upstream-auth-fallback  reason (which password: "reference|current|previous password"), ok
    cluster-*            upstream.cluster's events (node, previous, slots, stage, ...): see the
                         block "Redis Cluster events" below
    shutdown             reason, grace (s)
    suppressed           event_suppressed, count

    The upstream's (no user, no peer; `master` is upstream.sentinel.master where there is one):
    upstream-unreachable address (the master dialled; none: no master known), reason
    sentinel-error       sentinel, stage (query|subscription), reason
    resolution-failed    master, reason (no sentinel named a usable master, and when)
    master-rejected      master, address (named as master), sentinel (who named it, if one
                         did), reason (unreachable, ROLE not master, AUTH refused, ...)
    failover-started     master, old (the master left), sentinel, channel (+try-failover ...)
    switch-master        master, old, new, sentinel (the +switch-master as announced)
    master-changed       master, old (none: the first one known), new, reason (ROLE verified)
    failover-lifted      master, address (still the master), reason (an aborted failover)
    failover-moved       old, clients (own connections closed), links (shared links moved),
                         reason
    worker-restart       worker, pid, reason, seconds (until the restart)
    worker-gave-up       worker, pid, reason, failures (quick deaths in a row)
    """
    event: str
    user: str | None = None
    peer: Peer | None = None
    info: str = ""                       # the connection's client_info (the plain-text form)
    reason: str | None = None
    via: str | None = None
    method: str | None = None
    duration: float | None = None
    commands: int | None = None
    command: str | None = None
    subcommand: str | None = None
    kind: str | None = None
    object: str | None = None
    rule: str | None = None
    report_only: bool | None = None
    scope: str | None = None
    address: str | None = None
    # upstream.cluster events (no user, no connection): a node as ``host:port``
    node: str | None = None
    previous: str | None = None
    slots: int | None = None   # (and `stage`, declared with the Sentinel fields below)
    moved: int | None = None
    ask: int | None = None
    nodes: tuple[str, ...] | None = None
    seconds: float | None = None
    failures: int | None = None
    window: float | None = None
    ok: bool | None = None
    problems: tuple[str, ...] | None = None
    grace: float | None = None
    event_suppressed: str | None = None
    count: int | None = None
    master: str | None = None
    sentinel: str | None = None
    stage: str | None = None
    old: str | None = None
    new: str | None = None
    channel: str | None = None
    clients: int | None = None
    links: int | None = None
    worker: int | None = None
    pid: int | None = None

    def record(self) -> AuditRecord:
        """The JSON object's fields after ``ts``: the event, the user (null when there is none),
        the connection, then the fields that are set."""
        out: AuditRecord = {"event": self.event, "user": self.user}
        peer = self.peer
        if peer is not None:
            out["client"] = peer.client
            if peer.id is not None:
                out["conn"] = peer.id
            if peer.tls_identity:
                out["tls_identity"] = peer.tls_identity
        for f in _FIELDS:
            value = getattr(self, f)
            if value is not None:
                out[f] = list(value) if isinstance(value, tuple) else value
        return out

    def text(self) -> str | None:
        """Today's plain-text line for this event, or None where there is none."""
        render = _TEXT.get(self.event)
        return render(self) if render is not None else None


_FIELDS = tuple(f.name for f in fields(Event)
                if f.name not in ("event", "user", "peer", "info"))
_WARNING = frozenset({"auth-failed", "lockout", "tls-handshake-failed", "upstream-lost",
                      "worker-restart", "upstream-auth-fallback", *UPSTREAM_EVENTS})
_ERROR = frozenset({"worker-gave-up", "resolution-failed"})


def _text_connect(e: Event) -> str | None:
    if e.peer is None or not e.peer.tls_identity:
        return None
    return f"tls-client cert={e.peer.tls_identity} user={e.user or '-'} client={e.info}"


# The proxy's own reasons for closing a connection that the plain-text form shows too (the limits).
_TEXT_CLOSES = frozenset({"max-clients-per-user", "idle-timeout", "max-clients"})


def _text_disconnect(e: Event) -> str | None:
    if not (e.reason or "").startswith("reload:") and e.reason not in _TEXT_CLOSES:
        return None
    return f"disconnect user={e.user} reason={e.reason} client={e.info}"


def _text_auth_failed(e: Event) -> str | None:
    if e.reason == "locked-out":
        return None   # (counted, not written one by one, in the plain-text form)
    return f"auth-failed user={e.user} client={e.info} reason={e.reason}"


def _text_lockout(e: Event) -> str:
    who = f"user={e.user}" if e.scope == "user" else f"addr={e.address}"
    return (f"auth-lockout scope={e.scope} {who} seconds={e.seconds:g} "
            f"after={e.failures}-failures-in-{e.window:g}s client={e.info}")


def _text_denied(e: Event) -> str:
    mode = "report-only" if e.report_only else "denied"
    command = e.command if e.subcommand is None else f"{e.command}|{e.subcommand}"
    kind = "keyspace" if e.kind == "database" else e.kind
    obj = command if kind == "script" else e.object   # (the SHA1 is in the reason)
    return (f"{mode} user={e.user} command={command} kind={kind} object={obj} "
            f"client={e.info} reason={e.reason}")


def _text_tls_failed(e: Event) -> str:
    return f"tls-handshake-failed client=addr={e.peer.client if e.peer else '-'} reason={e.reason}"


def _text_suppressed(e: Event) -> str:
    return f"suppressed user={e.user or '-'} event={e.event_suppressed} count={e.count}"


def _text_upstream(*names: str) -> Callable[[Event], str]:
    """`event name=value ... reason=...` of the fields named (unset ones left out); the reason,
    free text, last."""
    def render(e: Event) -> str:
        parts = [e.event] + [f"{n}={getattr(e, n)}" for n in names if getattr(e, n) is not None]
        if e.reason is not None:
            parts.append(f"reason={e.reason}")
        return " ".join(parts)
    return render


def _first_word(text: str | None) -> str:
    """(upstream-auth-fallback's reason is always "<which> password"; "-" if it is not.)"""
    words = (text or "").split()
    return words[0] if words else "-"


def _text_worker(e: Event) -> str:
    # (the reason's spaces as dashes: as these lines were before the audit had events)
    reason = (e.reason or "-").replace(" ", "-")
    return f"{e.event} worker={e.worker} pid={e.pid or '-'} reason={reason}"


_TEXT: dict[str, Callable[[Event], str | None]] = {
    "upstream-unreachable": _text_upstream("address"),
    "sentinel-error": _text_upstream("master", "sentinel", "stage"),
    "resolution-failed": _text_upstream("master"),
    "master-rejected": _text_upstream("master", "address", "sentinel"),
    "failover-started": _text_upstream("master", "old", "sentinel", "channel"),
    "switch-master": _text_upstream("master", "old", "new", "sentinel"),
    "master-changed": _text_upstream("master", "old", "new"),
    "failover-lifted": _text_upstream("master", "address"),
    "failover-moved": _text_upstream("old", "clients", "links"),
    "worker-restart": _text_worker,
    "worker-gave-up": _text_worker,
    "connect": _text_connect,
    "disconnect": _text_disconnect,
    "auth-ok": lambda e: f"login user={e.user} via={e.via} client={e.info}",
    "auth-failed": _text_auth_failed,
    "logout": lambda e: f"logout user={e.user} via={e.via} client={e.info}",
    "auth-timeout": lambda e: f"auth-timeout client={e.info}",
    "denied": _text_denied,
    "lockout": _text_lockout,
    "tls-handshake-failed": _text_tls_failed,
    "suppressed": _text_suppressed,
    "upstream-auth-fallback": lambda e: (f"upstream-auth-fallback password={_first_word(e.reason)} "
                                         f"ok={str(e.ok).lower()} client={e.info}"),
}


# ---------------------------------------------------------------------------- Redis Cluster events
# upstream.cluster: cluster/io.py's ClusterMap emits these, with the nodes' addresses (``host:port``
# as the cluster names them: printable, still passed through `safe`), never a user or a
# connection. Rate limited like every kind (a node lost under 1,000 clients is reported once per
# 5 s anyway). The emitter writes the process-log line itself (logger ``redisgate``), so
# without an `audit:` section these are not written a second time.
#
#   cluster-node-unreachable  node, stage (connect: could not be opened; lost: an open
#                             connection was lost; refresh: did not answer CLUSTER SLOTS; login:
#                             refused the proxy's login; protocol: a malformed reply), reason
#   cluster-refresh-failed    problems (``host:port (why)`` per node asked, at most 8)
#   cluster-failover          node (the new master: the old one's replica), previous, slots
#   cluster-slots-moved       node (the new owner), previous (none: the slots had no master), slots
#                             (a resharding, or slots served again)
#   cluster-slots-unserved    previous (the master they had), slots (left without a master)
#   cluster-redirect-storm    count (MOVED/ASK followed within a second, past 100), moved, ask,
#                             nodes (``from->to`` pairs, most redirected first, at most 8)

CLUSTER_EVENTS = frozenset({
    "cluster-node-unreachable", "cluster-refresh-failed", "cluster-failover",
    "cluster-slots-moved", "cluster-slots-unserved", "cluster-redirect-storm",
})
EVENTS = EVENTS | CLUSTER_EVENTS
_WARNING = _WARNING | CLUSTER_EVENTS
_OWN_LOG_LINE = CLUSTER_EVENTS   # written to the process log by their emitter (see above)


def _text_cluster_storm(e: Event) -> str:
    return (f"cluster-redirect-storm count={e.count} moved={e.moved} ask={e.ask} "
            f"nodes={','.join(e.nodes or ()) or '-'}")


_TEXT.update({
    "cluster-node-unreachable":
        lambda e: f"cluster-node-unreachable node={e.node} stage={e.stage} reason={e.reason}",
    "cluster-refresh-failed":
        lambda e: f"cluster-refresh-failed problems={'; '.join(e.problems or ())}",
    "cluster-failover":
        lambda e: f"cluster-failover node={e.node} previous={e.previous} slots={e.slots}",
    "cluster-slots-moved":
        lambda e: f"cluster-slots-moved node={e.node} previous={e.previous or '-'} slots={e.slots}",
    "cluster-slots-unserved":
        lambda e: f"cluster-slots-unserved previous={e.previous} slots={e.slots}",
    "cluster-redirect-storm": _text_cluster_storm,
})


# ---------------------------------------------------------------------------- formatting

_second: list[int | str | None] = [None, ""]   # the last whole second formatted, and its text


def rfc3339(created: float) -> str:
    """``2026-12-07T05:30:01.123Z`` for a time.time() value."""
    whole = int(created)
    cached = _second
    if cached[0] != whole:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))
        cached[0] = whole
    return f"{cached[1]}{int((created - whole) * 1000):03d}Z"


class JSONFormatter(logging.Formatter):
    """One JSON object per record (json.dumps: escaping is the json module's, ASCII only). A
    record that was not made by `emit` (someone logged to ``redisgate.audit`` directly) becomes
    ``{"ts", "event": "log", "level", "message"}``."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "audit_event", None)
        out: AuditRecord = {"ts": rfc3339(record.created)}
        if isinstance(event, Event):
            out.update(event.record())
        else:
            out.update(event="log", level=record.levelname.lower(), message=record.getMessage())
        return json.dumps(out, ensure_ascii=True, separators=(",", ":"), default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"   # as the process log's


class AuditFile(logging.FileHandler):
    """A file handler that creates the file 0640, appends, and re-opens it on `reopen()` (after
    logrotate renamed it). Lines written between the rename and the re-open stay in the renamed
    file: nothing is lost."""

    def __init__(self, path: str):
        super().__init__(path, mode="a", encoding="utf-8", delay=False)

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o640)
        return open(fd, "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        self.acquire()
        try:
            stream = self._open()   # (first: if it fails, the old stream stays in use)
            old, self.stream = self.stream, stream
            if old is not None:
                old.close()
        finally:
            self.release()


# ---------------------------------------------------------------------------- rate limit

class _Limiter:
    """At most `rate` lines a second of each kind of event (so a flood of denials cannot hide a
    login or a lockout); past that, per (user, event), a count that `flush` turns into one
    ``suppressed`` line (at the next second, by a timer on the running loop, or at the next
    event or `configure`)."""

    MAX_KEYS = 10_000   # distinct (user, event) pairs counted per second; the rest share one

    def __init__(self, rate: int):
        self.rate = rate
        self.second = int(time.monotonic())
        self.used: dict[str, int] = {}   # lines written this second, per event kind
        self.dropped: dict[tuple[str | None, str], int] = {}
        self.timer: asyncio.TimerHandle | None = None

    def admit(self, kind: str, user: str | None) -> bool:
        now = int(time.monotonic())
        if now != self.second:
            self.flush()
            self.second = now
            self.used.clear()
        used = self.used.get(kind, 0)
        if used < self.rate or kind in _ALWAYS:
            self.used[kind] = used + 1
            return True
        if user is not None and user.startswith(UNKNOWN + ":"):
            user = UNKNOWN   # (one summary for every unknown name: a bounded set of keys)
        key = (user, kind)
        if key not in self.dropped and len(self.dropped) >= self.MAX_KEYS:
            key = (None, kind)
        self.dropped[key] = self.dropped.get(key, 0) + 1
        if self.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                self.timer = loop.call_later(max(0.001, self.second + 1 - time.monotonic()),
                                             _flush_timer, self)
        return False

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        dropped, self.dropped = self.dropped, {}
        for (user, kind), n in dropped.items():
            _write(Event("suppressed", user=user, event_suppressed=kind, count=n))


def _flush_timer(limiter: _Limiter) -> None:
    with _lock:
        limiter.timer = None
        if limiter is _state.limiter:
            limiter.flush()


# ---------------------------------------------------------------------------- the emitter

class AuditError(Exception):
    """The audit file cannot be opened; str() is a `where: why` line."""


@dataclass
class _State:
    settings: AuditSettings | None = None   # None: no `audit:` section
    handler: logging.Handler | None = None
    limiter: _Limiter | None = None
    json: bool = False
    workers: int = 1                   # `serve --workers N`: this process writes rate/N (share_rate)


_state = _State()
_lock = threading.RLock()   # (tests run proxies in threads of one process)


def emit(event: Event, admitted: bool = False) -> None:
    """Audit `event` (see the module docstring). `admitted`: `wanted` said yes just before."""
    with _lock:
        limiter = _state.limiter
        if not admitted and limiter is not None and not limiter.admit(event.event, event.user):
            return
        _write(event)


def wanted(event: str, user: str | None = None) -> bool:
    """Whether an event of kind `event` for `user` is to be written now, for callers that can
    skip building it: False without an `audit:` section when the process log would drop it (or
    it has no plain-text form), or when the rate limit replaces it (then it is counted in the
    ``suppressed`` summary already). After True, call ``emit(event, admitted=True)``."""
    if _state.settings is None:
        return event in _TEXT and event not in UPSTREAM_EVENTS and event not in _OWN_LOG_LINE \
            and logger.isEnabledFor(logging.ERROR if event in _ERROR else logging.WARNING
                                    if event in _WARNING else logging.INFO)
    with _lock:
        limiter = _state.limiter
        return limiter is None or limiter.admit(event, user)


def _write(event: Event) -> None:
    kind = event.event
    level = logging.ERROR if kind in _ERROR else logging.WARNING if kind in _WARNING \
        else logging.INFO
    if (kind in UPSTREAM_EVENTS or kind in _OWN_LOG_LINE) and _state.settings is None:
        return   # (the process log has its line)
    if not logger.isEnabledFor(level):
        return
    text = event.text()
    if text is None:
        if not _state.json:
            return
        text = event.event
    # (makeRecord + handle: logger.log's look for the caller's frame is most of its cost)
    record = logger.makeRecord(logger.name, level, "", 0, text, (), None,
                               extra={"audit_event": event})
    logger.handle(record)


def configure(settings: AuditSettings | None,
              base_dir: str | os.PathLike[str] | None = None) -> None:
    """Apply an `audit:` section (config.AuditSettings: path, rate, format), or None for the
    plain-text lines through the process's log handlers. Opens the file now: raises OSError if
    it cannot be. The same settings again: nothing changes (the file stays open)."""
    with _lock:
        if settings == _state.settings and (settings is None or _state.handler is not None):
            return
        handler: logging.Handler | None = None
        if settings is not None:
            if settings.path == "-":
                handler = logging.StreamHandler(sys.stdout)
            else:
                path = settings.path
                if base_dir is not None and not os.path.isabs(path):
                    path = os.path.join(base_dir, path)
                try:
                    handler = AuditFile(path)
                except OSError as e:
                    raise AuditError(f"audit.path: cannot open {path!r}: "
                                     f"{e.strerror or e}") from None
            handler.setFormatter(JSONFormatter() if settings.format == "json"
                                 else logging.Formatter(TEXT_FORMAT))
        if _state.limiter is not None:
            _state.limiter.flush()   # (with the old handler)
        old = _state.handler
        if old is not None:
            logger.removeHandler(old)
            old.close()
        _state.settings, _state.handler = settings, handler
        _state.json = settings is not None and settings.format == "json"
        _state.limiter = _Limiter(max(1, settings.rate // _state.workers)) \
            if settings is not None and settings.rate else None
        if handler is not None:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)   # the audit does not follow log.level
            logger.propagate = False        # (not also on stderr)
        else:
            logger.setLevel(logging.NOTSET)
            logger.propagate = True


def share_rate(workers: int) -> None:
    """This process is one of `workers` workers of `serve --workers N` (called before
    `configure`): each writes at most ``audit.rate // N`` lines a second of each kind (at least
    1), so that the group together stays within `audit.rate`. Each worker summarises what it
    suppressed itself (one ``suppressed`` line per worker, user and kind a second)."""
    with _lock:
        _state.workers = max(1, int(workers))


def configured() -> bool:
    """Whether an `audit:` section is in force (else the plain-text lines of the process log)."""
    return _state.settings is not None


def reopen() -> None:
    """Re-open the audit file (SIGHUP, `redisgate reload`: after logrotate moved it)."""
    with _lock:
        if isinstance(_state.handler, AuditFile):
            _state.handler.reopen()


def flush() -> None:
    """Write the pending ``suppressed`` summaries now (at shutdown)."""
    with _lock:
        if _state.limiter is not None:
            _state.limiter.flush()
