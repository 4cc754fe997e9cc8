"""commands.py against a real Redis 7.0: the table, key extraction, channels, availability.

The differential test builds argument lists from the server's own `COMMAND DOCS` (keys, numkeys,
keyword tokens such as STREAMS / STORE / KEYS / BY / GET, options in and out), mutates part of them
(malformed numkeys, duplicated or misplaced keywords, NUL bytes, case changes, dropped and extra
arguments) and compares `spec.keys(args)` with `COMMAND GETKEYSANDFLAGS` on the same line.

What GETKEYS refuses, and how each refusal is covered:
* "Invalid number of arguments specified for command" (arity): asserted equal to
  `not spec.check_arity(len(args))`.
* "The command has no key arguments" (no key spec, or only NOT_KEY ones such as SPUBLISH's, and no
  getkeys_proc: DEBUG, OBJECT HELP, PUBLISH, ...): asserted `spec.has_keys` is false and `keys()`
  returns [].
* "Invalid arguments specified for command" (the extraction found no key for a command whose keys
  are mandatory: ZUNIONSTORE/ZINTER/ZDIFF/ZINTERCARD/SINTERCARD/LMPOP/BLMPOP/ZMPOP/BZMPOP with a
  numkeys that is not an integer, < 1 or too big, XREAD/XREADGROUP without a usable STREAMS,
  MIGRATE ... KEYS with a non-empty key): asserted `keys()` raises KeyExtractionError, and each such
  line is then *executed* on Redis 7.0 to prove that it fails without touching a key and that
  `KeyExtractionError.reply` is exactly the error Redis sends. One exception, PFMERGE with only a
  destination: Redis checks no key yet the command runs and writes it, so `keys()` reports it.
Commands on which Redis 7.0's ACL checks the wrong keys (GEORADIUS*, SORT, XREAD*, PFMERGE) are
compared on `redis_keys()` exactly and on `keys()` as a superset; the bypass itself is shown on a
real server by the hardening tests below.
Container commands with an unknown subcommand are not sent (GETKEYS answers "Invalid command
specified" where `TABLE.lookup` deliberately returns the container).
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from gen_commands import Conn, RespError, Server, _key_spec  # noqa: E402
from servers import redis_binary  # noqa: E402

from redisgate.protocol import commands  # noqa: E402
from redisgate.protocol.commands import (TABLE, KeyExtractionError, KeyFlag, available,
                                         categories, commands_in_category, sort_pattern_option)

HARDENED = {"georadius", "georadiusbymember", "sort", "xread", "xreadgroup", "pfmerge"}


# --- helpers -------------------------------------------------------------------------------------

def _conn(srv, resp3: bool = False) -> Conn:
    c = Conn(srv.port)
    c.call("AUTH", srv.upstream["username"], srv.upstream["password"])
    if resp3:
        c.call("HELLO", "3")
    return c


def _pipeline(conn: Conn, commands_: list[list[bytes]]) -> list:
    """Send every command, then read every reply (errors come back as RespError objects)."""
    out = []
    for chunk in range(0, len(commands_), 500):
        batch = commands_[chunk:chunk + 500]
        buf = []
        for args in batch:
            buf.append(b"*%d\r\n" % len(args))
            for a in args:
                buf.append(b"$%d\r\n%s\r\n" % (len(a), a))
        conn.sock.sendall(b"".join(buf))
        out.extend(conn._read() for _ in batch)
    return out


def _flags(names: list[str]) -> int:
    f = 0
    for n in names:
        f |= KeyFlag[n.upper()]
    return int(f)


@pytest.fixture(scope="module")
def live(redis7):
    """COMMAND INFO and COMMAND DOCS of the running Redis 7, flattened to full names."""
    c = _conn(redis7, resp3=True)
    infos, docs = c.call("COMMAND", "INFO"), c.call("COMMAND", "DOCS")
    c.close()
    info_by, docs_by = {}, {}
    for info in infos:
        info_by[info[0]] = info
        docs_by[info[0]] = docs.get(info[0], {})
        for sub in info[9]:
            info_by[sub[0]] = sub
            docs_by[sub[0]] = (docs.get(info[0], {}).get("subcommands") or {}).get(sub[0], {})
    return info_by, docs_by


# --- (a) the table is the server's ---------------------------------------------------------------

def test_every_redis7_command_and_subcommand_is_in_the_table_with_identical_metadata(live):
    info_by, docs_by = live
    assert {s.name for s in TABLE} == set(info_by)
    for name, info in info_by.items():
        spec = TABLE.get(name)
        assert spec.arity == info[1], name
        assert spec.flags == frozenset(info[2]), name
        assert spec.categories == frozenset(c.lstrip("@") for c in info[6]), name
        assert (spec.first_key, spec.last_key, spec.key_step) == tuple(info[3:6]), name
        assert spec.key_specs == tuple(commands.KeySpec.from_json(_key_spec(k)) for k in info[8])
        since = docs_by[name].get("since")
        if since:
            assert spec.since == tuple(int(x) for x in since.split(".")), name
        assert spec.is_container == bool(info[9]), name
        if "|" in name:
            assert spec.parent is TABLE.get(name.split("|")[0])
            assert spec.parent.subcommands[name.split("|")[1]] is spec


def test_acl_categories_list_and_members_match_acl_cat(redis7):
    c = _conn(redis7)
    assert categories() == c.call("ACL", "CAT")
    for cat in categories():
        assert {s.name for s in commands_in_category(cat)} == set(c.call("ACL", "CAT", cat)), cat
    c.close()
    assert commands_in_category("@read") == commands_in_category("READ")
    assert commands_in_category("nosuchcategory") == []


def test_bits_are_dense_and_unique():
    assert [s.bit for s in TABLE] == list(range(len(TABLE)))
    assert all(TABLE.by_bit[s.bit] is s for s in TABLE)


def test_specs_are_immutable_after_load():
    spec = TABLE.get("get")
    with pytest.raises(AttributeError):
        spec.arity = 3
    with pytest.raises(AttributeError):
        spec.unknown = 1


def test_lookup_is_case_insensitive_and_resolves_subcommands():
    assert TABLE.lookup([b"GET", b"k"]).name == "get"
    assert TABLE.lookup([b"gEt", b"k"]).name == "get"
    assert TABLE.lookup([b"client", b"SETNAME", b"x"]).name == "client|setname"
    assert TABLE.lookup([b"CLIENT", b"sEtNaMe", b"x"]).name == "client|setname"
    assert TABLE.lookup([b"CLIENT", b"nosuch"]).name == "client"
    assert TABLE.lookup([b"CLIENT"]).name == "client"
    assert TABLE.lookup([b"GET", b"list"]).name == "get"  # only containers look at args[1]
    assert TABLE.lookup([b"nosuchcommand"]) is None
    assert TABLE.lookup([b"get\x00"]) is None
    assert TABLE.get("CLIENT|SetName") is TABLE.get("client|setname")


def test_check_arity_follows_redis_positive_exact_negative_minimum():
    get, mset = TABLE.get("get"), TABLE.get("mset")
    assert get.check_arity(2) and not get.check_arity(1) and not get.check_arity(3)
    assert mset.check_arity(3) and mset.check_arity(9) and not mset.check_arity(2)


def test_key_flags_carry_redis_bit_values():
    assert [f.name for f in KeyFlag] == ["RO", "RW", "OW", "RM", "ACCESS", "UPDATE", "INSERT",
                                         "DELETE", "NOT_KEY", "INCOMPLETE", "VARIABLE_FLAGS"]
    assert int(KeyFlag.VARIABLE_FLAGS) == 1 << 10


# --- (b) key extraction == COMMAND GETKEYSANDFLAGS -----------------------------------------------

KEYWORDS = [b"STORE", b"STOREDIST", b"STREAMS", b"KEYS", b"BY", b"GET", b"LIMIT", b"COUNT",
            b"BLOCK", b"GROUP", b"NOACK", b"AUTH", b"AUTH2", b"COPY", b"SET", b"INCRBY",
            b"OVERFLOW", b"store", b"streams", b"keys", b"get"]
BAD_NUMKEYS = [b"abc", b"-1", b"0", b"01", b"+1", b" 1", b"1abc", b"2abc", b"", b"4294967297",
               b"4294967296", b"2147483648", b"99999999999999999999", b"9223372036854775807",
               b"1\x00", b"-0", b"100"]


class Gen:
    """Argument lists from COMMAND DOCS argument trees."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def key(self) -> bytes:
        r = self.rng.random()
        if r < 0.08:
            return self.rng.choice(KEYWORDS)
        if r < 0.10:
            return b""
        return b"k%d" % self.rng.randint(1, 9)

    def value(self, arg: dict) -> bytes:
        name, t = arg["name"], arg["type"]
        if name == "host":
            return b"127.0.0.1"
        if name in ("timeout", "milliseconds", "ms", "seconds"):
            return b"0.01" if t == "double" else b"1"
        if t in ("integer", "unix-time"):
            return self.rng.choice([b"0", b"1", b"2", b"3", b"-1", b"10"])
        if t == "double":
            return self.rng.choice([b"1.5", b"0", b"10"])
        if t == "pattern":
            return self.rng.choice([b"w_*", b"nosort", b"#", b"w_*->f"])
        if self.rng.random() < 0.15:
            return self.rng.choice(KEYWORDS)
        return self.rng.choice([b"v", b"x", b"0", b"1", b"$", b">"])

    def seq(self, args: list[dict]) -> list[bytes]:
        out: list[bytes] = []
        reps = self.rng.randint(1, 3)  # shared by the parallel "multiple" args of one block
        i = 0
        while i < len(args):
            a = args[i]
            nxt = args[i + 1] if i + 1 < len(args) else None
            if a["name"] == "numkeys" and nxt is not None and nxt["type"] == "key":
                lo = 0 if "optional" in nxt.get("flags", ()) else 1
                n = self.rng.randint(lo, 3)
                out.append(b"%d" % n)
                out.extend(self.key() for _ in range(n))
                i += 2
                continue
            out.extend(self.arg(a, reps))
            i += 1
        return out

    def arg(self, a: dict, reps: int) -> list[bytes]:
        flags = a.get("flags", ())
        if "optional" in flags and self.rng.random() < 0.5:
            return []
        n = reps if "multiple" in flags else 1
        out: list[bytes] = []
        for r in range(n):
            if a.get("token") is not None and (r == 0 or "multiple_token" in flags):
                out.append(a["token"].encode())
            t = a["type"]
            if t == "key":
                out.append(self.key())
            elif t == "oneof":
                out.extend(self.arg(dict(self.rng.choice(a["arguments"]), flags=()), reps))
            elif t == "block":
                out.extend(self.seq(a["arguments"]))
            elif t != "pure-token":
                out.append(self.value(a))
        return out

    def mutate(self, args: list[bytes], numkeys_pos: int | None) -> list[bytes]:
        args = list(args)
        for _ in range(self.rng.randint(1, 3)):
            r = self.rng.random()
            if r < 0.3 and numkeys_pos is not None and numkeys_pos < len(args):
                args[numkeys_pos] = self.rng.choice(BAD_NUMKEYS)
            elif r < 0.5:
                args.insert(self.rng.randint(2, max(2, len(args))), self.rng.choice(KEYWORDS))
            elif r < 0.6:
                kw = self.rng.choice([b"STORE", b"STOREDIST", b"STREAMS", b"KEYS", b"GET", b"BY"])
                pos = self.rng.randint(2, max(2, len(args)))
                args[pos:pos] = [kw, self.key()]
            elif r < 0.65:  # an option whose value looks like an option: STORE GET, GROUP STREAMS
                kw = self.rng.choice([b"STORE", b"STOREDIST", b"GROUP", b"COUNT", b"BY", b"GET"])
                pos = self.rng.randint(2, max(2, len(args)))
                args[pos:pos] = [kw, self.rng.choice(KEYWORDS)] + (
                    [self.key()] if kw == b"GROUP" else [])
            elif r < 0.72:  # drop a keyword (STREAMS, KEYS, STORE, ...) or any argument
                kws = [i for i in range(2, len(args)) if args[i].upper() in KEYWORDS]
                if kws or len(args) > 2:
                    del args[self.rng.choice(kws) if kws else self.rng.randrange(2, len(args))]
            elif r < 0.8 and len(args) > 2:
                i = self.rng.randrange(2, len(args))
                args[i] = self.rng.choice([args[i].swapcase(), args[i] + b"\x00x"])
            else:
                args.extend(self.rng.choice(KEYWORDS + [b"k7", b"1"])
                            for _ in range(self.rng.randint(1, 3)))
        return args


