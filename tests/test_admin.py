"""The admin HTTP endpoint of a real `python -m redisgate serve`: /metrics, /healthz, /readyz."""
from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from redisgate.config import ConfigError, build_config
from servers import RedisServer, free_port, redis_binary
from test_lifecycle import login, reap, wait_port, write

H = "#" + hashlib.sha256(b"pw").hexdigest()


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_status(port: int, path: str, status: int, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = get(port, path)
            if last[0] == status:
                return last[1]
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{path} never answered {status}: {last}")


def serve(tmp_path, raw):
    cfg = write(tmp_path, raw)
    return subprocess.Popen([sys.executable, "-m", "redisgate", "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# -- config

def test_admin_listen_and_the_older_metrics_address_are_one_listener():
    base = {"upstream": {"address": "127.0.0.1:1"}, "users": {"a": "on nopass"}}
    assert build_config({**base, "admin": {"listen": "127.0.0.1:9121"}}).admin_listen == ("127.0.0.1", 9121)
    assert build_config({**base, "metrics": {"address": "127.0.0.1:9122"}}).admin_listen == ("127.0.0.1", 9122)
    both = {"admin": {"listen": ":9123"}, "metrics": {"address": "127.0.0.1:9123"}}
    assert build_config({**base, **both}).admin_listen == ("127.0.0.1", 9123)
    for raw, message in [({"admin": {"listen": "127.0.0.1:1", "metrics": {"address": "127.0.0.1:2"}}},
                          "admin: expected {listen: host:port}"),
                         ({"admin": {"listen": "nope"}}, "admin.listen: expected 'host:port'"),
                         ({"admin": {"listen": "127.0.0.1:1"}, "metrics": {"address": "127.0.0.1:2"}},
                          "admin.listen: metrics.address names the same")]:
        with pytest.raises(ConfigError) as e:
            build_config({**base, **raw})
        assert any(p.startswith(message) for p in e.value.problems), e.value.problems


# -- endpoints

def test_healthz_readyz_metrics_and_readyz_during_shutdown(tmp_path, redis7):
    port, admin = free_port(), free_port()
    proc = serve(tmp_path, {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
                            "users": {"a": f"on {H} ~q:* +blpop +ping"},
                            "admin": {"listen": f"127.0.0.1:{admin}"}, "shutdown": {"grace": "20s"}})
    try:
        wait_port(port, proc)
        assert wait_status(admin, "/healthz", 200) == "ok\n"
        assert wait_status(admin, "/readyz", 200) == "ready\n"
        s = login(port)
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert s.recv(100) == b"+PONG\r\n"
        status, text = get(admin, "/metrics")
        assert status == 200 and "redisgate_connections_total" in text
        assert "# TYPE redisgate_connections_active gauge" in text
        assert get(admin, "/nope")[0] == 404
        assert get(admin, "/readyz", "POST")[0] == 405
        # Shutdown begins (a client blocked in BLPOP keeps the drain going): not ready, alive.
        s.sendall(b"*3\r\n$5\r\nBLPOP\r\n$6\r\nq:none\r\n$1\r\n0\r\n")
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert wait_status(admin, "/readyz", 503, timeout=5) == "shutting down\n"
        assert get(admin, "/healthz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        s.close()
    finally:
        reap(proc)


def test_readyz_follows_the_upstream_and_never_shows_its_password(tmp_path):
    if redis_binary("7") is None:
        pytest.skip("redis-server 7 is not installed")
    upstream = RedisServer("7", password="s3cret-upstream").start()
    port, admin = free_port(), free_port()
    try:
        proc = serve(tmp_path, {"listen": f"127.0.0.1:{port}",
                                "upstream": {"address": f"127.0.0.1:{upstream.port}",
                                             "password": "s3cret-upstream", "connect_timeout": 1},
                                "users": {"a": f"on {H} +ping"}, "metrics": {"address": f"127.0.0.1:{admin}"}})
        try:
            wait_port(port, proc)
            assert wait_status(admin, "/readyz", 200) == "ready\n"
            # requirepass changes under the proxy: AUTH fails, so PING is not answered.
            upstream.client().config_set("requirepass", "another-one")
            upstream.password = "another-one"
            reason = wait_status(admin, "/readyz", 503, timeout=15)
            assert reason.startswith(f"upstream 127.0.0.1:{upstream.port}: answered -") and "\n" == reason[-1]
            assert reason.count("\n") == 1
            assert "s3cret" not in reason and "another-one" not in reason
            upstream.client().config_set("requirepass", "s3cret-upstream")
            upstream.password = "s3cret-upstream"
            assert wait_status(admin, "/readyz", 200) == "ready\n"
            upstream.stop()
            reason = wait_status(admin, "/readyz", 503, timeout=15)
            assert reason.startswith(f"upstream 127.0.0.1:{upstream.port}: ")
            assert get(admin, "/healthz")[0] == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            reap(proc)
        assert b"s3cret" not in proc.stderr.read()
    finally:
        upstream.stop()


def test_admin_port_taken_is_a_clear_error(tmp_path, redis7):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        proc = serve(tmp_path, {"listen": f"127.0.0.1:{free_port()}", "upstream": redis7.upstream,
                                "users": {"a": f"on {H} +ping"},
                                "admin": {"listen": f"127.0.0.1:{busy.getsockname()[1]}"}})
        assert proc.wait(15) == 1
        assert b"cannot listen" in proc.stderr.read()
    finally:
        busy.close()
