"""Client connection handshakes, replayed byte for byte, in front of Redis 5.0, 6.2 and 7.0.

go-redis's `baseClient.initConn` changed over v9, and each line decides differently what to do
with the reply to `hello 3 auth <user> <pass>`:

- v9.0.x (v9.0.3 is what Asynq v0.24.1, the last Asynq for Redis 5, pins): falls back to RESP2
  ONLY when the error starts with `ERR unknown command` or `NOAUTH Authentication`; any other
  error reply fails the connection. Then one pipeline: `auth` (after a fallback), `select <db>`
  (db > 0), `client setname <name>` (a name set); any error in it fails the connection. No
  CLIENT SETINFO.
- v9.5-v9.7: falls back on any error reply; the same pipeline; then a pipeline of
  `client setinfo LIB-NAME go-redis(,goX)` and `client setinfo LIB-VER 9.x.y` whose error
  replies are ignored.
- v9.14 (Asynq v0.25+, REDIS-USAGE.md section 6): `hello 3 auth u p [setname n]`; on any error
  reply a separate `auth` (an error fails), then the pipeline (`select`, and `client setname`
  whenever a name is set, even one HELLO carried), then the CLIENT SETINFO pipeline (errors
  ignored).

Each is replayed against redisgate (a dedicated upstream connection per client, and
`upstream.multiplex: 1`), with the version's own fallback rule applied to the replies actually
received; each must end authenticated, as its user, on the database it asked for. redis-py's
RESP3 connect is checked the same way, through redisgate and directly against Redis 5.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import hiredis
import pytest
import redis

from proxy import ProxyRunner, pw_hash
from wire import Wire, cmd

PASSWORD = "handshake-pw"
USER = "asynq"
RULES = (f"on {pw_hash(PASSWORD)} ~app:* +@read +@write +@connection +acl|whoami "
         "-client|kill -client|pause")
GO = "go1.22.5"


class ConnectFailed(Exception):
    pass


@dataclass(frozen=True)
class GoRedis:
    """One go-redis line's initConn (see the module docstring)."""
    name: str
    fallback_prefixes: tuple | None    # None: fall back on any error reply
    auth_in_pipeline: bool             # the fallback AUTH goes in the pipeline (else alone first)
    setname_in_hello: bool
    setinfo_version: str | None        # None: no CLIENT SETINFO


GO_REDIS = [
    GoRedis("v9.0.3", ("ERR unknown command", "NOAUTH Authentication"), True, False, None),
    GoRedis("v9.7.0", None, True, False, "9.7.0"),
    GoRedis("v9.14.1", None, False, True, "9.14.1"),
]


@dataclass
class Handshake:
    """What a client sent and got, command by command, and each write's bytes."""
    log: list = field(default_factory=list)
    writes: list = field(default_factory=list)


def _go_redis_connect(port: int, line: GoRedis, db: int, client_name: str,
                      username: str = USER, password: str = PASSWORD) -> tuple[Wire, Handshake]:
    w = Wire(port)
    hs = Handshake()

    def pipeline(commands):
        data = b"".join(cmd(*c) for c in commands)
        hs.writes.append(data)
        w.send(data)
        replies = w.read(len(commands))
        hs.log.extend(zip(commands, replies))
        return replies

    hello = ["hello", "3"]
    if password:
        hello += ["auth", username or "default", password]
    if line.setname_in_hello and client_name:
        hello += ["setname", client_name]
    (reply,) = pipeline([hello])
    auth = not isinstance(reply, hiredis.ReplyError)
    if not auth:
        text = str(reply)
        if line.fallback_prefixes is not None and not text.startswith(line.fallback_prefixes):
            raise ConnectFailed(f"{line.name}: HELLO error without fallback: {text}")
    commands = []
    if not auth and password:
        fallback_auth = ["auth", username, password] if username else ["auth", password]
        if line.auth_in_pipeline:
            commands.append(fallback_auth)
        else:
            (r,) = pipeline([fallback_auth])
            if isinstance(r, hiredis.ReplyError):
                raise ConnectFailed(f"{line.name}: failed to authenticate: {r}")
    if db > 0:
        commands.append(["select", str(db)])
    if client_name:   # (v9.14 sends it even when its HELLO carried the name)
        commands.append(["client", "setname", client_name])
    if commands:
        for c, r in zip(commands, pipeline(commands)):
            if isinstance(r, hiredis.ReplyError):
                raise ConnectFailed(f"{line.name}: {c[0]} failed: {r}")
    if line.setinfo_version:
        pipeline([["client", "setinfo", "LIB-NAME", f"go-redis(,{GO})"],
                  ["client", "setinfo", "LIB-VER", line.setinfo_version]])   # errors ignored
    return w, hs