def _numkeys_pos(spec) -> int | None:
    for ks in spec.key_specs:
        if ks[4] == "keynum" and ks[1] == "index":
            return ks[2] + ks[5]
    return None


def _cases(docs_by: dict) -> list[list[bytes]]:
    rng = random.Random(20240607)
    gen = Gen(rng)
    cases: list[list[bytes]] = []
    for spec in TABLE:
        if spec.is_container:
            continue
        head = [p.encode() for p in spec.name.split("|")]
        argdocs = docs_by.get(spec.name, {}).get("arguments") or []
        movable = spec.name in commands._GETKEYS_PROCS or any(
            ks[1] != "index" or ks[4] != "range" for ks in spec.key_specs)
        plain, mutated = (40, 200) if movable else ((4, 4) if spec.has_keys else (1, 0))
        for _ in range(plain):
            cases.append(head + gen.seq(argdocs))
        for _ in range(mutated):
            cases.append(gen.mutate(head + gen.seq(argdocs), _numkeys_pos(spec)))
        if spec.name in ("xread", "xreadgroup"):  # STREAMS missing, or last with nothing after it
            for _ in range(40):
                line = [a for a in head + gen.seq(argdocs) if a.upper() != b"STREAMS"]
                cases.append(line + [b"STREAMS"] * rng.randint(0, 1))
    return cases


