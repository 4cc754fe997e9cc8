"""Coverage-guided fuzz target for the session state machine (redisgate.session.Session), sans I/O.

A fuzz input becomes a pipeline of commands (AUTH as several users with right and wrong
passwords, HELLO in its forms, RESET, MULTI/EXEC/DISCARD/WATCH, SUBSCRIBE and friends, SELECT,
allowed and refused data commands, unknown commands, wrong arities, inline commands), cut into
reads at fuzz-chosen points (also inside a frame), fed to a Session built from a real config the
way server.ClientConnection feeds it: client_data() per read, then what it put in to_upstream is
"written" (to a shared link or to the client's own connection, by the same rule as
ClientConnection.pump), and a wanted upstream connection is opened at once or later.

The invariant: what is written upstream is exactly the commands an independent oracle allows,
each whole, in order, apart from the proxy's own commands (recognised exactly: its upstream AUTH,
SELECT of the home database, HELLO 2/3 [SETNAME], RESET, DISCARD, UNWATCH, (P|S)UNSUBSCRIBE).
The oracle parses nothing of the proxy's: it knows the commands it generated, and judges each with
commands.TABLE and rules.User.judge of users compiled separately from the session's, tracking only
what decides whether a command is forwarded (who is logged in, MULTI and whether it is doomed,
QUIT, the protocol). With upstream.multiplex, in addition: no command that changes connection
state (HELLO, RESET, SELECT, MULTI/EXEC, WATCH, subscriptions, CLIENT ..., blocking commands) is
written to a shared link, and a command on a shared link goes to a link of the protocol the client
speaks when it sends it.

Fake upstreams (FakeRedis: one per connection, a tagged `+R<n>` reply per command, subscription
confirmations, MULTI/EXEC, RESP2 subscribed mode) answer what is written, at once or after a
later read, whole or in two pieces; then the client's stream must be exactly one reply per
command, in order: the upstream's own bytes for a forwarded command, an error for a refused one,
one reply for one answered by the proxy (pipelines with a subscription inside MULTI are left out
of this part: Redis's answer to them is issue 23's finding 11 and differs by version).

Input: byte 0 is the mode (bit 0: upstream.multiplex 1; bit 1: upstream Redis 6.2 instead of 7.0;
bit 2: the upstream connection opens only when a command says so, not at once); then three bytes per
command: which command (MENU), its variant, and how it is sent (inline or not, where the read
ends, whether the upstream opens after it).

Run it (see fuzz/README.md):  python fuzz/fuzz_session.py -atheris_runs=1000000 [corpus dirs]
FUZZ_SESSION_IGNORE=kind,kind counts violations of those kinds (see Violation.kind) in
FUZZ_SESSION_FOUND (a file) instead of stopping, so a long run can go past a known bug.
The harness function `check(data)` is also what tests/test_fuzz_short.py runs under hypothesis.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import atheris
except ImportError:
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["redisgate"]):
        from redisgate.protocol import commands
        from redisgate import session as session_mod
        from redisgate.protocol.commands import TABLE, KeyExtractionError
        from redisgate.config import build_config
        from redisgate.session.gate import Gate
        from redisgate.protocol.resp import (ProtocolError, ReplyScanner, RequestParser,
                                             encode_command)
else:
    from redisgate.protocol import commands
    from redisgate import session as session_mod
    from redisgate.protocol.commands import TABLE, KeyExtractionError
    from redisgate.config import build_config
    from redisgate.session.gate import Gate
    from redisgate.protocol.resp import ProtocolError, ReplyScanner, RequestParser, encode_command

UPSTREAM_USER = b"gate"
UPSTREAM_PASSWORD = b"fuzz-upstream-secret"
PASSWORDS = {"app": b"app-pw", "none": b"none-pw", "multidb": b"multidb-pw", "worker": b"worker-pw"}


def _h(pw: bytes) -> str:
    return "#" + hashlib.sha256(pw).hexdigest()


def raw_config(multiplex: bool) -> dict:
    up = {"address": "127.0.0.1:1", "username": UPSTREAM_USER.decode(),
          "password": UPSTREAM_PASSWORD.decode()}
    if multiplex:
        up["multiplex"] = 1
    return {"listen": "127.0.0.1:1", "upstream": up, "users": {
        # The issue's restricted user; one with no command rights at all (finding 1's attacker);
        # one that may use two databases; an Asynq worker scoped to one queue.
        "app": f"on {_h(PASSWORDS['app'])} ~app:* &chan:* +@all -@dangerous",
        "none": f"on {_h(PASSWORDS['none'])}",
        "multidb": {"rules": f"on {_h(PASSWORDS['multidb'])} ~app:* &chan:* +@all -@dangerous",
                    "databases": [0, 2]},
        "worker": {"rules": f"on {_h(PASSWORDS['worker'])}", "profile": "asynq-worker",
                   "queues": ["default"]},
    }}


_CONFIGS: dict = {}


def configs(multiplex: bool):
    """(the session's Config, the oracle's Config): the same text compiled twice, so the oracle's
    users share no memo with the session's."""
    got = _CONFIGS.get(multiplex)
    if got is None:
        got = _CONFIGS[multiplex] = tuple(build_config(raw_config(multiplex), allow_embedded=False)
                                          for _ in range(2))
    return got


