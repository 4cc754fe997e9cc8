"""scripts.py: the SHA1 table, ScriptPolicy's decisions, and own scripts bound to a known
contract (``scripts: [{sha1: ..., like: dequeueCmd}]``, through config.py too).

Asynq's scripts appear here only by their SHA1s (REDIS-USAGE.md §5, facts); the bodies sent are
our own (tests/asynq_lua/). The policy tests are sans-I/O (real rules.User and commands.TABLE, no
server); only the test that our bodies compile talks to Redis 7.0 and 5.0.
"""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

import asynq_reference
import asynq_workload as w
from asynq_workload import redis5  # noqa: F401 (this module's redis5: a RESP2 admin client)
from redisgate.policy import scripts
from redisgate.protocol.commands import TABLE
from redisgate.config import ConfigError, build_config
from redisgate.asynq.profiles import load_profile
from redisgate.asynq.scripts import KNOWN_SCRIPTS, SCRIPT_NAMES, SCRIPT_SETS
from redisgate.policy.rules import parse_user
from redisgate.policy.scripts import (ScriptListError, ScriptPolicy, expand_script_names,
                                      resolve_scripts)

EXPECTED = asynq_reference.expected_shas()
ASYNQ = EXPECTED["main"]                                 # Asynq's SHA1s at main, by name
ASYNQ_V024 = EXPECTED["v0.24.1"]
REFERENCE_NAMES = {sha: name for table in EXPECTED.values() for name, sha in table.items()}
OWN = {name: s.sha for name, s in w.SCRIPTS.items()}    # our SHA1s, by the name they imitate
BODY = {name: s.body for name, s in w.SCRIPTS.items()}




# --- our own scripts --------------------------------------------------------------------------

def test_there_is_an_own_script_for_every_known_script_name():
    assert set(w.SCRIPTS) == SCRIPT_NAMES


def test_no_own_script_hashes_to_an_asynq_sha1():
    assert not set(OWN.values()) & set(REFERENCE_NAMES)
    assert not set(OWN.values()) & set(KNOWN_SCRIPTS)


def test_every_own_script_compiles_to_its_sha1(any_upstream):
    admin = any_upstream.admin()
    for name, body in BODY.items():
        assert admin.script_load(body) == OWN[name], name


def test_own_script_entries_bind_each_script_to_the_name_it_imitates():
    entries = w.own_script_entries(["dequeueCmd", "doneCmd", "noSuchCmd"])
    assert entries == [{"sha1": OWN["dequeueCmd"], "like": "dequeueCmd"},
                       {"sha1": OWN["doneCmd"], "like": "doneCmd"}]


# --- the reference table ----------------------------------------------------------------------

def test_frozen_reference_copy_agrees_with_the_shared_reference():
    if not asynq_reference.REFERENCE.exists():
        pytest.skip("the shared REDIS-USAGE.md is not on this machine")
    frozen = json.loads(asynq_reference.FROZEN.read_text())
    assert frozen == asynq_reference.parse(asynq_reference.REFERENCE.read_text())


@pytest.mark.parametrize("release", asynq_reference.RELEASES)
def test_known_scripts_of_each_release_are_exactly_the_reference_table(release):
    ours = {c.sha1: c.name for c in KNOWN_SCRIPTS.values() if release in c.releases}
    theirs = {sha: name for name, sha in EXPECTED[release].items()}
    assert ours == theirs


@pytest.mark.parametrize("line", ["v0.24", "v0.25", "v0.26", "main"])
def test_named_release_set_is_the_union_of_its_patch_releases(line):
    releases = [r for r in asynq_reference.RELEASES if r == line or r.startswith(line + ".")]
    union = set().union(*(EXPECTED[r].values() for r in releases))
    assert SCRIPT_SETS[f"asynq-{line}"] == union


def test_contract_numkeys_follow_the_reference_layouts():
    # The KEYS counts of REDIS-USAGE.md §4, spot-checked where they vary between versions.
    assert KNOWN_SCRIPTS[ASYNQ["archiveCmd"]].numkeys == 9
    assert KNOWN_SCRIPTS[ASYNQ_V024["archiveCmd"]].numkeys == 8
    assert KNOWN_SCRIPTS[ASYNQ["currentStatsCmd"]].numkeys == 12
    assert KNOWN_SCRIPTS[ASYNQ["historicalStatsCmd"]].numkeys is None


# --- expand_script_names ----------------------------------------------------------------------

