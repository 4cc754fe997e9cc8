"""scripts.py: the stored Asynq script bodies, the SHA1 table, and ScriptPolicy's decisions.

The policy tests are sans-I/O (real rules.User and commands.TABLE, no server); only the test that
every body compiles talks to a real Redis 7.0.
"""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

import asynq_reference
from asynq_workload import SCRIPTS
from redisgate import scripts
from redisgate.commands import TABLE
from redisgate.profiles import load_profile
from redisgate.rules import parse_user
from redisgate.scripts import KNOWN_SCRIPTS, SCRIPT_SETS, ScriptPolicy, expand_script_names

EXPECTED = asynq_reference.expected_shas()
SHA = {name: s.sha for name, s in SCRIPTS.items()}
BODY = {name: s.body for name, s in SCRIPTS.items()}
REFERENCE_NAMES = {sha: name for table in EXPECTED.values() for name, sha in table.items()}


# --- the stored bodies ------------------------------------------------------------------------

@pytest.mark.parametrize("stem", sorted(SCRIPTS))
def test_stored_body_hashes_to_the_reference_sha1_of_its_script(stem):
    sha = hashlib.sha1(BODY[stem]).hexdigest()
    assert sha in REFERENCE_NAMES, f"{stem}.lua hashes to {sha}, which REDIS-USAGE.md §5 lacks"
    assert REFERENCE_NAMES[sha] == stem.split("-")[0]


def test_every_reference_sha1_with_a_stored_body_is_covered_except_the_two_unpublished():
    missing = set(REFERENCE_NAMES) - set(SHA.values())
    assert {REFERENCE_NAMES[s] for s in missing} == {"memoryUsageCmd", "updateTaskPayloadCmd"}
    assert missing == {"d658942234167601d28a4ff18fcae30090f0ccf5",
                       "a0bdc8d8212813666a7df7c612f4b6ee09df0b2d"}


def test_frozen_reference_copy_agrees_with_the_shared_reference():
    if not asynq_reference.REFERENCE.exists():
        pytest.skip("the shared REDIS-USAGE.md is not on this machine")
    frozen = json.loads(asynq_reference.FROZEN.read_text())
    assert frozen == asynq_reference.parse(asynq_reference.REFERENCE.read_text())


def test_every_stored_body_compiles_on_redis_7_to_its_sha1(redis7):
    admin = redis7.admin()
    for stem, body in BODY.items():
        assert admin.script_load(body) == SHA[stem], stem


# --- the contract table -----------------------------------------------------------------------

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


def test_contract_numkeys_match_what_the_workload_sends():
    # The KEYS counts of REDIS-USAGE.md §4, spot-checked where they vary between versions.
    assert KNOWN_SCRIPTS[SHA["archiveCmd"]].numkeys == 9
    assert KNOWN_SCRIPTS[SHA["archiveCmd-v0.24"]].numkeys == 8
    assert KNOWN_SCRIPTS[SHA["currentStatsCmd"]].numkeys == 12
    assert KNOWN_SCRIPTS[SHA["historicalStatsCmd"]].numkeys is None


# --- expand_script_names ----------------------------------------------------------------------

def test_expand_accepts_sha1_in_any_case_and_lowercases_it():
    sha = SHA["enqueueCmd"]
    assert expand_script_names([sha.upper()]) == {sha}


def test_expand_script_name_covers_every_version_of_that_script():
    assert expand_script_names(["archiveCmd"]) == {SHA["archiveCmd"], SHA["archiveCmd-v0.24"]}


def test_expand_role_at_line_intersects_role_and_release():
    got = expand_script_names(["asynq-worker@v0.24"])
    assert SHA["archiveCmd-v0.24"] in got and SHA["archiveCmd"] not in got
    assert SHA["enqueueCmd"] in got and SHA["currentStatsCmd"] not in got


@pytest.mark.parametrize("bad", ["asynq-v0.23", "nope", "abc123", "asynq-worker@v9", "0" * 39])
def test_expand_refuses_unknown_names_with_the_item_in_the_message(bad):
    with pytest.raises(ValueError, match="unknown script"):
        expand_script_names([bad])


def test_policy_refuses_a_malformed_sha1_at_construction():
    with pytest.raises(ValueError, match="not a SHA1"):
        ScriptPolicy(["xyz"])


# --- ScriptPolicy.judge (sans-I/O) ------------------------------------------------------------

def b(*args) -> list[bytes]:
    return [a if isinstance(a, bytes) else str(a).encode() for a in args]


def user_for(profile: str, queues=None):
    tokens, shas = load_profile(profile, queues)
    user = parse_user("u", ["on", "nopass"] + tokens)
    user.scripts = ScriptPolicy(shas)
    return user


def judge(user, args):
    return user.judge(TABLE.lookup(args), args)


