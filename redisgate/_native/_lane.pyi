"""Type stubs of the C module redisgate._native._lane (redisgate/_native/_lane.c, which has the contracts).

A client connection's steady state in C: `Lane` (one per client connection), and for a shared
upstream link its books, `LinkState` (redisgate.protocol.linkstate.PyLinkState is its Python twin), and
its `Router`. Every method is positional-only (METH_VARARGS / METH_O) except the constructors,
Lane.arm, LinkState.sent and LinkState.send, which also take their arguments by keyword.

Nothing in the module looks up a Python attribute by name: what it reads of Python objects is
passed to it through these signatures (callables it calls, dicts of Verdicts, LinkStates and
Lanes whose C fields it reads).
"""
from collections.abc import Callable
from typing import Any, TypedDict, final

# Session._inline's memo: command name (as sent) -> its Verdict (redisgate.policy.memo). The lane reads
# only Verdicts: any other value sends the read to the slow path.
_Known = dict[bytes, Verdict | object]
_Write = Callable[[bytes], object]

# Verdict.kind: one of these very objects (interned str)
ALLOW: str      # forwarded whatever the arguments
ONE_KEY: str    # forwarded when args[pos] starts with one of prefixes, is in exact or passes match
ASK: str        # the judge decides (the lane gives up on it)
SCRIPT: str     # the judge decides; the lane forwards an EVALSHA that fits a learnt ScriptForm

@final
class Verdict:
    """One memo entry (redisgate.policy.memo): made only by its named constructors, which check every
    argument (TypeError / ValueError) before keeping anything; immutable but for the forms a
    SCRIPT verdict learns. Every attribute is read-only."""
    @classmethod
    def allow(cls, spec: Any, fewest: int, most: int, counter: Counter) -> Verdict:
        """ValueError unless 1 <= fewest <= most; TypeError unless counter is a Counter."""
    @classmethod
    def ask(cls, spec: Any, fewest: int, most: int, counter: Counter) -> Verdict: ...
    @classmethod
    def one_key(cls, spec: Any, fewest: int, most: int, pos: int, prefixes: tuple[bytes, ...],
                exact: frozenset[bytes], match: Callable[[bytes], object] | None,
                counter: Counter) -> Verdict:
        """Also ValueError unless 1 <= pos < fewest; TypeError for prefixes other than a tuple
        of bytes, exact other than a frozenset, match neither callable nor None."""
    @classmethod
    def script(cls, spec: Any, fewest: int, most: int, counter: Counter, tag: bytes) -> Verdict:
        """`tag`: the hash-tag opening before a queue name in KEYS[1] (non-empty bytes)."""
    def knows(self, sha: bytes, queue: bytes, /) -> bool:
        """SCRIPT only (TypeError otherwise, or for arguments other than bytes)."""
    def learn(self, sha: bytes, queue: bytes, form: ScriptForm, /) -> None:
        """SCRIPT only: calls of script `sha` for `queue` (non-empty) that fit `form` pass in C
        from now on; the form is frozen. At most 64 SHA1s, 64 queues each (then forgotten)."""
    @property
    def kind(self) -> str: ...
    @property
    def spec(self) -> Any: ...
    @property
    def fewest(self) -> int: ...
    @property
    def most(self) -> int: ...
    @property
    def pos(self) -> int | None: ...
    @property
    def prefixes(self) -> tuple[bytes, ...]: ...
    @property
    def exact(self) -> frozenset[bytes]: ...
    @property
    def match(self) -> Callable[[bytes], object] | None: ...
    @property
    def counter(self) -> Counter: ...
    @property
    def tag(self) -> bytes | None: ...

