"""glob.py: Redis 7.0 `stringmatchlen` semantics, bounded time, fast paths.

Three witnesses: hand-picked cases, a line-by-line Python transcription of Redis 7.0's C function
(`_stringmatchlen`, recursion and all) compared on many generated patterns, and the real Redis 7
itself (a pattern loaded as `~pattern` into an ACL user, the verdict read back with ACL DRYRUN).
"""
from __future__ import annotations

import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from redisgate.policy.glob import compile_pattern, stringmatch


# ---------------------------------------------------------------- the C function, transcribed

def _stringmatchlen(pattern: bytes, string: bytes) -> bool:
    """Redis 7.0 src/util.c stringmatchlen_impl(), statement by statement (nocase=0), on
    NUL-terminated copies as in C. Exponential on bad patterns: a reference, not an implementation.
    """
    P, S = pattern + b"\0", string + b"\0"
    skip = [False]

    def signed(c: int) -> int:
        return c - 256 if c >= 128 else c

    def impl(p: int, plen: int, s: int, slen: int, nesting: int) -> bool:
        if nesting > 1000:
            return False
        while plen and slen:
            c = P[p]
            if c == ord("*"):
                while plen and P[p + 1] == ord("*"):
                    p += 1
                    plen -= 1
                if plen == 1:
                    return True
                while slen:
                    if impl(p + 1, plen - 1, s, slen, nesting + 1):
                        return True
                    if skip[0]:
                        return False
                    s += 1
                    slen -= 1
                skip[0] = True
                return False
            elif c == ord("?"):
                s += 1
                slen -= 1
            elif c == ord("["):
                p += 1
                plen -= 1
                neg = P[p] == ord("^")
                if neg:
                    p += 1
                    plen -= 1
                match = False
                while True:
                    if P[p] == ord("\\") and plen >= 2:
                        p += 1
                        plen -= 1
                        if P[p] == S[s]:
                            match = True
                    elif P[p] == ord("]"):
                        break
                    elif plen == 0:
                        p -= 1
                        plen += 1
                        break
                    elif plen >= 3 and P[p + 1] == ord("-"):
                        start, end, ch = signed(P[p]), signed(P[p + 2]), signed(S[s])
                        if start > end:
                            start, end = end, start
                        p += 2
                        plen -= 2
                        if start <= ch <= end:
                            match = True
                    elif P[p] == S[s]:
                        match = True
                    p += 1
                    plen -= 1
                if neg:
                    match = not match
                if not match:
                    return False
                s += 1
                slen -= 1
            else:
                if c == ord("\\") and plen >= 2:
                    p += 1
                    plen -= 1
                if P[p] != S[s]:
                    return False
                s += 1
                slen -= 1
            p += 1
            plen -= 1
            if slen == 0:
                while P[p] == ord("*"):
                    p += 1
                    plen -= 1
                break
        return plen == 0 and slen == 0

    return impl(0, len(pattern), 0, len(string), 0)


def _deep(fn):
    """Run a deeply recursive reference call on a thread with a big stack."""
    result = []
    old = sys.getrecursionlimit()
    threading.stack_size(256 * 1024 * 1024)
    sys.setrecursionlimit(20000)
    try:
        t = threading.Thread(target=lambda: result.append(fn()))
        t.start()
        t.join()
    finally:
        sys.setrecursionlimit(old)
        threading.stack_size(0)
    return result[0]


# ---------------------------------------------------------------- hand-picked semantics

