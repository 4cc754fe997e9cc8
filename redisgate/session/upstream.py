"""The session's upstream side: its connection's state (one object) and the proxy's handshake.

A logged-in session is on a shared link (upstream.multiplex: stateless commands only), or on an
upstream connection of its own, which it asks the I/O layer to open (Actions.open_upstream). The
proxy's handshake (handshake.setup) goes first on it; its AUTH goes first and alone: the
connection is not `ready` (what follows waits in `held`) until Redis accepted it, so that a
refused password can be tried again with the other one the proxy knows (auth_again) before
anything of the client's was sent. (An AUTH queued while another is still due, a RESET's, is
sent in turn, without that.)

May import: the protocol and policy modules (resp, handshake, metrics, audit, ...) and the
session package's replies; never server.py, asyncio or sockets. The session is passed in.
"""
from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from ..protocol import handshake
from ..telemetry import metrics
from ..telemetry.audit import safe
from ..protocol.resp import ReplyScanner, error
from .replies import DROP

if TYPE_CHECKING:
    from .machine import Session

log = logging.getLogger("redisgate.session")

HELLO3 = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"


class Phase(enum.Enum):
    """Upstream.phase: where the session's upstream connection stands."""
    NONE = "none"              # none, and none asked for
    OPENING = "opening"        # asked of the I/O layer (Actions.open_upstream), not open yet
    HANDSHAKE = "handshake"    # open; the proxy's AUTH is awaited (what follows is held)
    READY = "ready"            # its own connection, commands go
    SHARED = "shared"          # on a shared link (upstream.multiplex)


class Upstream:
    """The upstream connection as the session sees it."""

    __slots__ = ("want", "ready", "ever", "open", "shared", "link_resp3", "held",
                 "auth_wait", "auth_out", "auth_password", "auth_fallback", "auth_retries")

    def __init__(self) -> None:
        self.want = False      # the I/O layer opens the upstream connection when set
        self.ready = False     # commands may be sent (on a shared link, or after the AUTH)
        self.ever = False      # an upstream connection was established at some point
        self.open = False      # the own connection is open (connected())
        # On a shared upstream link (upstream.multiplex): stateless commands only; anything else
        # moves the client to a connection of its own (leave_shared), for good.
        self.shared = False
        # The protocol of the shared links this session's commands go to (RESP3 or RESP2), bound
        # when the command is judged: the I/O layer sends them to a link of that protocol. It
        # follows the client's protocol (HELLO, RESET) only while nothing is due on the link.
        self.link_resp3 = False
        self.held: list[bytes] = []   # bytes for the upstream while it is being opened
        self.auth_wait = False        # the proxy's AUTH's reply is due
        self.auth_out: bytes | None = None        # that AUTH, while the connection is opened
        self.auth_password: bytes | None = None   # the password it carries (not a copy)
        self.auth_fallback: str | None = None     # tried again with: handshake.Fallback.source
        self.auth_retries = 0                     # AUTHs sent again (Passwords.after_refusal)

    @property
    def phase(self) -> Phase:
        if self.ready:
            return Phase.SHARED if self.shared else Phase.READY
        if self.want:
            return Phase.HANDSHAKE if self.open else Phase.OPENING
        return Phase.NONE

    def share(self, resp3: bool) -> None:
        """A fresh login: a shared link will do, one that speaks the client's protocol."""
        self.shared = self.ready = True
        self.link_resp3 = resp3

    def lost(self) -> None:
        """The connection failed or went away: nothing of it is left."""
        self.ready = self.want = self.open = self.auth_wait = False
        self.auth_out = self.auth_password = None
        self.held.clear()


def send(s: Session, data: bytes, shared_ok: bool = False) -> None:
    """`data` for the upstream: now, or held while the connection is opened (asked for here)."""
    up = s.up
    if up.shared and not (shared_ok and bound(s)):
        leave_shared(s)
    if up.ready:
        s.to_upstream.append(data)
    else:
        if not up.want:
            open_(s)
        up.held.append(data)


def flush_held(s: Session) -> None:
    up = s.up
    if up.ready and up.held:
        s.to_upstream.extend(up.held)
        up.held.clear()


def bound(s: Session) -> bool:
    """Whether the session's shared commands may go to links of its protocol: the links
    it is bound to speak it, or nothing is due on them, so it binds to the other protocol's
    links now (the I/O layer follows `link_resp3`). Replies due on the old link would race
    the new one's: then the session must leave the shared links instead."""
    up = s.up
    if up.link_resp3 == s.resp3:
        return True
    if s.replies.waits_upstream():
        return False
    up.link_resp3 = s.resp3
    return True


