"""Differential test of what the proxy answers (or refuses) itself, per upstream version.

For each Redis version behind the proxy (5.0.6, 6.2, 7.0), a generated corpus of requests that
redisgate answers or refuses locally (HELLO in every form and protocol, AUTH forms, RESET, QUIT,
CLIENT subcommands, ACL WHOAMI/CAT/DRYRUN/LOG, unknown commands, wrong arity, commands newer than
the upstream, the same inside MULTI) is sent twice on fresh connections: once to the same Redis
directly, once through redisgate, as a user with full rights. The bytes must be equal.

Redis and the proxy are set up so that AUTH behaves the same: Redis 6.2/7.0 get `requirepass`
(the default user's password) and an ACL user `full` with all rights; the proxy has the same two
users with the same passwords and reaches Redis as `full`. Redis 5 has only `requirepass`: there
the proxy's `default` user has that password.

Exceptions, and only these:
- `DELIBERATE`: the differences README documents (credentials never echoed, the proxy's own
  ACL in front of any Redis, ...), each by case name with its reason. A case listed there must
  still differ (a stale entry fails too), and a difference not listed fails.
- `NORMALISE`: replies that vary between any two connections (connection ids, ages, addresses),
  rewritten explicitly and narrowly, per case.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Callable

import pytest

from proxy import redis_and_proxy
from servers import redis_binary
from wire import cmd

DEFAULT_PW = "diff-default-pw"
FULL_PW = "diff-full-pw"
FULL = "allkeys allchannels +@all"
VERSIONS = ["5", "6.2", "7"]


# ---------------------------------------------------------------- the corpus

@dataclass(frozen=True)
class Case:
    """Commands sent as one pipeline on a fresh connection, after logging in (`login`) or not."""
    name: str
    commands: tuple
    login: bool = True
    normalise: tuple = ()          # names in NORMALISE
    versions: tuple = tuple(VERSIONS)


def _c(name, *commands, **kw) -> Case:
    return Case(name, tuple(tuple(c) for c in commands), **kw)


def _hello_cases() -> list[Case]:
    """HELLO in every form: protocol argument x options x logged in or not, then two commands
    that show the connection's state afterwards (protocol, name, authentication)."""
    protos = {"none": [], "2": ["2"], "3": ["3"], "4": ["4"], "0": ["0"], "neg": ["-1"],
              "x": ["x"], "empty": [""], "3.0": ["3.0"], "big": ["99999999999999999999"],
              "03": ["03"], "+3": ["+3"], "-0": ["-0"], "2nul": ["2\0"]}
    options = {
        "": [],
        "auth": ["AUTH", "full", FULL_PW],
        "auth-lower": ["auth", "full", FULL_PW],
        "auth-default": ["AUTH", "default", DEFAULT_PW],
        "auth-wrong": ["AUTH", "full", "wrong-pw"],
        "auth-nobody": ["AUTH", "nobody", "x"],
        "auth-short": ["AUTH", "full"],
        "setname": ["SETNAME", "n1"],
        "setname-bad": ["SETNAME", "bad name"],
        "auth-setname": ["AUTH", "full", FULL_PW, "SETNAME", "n2"],
        "setname-auth": ["SETNAME", "n3", "AUTH", "full", FULL_PW],
        "auth-twice": ["AUTH", "nobody", "x", "AUTH", "full", FULL_PW],
        "bogus": ["FOO"],
        "setname-short": ["SETNAME"],
        "setname-empty": ["SETNAME", ""],
        "setname-nul": ["SETNAME", "a\0b"],
        "auth-nul": ["AUTH\0x", "full", FULL_PW],
        "auth-then-bogus": ["AUTH", "full", FULL_PW, "FOO"],
        "auth-then-bad-name": ["AUTH", "full", FULL_PW, "SETNAME", "bad name"],
        "auth-setname-bogus": ["AUTH", "full", FULL_PW, "SETNAME", "n5", "FOO"],
        "auth-then-wrong": ["AUTH", "full", FULL_PW, "AUTH", "nobody", "x"],
        "setname-twice": ["SETNAME", "a", "SETNAME", "b", "AUTH", "full", FULL_PW],
    }
    after = (("CLIENT", "GETNAME"), ("GET", "diff:missing"))
    cases = []
    for pname, p in protos.items():
        for oname, o in options.items():
            # (protocol "none" with options: `HELLO AUTH ...`, the option in the protocol's place)
            for login in (False, True):
                name = f"hello[{pname}{'+' + oname if oname else ''}]{'' if login else '-preauth'}"
                cases.append(_c(name, ["HELLO", *p, *o], *after, login=login,
                                normalise=("hello_id",)))
    cases.append(_c("hello-setname-then-noauth", ["HELLO", "3", "SETNAME", "n4"], ["PING"],
                    ["AUTH", "full", FULL_PW], ["CLIENT", "GETNAME"], login=False,
                    versions=("6.2", "7")))
    return cases


