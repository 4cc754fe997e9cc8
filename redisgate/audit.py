"""Log-safe text: what a client (or a certificate) chose, made fit for one log line.

Every log line, audit line, metric label and ACL LOG field that carries text a client controls
goes through `safe()`: user names, certificate CN/SAN values, keys, channels, denial reasons.
The result is bounded (the first `LIMIT` bytes, then a marker saying how many were cut) and
escaped: printable ASCII stays, a backslash becomes ``\\\\``, a space and every other byte
(CR, LF, NUL, control, non-ASCII) becomes ``\\xNN``. So one value is one token of one line: it
can neither start a line nor look like another ``key=value`` field of it.

A name a client sent before it logged in is only ever shown if it is a configured user's name
(`login_name`); any other name may be a password typed into the user-name slot, so it becomes
``unknown:<8 hex>``, an HMAC under a key made at process start: attempts with the same name can
be told apart within one run, and nothing can be checked against the log offline.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Container

LIMIT = 128
UNKNOWN = "unknown"

_ESCAPE = tuple(chr(b) if 0x21 <= b <= 0x7e and b != 0x5c else f"\\x{b:02x}" for b in range(256))
_ESCAPE = _ESCAPE[:0x5c] + ("\\\\",) + _ESCAPE[0x5d:]
_ESCAPE_SPACES = (*_ESCAPE[:0x20], " ", *_ESCAPE[0x21:])
_KEY = os.urandom(32)   # per process: the unknown-name tags are not comparable across runs


def safe(value: str | bytes | None, limit: int = LIMIT, spaces: bool = False) -> str:
    """`value` as one bounded, escaped token (see the module docstring); ``-`` for None.
    `spaces`: keep spaces as they are (for free text written last on its line)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = value.encode("utf-8", "backslashreplace")
    head = value[:limit]
    table = _ESCAPE_SPACES if spaces else _ESCAPE
    text = "".join([table[b] for b in head])
    if len(value) > limit:
        text += f"...[+{len(value) - limit} bytes]"
    return text


def unknown_tag(name: bytes) -> str:
    """``unknown:<8 hex>`` for a name that is no configured user's."""
    return f"{UNKNOWN}:{hmac.new(_KEY, name, hashlib.sha256).hexdigest()[:8]}"


def login_name(name: bytes, users: Container[str]) -> str:
    """What the audit log shows for a name sent at login: the configured user's name (escaped),
    else `unknown_tag`."""
    try:
        text = name.decode()
    except UnicodeDecodeError:
        return unknown_tag(name)
    return safe(text) if text in users else unknown_tag(name)


def user_label(name: str | bytes | None, users: Container[str]) -> str:
    """What metric labels and ACL LOG entries show for a user name: a configured user's name, or
    ``unknown`` (nothing a client chose, so the label set is bounded by the configuration)."""
    if isinstance(name, bytes):
        try:
            name = name.decode()
        except UnicodeDecodeError:
            return UNKNOWN
    return name if name is not None and name in users else UNKNOWN
