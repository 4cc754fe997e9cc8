"""The command line as a user runs it: python -m redisgate <verb> ..., real processes."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis
import yaml

from redisgate.protocol import resp
from proxy import stop_serve
from servers import free_port, redis_cli

H = "#" + hashlib.sha256(b"pw").hexdigest()


def rg(*args, input=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "redisgate", *args], input=input,
                          capture_output=True, timeout=timeout)


def start(*args) -> subprocess.Popen:
    """`python -m redisgate <args>` in the background; stop() it."""
    return subprocess.Popen([sys.executable, "-m", "redisgate", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited: {proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("port never opened")


def stop(proc: subprocess.Popen) -> None:
    stop_serve(proc, signal.SIGINT)       # Ctrl-C


@contextlib.contextmanager
def serving(*args, port: int) -> Iterator[subprocess.Popen]:
    """start(*args), wait until `port` listens, stop() it when the block ends (its stdout and
    stderr stay readable after)."""
    proc = start(*args)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        stop(proc)


def demo_password(proc: subprocess.Popen, user: str) -> str:
    """The password `redisgate demo` printed for `user` (its banner read up to "Ctrl-C")."""
    text = b""
    while b"Ctrl-C" not in text:
        text += os.read(proc.stdout.fileno(), 4096)
    return re.search(rb"^  %s +(\S+)$" % user.encode(), text, re.M).group(1).decode()


def cli(port: int, user: str, password: str, *command: str) -> str:
    """redis-cli's output for one command through the proxy, logged in as `user`."""
    return subprocess.run([redis_cli(), "-p", str(port), "--user", user, "--pass", password,
                           "--no-auth-warning", *command], capture_output=True, text=True,
                          timeout=10).stdout


def write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "redisgate.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_hash_password_reads_stdin():
    out = rg("hash-password", input=b"s3cret\n")
    assert out.returncode == 0
    assert out.stdout.decode().strip() == "#" + hashlib.sha256(b"s3cret").hexdigest()


def test_hash_password_refuses_empty_input():
    out = rg("hash-password", input=b"")
    assert out.returncode == 1 and b"empty secret" in out.stderr


def test_check_accepts_the_sample_config():
    out = rg("check", "--config", "config/redisgate.yaml")
    assert out.returncode == 0, out.stderr
    assert b"OK (6 users" in out.stdout


def test_check_lists_every_problem_and_exits_nonzero(tmp_path):
    cfg = write(tmp_path, {"upstream": {"address": "127.0.0.1:6379"},
                           "users": {"w": "on >plain ~a:* +get", "x": "on #zz +nosuch"}})
    out = rg("check", "--config", str(cfg))
    assert out.returncode == 1
    err = out.stderr.decode()
    assert "users.w.rules: a literal password" in err
    assert "users.x.rules:" in err
    assert "plain" not in err.replace("plaintext", "")


def test_unknown_verb_is_a_usage_error():
    out = rg("frobnicate")
    assert out.returncode == 2


def test_acl_export_lines_are_accepted_by_redis_7(tmp_path, redis7):
    cfg = write(tmp_path, {"upstream": {"address": "127.0.0.1:6379"}, "users": {
        "cache": f"on {H} ~cache:* %R~ro:* &news.* +@read +set -keys (+hset ~h:*)",
        "worker": {"rules": f"on {H}", "profile": "asynq-worker"}}})
    out = rg("acl", "export", "--config", str(cfg), "--upstream-user", "gate-union")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.decode().splitlines() if ln.startswith("ACL SETUSER")]
    assert len(lines) == 3
    admin = redis7.admin()
    for line in lines:
        from redisgate.config import tokenize_rules
        tokens = tokenize_rules(line)[2:]
        name = tokens[0]
        assert admin.execute_command("ACL", "SETUSER", f"export-{name}", *tokens[1:]) == b"OK"
    dry = lambda u, *c: admin.execute_command("ACL", "DRYRUN", f"export-{u}", *c)
    assert dry("cache", "GET", "cache:1") == b"OK"
    assert dry("cache", "SET", "ro:1", "x") != b"OK"
    assert dry("gate-union", "GET", "cache:1") == b"OK"            # the union covers each user
    assert dry("gate-union", "FLUSHALL") != b"OK"
    for name in ("cache", "worker", "gate-union"):
        admin.execute_command("ACL", "DELUSER", f"export-{name}")


def test_serve_proxies_to_the_configured_upstream_and_reloads(tmp_path, redis7):
    port = free_port()
    raw = {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
           "users": {"a": f"on {H} ~k:* +get +set +ping"}, "pid_file": "rg.pid"}
    cfg = write(tmp_path, raw)
    with serving("serve", "--config", cfg, port=port) as proc:
        assert cli(port, "a", "pw", "PING").strip() == "PONG"
        c = redis.Redis(port=port, username="a", password="pw", protocol=2)
        assert c.ping()
        # Add a user and remove `a`; reload through the pid file.
        raw["users"] = {"b": f"on {H} ~k:* +ping"}
        write(tmp_path, raw)
        r = rg("reload", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while True:
            try:
                assert redis.Redis(port=port, username="b", password="pw", protocol=2).ping()
                break
            except redis.exceptions.AuthenticationError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with pytest.raises(redis.exceptions.ConnectionError):
            c.ping()     # `a` was removed: its connection is closed
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, username="a", password="pw", protocol=2).ping()
    assert not (tmp_path / "rg.pid").exists()
    if resp._c_scan is not None:   # built here: the C parser is the one in use, no warning
        assert b"pure Python" not in proc.stderr.read()


