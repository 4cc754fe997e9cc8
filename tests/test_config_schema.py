"""The configuration schema, generated: every declared key gets every wrong value its type lists,
and `redisgate check` must name the key, exit 1, and never print a traceback or a secret.

Plus the hostile inputs of issue 22 (#2, #3, #9): string booleans, `tls: {}`, alias bombs, deep
nesting, duplicate keys, non-UTF-8 files, FIFOs and devices as secret files, error messages that
echoed passwords.
"""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from redisgate import cli
from redisgate.config import (SCHEMA, AuthThrottle, ConfigError, Either, ListOf, MapOf, Struct,
                              build_config, load_config)

H = "#" + hashlib.sha256(b"pw").hexdigest()
CANARY = "Hunter2-S3cret-canary"


def schema_paths(typ, path=()):
    """(path, type) for every declared key, descending into mappings, lists and user entries."""
    if isinstance(typ, Struct):
        for key, sub in typ.fields.items():
            yield (*path, key), sub
            yield from schema_paths(sub, (*path, key))
    elif isinstance(typ, MapOf):
        yield from schema_paths(typ.item, (*path, "u"))
    elif isinstance(typ, ListOf):
        yield from schema_paths(typ.item, (*path, 0))
    elif isinstance(typ, Either):
        for alt in typ.alternatives:
            yield from schema_paths(alt, path)


