"""Type stubs of the C module redisgate._lane (redisgate/_lane.c, which has the contracts).

A client connection's steady state in C: `Lane` (one per client connection) and `Router` (one per
shared upstream link). Every method is positional-only (METH_VARARGS / METH_O) except the
constructors, which also take their arguments by keyword.
"""
from collections.abc import Callable
from typing import Any, TypedDict, final

# Session._inline's memo: command name (as sent) -> its inline verdict tuple (see session.py);
# an 8-item one ends with the `Counter` the lane adds the requests it forwards to.
_Known = dict[bytes, tuple[Any, ...]]
_Write = Callable[[bytes], object]

@final
class Lane:
    def __init__(self, client_slow: _Write, upstream_slow: _Write) -> None: ...
    def arm(self, known: _Known, upstream_write: _Write | None, client_write: _Write, due: int,
            max_args: int, max_bulk: int, link: Any = ..., owner: Any = ..., /) -> None:
        """Take traffic. On a shared link (`link` a server.SharedLink, `owner` the
        ClientConnection) both are given; raises RuntimeError when already armed, ValueError for
        due < 0, max_args < 1 or max_bulk < 0, TypeError for one of link/owner alone or None,
        and what looking up link.demux.due raises (then nothing is kept)."""
    def disarm(self) -> int:
        """Stop taking traffic; returns the replies still due (the caller owns them now)."""
    def client_data(self, data: bytes, /) -> object:
        """Bytes from the client: forwarded in C, or handed whole to client_slow (whose result is
        returned)."""
    def upstream_data(self, data: bytes, /) -> object:
        """Bytes from the upstream: passed to the client in C, or handed whole to upstream_slow
        (whose result is returned)."""
    @property
    def armed(self) -> bool: ...
    @property
    def due(self) -> int: ...
    @property
    def passed(self) -> int: ...
    @property
    def shared(self) -> bool: ...
    # the most replies that may be due: a read that would pass it goes to the slow path
    # (settable, at least 1; ValueError otherwise, AttributeError on delete)
    window: int

@final
class Router:
    def __init__(self, link: Any, conn: Any, slow: _Write) -> None: ...
    def data_received(self, data: bytes, /) -> object:
        """Bytes from the shared link: the whole replies at the head of its Demux that belong to
        armed lanes go to their clients in C; the rest of the read goes to `slow`."""

@final
class Counter:
    """A uint64 count (one per user and command: metrics.forwarded_counter) that lanes add to
    in C; read when /metrics is scraped. Made with no arguments (TypeError otherwise)."""
    def add(self, n: int, /) -> None:
        """Count n more: TypeError unless an int, OverflowError when negative or past 2**64."""
    @property
    def value(self) -> int: ...

class _Stats(TypedDict):
    bytes_in: int          # client bytes the lanes forwarded in C (the Python path counts its own)
    bytes_out: int         # bytes the lanes and routers wrote to clients in C
    reads: int             # reads through Lane.client_data / upstream_data / Router.data_received
    latency_buckets: tuple[int, ...]   # per bucket of LATENCY_BOUNDS_NS, +Inf last (not cumulative)
    latency_count: int     # reads timed: one in LATENCY_SAMPLE
    latency_sum_ns: int

def stats() -> _Stats:
    """A copy of the module's counters (see "Metrics kept in C" in _lane.c)."""

LATENCY_SAMPLE: int                  # one read in this many is timed
LATENCY_BOUNDS_NS: tuple[int, ...]   # the latency histogram's upper bounds, nanoseconds
