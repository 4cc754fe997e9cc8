"""Confining SCAN and KEYS to a user's key prefix (the `confine_scan: true` user option). No I/O.

Without `allkeys`, redisgate refuses KEYS and SCAN: they list the whole keyspace, which Redis's
key patterns do not restrict (stricter than Redis, see rules.py). With `confine_scan`, a user
whose readable keys are exactly one plain prefix (`~tenant1:*`) may run them anyway, rewritten so
that Redis itself can only return keys under that prefix:

* SCAN's options are read as Redis's scanGenericCommand reads them (option words compared with
  strcasecmp through options.word, so `"MATCH\\x00"` and `"match\\x00x"` are MATCH; the last
  MATCH wins);
* a MATCH (every one given, not only the last) or the KEYS pattern must begin with the prefix
  itself, with none of the glob characters `*?[\\` inside that beginning, so every key it can
  match starts with the prefix. Anything else stays refused;
* and the line that goes to Redis always *ends* with such a MATCH: `MATCH <prefix>*` is appended
  when the user gave none, and the user's own last MATCH is repeated at the end when another
  option follows it. Every SCAN option takes exactly one value, so Redis reads the appended pair
  as an option pair and, the last MATCH winning, confines the scan even if this module misread
  an earlier argument: a misread can only turn into a syntax error, never into a wider scan. A
  line with an odd number of option arguments is forwarded unchanged: Redis refuses it with its
  own error before scanning anything, whatever its words are.

Only these two commands and only such users: several patterns or a non-prefix glob cannot be
expressed as one MATCH, so those users keep the plain refusal.
"""
from __future__ import annotations

from ..protocol.options import is_word

_GLOB_SPECIAL = b"*?[\\"


def escape(literal: bytes) -> bytes:
    """A glob that matches `literal` itself."""
    out = bytearray()
    for c in literal:
        if c in _GLOB_SPECIAL:
            out.append(92)
        out.append(c)
    return bytes(out)


def _within(pattern: bytes, prefix: bytes) -> bool:
    head = pattern[:len(prefix)]
    return head == prefix and not any(c in _GLOB_SPECIAL for c in head)


def confine(name: str, args: list[bytes], prefix: bytes | None) -> list[bytes] | None:
    """`args` rewritten so that only keys under `prefix` can come back, or None (keep refusing).

    `name` is the command's table name ("scan" or "keys"); the arity has been checked.
    """
    if not prefix:
        return None
    if name == "keys":
        return list(args) if _within(args[1], prefix) else None
    if name != "scan":
        return None
    if len(args) % 2:
        # SCAN cursor + (option value)*: an odd count leaves an option without its value, which
        # Redis refuses (syntax error or a bad value) before it scans anything.
        return list(args)
    pattern = escape(prefix) + b"*"
    last_is_match = False
    for i in range(2, len(args), 2):
        last_is_match = is_word(args[i], b"match")
        if last_is_match:
            if not _within(args[i + 1], prefix):
                return None
            pattern = args[i + 1]
    return list(args) if last_is_match else list(args) + [b"MATCH", pattern]
