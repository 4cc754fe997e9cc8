"""Flow control: why a connection is not read, in one place. No I/O of its own.

One `FlowControl` per client connection (server.ClientConnection) and per shared upstream link
(server.SharedLink), as uvicorn keeps one per protocol: it holds the set of reasons (`Hold`) that
reading the connection is paused for, and calls its transport's ``pause_reading()`` when the first
reason comes and ``resume_reading()`` when the last one goes; and it says whether the connection's
own writing is paused (``pause_writing`` / ``resume_writing`` from asyncio: `write_paused`).

A reason may be held by several independent sources at once (`source`: in cluster mode, each node
connection a client's commands go to); it holds until every source released it.

May import: nothing from redisgate (the standard library only).
"""
from __future__ import annotations

import enum


class Hold(enum.Enum):
    """Why reading a client is paused. The values are the names logs and docs use."""
    # The upstream cannot take more commands: the client's own upstream connection, or the shared
    # link it is on, is past its write high-water mark.
    UPSTREAM = "upstream"
    # Commands wait for the client's own upstream connection being opened (server.WAITING_LIMIT).
    CONNECTING = "connecting"
    # Commands wait for a shared link being (re)opened (server.WAITING_LIMIT).
    LINK_CONNECTING = "link-connecting"
    # The client does not read its replies: its own transport is past its write high-water mark.
    OUTPUT = "output"
    # The client's window of replies due is full (server.ClientConnection._client_data).
    WINDOW = "window"
    # The process is over limits.memory_budget (server.Proxy.check_budget).
    BUDGET = "budget"
    # auth_throttle delays the reply to a refused login, and what the client sends next.
    AUTH_THROTTLE = "auth-throttle"


class FlowControl:
    """The reasons a connection's reading is paused, and whether its writing is.

    `transport` (anything with ``pause_reading`` / ``resume_reading``) may be set later, or never
    (a shared link's reading is never paused: only its writing state is kept here). Nothing is
    called on a transport once `closed` is set."""

    __slots__ = ("transport", "closed", "read_paused", "write_paused", "_holders")

    def __init__(self, transport=None) -> None:
        self.transport = transport
        self.closed = False
        self.read_paused = False     # the transport's reading is paused (by this object)
        self.write_paused = False    # the transport said pause_writing (until resume_writing)
        self._holders: dict[Hold, set] = {}   # reason -> the sources holding it

    def hold(self, reason: Hold, on: bool = True, source: object = None) -> None:
        """Hold (`on`) or release reading for `reason` (from `source`, when several independent
        sources may hold the same reason)."""
        holders = self._holders
        if on:
            held = holders.get(reason)
            if held is None:
                holders[reason] = {source}
            else:
                held.add(source)
        else:
            held = holders.get(reason)
            if held is None:
                return   # (the common case: released again, nothing changes)
            held.discard(source)
            if held:
                return
            del holders[reason]
        self._apply()

    def holds(self, reason: Hold) -> bool:
        return reason in self._holders

    @property
    def reasons(self) -> frozenset[Hold]:
        """The reasons held now."""
        return frozenset(self._holders)

    def release_all(self) -> None:
        """Drop every reason (graceful shutdown: a draining client is read to the end)."""
        self._holders.clear()
        self._apply()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    def _apply(self) -> None:
        if self.closed or self.transport is None:
            return
        if self._holders:
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
        elif self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