@pytest.mark.parametrize("pattern, subject, expected", [
    (b"*", b"anything", True),
    (b"*", b"", False),                 # Redis's loop never runs on an empty subject
    (b"**", b"", False),
    (b"", b"", True),
    (b"", b"a", False),
    (b"a*", b"a", True),                # trailing stars match the empty rest
    (b"a**", b"a", True),
    (b"a*b", b"ab", True),
    (b"a*b", b"a", False),
    (b"h?llo", b"hello", True),
    (b"h?llo", b"hllo", False),
    (b"h[ae]llo", b"hallo", True),
    (b"h[ae]llo", b"hillo", False),
    (b"h[^e]llo", b"hallo", True),
    (b"h[^e]llo", b"hello", False),
    (b"h[a-b]llo", b"hbllo", True),
    (b"h[b-a]llo", b"hallo", True),     # reversed ranges are swapped
    (b"h\\*llo", b"h*llo", True),
    (b"h\\*llo", b"hello", False),
    (b"a\\", b"a\\", True),             # a trailing backslash is a literal backslash
    (b"[\\]]", b"]", True),             # escapes inside a class
    (b"[a-]", b"b", False),             # `a-]` is a range ]..a, the class stays open
    (b"[a-]", b"^", True),
    (b"[abc", b"b", True),              # an unterminated class is what was read so far
    (b"[", b"[", False),
    (b"[^", b"x", True),
    (b"[a-\xff]", b"\xff", True),       # C char is signed: the range is -1..97
    (b"[a-\xff]", b"\x80", False),
    (b"[a-\xff]", b"\x00", True),
    (b"[\x80-\x90]", b"\x85", True),
    (b"asynq:{default}:*", b"asynq:{default}:t:1", True),
    (b"asynq:{default}:*", b"asynq:{other}:t:1", False),
    (b"asynq:{default}:*", b"asynq:{default}:", True),
])
def test_redis_glob_semantics(pattern, subject, expected):
    assert compile_pattern(pattern).match(subject) is expected
    assert _stringmatchlen(pattern, subject) is expected


@pytest.mark.parametrize("pattern, kind, literal", [
    (b"asynq:*", "prefix", b"asynq:"),
    (b"asynq:{q}:*", "prefix", b"asynq:{q}:"),
    (b"asynq:\\*:*", "prefix", b"asynq:*:"),      # escapes resolve into the literal
    (b"exact:key", "exact", b"exact:key"),
    (b"ex\\?ct", "exact", b"ex?ct"),
    (b"*", "any", None),
    (b"***", "any", None),
    (b"a*b", "glob", None),
    (b"*:x", "glob", None),
    (b"a?*", "glob", None),
])
def test_plain_patterns_compile_to_fast_paths(pattern, kind, literal):
    m = compile_pattern(pattern)
    assert (m.kind, m.literal) == (kind, literal)


def test_prefix_fast_path_refuses_the_empty_key_like_redis():
    assert compile_pattern(b"a*").match(b"") is False
    assert compile_pattern(b"*").match(b"") is False


def test_stringmatch_is_the_one_shot_form():
    assert stringmatch(b"k*", b"key") and not stringmatch(b"k*", b"other")


@pytest.mark.timeout(10)
def test_pathological_patterns_finish_without_backtracking():
    a = b"a" * 5000
    assert compile_pattern(b"a*a*a*a*a*a*a*a*b").match(a) is False
    assert compile_pattern(b"a*a*a*a*a*a*a*a*a").match(a) is True
    assert compile_pattern(b"*a?a*a[ab]a*a*b*").match(a) is False
    assert compile_pattern(b"*" + b"a*" * 400 + b"b").match(a) is False


def test_the_nesting_guard_is_reproduced():
    # Redis gives up ("no match") inside the 1001st star's recursion, so a pattern whose 1001st
    # star is not its last item matches nothing; a final 1001st star is harmless.
    never = b"*a" * 1001
    assert compile_pattern(never).kind == "never"
    assert compile_pattern(never).match(b"a" * 2000) is False
    assert _deep(lambda: _stringmatchlen(never, b"a" * 1001)) is False
    fine = b"a*" * 1001
    assert compile_pattern(fine).match(b"a" * 1001) is True
    assert _deep(lambda: _stringmatchlen(fine, b"a" * 1001)) is True
    thousand = b"*a" * 1000
    assert compile_pattern(thousand).match(b"a" * 1000) is True
    assert _deep(lambda: _stringmatchlen(thousand, b"a" * 1000)) is True


# ---------------------------------------------------------------- against the transcription

_PATTERN_BYTES = st.sampled_from(list(b"ab*?[]^-\\") + [0xFF, 0x80, 0x00])
_SUBJECT_BYTES = st.sampled_from(list(b"ab]^-\\*?[") + [0xFF, 0x80, 0x00])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PATTERN_BYTES, max_size=10).map(bytes),
       st.lists(st.lists(_SUBJECT_BYTES, max_size=8).map(bytes), min_size=1, max_size=6))
def test_matches_the_c_transcription(pattern, subjects):
    m = compile_pattern(pattern)
    for s in subjects:
        assert m.match(s) is _stringmatchlen(pattern, s), (pattern, s)