def check_getkeys(args: list[bytes], reply) -> str:
    """TABLE's key extraction for `args` against Redis 7's COMMAND GETKEYSANDFLAGS `reply` (its
    keys and flags, or its RespError). Returns "compared" (the same keys), "refused" (both refuse
    the line), "pfmerge" (Redis checks nothing, the proxy hardens) or "error" (Redis refuses it
    before key extraction, the table agrees why)."""
    spec = TABLE.lookup(args)
    if isinstance(reply, RespError):
        msg = str(reply)
        if msg == "ERR Invalid number of arguments specified for command":
            assert not spec.check_arity(len(args)), args
        elif msg == "ERR wrong number of arguments for 'command|getkeysandflags' command":
            assert len(args) == 1 and not spec.has_keys, args  # GETKEYS needs an argument
        elif msg == "ERR The command has no key arguments":
            assert not spec.has_keys and spec.keys(args) == [], args
        elif msg == "ERR Invalid arguments specified for command":
            assert spec.check_arity(len(args)), args
            assert spec.redis_keys(args) == [], args
            if spec.name == "pfmerge":  # hardened: Redis checks nothing, PFMERGE writes dest
                assert spec.keys(args) == [(args[1], KeyFlag.RW | KeyFlag.ACCESS
                                            | KeyFlag.INSERT)], args
                return "pfmerge"
            with pytest.raises(KeyExtractionError):
                spec.keys(args)
            return "refused"
        else:
            raise AssertionError(f"unexpected GETKEYS error {msg!r} for {args}")
        return "error"
    expected = [(k.encode(), _flags(f)) for k, f in reply]
    assert spec.check_arity(len(args)), args
    assert spec.redis_keys(args) == expected, args
    got = spec.keys(args)
    if spec.name in HARDENED:
        assert got[:len(expected)] == expected, args
    else:
        assert got == expected, args
    return "compared"