USERS = ["app", "none", "multidb", "worker", "ghost"]
KEYS = [b"app:1", b"app:2", b"secret:1", b"asynq:{default}:pending", b"asynq:{critical}:pending",
        b"asynq:queues", b"asynq:{default}:t:1"]
CHANNELS = [b"chan:1", b"other:1", b"asynq:cancel"]


def _auth(v):
    user = USERS[v % len(USERS)]
    pw = PASSWORDS.get(user, b"x") if v & 8 else b"wrong"
    return [b"AUTH", user.encode(), pw]


def _hello(v):
    forms = [[b"HELLO"], [b"HELLO", b"2"], [b"HELLO", b"3"], [b"HELLO", b"4"], [b"HELLO", b"x"],
             [b"HELLO", b"2", b"SETNAME", b"n1"], [b"HELLO", b"3", b"SETNAME", b"bad name"],
             [b"HELLO", b"3", b"BOGUS"]]
    if v & 1:
        return _auth_hello(v >> 1)
    return forms[(v >> 1) % len(forms)]


def _auth_hello(v):
    _, user, pw = _auth(v)
    return [b"HELLO", b"3" if v & 16 else b"2", b"AUTH", user, pw]


def _key(v):
    return KEYS[v % len(KEYS)]


def _chan(v):
    return CHANNELS[v % len(CHANNELS)]


# Each entry: v (a byte) -> the command's arguments.
MENU = [
    _auth, _auth, _hello, _hello,
    lambda v: [b"AUTH", b"only-a-password"] if v & 1 else [b"AUTH", b"a", b"b", b"c"],
    lambda v: [b"RESET"],
    lambda v: [b"QUIT"] if v == 255 else [b"PING"],   # rare: it ends the pipeline
    lambda v: [b"GET", _key(v)],
    lambda v: [b"SET", _key(v), b"v"],
    lambda v: [b"MGET", _key(v), _key(v >> 3)],
    lambda v: [b"DEL", _key(v), _key(v >> 3)],
    lambda v: [b"INCR", _key(v)],
    lambda v: [b"HGETALL", _key(v)],
    lambda v: [b"ZSCORE", _key(v), b"m"],
    lambda v: [b"LPUSH", _key(v), b"x"],
    lambda v: [b"COPY", _key(v), _key(v >> 3)] + ([b"DB", b"%d" % (v >> 6)] if v & 32 else []),
    lambda v: [b"BLPOP", _key(v), b"0"],
    lambda v: [b"SADD", b"asynq:queues", b"default" if v & 1 else b"critical"],
    lambda v: [b"ZADD", b"asynq:servers", b"1", b"s"],
    lambda v: [b"PING", b"x"] if v & 1 else [b"ECHO", b"e"],
    lambda v: [b"FLUSHALL"] if v & 1 else [b"CONFIG", b"GET", b"maxmemory"],
    lambda v: [b"KEYS", b"*"] if v & 1 else [b"SCAN", b"0"] + ([b"MATCH", b"app:*"] if v & 2 else []),
    lambda v: [b"SELECT", b"%d" % (v % 4)],
    lambda v: [b"MULTI"],
    lambda v: [b"EXEC"],
    lambda v: [b"DISCARD"],
    lambda v: [b"WATCH", _key(v)] if v & 1 else [b"UNWATCH"],
    lambda v: [b"SUBSCRIBE", _chan(v)] + ([_chan(v >> 2)] if v & 128 else []),
    lambda v: [b"PSUBSCRIBE", b"chan:*" if v & 1 else b"*"],
    lambda v: [b"SSUBSCRIBE", _chan(v)],
    lambda v: [b"UNSUBSCRIBE"] + ([_chan(v)] if v & 1 else []),
    lambda v: [b"PUNSUBSCRIBE"],
    lambda v: [b"PUBLISH", _chan(v), b"hi"],
    lambda v: [b"CLIENT", [b"SETNAME", b"GETNAME", b"ID", b"INFO", b"NO-EVICT"][v % 5]]
    + ([b"nm"] if v % 5 == 0 else [b"on"] if v % 5 == 4 else []),
    lambda v: [b"READONLY"] if v & 1 else [b"WAIT", b"0", b"0"],
    lambda v: [b"ACL", b"WHOAMI"],
    lambda v: [[b"NOSUCHCMD"], [b"GET"], [b"CLIENT"], [b"CLIENT", b"NOSUCH"], [b"MONITOR"],
               [b"CLIENT", b"REPLY", b"ON"], [b"LMPOP", b"1", b"app:1", b"LEFT"]][v % 7],
    lambda v: [b"EVALSHA", b"0" * 40, b"1", _key(v)],
]

