"""errors.py: every wording compared byte for byte with what the real 5.0 / 6.2 / 7.0 servers send.

Each test provokes the error on a real server over a raw socket and asserts that the function
returns exactly the bytes the server wrote. Wordings no server here can show (6.0, 7.2, and the ACL
errors of 5.0, which has no ACLs) are pinned to their sources in the last tests.
"""
from __future__ import annotations

import itertools
import socket

import pytest

from redisgate.protocol import errors
from redisgate.protocol.commands import TABLE, available

from conftest import LEGACY_PASSWORD, UPSTREAM_PASSWORD, UPSTREAM_USER
from servers import RedisServer, redis_binary
from wire import cmd

_names = (f"errtest{i}" for i in itertools.count())


class _Resp2Server(RedisServer):
    """redis-py 8 greets with HELLO 3, which 5.0 does not know: speak RESP2 to it."""

    def client(self, **kw):
        kw.setdefault("protocol", 2)
        return super().client(**kw)


@pytest.fixture(scope="module")
def redis5():
    """This module's own legacy 5.0 (the shared fixture's startup ping speaks RESP3)."""
    if redis_binary("5") is None:
        pytest.fail("legacy redis-server 5.0 is missing: run scripts/test.sh, which builds it")
    srv = _Resp2Server("5", password=LEGACY_PASSWORD).start()
    srv.admin = srv.client
    yield srv
    srv.stop()


