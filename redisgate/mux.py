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

from collections import deque

from .resp import ReplyScanner, UpstreamProtocolError


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
                raise UpstreamProtocolError("a reply on the shared link that no client asked for")
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
        for frame in self.scanner.feed(data[base:] if base else data):
            if not due:
                raise UpstreamProtocolError("a reply on the shared link that no client asked for")
            if frame.kind == b">":
                # Nothing on a shared link subscribes or tracks keys: a push is nobody's reply.
                raise UpstreamProtocolError("a push message on the shared link")
            entry = due[0]
            entry[1] -= 1
            counted += 1
            if not entry[1]:
                end = base + frame.end
                out.append((entry[0], data[start:end], counted, True))
                due.popleft()
                start, counted = end, 0
        self.clean = self.scanner.idle
        if start < len(data):
            if not due:
                raise UpstreamProtocolError("a reply on the shared link that no client asked for")
            out.append((due[0][0], data[start:] if start else data, counted, False))
        return out

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
        return owners