# What changes the connection's state or blocks it: never on a shared link (the list).
STATEFUL = {"hello", "reset", "auth", "select", "multi", "exec", "discard", "watch", "unwatch",
            "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
            "readonly", "readwrite", "wait", "blpop", "brpop", "blmove", "bzpopmin", "monitor",
            "quit"}


def stateful(args: list[bytes]) -> bool:
    name = args[0].lower().decode("latin-1")
    return name in STATEFUL or name == "client"


class Violation(AssertionError):
    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


# ---------------------------------------------------------------------------------- decoding

class Plan:
    def __init__(self, multiplex, version, lazy_connect, commands, inline, cuts, connects):
        self.multiplex, self.version, self.lazy_connect = multiplex, version, lazy_connect
        self.commands, self.inline, self.cuts, self.connects = commands, inline, cuts, connects


MAX_FAILED_LOGINS = 5


def _failed_login(args: list[bytes]) -> bool:
    name = args[0].upper()
    if name == b"AUTH":
        creds = args[1:]
    elif name == b"HELLO" and b"AUTH" in args:
        i = args.index(b"AUTH")
        creds = args[i + 1:i + 3]
    else:
        return False
    if len(creds) == 1:
        creds = [b"default"] + creds
    return len(creds) != 2 or PASSWORDS.get(creds[0].decode("latin-1")) != creds[1]


def decode(data: bytes, most: int = 48) -> Plan:
    flags = data[0] if data else 0
    cmds, inline, cuts, connects = [], [], [], []
    failures = 0
    for i in range(1, len(data) - 2, 3):
        if len(cmds) >= most:
            break
        pick, variant, how = data[i], data[i + 1], data[i + 2]
        args = MENU[pick % len(MENU)](variant)
        if _failed_login(args):
            # Fewer than any sensible brute-force threshold (issue 23: 10 a minute), so that a
            # throttle never changes the outcome of a later right password.
            failures += 1
            if failures > MAX_FAILED_LOGINS:
                args = [b"PING"]
        cmds.append(args)
        # how: bit 0 inline (when the arguments allow it); bits 1-2 where the read ends (0: not
        # here, 1 or 3: after this command, 2: inside its frame); bit 3: open the upstream after
        # this read (lazy mode).
        inline.append(bool(how & 1)
                      and all(a and not set(a) & set(b" \"'\\\r\n\t\x00") for a in args))
        cuts.append((how >> 1) & 3)
        connects.append(how & 0x38)   # bit 3: connect; bit 4: hold replies; bit 5: split them
    return Plan(bool(flags & 1), (6, 2, 14) if flags & 2 else (7, 0, 15), bool(flags & 4),
                cmds, inline, cuts, connects)


def reads_of(plan: Plan) -> list[tuple[bytes, int]]:
    """The client's bytes cut into reads: [(bytes, what happens after it)]: bit 3 opens the
    upstream (lazy mode); bit 4 holds the upstream's replies back until a later read; bit 5
    delivers them in two pieces."""
    reads, cur = [], bytearray()
    for args, inl, cut, conn in zip(plan.commands, plan.inline, plan.cuts, plan.connects):
        frame = b" ".join(args) + b"\r\n" if inl else encode_command(args)
        if cut == 2 and len(frame) > 1:
            mid = 1 + (len(frame) * 7 + len(cur)) % (len(frame) - 1)
            cur += frame[:mid]
            reads.append((bytes(cur), conn))
            cur = bytearray(frame[mid:])
        else:
            cur += frame
            if cut in (1, 3):
                reads.append((bytes(cur), conn))
                cur = bytearray()
    if cur:
        reads.append((bytes(cur), 8))
    return reads