def where_of(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def place(path, value) -> dict:
    """A config that is valid except for `value` at `path` (secrets from files: the canary)."""
    raw = {"upstream": {"address": "127.0.0.1:6379", "password": "${file:secret}"},
           "users": {"u": {"rules": f"on {H} >${{file:secret}} +get"}}}
    node = raw
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(part, int):
            while len(node) <= part:
                node.append({"address": "127.0.0.1:6380"})
            child = node[part]
        else:
            child = node.get(part)
            if not isinstance(child, (dict, list)):
                child = [] if isinstance(nxt, int) else {}
                node[part] = child
        node = child
    last = path[-1]
    if isinstance(last, int):
        node.append(value)
    else:
        node[last] = value
    return raw


PATHS = sorted({where_of(p): (p, t) for p, t in schema_paths(SCHEMA)}.items())
CASES = [(where, path, value) for where, (path, typ) in PATHS for value in typ.wrong]


def test_the_schema_declares_every_key_of_the_contract():
    wheres = {w for w, _ in PATHS}
    for key in ("listen", "listen[0].address", "listen[0].tls.cert", "listen[0].tls.ciphers",
                "upstream.address", "upstream.password", "upstream.tls.ca",
                "upstream.tls.insecure_skip_verify", "upstream.multiplex", "users.u.rules",
                "users.u.report_only", "users.u.learn", "users.u.require_password",
                "users.u.confine_scan", "users.u.certificate", "users.u.allow_flush",
                "acl_file", "metrics.address", "limits.max_clients", "limits.handshake_timeout",
                "limits.auth_timeout", "limits.memory_budget", "auth_throttle.max_failures",
                "auth_throttle.window", "auth_throttle.lockout", "pid_file", "log.level"):
        assert key in wheres, key
    assert len(CASES) > 250


@pytest.fixture()
def confdir(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text(CANARY + "\n")
    secret.chmod(0o600)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_key_refuses_every_wrong_value_by_name(confdir, capsys):
    failures = []
    for where, path, value in CASES:
        cfg = confdir / "c.yaml"
        cfg.write_text(yaml.safe_dump(place(path, value)))
        try:
            rc = cli.main(["check", "--config", str(cfg)])
        except SystemExit as e:
            rc = e.code
        out, err = capsys.readouterr()
        text = out + err
        if rc != 1 or where not in err or CANARY in text or "Traceback" in text:
            failures.append(f"{where} = {value!r}: rc={rc} {text.strip()[:300]}")
    assert not failures, "\n".join(failures[:20])


def test_the_base_of_the_generated_configs_is_valid(confdir, capsys):
    cfg = confdir / "c.yaml"
    raw = place(("log", "level"), "info")
    cfg.write_text(yaml.safe_dump(raw))
    assert cli.main(["check", "--config", str(cfg)]) == 0


def problems(raw, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        build_config(raw, **kw)
    return e.value.problems


# ---------------------------------------------------------------------------- #2 booleans

@pytest.mark.parametrize("key", ["report_only", "learn", "require_password", "confine_scan",
                                 "allow_flush"])
@pytest.mark.parametrize("text", ["false", "no", "0", "off", "true"])
def test_a_string_is_not_a_boolean(key, text):
    spec = {"rules": f"on {H} ~p:* +get +scan", key: text, "certificate": {"cn": "c"}}
    msgs = problems({"upstream": "127.0.0.1:6379", "users": {"u": spec}})
    assert f"users.u.{key}: expected true or false, got {text!r}" in msgs


def test_report_only_false_string_never_turns_report_only_on():
    with pytest.raises(ConfigError):
        build_config({"upstream": "127.0.0.1:6379",
                      "users": {"u": {"rules": f"on {H} +get", "report_only": "false"}}})
    cfg = build_config({"upstream": "127.0.0.1:6379",
                        "users": {"u": {"rules": f"on {H} +get", "report_only": False}}})
    assert cfg.users["u"].user.report_only is False


# ---------------------------------------------------------------------------- #3 tls: {}

def test_upstream_tls_empty_mapping_means_tls_with_system_cas():
    from redisgate.io.server import Proxy
    for tls in ({}, True):
        cfg = build_config({"upstream": {"address": "127.0.0.1:6379", "tls": tls},
                            "users": {"u": f"on {H}"}})
        assert cfg.upstream.tls == {}
        ctx, name = Proxy(cfg).upstream_ssl()
        assert ctx is not None and ctx.check_hostname and name == "127.0.0.1"
    cfg = build_config({"upstream": {"address": "127.0.0.1:6379", "tls": False},
                        "users": {"u": f"on {H}"}})
    assert cfg.upstream.tls is None


def test_listener_tls_without_cert_and_key_is_an_error():
    msgs = problems({"listen": [{"address": "127.0.0.1:6380", "tls": {}}],
                     "upstream": "127.0.0.1:6379", "users": {"u": f"on {H}"}})
    assert "listen[0].tls.cert: required" in msgs and "listen[0].tls.key: required" in msgs


# ---------------------------------------------------------------------------- #9 robustness

def check(tmp_path: Path, text: bytes | str, timeout: float = 30) -> subprocess.CompletedProcess:
    cfg = tmp_path / "redisgate.yaml"
    cfg.write_bytes(text.encode() if isinstance(text, str) else text)
    out = subprocess.run([sys.executable, "-m", "redisgate", "check", "--config", str(cfg)],
                         capture_output=True, timeout=timeout, cwd=tmp_path)
    assert b"Traceback" not in out.stderr, out.stderr.decode()
    return out


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = "\n".join(lines) + "\n"
    assert len(bomb) < 600
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        (tmp_path / "bomb.yaml").write_text(bomb)
        load_config(tmp_path / "bomb.yaml")
    assert time.monotonic() - t0 < 5
    assert "not allowed" in e.value.problems[0] and "line 1" in e.value.problems[0]


def test_an_alias_alone_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text(f'x: &x "on {H}"\nusers: {{u: *x}}\n')
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    assert "anchors" in e.value.problems[0] or "aliases" in e.value.problems[0]


def test_deep_nesting_is_a_message_not_a_recursion_error(tmp_path):
    out = check(tmp_path, "listen: " + "[" * 20000 + "]" * 20000 + "\n")
    assert out.returncode == 1 and b"nested more than 64 levels" in out.stderr


def test_duplicate_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        (tmp_path / "c.yaml").write_text(
            f'users:\n  u: "on {H}"\n  u: "on nopass allkeys +@all"\n')
        load_config(tmp_path / "c.yaml")
    assert "line 3" in e.value.problems[0] and "duplicate key 'u'" in e.value.problems[0]


def test_a_config_larger_than_a_mebibyte_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    assert "larger than" in e.value.problems[0]


def test_a_non_utf8_config_is_a_message(tmp_path):
    out = check(tmp_path, b'users: {u: "on >${X} +get"}\nupstream: 127.0.0.1:1\n# \xffzz\n')
    assert out.returncode == 1 and b"not UTF-8 text" in out.stderr
    assert b"\xff" not in out.stderr


def test_a_yaml_error_never_shows_the_line(tmp_path):
    for text in (f'users: {{u: "on >{CANARY}\\q"}}\n', f"users: {{u: on >{CANARY}\n",
                 f"users:\n  u: on\n\t>{CANARY}\n", f"users: {{u: '>{CANARY}'\n"):
        out = check(tmp_path, text)
        assert out.returncode == 1 and b"not valid YAML" in out.stderr
        assert CANARY.encode() not in out.stderr and b"Hunter" not in out.stderr


@pytest.mark.parametrize("rules", [f"on #{CANARY} +get", f"on {CANARY} +get",
                                   f"on (>{CANARY} +get)", f"on >{CANARY} +get", f"on <{CANARY}",
                                   f"on !{CANARY}"])
def test_rule_errors_never_show_a_password(rules):
    msgs = problems({"upstream": "127.0.0.1:6379", "users": {"u": rules}})
    assert msgs and all(m.startswith("users.u.rules: ") for m in msgs)
    assert not any("Hunter" in m for m in msgs), msgs


def test_an_aclfile_rule_error_never_shows_a_password(tmp_path):
    (tmp_path / "users.acl").write_text(f"user cache on {CANARY} ~c:* +get\n")
    msgs = problems({"upstream": "127.0.0.1:6379", "acl_file": "users.acl"}, base_dir=tmp_path)
    assert msgs and not any("Hunter" in m for m in msgs)


def secret_config(tmp_path, ref: str) -> str:
    return (f"upstream: {{address: 127.0.0.1:6379, password: '${{file:{ref}}}'}}\n"
            f'users: {{u: "on {H} +get"}}\n')


def test_a_fifo_as_secret_file_does_not_hang_check(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    out = check(tmp_path, secret_config(tmp_path, "fifo"), timeout=20)
    assert out.returncode == 1
    assert b"upstream.password: cannot read secret file" in out.stderr
    assert b"not a regular file" in out.stderr


def test_dev_zero_as_secret_file_is_refused(tmp_path):
    out = check(tmp_path, secret_config(tmp_path, "/dev/zero"), timeout=20)
    assert out.returncode == 1 and b"not a regular file" in out.stderr


def test_a_huge_secret_file_is_refused(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * (64 * 1024 + 1))
    (tmp_path / "big").chmod(0o600)
    out = check(tmp_path, secret_config(tmp_path, "big"))
    assert out.returncode == 1 and b"larger than 65536 bytes" in out.stderr


def test_a_binary_secret_file_is_named_but_not_shown(tmp_path):
    (tmp_path / "bin").write_bytes(b"\xff\xfe" + CANARY.encode())
    (tmp_path / "bin").chmod(0o600)
    out = check(tmp_path, secret_config(tmp_path, "bin"))
    assert out.returncode == 1 and b"is not UTF-8 text" in out.stderr and b"/bin'" in out.stderr
    assert b"Hunter" not in out.stderr and b"\\xff" not in out.stderr


def test_a_world_readable_secret_file_is_a_warning(tmp_path):
    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "pw").chmod(0o644)
    out = check(tmp_path, secret_config(tmp_path, "pw"))
    assert out.returncode == 0, out.stderr
    assert b"readable by group or others (mode 0644)" in out.stderr
    (tmp_path / "pw").chmod(0o600)
    assert b"readable" not in check(tmp_path, secret_config(tmp_path, "pw")).stderr
    # Shared with a group the proxy runs in (Kubernetes: a Secret 0440 with the pod's fsGroup).
    assert os.stat(tmp_path / "pw").st_gid in {os.getegid(), *os.getgroups()}
    (tmp_path / "pw").chmod(0o440)
    assert b"readable" not in check(tmp_path, secret_config(tmp_path, "pw")).stderr


def test_secret_files_and_hash_password_strip_the_same_newlines(tmp_path):
    raw = b"pw-\r\n\n\r\n"
    (tmp_path / "pw").write_bytes(raw)
    (tmp_path / "pw").chmod(0o600)
    cfg = build_config({"upstream": "127.0.0.1:6379", "users": {"u": "on >${file:pw} +get"}},
                       base_dir=tmp_path)
    out = subprocess.run([sys.executable, "-m", "redisgate", "hash-password"], input=raw,
                         capture_output=True, timeout=30)
    digest = out.stdout.decode().strip()
    assert digest == "#" + hashlib.sha256(b"pw-").hexdigest()
    assert cfg.users["u"].user.check_password(b"pw-")
    assert digest in cfg.users["u"].user.to_acl_rules()


def test_profile_number_pid_file_list_and_infinite_limits(tmp_path):
    msgs = problems({"upstream": "127.0.0.1:6379", "pid_file": [],
                     "limits": {"max_clients": float("inf"), "handshake_timeout": float("nan")},
                     "users": {"u": {"rules": f"on {H}", "profile": 1}}})
    joined = "\n".join(msgs)
    for where in ("pid_file:", "limits.max_clients:", "limits.handshake_timeout:",
                  "users.u.profile:"):
        assert where in joined


# ---------------------------------------------------------------------------- types

def test_durations_sizes_and_the_new_sections():
    cfg = build_config({"upstream": {"address": "127.0.0.1:6379", "connect_timeout": "500ms"},
                        "users": {"u": f"on {H}"},
                        "limits": {"handshake_timeout": "5m", "auth_timeout": 3,
                                   "memory_budget": "64MiB", "max_bulk": "1k"},
                        "auth_throttle": {"max_failures": 3, "window": "10s", "lockout": 1.5}})
    assert cfg.upstream.connect_timeout == 0.5 and cfg.handshake_timeout == 300.0
    assert cfg.auth_timeout == 3.0 and cfg.memory_budget == 64 * 1024 * 1024
    assert cfg.max_bulk == 1024
    assert cfg.auth_throttle == AuthThrottle(max_failures=3, window=10.0, lockout=1.5)
    default = build_config({"upstream": "127.0.0.1:6379", "users": {"u": f"on {H}"}})
    assert default.auth_timeout == 10.0 and default.memory_budget == 256 * 1024 * 1024
    assert default.auth_throttle == AuthThrottle(10, 60.0, 300.0)


def test_a_certificate_binding_may_name_its_ca(tmp_path):
    from redisgate import certs
    certs.generate(tmp_path)
    cfg = build_config({"upstream": "127.0.0.1:6379",
                        "users": {"u": {"rules": "on", "certificate": {"cn": "u", "ca": "ca.crt"}}}},
                       base_dir=tmp_path)
    assert cfg.users["u"].certificate == {"cn": "u", "ca": str(tmp_path / "ca.crt")}
    assert len(cfg.users["u"].certificate_ca) == 1


def test_every_existing_form_still_loads():
    cfg = build_config({
        "listen": ["127.0.0.1:6380", 6381, {"address": "[::1]:6443"}],
        "upstream": {"address": "127.0.0.1:6379", "username": "gate", "db": 2, "version": 7.0,
                     "connect_timeout": 2, "multiplex": True},
        "users": {"a": f"on {H} ~a:* +get", "b": ["on", H, "+ping"],
                  "c": {"rules": f"on {H}", "profile": "asynq-worker", "queues": ["q"]},
                  "d": {"rules": f"on {H}", "profiles": ["asynq-producer"], "databases": [0, 1]},
                  12: f"on {H} +get"},
        "metrics": {"address": "127.0.0.1:9121"}, "limits": {"max_clients": 5},
        "pid_file": "/tmp/x.pid", "log": {"level": "DEBUG"}})
    assert [(lst.host, lst.port) for lst in cfg.listeners] == [
        ("127.0.0.1", 6380), ("127.0.0.1", 6381), ("::1", 6443)]
    assert cfg.upstream.version == (7, 0, 0) and cfg.upstream.multiplex == 1
    assert set(cfg.users) == {"a", "b", "c", "d", "12"} and cfg.log_level == "debug"
    assert cfg.max_clients == 5 and cfg.metrics_address == ("127.0.0.1", 9121)


def test_null_values_mean_the_default():
    cfg = build_config({"upstream": {"address": "127.0.0.1:6379", "tls": None, "password": None},
                        "users": {"u": {"rules": f"on {H}", "scripts": None}}, "limits": None})
    assert cfg.upstream.tls is None and cfg.upstream.password is None


def test_the_mode_of_files_read_is_not_changed(tmp_path):
    (tmp_path / "pw").write_text("x")
    (tmp_path / "pw").chmod(0o640)
    build_config({"upstream": "127.0.0.1:6379", "users": {"u": "on >${file:pw}"}}, base_dir=tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "pw").st_mode) == 0o640


def test_odd_keys_cannot_forge_message_lines():
    msgs = problems({"upstream": "127.0.0.1:6379", "users": {"a\nb": "on", "ok": f"on {H}"},
                     "x\r\nusers.ok: fine": 1})
    assert all("\n" not in m and "\r" not in m for m in msgs)
    assert any(m.startswith("users.'a\\nb': expected a user name") for m in msgs)


@pytest.mark.parametrize("text", [
    "x: " + "9" * 5000, "x: 2020-99-99", "x: !!timestamp 2020-13-01", "x: !!int abc",
    "x: !!float zz", "x: !!binary '@@@'", "x: !!python/object:os.system x", "? [a]\n: 1",
    "limits: {handshake_timeout: " + "9" * 400 + "}", "x: \"\\ud800\"", "x: !!str\n  - a",
])
def test_hostile_scalars_are_messages(tmp_path, text):
    (tmp_path / "c.yaml").write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    assert e.value.problems and all(len(p) < 400 for p in e.value.problems)
