"""Micro-benchmark of the whole sans-I/O proxy path: a logged-in `session.Session` fed the bytes a
socket would deliver, replies fed back the same way. No sockets, one core.

    python bench/session.py [--quick] [--json] [--profile [N]] [--scenario NAME ...]

Each scenario is a list of client reads, each followed by the upstream read that answers it:

* ``p16 set/get`` — redis-benchmark ``-P 16``: 16 SETs in one read, 16 ``+OK`` back; then 16 GETs,
                    16 three-byte bulks back (keys ``key:%012d``, as redis-benchmark ``-r``).
* ``p1 get``      — one GET per read and one reply per read (``-P 1``, ``-c 1``): the fixed cost
                    of a round trip through the session, which dominates unpipelined traffic.
* ``p16 asynq``   — bench/judge.py's Asynq mix (EVALSHA enqueue/dequeue/done with their script
                    contracts, ZADD, HSET, SADD, GET, SET, PING) 16 commands per read, ``:1`` back.
* ``p16 evalsha`` — the ``evalsha_p16`` socket workload: 16 enqueueCmd EVALSHAs per read.

The user is ``bench`` from bench/redisgate.yaml (the socket benchmarks' policy). Every scenario
checks that every command was forwarded and every reply returned in full (a denial or a lost
reply would make the number meaningless). The result is the best of several timed passes, in
commands/s and ns per command; ``--profile`` adds cProfile's top entries per scenario.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from judge import (asynq_commands, encode, load_bench_config, logged_in, SHA_ENQUEUE,  # noqa: E402
                   add_cpu_option, timed, use_clock)


def _batches(cmds: list[list[bytes]], per_read: int) -> list[bytes]:
    return [encode(cmds[i:i + per_read]) for i in range(0, len(cmds), per_read)]


def scenarios(n: int) -> dict[str, list[tuple[bytes, bytes, int]]]:
    """name -> [(client read, upstream read, commands in it)]."""
    out: dict[str, list[tuple[bytes, bytes, int]]] = {}
    keys = [b"key:%012d" % (i * 7919 % 100_000) for i in range(n)]
    reads = []
    for i in range(0, n, 32):
        ks = keys[i:i + 16]
        reads.append((encode([[b"SET", k, b"xxx"] for k in ks]), b"+OK\r\n" * len(ks), len(ks)))
        reads.append((encode([[b"GET", k] for k in ks]), b"$3\r\nxxx\r\n" * len(ks), len(ks)))
    out["p16 set/get"] = reads
    m = n // 8
    out["p1 get"] = [(encode([[b"GET", k]]), b"$3\r\nxxx\r\n", 1) for k in keys[:m]]
    cmds = asynq_commands(n)
    out["p16 asynq"] = [(b, b":1\r\n" * min(16, len(cmds) - i), min(16, len(cmds) - i))
                        for i, b in zip(range(0, len(cmds), 16), _batches(cmds, 16))]
    msg = b"email:deliver:" + b"p" * 64 + b":" + b"0" * 36
    ev = [[b"EVALSHA", SHA_ENQUEUE, b"2", b"asynq:{default}:t:%d" % i, b"asynq:{default}:pending",
           msg, b"%d" % i, b"1717171717000000000"] for i in range(n // 2)]
    out["p16 evalsha"] = [(b, b":1\r\n" * 16, 16) for b in _batches(ev, 16)]
    return out


def make_pass(gate, reads):
    """One pass over `reads` through a fresh session, as the I/O layer drives it (each event's
    output taken, by Session.actions(), before the next); checks that everything went through."""
    want_up = sum(len(c) for c, _, _ in reads)
    want_client = sum(len(r) for _, r, _ in reads)

    def run() -> None:
        s = logged_in(gate)
        client_data, upstream_data = s.client_data, s.upstream_data
        sent = got = 0
        if hasattr(s, "actions"):   # the I/O layer takes Session.actions() after each event
            actions = s.actions
            for c, r, _ in reads:
                client_data(c)
                sent += len(actions().to_upstream)
                upstream_data(r)
                got += len(actions().to_client)
        else:   # (before Session.actions(): the I/O layer joined and cleared the lists)
            to_up, to_client = s.to_upstream, s.to_client
            for c, r, _ in reads:
                client_data(c)
                sent += len(to_up[0] if len(to_up) == 1 else b"".join(to_up))
                to_up.clear()
                upstream_data(r)
                got += len(to_client[0] if len(to_client) == 1 else b"".join(to_client))
                to_client.clear()
        if sent != want_up or got != want_client or s.close:
            raise RuntimeError(f"not everything went through: {sent}/{want_up} bytes forwarded, "
                               f"{got}/{want_client} bytes of replies returned")
    return run


def best_of(fn, reps: int) -> float:
    """The fastest of `reps` timed passes (judge.timed: after a warm-up, GC off, judge's clock)."""
    return min(timed(fn, reps))


def profile(fn, top: int) -> str:
    prof = cProfile.Profile()
    prof.runcall(fn)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = buf.getvalue().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
    repo = str(BENCH_DIR.parent) + "/"
    return "\n".join(ln.replace(repo, "") for ln in lines[start:] if ln.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="whole-session commands/s, no sockets")
    ap.add_argument("--quick", action="store_true", help="fewer commands and repetitions")
    ap.add_argument("--commands", type=int, help="commands per scenario (default 64,000)")
    ap.add_argument("--scenario", action="append", help="run only this scenario (repeatable)")
    ap.add_argument("--profile", nargs="?", const=12, type=int, metavar="N",
                    help="print cProfile's top N entries (by own time) per scenario")
    add_cpu_option(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)
    use_clock(args)
    n = args.commands or (16_000 if args.quick else 64_000)
    reps = 3 if args.quick else 7

    from redisgate.session.gate import Gate
    gate = Gate(load_bench_config(), (7, 0, 15))
    results = {}
    for name, reads in scenarios(n).items():
        if args.scenario and name not in args.scenario:
            continue
        count = sum(k for _, _, k in reads)
        run = make_pass(gate, reads)
        t = best_of(run, reps)
        results[name] = {"commands": count, "cmds_per_s": count / t, "ns_per_cmd": t / count * 1e9}
        if args.profile:
            results[name]["profile"] = profile(run, args.profile)
    if args.json:
        print(json.dumps(results))
        return 0
    for name, r in results.items():
        print(f"{name:14} {r['cmds_per_s']:>12,.0f} commands/s  "
              f"({r['ns_per_cmd']:,.0f} ns/command)")
        if "profile" in r:
            print(r["profile"] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