def test_expand_accepts_sha1_in_any_case_and_lowercases_it():
    sha = ASYNQ["enqueueCmd"]
    assert expand_script_names([sha.upper()]) == {sha}


def test_expand_script_name_covers_every_version_of_that_script():
    assert expand_script_names(["archiveCmd"]) == {ASYNQ["archiveCmd"], ASYNQ_V024["archiveCmd"]}


def test_expand_role_at_line_intersects_role_and_release():
    got = expand_script_names(["asynq-worker@v0.24"])
    assert ASYNQ_V024["archiveCmd"] in got and ASYNQ["archiveCmd"] not in got
    assert ASYNQ["enqueueCmd"] in got and ASYNQ["currentStatsCmd"] not in got


@pytest.mark.parametrize("bad", ["asynq-v0.23", "nope", "abc123", "asynq-worker@v9", "0" * 39])
def test_expand_refuses_unknown_names_with_the_item_in_the_message(bad):
    with pytest.raises(ValueError, match="unknown script"):
        expand_script_names([bad])


def test_policy_refuses_a_malformed_sha1_at_construction():
    with pytest.raises(ValueError, match="not a SHA1"):
        ScriptPolicy(["xyz"])
    with pytest.raises(ValueError, match="not a SHA1"):
        ScriptPolicy((), custom={"xyz": KNOWN_SCRIPTS[ASYNQ["dequeueCmd"]]})


# --- ScriptPolicy.judge (sans-I/O) ------------------------------------------------------------

def b(*args) -> list[bytes]:
    return [a if isinstance(a, bytes) else str(a).encode() for a in args]


def user_for(profile: str, queues=None, own: bool = True):
    """A user of ``profile`` whose policy also binds our scripts for that profile's names."""
    tokens, shas = load_profile(profile, queues)
    user = parse_user("u", ["on", "nopass"] + tokens)
    custom = resolve_scripts(w.entries_for_profiles(profile))[1] if own else {}
    user.scripts = ScriptPolicy(shas, custom=custom)
    return user


def judge(user, args):
    return user.judge(TABLE.lookup(args), args)


def dequeue_args(q="default", prefix=None, op="evalsha", head=None):
    head = head or ASYNQ["dequeueCmd"]
    return b(op, head, 4, f"asynq:{{{q}}}:pending", f"asynq:{{{q}}}:paused",
             f"asynq:{{{q}}}:active", f"asynq:{{{q}}}:lease", 1700000000,
             prefix or f"asynq:{{{q}}}:t:")


WORKER = user_for("asynq-worker")
WORKER_DEFAULT = user_for("asynq-worker", ["default"])


def test_evalsha_of_an_allowlisted_script_passes():
    assert judge(WORKER, dequeue_args()) is None


def test_evalsha_sha1_is_case_insensitive_as_in_redis():
    assert judge(WORKER, dequeue_args(head=ASYNQ["dequeueCmd"].upper())) is None


def test_evalsha_of_a_script_off_the_allowlist_is_refused_naming_script_and_sha():
    # The producer may name the pending list, but not run the admin's deleteAllPendingCmd on it.
    args = b("evalsha", ASYNQ["deleteAllPendingCmd"], 1, "asynq:{q}:pending", "asynq:{q}:t:")
    d = judge(user_for("asynq-producer"), args)
    assert d.kind == "script"
    assert "deleteAllPendingCmd" in d.reason and ASYNQ["deleteAllPendingCmd"] in d.reason
    assert d.reply((7, 0, 0)).startswith(b"-NOPERM")


def test_evalsha_of_an_unknown_sha1_is_refused():
    d = judge(WORKER, b("evalsha", "ab" * 20, 1, "asynq:{default}:pending"))
    assert d.kind == "script" and "ab" * 20 in d.reason


def test_evalsha_with_a_non_hex_digest_is_refused():
    d = judge(WORKER, b("evalsha", "not-a-sha", 1, "asynq:{default}:pending"))
    assert d.kind == "script" and "not a SHA1" in d.reason


def test_eval_passes_when_the_body_hashes_to_an_allowlisted_sha1():
    assert judge(WORKER, dequeue_args(op="eval", head=BODY["dequeueCmd"])) is None


def test_eval_of_an_altered_body_is_refused():
    d = judge(WORKER, dequeue_args(op="eval", head=BODY["dequeueCmd"] + b" "))
    assert d.kind == "script"
    assert hashlib.sha1(BODY["dequeueCmd"] + b" ").hexdigest() in d.reason


