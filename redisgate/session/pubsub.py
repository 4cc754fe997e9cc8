"""Pub/sub for the session: the subscriptions (one object), the SUBSCRIBE family's handlers.

Messages are not replies: push frames (RESP3) and ``message``/``pmessage``/``smessage`` arrays
(RESP2 while subscribed) go to the client at once and are not counted; subscribe-family commands
wait for one confirmation per channel (SUB slots, see replies.py).

May import: the protocol and policy modules (resp, commands, ...) and the session package's
replies; never server.py, asyncio or sockets. The session (machine.Session) is passed in.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol.commands import CommandSpec
from ..protocol.resp import Request
from .replies import SUB

if TYPE_CHECKING:
    from .machine import Session

SUB_HEADS = frozenset({b"subscribe", b"psubscribe", b"ssubscribe",
                       b"unsubscribe", b"punsubscribe", b"sunsubscribe"})
MESSAGE_HEADS = frozenset({b"message", b"pmessage", b"smessage"})

SUBSCRIBE = {"subscribe": "chan", "psubscribe": "pat", "ssubscribe": "shard"}
UNSUBSCRIBE = {"unsubscribe": "chan", "punsubscribe": "pat", "sunsubscribe": "shard"}

# Channels, patterns, shard channels: a subscription kind's channels (bytes as sent).
Subs = dict[str, set[bytes]]


def no_subs() -> Subs:
    return {"chan": set(), "pat": set(), "shard": set()}


class Subscriptions:
    """What the client is subscribed to, and which pushes it may receive."""

    __slots__ = ("subs", "active", "ever", "tracking")

    def __init__(self) -> None:
        self.subs: Subs = no_subs()
        self.active = False     # RESP2 subscribed mode, as confirmed by the upstream
        self.ever = False       # a subscribe-family command was sent: pub/sub pushes may come
        self.tracking = False   # CLIENT TRACKING ON was sent: invalidation pushes may come

    def any(self) -> bool:
        """Subscribed to anything (as the session counts it, before the upstream confirms)."""
        s = self.subs
        return bool(s["chan"] or s["pat"] or s["shard"])

    def clear(self) -> None:
        """RESET, a lost upstream: no subscription any more."""
        for s in self.subs.values():
            s.clear()
        self.active = False

    def unasked(self, head: bytes | None) -> bool:
        """Whether a push with this head is one the client never asked for."""
        if head in MESSAGE_HEADS or head in SUB_HEADS:
            return not self.ever
        return not self.tracking   # invalidate (tracking-redir-broken needs a REDIRECT)


def cmd_subscribe(s: Session, spec: CommandSpec, args: list[bytes], req: Request) -> None:
    ps = s.pubsub
    ps.ever = True
    kind = SUBSCRIBE[spec.name]
    if s.tx.active:   # queued: +QUEUED now, the confirmations in EXEC's reply (exec_plan)
        s.tx.queue_subs(kind, True, args[1:])
        return s.forward(req)
    ps.subs[kind].update(args[1:])
    s.forward(req, SUB, len(args) - 1, ps.any())


def cmd_unsubscribe(s: Session, spec: CommandSpec, args: list[bytes], req: Request) -> None:
    ps = s.pubsub
    ps.ever = True
    kind = UNSUBSCRIBE[spec.name]
    if s.tx.active:
        s.tx.queue_subs(kind, False, args[1:])
        return s.forward(req)
    subs = ps.subs[kind]
    if len(args) > 1:
        n = len(args) - 1
        subs.difference_update(args[1:])
    else:
        n = max(1, len(subs))
        subs.clear()
    s.forward(req, SUB, n, ps.any())
