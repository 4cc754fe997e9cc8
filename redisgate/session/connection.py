"""Connection commands and login for the session: AUTH, HELLO, QUIT, RESET, SELECT, CLIENT
REPLY, CLIENT TRACKING's REDIRECT check; the automatic login, the password login, the reload
re-check and limits.max_clients_per_user.

Every login goes through login.decide_login (passwords, bindings and password requirements are
read there only): this module decides nothing about credentials of its own.

May import: the protocol and policy modules (resp, errors, login, audit, options, ...) and the
session package's replies and upstream; never server.py, asyncio or sockets. The session
(machine.Session) is passed in.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..protocol import errors
from ..telemetry.audit import AUTH_REASONS, login_name, safe, user_label
from ..protocol.commands import CommandSpec
from ..policy.login import Method, Via, automatic_candidate, decide_login
from ..protocol.options import is_word, word
from ..protocol.resp import Request, encode_command, error, string2ll
from . import upstream
from .replies import DROP, FWD, SUBDROP

if TYPE_CHECKING:
    from ..config import UserEntry
    from .machine import Session

OK = b"+OK\r\n"


# -- the commands

def cmd_auth(s: Session, args: list[bytes]) -> None:
    if not s.resp3 and s.pubsub.any():   # (RESP2 subscribed mode, as in Redis)
        return s.reject(errors.pubsub_context(s.gate.upstream_version, "auth"))
    if len(args) > 3:
        return s.reject(error("ERR syntax error"))
    if s.tx.active:
        return s.reject(errors.not_in_multi())
    user, password = (None, args[1]) if len(args) == 2 else (args[1], args[2])
    err = authenticate(s, user, password)
    if not s._dead:   # (dead: refused by max_clients_per_user, answered already)
        s.replies.local(err or OK)


def cmd_hello(s: Session, args: list[bytes]) -> None:
    version = s.gate.upstream_version
    if version < (6, 0, 0):
        # Redis < 6 has no HELLO, whatever its arguments (HELLO 2 included): its own
        # unknown-command error, which go-redis and redis-py take as "fall back to RESP2 +
        # AUTH", minus the credentials. Refused like any unknown command: inside MULTI it
        # dooms the transaction, and commands behind it are judged as before.
        return s.reject(errors.legacy_hello(version, args))
    if not s.resp3 and s.pubsub.any():   # (RESP2 subscribed mode, as in Redis)
        return s.reject(errors.pubsub_context(version, "hello"))
    if s.tx.active:
        return s.reject(errors.not_in_multi())
    # Redis 6.2/7.0's helloCommand, step by step: the protocol (string2ll), then each option
    # in order, acting at once: an AUTH logs in (or fails) there and then, a SETNAME is
    # checked there; a later error leaves an earlier login (and name) in place.
    proto = None
    if len(args) >= 2:
        proto = string2ll(args[1])
        if proto is None:
            return s.replies.local(error("ERR Protocol version is not an integer or out of range"))
        if proto < 2 or proto > 3:
            return s.replies.local(errors.noproto())
    setname = None
    i = 2
    while i < len(args):
        opt = args[i].split(b"\0", 1)[0]   # as Redis prints it (%s stops at a NUL)
        more = len(args) - i - 1
        if is_word(args[i], b"auth") and more >= 2:
            err = authenticate(s, args[i + 1], args[i + 2], via=Via.HELLO)
            if s._dead:   # (refused by max_clients_per_user, answered already)
                return
            if err is not None:
                return _hello_failed(s, err, setname)
            i += 3
        elif is_word(args[i], b"setname") and more >= 1:
            if not _valid_client_name(args[i + 1]):
                return _hello_failed(s, error("ERR Client names cannot contain spaces, "
                                              "newlines or special characters."), setname)
            setname = args[i + 1]
            i += 2
        else:
            return _hello_failed(
                s, error(b"ERR Syntax error in HELLO option '" + opt + b"'"), setname)
    if s.user_entry is None:
        return s.replies.local(errors.noauth_hello())
    if proto is not None:
        s.resp3 = proto == 3
    if s.up.shared and setname is None:
        # A shared link's protocol is not one client's to switch, nor its id one to show:
        # answered here, in the upstream's own words (Gate.hello_reply), with the proxy's id
        # for the client. Its next commands go to links of its protocol (upstream.bound), or,
        # with replies still due on the old one, to a connection of its own.
        upstream.bound(s)
        return s.replies.local(s.gate.hello_reply(s.resp3, s.client_id))
    fwd = [b"HELLO"] + ([str(proto).encode()] if proto else [])
    if setname is not None:
        fwd += [b"SETNAME", setname]
    upstream.send(s, encode_command(fwd))   # (a name: off a shared link)
    s.expect(FWD, 1)


def _hello_failed(s: Session, reply: bytes, setname: bytes | None) -> None:
    """HELLO stopped at an option: as in Redis, a name set by an earlier SETNAME stays (on
    a logged-in connection; before login the proxy has no connection to name)."""
    if setname is not None and s.user_entry is not None:
        upstream.send(s, encode_command([b"CLIENT", b"SETNAME", setname]))
        s.expect(DROP, 1)
    s.replies.local(reply)


def hello_without_auth(args: list[bytes]) -> bool:
    return not any(is_word(a, b"auth") for a in args[2:])


def cmd_quit(s: Session, args: list[bytes]) -> None:
    s.replies.local(OK)
    s.close_after()
    s._dead = True
    s.end_reason = "quit"


def cmd_reset(s: Session, args: list[bytes]) -> None:
    """RESET: the client starts over; the upstream connection keeps the proxy's identity."""
    s.replies.reset()   # (CLIENT REPLY OFF goes, and RESET replies unless SKIPped)
    up = s.up
    reply: bytes | None
    if up.shared:
        # A shared client has no connection state to reset; its protocol goes back to RESP2
        # below, and its next commands to RESP2 links (see upstream.bound).
        reply = b"+RESET\r\n"
    elif up.ready or up.want:
        if s.gate.upstream_version >= (6, 2, 0):
            upstream.send(s, b"*1\r\n$5\r\nRESET\r\n")
            s.expect(FWD, 1)
            upstream.send_setup(s)
            reply = None
        else:
            if s.tx.active:
                upstream.send(s, b"*1\r\n$7\r\nDISCARD\r\n")
                s.expect(DROP, 1)
            if s.pubsub.any():
                n = 0
                for cmd, kind in ((b"UNSUBSCRIBE", "chan"), (b"PUNSUBSCRIBE", "pat")):
                    upstream.send(s, encode_command([cmd]))
                    n += max(1, len(s.pubsub.subs[kind]))
                s.expect(SUBDROP, n)
            else:
                upstream.send(s, b"*1\r\n$7\r\nUNWATCH\r\n")
                s.expect(DROP, 1)
            if s.db != s.home_db:
                upstream.send(s, encode_command([b"SELECT", str(s.home_db).encode()]))
                s.expect(DROP, 1)
            reply = b"+RESET\r\n"
    else:
        reply = b"+RESET\r\n"
    if reply:
        s.replies.local(reply)
    s.resp3 = False
    if up.shared:
        upstream.bound(s)
    s.tx.end()
    s.pubsub.clear()
    s.db = s.home_db
    if s.user_entry is not None:
        s.audit("logout", user=safe(s.username), via="RESET")
    s.user_entry = None
    s.username = None
    s.login_method = None
    release(s)
    s.parser.set_authenticated(False)
    auto_login(s, Via.RESET)


