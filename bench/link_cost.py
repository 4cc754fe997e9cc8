"""A shared link's C path, two builds side by side in one process (issue 16's "one link").

    python bench/link_cost.py /path/to/other/checkout [--reps 15]

Loads the other checkout's built _lane (redisgate/_native/ or, before, redisgate/) next to this one's and times, in CPU time
(process_time_ns, so other processes on the machine do not count), interleaved repetitions of
what a shared link (upstream.multiplex) does for clients whose C lanes are armed on it:

* `idle`: one client; a read of 16 GETs forwarded by its lane onto the idle link (written at
  once), then the link's read of the 16 replies routed back to it by the link's Router;
* `busy`: four clients in one loop turn; each one's 16 GETs queued on the busy link (the first
  one tells the link, which would schedule the flush), the turn's flush, then one read of the
  64 replies routed to the four.

Each build gets the link its own `_lane` expects: before issue 16's one link, a Python object
with the attributes the C side read by name (`due`, `ready`, `out`, `_flush_soon`, `conn`,
`transport`, `demux.due` of `[owner, n]` lists, `demux.clean`, the owner's `lane`) whose `send`
and `flush` are server.SharedLink's of that time without the event loop; after it, a
`_lane.LinkState` (the flush: `LinkState.flush`, in C). Median and min over the repetitions, in
ns per iteration.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redisgate._native import _lane as mine  # noqa: E402
# (bench/lane_cost.py: loading another build's _lane, and the same request and replies)
from lane_cost import REPLIES, REQUEST, cmd, other_lane  # noqa: E402,F401


class OldLink:
    """server.SharedLink as the C side of a build before issue 16's one link read it."""

    def __init__(self):
        self.demux = SimpleNamespace(due=deque(), clean=True)
        self.due = 0
        self.ready = True
        self.out = []
        self._flush_soon = False
        self.conn = self
        self.transport = self
        self.write = len

    def send(self, client, data, replies):   # SharedLink.send of then, minus call_soon
        due = self.demux.due
        if due and due[-1][0] is client:
            due[-1][1] += replies
        else:
            due.append([client, replies])
        idle = not self.due
        self.due += replies
        if idle and self.ready and not self.out:
            self.conn.transport.write(data)
            return
        self.out.append(data)
        if self.ready and not self._flush_soon:
            self._flush_soon = True   # (asyncio's call_soon(self.flush))

    def flush(self):
        self._flush_soon = False
        out = self.out
        if out and self.ready:
            self.conn.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()


class Owner:
    lane = None


def verdict(mod):
    prefixes = (b"asynq:{a}:", b"key:")
    if hasattr(mod, "Verdict"):
        return mod.Verdict.one_key(spec=None, fewest=2, most=2, pos=1, prefixes=prefixes,
                                   exact=frozenset(), match=None, counter=mod.Counter())
    return (None, 2, 2, 1, prefixes, frozenset(), None, mod.Counter())


def setup(mod, clients: int):
    """(link, flush, router, lanes) for `mod`'s build."""
    known = {b"GET": verdict(mod)}
    if hasattr(mod, "LinkState"):
        conn = object()
        link = mod.LinkState(lambda owner, size, replies: None)
        link.attach(conn, len)
        link.ready = True
        router = mod.Router(link, conn, len)
        flush = link.flush
    else:
        link = OldLink()
        router = mod.Router(link, link, len)
        flush = link.flush
    lanes = []
    for _ in range(clients):
        owner = Owner()
        lane = mod.Lane(len, len)
        owner.lane = lane
        lane.arm(known, None, len, 0, 1024, 512 << 20, link, owner)
        lanes.append(lane)
    return link, flush, router, lanes


def timed_idle(case, n: int = 100_000) -> float:
    _, _, router, lanes = case
    client, routed = lanes[0].client_data, router.data_received
    t0 = time.process_time_ns()
    for _ in range(n):
        client(REQUEST)
        routed(REPLIES)
    return (time.process_time_ns() - t0) / n


def timed_busy(case, n: int = 50_000) -> float:
    link, flush, router, lanes = case
    routed = router.data_received
    first, *rest = [lane.client_data for lane in lanes]
    replies = REPLIES * (1 + len(rest))
    link.due = 1   # (busy: one reply in flight that nobody here waits for...)
    t0 = time.process_time_ns()
    for _ in range(n):
        first(REQUEST)
        for client in rest:
            client(REQUEST)
        flush()
        routed(replies)
    elapsed = time.process_time_ns() - t0
    link.due = 0   # (...and never comes)
    return elapsed / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("other", help="a checkout whose _lane is built")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    other = other_lane(args.other)
    builds = {"other build": other, "this build": mine}
    cases = {(scenario, name): setup(mod, 1 if scenario == "idle" else 4)
             for scenario in ("idle", "busy") for name, mod in builds.items()}
    times: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
    for _ in range(args.reps):
        for key, case in cases.items():
            times[key].append((timed_idle if key[0] == "idle" else timed_busy)(case))
    for (scenario, name), xs in times.items():
        print(f"{scenario:5s} {name:12s} median {statistics.median(xs):8.1f} ns  "
              f"min {min(xs):8.1f} ns per iteration")


if __name__ == "__main__":
    main()
