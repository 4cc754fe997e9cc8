"""Which `CONFIG GET` patterns would reveal the upstream's credentials. No I/O.

redisgate logs in to Redis with its own credentials; a client must never be able to read them
back, or it could talk to Redis directly, past every rule and the audit. Redis answers
`CONFIG GET <pattern> [<pattern> ...]` (one pattern before 7.0) with every parameter whose name
the pattern matches, so the proxy refuses the command, for every user, when one of its patterns
matches a parameter that holds a secret:

* the parameters Redis 7.0 flags SENSITIVE_CONFIG: `requirepass`, `masterauth`, `masteruser`,
  `tls-key-file-pass`, `tls-client-key-file-pass` (`SENSITIVE_PARAMETERS`);
* and any parameter whose name contains `pass`, including ones this list does not know yet: a
  pattern is refused when *some* name containing `pass` would match it (`*pa*`, `*s`,
  `require?ass`, `[r]equirepass`, ...), decided exactly on the pattern's automaton.

Patterns are read exactly as Redis reads them: `stringmatch(pattern, name, nocase=1)` on C
strings (util.c `stringmatchlen`), so a pattern is cut at its first NUL byte, letters compare
case-insensitively, ranges compare the lower-cased ends as Redis does. A pattern without glob
characters is an exact lookup in Redis 7.0, which this also covers (it matches the same names).
The one liberty taken: Redis's recursion guard (a pattern with more than 1000 `*` may match
nothing) is ignored, which can only refuse more.
"""
from __future__ import annotations

from functools import lru_cache

from redisgate.policy.glob import class_body

__all__ = ["SENSITIVE_PARAMETERS", "pattern_reveals_secret", "config_get_reveals_secret"]

SENSITIVE_PARAMETERS: tuple[bytes, ...] = (
    b"requirepass", b"masterauth", b"masteruser", b"tls-key-file-pass",
    b"tls-client-key-file-pass")
_NEEDLE = b"pass"

_STAR = None     # an item of a compiled pattern: None for `*`, else the frozenset of bytes it takes
_Item = frozenset[int] | None
_ANY = frozenset(range(256))
# Work bounds: a pattern longer than this, or more glob patterns than this in one CONFIG GET, is
# refused without analysis (Redis's parameter names are short; nobody needs thousands of globs).
MAX_PATTERN_LEN = 256
MAX_GLOB_PATTERNS = 16


def _lower(c: int) -> int:
    """C tolower() in the C locale, on the int Redis passes it (a signed char or a byte)."""
    return c + 32 if 65 <= c <= 90 else c


def _signed(c: int) -> int:
    """A byte as the signed C `char` Redis reads from the pattern and the subject (x86-64)."""
    return c - 256 if c >= 128 else c


# tolower(signed subject byte) for every byte: what a nocase range compares.
_LOWERED = tuple(_lower(_signed(c)) for c in range(256))
# The bytes equal to a byte case-insensitively (a nocase literal).
_ANYCASE = tuple(frozenset(b for b in range(256) if _lower(b) == _lower(c)) for c in range(256))


@lru_cache(maxsize=4096)
def _range(start: int, end: int) -> frozenset[int]:
    """The subject bytes a nocase `[start-end]` takes (ends already signed, swapped, lowered)."""
    return frozenset(c for c in range(256) if start <= _LOWERED[c] <= end)


def _class(p: bytes, i: int) -> tuple[frozenset[int], int]:
    """The `[...]` class whose body starts at p[i] (nocase=1): the bytes it takes (before `^`
    negation is applied by the caller) and the index of the `]` (or of the last byte)."""
    taken, i = class_body(p, i, _ANYCASE.__getitem__,                # one byte: any case
                          lambda start, end: _range(_lower(start), _lower(end)))
    return frozenset(taken), i


def _items(pattern: bytes) -> list[_Item]:
    """The pattern as Redis's `stringmatchlen(..., nocase=1)` walks it: `*` or one byte each."""
    p = pattern.split(b"\0", 1)[0]        # stringmatch() takes C strings: strlen stops at NUL
    n = len(p)
    out: list[_Item] = []
    i = 0
    while i < n:
        c = p[i]
        if c == 0x2A:                                             # '*'
            if not out or out[-1] is not _STAR:
                out.append(_STAR)
        elif c == 0x3F:                                           # '?'
            out.append(_ANY)
        elif c == 0x5B:                                           # '['
            negate = i + 1 < n and p[i + 1] == 0x5E
            taken, i = _class(p, i + 2 if negate else i + 1)
            out.append(_ANY - taken if negate else taken)
        else:
            if c == 0x5C and n - i >= 2:                          # '\\x' outside a class
                i += 1
                c = p[i]
            out.append(_ANYCASE[c])
        i += 1
    return out