def test_evalsha_ro_and_eval_ro_follow_the_same_allowlist():
    policy = ScriptPolicy((), custom=resolve_scripts(w.own_script_entries(["listMessagesCmd"]))[1])
    u = SimpleNamespace(check_key=lambda key, write: True)
    args = b("evalsha_ro", OWN["listMessagesCmd"], 1, "asynq:{q}:pending", 0, 1, "asynq:{q}:t:")
    assert policy.judge(u, SimpleNamespace(name="evalsha_ro"), args) is None
    args[1] = BODY["listMessagesCmd"]
    assert policy.judge(u, SimpleNamespace(name="eval_ro"), args) is None
    args[1] = b"return 1"
    assert policy.judge(u, SimpleNamespace(name="eval_ro"), args).kind == "script"


def test_script_load_passes_only_allowlisted_bodies():
    producer = user_for("asynq-producer")
    assert judge(producer, b("script", "load", BODY["enqueueCmd"])) is None
    d = judge(producer, b("script", "load", BODY["dequeueCmd"]))
    assert d.kind == "script" and OWN["dequeueCmd"] in d.reason


@pytest.mark.parametrize("sub", ["flush", "kill", "debug"])
def test_script_flush_kill_debug_are_refused_unless_explicitly_allowed(sub):
    spec = SimpleNamespace(name=f"script|{sub}")
    args = b("script", sub, *(["yes"] if sub == "debug" else []))
    u = SimpleNamespace()
    d = ScriptPolicy(SCRIPT_SETS["asynq-all"]).judge(u, spec, args)
    assert d.kind == "script" and f"allow_{sub}" in d.reason
    assert ScriptPolicy((), **{f"allow_{sub}": True}).judge(u, spec, args) is None


def test_script_exists_is_allowed():
    spec = SimpleNamespace(name="script|exists")
    assert ScriptPolicy(()).judge(None, spec, b("script", "exists", ASYNQ["enqueueCmd"])) is None


@pytest.mark.parametrize("args", [b("fcall", "f", 0), b("fcall_ro", "f", 0),
                                  b("function", "load", "#!lua name=x\n"),
                                  b("function", "delete", "x")])
def test_functions_are_refused_unless_allow_function(args):
    spec = TABLE.lookup(args)
    d = ScriptPolicy(SCRIPT_SETS["asynq-all"]).judge(None, spec, args)
    assert d.kind == "script" and "allow_function" in d.reason
    assert ScriptPolicy((), allow_function=True).judge(None, spec, args) is None


def test_an_empty_policy_refuses_every_script():
    u = SimpleNamespace(check_key=lambda key, write: True)
    assert ScriptPolicy(()).judge(u, TABLE.lookup(dequeue_args()), dequeue_args()).kind == "script"


def test_non_script_commands_are_not_the_policys_business():
    assert ScriptPolicy(()).judge(None, TABLE.lookup(b("get", "k")), b("get", "k")) is None


def test_allow_any_script_lifts_the_allowlist_but_keeps_known_contracts():
    policy = ScriptPolicy((), allow_any_script=True)
    u = SimpleNamespace(has_allkeys=True)
    assert policy.judge(u, SimpleNamespace(name="evalsha"), b("evalsha", "ab" * 20, 0)) is None
    bad = dequeue_args(prefix="asynq:{other}:t:")
    assert policy.judge(u, SimpleNamespace(name="evalsha"), bad).kind == "script"


# --- contracts --------------------------------------------------------------------------------

def test_argv_task_prefix_of_another_queue_is_refused():
    d = judge(WORKER, dequeue_args(prefix="asynq:{other}:t:"))
    assert d.kind == "script"
    assert "ARGV[2]" in d.reason and "asynq:{default}:t:" in d.reason and "dequeueCmd" in d.reason


def test_argv_prefix_outside_the_queue_namespace_is_refused():
    d = judge(WORKER, dequeue_args(prefix="session:"))
    assert d.kind == "script" and "ARGV[2]" in d.reason


def test_keys_of_two_queues_in_one_call_are_refused():
    args = dequeue_args()
    args[5] = b"asynq:{other}:active"
    d = judge(WORKER, args)
    assert d.kind == "script" and "KEYS[3]" in d.reason and "same queue" in d.reason


def test_a_key_of_the_wrong_shape_is_refused():
    args = dequeue_args()
    args[6] = b"asynq:{default}:t:123"          # KEYS[4] must be the lease ZSET
    d = judge(WORKER, args)
    assert d.kind == "script" and "KEYS[4] must look like asynq:{Q}:lease" in d.reason


