"""Reply routing for a shared upstream link: which client each reply belongs to. No I/O.

With ``upstream.multiplex`` many clients' stateless commands travel on one upstream connection,
as in twemproxy: fewer connections for Redis, and one write and one read for many clients'
commands. Redis answers every command on a connection in order, so it is enough to remember, in
order, whose commands were written and how many replies each run of them asks for (``sent``);
``received`` then cuts the reply stream at those counts and says whose bytes are whose.

Only commands with exactly one reply and no effect on the connection go on a shared link (see
session.Session.shared); a client that needs anything else leaves the link for a connection of
its own, after its last shared reply has arrived.
"""
from __future__ import annotations

import logging

from .linkstate import LinkState, LinkStateLike
from .resp import ReplyScanner, UpstreamProtocolError

log = logging.getLogger("redisgate.mux")

# (owner, bytes, replies ended in them, whether the bytes end where a reply ends)
Part = tuple[object, bytes, int, bool]


def _nobody(owner: object, size: int, replies: int) -> None:
    """The after_send of a Demux's own LinkState (a Demux alone never writes)."""


class Demux:
    """The owners of the replies still due on one shared link, oldest first: the queue of a
    linkstate.LinkState (the link's, shared with the C Router; a Demux made alone makes its
    own), cut by the reply stream."""

    def __init__(self, state: LinkStateLike | None = None) -> None:
        self.state: LinkStateLike = LinkState(_nobody) if state is None else state
        self.scanner = ReplyScanner()
        self._push = False   # the reply in progress is a push being dropped (see _walk)
        self.dropped = 0     # push frames dropped so far

    @property
    def pending(self) -> int:
        """Replies still due, all owners together (the link's own commands' included)."""
        return self.state.pending

    def sent(self, owner: object, replies: int) -> None:
        """`owner`'s commands asking for `replies` replies were written after everything before."""
        self.state.sent(owner, replies)

    def received(self, data: bytes) -> list[Part]:
        """Cut `data` (the next bytes from the link) by owner: [(owner, bytes, replies ended in
        them, whether the bytes end where a reply ends)], in order. The bytes of a reply that is
        not complete yet go to its owner too (the owner's own scanner waits for the rest),
        counted 0 until the read that ends it.

        Raises UpstreamProtocolError on malformed replies or replies nobody asked for: the link
        can no longer be trusted.
        """
        out: list[Part] = []
        state = self.state
        scanner = self.scanner
        size = len(data)
        pos = 0
        while pos < size:
            due = state.head_due
            if not due:
                # (a push nobody asked for is dropped there; anything else is an error)
                return self._walk(data, pos, pos, 0, out)
            owner = state.head_owner
            # Flat replies (OK, integers, short bulks) are counted without frames.
            count, end = scanner.count_flat(data, due, pos)
            if count == due:
                out.append((owner, data if end - pos == size else data[pos:end], count, True))
                state.took(count)
                pos = end
                continue
            if count:
                state.took(count)
            if end == size:
                out.append((owner, data if not pos else data[pos:], count, True))
                return out
            # Something else comes first (an array, a long bulk, a reply split across reads):
            # walk the frames of the rest of this read.
            return self._walk(data, pos, end, count, out)
        return out

    def _walk(self, data: bytes, start: int, base: int, counted: int,
              out: list[Part]) -> list[Part]:
        """received() from `base` on, frame by frame; the head owner's bytes begin at `start`
        and `counted` of its replies ended between `start` and `base`."""
        state = self.state
        scanner = self.scanner
        # Where the frame in progress began in `data`: None when before it (then `_push` says
        # whether it is a push whose bytes so far were held back).
        fstart: int | None = base if scanner.idle else None
        # The owner of the bytes from `start` (the head's; it stays theirs when its last reply
        # in this read was counted before the walk: `counted`).
        owner = state.head_owner
        for frame in scanner.feed(data[base:] if base else data):
            end = base + frame.end
            if frame.kind == b">":
                # Nothing on a shared link subscribes or tracks keys, so a push is nobody's
                # reply: dropped (and logged), never handed to a client, never failing the link.
                if fstart is not None and start < fstart:
                    out.append((owner, data[start:fstart], counted, True))
                    counted = 0
                self._drop_push()
                start = fstart = end
                continue
            if not state.head_due:
                raise UpstreamProtocolError("a reply on the shared link that no client asked for")
            owner = state.head_owner
            counted += 1
            if not state.took(1):
                out.append((owner, data[start:end], counted, True))
                start, counted = end, 0
            fstart = end
        state.clean = scanner.idle
        if start < len(data):
            if fstart is None and self._push or fstart is not None and data[fstart:fstart + 1] == b">":
                # A push that is not complete yet: held back (its owner would be nobody).
                self._push = True
                if fstart is not None and start < fstart:
                    out.append((owner, data[start:fstart], counted, True))
                return out
            if not state.head_due:
                raise UpstreamProtocolError("a reply on the shared link that no client asked for")
            out.append((state.head_owner, data[start:] if start else data, counted, False))
        return out

    def _drop_push(self) -> None:
        self._push = False
        self.dropped += 1
        if self.dropped <= 10 or not self.dropped % 1000:
            log.warning("a push message on a shared upstream link was dropped (%d so far): "
                        "nothing on a shared link may ask for one", self.dropped)

    def forget(self) -> list[object]:
        """The link is gone: the owners that were still due replies (each once), oldest first."""
        owners = self.state.forget()
        self.scanner = ReplyScanner()
        self._push = False
        return owners