@pytest.fixture(scope="module", params=["5", "6.2", "7", "5+multiplex", "6.2+multiplex",
                                        "7+multiplex"])
def env(request):
    version, _, mux = request.param.partition("+")
    srv = request.getfixturevalue({"7": "redis7", "6.2": "redis62", "5": "redis5"}[version])
    upstream = dict(srv.upstream, multiplex=1) if mux else dict(srv.upstream)
    runner = ProxyRunner({"upstream": upstream,
                          "users": {USER: {"rules": RULES, "databases": [0, 2]},
                                    "default": {"rules": RULES, "databases": [0, 2]}}}).start()
    runner.srv = srv
    runner.version = version
    yield runner
    runner.stop()


def _assert_logged_in_on(env, w: Wire, hs: Handshake, db: int, tag: str, username: str = USER):
    """As `username`, on database `db`: a key written through the proxy is in that database."""
    assert w.call("ACL", "WHOAMI") == username.encode(), hs.log
    key = f"app:handshake:{tag}"
    assert w.call("SET", key, tag) == b"OK", hs.log
    direct = env.srv.admin(db=db)
    try:
        assert direct.get(key) == tag.encode(), (db, hs.log)
        direct.delete(key)
    finally:
        direct.close()


@pytest.mark.parametrize("line", GO_REDIS, ids=lambda g: g.name)
@pytest.mark.parametrize("db, client_name", [(0, ""), (2, "worker-1")])
def test_go_redis_handshake_ends_logged_in_on_its_database(env, line, db, client_name):
    w, hs = _go_redis_connect(env.port, line, db, client_name)
    try:
        hello_reply = hs.log[0][1]
        if env.version == "5":
            # Redis 5's own reply to HELLO, credentials left out: every go-redis v9 falls back.
            assert str(hello_reply) == \
                "ERR unknown command `hello`, with args beginning with: `3`, "
        else:
            assert not isinstance(hello_reply, hiredis.ReplyError), hs.log
        if client_name:
            assert w.call("CLIENT", "GETNAME") == client_name.encode()
        _assert_logged_in_on(env, w, hs, db, f"{line.name}-{db}-{env.version}")
    finally:
        w.close()


# What each line writes in front of Redis 5 (and so through redisgate in front of it), with
# Username "asynq", DB 2, ClientName "worker-1": one entry per write (a pipeline is one write).
_HELLO = b"*5\r\n$5\r\nhello\r\n$1\r\n3\r\n$4\r\nauth\r\n$5\r\nasynq\r\n$12\r\nhandshake-pw\r\n"
_AUTH = b"*3\r\n$4\r\nauth\r\n$5\r\nasynq\r\n$12\r\nhandshake-pw\r\n"
_SELECT = b"*2\r\n$6\r\nselect\r\n$1\r\n2\r\n"
_SETNAME = b"*3\r\n$6\r\nclient\r\n$7\r\nsetname\r\n$8\r\nworker-1\r\n"
_SETINFO = (b"*4\r\n$6\r\nclient\r\n$7\r\nsetinfo\r\n$8\r\nLIB-NAME\r\n"
            b"$19\r\ngo-redis(,go1.22.5)\r\n"
            b"*4\r\n$6\r\nclient\r\n$7\r\nsetinfo\r\n$7\r\nLIB-VER\r\n$%d\r\n%s\r\n")
LEGACY_WRITES = {
    "v9.0.3": [_HELLO, _AUTH + _SELECT + _SETNAME],
    "v9.7.0": [_HELLO, _AUTH + _SELECT + _SETNAME, _SETINFO % (5, b"9.7.0")],
    "v9.14.1": [b"*7" + _HELLO[2:] + b"$7\r\nsetname\r\n$8\r\nworker-1\r\n",
                _AUTH, _SELECT + _SETNAME, _SETINFO % (6, b"9.14.1")],
}


