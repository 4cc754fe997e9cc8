"""The proxy's own handshake with the upstream, built in one place.

Before anything of a client's, every upstream connection the proxy opens carries the proxy's own
commands: AUTH with the configured upstream identity (`upstream.username` / `password`), SELECT
of `upstream.db`, and HELLO 3 on a RESP3 shared link. `setup()` builds them, each with what it is
for (the session's "dropped reply" slots name it in their error); `ask()` is the one-off
exchange of the probes (the version probe in server.py, the readiness probe in admin.py): the
handshake's AUTH, one command, and the replies read by hiredis, the parser the design names for
replies the proxy itself consumes.

Password rotation. Redis 5's `requirepass` holds one password: between `CONFIG SET requirepass`
and the proxy's reload (in either order) Redis refuses the password the proxy sends on a new
connection. `Passwords` (one per Gate) knows the others: the one the last reload replaced, and
what the `${file:...}` / `${NAME}` reference holds now. When Redis answers the proxy's AUTH with
a wrong-password error (`refused_password`), the connection tries `Passwords.other()` once, and
sends nothing of a client's before an AUTH was accepted (session.py, `ask`). The same holds for a
Redis 6/7 ACL user's password (`ACL SETUSER u resetpass >new`). Neither password is ever logged.

Sans-I/O: bytes and decisions only (the sockets are dial.py's). Imports: `resp` (encoding).
"""
from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

from .resp import encode_command

__all__ = ["Step", "setup", "auth_command", "refused_password", "Fallback", "Passwords"]

HELLO3 = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"


@dataclass(frozen=True, slots=True)
class Step:
    """One of the proxy's own commands: its exact bytes and what it is for."""
    command: bytes
    purpose: str            # "authentication" | "database selection" | "protocol"


def auth_command(up: Any, password: bytes) -> bytes:
    """AUTH `[username] password` for `up` (a `config.Upstream`)."""
    return encode_command([b"AUTH", up.username.encode(), password] if up.username
                          else [b"AUTH", password])


# The errors Redis answers an AUTH with a password it does not take: Redis 5 `requirepass`
# ("-ERR invalid password"), Redis 6+ (requirepass or an ACL user: "-WRONGPASS invalid
# username-password pair[ or user is disabled.]").
_WRONG_PASSWORD = (b"-WRONGPASS", b"-ERR invalid password")


def refused_password(reply: bytes) -> bool:
    """Whether `reply` (an error line, "-..." with or without CRLF) refuses AUTH's password."""
    return reply.startswith(_WRONG_PASSWORD)


@dataclass(frozen=True, slots=True)
class Fallback:
    """The password to try after Redis refused one, and where it comes from (for the metrics
    and the audit: never the password itself)."""
    password: bytes
    source: str     # "reference" (what the ${...} reference holds now) | "current" | "previous"


class Passwords:
    """The upstream passwords one proxy process knows: the configured one, the one the last
    reload replaced (`reloaded`), and what the configured reference holds now (read again at
    most once every REREAD_EVERY seconds, only when Redis refused a password)."""

    REREAD_EVERY = 1.0

    def __init__(self, up: Any):
        self.current: bytes | None = up.password
        self.previous: bytes | None = None
        self._reread = up.password_reread
        self._read_at = float("-inf")
        self._read: bytes | None = None

    def reloaded(self, up: Any) -> None:
        """A reload applied `up`: its password is the current one, the replaced one previous."""
        if not _same(up.password, self.current):
            self.previous = self.current
        self.current = up.password
        self._reread = up.password_reread
        self._read_at = float("-inf")

    def _reference(self) -> bytes | None:
        if self._reread is None:
            return None
        now = time.monotonic()
        if now - self._read_at >= self.REREAD_EVERY:
            self._read_at = now
            self._read = self._reread()
        return self._read

    # AUTHs after the first one per handshake, at most. Two, not one: the password may change
    # again while the first retry is on its way (a reload just before `CONFIG SET requirepass`:
    # the new password is refused, the previous one retried, Redis switches meanwhile, the
    # previous is refused too; the second retry sends the new one again).
    MAX_RETRIES = 2

    def after_refusal(self, reply: bytes, password: bytes | None,
                      retries: int) -> Fallback | None:
        """What to send after Redis answered the proxy's AUTH with the error `reply` (whole,
        `-` or `!` first): the other password (`other`) when Redis refused `password` and this
        handshake retried fewer than MAX_RETRIES times; None: the handshake failed."""
        if retries >= self.MAX_RETRIES or password is None or not refused_password(reply):
            return None
        return self.other(password)

    def other(self, refused: bytes) -> Fallback | None:
        """The password to try once after Redis refused `refused`: the reference's content if it
        changed, else the current one (a reload since the AUTH was sent), else the previous
        one; None when there is no other."""
        for source, candidate in (("reference", self._reference()), ("current", self.current),
                                  ("previous", self.previous)):
            if candidate is not None and not _same(candidate, refused):
                return Fallback(candidate, source)
        return None


def _same(a: bytes | None, b: bytes | None) -> bool:
    if a is None or b is None:
        return a is b
    return hmac.compare_digest(a, b)


def setup(up: Any, *, select: bool = True, resp3: bool = False) -> tuple[Step, ...]:
    """The proxy's handshake for `up` (a `config.Upstream`), in the order it is sent: AUTH
    (`[username] password`) when a password is configured, SELECT when `select` and the
    configured db is not 0, HELLO 3 when `resp3`."""
    steps = []
    if up.password is not None:
        steps.append(Step(auth_command(up, up.password), "authentication"))
    if select and up.db:
        steps.append(Step(encode_command([b"SELECT", str(up.db).encode()]), "database selection"))
    if resp3:
        steps.append(Step(HELLO3, "protocol"))
    return tuple(steps)