def test_wrong_numkeys_is_refused():
    args = b("evalsha", ASYNQ["dequeueCmd"], 3, "asynq:{default}:pending",
             "asynq:{default}:paused", "asynq:{default}:active", "asynq:{default}:lease",
             "asynq:{default}:t:")
    d = judge(WORKER, args)
    assert d.kind == "script" and "takes 4 KEYS, got 3" in d.reason


ARCHIVE_KEYS = ("t:1", "active", "lease", "archived", "processed:2024-01-01", "failed:2024-01-01",
                "processed", "failed")


def test_archive_v024_sha1_with_main_layout_is_refused():
    keys = [f"asynq:{{q}}:{s}" for s in ARCHIVE_KEYS + ("t:",)]
    argv = [1, "m", 1, 0, 10000, 2, 9]
    assert judge(WORKER, b("evalsha", ASYNQ["archiveCmd"], 9, *keys, *argv)) is None
    d = judge(WORKER, b("evalsha", ASYNQ_V024["archiveCmd"], 9, *keys, *argv))
    assert d.kind == "script" and "takes 8 KEYS" in d.reason


def test_archive_keys9_must_be_the_bare_task_prefix():
    keys = [f"asynq:{{q}}:{s}" for s in ARCHIVE_KEYS + ("t:x",)]
    d = judge(WORKER, b("evalsha", ASYNQ["archiveCmd"], 9, *keys, 1, "m", 1, 0, 10000, 2, 9))
    assert d.kind == "script" and "KEYS[9]" in d.reason


def test_stats_day_key_must_carry_a_date():
    keys = ["asynq:{q}:active", "asynq:{q}:lease", "asynq:{q}:t:1", "asynq:{q}:processed:x",
            "asynq:{q}:processed"]
    d = judge(WORKER, b("evalsha", ASYNQ["doneCmd"], 5, *keys, 1, 2, 3))
    assert d.kind == "script" and "KEYS[4]" in d.reason


def test_queue_name_containing_a_brace_never_satisfies_a_contract():
    # asynq builds asynq:{a}b}:pending for queue "a}b": Redis hashes "a", so the keys are not
    # one queue's slot and the ARGV prefix cannot be matched to them.
    args = dequeue_args(q="a}b")
    d = ScriptPolicy(SCRIPT_SETS["asynq-worker"]).judge(SimpleNamespace(has_allkeys=True),
                                                        TABLE.lookup(args), args)
    assert d.kind == "script" and "KEYS[1]" in d.reason


def test_historical_stats_takes_processed_failed_pairs():
    inspector = user_for("asynq-inspector")
    good = b("evalsha", ASYNQ["historicalStatsCmd"], 4, "asynq:{q}:processed:2024-01-02",
             "asynq:{q}:failed:2024-01-02", "asynq:{q}:processed:2024-01-01",
             "asynq:{q}:failed:2024-01-01")
    assert judge(inspector, good) is None
    odd = good[:2] + [b"3"] + good[3:6]
    assert "multiple of 2" in judge(inspector, odd).reason


def test_server_state_keys_must_share_one_hash_tag():
    args = b("evalsha", ASYNQ["writeServerStateCmd"], 2, "asynq:servers:{h:1:a}",
             "asynq:workers:{h:1:b}", "10", "info")
    d = judge(WORKER, args)
    assert d.kind == "script" and "same hash tag" in d.reason
    args[4] = b"asynq:workers:{h:1:a}"
    assert judge(WORKER, args) is None


def test_missing_prefix_argument_is_refused():
    args = dequeue_args()[:-1]
    d = judge(WORKER, args)
    assert d.kind == "script" and "needs at least 2 ARGV" in d.reason


def test_argv_prefix_must_pass_the_users_key_patterns():
    # A user whose KEYS patterns cover the lease ZSET but not the task hashes may not run a
    # script that writes task hashes through the ARGV prefix.
    user = parse_user("u", ["on", "nopass", "+evalsha", "~asynq:{q}:pending", "~asynq:{q}:paused",
                            "~asynq:{q}:active", "~asynq:{q}:lease"])
    user.scripts = ScriptPolicy([ASYNQ["dequeueCmd"]])
    d = judge(user, dequeue_args(q="q"))
    assert d.kind == "script" and "may not write keys under it" in d.reason


