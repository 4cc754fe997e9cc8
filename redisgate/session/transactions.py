"""MULTI / EXEC / DISCARD for the session: the transaction (one object) and its handlers.

Commands inside MULTI are queued upstream; a command refused here dooms the transaction (EXEC
then gets EXECABORT, as in Redis). A transaction that (un)subscribes changes the subscriptions
and the replies to come only if it runs: its EXEC carries an `ExecSubs` plan in its reply slot,
and what the client sends after it waits (`Transaction.exec_wait`) until EXEC's reply says.

May import: the protocol and policy modules (resp, errors, ...) and the session package's
replies and pubsub; never server.py, asyncio or sockets. The session (machine.Session) is passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol import errors
from ..protocol.commands import CommandSpec
from ..protocol.resp import Request
from .pubsub import Subs
from .replies import DROP, Slot

if TYPE_CHECKING:
    from .machine import Session


@dataclass(frozen=True, slots=True)
class QueuedSubs:
    """A subscribe-family command queued inside MULTI."""
    kind: str                # "chan", "pat" or "shard"
    subscribe: bool
    channels: list[bytes]


class ExecSubs:
    """The payload of an EXEC slot whose transaction (un)subscribes (exec_plan)."""
    __slots__ = ("subs", "spill", "ran")

    def __init__(self, subs: Subs, spill: int) -> None:
        self.subs = subs        # the subscriptions if EXEC runs
        self.spill = spill      # replies after EXEC's array (one per channel beyond the first)
        self.ran: bool | None = None   # unknown until EXEC's reply: then True / False


class Transaction:
    """MULTI's state: `active` (inside MULTI), `dirty` (a queued command was refused: EXEC
    aborts), `subs` (subscribe-family commands queued), and after EXEC of a transaction that
    (un)subscribes, `exec_wait`: what the client sent next waits (requests already parsed in
    `deferred`, the rest in the parser) until EXEC's reply (`resume` then says: judge them)."""

    __slots__ = ("active", "dirty", "subs", "exec_wait", "deferred", "resume")

    def __init__(self) -> None:
        self.active = False
        self.dirty = False
        self.subs: list[QueuedSubs] = []
        self.exec_wait = False
        self.deferred: list[Request] = []
        self.resume = False

    def begin(self) -> None:
        if not self.active:
            self.active = True
            self.dirty = False
            self.subs = []

    def doom(self) -> None:
        """A command was refused here: inside MULTI, the transaction will abort."""
        if self.active:
            self.dirty = True

    def end(self) -> None:
        """EXEC or DISCARD (or RESET, a lost upstream): no transaction any more."""
        self.active = self.dirty = False
        self.subs = []

    def queue_subs(self, kind: str, subscribe: bool, channels: list[bytes]) -> None:
        self.subs.append(QueuedSubs(kind, subscribe, channels))

    def abandon(self) -> None:
        """The upstream is gone: nothing waits for an EXEC, no transaction."""
        self.exec_wait = False
        self.deferred.clear()
        self.end()

    def exec_plan(self, current: Subs) -> ExecSubs:
        """What EXEC of a transaction with (un)subscribe commands does, if it runs: the
        subscriptions after it, and how many replies spill out after its array."""
        subs = {kind: set(chans) for kind, chans in current.items()}
        spill = 0
        for queued in self.subs:
            kind, chans = queued.kind, queued.channels
            if queued.subscribe:
                subs[kind].update(chans)
                replies = len(chans)
            elif chans:
                subs[kind].difference_update(chans)
                replies = len(chans)
            else:
                replies = max(1, len(subs[kind]))
                subs[kind].clear()
            spill += replies - 1
        return ExecSubs(subs, spill)


def cmd_multi(s: Session, spec: CommandSpec, args: list[bytes], req: Request) -> None:
    if not s.resp3 and s.pubsub.any():   # (RESP2 subscribed mode: Redis refuses it)
        return s.reject(errors.pubsub_context(s.gate.upstream_version, "multi"))
    s.tx.begin()
    s.forward(req)


def cmd_exec(s: Session, spec: CommandSpec, args: list[bytes], req: Request) -> None:
    tx = s.tx
    if tx.active and tx.dirty:
        s.send_upstream(b"*1\r\n$7\r\nDISCARD\r\n")
        s.expect(DROP, 1)
        s.replies.local(errors.execabort())
    elif tx.active and tx.subs:
        # Whether it runs (WATCH) decides the subscriptions and the replies to come: what
        # the client sent next waits for its reply (exec_subscribed).
        s.forward(req, payload=tx.exec_plan(s.pubsub.subs))
        tx.exec_wait = True
    else:
        s.forward(req)
    tx.end()


def cmd_discard(s: Session, spec: CommandSpec, args: list[bytes], req: Request) -> None:
    s.tx.end()
    s.forward(req)


def exec_subscribed(s: Session, slot: Slot, kind: bytes, frame: bytes | None) -> None:
    """The next frame for an EXEC slot whose transaction subscribes (see cmd_exec): at its
    first frame, an EXEC that ran (an array, not an error or a null) adopts the transaction's
    subscriptions and waits for the replies that spill out after its array."""
    state: ExecSubs = slot[2]
    if state.ran is not None:
        return
    state.ran = kind == b"*" and not (frame is not None and frame.startswith(b"*-1"))
    if state.ran:
        slot[1] += state.spill
        ps = s.pubsub
        ps.subs = state.subs
        ps.active = not s.resp3 and ps.any()
    # (Else it did not run: WATCH, or Redis refused a queued command. Nothing changes.)
    s.tx.exec_wait = False
    s.tx.resume = True   # (upstream_data then judges what waited)