# ---------------------------------------------------------------------------------- the oracle

class Expected:
    """A command that must reach Redis; `own`: the proxy's own (its DISCARD for a doomed EXEC),
    expected where it would come but not required, so that the client's commands and the
    proxy's are told apart when their bytes are the same."""
    __slots__ = ("args", "resp3", "own")

    def __init__(self, args, resp3, own=False):
        self.args, self.resp3, self.own = args, resp3, own


def oracle(plan: Plan, config) -> list[Expected]:
    """The commands that must reach Redis, in order, judged independently of the session."""
    version = plan.version
    out: list[Expected] = []
    user = None            # the logged-in UserEntry
    multi = dirty = False
    resp3 = False
    # The connection's subscriptions (chan, pat, shard), and those queued in MULTI: in RESP2,
    # with any, the connection is in subscribed mode, where AUTH and HELLO are refused (Redis).
    subs: dict[str, set] = {"chan": set(), "pat": set(), "shard": set()}
    queued: list[tuple[str, list[bytes]]] = []

    def subscribed() -> bool:
        return any(subs.values())

    def apply_sub(name: str, chans: list[bytes]) -> None:
        kind = _SUB_KIND[name.replace("un", "")]
        if name.startswith(("sub", "psub", "ssub")):
            subs[kind].update(chans)
        elif chans:
            subs[kind].difference_update(chans)
        else:
            subs[kind].clear()

    def login(name: bytes, pw: bytes) -> bool:
        nonlocal user
        n = name.decode("latin-1")
        entry = config.users.get(n)
        if entry is not None and PASSWORDS.get(n) == pw:
            user = entry
            # The new user holds only the subscriptions it may hold (the proxy unsubscribes
            # the rest by itself: its own UNSUBSCRIBE, recognised by proxy_own).
            for kind in subs:
                subs[kind] = {c for c in subs[kind]
                              if entry.user.check_channel(c, pattern=kind == "pat")}
            return True
        return False

    plan.quit = len(plan.commands)
    # The reply each command must get, in order (check_replies): "error" (one error reply), "one"
    # (one reply of any kind) or ("fwd", k): the upstream's reply to the k-th forwarded command.
    shapes = plan.shapes = []
    plan.skip_replies = False
    for index, args in enumerate(plan.commands):
        spec = TABLE.lookup(args)
        name = spec.name if spec is not None else None

        def refuse():
            nonlocal dirty
            shapes.append("error")
            if multi:
                dirty = True

        if spec is None or (not commands.available(spec, version)
                            and name not in ("hello", "reset", "auth", "quit")
                            and not name.startswith("acl")):
            refuse()
            continue
        if spec.is_container or not spec.check_arity(len(args)):
            refuse()
            continue
        if user is None and "no_auth" not in spec.flags:
            refuse()
            continue
        if name in ("auth", "hello", "multi", "select") and not resp3 and subscribed():
            refuse()   # Redis's "Can't execute 'auth'" in RESP2 subscribed mode
            continue
        if name == "auth":
            if len(args) > 3 or multi:
                refuse()
            else:
                shapes.append("one")
                login(b"default", args[1]) if len(args) == 2 else login(args[1], args[2])
            continue
        if name == "hello":
            if multi:
                refuse()
                continue
            shapes.append("one")
            proto = None
            if len(args) >= 2:
                try:
                    proto = int(args[1])
                except ValueError:
                    continue
                if not 2 <= proto <= 3:
                    continue
            creds = setname = None
            i, ok = 2, True
            while i < len(args):
                opt, more = args[i].lower(), len(args) - i - 1
                if opt == b"auth" and more >= 2:
                    creds, i = (args[i + 1], args[i + 2]), i + 3
                elif opt == b"setname" and more >= 1:
                    setname, i = args[i + 1], i + 2
                else:
                    ok = False
                    break
            if not ok or (creds is not None and not login(*creds)) or user is None:
                continue
            if setname is not None and not all(33 <= c <= 126 for c in setname):
                continue
            if proto is not None:
                resp3 = proto == 3
            continue   # forwarded in the proxy's own form (tolerated, never expected)
        if name == "quit":
            plan.quit = index
            shapes.append("one")
            break
        if name == "reset":
            shapes.append("one")
            user, multi, dirty, resp3 = None, False, False, False
            queued.clear()
            for kind in subs:
                subs[kind].clear()
            continue
        try:
            db = user.databases if user.databases is not None else config.upstream.db
            denial = user.user.judge(spec, args, db=db)
        except KeyExtractionError:
            denial = True
        if denial is not None or name in ("monitor", "sync", "psync", "replconf"):
            refuse()
            continue
        if name == "client|reply":
            # Answered here (session.connection.cmd_client_reply; the plans only send ON, which replies
            # +OK), refused in RESP2 subscribed mode and inside MULTI.
            if multi or (not resp3 and subscribed()):
                refuse()
            else:
                shapes.append("one")
            continue
        if name.startswith("acl|"):
            if multi:
                refuse()   # answered here; refused inside MULTI
            else:
                shapes.append("one")
            continue
        if name == "exec":
            doomed = multi and dirty
            multi = dirty = False
            ran, queued[:] = queued[:] if not doomed else [], []
            for sub_name, chans in ran:
                apply_sub(sub_name, chans)
            if doomed:
                shapes.append("error")   # EXECABORT; the proxy sends DISCARD instead
                out.append(Expected([b"DISCARD"], resp3, own=True))
                continue
        elif name == "multi":
            if not multi:
                multi, dirty = True, False
        elif name == "discard":
            multi = dirty = False
            queued.clear()
        elif multi and name in _SUBSCRIBE_FAMILY:
            # What Redis answers to a subscription queued in MULTI is the subject of issue 23's
            # finding 11 and differs by version: the fake upstream does not model it.
            plan.skip_replies = True
            queued.append((name, args[1:]))
        elif name in _SUBSCRIBE_FAMILY:
            apply_sub(name, args[1:])
        shapes.append(("fwd", len(out)))
        out.append(Expected(args, resp3))
    return out


