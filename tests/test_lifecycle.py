"""Graceful lifecycle of a real `python -m redisgate serve|demo` process: SIGTERM drains, a
second SIGTERM exits at once, and the embedded Redis never outlives the proxy (even SIGKILL)."""
from __future__ import annotations

import hashlib
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import hiredis
import psutil
import pytest
import yaml

from redisgate.config import ConfigError, build_config
from servers import free_port
from test_cli import wait_port

H = "#" + hashlib.sha256(b"pw").hexdigest()


def start(*args, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "redisgate", *map(str, args)],
                            stdout=stdout, stderr=subprocess.PIPE)


def reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "redisgate.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def login(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.sendall(b"*3\r\n$4\r\nAUTH\r\n$1\r\na\r\n$2\r\npw\r\n")
    assert s.recv(100) == b"+OK\r\n"
    return s


def read_replies(s: socket.socket, reader: hiredis.Reader, replies: list, n: float) -> bool:
    """Read from `s` until `replies` holds `n` replies; False if the peer closed first."""
    while len(replies) < n:
        data = s.recv(65536)
        if not data:
            return False
        reader.feed(data)
        while (r := reader.gets()) is not False:
            replies.append(r)
    return True


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- config

@pytest.mark.parametrize("text, seconds", [("10s", 10), ("500ms", 0.5), ("5m", 300), (3, 3),
                                           ("2", 2), (0, 0), ("1.5s", 1.5)])
def test_shutdown_grace_durations(text, seconds):
    cfg = build_config({"upstream": {"address": "127.0.0.1:1"}, "users": {"a": "on nopass"},
                        "shutdown": {"grace": text}})
    assert cfg.shutdown_grace == seconds


@pytest.mark.parametrize("raw, message", [
    ({"shutdown": {"grace": "-1s"}}, "shutdown.grace: expected a duration"),
    ({"shutdown": {"grace": "10 seconds"}}, "shutdown.grace: expected a duration"),
    ({"shutdown": {"grace": True}}, "shutdown.grace: expected a duration"),
    ({"shutdown": {"graze": "1s"}}, "shutdown: expected {grace: <duration>}"),
    ({"shutdown": "10s"}, "shutdown: expected {grace: <duration>}"),
])
def test_shutdown_config_errors(raw, message):
    with pytest.raises(ConfigError) as e:
        build_config({"upstream": {"address": "127.0.0.1:1"}, "users": {"a": "on nopass"}, **raw})
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems


def test_default_grace_is_ten_seconds():
    cfg = build_config({"upstream": {"address": "127.0.0.1:1"}, "users": {"a": "on nopass"}})
    assert cfg.shutdown_grace == 10.0 and cfg.admin_listen is None


# -- SIGTERM with 50 clients pipelining

CLIENTS = 50
BATCH = 20


def _client(port: int, i: int, started: threading.Barrier, result: dict) -> None:
    """Pipelines INCR c:<i> in batches until the proxy ends the connection; keeps every reply."""
    s = login(port)
    s.settimeout(20)
    cmd = b"*2\r\n$4\r\nINCR\r\n$%d\r\nc:%d\r\n" % (len(b"c:%d" % i), i)
    reader = hiredis.Reader()
    replies, sent, error, sending = [], 0, None, True
    try:
        started.wait(10)
        while True:
            if sending:
                try:
                    s.sendall(cmd * BATCH)
                    sent += BATCH
                except OSError:
                    sending = False   # closed by the proxy: no more commands
            # a batch's replies; once sending failed, everything up to the proxy's close
            if not read_replies(s, reader, replies, len(replies) + BATCH if sending else math.inf):
                raise EOFError
    except EOFError:
        pass
    except OSError as e:   # a reset instead of a clean close
        error = repr(e)
    finally:
        s.close()
    result[i] = (replies, sent, error, reader.gets())


@pytest.mark.parametrize("multiplex", [0, 2])
def test_sigterm_drains_pipelining_clients_then_exits_0(tmp_path, redis7, multiplex):
    port = free_port()
    cfg = write(tmp_path, {"listen": f"127.0.0.1:{port}",
                           "upstream": dict(redis7.upstream, multiplex=multiplex),
                           "users": {"a": f"on {H} ~c:* +incr"}, "shutdown": {"grace": "10s"}})
    admin = redis7.admin()
    admin.delete(*[f"c:{i}" for i in range(CLIENTS)])
    proc = start("serve", "--config", cfg)
    try:
        wait_port(port, proc)
        started = threading.Barrier(CLIENTS + 1)
        result: dict = {}
        threads = [threading.Thread(target=_client, args=(port, i, started, result), daemon=True)
                   for i in range(CLIENTS)]
        for t in threads:
            t.start()
        started.wait(10)
        time.sleep(0.5)   # every client is mid-pipeline
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - t0 < 10
        for t in threads:
            t.join(15)
    finally:
        reap(proc)
    assert len(result) == CLIENTS
    for i, (replies, sent, error, leftover) in result.items():
        assert error is None, f"client {i}: {error} {len(replies)} {sent} " + "\n".join(l for l in proc.stderr.read().decode().splitlines() if "audit" not in l)[-3000:]
        assert leftover is False, f"client {i}: a partial reply"
        # Every reply is whole and in order, and every INCR that ran was answered: the replies
        # the client got are exactly the commands the upstream executed.
        assert replies == list(range(1, len(replies) + 1)), f"client {i}"
        assert int(admin.get(f"c:{i}") or 0) == len(replies), f"client {i}"
        assert 0 < len(replies) <= sent
    assert b"Traceback" not in proc.stderr.read()


