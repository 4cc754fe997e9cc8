"""A shared link's reply accounting and write queue, kept once. No I/O of its own, no imports of
the I/O layer.

`LinkState` is what server.SharedLink and mux.Demux keep their books in: the queue of whose
replies come next and how many (`sent`, `put_first`, `took`, `forget`), the clients' replies due
all together (`due`), whether the link is ready, the bytes waiting for this loop turn's flush
(`out`) and whether that flush is scheduled, whether no reply is half read (`clean`), and the
connection attached now (`attach`: its identity and its transport's write). `send` and `flush`
are the link's send and flush: the only copy of that logic. What needs the event loop
(scheduling the flush, opening the link) is the `after_send` callable's, called when bytes were
queued and nothing will write them yet.

It is redisgate._native._lane.LinkState, in C, when that module is built (its Lanes and the link's
Router then keep the same books in the same C fields, without a Python attribute lookup), and
`PyLinkState` below, its pure-Python twin with the same interface, when it is not (or with
REDISGATE_PURE_PYTHON=1 / REDISGATE_NO_LANE=1, as server.py's Lane and Router).
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Protocol

__all__ = ["AfterSend", "LinkState", "LinkStateLike", "PyLinkState"]

# after_send(owner, size, replies): `size` bytes of `owner`'s asking for `replies` replies were
# queued in `out` and nothing will write them yet (the flush is not scheduled, or the link is
# not ready).
AfterSend = Callable[[object, int, int], object]
Write = Callable[[bytes], object]


class _Due:
    """One run of replies due to one owner (with the Lane that may route them, in C)."""

    __slots__ = ("owner", "lane", "n")

    def __init__(self, owner: object, lane: object, n: int) -> None:
        self.owner = owner
        self.lane = lane
        self.n = n


class PyLinkState:
    """redisgate._native._lane.LinkState in Python (see the module docstring)."""

    def __init__(self, after_send: AfterSend) -> None:
        if not callable(after_send):
            raise TypeError("LinkState: after_send must be callable")
        self._after_send = after_send
        self._queue: deque[_Due] = deque()
        self._out: list[bytes] = []
        self._conn: object = None
        self._write: Write | None = None
        self.pending = 0          # replies due, the link's own included
        self.due = 0              # clients' replies due, all together
        self.ready = False        # open and authenticated: send and flush write it
        self.clean = True         # no reply half read by the Python path
        self.flush_soon = False   # this loop turn's flush is scheduled

    # -- the queue of whose replies come next (mux.Demux reads it)

    def sent(self, owner: object, replies: int, lane: object = None) -> None:
        """`owner`'s commands asking for `replies` replies were written after everything
        before (no write, no `due`)."""
        if replies <= 0:
            return
        queue = self._queue
        if queue and queue[-1].owner is owner:
            tail = queue[-1]
            tail.n += replies
            if lane is not None:
                tail.lane = lane
        else:
            queue.append(_Due(owner, lane, replies))
        self.pending += replies

    def put_first(self, owner: object, replies: int) -> None:
        """The link's own commands, whose replies come before everything queued."""
        if replies <= 0:
            raise ValueError("LinkState.put_first: replies out of range")
        self._queue.appendleft(_Due(owner, None, replies))
        self.pending += replies

    @property
    def head_owner(self) -> object:
        """The owner of the next reply, or None."""
        return self._queue[0].owner if self._queue else None

    @property
    def head_due(self) -> int:
        """How many replies in a row the head owner is due (0: nobody is)."""
        return self._queue[0].n if self._queue else 0

    def took(self, count: int) -> int:
        """`count` of the head owner's replies arrived: what it is still due (0: popped)."""
        queue = self._queue
        if not queue or count <= 0 or count > queue[0].n:
            raise ValueError("LinkState.took: more replies than the head is due")
        head = queue[0]
        head.n -= count
        self.pending -= count
        if not head.n:
            queue.popleft()
        return head.n

    def forget(self) -> list[object]:
        """Empty the queue: each owner that was due replies, once, oldest first."""
        owners: list[object] = []
        seen: set[int] = set()
        for entry in self._queue:
            if id(entry.owner) not in seen:
                seen.add(id(entry.owner))
                owners.append(entry.owner)
        self._queue.clear()
        self.pending = 0
        self.clean = True
        return owners

    def due_owners(self) -> list[object]:
        """The owner of each reply due, in order (for tests and debugging)."""
        return [entry.owner for entry in self._queue for _ in range(entry.n)]

    # -- writing

    @property
    def out(self) -> list[bytes]:
        """The bytes waiting for the flush (the same list for life)."""
        return self._out

    @property
    def conn(self) -> object:
        """The connection attached now, or None."""
        return self._conn

    def attach(self, conn: object, write: Write | None) -> None:
        """The link reads and writes `conn` now (its transport's `write`); None, None: none."""
        if (conn is None) != (write is None) or (write is not None and not callable(write)):
            raise TypeError("LinkState.attach: a connection and a callable write, "
                            "or None and None")
        self._conn, self._write = conn, write

    def send(self, owner: object, data: bytes, replies: int, lane: object = None) -> None:
        """`owner`'s `data` asks for `replies` replies: the queue learns whose they are first;
        an idle, ready link (nothing in flight, nothing queued) is written at once; else the
        bytes join `out`, and after_send is told when nothing will write them yet."""
        if replies < 0:
            raise ValueError("LinkState.send: replies must be >= 0")
        self.sent(owner, replies, lane)
        idle = not self.due
        self.due += replies
        if idle and self.ready and self._write is not None and not self._out:
            # Nothing in flight: nobody to wait for (one client alone pays no extra turn). A
            # busy link collects the turn's commands and writes them at once.
            self._write(data)
            return
        self._out.append(data)
        if self.ready and self.flush_soon:
            return
        if self.ready:
            self.flush_soon = True   # (after_send schedules it)
        try:
            self._after_send(owner, len(data), replies)
        except BaseException:
            self.flush_soon = False   # (not scheduled after all: the next send tries again)
            raise

    def flush(self) -> None:
        """Write what the loop turn collected (if ready)."""
        self.flush_soon = False
        out = self._out
        if out and self.ready and self._write is not None:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._write(data)


class LinkStateLike(Protocol):
    """The interface both implementations have (for type checkers)."""

    due: int
    ready: bool
    clean: bool

    @property
    def pending(self) -> int: ...
    @property
    def flush_soon(self) -> bool: ...
    @property
    def out(self) -> list[bytes]: ...
    @property
    def conn(self) -> object: ...
    @property
    def head_owner(self) -> object: ...
    @property
    def head_due(self) -> int: ...
    # (lane: a redisgate._native._lane.Lane or None; the twin never reads it)
    def sent(self, owner: object, replies: int, lane: Any = ...) -> None: ...
    def put_first(self, owner: object, replies: int, /) -> None: ...
    def took(self, count: int, /) -> int: ...
    def forget(self) -> list[object]: ...
    def due_owners(self) -> list[object]: ...
    def attach(self, conn: object, write: Write | None, /) -> None: ...
    def send(self, owner: object, data: bytes, replies: int, lane: Any = ...) -> None: ...
    def flush(self) -> None: ...


LinkState: Callable[[AfterSend], LinkStateLike]
try:
    from .._native._lane import LinkState as _CLinkState
except ImportError:   # not compiled here
    LinkState = PyLinkState
else:
    LinkState = _CLinkState
if os.environ.get("REDISGATE_PURE_PYTHON") or os.environ.get("REDISGATE_NO_LANE"):
    LinkState = PyLinkState