def test_scoped_worker_cannot_pass_the_prefix_of_an_unlisted_queue():
    # KEYS of an allowed queue, ARGV prefix of another: the contract refuses it even where the
    # key patterns would allow both queues.
    both = user_for("asynq-worker", ["default", "other"])
    assert judge(both, dequeue_args(prefix="asynq:{other}:t:")).kind == "script"
    # KEYS of the unlisted queue never get as far as the script policy.
    assert judge(WORKER_DEFAULT, dequeue_args(q="other")).kind == "key"


def test_contract_check_reports_numkeys_that_is_not_a_number():
    contract = KNOWN_SCRIPTS[ASYNQ["dequeueCmd"]]
    assert "numkeys" in scripts.check_contract(contract, b("evalsha", ASYNQ["dequeueCmd"], "x"))


# --- own scripts bound to a known contract ----------------------------------------------------

def own_dequeue(**kw):
    return dequeue_args(head=OWN["dequeueCmd"], **kw)


def test_own_script_bound_like_dequeue_passes_with_the_dequeue_layout():
    assert judge(WORKER, own_dequeue()) is None


def test_own_script_bound_like_dequeue_is_refused_a_prefix_of_another_queue():
    d = judge(WORKER, own_dequeue(prefix="asynq:{other}:t:"))
    assert d.kind == "script"
    assert f"own script like dequeueCmd ({OWN['dequeueCmd']})" in d.reason
    assert "ARGV[2] (task key prefix) must be 'asynq:{default}:t:'" in d.reason


def test_eval_of_an_own_body_is_held_to_the_bound_contract():
    good = own_dequeue(op="eval")
    good[1] = BODY["dequeueCmd"]
    assert judge(WORKER, good) is None
    bad = own_dequeue(op="eval", prefix="session:")
    bad[1] = BODY["dequeueCmd"]
    assert "own script like dequeueCmd" in judge(WORKER, bad).reason


def test_own_script_bound_to_one_layout_is_refused_another():
    # Our doneCmd run with dequeueCmd's KEYS: the binding says doneCmd, so 5 KEYS.
    args = dequeue_args(head=OWN["doneCmd"])
    d = judge(WORKER, args)
    assert d.kind == "script" and "takes 5 KEYS, got 4" in d.reason


def test_unbound_own_script_is_refused_even_where_its_asynq_original_is_allowed():
    worker = user_for("asynq-worker", own=False)
    assert judge(worker, dequeue_args()) is None
    d = judge(worker, own_dequeue())
    assert d.kind == "script" and "not in this user's script allowlist" in d.reason


def test_own_scripts_are_bound_only_for_their_role():
    # The producer's policy binds the enqueue scripts, not our dequeueCmd.
    producer = user_for("asynq-producer")
    assert OWN["enqueueCmd"] in producer.scripts.allowed_shas
    assert OWN["dequeueCmd"] not in producer.scripts.allowed_shas


def test_bound_sha1s_are_on_the_allowlist():
    policy = ScriptPolicy((), custom=resolve_scripts(w.own_script_entries(["doneCmd"]))[1])
    assert policy.allows(OWN["doneCmd"]) and policy.allows(OWN["doneCmd"].upper())
    assert not policy.allows(ASYNQ["doneCmd"])


def test_like_takes_the_newest_layout_and_name_at_line_the_older_one():
    assert scripts.contract_like("archiveCmd").numkeys == 9
    assert scripts.contract_like("archiveCmd@v0.24").numkeys == 8
    assert scripts.contract_like(ASYNQ_V024["archiveCmd"]).numkeys == 8


def test_binding_keeps_the_layout_but_belongs_to_no_release():
    bound = scripts.bind_script(OWN["forwardCmd"], "forwardCmd")
    original = KNOWN_SCRIPTS[ASYNQ["forwardCmd"]]
    assert (bound.keys, bound.prefixes, bound.own) == (original.keys, original.prefixes, True)
    assert bound.releases == frozenset() and bound.sha1 == OWN["forwardCmd"]
    assert OWN["forwardCmd"] not in SCRIPT_SETS["asynq-all"]


def test_resolve_mixes_names_sets_and_bindings():
    shas, custom = resolve_scripts(["enqueueCmd", "asynq-rate",
                                    {"sha1": OWN["dequeueCmd"].upper(), "like": "dequeueCmd"}])
    assert shas == {ASYNQ["enqueueCmd"], ASYNQ["acquireCmd"], OWN["dequeueCmd"]}
    assert set(custom) == {OWN["dequeueCmd"]} and custom[OWN["dequeueCmd"]].name == "dequeueCmd"


