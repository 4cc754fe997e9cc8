"""embedded.py: the embedded upstream and the one Redis launcher, with real processes only."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from redisgate.io.embedded import (EmbeddedRedis, redis_binary, redis_server_binary,
                                   start_redis_server, stop_process)

from servers import free_port
from wire import Wire


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_embedded_redis_is_private_and_persists_nothing():
    emb = EmbeddedRedis().start()
    try:
        pid = emb.proc.pid
        # The password is in a 0600 file, never on the command line.
        conf = os.path.join(emb.dir, "redis.conf")
        assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
        assert emb.password not in open(f"/proc/{pid}/cmdline", "rb").read()
        w = Wire(emb.port)
        try:
            assert str(w.call("PING")).startswith("NOAUTH")
            assert w.call("AUTH", emb.password) == b"OK"
            assert w.call("CONFIG", "GET", "bind")[1].split() == [b"127.0.0.1"]
            assert w.call("CONFIG", "GET", "save") == [b"save", b""]
            assert w.call("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
        finally:
            w.close()
        assert len(emb.password) == 48 and EmbeddedRedis().password != emb.password
    finally:
        emb.stop()
    assert _gone(pid) and not os.path.exists(emb.dir)
    emb.stop()   # twice: nothing to do


_CHILD = """
import sys, time
from redisgate.io.embedded import EmbeddedRedis
emb = EmbeddedRedis().start()
print(emb.proc.pid, flush=True)
time.sleep(60)
"""


def test_embedded_redis_dies_with_the_proxy_even_by_sigkill():
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE,
                             env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        line = child.stdout.readline()
        assert line, "the child did not start an embedded redis-server"
        pid = int(line)
        assert psutil.Process(pid).ppid() == child.pid
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert _gone(pid), "the embedded redis-server outlived the proxy"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_redis_server_binary_is_runnable():
    path = redis_server_binary()
    assert os.access(path, os.X_OK)
    out = subprocess.run([path, "--version"], capture_output=True, timeout=10).stdout
    assert out.startswith(b"Redis server v=")


@pytest.mark.parametrize("version", ["7", "6.2", "5"])
def test_launcher_starts_each_version_with_settings_and_extra_words(version):
    binary = redis_binary(version)
    if binary is None:
        pytest.fail(f"redis-server {version} is missing: run scripts/test.sh")
    port, directory = free_port(), tempfile.mkdtemp(prefix="redisgate-test-launch-")
    proc = start_redis_server(binary, port, directory, settings={"requirepass": "s3cret"},
                              extra=["--maxmemory", "12mb"], stderr=subprocess.PIPE)
    try:
        w = Wire(port)
        try:
            assert w.call("AUTH", "s3cret") == b"OK"
            assert w.call("CONFIG", "GET", "maxmemory") == [b"maxmemory", b"12582912"]
            assert w.call("CONFIG", "GET", "dir") == [b"dir", os.path.realpath(directory).encode()]
            major = int(w.call("INFO", "server").split(b"redis_version:")[1].split(b".")[0])
            assert major == int(version.split(".")[0])
        finally:
            w.close()
    finally:
        stop_process(proc)
    assert proc.returncode is not None
    stop_process(proc)   # already ended: nothing to do


def test_launcher_says_why_a_server_did_not_start(tmp_path):
    binary = redis_binary("7")
    with pytest.raises(RuntimeError) as e:
        start_redis_server(binary, free_port(), str(tmp_path), extra=["--no-such-option", "1"],
                           stderr=subprocess.PIPE, name="test redis-server")
    text = str(e.value)
    assert text.startswith("test redis-server exited with code 1: ")
    assert "no-such-option" in text


@pytest.mark.parametrize("value", ["two words", 'a"quote', "new\nline", ""])
def test_launcher_refuses_a_setting_that_would_inject_config(tmp_path, value):
    with pytest.raises(ValueError):
        start_redis_server(redis_binary("7"), free_port(), str(tmp_path),
                           settings={"requirepass": value})
    assert not os.path.exists(tmp_path / "redis.conf")


def test_redis_binary_knows_three_versions():
    with pytest.raises(ValueError):
        redis_binary("4")