@final
class ScriptForm:
    """What every call of one script for one queue must look like (scripts.LaneForm): numkeys
    as written, at least `need` arguments (4..64; ValueError), and each check added. Each check
    method raises ValueError for an index outside 1..63 or past 64 checks, TypeError for a value
    of the wrong type, RuntimeError once a verdict learnt the form."""
    def __new__(cls, numkeys: bytes, need: int) -> ScriptForm: ...
    def exact(self, index: int, value: bytes, /) -> None:
        """args[index] == value."""
    def one_of(self, index: int, values: tuple[bytes, ...], /) -> None:
        """args[index] is one of `values` (a non-empty tuple)."""
    def prefix(self, index: int, value: bytes, /) -> None:
        """args[index] starts with value and is longer."""
    def date(self, index: int, value: bytes, /) -> None:
        """args[index] is value, then a YYYY-MM-DD date."""
    @property
    def numkeys(self) -> bytes: ...
    @property
    def need(self) -> int: ...
    @property
    def checks(self) -> int:
        """How many checks it has."""

@final
class Lane:
    def __init__(self, client_slow: _Write, upstream_slow: _Write) -> None: ...
    def arm(self, known: _Known, upstream_write: _Write | None, client_write: _Write, due: int,
            max_args: int, max_bulk: int, link: LinkState | None = None,
            owner: object = None) -> None:
        """Take traffic. max_args and max_bulk are the request parser's limits
        (resp.RequestParser.limits, a resp.ScanLimits). On a shared link (`link` its LinkState,
        `owner` the ClientConnection) both are given; raises RuntimeError when already armed,
        ValueError for due < 0, max_args < 1 or max_bulk < 0, TypeError for one of link/owner
        alone or a link that is not a LinkState (then nothing is kept)."""
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
class LinkState:
    """A shared link's books, kept once (see redisgate/protocol/linkstate.py for the contract; the
    Python twin, PyLinkState, has the same interface)."""
    def __new__(cls, after_send: Callable[[object, int, int], object]) -> LinkState:
        """after_send(owner, size, replies): called when send() queued bytes that nothing will
        write yet (TypeError unless callable)."""
    def sent(self, owner: object, replies: int, lane: Lane | None = None) -> None:
        """owner's commands asking for `replies` replies were written after everything before
        (replies <= 0: nothing); `lane`: the owner's Lane, which the Router may hand them to
        while it is armed on this link. OverflowError past PY_SSIZE_T_MAX replies."""
    def put_first(self, owner: object, replies: int, /) -> None:
        """The link's own commands, whose replies come before all (ValueError unless
        replies > 0)."""
    def took(self, count: int, /) -> int:
        """`count` of the head owner's replies arrived: what it is still due (0: gone from the
        queue). ValueError for more than it is due."""
    def forget(self) -> list[object]:
        """Empty the queue: each owner that was due replies, once, oldest first."""
    def due_owners(self) -> list[object]:
        """The owner of each reply due, in order (for tests and debugging)."""
    def send(self, owner: object, data: bytes, replies: int, lane: Lane | None = None) -> None:
        """SharedLink.send: the queue learns whose replies come; an idle, ready link is written
        at once, else `data` joins `out` (after_send told when nothing will write it yet)."""
    def flush(self) -> None:
        """Write what the loop turn collected, when ready (a TypeError if `out` holds
        anything but bytes)."""
    def attach(self, conn: object, write: _Write | None, /) -> None:
        """The connection read and written now and its transport's write; None, None: none."""
    # clients' replies due, all together (settable: an int >= 0, ValueError / OverflowError /
    # TypeError otherwise)
    due: int
    ready: bool   # open and authenticated (settable: a bool)
    clean: bool   # no reply half read by the Python path (settable: a bool)
    @property
    def flush_soon(self) -> bool: ...
    @property
    def out(self) -> list[bytes]: ...
    @property
    def conn(self) -> object: ...
    @property
    def pending(self) -> int: ...
    @property
    def head_owner(self) -> object: ...
    @property
    def head_due(self) -> int: ...

@final
class Router:
    def __init__(self, link: LinkState, conn: object, slow: _Write) -> None: ...
    def data_received(self, data: bytes, /) -> object:
        """Bytes from the shared link: the whole replies at the head of its LinkState's queue
        that belong to lanes armed on it go to their clients in C; the rest of the read goes
        to `slow`."""

@final
class Counter:
    """A uint64 count (one per user and command: metrics.forwarded_counter) that lanes add to
    in C (a memo Verdict's `counter`); read when /metrics is scraped. Made with no arguments
    (TypeError otherwise)."""
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
