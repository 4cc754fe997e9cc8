"""The reply-order object: which reply the client is owed next, and which commands get none.

Every command the client sends gets exactly one slot in ``ReplyOrder.slots``, in order:
forwarded commands wait for their upstream reply, commands answered here carry their reply bytes.
Consecutive forwarded commands share one slot with a count, so a pipeline of forwarded commands
costs one counter. A slot is a list ``[kind, count, payload]``:

* ``FWD``     pass the next `count` upstream replies to the client (payload: None, or an EXEC's
              ``transactions.ExecSubs``);
* ``SUB``     pass `count` subscribe-family confirmations (other frames are out of band; payload:
              whether the client is subscribed after it);
* ``DROP``    swallow `count` replies: the proxy's own commands (payload: the handshake step's
              purpose, a str), DISCARD, or a command the client muted (CLIENT REPLY);
* ``SUBDROP`` swallow `count` subscribe-family confirmations;
* ``LOCAL``   a reply answered here (payload: its bytes);
* ``CLOSE``   close the client connection once everything before it is written.

On a shared upstream link the order also counts the replies asked of the link (``expected``) and
hands them over once (``handed_over``, Actions.link_replies).

CLIENT REPLY ON | OFF | SKIP (networking.c clientCommand, prepareClientToWrite, resetClient):
answered by the session on every link and never sent upstream, so the upstream always replies;
the order knows which commands get no reply: `off` (OFF in force), `skip` (the command being
handled is the one after SKIP), `skip_next` (SKIP was just asked), `muted` (the command being
handled gets no reply: its local reply is not kept, its upstream replies get DROP slots).

May import: the standard library only (the session package's modules import it).
"""
from __future__ import annotations

import enum
from collections import deque
from typing import Any

# Slot kinds (ordered: kinds < LOCAL wait for the upstream).
FWD = 0
SUB = 1
DROP = 2
SUBDROP = 3
LOCAL = 4
CLOSE = 5

# A slot: [kind, count, payload] (a list: its count is decremented in place).
Slot = list[Any]


class Muting(enum.Enum):
    """What CLIENT REPLY has in force (ReplyOrder.muting)."""
    NONE = "none"      # every command gets its reply
    OFF = "off"        # CLIENT REPLY OFF: no command does until ON (or RESET)
    SKIP = "skip"      # CLIENT REPLY SKIP: the next command does not


