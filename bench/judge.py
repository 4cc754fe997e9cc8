"""Micro-benchmark of the judge alone: commands per second to parse and judge a pipelined buffer
of Asynq-shaped commands on one core. No sockets.

    python bench/judge.py [--quick] [--json]

The buffer is what an Asynq worker and client send through go-redis v9 (lowercase names,
pipelined): EVALSHA of dequeue/done/enqueue with their real KEYS/ARGV layouts, ZADD XX of the
lease, HSET of a result, SADD asynq:queues, PING, plus the GET/SET a cache would add. It is fed in
16 KiB slices, as socket reads would deliver it, and each path is timed over the whole buffer:

* ``session`` — a logged-in `session.Session`: `client_data()` for the requests (parse with
                `take_batch()`, judge inline or with `User.judge`, forward) and `upstream_data()`
                for one reply per command, i.e. the whole sans-I/O cost of the proxy per command
                (routing and reply ordering included), without sockets. This is the path the proxy
                runs, and the one the ≥ 1 M cmds/s target is checked against: it does everything
                "parse and judge" needs, and more.
* ``drain``   — the modules' plain API one request at a time: `RequestParser.drain()` (Request
                objects with their raw bytes) + `commands.TABLE.lookup` + `available` +
                `check_arity` + `User.judge` (the user `bench` compiled from bench/redisgate.yaml by
                `redisgate.config`, i.e. `rules.parse_user(...)` plus its script allowlist).
* ``next``    — the same with `RequestParser.next()` one request at a time.
* ``... (GET/SET)`` — `drain` and `session` again over redis-benchmark's own SET/GET traffic,
                to compare with the socket benchmarks' -P 16 numbers.
* ``... [pure Python]`` — `session` and `drain` again with the C module
                (redisgate/_native/_speedups.c: take_batch()'s scan, count_flat()) turned off: the path of
                a machine where it is not built.

Every path also verifies that the judge allowed every command (a denial would make the numbers
meaningless). The result is the median of several timed repetitions after a warm-up.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(BENCH_DIR))

SLICE = 16 * 1024
Q = b"asynq:{default}:"
SHA_ENQUEUE = b"98d28b42650870a743450ffda9791e9e19c6991b"
SHA_DEQUEUE = b"a8153319360adc71cdc370107f8ab9786f204765"
SHA_DONE = b"1241eaa1c73409baaf1fea0c08d203a4911bda15"
MSG = b"\x0a\x0cemail:deliver\x12\x40" + b"p" * 64 + b"\x1a\x24" + b"0" * 36   # ~120 B protobuf


def asynq_commands(n: int) -> list[list[bytes]]:
    """n commands in the proportions of a busy worker + client (go-redis spelling)."""
    out: list[list[bytes]] = []
    i = 0
    while len(out) < n:
        tid = b"%036d" % i
        task = Q + b"t:" + tid
        out += [
            [b"evalsha", SHA_ENQUEUE, b"2", task, Q + b"pending", MSG, tid, b"1717171717000000000"],
            [b"evalsha", SHA_DEQUEUE, b"4", Q + b"pending", Q + b"paused", Q + b"active",
             Q + b"lease", b"1717171747", Q + b"t:"],
            [b"zadd", Q + b"lease", b"XX", b"1717171777", tid],
            [b"hset", task, b"result", b"ok:" + tid],
            [b"evalsha", SHA_DONE, b"5", Q + b"active", Q + b"lease", task,
             Q + b"processed:2024-05-31", Q + b"processed", tid, b"1725000000", b"9223372036854775807"],
            [b"sadd", b"asynq:queues", b"default"],
            [b"get", b"key:%012d" % i],
            [b"set", b"key:%012d" % i, b"xxx"],
            [b"ping"],
        ]
        i += 1
    return out[:n]


def encode(cmds: list[list[bytes]]) -> bytes:
    parts = []
    for args in cmds:
        parts.append(b"*%d\r\n" % len(args))
        for a in args:
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


def logged_in(gate, session_module=None):
    """A Session of `gate` logged in as the bench user, its upstream connected and the proxy's
    own setup commands (upstream AUTH, ...) answered, nothing left to write (bench/session.py
    and bench/session_ab.py use it too; the latter passes another checkout's session module)."""
    if session_module is None:
        from redisgate import session as session_module
    LOCAL, Session = session_module.LOCAL, session_module.Session
    s = Session(gate, client_info="bench")
    s.client_data(encode([[b"auth", b"bench", b"bench-password"]]))
    s.connected()
    for _ in range(16):   # (one reply at a time)
        if not s.slots or s.slots[0][0] == LOCAL:
            break
        s.upstream_data(b"+OK\r\n")
    if s.to_client[-1:] != [b"+OK\r\n"] or s.close:
        raise RuntimeError(f"could not log in as bench: {b''.join(s.to_client)[:200]!r}")
    s.to_client.clear()
    s.to_upstream.clear()
    return s


def slices(buf: bytes) -> list[bytes]:
    return [buf[i:i + SLICE] for i in range(0, len(buf), SLICE)]


def load_bench_config():
    """The compiled config of bench/redisgate.yaml (dummy ports; nothing listens)."""
    import yaml
    from redisgate import config as cfgmod

    text = (BENCH_DIR / "redisgate.yaml").read_text()
    text = text.replace("@LISTEN_PORT@", "1").replace("@REDIS_PORT@", "2")
    os.environ.setdefault("REDISGATE_BENCH_UPSTREAM_PASSWORD", "unused")
    return cfgmod.build_config(yaml.safe_load(text), base_dir=BENCH_DIR, allow_embedded=False)


# The clock of the timed passes: wall time, or with --cpu the process's CPU time (other
# processes on a loaded machine do not count then).
_clock = time.perf_counter


def timed(fn, reps: int) -> list[float]:
    fn()                                  # warm-up (caches, lazily built tables)
    times = []
    gc.disable()
    try:
        for _ in range(reps):
            t0 = _clock()
            fn()
            times.append(_clock() - t0)
    finally:
        gc.enable()
    return times


def add_cpu_option(ap: argparse.ArgumentParser) -> None:
    """--cpu: time() then counts the process's CPU time (here and in bench/session.py)."""
    ap.add_argument("--cpu", action="store_true",
                    help="time passes in process CPU time, not wall time (a loaded machine)")


def use_clock(args: argparse.Namespace) -> None:
    global _clock
    _clock = time.process_time if args.cpu else time.perf_counter


def getset_commands(n: int) -> list[list[bytes]]:
    """redis-benchmark's own SET/GET traffic, for comparison with the socket benchmarks."""
    out = []
    for i in range(n):
        key = b"key:%012d" % (i * 7919 % 100_000)
        out.append([b"SET", key, b"xxx"] if i % 2 == 0 else [b"GET", key])
    return out


def bench_paths(n: int, reps: int) -> dict:
    from redisgate.protocol.commands import TABLE
    from redisgate.protocol.resp import RequestParser
    try:
        from redisgate.protocol.commands import available
    except ImportError:                   # older contract: every command in the table is available
        def available(spec, version):
            return True

    cfg = load_bench_config()
    user = cfg.users["bench"].user
    version = (7, 0, 15)
    results: dict[str, dict] = {}

    # Every request parser redisgate.protocol.resp offers is a path: RequestParser ("drain", "next") and
    # any alternative class it may add later (e.g. a hiredis-backed one), named after the class.
    import redisgate.protocol.resp as resp
    alternatives = {name: cls for name, cls in vars(resp).items()
                    if isinstance(cls, type) and cls is not RequestParser
                    and name.endswith("RequestParser") and hasattr(cls, "drain")}
    parser_cls = [RequestParser]

    def make_parser() -> RequestParser:
        p = parser_cls[0](max_bulk=cfg.max_bulk, max_args=cfg.max_args)
        p.set_authenticated(True)
        return p

    def judge_all(reqs, counters) -> None:
        for req in reqs:
            args = req.args
            spec = TABLE.lookup(args)
            if spec is None or not available(spec, version) or not spec.check_arity(len(args)):
                counters[1] += 1
                continue
            if user.judge(spec, args, db=0) is not None:
                counters[1] += 1
            counters[0] += 1

    def measure(cmds: list[list[bytes]], suffix: str, with_next: bool) -> None:
        chunks = slices(encode(cmds))
        count = len(cmds)

        def run_drain(counters=None) -> None:
            counters = counters if counters is not None else [0, 0]
            p = make_parser()
            for c in chunks:
                p.feed(c)
                judge_all(p.drain(), counters)

        def run_next(counters=None) -> None:
            counters = counters if counters is not None else [0, 0]
            p = make_parser()
            for c in chunks:
                p.feed(c)
                while (req := p.next()) is not None:
                    judge_all((req,), counters)

        def parse_only() -> None:
            p = make_parser()
            for c in chunks:
                p.feed(c)
                p.drain()

        po = count / statistics.median(timed(parse_only, reps))
        paths = [("drain", run_drain)] + ([("next", run_next)] if with_next else [])
        for name, fn in paths:
            counters = [0, 0]
            fn(counters)
            if counters[0] != count or counters[1]:
                results[name + suffix] = {
                    "error": f"{counters[1]} of {count} commands were refused or unknown; "
                             "the policy in bench/redisgate.yaml and the judge disagree"}
                continue
            t = statistics.median(timed(fn, reps))
            results[name + suffix] = {"cmds_per_s": count / t, "seconds_per_pass": t,
                                      "parse_only_cmds_per_s": po}
        try:
            results["session" + suffix] = bench_session(cfg, cmds, chunks, reps)
        except Exception as e:  # the session contract is the core's; report, don't crash
            results["session" + suffix] = {"error": f"{type(e).__name__}: {e}"}

    cmds = asynq_commands(n)
    measure(cmds, "", with_next=True)
    measure(getset_commands(n), " (GET/SET)", with_next=False)
    c_parts = resp._c_scan, resp._c_count_flat
    if c_parts[0] is not None:            # the same without the C module (resp.py's twins)
        resp._c_scan = resp._c_count_flat = None
        try:
            measure(cmds, " [pure Python]", with_next=False)
        finally:
            resp._c_scan, resp._c_count_flat = c_parts
    for name, cls in alternatives.items():
        parser_cls[0] = cls
        try:
            measure(cmds, f" [{name}]", with_next=False)
        except Exception as e:
            results[f"drain [{name}]"] = {"error": f"{type(e).__name__}: {e}"}
        results.pop(f"session [{name}]", None)   # the session always uses RequestParser
    parser_cls[0] = RequestParser

    # Where the time goes: TABLE.lookup + User.judge alone, per kind of command in the buffer.
    kinds: dict[str, list] = {}
    for args in cmds:
        kind = args[0].decode() + (" " + args[1][:8].decode() if args[0] == b"evalsha" else "")
        kinds.setdefault(kind, []).append(args)
    breakdown = {}
    for kind, group in kinds.items():
        def one(group=group):
            for args in group:
                user.judge(TABLE.lookup(args), args, db=0)
        breakdown[kind] = round(statistics.median(timed(one, reps)) / len(group) * 1e9)
    if "cmds_per_s" in results["drain"]:
        results["drain"]["judge_ns_by_command"] = breakdown
    return results


def bench_session(cfg, cmds, chunks, reps: int) -> dict:
    from redisgate.session.gate import Gate

    n = len(cmds)
    gate = Gate(cfg, (7, 0, 15))
    reply_chunks = slices(b":1\r\n" * n)

    def run() -> None:
        s = logged_in(gate)
        for c in chunks:
            s.client_data(c)
        sent = sum(len(d) for d in s.to_upstream)
        for c in reply_chunks:
            s.upstream_data(c)
        if sent == 0 or sum(len(d) for d in s.to_client) != 4 * n:
            raise RuntimeError("the session did not forward every command or return every reply")

    run()
    t = statistics.median(timed(run, reps))
    return {"cmds_per_s": n / t, "seconds_per_pass": t}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="parse + judge commands/s, no sockets")
    ap.add_argument("--quick", action="store_true", help="a smaller buffer and fewer repetitions")
    ap.add_argument("--commands", type=int, help="commands in the buffer (default 90,000; quick 27,000)")
    add_cpu_option(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON line (for bench/run.py)")
    args = ap.parse_args(argv)
    use_clock(args)
    n = args.commands or (27_000 if args.quick else 90_000)
    reps = 5 if args.quick else 9
    out = {"commands": n, "repetitions": reps, "default_path": "session",
           "description": f"{n:,} pipelined Asynq-shaped commands fed in 16 KiB slices; median of "
                          f"{reps} passes; user `bench` from bench/redisgate.yaml.",
           "python": sys.version.split()[0], "notes": []}
    from redisgate.protocol import resp
    if resp._c_scan is None:
        out["notes"].append("redisgate._native._speedups is not built (or REDISGATE_PURE_PYTHON is set): "
                            "every path is pure Python")
    try:
        out["paths"] = bench_paths(n, reps)
    except Exception as e:
        msg = f"judge unavailable: {type(e).__name__}: {e}"
        out = {"error": msg}
    if args.json:
        print(json.dumps(out))
    elif "error" in out:
        print(out["error"])
    else:
        for name, r in out["paths"].items():
            if "error" in r:
                print(f"{name:18} unavailable: {r['error']}")
            else:
                print(f"{name:18} {r['cmds_per_s']:>12,.0f} commands/s  "
                      f"({1e9 / r['cmds_per_s']:.0f} ns/command)")
        d = out["paths"].get("drain", {})
        if d.get("parse_only_cmds_per_s"):
            print(f"{'parse only':18} {d['parse_only_cmds_per_s']:>10,.0f} commands/s")
        for kind, ns in (d.get("judge_ns_by_command") or {}).items():
            print(f"  lookup+judge {kind:<18} {ns:>7,} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