def _auth_cases() -> list[Case]:
    forms = {
        "none": ["AUTH"],
        "default-pw": ["AUTH", DEFAULT_PW],
        "wrong-pw": ["AUTH", "wrong-pw"],
        "user": ["AUTH", "full", FULL_PW],
        "user-lower": ["auth", "full", FULL_PW],
        "default-user": ["AUTH", "default", DEFAULT_PW],
        "user-wrong": ["AUTH", "full", "wrong-pw"],
        "nobody": ["AUTH", "nobody", "x"],
        "three": ["AUTH", "a", "b", "c"],
        "empty": ["AUTH", ""],
    }
    cases = []
    for fname, f in forms.items():
        for login in (False, True):
            cases.append(_c(f"auth[{fname}]{'' if login else '-preauth'}", f,
                            ("GET", "diff:missing"), login=login))
    return cases


def _connection_cases() -> list[Case]:
    return [
        _c("reset", ["RESET"], ["GET", "diff:missing"]),
        _c("reset-preauth", ["RESET"], ["GET", "diff:missing"], login=False),
        _c("reset-after-setname", ["CLIENT", "SETNAME", "r1"], ["RESET"], ["AUTH", "full", FULL_PW],
           ["CLIENT", "GETNAME"]),
        _c("reset-args", ["RESET", "x"]),
        _c("quit", ["QUIT"], ["PING"]),
        _c("quit-preauth", ["QUIT"], ["PING"], login=False),
        _c("quit-args", ["QUIT", "x"], ["PING"]),
        _c("client-setname", ["CLIENT", "SETNAME", "c1"], ["CLIENT", "GETNAME"]),
        _c("client-setname-bad", ["CLIENT", "SETNAME", "bad name"], ["CLIENT", "GETNAME"]),
        _c("client-setname-arity", ["CLIENT", "SETNAME"]),
        _c("client-getname", ["CLIENT", "GETNAME"]),
        _c("client-getname-args", ["CLIENT", "GETNAME", "x"]),
        _c("client-id", ["CLIENT", "ID"], normalise=("client_id",)),
        _c("client-info", ["CLIENT", "INFO"], normalise=("client_info",)),
        _c("client-setinfo-name", ["CLIENT", "SETINFO", "LIB-NAME", "go-redis(,go1.22.0)"]),
        _c("client-setinfo-ver", ["CLIENT", "SETINFO", "LIB-VER", "9.14.1"]),
        _c("client-setinfo-lower", ["client", "setinfo", "lib-name", "x"]),
        _c("client-setinfo-arity", ["CLIENT", "SETINFO"]),
        _c("client-bogus", ["CLIENT", "FROB"]),
        _c("client-bare", ["CLIENT"]),
        _c("client-preauth", ["CLIENT", "ID"], login=False),
        _c("select-0", ["SELECT", "0"]),
        _c("ping-preauth", ["PING"], login=False),
        _c("echo-arity", ["ECHO"]),
    ]


def _acl_cases() -> list[Case]:
    return [
        _c("acl-whoami", ["ACL", "WHOAMI"]),
        _c("acl-whoami-args", ["ACL", "WHOAMI", "x"]),
        _c("acl-cat", ["ACL", "CAT"]),
        _c("acl-cat-keyspace", ["ACL", "CAT", "keyspace"], normalise=("order",)),
        _c("acl-cat-connection", ["ACL", "CAT", "connection"], normalise=("order",)),
        _c("acl-cat-bogus", ["ACL", "CAT", "bogus"]),
        _c("acl-dryrun-get", ["ACL", "DRYRUN", "full", "GET", "k"]),
        _c("acl-dryrun-nobody", ["ACL", "DRYRUN", "nobody", "GET", "k"]),
        _c("acl-dryrun-unknown", ["ACL", "DRYRUN", "full", "FROB"]),
        _c("acl-dryrun-arity", ["ACL", "DRYRUN", "full", "GET"]),
        _c("acl-bogus", ["ACL", "FROB"]),
        _c("acl-bare", ["ACL"]),
        _c("acl-preauth", ["ACL", "WHOAMI"], login=False),
        _c("acl-log-after-failed-auth", ["ACL", "LOG", "RESET"], ["AUTH", "full", "wrong-pw"],
           ["ACL", "LOG", "1"], normalise=("acl_log",)),
    ]


