"""SCAN/KEYS confined to a user's one key prefix (`confine_scan: true`)."""
from __future__ import annotations

import pytest
import redis

from proxy import ProxyRunner, pw_hash
from redisgate.config import ConfigError, build_config
from redisgate.policy.confine import confine, escape


def test_scan_without_match_gets_the_prefix_appended():
    assert confine("scan", [b"SCAN", b"0"], b"t1:") == [b"SCAN", b"0", b"MATCH", b"t1:*"]
    assert confine("scan", [b"SCAN", b"0", b"COUNT", b"10"], b"t1:")[-2:] == [b"MATCH", b"t1:*"]


def test_match_inside_the_prefix_passes_and_always_ends_the_line():
    args = [b"SCAN", b"0", b"TYPE", b"string", b"MATCH", b"t1:user:*"]
    assert confine("scan", args, b"t1:") == args
    # Another option after the MATCH: the user's MATCH is repeated last, so Redis's last-wins
    # reading lands on it whatever the proxy made of the arguments before.
    args = [b"SCAN", b"0", b"MATCH", b"t1:user:*", b"TYPE", b"string"]
    assert confine("scan", args, b"t1:") == args + [b"MATCH", b"t1:user:*"]
    assert confine("keys", [b"KEYS", b"t1:*"], b"t1:") == [b"KEYS", b"t1:*"]


@pytest.mark.parametrize("pattern", [b"*", b"t*", b"t1*", b"t?:x", b"[t]1:*", b"t\\1:*", b"other:*"])
def test_a_pattern_that_could_match_outside_the_prefix_is_refused(pattern):
    assert confine("keys", [b"KEYS", pattern], b"t1:") is None
    assert confine("scan", [b"SCAN", b"0", b"MATCH", pattern], b"t1:") is None


def test_every_match_counts_not_only_the_last():
    assert confine("scan", [b"SCAN", b"0", b"MATCH", b"*", b"MATCH", b"t1:*"], b"t1:") is None


def test_glob_characters_in_the_prefix_are_escaped():
    assert escape(b"a*b[c]") == b"a\\*b\\[c]"
    assert confine("scan", [b"SCAN", b"0"], b"x[1]:") == [b"SCAN", b"0", b"MATCH", b"x\\[1]:*"]


def test_option_requires_one_plain_prefix():
    with pytest.raises(ConfigError) as e:
        build_config({"upstream": "127.0.0.1:1",
                      "users": {"u": {"rules": "on ~a:* ~b:* +scan", "confine_scan": True}}})
    assert e.value.problems[0].startswith("users.u.confine_scan: needs rules")


@pytest.mark.parametrize("version", ["7", "5"])
def test_scan_and_keys_through_the_proxy_see_only_the_prefix(request, version):
    srv = request.getfixturevalue({"7": "redis7", "5": "redis5"}[version])
    admin = srv.admin()
    admin.mset({"t1:a": 1, "t1:b": 2, "t2:secret": 3})
    users = {"t1": {"rules": f"on {pw_hash('pw')} ~t1:* +@read +@keyspace +scan +keys",
                    "confine_scan": True},
             "plain": f"on {pw_hash('pw')} ~t1:* +scan +keys"}
    runner = ProxyRunner({"upstream": srv.upstream, "users": users}).start()
    try:
        c = runner.client("t1", "pw")
        assert set(c.scan_iter()) == {b"t1:a", b"t1:b"}
        assert set(c.keys("t1:*")) == {b"t1:a", b"t1:b"}
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.keys("*")
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.scan(0, match="t*")
        with pytest.raises(redis.exceptions.NoPermissionError):   # without the option: refused
            runner.client("plain", "pw").scan(0)
    finally:
        runner.stop()
        admin.delete("t1:a", "t1:b", "t2:secret")
