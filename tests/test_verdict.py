"""The one verdict (issue 16): rules compile, per user and command, a typed, named verdict
(rules.FastVerdict); the session's memo builds its entry from it (memo.compile_entry: a
_lane.Verdict, or memo.PyVerdict without the C module), which both `Session._run` and the C lane
read by name. Every kind of each, and the two memo implementations side by side.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from redisgate.policy import memo, scripts
from redisgate.protocol.commands import TABLE
from redisgate.policy.contracts import family
from redisgate.policy.rules import (ALLOW, ASK, Allow, Ask, FastKind, Keys, OneKey, Script,
                                    parse_user)

from wire import cmd

ROOT = Path(__file__).resolve().parent.parent
_lane = memo._lane


def spec_of(*args: str):
    return TABLE.lookup([a.encode() for a in args])


def verdict(rule: str, *args: str):
    return parse_user("u", rule).verdict(spec_of(*args))


# ---------------------------------------------------------------- rules: one verdict per kind

def test_allow_for_a_command_without_keys_or_with_allkeys():
    assert verdict("on nopass +ping", "PING") is ALLOW
    assert verdict("on nopass allkeys +get", "GET", "k") is ALLOW
    assert type(ALLOW) is Allow and ALLOW.kind is FastKind.ALLOW


def test_ask_when_only_the_general_walk_can_tell():
    assert verdict("on nopass", "GET", "k") is ASK                     # no selector has the bit
    assert verdict("on nopass allchannels +publish", "PUBLISH", "c", "m") is ASK   # channels
    assert verdict("on nopass allkeys +select", "SELECT", "1") is ASK  # a special command
    assert type(ASK) is Ask and ASK.kind is FastKind.ASK


def test_one_key_names_its_key_position_and_the_patterns_parts():
    v = verdict("on nopass +get ~k:* ~exact ~a?c", "GET", "k")
    assert type(v) is OneKey and v.kind is FastKind.ONE_KEY
    assert v.pos == 1 and v.most >= 2   # (GET's arity is checked before)
    assert v.prefixes == (b"k:",) and v.exact == frozenset({b"exact"})
    assert v.match(b"abc") and not v.match(b"abd")
    # read and write patterns: GET needs read, SET write
    w = verdict("on nopass +get +set %R~r:* %W~w:*", "SET", "k", "v")
    assert type(w) is OneKey and w.prefixes == (b"w:",)


def test_keys_checks_every_key_against_one_selector():
    v = verdict("on nopass +mset ~k:*", "MSET", "k:1", "v")
    assert type(v) is Keys and v.kind is FastKind.KEYS
    assert v.selector.allkeys is False
    user = parse_user("u", "on nopass +mset +del ~k:*")
    for args, ok in ((["MSET", "k:1", "v", "k:2", "v"], True),
                     (["MSET", "k:1", "v", "x", "v"], False),
                     (["DEL", "k:1", "k:2"], True), (["DEL", "k:1", "x"], False)):
        a = [x.encode() for x in args]
        assert (user.judge(TABLE.lookup(a), a) is None) is ok, args


def test_script_verdicts_mark_evalsha_as_by_sha():
    ev = verdict("on nopass +eval ~k:*", "EVAL", "return 1", "1", "k:1")
    assert type(ev) is Script and ev.kind is FastKind.SCRIPT and ev.by_sha is False
    sha = verdict("on nopass +evalsha ~k:*", "EVALSHA", "a" * 40, "1", "k:1")
    assert type(sha) is Script and sha.by_sha is True and sha.plain is not None
    assert sha.by_contract
    user = parse_user("u", "on nopass +evalsha ~k:*")
    assert user.judges_by_sha(spec_of("EVALSHA", "a" * 40, "0"))
    assert not user.judges_by_sha(spec_of("GET", "k"))


def test_verdicts_are_frozen_and_slotted():
    v = verdict("on nopass +get ~k:*", "GET", "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.pos = 2
    assert not hasattr(v, "__dict__")
    for cls in (Ask, Allow, OneKey, Keys, Script):
        assert "__slots__" in cls.__dict__, cls
    # Compiled once per user and command.
    user = parse_user("u", "on nopass +get ~k:*")
    assert user.verdict(spec_of("GET", "k")) is user.verdict(spec_of("get", "x"))


# ---------------------------------------------------------------- memo: one entry per kind

def _entry(rule: str, *args: str, counter=None):
    spec = spec_of(*args)
    a = spec.arity
    fewest, most = (a, a) if a >= 0 else (-a, 1 << 62)
    user = parse_user("u", rule)
    counter = counter if counter is not None else memo_counter()
    return memo.compile_entry(spec, fewest, most, user.verdict(spec), counter)


def memo_counter():
    from redisgate.telemetry.metrics import _Counter
    return _Counter()


def test_memo_entries_of_every_kind():
    e = _entry("on nopass +ping", "PING")
    assert e.kind is memo.ALLOW and (e.fewest, e.most) == (1, 1 << 62) and e.pos is None
    e = _entry("on nopass +get ~k:* ~x", "GET", "k")
    assert e.kind is memo.ONE_KEY and (e.fewest, e.most, e.pos) == (2, 2, 1)
    assert e.prefixes == (b"k:",) and e.exact == frozenset({b"x"}) and callable(e.match)
    e = _entry("on nopass +set ~k:*", "SET", "k", "v")
    assert e.kind is memo.ONE_KEY and (e.fewest, e.pos) == (3, 1)   # (arity narrowed to the key)
    e = _entry("on nopass +mset ~k:*", "MSET", "k", "v")
    assert e.kind is memo.ASK
    e = _entry("on nopass +evalsha ~k:*", "EVALSHA", "a" * 40, "0")
    assert e.kind is memo.SCRIPT and e.tag == family().queue_tag
    e = _entry("on nopass +eval ~k:*", "EVAL", "return 1", "0")
    assert e.kind is memo.ASK
    assert isinstance(e, memo.Verdict) and e.spec is spec_of("EVAL", "x", "0")


def test_a_one_key_verdict_whose_key_is_never_there_is_asked():
    spec = spec_of("GET", "k")
    one = OneKey(pos=5, most=6, prefixes=(), exact=frozenset(), match=lambda k: True)
    e = memo.compile_entry(spec, 2, 2, one, memo_counter())
    assert e.kind is memo.ASK


IMPLS = [pytest.param(memo.PyVerdict, id="python")]
if _lane is not None:
    IMPLS.append(pytest.param(_lane.Verdict, id="c"))


def counter_for(impl):
    return _lane.Counter() if impl is not memo.PyVerdict else memo_counter()


@pytest.mark.parametrize("impl", IMPLS)
def test_both_memo_implementations_read_alike(impl):
    c = counter_for(impl)
    spec = object()
    a = impl.allow(spec=spec, fewest=1, most=2, counter=c)
    assert (a.kind, a.spec, a.fewest, a.most, a.pos, a.prefixes, a.exact, a.match, a.counter,
            a.tag) == (memo.ALLOW, spec, 1, 2, None, (), frozenset(), None, c, None)
    k = impl.one_key(spec=spec, fewest=2, most=2, pos=1, prefixes=(b"k:",),
                     exact=frozenset({b"x"}), match=None, counter=c)
    assert (k.kind, k.pos, k.prefixes, k.exact, k.match) == \
        (memo.ONE_KEY, 1, (b"k:",), frozenset({b"x"}), None)
    assert impl.ask(spec=spec, fewest=1, most=1, counter=c).kind is memo.ASK
    s = impl.script(spec=spec, fewest=3, most=9, counter=c, tag=b"q:{")
    assert s.kind is memo.SCRIPT and s.tag == b"q:{"
    for bad in (dict(fewest=0, most=1), dict(fewest=3, most=2)):
        with pytest.raises(ValueError):
            impl.allow(spec=spec, counter=c, **bad)
    with pytest.raises(ValueError):
        impl.one_key(spec=spec, fewest=2, most=2, pos=2, prefixes=(), exact=frozenset(),
                     match=None, counter=c)
    with pytest.raises(ValueError):
        impl.script(spec=spec, fewest=3, most=9, counter=c, tag=b"")
    with pytest.raises(AttributeError):
        a.fewest = 3   # (read-only / frozen)
    # What a SCRIPT verdict learns, bounded per SHA1 and per queue.
    form = memo.script_form(scripts.LaneForm(numkeys=b"1", need=4, checks=())) \
        if impl is not memo.PyVerdict else object()
    with pytest.raises(TypeError):
        a.knows(b"s", b"q")
    assert not s.knows(b"s", b"q")
    s.learn(b"s", b"q", form)
    assert s.knows(b"s", b"q") and not s.knows(b"s", b"r") and not s.knows(b"t", b"q")
    for i in range(memo.MAX_QUEUES):
        s.learn(b"s", b"q%d" % i, form)
    assert s.knows(b"s", b"q%d" % (memo.MAX_QUEUES - 1)) and not s.knows(b"s", b"q")
    for i in range(memo.MAX_SHAS):
        s.learn(b"s%d" % i, b"q", form)
    assert s.knows(b"s%d" % (memo.MAX_SHAS - 1), b"q") and not s.knows(b"s", b"q0")


# ---------------------------------------------------------------- the C lane reads them by name

needs_c = pytest.mark.skipif(_lane is None, reason="redisgate._native._lane is not built here")


@needs_c
def test_script_forms_carry_every_check_kind_and_the_lane_applies_them():
    form = scripts.LaneForm(numkeys=b"2", need=7, checks=(
        scripts.LaneCheck(3, scripts.LaneCheckKind.PREFIX, b"q:{a}:t:"),
        scripts.LaneCheck(4, scripts.LaneCheckKind.EXACT, b"q:{a}:pending"),
        scripts.LaneCheck(5, scripts.LaneCheckKind.ONE_OF, (b"x", b"y")),
        scripts.LaneCheck(6, scripts.LaneCheckKind.DATE, b"d:")))
    native = memo.script_form(form)
    assert native.numkeys == b"2" and native.need == 7 and native.checks == 4
    v = _lane.Verdict.script(spec=None, fewest=3, most=1 << 62, counter=_lane.Counter(),
                             tag=b"q:{")
    v.learn(b"s" * 40, b"a", native)
    up, slow = [], []
    lane = _lane.Lane(slow.append, [].append)
    lane.arm({b"EVALSHA": v}, up.append, [].append, 0, 64, 1 << 20)
    good = ["EVALSHA", "s" * 40, "2", "q:{a}:t:1", "q:{a}:pending", "y", "d:2024-05-31"]
    lane.client_data(cmd(*good))
    assert up == [cmd(*good)] and slow == []
    bad = [good[:3] + ["q:{a}:t:"] + good[4:],           # PREFIX: must be longer
           good[:4] + ["q:{a}:pendin"] + good[5:],        # EXACT
           good[:5] + ["z"] + good[6:],                   # ONE_OF
           good[:6] + ["d:2024-05-3x"],                   # DATE
           good[:2] + ["3"] + good[3:],                   # numkeys as written
           good[:6],                                      # too few arguments
           good[:3] + ["q:{b}:t:1"] + good[4:],           # another queue: not learnt
           good[:3] + ["asynq:{a}:t:1"] + good[4:]]       # another tag: not this verdict's
    for args in bad:
        lane.client_data(cmd(*args))
    assert len(slow) == len(bad) and len(up) == 1


def test_the_c_lane_names_no_product():
    source = (ROOT / "redisgate" / "_native" / "_lane.c").read_text().lower()
    assert "asynq" not in source


@needs_c
def test_a_session_fills_its_memo_with_verdicts_the_lane_reads():
    from redisgate.config import build_config
    from redisgate.session.gate import Gate
    from redisgate.session import Session
    from proxy import pw_hash
    cfg = build_config({"upstream": {"address": "127.0.0.1:1"},
                        "users": {"u": {"rules": f"on {pw_hash('pw')} +get +ping ~k:*"}}})
    s = Session(Gate(cfg, upstream_version=(7, 0, 15)), "test")
    s.client_data(cmd("AUTH", "u", "pw"))
    s.connected()
    s.client_data(cmd("GET", "k:1") + cmd("PING") + cmd("GET", "x"))
    known = s.gate.fast_commands[s.user_entry.user]
    assert {name: e.kind for name, e in known.items()} == {b"GET": memo.ONE_KEY,
                                                           b"PING": memo.ALLOW}
    assert all(type(e) is _lane.Verdict for e in known.values())
    assert known[b"GET"].counter.value >= 1


def test_the_pure_python_memo_decides_as_the_c_one():
    """REDISGATE_PURE_PYTHON: PyVerdict entries, the same forwarding and refusals."""
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests")
        from redisgate.policy import memo
        from redisgate.config import build_config
        from redisgate.session.gate import Gate
        from redisgate.session import Session
        from proxy import pw_hash
        from wire import cmd
        assert memo.Verdict is memo.PyVerdict and not memo.NATIVE
        cfg = build_config({"upstream": {"address": "127.0.0.1:1"}, "users": {"u": {
            "rules": f"on {pw_hash('pw')} +get +ping +mset +evalsha ~k:*"}}})
        s = Session(Gate(cfg, upstream_version=(7, 0, 15)), "test")
        s.lane_scripts = True
        s.client_data(cmd("AUTH", "u", "pw"))
        s.connected()
        s.to_client.clear()
        s.client_data(cmd("GET", "x"))
        assert s.to_upstream == [] and b"NOPERM" in b"".join(s.to_client), s.to_client
        ok = cmd("GET", "k:1") * 3 + cmd("PING") + cmd("MSET", "k:1", "v", "k:2", "v")
        s.client_data(ok)
        assert b"".join(s.to_upstream) == ok, s.to_upstream
        known = s.gate.fast_commands[s.user_entry.user]
        kinds = {n: e.kind for n, e in known.items()}
        assert kinds == {b"GET": "one_key", b"PING": "allow", b"MSET": "ask"}, kinds
        assert all(type(e) is memo.PyVerdict for e in known.values())
        print("ok")
    """)
    env = dict(os.environ, REDISGATE_PURE_PYTHON="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