def _unknown_and_arity_cases() -> list[Case]:
    long = "x" * 200
    return [
        _c("unknown", ["FROB"]),
        _c("unknown-args", ["frob", "a", "b"]),
        _c("unknown-preauth", ["FROB", "a"], login=False),
        _c("unknown-long-name", [long, "a"]),
        _c("unknown-long-args", ["FROB", long, "b"]),
        _c("unknown-many-args", ["FROB", *[f"arg{i:03d}" for i in range(40)]]),
        _c("unknown-crlf", ["FROB", "a\r\nb"]),
        _c("unknown-nul", ["FROB", "a\0b"]),
        _c("unknown-empty", [""]),
        _c("arity-get", ["GET"]),
        _c("arity-get-3", ["GET", "a", "b"]),
        _c("arity-set", ["SET", "a"]),
        _c("arity-preauth", ["GET"], login=False),
        _c("arity-config", ["CONFIG"]),
        _c("arity-object", ["OBJECT"]),
        _c("config-bogus", ["CONFIG", "FROB"]),
        _c("xinfo-bogus", ["XINFO", "FROB", "diff:missing"]),
        _c("xinfo-bogus-stream", ["XADD", "diff:s", "1-1", "f", "v"], ["XINFO", "FROB", "diff:s"],
           ["DEL", "diff:s"]),
        _c("xinfo-bogus-nokey", ["XINFO", "FROB"]),
        _c("memory-bogus", ["MEMORY", "FROB"]),
    ]


# Commands newer than the upstream: that version's unknown-command (or subcommand) error.
NEWER = {
    "5": [["GETDEL", "k"], ["LMOVE", "a", "b", "LEFT", "RIGHT"], ["COPY", "a", "b"],
          ["SMISMEMBER", "s", "a"], ["GETEX", "k"], ["LPOS", "l", "a"], ["CLIENT", "INFO"],
          ["CLIENT", "TRACKINGINFO"], ["XAUTOCLAIM", "s", "g", "c", "0", "0"]],
    "6.2": [["LMPOP", "1", "l", "LEFT"], ["SINTERCARD", "1", "s"], ["EXPIRETIME", "k"],
            ["FCALL", "f", "0"], ["FUNCTION", "LIST"], ["CLIENT", "NO-EVICT", "on"],
            ["OBJECT", "FREQ", "k"]],
    "7": [["WAITAOF", "0", "0", "0"], ["CLIENT", "SETINFO", "LIB-VER", "1"]],
}


def _newer_cases() -> list[Case]:
    out = []
    for v, commands in NEWER.items():
        for c in commands:
            out.append(_c(f"newer[{v}]-{'-'.join(c[:2]).lower()}", c, versions=(v,)))
            out.append(_c(f"newer[{v}]-{'-'.join(c[:2]).lower()}-multi", ["MULTI"], c, ["EXEC"],
                          versions=(v,)))
    return out


def _multi_cases() -> list[Case]:
    out = []
    for name, c in (("unknown", ["FROB", "a"]), ("arity", ["GET"]), ("hello", ["HELLO"]),
                    ("hello-3", ["HELLO", "3"]),
                    ("hello-2-auth", ["HELLO", "2", "AUTH", "full", FULL_PW]),
                    ("auth", ["AUTH", "full", FULL_PW]), ("auth-pw", ["AUTH", DEFAULT_PW]),
                    ("acl-whoami", ["ACL", "WHOAMI"]),
                    ("client-setinfo", ["CLIENT", "SETINFO", "LIB-VER", "1"]),
                    ("client-bogus", ["CLIENT", "FROB"]), ("config-bogus", ["CONFIG", "FROB"])):
        out.append(_c(f"multi-{name}", ["MULTI"], c, ["EXEC"], ["GET", "diff:missing"]))
    out.append(_c("multi-reset", ["MULTI"], ["SET", "diff:k", "v"], ["RESET"], ["GET", "diff:k"]))
    out.append(_c("multi-quit", ["MULTI"], ["QUIT"], ["PING"]))
    out.append(_c("multi-nested", ["MULTI"], ["MULTI"], ["EXEC"]))
    out.append(_c("exec-alone", ["EXEC"]))
    out.append(_c("discard-alone", ["DISCARD"]))
    return out


