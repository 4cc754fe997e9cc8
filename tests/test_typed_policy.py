"""The typed boundaries of the policy modules made `mypy --strict` (rules, memo, tasks,
cluster.slots/route/topology, audit): the named shapes that replaced positional tuples and
untyped values behave as the tuples did, the protocols rules asks of its collaborators are met by
what the config layer gives it, and pyproject's strict list is not vacuous.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from redisgate.telemetry import audit
from redisgate.protocol import commands
from redisgate.policy import rules
from redisgate.telemetry.audit import Event
from redisgate.cluster.route import AnySlot, Merge, SingleSlot, Split, merge_split, plan
from redisgate.cluster.slots import key_slot
from redisgate.protocol.commands import TABLE
from redisgate.asynq.scripts import KNOWN_SCRIPTS
from redisgate.policy.rules import ScriptJudge, parse_user
from redisgate.policy.scripts import ScriptPolicy

ROOT = Path(__file__).resolve().parent.parent


def _judge(user: rules.User, *words: str) -> rules.Denial | None:
    args = [w.encode() for w in words]
    spec = TABLE.lookup(args)
    assert spec is not None
    return user.judge(spec, args)


# ------------------------------------------------------------------ pyproject's strict list

def _strict_modules() -> tuple[list[str], list[str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    strict = [m for o in cfg.get("overrides", []) if o.get("disallow_untyped_defs")
              for m in ([o["module"]] if isinstance(o["module"], str) else o["module"])]
    return strict, cfg["files"]


def test_every_strict_module_is_one_mypy_checks():
    """A module in the strict overrides that `[tool.mypy] files` does not list is never checked:
    its strictness would be a promise nobody keeps."""
    strict, files = _strict_modules()
    assert strict
    for module in strict:
        path = module.removesuffix(".*").replace(".", "/")
        if module.endswith(".*"):
            ok = any(f == path or f.startswith(path + "/") for f in files)
        else:
            ok = any(f in (path + ".py", path + "/__init__.py", path)
                     or path.startswith(f.rstrip("/") + "/") for f in files)
        assert ok, f"{module} is in the strict list but not in [tool.mypy] files"


def _covered(module: str, strict: list[str]) -> bool:
    return any(module == m or (m.endswith(".*") and (module == m[:-2]
                                                     or module.startswith(m[:-1])))
               for m in strict)


def test_the_sans_io_packages_are_strict_whole():
    """protocol, policy and session (and asynq) are held to `mypy --strict` as packages, so a
    module added there is too; and every module of theirs exists where mypy looks."""
    strict, files = _strict_modules()
    for package in ("protocol", "policy", "session", "asynq"):
        assert f"redisgate.{package}.*" in strict and f"redisgate/{package}" in files
        modules = sorted((ROOT / "redisgate" / package).glob("*.py"))
        assert modules, package
    for module in ("redisgate.policy.rules", "redisgate.policy.memo", "redisgate.io.tasks",
                   "redisgate.telemetry.audit", "redisgate.cluster.slots",
                   "redisgate.cluster.route", "redisgate.cluster.topology",
                   "redisgate.policy.secret_config", "redisgate.session.machine"):
        assert _covered(module, strict), module


# ------------------------------------------------------------------ rules

def test_a_selector_key_pattern_is_named_and_a_repeat_adds_its_flags():
    u = parse_user("u", "on nopass +get %R~a:* ~b:* %W~a:*")
    root = u._state.selectors[0]
    assert [(kp.pattern, kp.flags) for kp in root.patterns] == [
        (b"a:*", rules.READ | rules.WRITE), (b"b:*", rules.ALL)]
    assert u.describe().startswith("on nopass ~a:* ~b:* resetchannels")


def test_the_relevant_refusal_orders_by_rank_then_position():
    r = rules._Refusal
    assert r(2, 0, "key", b"k") > r(1, 0, "command", "get")          # a key beats the command
    assert r(4, 0, "channel", b"c") > r(2, 5, "key", b"k")            # a channel beats a key
    assert r(2, 3, "key", b"k3")[:2] > r(2, 1, "key", b"k1")[:2]      # then the later argument
    # As the walk reports it: the selector that got as far as the later key wins.
    u = parse_user("u", ["on", "nopass", "+mget", "~x", "(+mget ~a)"])   # a fails first, x later
    d = _judge(u, "MGET", "a", "x")
    assert d is not None and (d.kind, d.object) == ("key", b"x")


def test_a_command_table_stand_in_is_a_command_source():
    """parse_user(table=) takes anything with commands.py's catalogue functions (the module
    itself is one); a CommandTable other than commands.TABLE has no categories of its own."""
    u = parse_user("u", "on nopass +@string ~k:*", table=commands)
    assert _judge(u, "GET", "k:1") is None
    d = _judge(u, "GET", "other")
    assert d is not None and d.kind == "key"
    assert parse_user("u", "on +get", table=TABLE).describe() == \
        parse_user("u", "on +get").describe()
    with pytest.raises(TypeError, match="CommandSource"):
        parse_user("u", "on +get", table=commands._load())


def test_copy_and_select_check_a_database_that_is_not_an_integer():
    u = parse_user("u", "on nopass +@all ~k:*")
    assert _judge(u, "COPY", "k:1", "k:2", "DB", "0") is None
    for db in ("1", "x", "0x0", ""):
        d = _judge(u, "COPY", "k:1", "k:2", "DB", db)
        assert d is not None and d.kind == "keyspace", db
    assert _judge(u, "SELECT", "0") is None
    d = _judge(u, "SELECT", "zero")
    assert d is not None and d.kind == "keyspace"


class _NoShaPolicy:
    """A script policy with `judge` only (no `by_sha`): rules asks it, and nothing else."""

    def __init__(self) -> None:
        self.asked = 0

    def judge(self, user: rules.User, spec: commands.CommandSpec,
              args: list[bytes]) -> rules.Denial | None:
        self.asked += 1
        return None


def test_a_script_policy_needs_judge_only_and_by_sha_is_optional():
    policy: ScriptJudge = _NoShaPolicy()
    u = parse_user("u", "on nopass -@all +evalsha ~asynq:*")
    u.scripts = policy
    sha = "a" * 40
    assert _judge(u, "EVALSHA", sha, "1", "asynq:{q}:pending") is None
    assert isinstance(policy, _NoShaPolicy) and policy.asked == 1
    spec = TABLE.lookup([b"EVALSHA"])
    assert spec is not None
    assert u.lane_script(spec, [b"EVALSHA", sha.encode(), b"1", b"asynq:{q}:pending"]) is None


def test_the_config_layers_script_policy_meets_the_protocols():
    """ScriptPolicy is what config.py sets as `User.scripts`; its by_sha values are True or a
    compiled contract with honoured/lane_form (rules.ScriptCheck)."""
    policy = ScriptPolicy(allowed_shas=list(KNOWN_SCRIPTS)[:5])
    assert callable(policy.judge)
    for check in policy.by_sha.values():
        assert check is True or (callable(check.honoured) and callable(check.lane_form))


# ------------------------------------------------------------------ cluster

def test_a_split_command_uses_its_named_shape():
    keys = [b"a", b"b", b"c"]
    assert len({key_slot(k) for k in keys}) > 1
    p = plan(TABLE.lookup([b"MSET"]), [b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"])
    assert isinstance(p, Split) and p.merge is Merge.OK
    assert sorted(a for g in p.groups for a in g.args[1:]) == sorted(
        [b"a", b"1", b"b", b"2", b"c", b"3"])
    # MSET's step is 2: an odd number of arguments is not split (Redis refuses it by arity).
    assert not isinstance(plan(TABLE.lookup([b"MGET"]), [b"MGET", b"a"]), Split)
    assert isinstance(plan(TABLE.lookup([b"MGET"]), [b"MGET", b"a"]), SingleSlot)
    assert isinstance(plan(TABLE.lookup([b"PING"]), [b"PING"]), AnySlot)
    d = plan(TABLE.lookup([b"DEL"]), [b"DEL"] + keys)
    assert isinstance(d, Split)
    assert merge_split(d, [b":1\r\n"] * len(d.groups)) == b":%d\r\n" % len(d.groups)


# ------------------------------------------------------------------ audit

def test_the_auth_fallback_text_line_names_the_password_or_a_dash():
    e = Event("upstream-auth-fallback", reason="previous password", ok=True)
    assert e.text() is not None and "password=previous ok=true" in (e.text() or "")
    for reason in (None, "", "   "):
        line = Event("upstream-auth-fallback", reason=reason, ok=False).text()
        assert line is not None and "password=- ok=false" in line
    assert audit.AuditRecord == dict[str, object]