@pytest.fixture(scope="module")
def differential(redis7, live):
    _, docs_by = live
    cases = [c for c in _cases(docs_by) if TABLE.lookup(c) is not None]
    conn = _conn(redis7)
    replies = _pipeline(conn, [[b"COMMAND", b"GETKEYSANDFLAGS"] + c for c in cases])
    conn.close()
    return cases, replies


def test_keys_equal_redis7_getkeysandflags_on_generated_command_lines(differential):
    cases, replies = differential
    compared = refused = 0
    for args, reply in zip(cases, replies):
        outcome = check_getkeys(args, reply)
        compared += outcome == "compared"
        refused += outcome == "refused"
    assert compared > 2000 and refused > 100, (compared, refused)


def test_refused_lines_fail_on_redis7_exactly_as_key_extraction_error_says(redis7, differential):
    cases, replies = differential
    invalid = "ERR Invalid arguments specified for command"
    refused = [c for c, r in zip(cases, replies) if isinstance(r, RespError) and str(r) == invalid
               and c[0] != b"pfmerge"]
    conn = _conn(redis7)
    conn.call("SELECT", "9")  # none of these may write; if one did, it would land here
    executed = _pipeline(conn, refused)
    conn.call("SELECT", "0")
    conn.close()
    for args, reply in zip(refused, executed):
        with pytest.raises(KeyExtractionError) as exc:
            TABLE.lookup(args).keys(args)
        assert isinstance(reply, RespError), (args, reply)
        assert exc.value.reply == b"-" + str(reply).encode() + b"\r\n", args
        assert exc.value.getkeys_reply == b"-ERR Invalid arguments specified for command\r\n"


