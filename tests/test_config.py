"""Configuration loading: secret references, refusals of plaintext, precise messages."""
from __future__ import annotations

import hashlib

import pytest

from redisgate.config import ConfigError, build_config, load_config, tokenize_rules

H = "#" + hashlib.sha256(b"pw").hexdigest()


def problems(raw, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        build_config(raw, **kw)
    return e.value.problems


def test_minimal_config_loads_with_defaults():
    cfg = build_config({"upstream": {"address": "127.0.0.1:6379"}, "users": {"u": f"on {H} +ping"}})
    assert [(lst.host, lst.port) for lst in cfg.listeners] == [("127.0.0.1", 6380)]
    assert cfg.upstream.db == 0 and cfg.upstream.password is None
    assert cfg.users["u"].user.check_password(b"pw")


def test_literal_password_in_rules_is_refused_without_echoing_it():
    msgs = problems({"upstream": "127.0.0.1:6379", "users": {"u": "on >hunter2 +ping"}})
    assert any(m.startswith("users.u.rules: a literal password") for m in msgs)
    assert not any("hunter2" in m for m in msgs)


def test_password_from_environment_is_kept_only_as_a_hash(monkeypatch):
    monkeypatch.setenv("U_PW", "from-env")
    cfg = build_config({"upstream": "127.0.0.1:6379", "users": {"u": "on >${U_PW} +ping"}})
    user = cfg.users["u"].user
    assert user.check_password(b"from-env") and not user.check_password(b"x")
    assert "from-env" not in user.to_acl_rules()


def test_password_from_file(tmp_path):
    (tmp_path / "pw").write_text("from-file\n")
    cfg = build_config({"upstream": "127.0.0.1:6379", "users": {"u": "on >${file:pw} +ping"}},
                       base_dir=tmp_path)
    assert cfg.users["u"].user.check_password(b"from-file")


def test_missing_environment_variable_is_named():
    msgs = problems({"upstream": {"address": "127.0.0.1:6379", "password": "${NOPE_NOT_SET}"},
                     "users": {"u": f"on {H}"}})
    assert msgs == ["upstream.password: environment variable NOPE_NOT_SET is not set"]


def test_literal_upstream_password_is_a_warning():
    cfg = build_config({"upstream": {"address": "127.0.0.1:6379", "password": "plain"},
                        "users": {"u": f"on {H}"}})
    assert any(w.startswith("upstream.password: a literal password") for w in cfg.warnings)
    assert cfg.upstream.password == b"plain"


def test_every_problem_is_reported_with_its_place():
    msgs = problems({"listen": "nowhere", "upstream": {"address": "x:99999", "db": -1},
                     "users": {"a": "on +nosuchcommand", "b": {"rules": "on", "bogus": 1}},
                     "extra": 1})
    assert "extra: unknown setting" in msgs[0]
    joined = "\n".join(msgs)
    assert "listen: expected 'host:port', got 'nowhere'" in joined
    assert "upstream.address: port must be 1-65535, got '99999'" in joined
    assert "upstream.db: expected a database number >= 0, got -1" in joined
    assert "users.a.rules:" in joined and "nosuchcommand" in joined
    assert "users.b.bogus: unknown setting" in joined


def test_no_users_is_an_error():
    assert "users: no users are configured; nobody could connect" in problems({"upstream": "127.0.0.1:1"})


def test_unreadable_or_invalid_yaml_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read" in e.value.problems[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("users: [unclosed")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "not valid YAML" in e.value.problems[0]


def test_users_from_an_aclfile(tmp_path):
    (tmp_path / "users.acl").write_text(f"user cache on {H} ~cache:* +get\n")
    cfg = build_config({"upstream": "127.0.0.1:6379", "acl_file": "users.acl"}, base_dir=tmp_path)
    assert set(cfg.users) == {"cache"}


def test_aclfile_plaintext_password_is_refused(tmp_path):
    (tmp_path / "users.acl").write_text("user cache on >secret ~cache:* +get\n")
    msgs = problems({"upstream": "127.0.0.1:6379", "acl_file": "users.acl"}, base_dir=tmp_path)
    assert any("acl_file:cache.rules: a literal password" in m for m in msgs)


def test_listen_list_with_tls_and_certificate_user():
    cfg = build_config({"listen": [{"address": "127.0.0.1:6380"}, {"address": "[::1]:6443"}],
                        "upstream": "127.0.0.1:6379",
                        "users": {"w": {"rules": "on +ping", "certificate": {"cn": "w"}}}})
    assert [(lst.host, lst.port) for lst in cfg.listeners] == [("127.0.0.1", 6380), ("::1", 6443)]
    assert cfg.users["w"].certificate == {"cn": "w"}


def test_bad_certificate_selector():
    msgs = problems({"upstream": "127.0.0.1:6379",
                     "users": {"w": {"rules": "on +ping", "certificate": {"email": "x"}}}})
    assert msgs[0].startswith("users.w.certificate: expected exactly one of")


def test_user_without_any_way_to_log_in_is_a_warning():
    cfg = build_config({"upstream": "127.0.0.1:6379", "users": {"u": "on +ping"}})
    assert any("nobody can log in" in w for w in cfg.warnings)


def test_selector_is_one_token():
    assert tokenize_rules("on ~a (+get ~b) +set") == ["on", "~a", "(+get ~b)", "+set"]


def test_missing_upstream_means_embedded_unless_required():
    cfg = build_config({"users": {"u": f"on {H}"}})
    assert cfg.upstream.embedded
    assert "upstream: required (no embedded default here)" in problems(
        {"users": {"u": f"on {H}"}}, allow_embedded=False)


def test_script_permission_flags_reach_the_script_policy():
    cfg = build_config({"upstream": "127.0.0.1:6379", "users": {
        "ops": {"rules": f"on {H} allkeys +@all", "allow_flush": True, "allow_function": True}}})
    policy = cfg.users["ops"].user.scripts
    assert policy.allow_flush and policy.allow_function and not policy.allow_kill


def test_script_permission_flag_must_be_boolean():
    msgs = problems({"upstream": "127.0.0.1:6379",
                     "users": {"u": {"rules": f"on {H}", "allow_flush": "yes"}}})
    assert msgs == ["users.u.allow_flush: expected true or false, got 'yes'"]