def _closures(items: list[_Item]) -> list[frozenset[int]]:
    """For each position, the positions reachable from it over `*` items (which may match
    nothing)."""
    out = []
    for s in range(len(items) + 1):
        reach = {s}
        while s < len(items) and items[s] is _STAR:
            s += 1
            reach.add(s)
        out.append(frozenset(reach))
    return out


def _matches(items: list[_Item], clos: list[frozenset[int]], name: bytes) -> bool:
    """Does the compiled pattern match the non-empty `name`? (set-of-positions simulation)"""
    end = len(items)
    states: frozenset[int] | set[int] = clos[0]
    for c in name:
        nxt: set[int] = set()
        for s in states:
            if s < end:
                it = items[s]
                if it is _STAR:
                    nxt |= clos[s]
                elif c in it:
                    nxt |= clos[s + 1]
        if not nxt:
            return False
        states = nxt
    return end in states


def _kmp(needle: bytes) -> list[dict[int, int]]:
    """delta[state][byte] of the automaton that finds `needle` (lower-case) case-insensitively;
    state len(needle) is final and absorbing."""
    m = len(needle)
    delta: list[dict[int, int]] = []
    for state in range(m + 1):
        row = {}
        for c in range(256):
            if state == m:
                row[c] = m
                continue
            text = needle[:state] + bytes([_lower(c)])
            k = min(len(text), m)
            while k and not needle.startswith(text[len(text) - k:]):
                k -= 1
            row[c] = k
        delta.append(row)
    return delta


_DELTA = _kmp(_NEEDLE)
_DELTA_REP = {rep: tuple(_DELTA[k][rep] for k in range(len(_NEEDLE) + 1)) for rep in range(256)}


# For the search below bytes behave alike when the needle automaton treats them alike: one
# representative per class (each letter of the needle, any case; everything else).
_REPS = tuple((rep, _ANYCASE[rep]) for rep in sorted(set(_NEEDLE))) + \
    ((0x78, _ANY - frozenset().union(*(_ANYCASE[c] for c in _NEEDLE))),)


def _can_match_containing(items: list[_Item], clos: list[frozenset[int]]) -> bool:
    """Is there a name containing `pass` (any case) that the compiled pattern matches? A search
    over (position in the pattern, progress in the needle)."""
    final = len(_NEEDLE)
    end = len(items)
    moves = []
    for it in items:
        accepted = _ANY if it is _STAR else it
        moves.append([_DELTA_REP[rep] for rep, members in _REPS if accepted & members])
    start = {(s, 0) for s in clos[0]}
    seen = set(start)
    todo = list(start)
    while todo:
        s, k = todo.pop()
        if s == end:
            if k == final:
                return True
            continue
        nxt = clos[s] if items[s] is _STAR else clos[s + 1]
        for delta in moves[s]:
            k2 = delta[k]
            for s2 in nxt:
                if (s2, k2) not in seen:
                    seen.add((s2, k2))
                    todo.append((s2, k2))
    return False


def pattern_reveals_secret(pattern: bytes) -> bool:
    """Would `CONFIG GET pattern` return a parameter that holds a secret?"""
    literal = pattern.split(b"\0", 1)[0]
    if len(literal) > MAX_PATTERN_LEN:
        return True
    if not any(c in literal for c in b"*?[\\"):
        low = literal.lower()
        return _NEEDLE in low or low in SENSITIVE_PARAMETERS
    return _glob_reveals_secret(literal)


@lru_cache(maxsize=1024)
def _glob_reveals_secret(literal: bytes) -> bool:
    items = _items(literal)
    clos = _closures(items)
    if any(_matches(items, clos, name) for name in SENSITIVE_PARAMETERS):
        return True
    return _can_match_containing(items, clos)


def config_get_reveals_secret(patterns: list[bytes]) -> bool:
    """Would `CONFIG GET` with these patterns return a parameter that holds a secret? (True also
    for more glob patterns than MAX_GLOB_PATTERNS: too many to check.)"""
    globs = 0
    for p in patterns:
        if any(c in p.split(b"\0", 1)[0] for c in b"*?[\\"):
            globs += 1
            if globs > MAX_GLOB_PATTERNS:
                return True
        if pattern_reveals_secret(p):
            return True
    return False