def dequeue_args(q="default", prefix=None, op="evalsha", head=None):
    head = head or SHA["dequeueCmd"]
    return b(op, head, 4, f"asynq:{{{q}}}:pending", f"asynq:{{{q}}}:paused",
             f"asynq:{{{q}}}:active", f"asynq:{{{q}}}:lease", 1700000000,
             prefix or f"asynq:{{{q}}}:t:")


WORKER = user_for("asynq-worker")
WORKER_DEFAULT = user_for("asynq-worker", ["default"])


def test_evalsha_of_an_allowlisted_script_passes():
    assert judge(WORKER, dequeue_args()) is None


def test_evalsha_sha1_is_case_insensitive_as_in_redis():
    assert judge(WORKER, dequeue_args(head=SHA["dequeueCmd"].upper())) is None


def test_evalsha_of_a_script_off_the_allowlist_is_refused_naming_script_and_sha():
    # The producer may name the pending list, but not run the admin's deleteAllPendingCmd on it.
    args = b("evalsha", SHA["deleteAllPendingCmd"], 1, "asynq:{q}:pending", "asynq:{q}:t:")
    d = judge(user_for("asynq-producer"), args)
    assert d.kind == "script"
    assert "deleteAllPendingCmd" in d.reason and SHA["deleteAllPendingCmd"] in d.reason
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
    policy = ScriptPolicy([SHA["listMessagesCmd"]])
    u = SimpleNamespace(check_key=lambda key, write: True)
    args = b("evalsha_ro", SHA["listMessagesCmd"], 1, "asynq:{q}:pending", 0, 1, "asynq:{q}:t:")
    assert policy.judge(u, SimpleNamespace(name="evalsha_ro"), args) is None
    args[1] = BODY["listMessagesCmd"]
    assert policy.judge(u, SimpleNamespace(name="eval_ro"), args) is None
    args[1] = b"return 1"
    assert policy.judge(u, SimpleNamespace(name="eval_ro"), args).kind == "script"


def test_script_load_passes_only_allowlisted_bodies():
    producer = user_for("asynq-producer")
    assert judge(producer, b("script", "load", BODY["enqueueCmd"])) is None
    d = judge(producer, b("script", "load", BODY["dequeueCmd"]))
    assert d.kind == "script" and "dequeueCmd" in d.reason


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
    assert ScriptPolicy(()).judge(None, spec, b("script", "exists", SHA["enqueueCmd"])) is None


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
    args = b("evalsha", SHA["dequeueCmd"], 3, "asynq:{default}:pending", "asynq:{default}:paused",
             "asynq:{default}:active", "asynq:{default}:lease", "asynq:{default}:t:")
    d = judge(WORKER, args)
    assert d.kind == "script" and "takes 4 KEYS, got 3" in d.reason


ARCHIVE_KEYS = ("t:1", "active", "lease", "archived", "processed:2024-01-01", "failed:2024-01-01",
                "processed", "failed")


def test_archive_v024_body_with_main_layout_is_refused():
    keys = [f"asynq:{{q}}:{s}" for s in ARCHIVE_KEYS + ("t:",)]
    argv = [1, "m", 1, 0, 10000, 2, 9]
    assert judge(WORKER, b("evalsha", SHA["archiveCmd"], 9, *keys, *argv)) is None
    d = judge(WORKER, b("evalsha", SHA["archiveCmd-v0.24"], 9, *keys, *argv))
    assert d.kind == "script" and "takes 8 KEYS" in d.reason


def test_archive_keys9_must_be_the_bare_task_prefix():
    keys = [f"asynq:{{q}}:{s}" for s in ARCHIVE_KEYS + ("t:x",)]
    d = judge(WORKER, b("evalsha", SHA["archiveCmd"], 9, *keys, 1, "m", 1, 0, 10000, 2, 9))
    assert d.kind == "script" and "KEYS[9]" in d.reason


def test_stats_day_key_must_carry_a_date():
    keys = ["asynq:{q}:active", "asynq:{q}:lease", "asynq:{q}:t:1", "asynq:{q}:processed:x",
            "asynq:{q}:processed"]
    d = judge(WORKER, b("evalsha", SHA["doneCmd"], 5, *keys, 1, 2, 3))
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
    good = b("evalsha", SHA["historicalStatsCmd"], 4, "asynq:{q}:processed:2024-01-02",
             "asynq:{q}:failed:2024-01-02", "asynq:{q}:processed:2024-01-01",
             "asynq:{q}:failed:2024-01-01")
    assert judge(inspector, good) is None
    odd = good[:2] + [b"3"] + good[3:6]
    assert "multiple of 2" in judge(inspector, odd).reason


def test_server_state_keys_must_share_one_hash_tag():
    args = b("evalsha", SHA["writeServerStateCmd"], 2, "asynq:servers:{h:1:a}",
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
    user.scripts = ScriptPolicy([SHA["dequeueCmd"]])
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
    contract = KNOWN_SCRIPTS[SHA["dequeueCmd"]]
    assert "numkeys" in scripts.check_contract(contract, b("evalsha", SHA["dequeueCmd"], "x"))