_SUB_KIND = {"subscribe": "chan", "psubscribe": "pat", "ssubscribe": "shard"}
_SUBSCRIBE_FAMILY = {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
                     "sunsubscribe"}


def proxy_own(args: list[bytes], home_db: int) -> bool:
    """A command the proxy sends by itself, recognised exactly."""
    name = args[0].upper()
    if name == b"AUTH":
        return args[1:] == [UPSTREAM_USER, UPSTREAM_PASSWORD]
    if name == b"SELECT":
        return args[1:] == [b"%d" % home_db]
    if name == b"HELLO":
        rest = args[1:]
        if rest[:1] in ([b"2"], [b"3"]):
            rest = rest[1:]
        return rest == [] or (len(rest) == 2 and rest[0].upper() == b"SETNAME")
    if name in (b"RESET", b"DISCARD", b"UNWATCH"):
        return len(args) == 1
    return name in (b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE")


# ---------------------------------------------------------------------------------- the run

class Sent:
    __slots__ = ("args", "shared", "resp3", "replies")

    def __init__(self, args, shared, resp3, replies):
        self.args, self.shared, self.resp3, self.replies = args, shared, resp3, replies


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


class FakeRedis:
    """Just enough of one Redis connection to answer what the proxy forwards: each reply that
    is not a subscription's or a transaction's is `+R<n>`, unique, so that a reply that reaches
    the wrong command shows. Subscriptions are confirmed one frame per channel (an array, or a
    push in RESP3), and a RESP2 connection with subscriptions refuses other commands, as Redis
    does; MULTI queues, EXEC answers with the queued replies."""

    def __init__(self, resp3: bool = False):
        self.resp3 = resp3
        self.multi: list | None = None
        self.subs = {b"subscribe": [], b"psubscribe": [], b"ssubscribe": []}
        self.tag = 0

    def _confirm(self, kind: bytes, chan: bytes | None, count: int) -> bytes:
        return (b">3\r\n" if self.resp3 else b"*3\r\n") + _bulk(kind) \
            + (_bulk(chan) if chan is not None else (b"_\r\n" if self.resp3 else b"$-1\r\n")) \
            + b":%d\r\n" % count

    def _count(self) -> int:
        return sum(map(len, self.subs.values()))

    def reply(self, args: list[bytes]) -> list[bytes]:
        name = args[0].lower()
        if self.multi is not None and name not in (b"exec", b"discard", b"multi", b"watch",
                                                   b"reset", b"quit"):
            self.multi.append(args)
            return [b"+QUEUED\r\n"]
        if name in self.subs:
            out = []
            for chan in args[1:]:
                if chan not in self.subs[name]:
                    self.subs[name].append(chan)
                out.append(self._confirm(name, chan, self._count()))
            return out
        if name in (b"unsubscribe", b"punsubscribe", b"sunsubscribe"):
            have = self.subs[name.replace(b"unsubscribe", b"subscribe")]
            chans = args[1:] or list(have)
            out = []
            for chan in chans:
                if chan in have:
                    have.remove(chan)
                out.append(self._confirm(name, chan, self._count()))
            return out or [self._confirm(name, None, self._count())]
        if self._count() and not self.resp3 and name not in (b"ping", b"quit", b"reset"):
            return [b"-ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
                    b"QUIT / RESET are allowed in this context\r\n" % name]
        if name == b"ping" and self._count() and not self.resp3:
            return [b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"]
        if name == b"multi":
            if self.multi is not None:
                return [b"-ERR MULTI calls can not be nested\r\n"]
            self.multi = []
            return [b"+OK\r\n"]
        if name == b"exec":
            if self.multi is None:
                return [b"-ERR EXEC without MULTI\r\n"]
            queued, self.multi = self.multi, None
            parts = [frame for q in queued for frame in self.reply(q)]
            # As Redis's execCommand: an array of one reply per queued command; a subscription
            # confirming several channels adds frames that spill out after it (finding 11).
            return [b"*%d\r\n" % len(queued) + b"".join(parts)]
        if name == b"discard":
            if self.multi is None:
                return [b"-ERR DISCARD without MULTI\r\n"]
            self.multi = None
            return [b"+OK\r\n"]
        if name == b"watch" and self.multi is not None:
            return [b"-ERR WATCH inside MULTI is not allowed\r\n"]
        if name == b"reset":
            self.__init__()
            return [b"+RESET\r\n"]
        if name in (b"auth", b"select"):
            return [b"+OK\r\n"]
        if name == b"hello":
            if len(args) > 1:
                self.resp3 = args[1] == b"3"
            return [(b"%1\r\n" if self.resp3 else b"*2\r\n") + b"+proto\r\n:%d\r\n"
                    % (3 if self.resp3 else 2)]
        self.tag += 1
        return [b"+R%d\r\n" % self.tag]


class Run:
    """What a run produced: the commands written upstream, the bytes the client received."""

    def __init__(self, sent, to_client):
        self.sent, self.to_client = sent, to_client


def run(plan: Plan, config) -> Run:
    """Feed the plan to a Session as server.ClientConnection does, with fake upstreams that
    answer what it forwards (at once, or after a later read, whole or in two pieces)."""
    gate = Gate(config, upstream_version=plan.version)
    s = session_mod.Session(gate, "fuzz")
    sent: list[Sent] = []
    client: list[bytes] = []
    link = None            # the shared link's protocol (True: RESP3) while attached to one
    accounted = 0
    own: FakeRedis | None = None    # the client's own upstream connection, once open
    links = {False: FakeRedis(False), True: FakeRedis(True)}   # (set up by the proxy already)
    due_shared: list[tuple[bytes, int]] = []   # replies not delivered yet: (bytes, count)
    due_own: list[bytes] = []
    split = [False]

    def take_client():
        client.extend(s.to_client)
        s.to_client.clear()

    def pump():
        nonlocal link, accounted
        out = s.to_upstream
        if not out:
            return
        data = b"".join(out)
        out.clear()
        if link is not None and link != s.link_resp3:
            # server.ClientConnection.pump: the session bound its commands to the other
            # protocol's links (HELLO, RESET); allowed only with nothing due on this one.
            if due_shared:
                raise Violation("switch-with-due", "the session switched links with replies "
                                                   "due on the old one")
            link = None
        if link is None and (s.shared or s.expected != accounted):
            link = s.link_resp3   # server.Proxy.shared_link: the links the session is bound to
        if link is not None:
            accounted = s.expected
            shared, proto, fake = True, link, links[link]
        else:
            if own is None:
                raise Violation("no-connection", f"bytes for an upstream not opened: {data!r}")
            shared, proto, fake = False, None, own
        parser = RequestParser(authenticated=True)
        parser.feed(data)
        try:
            while reqs := parser.drain():
                for r in reqs:
                    replies = fake.reply(r.args)
                    sent.append(Sent(r.args, shared, proto, replies))
                    if shared:
                        due_shared.append((b"".join(replies), 1))
                    else:
                        due_own.append(b"".join(replies))
        except ProtocolError as e:
            raise Violation("malformed", f"{data!r}: {e.reply!r}")
        if parser.buffered:
            raise Violation("partial-frame", f"a write ends inside a frame: {data!r}")

    def deliver():
        """The replies due arrive: the shared link's first (the I/O layer waits for them before
        the client's own connection is used)."""
        while due_shared or due_own:
            if due_shared:
                data = b"".join(d for d, _ in due_shared)
                count = sum(c for _, c in due_shared)
                due_shared.clear()
                s.upstream_replies(data, count)   # (as ClientConnection.shared_replies)
            if due_own:
                data = b"".join(due_own)
                due_own.clear()
                if split[0] and len(data) > 1:
                    cut = 1 + len(data) * 5 // 11 % (len(data) - 1)
                    s.upstream_data(data[:cut])
                    take_client()
                    pump()
                    s.upstream_data(data[cut:])
                else:
                    s.upstream_data(data)
            take_client()
            pump()

    def connect():
        nonlocal link, own
        if s.want_upstream and own is None:
            deliver()                     # the shared replies it waits for
            own, link = FakeRedis(), None
            s.connected()
            pump()

    for data, how in reads_of(plan):
        try:
            s.client_data(data)
        except Exception as e:   # noqa: BLE001 - client_data must never raise
            raise Violation("raised", f"client_data raised {e!r}") from e
        take_client()
        pump()
        split[0] = bool(how & 32)
        if not how & 16:
            deliver()
        if not plan.lazy_connect or how & 8:
            connect()
        if s.close:
            break
    if not s.close:
        connect()
        pump()
    deliver()
    take_client()
    return Run(sent, b"".join(client))


def compare(plan: Plan, sent: list[Sent], expected: list[Expected], home_db: int) -> list[Sent]:
    """Check what was written upstream against the oracle; the written command of each expected
    one, in order."""
    k = 0
    matched: list[Sent | None] = [None] * len(expected)
    for i, got in enumerate(sent):
        while k < len(expected) and expected[k].own and got.args != expected[k].args:
            k += 1
        if got.args[0].upper() == b"AUTH" and got.args[1:] != [UPSTREAM_USER, UPSTREAM_PASSWORD]:
            raise Violation("credentials", f"a client's AUTH reached Redis: {got.args!r}")
        if got.args[0].upper() == b"HELLO" and any(a.upper() == b"AUTH" for a in got.args):
            raise Violation("credentials", f"a client's HELLO AUTH reached Redis: {got.args!r}")
        if k < len(expected) and got.args == expected[k].args:
            if got.shared:
                if stateful(got.args):
                    raise Violation("stateful-on-shared",
                                    f"{got.args!r} (command {k}) went to a shared link")
                if got.resp3 != expected[k].resp3:
                    raise Violation("protocol-on-shared",
                                    f"{got.args!r} sent by a RESP{3 if expected[k].resp3 else 2} "
                                    f"client went to a RESP{3 if got.resp3 else 2} shared link")
            matched[k] = got
            k += 1
        elif proxy_own(got.args, home_db):
            if got.shared:
                kind = "hello-on-shared" if got.args[0].upper() == b"HELLO" else "stateful-on-shared"
                raise Violation(kind, f"{got.args!r} went to a shared link")
        elif any(got.args == args for args in plan.commands[plan.quit + 1:]):
            raise Violation("after-quit", f"frame {i} {got.args!r}, sent after QUIT, was forwarded")
        else:
            raise Violation("not-allowed",
                            f"frame {i} {got.args!r} was forwarded; next allowed "
                            f"{expected[k].args if k < len(expected) else None!r}")
    while k < len(expected) and expected[k].own:
        k += 1
    if k != len(expected):
        raise Violation("missing", f"allowed {expected[k].args!r} (and {len(expected) - k - 1} "
                                   "more) never reached Redis")
    return matched


def check_replies(plan: Plan, matched: list[Sent], stream: bytes) -> None:
    """Every command got its reply, in order: exactly the upstream's for a forwarded one, one
    error for a refused one, one reply for one answered here; nothing else, nothing more."""
    scanner = ReplyScanner()
    try:
        frames = scanner.feed(stream)
    except Exception as e:   # noqa: BLE001 - an UpstreamProtocolError: garbage to the client
        raise Violation("reply-garbage", f"the client's stream is not RESP: {e}: {stream!r}")
    if not scanner.idle:
        raise Violation("reply-garbage", f"the client's stream ends inside a reply: {stream!r}")
    replies, pos = [], 0
    for f in frames:
        replies.append(stream[pos:f.end])
        pos = f.end
    i = 0
    for n, shape in enumerate(plan.shapes):
        want = matched[shape[1]].replies if type(shape) is tuple else [None]
        for w in want:
            if i >= len(replies):
                raise Violation("reply-missing", f"command {n} {plan.commands[n]!r} got no reply "
                                                 f"(replies: {replies!r})")
            got = replies[i]
            if (w is not None and got != w) or (shape == "error" and got[:1] != b"-"):
                raise Violation("reply-order",
                                f"command {n} {plan.commands[n]!r} got {got!r}, not "
                                f"{w if w is not None else shape!r} (replies: {replies!r})")
            i += 1
    if i != len(replies):
        raise Violation("reply-extra", f"{len(replies) - i} replies more than commands: "
                                       f"{replies[i:]!r}")


def check(data: bytes) -> None:
    plan = decode(data)
    cfg, oracle_cfg = configs(plan.multiplex)
    expected = oracle(plan, oracle_cfg)
    result = run(plan, cfg)
    matched = compare(plan, result.sent, expected, cfg.upstream.db)
    if not plan.skip_replies:
        check_replies(plan, matched, result.to_client)


def describe(data: bytes) -> str:
    """The plan of an input, readable (for reports and failing tests)."""
    plan = decode(data)
    lines = [f"multiplex={plan.multiplex} version={plan.version} lazy_connect={plan.lazy_connect}"]
    for args, inl, cut, conn in zip(plan.commands, plan.inline, plan.cuts, plan.connects):
        lines.append(f"  {'inline ' if inl else ''}{b' '.join(args).decode('latin-1')!r}"
                     f"{['', ' | read ends', ' | read ends inside', ' | read ends'][cut]}"
                     f"{' (connect)' if conn & 8 and plan.lazy_connect and cut else ''}"
                     f"{' (replies held)' if conn & 16 and cut else ''}"
                     f"{' (replies split)' if conn & 32 and cut else ''}")
    return "\n".join(lines)


def plan_bytes(flags: int, *steps: tuple[int, int, int]) -> bytes:
    return bytes([flags]) + b"".join(bytes(step) for step in steps)


def _index(name: bytes) -> int:
    return next(i for i, make in enumerate(MENU) if make(0)[0] == name)


def seeds() -> list[bytes]:
    """Starting inputs: logins, the go-redis handshake, a transaction, subscriptions, finding 1."""
    get, setv, multi, exec_, sub = (_index(n) for n in (b"GET", b"SET", b"MULTI", b"EXEC",
                                                        b"SUBSCRIBE"))
    hello, reset, auth = _index(b"HELLO"), _index(b"RESET"), _index(b"AUTH")
    app_ok = (auth, 40, 0)      # AUTH app app-pw (variant 40: USERS[0], right password)
    none_ok = (auth, 41, 0)     # AUTH none none-pw
    go_redis = (hello, 241, 0)  # HELLO 3 AUTH app app-pw
    out = []
    for flags in range(8):
        out.append(plan_bytes(flags, app_ok, (get, 0, 0), (setv, 2, 2), (multi, 0, 0),
                              (setv, 3, 1), (exec_, 0, 4), (get, 4, 0), (sub, 0, 0), (get, 2, 8)))
        # Finding 1: a user without command rights switches the protocol twice in one read.
        out.append(plan_bytes(flags, none_ok, (hello, 4, 0), (hello, 2, 0), (get, 0, 2),
                              (reset, 0, 0), app_ok, (get, 6, 8)))
        out.append(plan_bytes(flags, go_redis, (get, 0, 2), (setv, 1, 1), (get, 2, 0)))
    return out


_ignored: set[str] = set(filter(None, os.environ.get("FUZZ_SESSION_IGNORE", "").split(",")))
_counts: dict[str, int] = {}
_runs = [0]


def target(data: bytes) -> None:
    """The atheris entry: check(), except that violations of the kinds in FUZZ_SESSION_IGNORE are
    counted in FUZZ_SESSION_FOUND (kind, count, the first 5 inputs as hex) instead of stopping."""
    _runs[0] += 1
    try:
        check(data)
    except Violation as v:
        if v.kind not in _ignored:
            raise
        n = _counts[v.kind] = _counts.get(v.kind, 0) + 1
        found = os.environ.get("FUZZ_SESSION_FOUND")
        if found and (n <= 5 or n % 1000 == 0):
            with open(found, "a") as f:
                f.write(f"{v.kind}\t{n} of {_runs[0]} inputs\t{data.hex() if n <= 5 else ''}\n")


def main() -> None:
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (or '.[fuzz]')")
    # Only when run as a fuzzer: no audit line for every AUTH. (Not at import: the tests import
    # this module, and a level set here would hide the proxy's log from every later test.)
    logging.getLogger("redisgate").setLevel(logging.CRITICAL)
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
