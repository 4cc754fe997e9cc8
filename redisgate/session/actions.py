"""What a session asks the I/O layer to do: the one record that crosses the session ↔ shell
boundary. No I/O.

``session.Session`` is fed events (``client_data``, ``upstream_data``, ``connected``, ...) and
collects what they produce; ``Session.actions()`` hands it over as one frozen `Actions` (and
forgets it: the next call has only what came since). ``server.ClientConnection.pump`` executes
it and writes nothing back into the session: whatever the shell decides on its own (an internal
error, an eviction, an idle timeout) it tells the session through a method (``Session.abort``).

May import: nothing from redisgate (the standard library only).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actions:
    """What the I/O layer does after feeding the session, in this order: write `to_client`; send
    `to_upstream` (on a shared link when `via_link`, asking it for `link_replies` replies, else on
    the client's own upstream connection); open the own upstream connection while
    `open_upstream` holds; stop reading the client for `stall` seconds (then call
    ``Session.resume()``); close the client after writing while `close` holds.

    `open_upstream`, `close`, `stall` and `link_resp3` are states (they hold until the session
    changes them), the bytes and `link_replies` are new since the last ``actions()``."""
    to_client: bytes = b""
    to_upstream: bytes = b""
    # The bytes go to a shared link (upstream.multiplex): the session is on one, or they are the
    # last commands it sent there before leaving.
    via_link: bool = False
    # Replies the shared link owes for `to_upstream` (what mux.Demux is told).
    link_replies: int = 0
    # The protocol of the shared links the session's commands are bound to (RESP3 or RESP2): the
    # I/O layer moves the client to a link that speaks it when nothing is due on its own.
    link_resp3: bool = False
    open_upstream: bool = False
    close: bool = False
    stall: float = 0.0

    @classmethod
    def new(cls, to_client: bytes, to_upstream: bytes, via_link: bool, link_replies: int,
            link_resp3: bool, open_upstream: bool, close: bool, stall: float) -> "Actions":
        """Actions(...) for the hot path (ClientConnection.pump takes one per event): the same
        frozen object, filled as a mutable `_Draft` with the very same slots (plain attribute
        stores) and then made an `Actions` by assigning its class (the layouts are identical, so
        CPython allows it). 0.3 µs of CPU here, against 0.7 µs setting the slots through their
        descriptors and 1.4 µs through the frozen __init__'s object.__setattr__ per field."""
        a = _Draft()
        a.to_client = to_client
        a.to_upstream = to_upstream
        a.via_link = via_link
        a.link_replies = link_replies
        a.link_resp3 = link_resp3
        a.open_upstream = open_upstream
        a.close = close
        a.stall = stall
        a.__class__ = cls   # type: ignore[assignment]  # (the same slots: see above)
        return a  # type: ignore[return-value]


class _Draft:
    """An Actions being filled (Actions.new): the same slots, not frozen. Never returned."""
    __slots__ = Actions.__slots__   # (what dataclass(slots=True) made)

    to_client: bytes
    to_upstream: bytes
    via_link: bool
    link_replies: int
    link_resp3: bool
    open_upstream: bool
    close: bool
    stall: float


assert Actions.__slots__ == ("to_client", "to_upstream", "via_link", "link_replies",
                             "link_resp3", "open_upstream", "close", "stall")