def test_sigterm_waits_grace_for_a_blocked_client_and_a_second_one_exits_at_once(tmp_path, redis7):
    port = free_port()
    cfg = write(tmp_path, {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
                           "users": {"a": f"on {H} ~q:* +blpop +ping"}, "shutdown": {"grace": "30s"},
                           "pid_file": "rg.pid"})
    proc = start("serve", "--config", cfg)
    try:
        wait_port(port, proc)
        s = login(port)
        s.sendall(b"*3\r\n$5\r\nBLPOP\r\n$6\r\nq:none\r\n$1\r\n0\r\n")   # owed a reply, forever
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None   # still waiting for the BLPOP's reply (grace 30s)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), 1).close()   # no longer accepting
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 3
        s.close()
    finally:
        reap(proc)
    assert not (tmp_path / "rg.pid").exists()
    assert b"SIGTERM again: exiting at once" in proc.stderr.read()


def test_grace_bounds_the_drain_and_exit_is_0(tmp_path, redis7):
    port = free_port()
    cfg = write(tmp_path, {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
                           "users": {"a": f"on {H} ~q:* +blpop +ping"},
                           "shutdown": {"grace": "700ms"}})
    proc = start("serve", "--config", cfg)
    try:
        wait_port(port, proc)
        blocked = login(port)
        blocked.sendall(b"*3\r\n$5\r\nBLPOP\r\n$6\r\nq:none\r\n$1\r\n0\r\n")
        idle = login(port)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert 0.5 < time.monotonic() - t0 < 5
        idle.settimeout(5)
        assert idle.recv(100) == b""   # a clean close: EOF, no reset
        blocked.settimeout(5)
        try:
            assert blocked.recv(100) == b""
        except ConnectionResetError:
            pass   # (past the grace, a connection still owed a reply may be reset)
    finally:
        reap(proc)
    assert b"still waiting for replies" in proc.stderr.read()


# -- the embedded Redis never outlives the proxy

def _embedded_child(proc: subprocess.Popen, timeout: float = 15) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children():
            if "redis-server" in " ".join(child.cmdline()):
                return child
        time.sleep(0.05)
    raise AssertionError("no embedded redis-server child")


@pytest.mark.parametrize("verb", ["serve", "demo"])
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_embedded_redis_stops_with_the_proxy(tmp_path, verb, how):
    port = free_port()
    if verb == "serve":
        cfg = write(tmp_path, {"listen": f"127.0.0.1:{port}", "users": {"a": f"on {H} +ping"}})
        proc = start("serve", "--config", cfg)
    else:
        proc = start("demo", "--port", port, "--dir", tmp_path)
    try:
        wait_port(port, proc)
        child = _embedded_child(proc)
        proc.send_signal(how)
        proc.wait(15)
        deadline = time.monotonic() + 5
        while not gone(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child.pid), f"redis-server {child.pid} outlived the proxy ({how.name})"
        if how == signal.SIGTERM:
            assert proc.returncode == 0
    finally:
        reap(proc)


def test_sigterm_drains_a_tls_client(tmp_path, redis7):
    """On a TLS listener the drain ends with TLS's close_notify: the client still gets every
    reply to what the proxy had read."""
    import ssl
    subprocess.run([sys.executable, "-m", "redisgate", "certs", "--out", str(tmp_path / "pki")],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    cfg = write(tmp_path, {"listen": [{"address": f"127.0.0.1:{port}",
                                       "tls": {"cert": "pki/server.crt", "key": "pki/server.key"}}],
                           "upstream": redis7.upstream, "users": {"a": f"on {H} ~t:* +incr"}})
    redis7.admin().delete("t:1")
    proc = start("serve", "--config", cfg)
    try:
        wait_port(port, proc)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), 5), server_hostname="localhost")
        s.sendall(b"*3\r\n$4\r\nAUTH\r\n$1\r\na\r\n$2\r\npw\r\n")
        reader = hiredis.Reader()
        replies: list = []
        assert read_replies(s, reader, replies, 1) and replies == [b"OK"]
        s.sendall(b"*2\r\n$4\r\nINCR\r\n$3\r\nt:1\r\n" * 2000)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        read_replies(s, reader, replies, math.inf)   # to the clean end
        s.close()
        assert proc.wait(15) == 0
    finally:
        reap(proc)
    got = replies[1:]
    assert got == list(range(1, len(got) + 1)) and got
    assert int(redis7.admin().get("t:1")) == len(got)
