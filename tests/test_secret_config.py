"""CONFIG GET never reveals the upstream's credentials (issue 22, "Secrets stay secret").

`secret_config.pattern_reveals_secret` is checked against real Redis 7.0 and 5.0 `CONFIG GET`
on generated patterns (every parameter name, re-cased, NUL-suffixed, and globs built from them):
whenever Redis would answer with a secret parameter, the pattern is refused. Through a real
proxy, users with every right (allkeys, +@all, report-only) get a NOPERM with the reason, and the
upstream password never appears in any reply.
"""
from __future__ import annotations

import random

import pytest
import redis

from conftest import LEGACY_PASSWORD, UPSTREAM_PASSWORD
from proxy import ProxyRunner, pw_hash
from redisgate.policy.secret_config import (MAX_GLOB_PATTERNS, MAX_PATTERN_LEN,
                                            SENSITIVE_PARAMETERS, config_get_reveals_secret,
                                            pattern_reveals_secret)


def _secret(name: bytes) -> bool:
    return name in SENSITIVE_PARAMETERS or b"pass" in name


def _patterns(names: list[bytes], rng: random.Random, n: int) -> list[bytes]:
    out = [b"*", b"*pass*", b"require?ass", b"REQUIREPASS", b"requirepass\x00", b"requirepass\x00x",
           b"[r]equirepass", b"[^x]equirepass", b"re[p-r]uirepass", b"re[P-R]uirepass",
           b"re[\\q]uirepass", b"*auth", b"master*", b"tls-*", b"*-pass", b"?????????????",
           b"\\requirepass", b"[a-z]*", b"*[s]", b"maxmemory", b"maxmemory*", b"port", b"*\x00pass"]
    secrets = [m for m in names if _secret(m)]
    for _ in range(n):
        name = rng.choice(names) if rng.random() < 0.6 else rng.choice(secrets)
        r = rng.random()
        if r < 0.2:
            p = name
        elif r < 0.3:
            p = name.upper()
        elif r < 0.4:
            p = name + b"\x00" + rng.choice([b"", b"x", b"*"])
        else:
            p = bytearray(name)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(p))
                kind = rng.random()
                if kind < 0.3:
                    p[i:i + rng.randint(1, 4)] = b"*"
                elif kind < 0.5:
                    p[i] = ord("?")
                elif kind < 0.7:
                    c = p[i]
                    p[i:i + 1] = b"[" + bytes([c, rng.choice(b"xyz")]) + b"]"
                elif kind < 0.8:
                    p[i:i + 1] = b"[^" + bytes([rng.choice(b"xyz")]) + b"]"
                else:
                    p[i:i + 1] = bytes([p[i]]).upper()
            p = bytes(p)
        out.append(p)
    return out


def _names(client, pattern: bytes) -> list[bytes]:
    reply = client.execute_command("CONFIG", "GET", pattern)
    if isinstance(reply, dict):
        return [k if isinstance(k, bytes) else k.encode() for k in reply]
    return [reply[i] for i in range(0, len(reply), 2)]


@pytest.mark.parametrize("version", ["7", "5"])
def test_every_pattern_redis_would_answer_with_a_secret_is_refused(request, version):
    srv = request.getfixturevalue({"7": "redis7", "5": "redis5"}[version])
    admin = srv.admin()
    names = _names(admin, b"*")
    assert b"requirepass" in names and b"masterauth" in names
    rng = random.Random(7 if version == "7" else 5)
    revealing = refused = 0
    for p in _patterns(names, rng, 1500):
        got = _names(admin, p)
        if any(_secret(n) for n in got):
            revealing += 1
            assert pattern_reveals_secret(p), (p, got)
        refused += pattern_reveals_secret(p)
    # Exact for plain names: every parameter without a secret may be asked for by name.
    for n in names:
        assert pattern_reveals_secret(n) == _secret(n), n
    assert revealing > 300 and refused < 1400, (revealing, refused)


def test_patterns_that_could_match_any_name_containing_pass_are_refused():
    assert pattern_reveals_secret(b"max*")           # a future `maxpass` would match
    assert pattern_reveals_secret(b"foo-pass")       # any literal name with pass
    assert pattern_reveals_secret(b"FooPaSs")
    assert not pattern_reveals_secret(b"maxmemory-p?licy")
    assert not pattern_reveals_secret(b"tls-key-file")
    assert not pattern_reveals_secret(b"appendonly")


