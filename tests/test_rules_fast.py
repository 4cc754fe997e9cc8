"""commands' single_key / plain_keys shapes and rules.User's compiled verdicts decide what the
general key extraction and rule walk decide.

The shortcut's tests: see tests/shortcuts.py.
"""
from __future__ import annotations

import random


from redisgate.protocol.commands import TABLE, KeyExtractionError
from redisgate.policy.rules import ALLOW, OneKey, parse_user, RuleError

from test_rules_oracle import _command, _rule_set
from shortcuts import BOTH_SCANS

pytestmark = BOTH_SCANS


# --- commands: single_key shapes are what keys() returns ----------------------------------------

def test_single_key_shapes_match_key_extraction():
    rng = random.Random(7)
    pool = [b"k", b"GET", b"STORE", b"1", b"-1", b"x", b"BY", b"STREAMS"]
    checked = 0
    for spec in TABLE:
        shape = getattr(spec.keys, "single_key", None)
        if shape is None:
            continue
        pos, flags, most = shape.pos, shape.flags, shape.most
        for _ in range(20):
            n = rng.randint(pos + 1, min(most, pos + 8))
            args = [spec.name.encode()] + [rng.choice(pool) for _ in range(n - 1)]
            if not spec.check_arity(len(args)):
                continue
            assert spec.keys(args) == [(args[pos], flags)], (spec.name, args)
            checked += 1
    assert checked > 1000


# --- rules: the compiled verdicts are the walk's ------------------------------------------------

def outcome(fn, *a):
    try:
        d = fn(*a)
    except KeyExtractionError as e:
        return "raises", e.reply
    return None if d is None else (d.kind, d.object, d.reason, d.command, d.user)


def test_judge_shortcuts_agree_with_the_general_walk():
    rng = random.Random(20240601)
    judged = shortcut_allowed = 0
    for _ in range(400):
        try:
            user = parse_user("u", _rule_set(rng))
        except RuleError:
            continue
        for _ in range(40):
            args = _command(rng)
            spec = TABLE.lookup(args)
            fast = outcome(user.judge, spec, args, 0)
            assert fast == outcome(user._walk, spec, args, 0), (user.describe(), args)
            judged += 1
            short = user.verdict(spec)
            if short is ALLOW or (type(short) is OneKey and short.pos < len(args) <= short.most
                                  and (args[short.pos].startswith(short.prefixes)
                                       or args[short.pos] in short.exact
                                       or short.match(args[short.pos]))):
                shortcut_allowed += 1
                assert fast is None, (user.describe(), args)
    assert judged > 10000 and shortcut_allowed > 500