class ReplyOrder:
    """The slots due to the client, in order, and CLIENT REPLY's muting. `to_client` is the
    session's output list (the same object): a reply with nothing before it goes there at once."""

    __slots__ = ("slots", "to_client", "expected", "accounted", "off", "skip", "skip_next",
                 "muted")

    def __init__(self, to_client: list[bytes]) -> None:
        self.slots: deque[Slot] = deque()
        self.to_client = to_client
        self.expected = 0      # replies asked of the shared link so far (its accounting)
        self.accounted = 0     # `expected` already handed over (handed_over)
        self.off = False
        self.skip = False
        self.skip_next = False
        self.muted = False

    # -- what is due

    def local(self, reply: bytes) -> None:
        """A reply answered here, in its place (nothing, if the command is muted)."""
        if self.muted:
            return
        if self.slots:
            self.slots.append([LOCAL, 0, reply])
        else:
            self.to_client.append(reply)

    def close_after(self) -> bool:
        """Close once everything before now is written: True when that is now."""
        if self.slots:
            self.slots.append([CLOSE, 0, None])
            return False
        return True

    def expect(self, kind: int, n: int, payload: object, shared: bool,
               pushes_when_muted: bool) -> None:
        """`n` upstream replies of `kind` are due (`shared`: asked of a shared link, counted).
        A muted command's replies are swallowed when they come: its FWD becomes a DROP (an EXEC's
        ExecSubs payload stays: it still decides), its SUB a SUBDROP when the upstream does not
        send subscribe confirmations under CLIENT REPLY OFF (not `pushes_when_muted`)."""
        if shared:
            self.expected += n   # only FWD (or its muted DROP) gets here while shared
        if self.muted:
            if kind == FWD:
                kind = DROP
            elif kind == SUB and not pushes_when_muted:
                kind = SUBDROP   # (payload: whether subscribed after it)
        slots = self.slots
        if kind <= DROP and kind != SUB and slots and slots[-1][0] == kind \
                and slots[-1][2] is None and payload is None:
            slots[-1][1] += n
        else:
            slots.append([kind, n, payload])

    def forwarded(self, n: int, shared: bool) -> None:
        """expect(FWD, n) for a run that is not muted (Session._run's, inlined)."""
        slots = self.slots
        if slots and slots[-1][0] == FWD and slots[-1][2] is None:
            slots[-1][1] += n
        else:
            slots.append([FWD, n, None])
        if shared:
            self.expected += n

    def handed_over(self) -> int:
        """The replies asked of the shared link since the last call (Actions.link_replies)."""
        n = self.expected - self.accounted
        self.accounted = self.expected
        return n

    def due(self) -> int:
        """Replies the client is owed: one per slot, a forwarded run's count."""
        slots = self.slots
        return sum([slot[1] or 1 for slot in slots]) if slots else 0

    def waits_upstream(self) -> bool:
        """Whether any upstream reply is due."""
        return any(slot[0] < LOCAL for slot in self.slots)

    def only_handshake(self) -> bool:
        """Whether nothing is due but the proxy's own handshake (DROP slots named by purpose)
        and replies answered here behind it."""
        return all(slot[0] == LOCAL or slot[0] == DROP and type(slot[2]) is str
                   for slot in self.slots)

    def passed(self, data: bytes, count: int) -> bool:
        """`data`, `count` whole replies to the FWD slot at the head, goes to the client as it
        came; then the local replies that waited for them. True: a CLOSE slot was reached."""
        slots = self.slots
        out = self.to_client
        out.append(data)
        slot = slots[0]
        left = slot[1] = slot[1] - count
        close = False
        if not left:
            slots.popleft()
            while slots and slots[0][0] >= LOCAL:
                s = slots.popleft()
                if s[0] == LOCAL:
                    out.append(s[2])
                else:
                    close = True
        return close

    def failed(self, err: bytes) -> bool:
        """The upstream is gone: every reply due from it becomes `err`, the local ones go out in
        their place, and nothing is due any more. True: a CLOSE slot was among them."""
        slots, self.slots = self.slots, deque()
        out = self.to_client
        close = False
        for slot in slots:
            if slot[0] == FWD or slot[0] == SUB:
                for _ in range(slot[1] if slot[0] == FWD else 1):
                    out.append(err)
            elif slot[0] == LOCAL:
                out.append(slot[2])
            elif slot[0] == CLOSE:
                close = True
        return close

    # -- the C lane

    def lane_due(self) -> int | None:
        """The replies due when they are all one forwarded run (or none): the C lane takes them
        over (and the slots are emptied); None otherwise."""
        slots = self.slots
        if slots and (len(slots) > 1 or slots[0][0] != FWD or slots[0][2] is not None):
            return None
        return slots[0][1] if slots else 0

    def lane_returned(self, due: int) -> None:
        """The lane let go: `due` replies to commands it forwarded come before anything else."""
        if due:
            self.slots.appendleft([FWD, due, None])

    # -- CLIENT REPLY

    @property
    def muting(self) -> Muting:
        if self.off:
            return Muting.OFF
        return Muting.SKIP if self.skip or self.skip_next else Muting.NONE

    @property
    def quiet(self) -> bool:
        """The command now being handled gets no reply (OFF, or the one after SKIP)."""
        return self.off or self.skip

    def begin(self) -> None:
        """A command is handled: muted under OFF or right after SKIP."""
        self.muted = self.off or self.skip

    def end(self) -> None:
        """The command was handled: as Redis's resetClient, a SKIP just asked applies to the
        next command."""
        self.muted = False
        if self.skip or self.skip_next:
            self.skip, self.skip_next = self.skip_next, False

    def reply_on(self) -> None:
        """CLIENT REPLY ON: replies again, this one included (Redis clears, then replies)."""
        self.off = self.skip = self.muted = False

    def reply_off(self) -> None:
        self.off = True

    def reply_skip(self) -> None:
        """CLIENT REPLY SKIP: the next command gets no reply (under OFF: nothing changes)."""
        if not self.off:
            self.skip_next = True

    def reset(self) -> None:
        """RESET turns CLIENT REPLY OFF off, and then replies (unless SKIPped)."""
        if self.off:
            self.off = False
            self.muted = self.skip