def leave_shared(s: Session) -> None:
    """The client needs a connection of its own (MULTI, SELECT, HELLO, a blocking command,
    ...). What it sent so far is on the shared link; what comes now waits in `held` until
    the I/O layer has the new connection and every shared reply is in (then `connected()`):
    so commands run, and replies come back, in the order sent."""
    up = s.up
    up.shared = False
    up.ready = False
    open_(s)
    if s.resp3:
        # It spoke RESP3 on a RESP3 link; its own connection must too.
        up.held.append(HELLO3)
        s.replies.slots.append([DROP, 1, "protocol selection"])


def open_(s: Session) -> None:
    """Ask the I/O layer for an upstream connection and queue the proxy's own handshake first."""
    s.up.want = True
    send_setup(s)


def send_setup(s: Session) -> None:
    """Queue the proxy's handshake (handshake.setup): see the module docstring."""
    up = s.up
    config = s.gate.config.upstream
    for step in handshake.setup(config):
        if step.purpose == "authentication" and not up.auth_wait \
                and (up.ready or not up.open):
            up.auth_wait = True
            up.auth_password = config.password
            up.auth_fallback = None
            up.auth_retries = 0
            if up.ready:   # (a RESET's: the connection is open)
                up.ready = False
                s.to_upstream.append(step.command)
            else:
                up.auth_out = step.command
        else:
            (s.to_upstream if up.ready else up.held).append(step.command)
        s.replies.slots.append([DROP, 1, step.purpose])


def connected(s: Session) -> None:
    """The upstream connection is open: send the proxy's AUTH, or else release what was held."""
    up = s.up
    up.open = True
    up.ever = True
    if up.auth_out is not None:
        s.to_upstream.append(up.auth_out)
        up.auth_out = None
    if not up.auth_wait:
        up.ready = True
        flush_held(s)


def auth_accepted(s: Session) -> None:
    """Redis accepted the proxy's AUTH: the upstream is ready, what waited goes."""
    up = s.up
    up.auth_wait = False
    up.auth_password = None
    if up.auth_fallback is not None:
        fallback_done(s, True)
    up.ready = True
    flush_held(s)


def auth_again(s: Session, reply: bytes) -> bool:
    """Redis answered the proxy's AUTH with `reply`, an error. When it refused the password
    and the handshake may still retry (handshake.Passwords.after_refusal), send AUTH again with
    the other password the proxy knows and return True."""
    up = s.up
    other = s.gate.passwords.after_refusal(reply, up.auth_password, up.auth_retries)
    if other is None:
        return False
    if up.auth_fallback is not None:   # (the retry was refused too: the password moved again)
        fallback_done(s, False)
    up.auth_retries += 1
    up.auth_fallback = other.source
    up.auth_password = other.password
    s.to_upstream.append(handshake.auth_command(s.gate.config.upstream, other.password))
    return True


def fallback_done(s: Session, ok: bool) -> None:
    """Count and audit how the second AUTH went (which password, never the password)."""
    source, s.up.auth_fallback = s.up.auth_fallback, None
    assert source is not None
    metrics.inc("upstream_auth_fallbacks", source, "ok" if ok else "failed")
    s.audit("upstream-auth-fallback", user=safe(s.username) if s.username else None,
            reason=f"{source} password", ok=ok)


def failed(s: Session, reason: str, established: bool = False) -> None:
    """The upstream could not be reached or went away (Session.upstream_failed)."""
    up = s.up
    if established:
        up.ever = True
    fallback = up.auth_fallback is not None
    up.lost()
    if fallback:
        fallback_done(s, False)
    s.tx.abandon()
    s.to_upstream.clear()
    s._partial = None
    s.scanner = ReplyScanner()
    if s.replies.failed(error(f"ERR redisgate: upstream Redis unavailable ({reason})")):
        s.close = True
    s.pubsub.clear()
    if up.ever:
        s.close = True
        s._dead = True
        s.end_reason = "upstream-lost"
        s.audit("upstream-lost", user=safe(s.username) if s.username else None,
                reason=safe(reason, 256, spaces=True))
    elif up.shared:
        up.ready = True   # the next command tries the shared link again


def setup_failed(s: Session, what: str, data: bytes, start: int, end: int) -> None:
    text = bytes(data[start + 1:end]).strip().decode("utf-8", "replace")[:200]
    log.error("upstream refused the proxy's %s: %s", what, text)
    failed(s, f"upstream {what} failed")
