"""The TLS record layer's CPU per request, in one process, without sockets.

What a TLS listener's connection costs per request beyond plaintext is its record layer: decrypt
the client's record, hand the plaintext on, encrypt the reply, hand the records to the transport.
Socket runs (run.py, cpu_split.py) mix that with the kernel, the event loop, Redis and
redis-benchmark's own TLS on the same two cores; this measures it alone, with
`time.process_time`, so other processes on the machine do not count:

* a real handshake (TLS 1.3, the listener's context as redisgate builds it, the bench's P-256
  certificate) between a client `ssl.SSLObject` and the server side;
* the client's records made beforehand (one record per request batch, as redis-benchmark writes
  them), then fed one by one to the server side, each followed by the reply being encrypted and
  written (into a list: no socket);
* paths: `c` (redisgate/_native/_tlsrec.c's `Record`, what redisgate-tls runs), `engine`
  (tls.TLSEngine for every record: `REDISGATE_NO_TLSREC=1`), `openssl` (the same OpenSSL calls
  as `c` made from Python's own `_ssl` in the tightest loop Python allows: a floor for Python
  callers, not for C ones); `other` (another build of `_tlsrec`, `--other FILE.so`: a change
  to _tlsrec.c measured against the build before it, in the same process).

    python bench/tls_record.py                    # every path, every workload, 7 repetitions
    python bench/tls_record.py --paths c --reps 15 --requests 40000
    python bench/tls_record.py --paths c,other --other /path/to/_tlsrec.cpython-311-x86_64-linux-gnu.so
    perf record -g python bench/tls_record.py --paths c      # where a record's time goes

Workloads: `set_p1` (one SET of a 3-byte value per record, `+OK` back), `set_p16` (16 of them
per record), `get_16k` (a GET, a 16 KiB bulk back: two records of reply). Medians of the
repetitions, interleaved, in ns per request batch (one record in, its reply out).
"""
from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from redisgate import tls as tlsmod  # noqa: E402


def _request(i: int) -> bytes:
    key = b"key:%012d" % (i % 100000)
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$3\r\nxxx\r\n" % (len(key), key)


def _get(i: int) -> bytes:
    key = b"key:%012d" % (i % 1000)
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)


WORKLOADS = {   # id: (one record of requests, from its index; the reply to it)
    "set_p1": (lambda i: _request(i), b"+OK\r\n"),
    "set_p16": (lambda i: b"".join(_request(i * 16 + k) for k in range(16)), b"+OK\r\n" * 16),
    "get_16k": (lambda i: _get(i), b"$16384\r\n" + b"x" * 16384 + b"\r\n"),
}


def make_contexts(workdir: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: the server's as redisgate's listener builds it (ListenerTLS)."""
    ca_crt, cert, key = workdir / "ca.crt", workdir / "server.crt", workdir / "server.key"
    if not cert.exists():
        import subprocess
        subprocess.run([sys.executable, "-m", "redisgate", "certs", "--out", str(workdir)], check=True, capture_output=True, cwd=REPO)
    listener = tlsmod.ListenerTLS({"cert": str(cert), "key": str(key)}, where="bench")
    client = ssl.create_default_context(cafile=str(ca_crt))
    client.check_hostname = False
    return listener.context, client


def connect(server_ctx, client_ctx):
    """A finished handshake: (client SSLObject, its outgoing BIO, server TLSEngine)."""
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    engine = tlsmod.TLSEngine(server_ctx)
    for _ in range(10):
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        engine.receive(c_out.read())
        c_in.write(engine.data_to_send())
        if engine.handshake_done:
            try:
                client.do_handshake()
            except ssl.SSLWantReadError:
                continue
            break
    assert engine.handshake_done, "no handshake"
    return client, c_out, engine


def records(client, c_out, make, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        client.write(make(i))
        out.append(c_out.read())
    return out


OTHER = None   # --other: another build's Record class


def load_other(path: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location("_tlsrec", path)   # (PyInit__tlsrec)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Record


def run_c(engine, recs, reply, Record=None) -> tuple[float, int]:
    Record = Record or tlsmod.record_layer()
    got, sent = [], []
    owner = types.SimpleNamespace(closed=False)
    rec = Record(None)
    assert engine.hand_over(rec, sent.append, owner, got.append, print, print)
    receive, write = rec.data_received, rec.write
    t0 = time.process_time_ns()
    for r in recs:
        receive(r)
        write(reply)
    return time.process_time_ns() - t0, len(got)


def run_engine(engine, recs, reply) -> tuple[float, int]:
    got, sent = [], []
    receive, send, out = engine.receive, engine.send, engine.data_to_send
    t0 = time.process_time_ns()
    for r in recs:
        plain = receive(r)
        out()
        got.append(plain)
        send(reply)
        sent.append(out())
    return time.process_time_ns() - t0, len(got)


def run_openssl(engine, recs, reply) -> tuple[float, int]:
    """_ssl's own calls, no engine: MemoryBIO.write, SSLObject.read (one, sized), write, read."""
    obj, inbio, outbio = engine._obj._sslobj, engine._in, engine._out
    got, sent = [], []
    bwrite, read, write, bread = inbio.write, obj.read, obj.write, outbio.read
    t0 = time.process_time_ns()
    for r in recs:
        bwrite(r)
        got.append(read(len(r)))
        write(reply)
        sent.append(bread())
    return time.process_time_ns() - t0, len(got)


PATHS = {"c": run_c, "engine": run_engine, "openssl": run_openssl,
         "other": lambda engine, recs, reply: run_c(engine, recs, reply, OTHER)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", default="c,engine,openssl")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--requests", type=int, default=20000, help="records per repetition")
    ap.add_argument("--other", help="another build of _tlsrec (a .so file): path `other`")
    args = ap.parse_args(argv)
    paths = args.paths.split(",")
    if "other" in paths:
        if not args.other:
            ap.error("path other needs --other FILE.so")
        global OTHER
        OTHER = load_other(args.other)
    if "c" in paths and tlsmod.record_layer() is None:
        print("c: redisgate._native._tlsrec is not built (python3 setup.py build_ext --inplace)")
        paths.remove("c")
    with tempfile.TemporaryDirectory(prefix="tls-record-") as tmp:
        server_ctx, client_ctx = make_contexts(Path(tmp))
        client, _, engine = connect(server_ctx, client_ctx)
        print(f"{engine.version} {engine.cipher}; {args.requests} records per repetition, "
              f"{args.reps} repetitions; ns per record in + reply out (median [min])")
        for wl in args.workloads.split(","):
            make, reply = WORKLOADS[wl]
            times: dict[str, list[float]] = {p: [] for p in paths}
            for rep in range(args.reps):
                for p in (paths if rep % 2 == 0 else paths[::-1]):
                    client, c_out, engine = connect(server_ctx, client_ctx)
                    recs = records(client, c_out, make, args.requests)
                    ns, n = PATHS[p](engine, recs, reply)
                    assert n == len(recs), (p, n)
                    times[p].append(ns / len(recs))
            print(f"{wl:8} " + "  ".join(f"{p} {statistics.median(t):,.0f} [{min(t):,.0f}]"
                                         for p, t in times.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