@pytest.mark.parametrize("args, expected", [
    # the fast paths and the C quirks, pinned (values from Redis 7.0.15)
    ([b"GET", b"k"], [(b"k", KeyFlag.RO | KeyFlag.ACCESS)]),
    ([b"MSET", b"a", b"1", b"b"], [(b"a", KeyFlag.OW | KeyFlag.UPDATE),
                                   (b"b", KeyFlag.OW | KeyFlag.UPDATE)]),
    ([b"EVAL", b"s", b"1abc", b"k"], [(b"k", 0)]),
    ([b"EVAL", b"s", b"4294967297", b"k"], [(b"k", KeyFlag.RW | KeyFlag.ACCESS | KeyFlag.UPDATE)]),
    ([b"EVAL", b"s", b"0"], []),
    ([b"ZUNIONSTORE", b"d", b"1abc", b"a"], [(b"a", 0), (b"d", 0)]),
    ([b"SET", b"k", b"v", b"GET"], [(b"k", KeyFlag.RW | KeyFlag.ACCESS | KeyFlag.UPDATE)]),
    ([b"BITFIELD", b"k", b"GET", b"u8", b"0"], [(b"k", KeyFlag.RO | KeyFlag.ACCESS)]),
    ([b"MIGRATE", b"h", b"1", b"", b"0", b"5", b"KEYS", b"a"],
     [(b"a", KeyFlag.RW | KeyFlag.ACCESS | KeyFlag.DELETE)]),
    ([b"OBJECT", b"ENCODING", b"k"], [(b"k", KeyFlag.RO)]),
    ([b"MEMORY", b"USAGE", b"k"], [(b"k", KeyFlag.RO)]),
    ([b"BITOP", b"AND", b"d", b"a", b"b"], [(b"d", KeyFlag.OW | KeyFlag.UPDATE),
                                            (b"a", KeyFlag.RO | KeyFlag.ACCESS),
                                            (b"b", KeyFlag.RO | KeyFlag.ACCESS)]),
    ([b"SPUBLISH", b"ch", b"m"], []),
])
def test_pinned_extractions(args, expected):
    assert TABLE.lookup(args).keys(args) == expected


def test_numkeys_errors_are_the_execution_errors_of_redis7():
    cases = {
        (b"ZUNIONSTORE", b"d", b"abc", b"a"): b"-ERR value is not an integer or out of range\r\n",
        (b"ZINTER", b"0", b"a"): b"-ERR at least 1 input key is needed for 'zinter' command\r\n",
        (b"ZDIFF", b"3", b"a"): b"-ERR syntax error\r\n",
        (b"SINTERCARD", b"3", b"a"):
            b"-ERR Number of keys can't be greater than number of args\r\n",
        (b"LMPOP", b"x", b"a", b"LEFT"): b"-ERR numkeys should be greater than 0\r\n",
        (b"GET",): b"-ERR wrong number of arguments for 'get' command\r\n",
    }
    for args, reply in cases.items():
        with pytest.raises(KeyExtractionError) as exc:
            TABLE.lookup(list(args)).keys(list(args))
        assert exc.value.reply == reply