def cmd_client_reply(s: Session, spec: CommandSpec, args: list[bytes], req: Request) -> None:
    """CLIENT REPLY ON|OFF|SKIP (networking.c clientCommand), answered here on every link:
    the upstream is never asked, so it always replies, and the reply order swallows the replies
    Redis would not send. OFF and SKIP reply nothing, ON replies +OK even when muted
    (Redis clears the flags, then replies); SKIP under OFF does nothing."""
    if not s.resp3 and s.pubsub.any():   # (RESP2 subscribed mode: Redis refuses it)
        return s.reject(errors.pubsub_context(s.gate.upstream_version, spec.name))
    if s.tx.active:
        # Queued, Redis would change the flags halfway through EXEC's reply array and
        # break it; refused (and the transaction with it).
        return s.reject(error("ERR CLIENT REPLY inside MULTI is not supported through "
                              "redisgate"))
    mode = word(args[2])
    replies = s.replies
    if mode == b"on":
        replies.reply_on()
        replies.local(OK)
    elif mode == b"off":
        replies.reply_off()
    elif mode == b"skip":
        replies.reply_skip()
    else:
        s.reject(b"-ERR syntax error\r\n")


def cmd_select(s: Session, spec: CommandSpec, args: list[bytes], req: Request) -> None:
    # The judge has refused databases outside the user's list already; a malformed index
    # (allowed only with allkeys) gets Redis's own error from upstream. Redis reads the index
    # with string2ll (no sign but '-', no leading zeros): `SELECT 05` switches nothing.
    if not s.resp3 and s.pubsub.any():   # (RESP2 subscribed mode: Redis refuses it)
        return s.reject(errors.pubsub_context(s.gate.upstream_version, "select"))
    index = string2ll(args[1])
    if index is not None and index >= 0:
        s.db = index
    s.forward(req)