def test_work_is_bounded():
    assert pattern_reveals_secret(b"x" * (MAX_PATTERN_LEN + 1))
    assert not config_get_reveals_secret([b"maxmemory"] * 1000)
    assert config_get_reveals_secret([b"m?xmemory"] * (MAX_GLOB_PATTERNS + 1))
    assert not config_get_reveals_secret([b"m?xmemory"] * MAX_GLOB_PATTERNS)


def _users():
    return {
        "root": f"on {pw_hash('pw')} allkeys allchannels +@all",
        "watch": {"rules": f"on {pw_hash('pw')} ~app:* +get", "report_only": True},
    }


REFUSED = [[b"requirepass"], [b"REQUIREPASS"], [b"requirepass\x00"], [b"*"], [b"*pass*"],
           [b"require?ass"], [b"masterauth"], [b"masteruser"], [b"tls-key-file-pass"],
           [b"tls-client-key-file-pass"], [b"[r]equirepass"], [b"*auth"]]


@pytest.mark.parametrize("version", ["7", "5"])
def test_no_user_reads_the_upstream_password_through_the_proxy(request, version):
    srv = request.getfixturevalue({"7": "redis7", "5": "redis5"}[version])
    secret = (UPSTREAM_PASSWORD if version == "7" else LEGACY_PASSWORD).encode()
    srv.admin().config_set("masterauth", secret.decode())   # something to leak on both
    runner = ProxyRunner({"upstream": srv.upstream, "users": _users()}).start()
    try:
        for user in ("root", "watch"):
            c = runner.client(user, "pw")
            lines = REFUSED + ([[b"maxmemory", b"requirepass"], [b"maxmemory", b"*"]]
                               if version == "7" else [])
            for patterns in lines:
                with pytest.raises(redis.exceptions.NoPermissionError) as e:
                    c.execute_command(b"CONFIG", b"GET", *patterns)
                assert "credentials" in str(e.value) and secret.decode() not in str(e.value)
            if user == "root":
                assert c.execute_command("CONFIG", "GET", "maxmemory")
                # inside MULTI too: refused when queued, EXEC then aborts
                p = c.pipeline(transaction=True)
                p.execute_command("CONFIG", "GET", "requirepass")
                with pytest.raises((redis.exceptions.NoPermissionError,
                                    redis.exceptions.ExecAbortError)):
                    p.execute()
            entries = c.execute_command("ACL", "LOG") if user == "root" else []
            assert secret not in repr(entries).encode()
    finally:
        runner.stop()
        srv.admin().config_set("masterauth", "")


@pytest.mark.parametrize("version", ["7", "5"])
def test_the_slow_log_never_shows_the_upstream_password(request, version):
    """Redis 5.0 logs AUTH with its password in clear: on such an upstream the proxy refuses
    SLOWLOG GET; from 6.0 on Redis redacts it and SLOWLOG GET passes."""
    srv = request.getfixturevalue({"7": "redis7", "5": "redis5"}[version])
    secret = (UPSTREAM_PASSWORD if version == "7" else LEGACY_PASSWORD).encode()
    admin = srv.admin()
    admin.config_set("slowlog-log-slower-than", 0)
    runner = ProxyRunner({"upstream": srv.upstream, "users": _users()}).start()
    try:
        c = runner.client("root", "pw")
        runner.client("root", "pw").ping()    # another upstream login, now in the slow log
        assert secret in repr(admin.execute_command("SLOWLOG", "GET", "128")).encode() \
            or version == "7"
        if version == "5":
            with pytest.raises(redis.exceptions.ResponseError) as e:
                c.execute_command("SLOWLOG", "GET", "128")
            assert "upstream password" in str(e.value)
        else:
            assert secret not in repr(c.execute_command("SLOWLOG", "GET", "128")).encode()
    finally:
        runner.stop()
        admin.config_set("slowlog-log-slower-than", 10000)
        admin.execute_command("SLOWLOG", "RESET")