CORPUS = (_hello_cases() + _auth_cases() + _connection_cases() + _acl_cases()
          + _unknown_and_arity_cases() + _newer_cases() + _multi_cases())
assert len({c.name for c in CORPUS}) == len(CORPUS)


# ---------------------------------------------------------------- normalisation

def _hello_id(data: bytes) -> bytes:
    """HELLO's reply names the connection's id: the upstream connection's, through the proxy."""
    return re.sub(rb"(\$2\r\nid\r\n):\d+\r\n", rb"\1:<id>\r\n", data)


def _client_id(data: bytes) -> bytes:
    return re.sub(rb"^:\d+\r\n", b":<id>\r\n", data)


# CLIENT INFO fields that differ between any two connections (and between the proxy's upstream
# connection and a direct one: its address and file descriptor; and the query and output
# buffers at that moment, which depend on what came in the same read: the direct client's AUTH
# and command arrive together, while the proxy sends the client's command only once its own
# AUTH was answered, see session.upstream.send_setup).
_CLIENT_INFO_VARYING = (b"id", b"addr", b"laddr", b"fd", b"age", b"idle", b"qbuf", b"qbuf-free",
                        b"obl")


def _client_info(data: bytes) -> bytes:
    m = re.match(rb"\$(\d+)\r\n(.*)\r\n$", data, re.S)
    if not m:
        return data
    fields = []
    for f in m.group(2).split(b" "):
        k, _, v = f.partition(b"=")
        fields.append(k + b"=<v>" if k in _CLIENT_INFO_VARYING else f)
    text = b" ".join(fields)
    return b"$%d\r\n%s\r\n" % (len(text), text)


def _order(data: bytes) -> bytes:
    """ACL CAT <category>: Redis lists a hash table's order; compare as a set."""
    m = re.match(rb"\*(\d+)\r\n(.*)$", data, re.S)
    if not m:
        return data
    items = re.findall(rb"\$\d+\r\n[^\r]*\r\n", m.group(2))
    return b"*" + m.group(1) + b"\r\n" + b"".join(sorted(items))


def _acl_log(data: bytes) -> bytes:
    """ACL LOG: the entry's age and its client's description (the proxy describes the client
    connection it saw, Redis its own connection) vary."""
    data = re.sub(rb"(\$11\r\nage-seconds\r\n)(\$\d+\r\n[0-9.]+\r\n|,[0-9.]+\r\n)",
                  rb"\1<age>", data)
    return re.sub(rb"(\$11\r\nclient-info\r\n)\$\d+\r\n[^\r]*\r\n", rb"\1<client>", data)


NORMALISE = {"hello_id": _hello_id, "client_id": _client_id, "client_info": _client_info,
             "order": _order, "acl_log": _acl_log}


# ---------------------------------------------------------------- deliberate differences

@dataclass(frozen=True)
class Deliberate:
    versions: tuple
    reason: str
    cases: tuple = field(default=())   # case names; "*" matches any run of characters
    # When set: what the proxy must answer instead, exactly: Redis's own bytes for twin(case).
    twin: Callable[[Case], Case] | None = None


def _hello_cut_at_auth(case: Case) -> Case:
    """The same commands with each HELLO cut before its first AUTH (as strcasecmp compares)."""
    def cut(c):
        if c[0].upper() != "HELLO":
            return c
        for i, a in enumerate(c[1:], 1):
            if a.split("\0")[0].lower() == "auth":
                return c[:i]
        return c
    return Case(case.name + "~twin", tuple(cut(c) for c in case.commands), case.login,
                case.normalise, case.versions)


_CREDENTIALS = ("Redis 5 echoes HELLO's arguments in its unknown-command error; the proxy leaves "
                "out everything from AUTH on, so credentials are never echoed")
_ACL_ANY = ("the proxy's own ACL commands (WHOAMI, CAT, DRYRUN, LOG) are answered by the proxy in "
            "front of any Redis, with Redis 7.0's semantics")
_AUTH_ACL = ("AUTH has Redis 6+ (ACL) semantics in front of any Redis: `AUTH user pass` and the "
             "WRONGPASS wording also in front of Redis 5 (errors.py)")
_RESET_ANY = "RESET is answered by the proxy in front of any Redis"
_NO_MULTI = ("AUTH, HELLO and ACL are answered by the proxy, which cannot queue them in a "
             "transaction: refused there with 7.0's no-multi error, which dooms the transaction "
             "(errors.not_in_multi)")