def tracking_redirect(args: list[bytes]) -> bool:
    """Does CLIENT TRACKING name a REDIRECT target, as Redis parses its options (networking.c:
    REDIRECT and PREFIX take a value when one follows; anything else is a flag or an error)?"""
    j = 3
    while j < len(args):
        opt = word(args[j])
        more = j + 1 < len(args)
        if opt == b"redirect" and more:
            return True
        j += 2 if opt == b"prefix" and more else 1
    return False


def _valid_client_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)


# -- login

def auto_login(s: Session, via: Via, wait: bool = True) -> None:
    """The login without credentials, at connect and after RESET: the certificate's user, else
    a nopass `default` (login.decide_login says whether). Past max_clients_per_user, a
    certificate's user is refused (and the connection closed) at once; `default` waits for
    the first command that needs it (`wait`; see Session.default_waiting), as the connection
    may AUTH as another user first."""
    s.default_waiting = False
    entry = automatic_candidate(s.gate.users, s.cert)
    if entry is None:
        return
    result = decide_login(entry, password=None, via=via, cert=s.cert)
    if result.ok:
        assert result.method is not None
        if not claim(s, entry):
            if wait and s.cert is None:
                s.default_waiting = True
                return
            return refuse_max_clients(s)
        _login(s, entry, via=result.method.value, method=result.method, attempt=via)
    elif result.outcome.value == "disabled":
        # A certificate (or a nopass default) naming a user that is not `on`: its client
        # gets a bare NOAUTH; the audit says why. (No password was checked: no throttle.)
        s.audit("auth-failed", user=safe(entry.name), reason="disabled", via=via.value)


def _login(s: Session, entry: UserEntry, via: str, *, method: Method, attempt: Via) -> None:
    s.default_waiting = False
    s.user_entry = entry
    s.username = entry.name
    s.login_method = method
    s.parser.set_authenticated(True)
    s.audit("auth-ok", user=safe(entry.name), via=via, method=attempt.value)
    up = s.up
    if not up.ready and not up.want:
        if s.gate.config.upstream.multiplex and not up.ever and s.db == s.home_db:
            # A fresh connection has no state: a shared link will do. The I/O layer picks
            # one that speaks the client's protocol when the first command comes.
            up.share(s.resp3)
        else:
            upstream.open_(s)


def authenticate(s: Session, username: bytes | None, password: bytes,
                 via: Via = Via.AUTH) -> bytes | None:
    """Check credentials (login.decide_login); log in on success. Returns the error reply on
    failure: the same one whatever the reason."""
    gate = s.gate
    version = gate.upstream_version
    raw_name = b"default" if username is None else username
    try:
        entry = gate.users.get(raw_name.decode())
    except UnicodeDecodeError:
        entry = None
    if username is None and entry is not None and entry.user.nopass and entry.user.enabled:
        return error("ERR AUTH <password> called without any password configured for the "
                     "default user. Are you sure your configuration is correct?")
    throttle = gate.throttle
    if throttle.locked(s.address, raw_name):
        # auth_throttle: refused without checking, with a wrong password's reply, the same
        # for every name (a lockout tells nothing about which users exist).
        _auth_failed(s, raw_name, "locked-out", via)
        return errors.wrongpass(version)
    result = decide_login(entry, password=password, via=via, cert=s.cert)
    if not result.ok:
        _auth_failed(s, raw_name, AUTH_REASONS.get(result.outcome.value,
                                                   result.outcome.value), via)
        return errors.wrongpass(version)
    assert entry is not None and result.method is not None
    throttle.succeeded(s.address, raw_name)
    if not claim(s, entry):
        # Past limits.max_clients_per_user: refused and closed (the caller sees `_dead`).
        refuse_max_clients(s)
        return None
    _login(s, entry, via=result.method.value, method=result.method, attempt=via)
    _adopt_user_state(s)
    return None