# --- hardening: the keys Redis 7.0's ACL misses are real, and keys() reports them ----------------

def test_georadius_store_twice_writes_the_last_key_and_keys_reports_it(redis7):
    r = redis7.admin()
    r.delete("cmdtest:geo", "cmdtest:a", "cmdtest:b")
    r.geoadd("cmdtest:geo", (13.36, 38.11, "p"))
    args = [b"GEORADIUS", b"cmdtest:geo", b"13.36", b"38.11", b"10", b"km",
            b"STORE", b"cmdtest:a", b"STORE", b"cmdtest:b"]
    r.execute_command(*args)
    assert (r.exists("cmdtest:a"), r.exists("cmdtest:b")) == (0, 1)
    keys = TABLE.lookup(args).keys(args)
    assert (b"cmdtest:b", KeyFlag.OW | KeyFlag.UPDATE) in keys
    assert b"cmdtest:b" not in TABLE.lookup(args).redis_keys(args)[0]  # Redis 7.0 misses it
    r.delete("cmdtest:geo", "cmdtest:a", "cmdtest:b")


def test_sort_store_behind_an_option_looking_store_value_is_reported(redis7):
    r = redis7.admin()
    r.delete("cmdtest:list", "cmdtest:x", "GET")
    r.rpush("cmdtest:list", 3, 1, 2)
    args = [b"SORT", b"cmdtest:list", b"STORE", b"GET", b"STORE", b"cmdtest:x"]
    r.execute_command(*args)
    assert r.lrange("cmdtest:x", 0, -1) == [b"1", b"2", b"3"]
    assert [k for k, _ in TABLE.lookup(args).redis_keys(args)] == [b"cmdtest:list", b"GET"]
    assert (b"cmdtest:x", KeyFlag.OW | KeyFlag.UPDATE) in TABLE.lookup(args).keys(args)
    r.delete("cmdtest:list", "cmdtest:x", "GET")


def test_xreadgroup_with_a_group_named_streams_reports_the_stream_really_read(redis7):
    r = redis7.admin()
    r.delete("cmdtest:s")
    r.xadd("cmdtest:s", {"f": "v"})
    r.xgroup_create("cmdtest:s", "STREAMS", id="0")
    args = [b"XREADGROUP", b"COUNT", b"1", b"GROUP", b"STREAMS", b"c", b"STREAMS",
            b"cmdtest:s", b">"]
    r.execute_command(*args)
    assert r.xpending("cmdtest:s", "STREAMS")["pending"] == 1  # the entry of cmdtest:s was read
    assert b"cmdtest:s" not in [k for k, _ in TABLE.lookup(args).redis_keys(args)]
    assert (b"cmdtest:s", KeyFlag.RO | KeyFlag.ACCESS) in TABLE.lookup(args).keys(args)
    r.delete("cmdtest:s")


def test_pfmerge_with_only_a_destination_writes_it_and_keys_reports_it(redis7):
    r = redis7.admin()
    r.delete("cmdtest:hll")
    args = [b"PFMERGE", b"cmdtest:hll"]
    assert r.execute_command(*args) in (b"OK", "OK", True)
    assert r.exists("cmdtest:hll") == 1
    assert TABLE.lookup(args).redis_keys(args) == []  # Redis 7.0's ACL checks no key
    assert TABLE.lookup(args).keys(args) == [(b"cmdtest:hll",
                                              KeyFlag.RW | KeyFlag.ACCESS | KeyFlag.INSERT)]
    r.delete("cmdtest:hll")