@pytest.mark.parametrize("line", GO_REDIS, ids=lambda g: g.name)
def test_go_redis_writes_in_front_of_redis_5(env, line):
    if env.version != "5":
        pytest.skip("the fallback path: Redis 5")
    w, hs = _go_redis_connect(env.port, line, 2, "worker-1")
    w.close()
    assert hs.writes == LEGACY_WRITES[line.name]


@pytest.mark.parametrize("line", GO_REDIS, ids=lambda g: g.name)
def test_go_redis_default_user_handshake(env, line):
    """No username: `hello 3 auth default <pass>`, and after a fallback `auth <pass>`."""
    w, hs = _go_redis_connect(env.port, line, 0, "", username="")
    try:
        _assert_logged_in_on(env, w, hs, 0, f"default-{line.name}-{env.version}",
                             username="default")
    finally:
        w.close()


@pytest.mark.parametrize("line", GO_REDIS, ids=lambda g: g.name)
def test_go_redis_wrong_password_fails_the_connection(env, line):
    with pytest.raises(ConnectFailed):
        w, hs = _go_redis_connect(env.port, line, 0, "", password="not-the-password")
        w.close()


def test_go_redis_v9_0_fallback_rule_would_fail_on_noproto():
    """The point of issue 21: NOPROTO (what the proxy used to answer in front of Redis 5) is not
    a prefix go-redis v9.0 falls back on."""
    rule = GO_REDIS[0].fallback_prefixes
    assert not "NOPROTO unsupported protocol version".startswith(rule)
    assert "ERR unknown command `hello`, with args beginning with: `3`, ".startswith(rule)


# ---------------------------------------------------------------- redis-py

def _redis_py_connect(port: int, **kw) -> tuple[str, object]:
    """redis-py's connect (HELLO 3 AUTH ..., its own fallback rule), then a write: what
    happened, as (outcome, error text)."""
    c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, **kw)
    try:
        c.set("app:redis-py", "1")
        return "ok", None
    except redis.exceptions.ResponseError as e:
        return type(e).__name__, str(e)
    finally:
        c.close()


def test_redis_py_resp3_connect_matches_redis_5(redis5, env):
    """redis-py 8 with protocol=3 raises on Redis 5's unknown-command error (an explicit
    protocol is never downgraded); with its default protocol it falls back to RESP2 and works.
    Through redisgate in front of Redis 5 it does the same; the error text differs only by the
    credentials Redis 5 echoes and the proxy leaves out."""
    if env.version != "5":
        pytest.skip("the Redis 5 comparison")
    logging.getLogger("redis.connection").setLevel(logging.ERROR)   # the fallback's warning
    direct = _redis_py_connect(redis5.port, password=redis5.upstream["password"], protocol=3)
    proxied = _redis_py_connect(env.port, username=USER, password=PASSWORD, protocol=3)
    assert direct[0] == proxied[0] == "ResponseError"
    head = "unknown command `HELLO`, with args beginning with: `3`, "
    assert direct[1].startswith(head + "`AUTH`, ")        # Redis 5 echoes the credentials
    assert proxied[1] == head
    direct = _redis_py_connect(redis5.port, password=redis5.upstream["password"])
    proxied = _redis_py_connect(env.port, username=USER, password=PASSWORD)
    assert direct[0] == proxied[0] == "ok"


def test_redis_py_resp3_connect_through_the_proxy(env):
    logging.getLogger("redis.connection").setLevel(logging.ERROR)
    outcome = _redis_py_connect(env.port, username=USER, password=PASSWORD, protocol=3)
    if env.version == "5":
        assert outcome[0] == "ResponseError"
    else:
        assert outcome[0] == "ok"
        c = redis.Redis(host="127.0.0.1", port=env.port, username=USER, password=PASSWORD,
                        protocol=3, db=2, socket_timeout=10)
        try:
            assert c.acl_whoami() == USER.encode() or c.acl_whoami() == USER
            c.set("app:redis-py:db2", "x")
            assert env.srv.admin(db=2).get("app:redis-py:db2") == b"x"
            c.delete("app:redis-py:db2")
        finally:
            c.close()