def test_binding_the_same_sha1_twice_alike_is_fine():
    entry = {"sha1": OWN["doneCmd"], "like": "doneCmd"}
    assert set(resolve_scripts([entry, dict(entry)])[1]) == {OWN["doneCmd"]}


@pytest.mark.parametrize("item, path, why", [
    ({"sha1": "ab" * 20, "like": "x"}, "[0].like",
     "unknown script 'x' (known: acquireCmd, addToGroupCmd, "),
    ({"sha1": "ab" * 20, "like": "updateTaskPayloadCmd@v0.24"}, "[0].like",
     "updateTaskPayloadCmd does not exist in Asynq v0.24"),
    ({"sha1": "ab" * 20, "like": "dequeueCmd@v0.23"}, "[0].like",
     "unknown Asynq release line 'v0.23'"),
    ({"sha1": "ab" * 20, "like": "cd" * 20}, "[0].like", "is not the SHA1 of a known Asynq script"),
    ({"sha1": "xyz", "like": "dequeueCmd"}, "[0].sha1", "expected a 40-hex SHA1, got 'xyz'"),
    ({"sha1": 1234, "like": "dequeueCmd"}, "[0].sha1", "(quote it in YAML)"),
    ({"sha1": "ab" * 20, "like": ["dequeueCmd"]}, "[0].like", "expected a script name"),
    ({"sha1": "ab" * 20}, "[0]", "needs both 'sha1' and 'like' (missing: like)"),
    ({"sha1": "ab" * 20, "like": "dequeueCmd", "body": "x"}, "[0].body",
     "unknown setting (known: like, sha1)"),
    ({"sha1": ASYNQ["dequeueCmd"], "like": "dequeueCmd"}, "[0].sha1",
     "is Asynq's own dequeueCmd, which is already bound to its contract"),
    (3.5, "[0]", "expected a SHA1, a script or set name, or {sha1: ..., like: ...}"),
])
def test_bad_bindings_are_refused_naming_the_item_and_field(item, path, why):
    with pytest.raises(ScriptListError) as err:
        resolve_scripts([item])
    [(got_path, got_why)] = err.value.problems
    assert got_path == path and why in got_why


def test_one_sha1_bound_to_two_layouts_is_refused():
    with pytest.raises(ScriptListError) as err:
        resolve_scripts([{"sha1": "ab" * 20, "like": "archiveCmd"},
                         {"sha1": "ab" * 20, "like": "archiveCmd@v0.24"}])
    assert err.value.problems == [("[1].like", f"{'ab' * 20} is already bound to 'archiveCmd' "
                                               "at [0]")]


# --- through the config -----------------------------------------------------------------------

def config_with(scripts_list):
    return build_config({"upstream": "127.0.0.1:6379",
                         "users": {"worker": {"rules": "on nopass", "profile": "asynq-worker",
                                              "queues": ["default"],
                                              "scripts": scripts_list}}})


def test_config_binds_own_scripts_for_the_user():
    cfg = config_with(w.own_script_entries(["dequeueCmd"]) + ["asynq-rate"])
    worker = cfg.users["worker"].user
    assert judge(worker, own_dequeue()) is None
    assert "own script like dequeueCmd" in judge(worker, own_dequeue(prefix="asynq:{x}:t:")).reason
    assert ASYNQ["acquireCmd"] in worker.scripts.allowed_shas


def test_config_reports_every_bad_item_with_its_position():
    with pytest.raises(ConfigError) as err:
        config_with(["enqueueCmd", {"sha1": "ab" * 20, "like": "dequeueCmd"},
                     {"sha1": "cd" * 20, "like": "x"}, {"sha1": "zz", "like": "doneCmd"},
                     "nope"])
    problems = err.value.problems
    assert problems[0].startswith("users.worker.scripts[2].like: unknown script 'x' (known: "
                                  "acquireCmd, addToGroupCmd, addToGroupUniqueCmd, ")
    assert problems[1] == "users.worker.scripts[3].sha1: expected a 40-hex SHA1, got 'zz'"
    assert problems[2].startswith("users.worker.scripts[4]: unknown script 'nope'")
    assert len(problems) == 3


def test_config_scripts_must_be_a_list():
    with pytest.raises(ConfigError) as err:
        config_with({"sha1": "ab" * 20, "like": "dequeueCmd"})
    assert err.value.problems[0].startswith("users.worker.scripts: expected a list")