class Raw:
    """One connection; `line(*args)` sends a command and returns its one-line reply, raw."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def line(self, *args) -> bytes:
        self.sock.sendall(cmd(*args))
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["5", "6.2", "7"])
def server(request):
    return request.getfixturevalue({"5": "redis5", "6.2": "redis62", "7": "redis7"}[request.param])


@pytest.fixture(params=["6.2", "7"])
def acl_server(request):
    return request.getfixturevalue({"6.2": "redis62", "7": "redis7"}[request.param])


def _login(srv) -> Raw:
    c = Raw(srv.port)
    if srv.version == "7":
        assert c.line("AUTH", UPSTREAM_USER, UPSTREAM_PASSWORD) == b"+OK\r\n"
    else:
        assert c.line("AUTH", LEGACY_PASSWORD) == b"+OK\r\n"
    return c


@pytest.fixture
def conn(server):
    c = _login(server)
    yield c
    c.close()


def _version(srv) -> tuple:
    v = srv.admin().info("server")["redis_version"]
    return tuple(int(x) for x in v.split("."))


@pytest.fixture
def limited(acl_server):
    """A user with one key pattern, one channel and a few commands; yields (connection, name)."""
    name = next(_names)
    admin = acl_server.admin()
    admin.execute_command("ACL", "SETUSER", name, "on", ">pw", "~k*", "resetchannels", "&ch",
                          "+get", "+config|get", "+publish", "+subscribe", "+psubscribe", "+multi",
                          "+exec", "+select")
    c = Raw(acl_server.port)
    assert c.line("AUTH", name, "pw") == b"+OK\r\n"
    yield c, name
    c.close()
    admin.execute_command("ACL", "DELUSER", name)


# ------------------------------------------------------------------ command lookup errors

@pytest.mark.parametrize("args", [
    [b"nosuch"],
    [b"nosuch", b"a", b"b"],
    [b"NoSuch", b"a" * 100, b"b" * 100, b"c"],      # the argument list stops near 128 bytes
    [b"x" * 200, b"a"],                              # 7.x cuts the name at 128 bytes
    [b"nosuch", b"a\x00b", b"c"],                    # C strings stop at NUL
    [b"no\x00such", b"a"],
    [b"no\r\nsuch", b"a\nb", b"c\rd"],               # CR/LF become spaces
    [b"nosuch"] + [b"arg%d" % i for i in range(40)],
])
def test_unknown_command_matches_server(server, conn, args):
    assert errors.unknown_command(_version(server), args) == conn.line(*args)


_CONTAINERS = ["config", "client", "memory", "object", "script", "xinfo", "xgroup", "pubsub",
               "command", "slowlog", "latency", "module", "acl", "function", "cluster"]


@pytest.mark.parametrize("container", _CONTAINERS)
@pytest.mark.parametrize("sub", [b"nosuch", b"y" * 200, b"a\x00b", b"q\r\nz"])
def test_unknown_subcommand_matches_server(server, conn, container, sub):
    version = _version(server)
    if not available(TABLE.get(container), version):
        pytest.skip(f"{container} does not exist in {version}")
    for spelled in (container, container.upper()):
        args = [spelled.encode(), sub]
        assert errors.unknown_subcommand(version, args) == conn.line(*args)


@pytest.mark.parametrize("args, name", [
    ([b"get"], "get"),
    ([b"GET", b"a", b"b"], "get"),
    ([b"set", b"k"], "set"),
    ([b"config", b"get"], "config|get"),
    ([b"config", b"set", b"a"], "config|set"),
    ([b"client", b"setname"], "client|setname"),
    ([b"client", b"kill"], "client|kill"),
    ([b"object", b"encoding"], "object|encoding"),
    ([b"memory", b"usage"], "memory|usage"),
    ([b"script", b"load"], "script|load"),
])
def test_wrong_arity_matches_server(server, conn, args, name):
    version = _version(server)
    spec = TABLE.lookup(args)
    assert spec.name == name and not spec.check_arity(len(args))
    assert errors.wrong_arity(version, name, args) == conn.line(*args)


def test_container_without_subcommand_is_an_arity_error(redis7):
    c = _login(redis7)
    try:
        assert errors.wrong_arity(_version(redis7), "config") == c.line("CONFIG")
    finally:
        c.close()


# ------------------------------------------------------------------ authentication

def test_noauth_matches_server(server):
    c = Raw(server.port)
    try:
        assert errors.noauth() == c.line("GET", "k")
    finally:
        c.close()


def test_wrongpass_matches_server(acl_server):
    c = Raw(acl_server.port)
    try:
        assert errors.wrongpass(_version(acl_server)) == c.line("AUTH", "nobody", "wrong")
        assert errors.wrongpass(_version(acl_server)) == c.line("HELLO", "3", "AUTH", "nobody", "x")
    finally:
        c.close()


def test_noauth_hello_matches_server(acl_server):
    c = Raw(acl_server.port)
    try:
        assert errors.noauth_hello() == c.line("HELLO", "2")
        assert errors.noauth_hello() == c.line("HELLO")
    finally:
        c.close()


def test_noproto_matches_server(acl_server):
    c = _login(acl_server)
    try:
        assert errors.noproto() == c.line("HELLO", "4")
    finally:
        c.close()


# ------------------------------------------------------------------ permissions

def test_noperm_command_matches_server(acl_server, limited):
    c, name = limited
    version = _version(acl_server)
    assert errors.noperm_command(version, name, "set") == c.line("SET", "k", "v")
    assert errors.noperm_command(version, name, "config|set") == c.line("CONFIG", "SET", "a", "b")


def test_noperm_key_matches_server(acl_server, limited):
    c, name = limited
    assert errors.noperm_key(_version(acl_server), name) == c.line("GET", "other")


def test_noperm_channel_matches_server(acl_server, limited):
    c, name = limited
    version = _version(acl_server)
    assert errors.noperm_channel(version, name) == c.line("PUBLISH", "other", "m")
    assert errors.noperm_channel(version, name) == c.line("PSUBSCRIBE", "c*")


def test_noperm_db_is_worded_as_a_refused_select():
    assert errors.noperm_db((7, 0, 15), "u", 3) == \
        b"-NOPERM this user has no permissions to run the 'select' command\r\n"


# ------------------------------------------------------------------ transactions

def test_execabort_matches_server(server, conn):
    assert conn.line("MULTI") == b"+OK\r\n"
    conn.line("NOSUCH")
    assert errors.execabort() == conn.line("EXEC")


def test_not_in_multi_matches_a_no_multi_command_on_redis7(redis7):
    c = _login(redis7)
    try:
        assert c.line("MULTI") == b"+OK\r\n"
        assert errors.not_in_multi() == c.line("SAVE")
        assert c.line("DISCARD") == b"+OK\r\n"
    finally:
        c.close()


# ------------------------------------------------------------------ wordings from the sources only

def test_redis6_0_wordings_come_from_its_sources():
    v = (6, 0, 20)
    assert errors.wrongpass(v) == b"-WRONGPASS invalid username-password pair\r\n"
    assert errors.noperm_command(v, "u", "config|get") == (
        b"-NOPERM this user has no permissions to run the 'config' command or its subcommand\r\n")
    # 6.0 had no channel permissions: the 6.2 wording stands in.
    assert errors.noperm_channel(v, "u") == errors.noperm_channel((6, 2, 0), "u")


def test_redis7_2_wordings_come_from_its_sources():
    v = (7, 2, 4)
    assert errors.noperm_command(v, "alice", "config|get") == (
        b"-NOPERM User alice has no permissions to run the 'config|get' command\r\n")
    assert errors.noperm_key(v, "alice") == b"-NOPERM No permissions to access a key\r\n"
    assert errors.noperm_channel(v, "alice") == b"-NOPERM No permissions to access a channel\r\n"
    assert errors.unknown_command(v, [b"foo", b"a"]) == (
        b"-ERR unknown command 'foo', with args beginning with: 'a' \r\n")


def test_redis5_has_no_acl_errors_so_the_6_2_wordings_stand_in():
    for fn in (errors.noperm_key, errors.noperm_channel):
        assert fn((5, 0, 6), "u") == fn((6, 2, 14), "u")
    assert errors.noperm_command((5, 0, 6), "u", "get") == errors.noperm_command((6, 2, 14), "u", "get")
    assert errors.wrongpass((5, 0, 6)) == errors.wrongpass((6, 2, 14))


def test_every_reply_is_one_complete_error_line():
    v = (7, 0, 15)
    replies = [errors.noauth(), errors.wrongpass(v), errors.unknown_command(v, [b"a\r\nb"]),
               errors.unknown_subcommand(v, [b"config", b"x\ny"]), errors.wrong_arity(v, "get"),
               errors.noperm_command(v, "u", "get"), errors.noperm_key(v, "u"),
               errors.noperm_channel(v, "u"), errors.noproto(), errors.execabort(),
               errors.noauth_hello(), errors.not_in_multi(), errors.noperm_db(v, "u", 1)]
    for r in replies:
        assert r.startswith(b"-") and r.endswith(b"\r\n") and r.count(b"\r\n") == 1
        assert b"\n" not in r[:-2] and b"\r" not in r[:-2]


# ------------------------------------------------------------------ HELLO in front of Redis 5

@pytest.mark.parametrize("args", [
    [b"HELLO"],
    [b"hello", b"3"],
    [b"HELLO", b"2"],
    [b"HELLO", b"3", b"SETNAME", b"w1"],
    [b"HELLO", b"x" * 200, b"y"],
    [b"HeLLo", b"3", b"a\r\nb", b"c\x00d"],
])
def test_legacy_hello_without_credentials_is_redis5s_own_reply(redis5, args):
    c = _login(redis5)
    try:
        assert errors.legacy_hello(_version(redis5), args) == c.line(*args)
    finally:
        c.close()


@pytest.mark.parametrize("args, shown", [
    ([b"hello", b"3", b"auth", b"u", b"secret"], [b"hello", b"3"]),
    ([b"HELLO", b"3", b"SETNAME", b"w1", b"AUTH", b"u", b"secret"],
     [b"HELLO", b"3", b"SETNAME", b"w1"]),
    ([b"HELLO", b"AuTh\x00x", b"secret"], [b"HELLO"]),
    ([b"HELLO", b"3", b"AUTH"], [b"HELLO", b"3"]),
])
def test_legacy_hello_leaves_out_everything_from_auth_on(redis5, args, shown):
    """Redis 5 would echo the credentials; the proxy's reply is Redis 5's reply to the HELLO
    cut before AUTH (still `ERR unknown command`, go-redis v9.0's fallback prefix)."""
    c = _login(redis5)
    try:
        reply = errors.legacy_hello(_version(redis5), args)
        assert reply == c.line(*shown)
        assert b"secret" not in reply and reply.startswith(b"-ERR unknown command `")
    finally:
        c.close()


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(before=st.lists(st.binary(max_size=40).filter(lambda b: b"S3CR" not in b), max_size=6),
       auth=st.sampled_from([b"AUTH", b"auth", b"AuTh", b"AUTH\x00junk", b"auth\x00"]),
       after=st.lists(st.binary(max_size=40), max_size=4))
def test_legacy_hello_never_echoes_what_follows_auth(before, auth, after):
    args = [b"HELLO", *before, auth, b"user", b"S3CR3T-pw", *after]
    reply = errors.legacy_hello((5, 0, 6), args)
    assert b"S3CR3T" not in reply and reply.startswith(b"-ERR unknown command `HELLO`")
    assert reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1


def test_legacy_xinfo_with_a_stream_key_has_the_common_wording(server, conn):
    """5.0's XINFO answers its own `syntax error` only when no key follows; with a key it looks
    the key up, and an existing stream gets the common unknown-subcommand text."""
    version = _version(server)
    admin = server.admin()
    admin.delete("errtest:stream")
    admin.xadd("errtest:stream", {"f": "v"}, id="1-1")
    for args in ([b"XINFO", b"nosuch", b"errtest:stream"], [b"xinfo", b"nosuch"]):
        if len(args) == 2 and version >= (7, 0, 0):
            continue   # (7.0 checks the subcommand's arity first: not this function's case)
        assert errors.unknown_subcommand(version, args) == conn.line(*args)
    admin.delete("errtest:stream")
