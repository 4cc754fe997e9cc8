"""Confining SCAN and KEYS to a user's key prefix (the `confine_scan: true` user option). No I/O.

Without `allkeys`, redisgate refuses KEYS and SCAN: they list the whole keyspace, which Redis's
key patterns do not restrict (stricter than Redis, see rules.py). With `confine_scan`, a user
whose readable keys are exactly one plain prefix (`~tenant1:*`) may run them anyway, rewritten so
that Redis itself can only return keys under that prefix:

* `SCAN cursor [MATCH p] [COUNT n] [TYPE t]` without MATCH gets `MATCH <prefix>*` appended;
* a MATCH (every one given: Redis uses the last) or the KEYS pattern must begin with the prefix
  itself, with none of the glob characters `*?[\\` inside that beginning, so every key it can
  match starts with the prefix. Anything else stays refused.

Only these two commands and only such users: several patterns or a non-prefix glob cannot be
expressed as one MATCH, so those users keep the plain refusal.
"""
from __future__ import annotations

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
    matched = False
    i = 2
    while i < len(args):
        option = args[i].lower()
        if i + 1 >= len(args) or option not in (b"match", b"count", b"type"):
            return list(args)   # a syntax error: Redis refuses it without scanning anything
        if option == b"match":
            if not _within(args[i + 1], prefix):
                return None
            matched = True
        i += 2
    return list(args) if matched else list(args) + [b"MATCH", escape(prefix) + b"*"]
