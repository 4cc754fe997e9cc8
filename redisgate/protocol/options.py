"""Option words compared the way Redis compares them. No I/O.

Redis recognises an option word with `strcasecmp(c->argv[j]->ptr, "db")`. Its arguments are sds
strings that may hold any byte, but `strcasecmp` sees a C string: it stops at the first NUL byte
and folds ASCII letters only (Redis never sets LC_CTYPE, so the C locale applies). So for Redis
`b"DB"`, `b"db"`, `b"dB\\x00"` and `b"DB\\x00anything"` are all the option DB, and `b"d\\xc2b"`
is not. Every place where the proxy interprets a command's options (key extraction in
commands.py, COPY ... DB in rules.py, SCAN confinement in confine.py) compares through `word()`
or `is_word()`, never with `==` on the raw argument: a raw comparison is how a client walks past
the proxy with `"DB\\x00" 5`.

Repeated options: most of Redis's option loops simply overwrite a variable, so the last
occurrence wins (COPY's DB, SCAN's MATCH/COUNT/TYPE, SORT's and GEORADIUS's STORE).
`parse_options()` walks such a loop and `Parsed.last()` names the occurrence Redis acts on.
A loop that stops at the first match (e.g. the STREAMS keyword) is written out where it is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["word", "is_word", "Option", "Parsed", "parse_options"]


def word(arg: bytes) -> bytes:
    """An argument as `strcasecmp` sees it: cut at the first NUL, ASCII letters lower-cased.

    `word(arg) == b"db"` is exactly Redis's `!strcasecmp(arg, "db")` (the option names Redis
    compares against are lower-case ASCII without NUL)."""
    i = arg.find(b"\0")
    return (arg if i < 0 else arg[:i]).lower()


def is_word(arg: bytes, option: bytes) -> bool:
    """Redis's `!strcasecmp(arg, option)` for a lower-case `option` without NUL."""
    return word(arg) == option


@dataclass(frozen=True, slots=True)
class Option:
    """One option Redis's loop accepted: the word at `position`, its values right after it."""
    name: bytes        # the option as Redis names it, lower case ("db")
    position: int      # index of the option word in the command line
    values: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Parsed:
    """The options of a command line, in order, as Redis's loop reads them.

    `error` is the position of the first argument the loop refuses (an unknown word, or a known
    one without enough values after it), or None. Redis stops there with an error, so the
    options before it were read but the command does nothing.
    """
    options: tuple[Option, ...]
    error: int | None

    def last(self, name: bytes) -> Option | None:
        """The occurrence of `name` that Redis acts on when a later one overrides an earlier."""
        for opt in reversed(self.options):
            if opt.name == name:
                return opt
        return None

    def all(self, name: bytes) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.name == name)


def parse_options(args: list[bytes], start: int, takes: Mapping[bytes, int]) -> Parsed:
    """Redis's usual option loop from `args[start]` on: each argument must be one of the words in
    `takes` (lower case) followed by at least `takes[word]` more arguments, which it consumes;
    anything else is a syntax error at that position (the loop stops there)."""
    out: list[Option] = []
    argc = len(args)
    i = start
    while i < argc:
        name = word(args[i])
        n = takes.get(name)
        if n is None or argc - i - 1 < n:
            return Parsed(tuple(out), i)
        out.append(Option(name, i, tuple(args[i + 1:i + 1 + n])))
        i += 1 + n
    return Parsed(tuple(out), None)