_SUBCOMMAND_AT_QUEUE = ("a container's unknown (or newer) subcommand is refused when it is "
                        "queued, as Redis 7.0 does; Redis < 7 queues it and fails it at EXEC. The "
                        "proxy never forwards what it cannot judge")
_NO_DATA = ("Redis < 7's XINFO looks the key up before the subcommand (`no such key`); the proxy "
            "refuses an unknown subcommand without reading data, with the wording Redis uses "
            "for an existing stream (case xinfo-bogus-stream)")
_NAME_BEFORE_LOGIN = ("Redis 6.2/7.0 apply HELLO's SETNAME even when the HELLO then fails with "
                      "NOAUTH; before a login the proxy has no upstream connection to name, so the "
                      "name is not kept")

# name -> Deliberate. Every difference between direct and proxied bytes must be listed here, and
# README's "Where local replies differ from Redis" names each kind.
DELIBERATE = {
    "hello-credentials-not-echoed": Deliberate(("5",), _CREDENTIALS, (
        "hello[*+auth]*", "hello[*+auth-lower]*", "hello[*+auth-default]*",
        "hello[*+auth-wrong]*", "hello[*+auth-nobody]*", "hello[*+auth-short]*",
        "hello[*+auth-setname]*", "hello[*+setname-auth]*", "hello[*+auth-twice]*",
        "hello[*+auth-nul]*", "hello[*+auth-then-*]*", "hello[*+auth-setname-bogus]*",
        "hello[*+setname-twice]*", "multi-hello-2-auth"), twin=_hello_cut_at_auth),
    "acl-in-front-of-redis-5": Deliberate(("5",), _ACL_ANY, (
        "acl-whoami", "acl-cat", "acl-cat-keyspace", "acl-cat-connection", "acl-cat-bogus",
        "acl-dryrun-get", "acl-dryrun-nobody", "acl-dryrun-unknown", "acl-dryrun-arity",
        "acl-log-after-failed-auth", "acl-whoami-args", "acl-bogus", "acl-bare", "acl-preauth",
        "multi-acl-whoami")),
    "acl-7.0-in-front-of-6.2": Deliberate(("6.2",), _ACL_ANY + (
        ": ACL DRYRUN (new in 7.0) exists, and ACL CAT <category> lists 7.0's commands and "
        "subcommands"), ("acl-cat-keyspace", "acl-cat-connection", "acl-dryrun-*")),
    "auth-acl-semantics": Deliberate(("5",), _AUTH_ACL, (
        "auth[wrong-pw]*", "auth[user]*", "auth[user-lower]*", "auth[default-user]*",
        "auth[user-wrong]*", "auth[nobody]*", "auth[three]*", "auth[empty]*",
        "reset-after-setname", "multi-auth", "acl-log-after-failed-auth")),
    "reset-in-front-of-any-redis": Deliberate(("5",), _RESET_ANY, (
        "reset", "reset-preauth", "reset-args", "reset-after-setname", "multi-reset")),
    "no-multi-for-local-commands": Deliberate(("6.2", "7"), _NO_MULTI, (
        "multi-hello", "multi-hello-3", "multi-hello-2-auth", "multi-auth", "multi-auth-pw",
        "multi-acl-whoami")),
    "no-multi-for-auth-legacy": Deliberate(("5",), _NO_MULTI, ("multi-auth-pw",)),
    "subcommand-refused-when-queued": Deliberate(("5", "6.2"), _SUBCOMMAND_AT_QUEUE, (
        "multi-client-setinfo", "multi-client-bogus", "multi-config-bogus",
        "newer[*]-client-*-multi")),
    "xinfo-without-reading-data": Deliberate(("5", "6.2"), _NO_DATA, ("xinfo-bogus",)),
    "hello-name-before-login": Deliberate(("6.2", "7"), _NAME_BEFORE_LOGIN,
                                          ("hello-setname-then-noauth",)),
}


def _listed(case: Case, version: str) -> list[str]:
    """The names of the DELIBERATE entries that cover this case on this version."""
    hits = []
    for key, d in DELIBERATE.items():
        if version not in d.versions:
            continue
        for pattern in d.cases:
            if re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), case.name):
                hits.append(key)
                break
    return hits


# ---------------------------------------------------------------- servers and wire

@dataclass
class Pair:
    version: str
    direct_port: int
    proxy_port: int