def _auth_failed(s: Session, raw_name: bytes, reason: str, via: Via) -> None:
    """Record a refused login: ACL LOG, audit, metrics, auth_throttle. What a client sent as
    a name shows only if it names a configured user (it may be a password typed into the
    wrong slot): else `unknown` (ACL LOG, metrics) or `unknown:<8 hex>` (audit). `reason`:
    an audit.AUTH_REASONS value, or "locked-out" (auth_throttle refused it unchecked)."""
    gate = s.gate
    users = gate.users
    label = user_label(raw_name, users)
    gate.acl_log.add("auth", "toplevel", "AUTH", label, s.client_info)
    shown = login_name(raw_name, users)
    s.audit("auth-failed", user=shown, reason=reason, via=via.value)
    s.metric("auth_failures", label, reason)
    throttle = gate.throttle
    if reason == "locked-out":
        # Counted; the audit's rate limit (or, without an `audit:` section, the plain-text
        # form, which leaves these out) keeps a flood from filling the disk.
        s.stall = throttle.delay
        s.metric("auth_refused_locked")
        return
    for scope in throttle.failed(s.address, raw_name):
        t = throttle.settings
        s.audit("lockout", user=shown if scope == "user" else None, scope=scope,
                address=safe(s.address), seconds=t.lockout,
                failures=t.max_failures, window=t.window)
        s.metric("auth_lockouts", scope)
        s.stall = throttle.delay


def _adopt_user_state(s: Session) -> None:
    """After a login on a connection that may hold another user's state: what the new user
    may not hold goes. A database outside its `databases` goes back to the home database,
    subscriptions to channels or patterns it may not use are unsubscribed; the upstream's
    replies to both are swallowed. (A shared session has neither: SELECT and subscriptions
    move a client off the links.)"""
    if s.up.shared or s.user_entry is None:
        return
    user = s.user_entry.user
    dbs = s.databases()   # (a set, or the home database alone)
    if s.db != s.home_db and not user.has_allkeys \
            and not (s.db in dbs if isinstance(dbs, frozenset) else s.db == dbs):
        s.db = s.home_db
        upstream.send(s, encode_command([b"SELECT", str(s.home_db).encode()]))
        s.expect(DROP, 1)
    dropped = 0
    for kind, command in (("chan", b"UNSUBSCRIBE"), ("pat", b"PUNSUBSCRIBE"),
                          ("shard", b"SUNSUBSCRIBE")):
        subs = s.pubsub.subs[kind]
        gone = sorted(c for c in subs if not user.check_channel(c, pattern=kind == "pat"))
        if gone:
            subs.difference_update(gone)
            upstream.send(s, encode_command([command] + gone))
            dropped += len(gone)
    if dropped:
        s.expect(SUBDROP, dropped)


def refresh_user(s: Session) -> None:
    """After a reload: the certificate is mapped again, and the session keeps its user only if
    login.decide_login would still let it in by the route it took; else it is closed."""
    s._generation = s.gate.generation
    if s.cert is not None:
        s.cert = s.gate.remap_certificate(s.cert)
    if s.user_entry is None or s._dead:
        return
    entry = s.gate.users.get(s.username or "")
    result = decide_login(entry, password=None, via=Via.RELOAD, cert=s.cert,
                          proven=s.login_method)
    if not result.ok:
        # (audited as the disconnect's reason: ClientConnection.reloaded / connection_lost)
        s.end_reason = f"reload:{result.outcome.value}"
        s.user_entry = None
        release(s)
        s.parser.set_authenticated(False)
        s.close_after()
        s._dead = True
    else:
        s.user_entry = entry


def distrust_certificate(s: Session) -> None:
    """The listener's client CA no longer vouches for the connection's certificate."""
    if s.cert is not None and s.cert.trusted:
        s.cert = replace(s.cert, trusted=False)


# -- limits.max_clients_per_user

def claim(s: Session, entry: UserEntry) -> bool:
    """Count this connection for `entry`'s user (the one it was counted for, if another, is
    released), unless that user already has limits.max_clients_per_user connections."""
    if s.counted == entry.name:
        return True
    if not s.gate.claim_client(entry.name):
        return False
    release(s)
    s.counted = entry.name
    return True


def release(s: Session) -> None:
    if s.counted is not None:
        s.gate.release_client(s.counted)
        s.counted = None


def refuse_max_clients(s: Session) -> None:
    """A login past limits.max_clients_per_user: Redis's maxclients error, then the
    connection is closed (nothing the client sent after it is judged)."""
    s.end_reason = "max-clients-per-user"
    s.metric("clients_refused", "max_clients_per_user")
    s.replies.local(errors.max_clients())
    s.close_after()
    s._dead = True