# ---------------------------------------------------------------- against Redis 7 itself

# ACL patterns cannot contain whitespace or NUL; `~*` is the allkeys flag, not a pattern.
@settings(max_examples=1000, deadline=None)
@given(st.lists(_PATTERN_BYTES, max_size=8).map(bytes).flatmap(
           lambda p: st.sampled_from([p, p + b"*", p + b"*"])),   # mostly `X*`, where it can say yes
       st.lists(_SUBJECT_BYTES, min_size=1, max_size=6).map(bytes),
       st.lists(st.lists(_SUBJECT_BYTES, max_size=6).map(bytes), min_size=1, max_size=8))
def test_covers_prefix_is_never_wrong(pattern, prefix, rests):
    # The script contracts' key shortcut trusts it for every key under a prefix: where it says
    # yes, Redis's own function must match every such key (the C transcription is the witness).
    if compile_pattern(pattern).covers_prefix(prefix):
        for rest in [b""] + rests:
            assert _stringmatchlen(pattern, prefix + rest), (pattern, prefix, rest)


def test_covers_prefix_sees_through_a_leading_glob():
    assert compile_pattern(b"asynq:{*}:*").covers_prefix(b"asynq:{default}:t:")
    assert compile_pattern(b"asynq:{def*}:*").covers_prefix(b"asynq:{default}:t:")
    assert compile_pattern(b"asynq:*").covers_prefix(b"asynq:{x}:")
    assert not compile_pattern(b"asynq:{*}:lease").covers_prefix(b"asynq:{default}:t:")
    assert not compile_pattern(b"asynq:\\*").covers_prefix(b"asynq:")   # an escaped star
    assert not compile_pattern(b"k[ab]*").covers_prefix(b"kc")
    assert not compile_pattern(b"*").covers_prefix(b"")


_ACL_PATTERN_BYTES = st.sampled_from(list(b"ab*?[]^-\\:{}") + [0xFF, 0x80, 0x7F])
_KEY_BYTES = st.sampled_from(list(b"ab]^-\\*?[:{} ") + [0xFF, 0x80, 0x7F, 0x00])


@pytest.fixture(scope="module")
def redis7_admin(redis7):
    admin = redis7.admin()
    yield admin
    admin.execute_command("ACL", "DELUSER", "globtest")


def _dryrun_verdicts(admin, pattern: bytes, keys: list[bytes]) -> list[bool]:
    pipe = admin.pipeline(transaction=False)
    pipe.execute_command("ACL", "SETUSER", "globtest", "reset", "on", "nopass", "+get",
                         b"~" + pattern)
    for k in keys:
        pipe.execute_command("ACL", "DRYRUN", "globtest", "GET", k)
    replies = pipe.execute()
    assert replies[0] in (b"OK", True, "OK")
    return [r in (b"OK", True, "OK") for r in replies[1:]]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(_ACL_PATTERN_BYTES, max_size=9).map(bytes).filter(lambda p: p != b"*"),
       st.lists(st.lists(_KEY_BYTES, max_size=8).map(bytes), min_size=1, max_size=8))
def test_matches_redis7_acl_key_patterns(redis7_admin, pattern, keys):
    verdicts = _dryrun_verdicts(redis7_admin, pattern, keys)
    m = compile_pattern(pattern)
    assert [m.match(k) for k in keys] == verdicts, pattern


@pytest.mark.parametrize("pattern, keys", [
    (b"[a-\xff]", [b"\xff", b"\x80", b"\x00", b"a", b"b"]),
    (b"[\xff-a]x", [b"\xfex", b"\x01x", b"bx"]),
    (b"[^a-z]*", [b"A1", b"a1", b"\x90"]),
    (b"\\[x]", [b"[x]", b"x", b"\\x"]),
    (b"a\\", [b"a\\", b"a"]),
    (b"[a-]", [b"b", b"^", b"]", b"a"]),
    (b"**", [b"", b"x"]),
    (b"a*" * 1001, [b"a" * 1001]),
    (b"*a" * 1001, [b"a" * 1001, b"a" * 3000]),
    (b"*a" * 1000, [b"a" * 1000]),
])
def test_edge_patterns_match_redis7(redis7_admin, pattern, keys):
    verdicts = _dryrun_verdicts(redis7_admin, pattern, keys)
    assert [compile_pattern(pattern).match(k) for k in keys] == verdicts