@pytest.fixture(scope="module", params=VERSIONS + [v + "+multiplex" for v in VERSIONS])
def pair(request):
    # "+multiplex": the proxy with `upstream.multiplex: 1` (stateless commands on a shared link).
    version, _, mux = request.param.partition("+")
    if redis_binary(version) is None:
        pytest.fail(f"redis-server {version} is missing: run scripts/test.sh")
    with redis_and_proxy(version, DEFAULT_PW, {"full": (FULL_PW, FULL)}, default_rules=FULL,
                         multiplex=bool(mux)) as (srv, runner):
        yield Pair(version, srv.port, runner.port)


def _login_command(version: str) -> tuple:
    return ("AUTH", DEFAULT_PW) if version == "5" else ("AUTH", "full", FULL_PW)


def _frame_end(buf: bytes, pos: int) -> int | None:
    """Where the RESP2/RESP3 frame starting at `pos` ends; None when it is not all there."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return None
    kind, head, pos = buf[pos:pos + 1], buf[pos + 1:eol], eol + 2
    if kind in b"+-:_#,(":
        return pos
    if kind in b"$=!":
        n = int(head)
        return pos if n < 0 else (pos + n + 2 if len(buf) >= pos + n + 2 else None)
    if kind in b"*~>%|":
        n = int(head) * (2 if kind in b"%|" else 1)
        for _ in range(max(n, 0)):
            pos = _frame_end(buf, pos)
            if pos is None:
                return None
        return pos
    raise AssertionError(f"not RESP: {buf[pos - 2 - len(head) - 1:][:40]!r}")


def _exchange(port: int, commands: list[tuple]) -> list[bytes]:
    """Send the commands as one pipeline on a fresh connection; each reply's exact bytes (fewer
    when the connection closes, as after QUIT)."""
    sock = socket.create_connection(("127.0.0.1", port), 10)
    try:
        sock.sendall(b"".join(cmd(*c) for c in commands))
        buf = b""
        replies = []
        start = 0
        while len(replies) < len(commands):
            end = _frame_end(buf, start) if start < len(buf) else None
            if end is not None:
                replies.append(buf[start:end])
                start = end
                continue
            data = sock.recv(1 << 16)
            if not data:
                break
            buf += data
        return replies
    finally:
        sock.close()


def _run(port: int, version: str, case: Case) -> tuple[list[bytes], list[bytes]]:
    prelude = [_login_command(version)] if case.login else []
    replies = _exchange(port, prelude + list(case.commands))
    return replies[:len(prelude)], replies[len(prelude):]


def _normalised(case: Case, replies: list[bytes]) -> list[bytes]:
    for name in case.normalise:
        replies = [NORMALISE[name](r) for r in replies]
    return replies


# ---------------------------------------------------------------- the test

def test_corpus_is_large_and_every_deliberate_entry_names_cases():
    assert len(CORPUS) > 300
    names = [c.name for c in CORPUS]
    for key, d in DELIBERATE.items():
        for pattern in d.cases:
            rx = re.escape(pattern).replace(r"\*", ".*")
            assert any(re.fullmatch(rx, n) for n in names), (key, pattern)


def test_local_replies_equal_the_upstream_versions_own(pair):
    mismatches, stale = [], []
    for case in CORPUS:
        if pair.version not in case.versions:
            continue
        pre_d, direct = _run(pair.direct_port, pair.version, case)
        pre_p, proxied = _run(pair.proxy_port, pair.version, case)
        assert pre_d == pre_p == ([b"+OK\r\n"] if case.login else []), case.name
        for secret in (FULL_PW, DEFAULT_PW, "wrong-pw"):   # whatever Redis itself echoes
            assert not any(secret.encode() in r for r in proxied), (case.name, proxied)
        same = _normalised(case, direct) == _normalised(case, proxied)
        listed = _listed(case, pair.version)
        for key in listed:
            if DELIBERATE[key].twin is not None:
                _, expected = _run(pair.direct_port, pair.version, DELIBERATE[key].twin(case))
                assert _normalised(case, proxied) == _normalised(case, expected), (key, case.name)
        if not same and not listed:
            mismatches.append((case.name, case.commands, direct, proxied))
        elif same and listed:
            stale.append((case.name, listed))
    report = "\n".join(f"{n} {c!r}\n  redis: {d!r}\n  proxy: {p!r}" for n, c, d, p in mismatches)
    assert not mismatches, f"{len(mismatches)} unlisted differences:\n{report}"
    assert not stale, f"listed as deliberate but equal: {stale}"
