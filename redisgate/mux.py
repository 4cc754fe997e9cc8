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
from collections import deque

from .resp import ReplyScanner, UpstreamProtocolError

log = logging.getLogger("redisgate.mux")


class Demux:
    """The owners of the replies still due on one shared link, oldest first."""

    def __init__(self) -> None:
        # [owner, replies still due], in the order sent. Cleared, never replaced: the C side
        # (redisgate._lane) keeps a reference to it.
        self.due: deque[list] = deque()
        self.scanner = ReplyScanner()
        # No reply is half read (the scanner is idle): the C router (redisgate._lane) may count
        # the next bytes without frames. Kept as a plain attribute because C reads it.
        self.clean = True
        self._push = False   # the reply in progress is a push being dropped (see _walk)
        self.dropped = 0     # push frames dropped so far

    @property
    def pending(self) -> int:
        """Replies still due, all owners together."""
        return sum(entry[1] for entry in self.due)

    def sent(self, owner, replies: int) -> None:
        """`owner`'s commands asking for `replies` replies were written after everything before."""
        if replies <= 0:
            return
        due = self.due
        if due and due[-1][0] is owner:
            due[-1][1] += replies
        else:
            due.append([owner, replies])

    def received(self, data: bytes) -> list[tuple[object, bytes, int, bool]]:
        """Cut `data` (the next bytes from the link) by owner: [(owner, bytes, replies ended in
        them, whether the bytes end where a reply ends)], in order. The bytes of a reply that is
        not complete yet go to its owner too (the owner's own scanner waits for the rest),
        counted 0 until the read that ends it.

        Raises UpstreamProtocolError on malformed replies or replies nobody asked for: the link
        can no longer be trusted.
        """
        out: list[tuple[object, bytes, int, bool]] = []
        due = self.due
        scanner = self.scanner
        size = len(data)
        pos = 0
        while pos < size:
            if not due:
                # (a push nobody asked for is dropped there; anything else is an error)
                return self._walk(data, pos, pos, 0, out)
            entry = due[0]
            # Flat replies (OK, integers, short bulks) are counted without frames.
            count, end = scanner.count_flat(data, entry[1], pos)
            if count == entry[1]:
                out.append((entry[0], data if end - pos == size else data[pos:end], count, True))
                due.popleft()
                pos = end
                continue
            if end == size:
                entry[1] -= count
                out.append((entry[0], data if not pos else data[pos:], count, True))
                return out
            # Something else comes first (an array, a long bulk, a reply split across reads):
            # walk the frames of the rest of this read.
            entry[1] -= count
            return self._walk(data, pos, end, count, out)
        return out

    def _walk(self, data: bytes, start: int, base: int, counted: int, out: list) -> list:
        """received() from `base` on, frame by frame; the head owner's bytes begin at `start`
        and `counted` of its replies ended between `start` and `base`."""
        due = self.due
        scanner = self.scanner
        # Where the frame in progress began in `data`: None when before it (then `_push` says
        # whether it is a push whose bytes so far were held back).
        fstart = base if scanner.idle else None
        for frame in scanner.feed(data[base:] if base else data):
            end = base + frame.end
            if frame.kind == b">":
                # Nothing on a shared link subscribes or tracks keys, so a push is nobody's
                # reply: dropped (and logged), never handed to a client, never failing the link.
                if fstart is not None and start < fstart:
                    out.append((due[0][0], data[start:fstart], counted, True))
                    counted = 0
                self._drop_push()
                start = fstart = end
                continue
            if not due:
                raise UpstreamProtocolError("a reply on the shared link that no client asked for")
            entry = due[0]
            entry[1] -= 1
            counted += 1
            if not entry[1]:
                out.append((entry[0], data[start:end], counted, True))
                due.popleft()
                start, counted = end, 0
            fstart = end
        self.clean = scanner.idle
        if start < len(data):
            if fstart is None and self._push or fstart is not None and data[fstart:fstart + 1] == b">":
                # A push that is not complete yet: held back (its owner would be nobody).
                self._push = True
                if fstart is not None and start < fstart:
                    out.append((due[0][0], data[start:fstart], counted, True))
                return out
            if not due:
                raise UpstreamProtocolError("a reply on the shared link that no client asked for")
            out.append((due[0][0], data[start:] if start else data, counted, False))
        return out

    def _drop_push(self) -> None:
        self._push = False
        self.dropped += 1
        if self.dropped <= 10 or not self.dropped % 1000:
            log.warning("a push message on a shared upstream link was dropped (%d so far): "
                        "nothing on a shared link may ask for one", self.dropped)

    def forget(self) -> list:
        """The link is gone: the owners that were still due replies (each once), oldest first."""
        owners, seen = [], set()
        for owner, _ in self.due:
            if id(owner) not in seen:
                seen.add(id(owner))
                owners.append(owner)
        self.due.clear()
        self.scanner = ReplyScanner()
        self.clean = True
        self._push = False
        return owners