def test_serve_without_the_c_module_warns_and_proxies_in_pure_python(tmp_path, redis7):
    # REDISGATE_PURE_PYTHON=1 is what a machine without a C compiler runs: same behaviour.
    port = free_port()
    cfg = write(tmp_path, {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
                           "users": {"a": f"on {H} ~k:* +get +set +ping"}})
    proc = subprocess.Popen([sys.executable, "-m", "redisgate", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, REDISGATE_PURE_PYTHON="1"))
    try:
        wait_port(port, proc)
        c = redis.Redis(port=port, username="a", password="pw", protocol=2)
        pipe = c.pipeline(transaction=False)
        for i in range(200):
            pipe.set(f"k:{i}", i)
            pipe.get(f"k:{i}")
        assert pipe.execute() == [True, b"0"] + [x for i in range(1, 200) for x in (True, b"%d" % i)]
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.get("other")
    finally:
        stop(proc)
    assert b"runs as pure Python" in proc.stderr.read()


def test_reload_with_a_broken_config_keeps_the_running_one(tmp_path, redis7):
    port = free_port()
    raw = {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
           "users": {"a": f"on {H} +ping"}, "pid_file": "rg.pid"}
    cfg = write(tmp_path, raw)
    with serving("serve", "--config", cfg, port=port) as proc:
        cfg.write_text("users: [broken")
        assert rg("reload", "--pid-file", str(tmp_path / "rg.pid")).returncode == 0
        time.sleep(0.5)
        assert redis.Redis(port=port, username="a", password="pw", protocol=2).ping()
    assert b"reload rejected" in proc.stderr.read()


def test_serve_without_upstream_starts_the_embedded_redis(tmp_path):
    port = free_port()
    cfg = write(tmp_path, {"listen": f"127.0.0.1:{port}", "users": {"a": f"on {H} ~k:* +set +get"}})
    with serving("serve", "--config", cfg, port=port) as proc:
        c = redis.Redis(port=port, username="a", password="pw", protocol=2)
        assert c.set("k:1", "v") and c.get("k:1") == b"v"
    assert b"embedded redis-server" in proc.stderr.read()


def test_demo_prints_working_credentials(tmp_path):
    port = free_port()
    with serving("demo", "--port", port, "--dir", tmp_path, port=port) as proc:
        pw = demo_password(proc, "producer")
        assert cli(port, "producer", pw, "PING").strip() == "PONG"
        assert "NOPERM" in cli(port, "producer", pw, "FLUSHALL")
    # The config keeps hashes and a secret-file reference, never a password.
    config_text = (tmp_path / "redisgate.yaml").read_text()
    assert pw not in config_text


def _learn_traffic(c: redis.Redis) -> None:
    assert c.ping()
    c.set("app:{default}:t:123", "v")
    assert c.get("app:{default}:t:123") == b"v"
    c.hset("asynq:{default}:t:abc", "f", "v")
    c.publish("asynq:cancel", "abc")
    assert c.eval("return redis.call('LLEN', KEYS[1])", 1, "asynq:{default}:pending") == 0


def test_learn_writes_rules_that_let_the_same_workload_pass_and_nothing_else(tmp_path, redis7):
    port = free_port()
    raw = {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
           "users": {"w": {"rules": f"on {H}"}}}       # no permissions: learn forwards anyway
    cfg = write(tmp_path, raw)
    out = tmp_path / "learned.yaml"
    proc = start("learn", "--config", cfg, "--user", "w", "--out", out)
    try:
        wait_port(port, proc)
        _learn_traffic(redis.Redis(port=port, username="w", password="pw", protocol=2))
    finally:
        stop(proc)
    learned = yaml.safe_load(out.read_text())
    assert learned["users"]["w"]["rules"].startswith(f"on {H}")

    port2 = free_port()
    cfg2 = tmp_path / "enforced.yaml"
    cfg2.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{port2}", "upstream": redis7.upstream,
                                    "users": learned["users"]}))
    proc = start("serve", "--config", cfg2)
    try:
        wait_port(port2, proc)
        c = redis.Redis(port=port2, username="w", password="pw", protocol=2)
        _learn_traffic(c)
        c.set("app:{default}:t:456", "other id, same shape")
        for refused in (lambda: c.flushall(), lambda: c.get("other"),
                        lambda: c.hset("asynq:{other}:t:1", "f", "v"),
                        lambda: c.publish("elsewhere", "x"),
                        lambda: c.eval("return 2", 0)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
    finally:
        stop(proc)


def test_metrics_endpoint_counts_denials_and_auth_failures(tmp_path, redis7):
    import urllib.request
    port, mport = free_port(), free_port()
    cfg = write(tmp_path, {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
                           "users": {"a": f"on {H} ~k:* +get"},
                           "metrics": {"address": f"127.0.0.1:{mport}"}})
    proc = start("serve", "--config", cfg)
    try:
        wait_port(port, proc)
        c = redis.Redis(port=port, username="a", password="pw", protocol=2)
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.get("other")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, username="a", password="bad", protocol=2).ping()
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    finally:
        stop(proc)
    assert 'redisgate_commands_denied_total{kind="key",mode="denied",user="a"} 1.0' in text
    # redis-py retries a failed connection, so there is at least one failure, maybe more.
    failures = re.search(r'redisgate_auth_failures_total\{reason="wrong-password",user="a"\} (\S+)',
                         text)
    assert failures and float(failures.group(1)) >= 1
    assert "redisgate_connections_active" in text