def test_sort_pattern_option_matches_redis7_for_a_user_without_full_key_access(redis7):
    r = redis7.admin()
    r.execute_command("ACL", "SETUSER", "cmdtest-sort", "on", ">pw", "~cmdtest:*", "+@all")
    try:
        c = Conn(redis7.port)
        c.call("AUTH", "cmdtest-sort", "pw")
        rng = random.Random(7)
        words = [b"BY", b"GET", b"LIMIT", b"0", b"1", b"x", b"ASC", b"ALPHA", b"w_*", b"#",
                 b"nosort", b"STORE", b"cmdtest:dst", b"by", b"get"]
        lines = [[b"SORT", b"cmdtest:src"] + [rng.choice(words) for _ in range(rng.randint(0, 5))]
                 for _ in range(300)]
        lines += [[b"SORT_RO"] + line[1:] for line in lines[:100]]
        replies = _pipeline(c, lines)
        c.close()
        checked = 0
        for args, reply in zip(lines, replies):
            if isinstance(reply, RespError) and str(reply).startswith("NOPERM"):
                continue  # the ACL key check (a STORE key outside ~cmdtest:*) comes first
            checked += 1
            denied = isinstance(reply, RespError) and "insufficient ACL permissions" in str(reply)
            expected = b"-" + str(reply).encode() + b"\r\n" if denied else None
            assert sort_pattern_option(args) == expected, args
        assert checked > 200
    finally:
        r.execute_command("ACL", "DELUSER", "cmdtest-sort")
        r.delete("cmdtest:dst")


# --- channels ------------------------------------------------------------------------------------

def test_channels_follow_redis7_acl_channel_checks():
    def ch(*args):
        return TABLE.lookup(list(args)).channels(list(args))
    assert ch(b"SUBSCRIBE", b"a", b"b") == [(b"a", False), (b"b", False)]
    assert ch(b"SSUBSCRIBE", b"a") == [(b"a", False)]
    assert ch(b"PSUBSCRIBE", b"n.*") == [(b"n.*", True)]
    assert ch(b"PUBLISH", b"a", b"m") == [(b"a", False)]
    assert ch(b"SPUBLISH", b"a", b"m") == [(b"a", False)]
    for unsub in (b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE"):
        assert ch(unsub, b"a") == []
    assert ch(b"PUBSUB", b"CHANNELS", b"a*") == []   # acl.c never checks PUBSUB subcommands
    assert ch(b"GET", b"a") == []


# --- (c) availability ----------------------------------------------------------------------------

def test_lmpop_is_a_redis7_command_unknown_to_62_and_50():
    lmpop = TABLE.get("lmpop")
    assert available(lmpop, (7, 0, 15))
    assert not available(lmpop, (6, 2, 14))
    assert not available(lmpop, (5, 0, 6))


def test_getdel_arrived_in_62():
    getdel = TABLE.get("getdel")
    assert available(getdel, (6, 2, 0)) and available(getdel, (6, 2))
    assert not available(getdel, (5, 0, 6))
    assert not available(getdel, (6, 0, 9))


def test_subcommand_availability_uses_since_and_the_parent():
    assert available(TABLE.get("client|list"), (5, 0, 6))
    assert not available(TABLE.get("client|no-evict"), (6, 2, 14))
    assert available(TABLE.get("acl|setuser"), (6, 0, 0))
    assert not available(TABLE.get("acl|setuser"), (5, 0, 6))


@pytest.mark.parametrize("version", ["6.2", "5"])
def test_availability_matches_the_legacy_servers_command_lists(version):
    # A bare server from tools/gen_commands.py rather than the redis62/redis5 fixtures: under
    # redis-py 8 (RESP3 by default) RedisServer.start() greets the 5.0 server with HELLO 3.
    path = redis_binary(version)
    if path is None:
        pytest.fail(f"redis-server {version} is missing: run scripts/test.sh")
    srv = Server(path)
    try:
        c = Conn(srv.port)
        names = {e[0].lower() for e in c.call("COMMAND")}
        info = c.call("INFO", "server")
        c.close()
    finally:
        srv.stop()
    v = next(line.split(":")[1] for line in info.splitlines() if line.startswith("redis_version:"))
    version_tuple = tuple(int(x) for x in v.strip().split("."))
    assert version_tuple[:2] == {"6.2": (6, 2), "5": (5, 0)}[version]
    for spec in TABLE:
        if spec.parent is None:
            assert available(spec, version_tuple) == (spec.name in names), spec.name
