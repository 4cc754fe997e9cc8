"""Command line: serve, demo, check, hash-password, acl export, certs, learn, reload.

Exit codes: 0 success, 1 a problem with the input (config errors, bad secret), 2 usage errors.
Every message names what is wrong and where; secrets are never printed (except the demo's own,
freshly generated passwords, which exist to be typed in).
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import yaml

from .io import pidfile, workers
from .telemetry.audit import AuditError
from .config import (ConfigError, Listener, hash_password, load_config, parse_address,
                     strip_newlines, tokenize_rules, write_private)
from .io.embedded import EmbeddedRedis
from .io.workers import parse_count

# Imported where a verb needs them, not here: `server` (the proxy stack: uvloop, the session, the
# C modules), `tls` and `certs` (cryptography). `check`, `hash-password` and `--help` stay light.

log = logging.getLogger("redisgate")


def _setup_logging(level: str = "info", tag: str = "") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")


def _load(path: str):
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"{path}: {len(e.problems)} problem(s):", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(1) from None


def _refused(args, *problems) -> int:
    """Each problem on stderr as `<config file>: <problem>`; the exit status 1."""
    for problem in problems:
        print(f"{args.config}: {problem}", file=sys.stderr)
    return 1


def _with_embedded_upstream(config):
    """No upstream configured: start a private redis-server and point the proxy at it."""
    if not config.upstream.embedded:
        return None
    emb = EmbeddedRedis().start()
    up = config.upstream
    up.host, up.port, up.password, up.username = "127.0.0.1", emb.port, emb.password, None
    log.info("no upstream configured: started an embedded redis-server on 127.0.0.1:%d", emb.port)
    return emb


def cmd_serve(args) -> int:
    config = _load(args.config)
    if args.listen:
        problems: list[str] = []
        addr = parse_address(args.listen, "--listen", problems)
        if problems:
            print(problems[0], file=sys.stderr)
            return 2
        config.listeners = [Listener(addr[0], addr[1])]
    if args.worker_fd is not None:
        return _serve_worker(args, config)
    _setup_logging(config.log_level)
    for w in config.warnings:
        log.warning("%s", w)
    if args.learn_user:
        entry = config.users.get(args.learn_user)
        if entry is None:
            print(f"--user: no user {args.learn_user!r} in {args.config}", file=sys.stderr)
            return 1
        entry.learn = True
    from .tls import TLSConfigError   # (deferred: cryptography)
    if config.pid_file:         # checked here, before anything starts, and again when written
        try:
            current = pidfile.owner(config.pid_file)
        except pidfile.PidFileError:
            current = None          # not a pid: replaced when written
        if current is not None and current.live:
            print(f"{args.config}: pid file {config.pid_file}: redisgate (pid {current.pid}) is "
                  "running; stop it first or use another pid_file", file=sys.stderr)
            return 1
    count = workers.resolve_count(args.workers)
    if count > 1:
        return _serve_workers(args, config, count)
    emb = _with_embedded_upstream(config)
    from .io.server import run   # (deferred: the proxy stack)
    holder = {}
    try:
        run(config, ready=lambda proxy: holder.setdefault("proxy", proxy))
    except TLSConfigError as e:     # an unreadable or invalid certificate, key or CA
        return _refused(args, *e.problems)
    except pidfile.PidFileError as e:
        return _refused(args, e)
    except AuditError as e:         # audit.path cannot be opened
        return _refused(args, e)
    except OSError as e:
        log.error("cannot listen: %s", e)
        return 1
    finally:
        if emb:
            emb.stop()
        if args.learn_user and "proxy" in holder:
            _write_learned(holder["proxy"], args.learn_user, args.out)
    return 0


def _serve_workers(args, config, count: int) -> int:
    """`serve --workers N`, N > 1: check once here, then supervise N workers (workers.py)."""
    from .io.server import Proxy   # (deferred: the proxy stack)
    try:
        Proxy(config)   # the TLS contexts: an unreadable certificate is reported once, here
    except (ValueError, OSError) as e:
        return _refused(args, *(getattr(e, "problems", None) or [str(e)]))
    problems = workers.check_listeners(config)
    if problems:
        return _refused(args, *problems)
    from .telemetry import audit
    try:            # (the parent writes its own events there: worker-restart, worker-gave-up)
        audit.configure(config.audit)
    except audit.AuditError as e:
        return _refused(args, e)
    try:
        emb = _with_embedded_upstream(config)   # once, for every worker
    except RuntimeError as e:
        return _refused(args, f"upstream: {e}")
    upstream = None
    if emb is not None:
        upstream = {"host": "127.0.0.1", "port": emb.port, "password": emb.password.decode()}
    log.info("starting %d workers (SO_REUSEPORT on every listener)", count)
    try:
        return workers.supervise(config, workers.worker_argv(args), count, upstream)
    except pidfile.PidFileError as e:
        return _refused(args, e)
    except OSError as e:
        log.error("admin endpoint: cannot listen: %s", e)
        return 1
    finally:
        if emb:
            emb.stop()


def _serve_worker(args, config) -> int:
    """One worker of `serve --workers N` (started by the parent, never by hand)."""
    from .tls import TLSConfigError   # (deferred: cryptography)
    index = args.worker_index or 0
    _setup_logging(config.log_level, tag=f"[worker {index}]")
    try:
        channel = workers.WorkerChannel(args.worker_fd, index)
        hello = channel.read_hello()
    except (OSError, ValueError) as e:
        print(f"--worker-fd: not a redisgate supervisor's control socket ({e})", file=sys.stderr)
        return 2
    from .telemetry import audit
    audit.share_rate(hello.get("workers", 1))   # (audit.rate is the whole group's)
    if config.upstream.embedded:
        up, given = config.upstream, hello.get("upstream")
        if not given:
            return _refused(args, "upstream: required")
        up.host, up.port, up.username = given["host"], given["port"], None
        up.password = given["password"].encode()
    # The parent keeps the pid file and the admin listener.
    config.pid_file = None
    config.admin_listen = None
    from .io.server import run   # (deferred: the proxy stack)
    try:
        run(config, worker=channel)
    except TLSConfigError as e:
        return _refused(args, *e.problems)
    except OSError as e:
        log.error("cannot listen: %s", e)
        return 1
    return 0


def _write_learned(proxy, name: str, out: str) -> None:
    """Write the rules `name` needed as a config `users:` entry, with the user's own `on` and
    password hashes (hashes only), and what was learned as comments for a human."""
    learner = proxy.gate.learners.get(name)
    if learner is None:
        log.warning("learn: user %s sent no commands; nothing written", name)
        return
    entry = proxy.gate.users.get(name)
    learned = learner.profile()
    creds = []
    if entry is not None:
        creds = [t for t in tokenize_rules(entry.user.to_acl_rules())
                 if t.startswith("#") or t in ("on", "nopass")]
    user = {"rules": " ".join(creds + [learned["rules"]]).strip()}
    if learned["scripts"]:
        user["scripts"] = learned["scripts"]
    summary = yaml.safe_dump(learner.summary(), sort_keys=False).rstrip().splitlines()
    text = (f"# Learned by `redisgate learn` from {learner.observed} commands of user {name}.\n"
            "# What was seen:\n" + "".join(f"#   {line}\n" for line in summary) +
            yaml.safe_dump({"users": {name: user}}, sort_keys=False))
    try:
        write_private(out, text.encode())       # 0600: it holds password hashes
    except OSError as e:
        log.error("learn: cannot write %s: %s", out, e.strerror)
        return
    log.info("learn: wrote the rules %s needed to %s", name, out)


def cmd_learn(args) -> int:
    args.learn_user = args.user
    args.listen = None
    args.workers, args.worker_fd, args.worker_index = 1, None, None
    return cmd_serve(args)


def cmd_check(args) -> int:
    config = _load(args.config)
    for w in config.warnings:
        print(f"warning: {w}", file=sys.stderr)
    listeners = ", ".join(f"{lst.host}:{lst.port}{' (TLS)' if lst.tls is not None else ''}"
                          for lst in config.listeners)
    upstream = "embedded redis-server" if config.upstream.embedded else config.upstream.address
    if config.upstream.cluster is not None:
        upstream = "Redis Cluster, seeds " + ", ".join(
            f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in config.upstream.cluster.seeds)
    if config.upstream.tls is not None:
        upstream += " (TLS)"
    try:
        from .io.server import Proxy   # (deferred: the proxy stack)
        proxy = Proxy(config)   # builds the TLS contexts: unreadable certificates are found here
        for w in proxy.tls_warnings():
            print(f"warning: {w}", file=sys.stderr)
    except (ValueError, OSError) as e:
        return _refused(args, *(getattr(e, "problems", None) or [str(e)]))
    print(f"{args.config}: OK ({len(config.users)} users; listen {listeners}; upstream {upstream})")
    return 0


def cmd_hash_password(args) -> int:
    # All trailing CR/LF go, exactly as ${file:...} strips them: one secret file, one hash.
    data = strip_newlines(sys.stdin.buffer.read(MAX_SECRET + 1))
    if len(data) > MAX_SECRET:
        print(f"hash-password: the secret is longer than {MAX_SECRET} bytes", file=sys.stderr)
        return 1
    if not data:
        print("hash-password: empty secret on standard input", file=sys.stderr)
        return 1
    print(hash_password(data))
    return 0


MAX_SECRET = 64 * 1024
_PASSWORD_TOKENS = ("#", ">", "<", "!")
_PASSWORD_WORDS = {"on", "off", "nopass", "resetpass", "reset"}


def _selectors(user) -> list[str]:
    """The user's permissions as selectors: its root rules as one, then its own selectors
    (Redis does not nest selectors). Passwords and on/off are left out."""
    root, extra = [], []
    for t in tokenize_rules(user.to_acl_rules()):
        if t.startswith("("):
            extra.append(t)
        elif not t.startswith(_PASSWORD_TOKENS) and t not in _PASSWORD_WORDS:
            root.append(t)
    return [f"({' '.join(root)})"] + extra


def cmd_acl_export(args) -> int:
    config = _load(args.config)
    out = []
    for name, entry in sorted(config.users.items()):
        rules = entry.user.to_acl_rules()
        if getattr(entry.user, "scripts", None) is not None:
            out.append(f"# {name}: its script allowlist is enforced by redisgate only "
                       "(Redis ACLs cannot pin scripts)")
        if entry.certificate:
            out.append(f"# {name}: certificate-bound in redisgate ({entry.certificate})")
            if entry.user.nopass:
                # nopass means "the certificate is enough" at the proxy; Redis has no
                # certificate check, so there it would mean "anyone". No usable password instead.
                out.append(f"# {name}: nopass is replaced by resetpass: Redis cannot check the "
                           "certificate, so this user gets no usable password at Redis (connect "
                           "through redisgate)")
                rules = " ".join("resetpass" if t == "nopass" else t
                                 for t in tokenize_rules(rules))
        out.append(f"user {name} {rules}" if args.aclfile else f"ACL SETUSER {name} {rules}")
    if args.upstream_user:
        # Selectors are alternatives, so one selector per user gives exactly the union of their
        # permissions: the least the proxy's own identity needs (Redis 7+).
        selectors = " ".join(sel for _, e in sorted(config.users.items()) if e.user.enabled
                             for sel in _selectors(e.user))
        out.append(f"# the proxy's upstream identity: set its password with ACL SETUSER "
                   f"{args.upstream_user} >... (never stored here)")
        line = f"{args.upstream_user} on resetkeys resetchannels nocommands {selectors}"
        out.append(f"user {line}" if args.aclfile else f"ACL SETUSER {line}")
    print("\n".join(out))
    return 0


def cmd_reload(args) -> int:
    pid_file = args.pid_file
    if pid_file is None:
        config = _load(args.config)
        pid_file = config.pid_file
        if pid_file is None:
            print(f"{args.config}: no pid_file is configured; give --pid-file or send SIGHUP "
                  "to the redisgate process yourself", file=sys.stderr)
            return 1
    try:
        current = pidfile.owner(pid_file)
    except pidfile.PidFileError as e:
        print(f"reload: {e}", file=sys.stderr)
        return 1
    pid = current.pid
    if pid is None:
        print(f"reload: pid file {pid_file} does not exist; is redisgate running?", file=sys.stderr)
        return 1
    if not current.live:
        # A stale pid file (the proxy was killed): the number may now be another process's.
        print(f"reload: pid {pid} in {pid_file} is not a running redisgate (stale pid file); "
              "nothing signalled", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"reload: cannot signal redisgate (pid {pid}): {e.strerror}", file=sys.stderr)
        return 1
    print(f"reload: sent SIGHUP to redisgate (pid {pid})")
    return 0


DEMO_USERS = {
    "producer": {"profile": "asynq-producer"},
    "worker": {"profile": "asynq-worker"},
    "inspector": {"profile": "asynq-inspector"},
    # Everything but @dangerous (CONFIG would hand out the upstream password, DEBUG, MIGRATE,
    # REPLICAOF, ... reach past the proxy), plus the few dangerous commands an operator wants.
    "admin": {"rules": "allkeys allchannels +@all -@dangerous +flushdb +flushall +keys +info"},
}


def cmd_demo(args) -> int:
    _setup_logging("info")
    try:
        emb = EmbeddedRedis().start()
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    workdir = Path(args.dir or Path.home() / ".cache" / "redisgate" / "demo")
    workdir.mkdir(parents=True, exist_ok=True)
    passwords = {name: secrets.token_urlsafe(12) for name in DEMO_USERS}
    users = {}
    for name, spec in DEMO_USERS.items():
        spec = dict(spec)
        spec["rules"] = f"on {hash_password(passwords[name].encode())} {spec.get('rules', '')}".strip()
        users[name] = spec
    secret_file = workdir / "upstream-password"
    cfg_path = workdir / "redisgate.yaml"
    try:
        # 0600, replacing (never following) whatever is there, even a planted symlink.
        write_private(secret_file, emb.password)
    except OSError as e:
        emb.stop()
        print(f"demo: cannot write {secret_file}: {e.strerror}", file=sys.stderr)
        return 1
    cfg = {"listen": f"127.0.0.1:{args.port}",
           "upstream": {"address": f"127.0.0.1:{emb.port}", "password": f"${{file:{secret_file}}}"},
           "users": users}
    try:
        write_private(cfg_path, yaml.safe_dump(cfg, sort_keys=False).encode())
    except OSError as e:
        emb.stop()
        print(f"demo: cannot write {cfg_path}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        config = load_config(cfg_path)
    except ConfigError as e:
        emb.stop()
        print("demo: the generated config is invalid:\n  " + "\n  ".join(e.problems), file=sys.stderr)
        return 1
    print(f"redisgate demo: proxy on 127.0.0.1:{args.port} -> embedded redis-server "
          f"127.0.0.1:{emb.port}\nconfig: {cfg_path}\n\nUsers (passwords are new each run):")
    for name in DEMO_USERS:
        print(f"  {name:10s} {passwords[name]}")
    print(f"\nTry:\n  redis-cli -p {args.port} --user producer --pass {passwords['producer']} PING\n"
          f"  redis-cli -p {args.port} --user producer --pass {passwords['producer']} FLUSHALL"
          "   # refused\n\nCtrl-C stops the proxy and the embedded Redis.\n", flush=True)
    from .io.server import run   # (deferred: the proxy stack)
    try:
        run(config)
    except OSError as e:
        log.error("cannot listen on 127.0.0.1:%d: %s", args.port, e)
        return 1
    finally:
        emb.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="redisgate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)

    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("--config", "-c", required=True)
    s.add_argument("--listen", help="override the listen address (plain TCP)")
    s.add_argument("--workers", type=parse_count, default=1, metavar="N",
                   help="worker processes sharing every listener (SO_REUSEPORT) under a "
                        "supervising parent; 0: one per CPU (default 1: one process)")
    # (internal: how the parent of --workers starts each worker)
    s.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    s.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve, learn_user=None, out=None)

    d = sub.add_parser("demo", help="start an embedded Redis and the proxy with sample users")
    d.add_argument("--port", type=int, default=6380)
    d.add_argument("--dir", help="where to write the demo config (default ~/.cache/redisgate/demo)")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("check", help="validate a config file and print every problem")
    c.add_argument("--config", "-c", required=True)
    c.set_defaults(func=cmd_check)

    h = sub.add_parser("hash-password", help="read a secret on stdin, print its #<sha256> rule")
    h.set_defaults(func=cmd_hash_password)

    a = sub.add_parser("acl", help="Redis ACL interop")
    asub = a.add_subparsers(dest="acl_verb", required=True)
    ae = asub.add_parser("export", help="print the policy as ACL SETUSER lines (or an aclfile)")
    ae.add_argument("--config", "-c", required=True)
    ae.add_argument("--aclfile", action="store_true", help="aclfile format (user <name> <rules>)")
    ae.add_argument("--upstream-user", metavar="NAME",
                    help="also print a user with the union of all users' permissions, for the "
                         "proxy's own upstream identity")
    ae.set_defaults(func=cmd_acl_export)

    sub.add_parser("certs", help="create a development CA and certificates (see certs --help)",
                   add_help=False).set_defaults(func=None)

    ln = sub.add_parser("learn", help="proxy while recording what one user needs; write a profile")
    ln.add_argument("--config", "-c", required=True)
    ln.add_argument("--user", required=True)
    ln.add_argument("--out", required=True)
    ln.set_defaults(func=cmd_learn)

    r = sub.add_parser("reload", help="make a running redisgate re-read its config and certificates")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", "-c")
    g.add_argument("--pid-file")
    r.set_defaults(func=cmd_reload)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "certs":
        # certs has its own argument parser (certs.main); the entry above is only for --help.
        from . import certs   # (deferred: cryptography)
        return certs.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 0
