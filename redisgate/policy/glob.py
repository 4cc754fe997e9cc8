"""Redis glob patterns (`stringmatchlen`, Redis 7.0 src/util.c), compiled once, matched in bounded time.

No I/O. `compile_pattern(pattern) -> Matcher`; `matcher.match(subject) -> bool` answers exactly what
Redis 7.0's `stringmatchlen(pattern, subject, nocase=0)` answers, for every pair of byte strings:

* `*` any run of bytes, `?` one byte, `\\x` the byte x (a trailing `\\` is a literal backslash).
* `[abc]`, `[^abc]`, `[a-z]`: one byte; ranges with reversed ends are swapped; `\\x` inside a class is
  the byte x. Range ends compare as C `char`, which is *signed* on x86-64, the build we test
  against: `[a-\\xff]` is the range -1..97, i.e. bytes 0x00-0x61 and 0xff (on ARM, where `char` is
  unsigned, Redis itself answers differently for ranges with an end >= 0x80). An unterminated class
  (`[abc` at the end of the pattern) is a class of what was read so far; `[a-]` is the range `]`..`a`,
  so the `]` does not close it (C reads `a-]` as a range before it looks for the `]`).
* The empty subject matches only the empty pattern: Redis's loop never runs when the subject is
  empty, so `*` does NOT match b"" (verified against 7.0.15: `~**` refuses the key ""). ACL `~*`
  and `&*` never reach the matcher (they become allkeys/allchannels in `rules`).
* Redis's recursion guard (`nesting > 1000` returns "no match") makes a pattern whose 1001st `*`
  is not its last item match nothing; `Matcher` reproduces that.

Bounded time: between two `*` every item consumes exactly one byte, so the pattern is compiled into
fixed-width segments and matched by the classic leftmost-segment rule (first segment anchored at the
start, last at the end, the middle ones each at their leftmost occurrence after the previous one). That
is the same answer Redis's backtracking gives (its `skipLongerMatches` cut-off is sound for the same
reason) in O(len(subject) * len(pattern)) at worst, with no backtracking across stars at all:
`a*a*a*a*a*a*a*a*b` against 5000 `a`s is one failed `endswith`. Segments without classes or `?` are
plain bytes searched with `bytes.find`/`startswith`/`endswith`; the others use a star-free `re`
pattern (a fixed-width regex cannot backtrack catastrophically).

Fast paths, chosen at compile time and visible as `Matcher.kind`:
  "exact"  — no special items: `subject == literal`
  "prefix" — literal items then one trailing `*` (`asynq:*`, `asynq:{q}:*`, escapes allowed):
             `subject.startswith(literal)` (the literal is non-empty, so b"" is refused as by Redis)
  "any"    — just `*` (or `**`...): any non-empty subject
  "never"  — the nesting guard above
  "glob"   — everything else
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, TypeGuard

__all__ = ["Matcher", "class_body", "compile_pattern", "stringmatch"]

# Redis: `if (nesting > 1000) return 0;` — the 1001st star's recursion fails.
_MAX_NESTING = 1000

_STAR = None  # item marker; other items are frozensets of allowed byte values or ints (literal)
_ALL_BYTES = frozenset(range(256))
_Item = int | frozenset[int] | None  # a literal byte, a class of bytes, or _STAR


def _all_literal(items: list[_Item]) -> TypeGuard[list[int]]:
    return all(isinstance(x, int) for x in items)


def _signed(b: int) -> int:
    """A byte as the signed C `char` Redis compares in class ranges."""
    return b - 256 if b >= 128 else b


def class_body(p: bytes, i: int, one: Callable[[int], Iterable[int]],
               span: Callable[[int, int], Iterable[int]]) -> tuple[set[int], int]:
    """The bytes a `[...]` class whose body (after any `^`) starts at p[i] takes, and the index of
    its `]` (unterminated: of its last byte). `one(b)` is what a literal byte takes, `span(lo, hi)`
    what a range takes (its ends signed and ordered); an escaped byte takes itself, in either
    case. This module's matcher and secret_config's nocase one both walk classes with it.

    Mirrors the C loop statement by statement, including where it reads past the class (ranges are
    tried before `]`) and how it backs up on an unterminated class.
    """
    n = len(p)
    taken: set[int] = set()
    while True:
        if i < n and p[i] == 0x5C and n - i >= 2:  # '\\' escapes the next byte
            i += 1
            taken.add(p[i])
        elif i < n and p[i] == 0x5D:  # ']'
            break
        elif i >= n:  # unterminated: C backs up one byte so the outer `pattern++` lands at the end
            i -= 1
            break
        elif n - i >= 3 and p[i + 1] == 0x2D:  # 'a-z'
            start, end = _signed(p[i]), _signed(p[i + 2])
            if start > end:
                start, end = end, start
            taken.update(span(start, end))
            i += 2
        else:
            taken.update(one(p[i]))
        i += 1
    return taken, i


def _span(start: int, end: int) -> Iterable[int]:
    """The bytes a case-sensitive `[start-end]` takes (Redis compares signed chars)."""
    return (b for b in range(256) if start <= _signed(b) <= end)


def _parse_class(p: bytes, i: int) -> tuple[frozenset[int], int]:
    """Parse a `[...]` class whose body starts at p[i]; return (allowed bytes, index of next item)."""
    n = len(p)
    negate = i < n and p[i] == 0x5E  # '^'
    if negate:
        i += 1
    allowed, i = class_body(p, i, lambda b: (b,), _span)
    if negate:
        return _ALL_BYTES - allowed, i + 1
    return frozenset(allowed), i + 1


def _items(p: bytes) -> list[_Item]:
    """The pattern as a list of items: `_STAR`, an int (literal byte) or a frozenset (class/`?`)."""
    items: list[_Item] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == 0x2A:  # '*': consecutive stars are one item
            while i + 1 < n and p[i + 1] == 0x2A:
                i += 1
            items.append(_STAR)
            i += 1
        elif c == 0x3F:  # '?'
            items.append(_ALL_BYTES)
            i += 1
        elif c == 0x5B:  # '['
            allowed, i = _parse_class(p, i + 1)
            items.append(allowed)
        elif c == 0x5C and n - i >= 2:  # '\\x'
            items.append(p[i + 1])
            i += 2
        else:  # a literal, including a trailing lone backslash
            items.append(c)
            i += 1
    return items


def _class_regex(allowed: frozenset[int]) -> bytes:
    if len(allowed) == 256:
        return b"[\\x00-\\xff]"
    if not allowed:
        return b"(?!)"
    return b"[" + b"".join(b"\\x%02x" % b for b in sorted(allowed)) + b"]"


class _Segment:
    """A star-free run of one-byte items: a plain literal, or a fixed-width regex."""

    __slots__ = ("width", "literal", "regex")

    def __init__(self, items: list[_Item]) -> None:
        self.width = len(items)
        if _all_literal(items):
            self.literal: bytes | None = bytes(items)
            self.regex: re.Pattern[bytes] | None = None
        else:
            self.literal = None
            parts = [re.escape(bytes([x])) if isinstance(x, int) else _class_regex(x)  # type: ignore[arg-type]  # no _STAR here
                     for x in items]
            self.regex = re.compile(b"".join(parts), re.DOTALL)

    def at(self, s: bytes, pos: int) -> bool:
        """Does the segment match s[pos:pos+width] exactly?"""
        if self.literal is not None:
            return s.startswith(self.literal, pos)
        assert self.regex is not None  # one of the two is set
        return self.regex.fullmatch(s, pos, pos + self.width) is not None

    def find(self, s: bytes, pos: int, end: int) -> int:
        """End of the leftmost occurrence inside s[pos:end], or -1."""
        if self.literal is not None:
            i = s.find(self.literal, pos, end)
            return -1 if i < 0 else i + self.width
        assert self.regex is not None  # one of the two is set
        m = self.regex.search(s, pos, end)
        return -1 if m is None else m.end()


class Matcher:
    """A compiled Redis glob. `match(subject: bytes) -> bool`; `pattern`, `kind`, `literal`.

    `literal` is the byte string compared by the "exact" and "prefix" kinds (None otherwise), so a
    caller holding many patterns can batch them (a set of exact keys, a tuple for `startswith`).
    `match` is an instance attribute bound at compile time to the cheapest correct test.
    """

    __slots__ = ("pattern", "kind", "literal", "match", "_head", "_middle", "_tail", "_min")

    match: Callable[[bytes], bool]

    def __init__(self, pattern: bytes) -> None:
        self.pattern = bytes(pattern)
        self.literal: bytes | None = None
        items = _items(self.pattern)
        stars = [k for k, x in enumerate(items) if x is _STAR]
        if len(stars) > _MAX_NESTING and stars[_MAX_NESTING] != len(items) - 1:
            self.kind = "never"
            self.match = _never
            return
        if not stars:
            if _all_literal(items):
                self.kind, self.literal = "exact", bytes(items)
                literal = self.literal
                self.match = lambda s: s == literal
                return
        elif stars == [len(items) - 1] and _all_literal(items[:-1]):
            if len(items) == 1:
                self.kind = "any"
                self.match = bool  # any non-empty subject
                return
            self.kind, self.literal = "prefix", bytes(items[:-1])  # type: ignore[arg-type]
            literal = self.literal
            self.match = lambda s: s.startswith(literal)
            return
        self.kind = "glob"
        bounds = [-1] + stars + [len(items)]
        segments = [_Segment(items[a + 1:b]) for a, b in zip(bounds, bounds[1:])]
        self._head = segments[0]
        self._tail = segments[-1] if stars else None
        self._middle = segments[1:-1]
        self._min = sum(seg.width for seg in segments)
        self.match = self._match_glob

    def covers_prefix(self, prefix: bytes) -> bool:
        """True if every subject that starts with `prefix` (non-empty) matches. A sufficient
        test: False also where it cannot tell. A glob `X*` (its last item an unescaped star)
        covers `prefix` when X matches some beginning of `prefix`: the star then matches the
        rest, whatever follows (`asynq:{*}:*` covers `asynq:{default}:t:`)."""
        if not prefix:
            return False
        if self.kind == "any":
            return True
        if self.kind == "prefix":
            return self.literal is not None and prefix.startswith(self.literal)
        if self.kind == "glob" and self._tail is not None and self._tail.width == 0:
            head = Matcher(self.pattern[:-1])
            return any(head.match(prefix[:k]) for k in range(1, len(prefix) + 1))
        return False

    def _match_glob(self, s: bytes) -> bool:
        n = len(s)
        if n == 0:
            return False  # the pattern is not empty (that is kind "exact")
        head, tail = self._head, self._tail
        if tail is None:  # no star: a fixed-width pattern
            return n == head.width and head.at(s, 0)
        if n < self._min or not head.at(s, 0):
            return False
        end = n - tail.width
        if not tail.at(s, end):
            return False
        pos = head.width
        for seg in self._middle:
            pos = seg.find(s, pos, end)
            if pos < 0:
                return False
        return True

    def __repr__(self) -> str:
        return f"Matcher({self.pattern!r}, kind={self.kind!r})"


def _never(_subject: bytes) -> bool:
    return False


def compile_pattern(pattern: bytes) -> Matcher:
    """Compile a Redis glob pattern (bytes) into a `Matcher`."""
    return Matcher(pattern)


def stringmatch(pattern: bytes, subject: bytes) -> bool:
    """One-shot `stringmatchlen(pattern, subject, 0)`; compile once with `compile_pattern` instead
    when the pattern is used more than once."""
    return Matcher(pattern).match(subject)
