"""What the tools write and whom they signal (issue 22 #10, #11): real processes, real files.

- files holding secrets are 0600 and written without following a planted symlink (demo, learn);
- `certs` refuses to reuse a CA key others could read;
- `reload` signals only a running redisgate; `serve` refuses a pid file of a live redisgate and
  replaces a stale one;
- the demo's admin cannot read the upstream password; `acl export` never writes `nopass` for a
  certificate-bound user; weak cipher strings are warned about, CBC suites are off by default.
"""
from __future__ import annotations

import hashlib
import os
import signal
import ssl
import stat
import subprocess
import time

import pytest
import redis
import yaml

from redisgate import certs
from servers import free_port
from test_cli import cli, demo_password, rg, serving, start, stop, wait_port, write

H = "#" + hashlib.sha256(b"pw").hexdigest()


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def wait_pid_file(pid_file, pid: int) -> None:
    """`serve` writes its pid file once its signal handlers are in place (after listening)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if pid_file.exists() and pid_file.read_text().strip() == str(pid):
            return
        time.sleep(0.02)
    raise AssertionError(f"{pid_file} never named pid {pid}")


def test_write_private_replaces_a_symlink_and_a_loose_mode(tmp_path):
    from redisgate.config import write_private
    victim = tmp_path / "victim"
    victim.write_text("victim")
    (tmp_path / "link").symlink_to(victim)
    write_private(tmp_path / "link", b"secret")
    assert victim.read_text() == "victim"
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_bytes() == b"secret"
    assert _mode(tmp_path / "link") == 0o600
    loose = tmp_path / "loose"
    loose.write_text("old")
    loose.chmod(0o644)
    write_private(loose, b"new")
    assert _mode(loose) == 0o600 and loose.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "loose", "victim"]


def test_demo_files_are_private_and_admin_cannot_read_the_upstream_password(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("victim")
    (tmp_path / "redisgate.yaml").symlink_to(victim)
    (tmp_path / "upstream-password").write_text("old")
    (tmp_path / "upstream-password").chmod(0o644)
    port = free_port()
    with serving("demo", "--port", port, "--dir", tmp_path, port=port) as proc:
        pw = demo_password(proc, "admin")
        assert "NOPERM" in cli(port, "admin", pw, "CONFIG", "GET", "requirepass")
        assert cli(port, "admin", pw, "SET", "k", "v").strip() == "OK"
        assert cli(port, "admin", pw, "FLUSHDB").strip() == "OK"
    assert victim.read_text() == "victim"
    assert not (tmp_path / "redisgate.yaml").is_symlink()
    assert _mode(tmp_path / "upstream-password") == 0o600
    assert _mode(tmp_path / "redisgate.yaml") == 0o600


def test_learn_out_is_private_and_does_not_follow_a_symlink(tmp_path, redis7):
    port = free_port()
    cfg = write(tmp_path, {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
                           "users": {"w": {"rules": f"on {H}"}}})
    victim = tmp_path / "victim"
    victim.write_text("victim")
    out = tmp_path / "learned.yaml"
    out.symlink_to(victim)
    proc = start("learn", "--config", cfg, "--user", "w", "--out", out)
    try:
        wait_port(port, proc)
        assert redis.Redis(port=port, username="w", password="pw").ping()
    finally:
        stop(proc)
    assert victim.read_text() == "victim"
    assert not out.is_symlink() and _mode(out) == 0o600
    assert yaml.safe_load(out.read_text())["users"]["w"]["rules"].startswith(f"on {H}")


def test_certs_refuses_to_reuse_a_ca_key_others_can_read(tmp_path, capsys):
    certs.generate(tmp_path)
    (tmp_path / "ca.key").chmod(0o644)
    assert certs.main(["--out", str(tmp_path), "--force"]) == 1
    assert "ca.key: mode 0644" in capsys.readouterr().err
    (tmp_path / "ca.key").chmod(0o600)
    assert certs.main(["--out", str(tmp_path), "--force"]) == 0


def test_reload_does_not_signal_a_stale_pid(tmp_path):
    other = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "rg.pid"
        pid_file.write_text(f"{other.pid}\n")
        out = rg("reload", "--pid-file", str(pid_file))
        assert out.returncode == 1 and b"not a running redisgate" in out.stderr
        time.sleep(0.2)
        assert other.poll() is None            # SIGHUP would have ended `sleep`
    finally:
        other.kill()
        other.wait()
    out = rg("reload", "--pid-file", str(tmp_path / "none.pid"))
    assert out.returncode == 1 and b"does not exist" in out.stderr


def test_serve_refuses_the_pid_file_of_a_live_redisgate_and_replaces_a_stale_one(tmp_path, redis7):
    pid_file = tmp_path / "rg.pid"
    port = free_port()
    cfg = write(tmp_path, {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
                           "users": {"u": f"on {H} +ping"}, "pid_file": str(pid_file)})
    first = start("serve", "--config", cfg)
    try:
        wait_port(port, first)
        wait_pid_file(pid_file, first.pid)
        out = rg("serve", "--config", str(cfg), "--listen", f"127.0.0.1:{free_port()}")
        assert out.returncode == 1 and b"is running" in out.stderr, out.stderr
        assert pid_file.read_text().strip() == str(first.pid)
    finally:
        first.kill()                            # SIGKILL: the pid file stays behind
        first.wait()
    assert pid_file.exists()
    second = start("serve", "--config", cfg)
    try:
        wait_port(port, second)
        wait_pid_file(pid_file, second.pid)
        out = rg("reload", "--config", str(cfg))
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 10
        err = b""
        os.set_blocking(second.stderr.fileno(), False)
        while b"configuration reloaded" not in err and time.monotonic() < deadline:
            err += second.stderr.read() or b""
            time.sleep(0.05)
        assert b"configuration reloaded" in err
    finally:
        stop(second)
    assert not pid_file.exists()


def test_serve_with_an_unreadable_certificate_is_a_message(tmp_path):
    cfg = write(tmp_path, {"listen": [{"address": f"127.0.0.1:{free_port()}",
                                       "tls": {"cert": "nope.crt", "key": "nope.key"}}],
                           "upstream": "127.0.0.1:1", "users": {"u": f"on {H}"}})
    out = rg("serve", "--config", str(cfg))
    assert out.returncode == 1
    assert b"Traceback" not in out.stderr
    assert b"listen[0].tls.cert: cannot read" in out.stderr


def test_acl_export_never_writes_nopass_for_a_certificate_bound_user(tmp_path, redis7):
    cfg = write(tmp_path, {"upstream": "127.0.0.1:6379", "users": {
        "default": {"rules": "on nopass ~d:* +get", "certificate": {"cn": "alice"}},
        "open": "on nopass ~o:* +get"}})
    out = rg("acl", "export", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("ACL SETUSER default "))
    assert "nopass" not in line.split() and "resetpass" in line.split()
    assert "no usable password at Redis" in text
    assert "nopass" in next(ln for ln in text.splitlines() if ln.startswith("ACL SETUSER open "))
    from redisgate.config import tokenize_rules
    admin = redis7.admin()
    tokens = tokenize_rules(line)[3:]
    assert admin.execute_command("ACL", "SETUSER", "export-default", *tokens) == b"OK"
    try:
        c = redis.Redis(port=redis7.port)
        with pytest.raises(redis.exceptions.AuthenticationError):
            c.execute_command("AUTH", "export-default", "")
        with pytest.raises(redis.exceptions.AuthenticationError):
            c.execute_command("AUTH", "export-default", "anything")
    finally:
        admin.execute_command("ACL", "DELUSER", "export-default")


def test_weak_ciphers_are_warned_about_and_cbc_is_off_by_default(tmp_path):
    certs.generate(tmp_path / "c")
    tls = {"cert": "c/server.crt", "key": "c/server.key"}
    raw = {"listen": [{"address": "127.0.0.1:16380", "tls": dict(tls, ciphers="ALL:@SECLEVEL=0")}],
           "upstream": "127.0.0.1:6379", "users": {"u": f"on {H}"}}
    out = rg("check", "--config", str(write(tmp_path, raw)))
    assert out.returncode == 0, out.stderr
    assert b"warning: listen[0].tls.ciphers: 'ALL:@SECLEVEL=0' admits weak cipher suites" in out.stderr
    raw["listen"][0]["tls"] = dict(tls, ciphers="ECDHE+AESGCM")
    assert b"weak" not in rg("check", "--config", str(write(tmp_path, raw))).stderr

    from redisgate.tls import DEFAULT_CIPHERS, ListenerTLS, weak_cipher_suites
    assert weak_cipher_suites(DEFAULT_CIPHERS) == []
    assert "ECDHE-RSA-AES128-SHA256" in weak_cipher_suites("HIGH")
    ctx = ListenerTLS(tls, tmp_path).context
    names = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert names and all("GCM" in n or "CHACHA20" in n for n in names), names
    # A TLS 1.2 client offering only ECDHE-CBC suites finds nothing to agree on.
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA")
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli_obj = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    srv_obj = ctx.wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLError):
        for _ in range(10):
            for obj in (cli_obj, srv_obj):
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())


def test_hash_password_strips_every_trailing_newline():
    for raw in (b"s3cret\n", b"s3cret\r\n", b"s3cret\n\n", b"s3cret\r\n\r\n", b"s3cret"):
        out = rg("hash-password", input=raw)
        assert out.stdout.decode().strip() == "#" + hashlib.sha256(b"s3cret").hexdigest(), raw
    assert rg("hash-password", input=b"\r\n\n").returncode == 1


def test_a_reload_onto_a_fifo_secret_does_not_freeze_the_proxy(tmp_path, redis7):
    port = free_port()
    pid_file = tmp_path / "rg.pid"
    raw = {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
           "users": {"u": f"on {H} +ping"}, "pid_file": str(pid_file)}
    cfg = write(tmp_path, raw)
    proc = start("serve", "--config", cfg)
    try:
        wait_port(port, proc)
        wait_pid_file(pid_file, proc.pid)       # written once the SIGHUP handler is in place
        os.mkfifo(tmp_path / "fifo")
        raw["users"]["v"] = "on >${file:fifo} +ping"
        write(tmp_path, raw)
        proc.send_signal(signal.SIGHUP)
        c = redis.Redis(port=port, username="u", password="pw", socket_timeout=5)
        for _ in range(20):                     # the event loop keeps serving after the SIGHUP
            assert c.ping()
            time.sleep(0.05)
    finally:
        stop(proc)
    err = proc.stderr.read()
    assert b"reload rejected: users.v.rules: cannot read secret file" in err
    assert b"not a regular file" in err
