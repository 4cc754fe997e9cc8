"""Option words by Redis's rules (redisgate/protocol/options.py), checked against a real Redis 7.

Redis compares option words with `strcasecmp`, which stops at a NUL byte, and mostly lets a
repeated option's last occurrence win. Three layers of tests:

* the helper itself;
* key extraction: for every command of the table whose COMMAND DOCS name option words (tokens),
  generated lines whose option words are NUL-suffixed, re-cased, repeated or misplaced, compared
  with `COMMAND GETKEYSANDFLAGS` on the same line (keys and flags, or its refusal);
* the proxy's verdict against what Redis really does with the line (the keyspace afterwards):
  COPY ... DB (which database got written), SCAN under `confine_scan` (never a key outside the
  prefix, and the keys Redis itself would list inside it), SORT / GEORADIUS ... STORE and XREAD
  STREAMS (never a key outside the user's patterns written or read) — including the exact lines
  of issue 23's finding 4.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from proxy import ProxyRunner, pw_hash  # noqa: E402
from test_commands import HARDENED, Gen, _conn, _pipeline, check_getkeys, live  # noqa: E402,F401

from redisgate.protocol.commands import TABLE  # noqa: E402
from redisgate.policy.confine import confine  # noqa: E402
from redisgate.protocol.options import is_word, parse_options, word  # noqa: E402
from redisgate.policy.rules import copy_db_operands  # noqa: E402

SEED = 20261207


# --- the helper ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arg, expected", [
    (b"DB", b"db"), (b"db", b"db"), (b"dB\x00", b"db"), (b"DB\x00anything", b"db"),
    (b"\x00DB", b""), (b"D\xc3\x9fB", b"d\xc3\x9fb"), (b"\xc4B", b"\xc4b"), (b"MATCH\x00*", b"match"),
])
def test_word_is_what_strcasecmp_sees(arg, expected):
    assert word(arg) == expected


def test_is_word_needs_the_whole_word_before_the_nul():
    assert is_word(b"match\x00x", b"match")
    assert not is_word(b"matc\x00h", b"match")
    assert not is_word(b"matchx", b"match")
    assert not is_word(b"", b"match")


def test_parse_options_walks_like_redis_and_the_last_occurrence_wins():
    takes = {b"replace": 0, b"db": 1}
    p = parse_options([b"COPY", b"a", b"b", b"DB", b"0", b"replace", b"db\x00", b"5"], 3, takes)
    assert p.error is None
    assert [o.name for o in p.options] == [b"db", b"replace", b"db"]
    assert p.last(b"db").values == (b"5",) and p.last(b"db").position == 6
    assert parse_options([b"COPY", b"a", b"b", b"DB"], 3, takes).error == 3      # no value
    assert parse_options([b"COPY", b"a", b"b", b"DBX", b"1"], 3, takes).error == 3
    assert parse_options([b"COPY", b"a", b"b"], 3, takes).last(b"db") is None


def test_copy_db_operands():
    assert copy_db_operands([b"COPY", b"a", b"b", b"DB", b"0", b"DB", b"5"]) == (b"0", b"5")
    assert copy_db_operands([b"COPY", b"a", b"b", b"DB\x00", b"5"]) == (b"5",)
    assert copy_db_operands([b"COPY", b"a", b"b", b"REPLACE"]) == ()
    assert copy_db_operands([b"COPY", b"a", b"b", b"DB", b"5", b"nope"]) is None


@pytest.mark.parametrize("args", [
    [b"SCAN", b"0", b"MATCH\x00", b"*", b"COUNT", b"1000000"],
    [b"SCAN", b"0", b"match\x00x", b"*"],
    [b"SCAN", b"0", b"MATCH", b"t1:*", b"mAtCh\x00", b"*"],
])
def test_confine_reads_nul_suffixed_match_as_match(args):
    assert confine("scan", args, b"t1:") is None


def test_confine_always_ends_with_a_match_inside_the_prefix():
    out = confine("scan", [b"SCAN", b"0", b"MATCHX", b"*"], b"t1:")   # Redis: syntax error
    assert out[-2:] == [b"MATCH", b"t1:*"]
    out = confine("scan", [b"SCAN", b"0", b"COUNT\x00", b"5"], b"t1:")
    assert out[-2:] == [b"MATCH", b"t1:*"]
    assert confine("scan", [b"SCAN", b"0", b"COUNT"], b"t1:") == [b"SCAN", b"0", b"COUNT"]


# --- key extraction == COMMAND GETKEYSANDFLAGS, on option-word variants --------------------------

def _tokens(arguments: list) -> set[bytes]:
    out: set[bytes] = set()
    for a in arguments or ():
        if a.get("token"):
            out.add(a["token"].encode().lower())
        out |= _tokens(a.get("arguments"))
    return out


def _variants(rng: random.Random, line: list[bytes], tokens: set[bytes]) -> list[list[bytes]]:
    """The line with its option words NUL-suffixed, re-cased, cut, repeated and misplaced."""
    out = []
    positions = [i for i in range(1, len(line)) if line[i].lower() in tokens]
    for i in positions:
        t = line[i]
        for form in (t.lower(), t.swapcase(), t + b"\x00", t.lower() + b"\x00" + t,
                     b"\x00" + t, t[:-1], t + b"x"):
            out.append(line[:i] + [form] + line[i + 1:])
        # repeated: the option and its value again at the end (NUL-suffixed)
        out.append(line + [t + b"\x00"] + line[i + 1:i + 2])
        # misplaced: the word somewhere else
        j = rng.randrange(1, len(line) + 1)
        moved = line[:i] + line[i + 1:]
        out.append(moved[:j] + [rng.choice([t, t + b"\x00z"])] + moved[j:])
    # an option word of this command where it does not belong
    if tokens:
        t = rng.choice(sorted(tokens))
        j = rng.randrange(1, len(line) + 1)
        out.append(line[:j] + [t.upper() + b"\x00"] + line[j:])
    return out


def _option_commands(docs_by: dict):
    for spec in TABLE:
        if spec.is_container:
            continue
        docs = docs_by.get(spec.name) or {}
        tokens = _tokens(docs.get("arguments"))
        keyword_spec = any(ks[1] == "keyword" for ks in spec.key_specs)
        if tokens and (spec.has_keys or keyword_spec):
            yield spec, docs, tokens


@pytest.fixture(scope="module")
def option_lines(redis7, live):
    _, docs_by = live
    rng = random.Random(SEED)
    gen = Gen(rng)
    cases = []
    commands_seen = set()
    for spec, docs, tokens in _option_commands(docs_by):
        head = [p.encode() for p in spec.name.split("|")]
        tries = 12 if spec.name in HARDENED or spec.name in ("migrate", "set", "bitfield") else 4
        for _ in range(tries):
            line = head + gen.seq(docs.get("arguments") or [])
            cases.append(line)
            cases.extend(_variants(rng, line, tokens))
        commands_seen.add(spec.name)
    cases = [c for c in cases if TABLE.lookup(c) is not None and not TABLE.lookup(c).is_container]
    conn = _conn(redis7)
    replies = _pipeline(conn, [[b"COMMAND", b"GETKEYSANDFLAGS"] + c for c in cases])
    conn.close()
    return cases, replies, commands_seen


def test_option_word_variants_extract_the_keys_redis7_extracts(option_lines):
    cases, replies, commands_seen = option_lines
    # Every command whose options decide its keys is in the generated set.
    assert {"copy", "sort", "sort_ro", "georadius", "georadiusbymember", "xread", "xreadgroup",
            "migrate", "set", "bitfield", "zunionstore", "geosearchstore", "lmpop",
            "zinterstore", "blmpop"} <= commands_seen
    compared = refused = nul = 0
    for args, reply in zip(cases, replies):
        outcome = check_getkeys(args, reply)
        refused += outcome in ("refused", "pfmerge")
        if outcome == "compared":
            compared += 1
            nul += any(b"\x00" in a for a in args)
    assert compared > 1500 and refused > 20 and nul > 500, (compared, refused, nul)


# --- the proxy's verdict against Redis's effect ---------------------------------------------------

USER_PW = "pw"


@pytest.fixture(scope="module")
def gate7(redis7):
    users = {
        "app": f"on {pw_hash(USER_PW)} ~app:* &* +@all",
        "t1": {"rules": f"on {pw_hash(USER_PW)} ~tenant1:* +@read +scan +keys +ping",
               "confine_scan": True},
    }
    runner = ProxyRunner({"upstream": redis7.upstream, "users": users}).start()
    yield runner
    runner.stop()


def _raw(runner, user):
    c = runner.client(user, USER_PW)
    c.ping()
    return c


def _noperm(exc) -> bool:
    return str(exc).startswith("NOPERM") or isinstance(exc, redis.exceptions.NoPermissionError)


def _run(client, args):
    try:
        return ("ok", client.execute_command(*args))
    except redis.exceptions.ResponseError as e:
        return ("noperm" if _noperm(e) else "error", str(e))


_DB_CLIENTS: dict = {}


def _db(redis7, db: int):
    c = _DB_CLIENTS.get((redis7.port, db))
    if c is None:
        c = _DB_CLIENTS[redis7.port, db] = redis7.admin(db=db)
    return c


def _written_dbs(redis7, key: bytes) -> set[int]:
    return {db for db in range(16) if _db(redis7, db).exists(key)}


def _clean(redis7, *keys):
    for db in range(16):
        _db(redis7, db).delete(*keys)


@pytest.mark.parametrize("tail", [
    [b"DB", b"0", b"DB", b"5"],       # finding 4: the last DB wins
    [b"DB\x00", b"5"],                # finding 4: strcasecmp stops at the NUL
    [b"db\x00x", b"5"],
    [b"REPLACE", b"dB", b"0", b"Db\x00", b"5"],
])
def test_regression_copy_cannot_write_into_another_database(redis7, gate7, tail):
    admin = redis7.admin()
    admin.set("app:c", "v")
    _clean(redis7, b"app:c2")
    c = _raw(gate7, "app")
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.execute_command(b"COPY", b"app:c", b"app:c2", *tail)
    assert _written_dbs(redis7, b"app:c2") == set()
    # Redis itself would have written into db 5: the line is not a syntax error.
    assert admin.execute_command(b"COPY", b"app:c", b"app:c2", *tail) == 1
    assert _written_dbs(redis7, b"app:c2") == {5}
    _clean(redis7, b"app:c2")


@pytest.mark.parametrize("args", [
    [b"SCAN", b"0", b"MATCH\x00", b"*", b"COUNT", b"1000000"],
    [b"SCAN", b"0", b"match\x00x", b"*", b"COUNT", b"1000000"],
    [b"SCAN", b"0", b"COUNT", b"1000000", b"MATCH\x00", b"*"],
    [b"SCAN", b"0", b"MATCH", b"tenant1:*", b"match\x00", b"*", b"COUNT", b"1000000"],
])
def test_regression_confined_scan_never_lists_the_keyspace(redis7, gate7, args):
    admin = redis7.admin()
    admin.mset({"tenant1:a": 1, "tenant2:secret": 2, "app:other": 3})
    # What Redis does with the line: the MATCH\0 is MATCH, `*` lists everything.
    listed = set(admin.execute_command(*args)[1])
    assert b"tenant2:secret" in listed
    c = _raw(gate7, "t1")
    try:
        reply = c.execute_command(*args)
    except redis.exceptions.NoPermissionError:
        return
    assert all(k.startswith(b"tenant1:") for k in reply[1]), reply


def _copy_lines(rng: random.Random, n: int) -> list[list[bytes]]:
    words = [b"DB", b"db", b"Db\x00", b"DB\x00x", b"dB\x00\x00", b"DB", b"Db\x00", b"REPLACE",
             b"replace\x00", b"D\x00B", b"DBX"]
    values = [b"0", b"5", b"0", b"5", b"3", b"05", b"-0", b"5\x00", b"x", b"REPLACE", b"0\x00"]
    out = []
    for _ in range(n):
        tail = []
        for _ in range(rng.randint(1, 4)):
            w = rng.choice(words)
            tail.append(w)
            if word(w) == b"db" or rng.random() < 0.2:
                tail.append(rng.choice(values))
        out.append([b"COPY", b"app:src", b"app:dst"] + tail)
    return out


def test_copy_verdict_agrees_with_where_redis7_writes(redis7, gate7):
    """Generated COPY ... DB/REPLACE lines: through the proxy nothing lands outside db 0 (the
    user's only database), and every line Redis would run within db 0 is allowed, same reply."""
    rng = random.Random(SEED)
    admin = redis7.admin()
    c = _raw(gate7, "app")
    seen = {"allowed": 0, "denied": 0, "redis-elsewhere": 0}
    for args in _copy_lines(rng, 150):
        admin.set("app:src", "v")
        _clean(redis7, b"app:dst")
        direct = _run(admin, args)
        direct_dbs = _written_dbs(redis7, b"app:dst")
        _clean(redis7, b"app:dst")
        via = _run(c, args)
        via_dbs = _written_dbs(redis7, b"app:dst")
        _clean(redis7, b"app:dst")
        assert via_dbs <= {0}, (args, via, via_dbs)
        if direct_dbs == {0}:
            assert via == direct, (args, via, direct)   # Redis stays in db 0: allowed
        elif direct[0] == "error":
            # Redis refuses the line. A syntax error is Redis's to answer; a DB operand that is
            # not an allowed database number is refused by the proxy first (stricter).
            assert via == direct or via[0] == "noperm", (args, via, direct)
            if copy_db_operands([a for a in args]) is None:
                assert via == direct, (args, via, direct)
        else:
            assert via[0] == "noperm", (args, via, direct_dbs)
            seen["redis-elsewhere"] += 1
        seen["allowed" if via[0] != "noperm" else "denied"] += 1
    assert min(seen.values()) >= 10, seen


def _scan_lines(rng: random.Random, n: int) -> list[list[bytes]]:
    words = [b"MATCH", b"match\x00", b"MaTcH\x00x", b"COUNT", b"count\x00", b"TYPE", b"type\x00z",
             b"MATCHX", b"M\x00ATCH"]
    patterns = [b"*", b"tenant1:*", b"tenant1:a*", b"t*", b"tenant2:*", b"*secret*"]
    out = []
    for _ in range(n):
        tail = []
        for _ in range(rng.randint(0, 4)):
            w = rng.choice(words)
            tail.append(w)
            if rng.random() < 0.93:
                ww = word(w)
                tail.append(rng.choice(patterns) if ww in (b"match", b"matchx", b"m") else
                            rng.choice([b"1000", b"string", b"0", b"x"]))
        out.append([b"SCAN", b"0"] + tail)
    return out


def test_confined_scan_agrees_with_redis7_inside_the_prefix_and_never_leaves_it(redis7, gate7):
    rng = random.Random(SEED + 1)
    admin = redis7.admin()
    admin.mset({"tenant1:a": 1, "tenant1:b": 2, "tenant2:secret": 3, "app:x": 4})
    mine = {k for k in admin.keys("*") if k.startswith(b"tenant1:")}
    c = _raw(gate7, "t1")
    seen = {"allowed": 0, "denied": 0, "error": 0}
    for args in _scan_lines(rng, 200):
        # COUNT 1000 at the end so one call sees the whole (small) keyspace in both runs.
        args = args + [b"COUNT", b"1000"] if len(args) % 2 == 0 else args
        direct = _run(admin, args)
        via = _run(c, args)
        if via[0] == "ok":
            assert all(k.startswith(b"tenant1:") for k in via[1][1]), (args, via)
            assert direct[0] == "ok", (args, direct)
            # The keys Redis lists for the line, within the prefix (Redis's effective MATCH may
            # be narrower than the prefix, never wider: the proxy's appended MATCH is its own).
            assert set(via[1][1]) == set(direct[1][1]) & mine, (args, via, direct)
            seen["allowed"] += 1
        elif via[0] == "error":
            assert via == direct, (args, via, direct)
            seen["error"] += 1
        else:
            seen["denied"] += 1
    assert min(seen.values()) >= 10, seen


def _store_lines(rng: random.Random, n: int) -> list[list[bytes]]:
    words = [b"STORE", b"store\x00", b"StOrE\x00x", b"STOREDIST", b"storedist\x00", b"STORE\x00\x00",
             b"S\x00TORE"]
    dests = [b"app:d", b"other:d"]
    out = []
    for _ in range(n):
        kind = rng.choice(["sort", "georadius", "georadiusbymember"])
        if kind == "sort":
            head = [b"SORT", b"app:l", rng.choice([b"ALPHA", b"alpha\x00"])]
            ws = [w for w in words if b"DIST" not in w.upper()]
        elif kind == "georadius":
            head = [b"GEORADIUS", b"app:g", b"15", b"37", b"200", b"km"]
            ws = words
        else:
            head = [b"GEORADIUSBYMEMBER", b"app:g", b"a", b"200", b"km"]
            ws = words
        tail = []
        for _ in range(rng.randint(1, 3)):
            tail += [rng.choice(ws), rng.choice(dests)]
        out.append(head + tail)
    return out


def test_store_options_never_write_outside_the_users_keys(redis7, gate7):
    """SORT / GEORADIUS[BYMEMBER] with STORE words in every form: through the proxy, `other:d`
    is never written; where Redis would write only `app:d`, the proxy lets it."""
    rng = random.Random(SEED + 2)
    admin = redis7.admin()
    # The same user inside Redis, for Redis's own verdict (ACL DRYRUN).
    admin.execute_command("ACL", "SETUSER", "optapp", "on", "nopass", "~app:*", "&*", "+@all")
    c = _raw(gate7, "app")
    seen = {"allowed": 0, "denied": 0, "redis-denies": 0, "redis-allows-other": 0}
    try:
        for args in _store_lines(rng, 160):
            admin.delete("app:l", "app:g", "app:d", "other:d")
            admin.rpush("app:l", "b", "a")
            admin.geoadd("app:g", (15.1, 37.1, "a"))
            redis_verdict = admin.execute_command("ACL", "DRYRUN", "optapp", *args)
            direct = _run(admin, args)
            wrote_other = admin.exists("other:d")
            admin.delete("app:d", "other:d")
            via = _run(c, args)
            assert not admin.exists("other:d"), (args, via)
            if redis_verdict != b"OK":
                seen["redis-denies"] += 1
                assert via[0] == "noperm", (args, via, redis_verdict)
            elif wrote_other:
                # Redis 7.0 checks another STORE than the one it writes (commands.py: hardening)
                seen["redis-allows-other"] += 1
                assert via[0] == "noperm", (args, via)
            else:
                assert via == direct, (args, via, direct)
            seen["allowed" if via[0] != "noperm" else "denied"] += 1
    finally:
        admin.execute_command("ACL", "DELUSER", "optapp")
        admin.delete("app:l", "app:g", "app:d", "other:d")
    assert min(seen.values()) >= 5, seen


@pytest.mark.parametrize("streams", [b"STREAMS", b"streams\x00", b"StReAmS\x00x"])
def test_xread_streams_word_in_every_form_reads_only_the_users_streams(redis7, gate7, streams):
    admin = redis7.admin()
    admin.xadd("other:xs", {"f": "secret"})
    admin.xadd("app:xs", {"f": "mine"})
    c = _raw(gate7, "app")
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.execute_command(b"XREAD", b"COUNT", b"5", streams, b"other:xs", b"0")
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.execute_command(b"XREAD", streams, b"app:xs", b"other:xs", b"0", b"0")
    assert c.execute_command(b"XREAD", streams, b"app:xs", b"0")
    admin.delete("other:xs", "app:xs")


def test_acl_cat_and_acl_log_reset_read_their_words_as_redis7(redis7, gate7):
    c = _raw(gate7, "app")
    admin = redis7.admin()
    for cat in (b"Read\x00x", b"READ"):
        assert sorted(c.execute_command("ACL", "CAT", cat)) == \
            sorted(admin.execute_command("ACL", "CAT", cat))
    for cat in (b"Foo", b"Foo\x00bar"):
        assert _run(c, ["ACL", "CAT", cat]) == _run(admin, ["ACL", "CAT", cat])
    assert c.execute_command("ACL", "LOG", b"RESET\x00x") == b"OK"


def _sort_lines(rng: random.Random, n: int) -> list[list[bytes]]:
    opts = [
        lambda: [rng.choice([b"BY", b"by\x00", b"By\x00x"]), rng.choice([b"app:w_*", b"nosort",
                                                                      b"other:*", b"app:w"])],
        lambda: [rng.choice([b"GET", b"get\x00", b"gEt\x00#"]), rng.choice([b"#", b"app:v_*"])],
        lambda: [rng.choice([b"LIMIT", b"limit\x00"]), b"0", rng.choice([b"1", b"x"])],
        lambda: [rng.choice([b"ALPHA", b"alpha\x00", b"DESC\x00", b"ASC"])],
        lambda: [rng.choice([b"STORE", b"store\x00"]), rng.choice([b"app:d", b"other:d"])],
        lambda: [rng.choice([b"GETX", b"B\x00Y"])],
    ]
    out = []
    for _ in range(n):
        line = [rng.choice([b"SORT", b"SORT_RO"]), b"app:l"]
        for _ in range(rng.randint(1, 3)):
            line += rng.choice(opts)()
        out.append(line)
    return out


def test_sort_options_in_every_form_answer_as_a_redis7_user_with_the_same_rules(redis7, gate7):
    """SORT/SORT_RO with BY/GET/LIMIT/STORE words in every form, sent by a restricted user to
    the proxy and by the same user straight to Redis 7: the same reply, and through the proxy
    nothing outside `app:*` is written."""
    rng = random.Random(SEED + 3)
    admin = redis7.admin()
    admin.execute_command("ACL", "SETUSER", "optsort", "on", ">pw", "~app:*", "&*", "+@all")
    direct_user = redis7.client(username="optsort", password="pw")
    c = _raw(gate7, "app")
    same = hardened = pattern_refusals = 0
    try:
        for args in _sort_lines(rng, 150):
            admin.delete("app:l", "app:d", "other:d")
            admin.rpush("app:l", "2", "1")
            direct = _run(direct_user, args)
            wrote_other = admin.exists("other:d")
            admin.delete("app:l", "app:d", "other:d")
            admin.rpush("app:l", "2", "1")
            via = _run(c, args)
            assert not admin.exists("other:d"), (args, via)
            if wrote_other:     # Redis 7.0 checks the first STORE, writes the last: hardened
                assert via[0] == "noperm", (args, via)
                hardened += 1
            else:
                assert via == direct, (args, via, direct)
                same += 1
                pattern_refusals += "insufficient ACL permissions" in str(via[1])
    finally:
        admin.execute_command("ACL", "DELUSER", "optsort")
        admin.delete("app:l", "app:d", "other:d")
    assert same > 100 and pattern_refusals > 20, (same, hardened, pattern_refusals)
