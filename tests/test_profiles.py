"""The built-in Asynq profiles: script sets per role and release (checked against the SHA1
table of REDIS-USAGE.md §5), queue scoping, refused queue names, and that each role's traffic
(tests/asynq_workload.py with our own scripts bound ``like`` Asynq's, run against Redis 7.0 and
5.0) passes its own profile's judge while the cross-role operations do not.
"""
from __future__ import annotations

import uuid

import pytest

import asynq_reference
import asynq_workload as w
from asynq_workload import redis5  # noqa: F401 (this module's redis5: a RESP2 admin client)
from conftest import LEGACY_PASSWORD, UPSTREAM_PASSWORD, UPSTREAM_USER
from redisgate.protocol.commands import TABLE
from redisgate.asynq.profiles import (ProfileError, check_queue_name, describe, load_profile,
                                      profile_names)
from redisgate.policy.rules import parse_user
from redisgate.policy.scripts import ScriptPolicy, resolve_scripts

EXPECTED = asynq_reference.expected_shas()



# Who runs which script, written out from REDIS-USAGE.md §3 and §8 (independently of the
# role tags in scripts.py, which this checks).
CLIENT = {"enqueueCmd", "enqueueUniqueCmd", "scheduleCmd", "scheduleUniqueCmd", "addToGroupCmd",
          "addToGroupUniqueCmd"}
READ = {"currentStatsCmd", "memoryUsageCmd", "historicalStatsCmd", "getTaskInfoCmd",
        "groupStatsCmd", "listMessagesCmd", "listZSetEntriesCmd", "listLeaseExpiredCmd",
        "listServerKeysCmd"}
ROLE_SCRIPTS = {
    "asynq-producer": CLIENT,
    "asynq-worker": CLIENT | {
        "dequeueCmd", "doneCmd", "doneUniqueCmd", "markAsCompleteCmd", "markAsCompleteUniqueCmd",
        "requeueCmd", "retryCmd", "archiveCmd", "forwardCmd", "listLeaseExpiredCmd",
        "reclaimStateAggregationSetsCmd", "deleteExpiredCompletedTasksCmd", "aggregationCheckCmd",
        "readAggregationSetCmd", "deleteAggregationSetCmd", "writeServerStateCmd",
        "clearServerStateCmd"},
    "asynq-scheduler": CLIENT | {"writeSchedulerEntriesCmd", "recordSchedulerEnqueueEventCmd"},
    "asynq-inspector": READ,
    "asynq-admin": READ | {
        "runTaskCmd", "runAllCmd", "runAllAggregatingCmd", "archiveTaskCmd", "archiveAllCmd",
        "archiveAllPendingCmd", "archiveAllAggregatingCmd", "deleteTaskCmd", "deleteAllCmd",
        "deleteAllPendingCmd", "deleteAllAggregatingCmd", "removeQueueCmd", "removeQueueForceCmd",
        "updateTaskPayloadCmd"},
    "asynq-rate": {"acquireCmd"},
}


# --- script sets ------------------------------------------------------------------------------

@pytest.mark.parametrize("release", asynq_reference.RELEASES)
@pytest.mark.parametrize("profile", sorted(ROLE_SCRIPTS))
def test_every_reference_sha1_of_a_release_is_in_exactly_the_right_profiles(profile, release):
    _, shas = load_profile(profile)
    for name, sha in EXPECTED[release].items():
        if name in ROLE_SCRIPTS[profile]:
            assert sha in shas, f"{profile} lacks {release} {name} {sha}"
        else:
            assert sha not in shas, f"{profile} must not allow {release} {name} {sha}"


def test_profile_scripts_are_exactly_the_union_over_releases():
    for profile, names in ROLE_SCRIPTS.items():
        union = {sha for table in EXPECTED.values() for n, sha in table.items() if n in names}
        assert load_profile(profile)[1] == union, profile


def test_release_suffix_narrows_the_script_set_but_not_the_rules():
    tokens, shas = load_profile("asynq-worker@v0.24")
    assert tokens == load_profile("asynq-worker")[0]
    worker = ROLE_SCRIPTS["asynq-worker"]
    assert shas == {sha for r in ("v0.24.0", "v0.24.1") for n, sha in EXPECTED[r].items()
                    if n in worker}
    assert EXPECTED["main"]["archiveCmd"] not in shas


def test_connection_profile_has_no_scripts_and_is_in_every_role():
    tokens, shas = load_profile("asynq-connection")
    assert shas == set()
    for profile in ROLE_SCRIPTS:
        assert set(tokens) <= set(load_profile(profile)[0]), profile


def test_every_profile_compiles_into_a_user():
    for name in profile_names():
        tokens, _ = load_profile(name, ["default"])
        user = parse_user("u", ["on", "nopass"] + tokens)
        assert not user.has_allkeys and not user.allows_all_commands, name
        assert describe(name)


# --- queue scoping and names ------------------------------------------------------------------

def test_scoping_replaces_every_all_queue_pattern_with_one_per_queue():
    tokens, _ = load_profile("asynq-worker", ["critical", "default"])
    text = " ".join(tokens)
    assert "asynq:{*}" not in text
    assert "~asynq:{critical}:*" in tokens and "~asynq:{default}:*" in tokens
    assert "(+zadd ~asynq:{critical}:lease ~asynq:{default}:lease)" in tokens
    # Registry keys belong to no queue and are left alone.
    assert "~asynq:servers:{*}" in tokens


def test_scoping_keeps_the_queue_order_and_drops_duplicates():
    tokens, _ = load_profile("asynq-producer", ["b", "a", "b"])
    pending = [t for t in tokens if t.endswith(":pending")]
    assert pending == ["~asynq:{b}:pending", "~asynq:{a}:pending"]


def test_unscoped_profile_keeps_the_all_queue_patterns():
    assert "~asynq:{*}:pending" in load_profile("asynq-producer")[0]


def test_queue_names_with_colons_and_dashes_are_fine():
    assert check_queue_name("emails:high-prio_1") == "emails:high-prio_1"


@pytest.mark.parametrize("name, why", [
    ("", "cannot be empty"),
    ("a}b", "contains '}': a brace changes the Redis hash tag"),
    ("{a", "contains '{'"),
    ("crit*", "contains '*', which is glob syntax"),
    ("a?", "contains '?'"),
    ("[a]", "contains '['"),
    ("a]", "contains ']'"),
    ("a\\b", "contains a backslash"),
    ("a b", "whitespace or a control character"),
    ("a\tb", "whitespace or a control character"),
    ("a\x00b", "whitespace or a control character"),
])
def test_unscopable_queue_names_are_refused_precisely(name, why):
    with pytest.raises(ProfileError) as err:
        load_profile("asynq-worker", ["ok", name])
    assert why in str(err.value) and repr(name) in str(err.value)


def test_empty_queue_list_is_refused():
    with pytest.raises(ProfileError, match="queues is empty"):
        load_profile("asynq-worker", [])


def test_queues_as_a_bare_string_is_refused():
    with pytest.raises(ProfileError, match="must be a list"):
        load_profile("asynq-worker", "default")


def test_unknown_profile_lists_the_built_in_ones():
    with pytest.raises(ProfileError, match="unknown profile 'asynq-wrker'.*asynq-worker"):
        load_profile("asynq-wrker")


def test_unknown_release_line_is_refused():
    with pytest.raises(ProfileError, match="unknown Asynq release line 'v0.23'"):
        load_profile("asynq-worker@v0.23")


# --- what each role may and may not do (sans-I/O judge) ----------------------------------------

def b(*args) -> list[bytes]:
    return [a if isinstance(a, bytes) else str(a).encode() for a in args]


def user_for(profile: str, queues=None):
    """A user of ``profile`` as the tests configure one: the profile, plus our own scripts
    bound ``like`` the Asynq scripts that profile allows (w.entries_for_profiles)."""
    tokens, shas = load_profile(profile, queues)
    user = parse_user(profile, ["on", "nopass"] + tokens)
    _, custom = resolve_scripts(w.entries_for_profiles(profile))
    user.scripts = ScriptPolicy(shas, custom=custom)
    return user


def judge(user, *args):
    args = b(*args)
    return user.judge(TABLE.lookup(args), args)


S = {name: s.sha for name, s in w.SCRIPTS.items()}      # our scripts, as the workload sends them
ASYNQ = EXPECTED["main"]                                # Asynq's own, by SHA1 only
Q = "asynq:{default}:"
O = "asynq:{other}:"


def dequeue(prefix=Q, keys_of=Q):
    return ("evalsha", S["dequeueCmd"], 4, keys_of + "pending", keys_of + "paused",
            keys_of + "active", keys_of + "lease", 1, prefix + "t:")


def test_producer_cannot_dequeue():
    # Refused on the keys (no active/lease patterns) and, were they allowed, on the script.
    producer = user_for("asynq-producer")
    assert judge(producer, *dequeue()) is not None
    assert judge(producer, *(("evalsha", ASYNQ["dequeueCmd"]) + dequeue()[2:])) is not None
    assert S["dequeueCmd"] not in producer.scripts.allowed_shas


def test_producer_cannot_delete_tasks():
    producer = user_for("asynq-producer")
    assert judge(producer, "del", Q + "t:1") is not None
    assert judge(producer, "evalsha", S["deleteTaskCmd"], 2, Q + "t:1", Q + "groups", 1, Q,
                 Q + "g:") is not None


def test_producer_cannot_read_task_hashes():
    assert judge(user_for("asynq-producer"), "hget", Q + "t:1", "msg") is not None


def test_scoped_producer_cannot_enqueue_into_another_queue():
    producer = user_for("asynq-producer", ["default"])
    enqueue = ("evalsha", S["enqueueCmd"], 2)
    assert judge(producer, *enqueue, Q + "t:1", Q + "pending", "m", 1, 1) is None
    assert judge(producer, *enqueue, O + "t:1", O + "pending", "m", 1, 1).kind == "key"


def test_producer_sadd_is_limited_to_the_queue_registry():
    producer = user_for("asynq-producer")
    assert judge(producer, "sadd", "asynq:queues", "default") is None
    assert judge(producer, "sadd", Q + "groups", "g") is not None


def test_worker_cannot_run_an_unknown_script():
    d = judge(user_for("asynq-worker"), "evalsha", "f" * 40, 1, Q + "pending")
    assert d.kind == "script"
    # Nor one of our scripts that is bound only for the admin.
    d = judge(user_for("asynq-worker"), "evalsha", S["deleteAllPendingCmd"], 1, Q + "pending",
              Q + "t:")
    assert d.kind == "script" and "allowlist" in d.reason


def test_worker_cannot_flushall_or_script_flush():
    worker = user_for("asynq-worker")
    assert judge(worker, "flushall") is not None
    assert judge(worker, "script", "flush") is not None


def test_worker_cannot_pass_the_key_prefix_of_another_queue():
    worker = user_for("asynq-worker")
    assert judge(worker, *dequeue()) is None
    d = judge(worker, *dequeue(prefix=O))
    assert d.kind == "script" and "own script like dequeueCmd" in d.reason


def test_worker_hset_is_limited_to_task_hashes():
    worker = user_for("asynq-worker")
    assert judge(worker, "hset", Q + "t:1", "result", "x") is None
    assert judge(worker, "hset", "asynq:servers:{x}", "a", "b") is not None


def test_inspector_cannot_enqueue():
    inspector = user_for("asynq-inspector")
    assert judge(inspector, "evalsha", S["enqueueCmd"], 2, Q + "t:1", Q + "pending", "m", 1, 1) \
        .kind == "script"
    assert judge(inspector, "sadd", "asynq:queues", "x") is not None


def test_inspector_cannot_run_admin_scripts_but_admin_can():
    args = ("evalsha", S["deleteAllPendingCmd"], 1, Q + "pending", Q + "t:")
    assert judge(user_for("asynq-inspector"), *args).kind == "script"
    assert judge(user_for("asynq-admin"), *args) is None


def test_admin_pause_is_limited_to_the_paused_key():
    admin = user_for("asynq-admin")
    assert judge(admin, "setnx", Q + "paused", 1) is None
    assert judge(admin, "del", Q + "paused") is None
    assert judge(admin, "del", Q + "t:1") is not None


@pytest.mark.parametrize("profile", sorted(ROLE_SCRIPTS))
def test_nobody_reaches_keys_outside_asynq(profile):
    user = user_for(profile)
    for args in (("get", "session:1"), ("set", "x", "1"), ("del", "x"), ("keys", "*"),
                 ("scan", 0), ("flushdb",), ("config", "get", "*"),
                 ("evalsha", S["enqueueCmd"], 2, "x:t:1", "x:pending", "m", 1, 1)):
        assert judge(user, *args) is not None, (profile, args)


# --- each role's real traffic passes its own profile (against Redis 7.0 and 5.0) ---------------

class JudgedConn(w.GoRedisConn):
    """A GoRedisConn that asks ``user.judge`` about every command before sending it, as the
    proxy would, and records what would be refused. Unknown subcommands (CLIENT SETINFO on a 7.0
    table) are answered by the proxy itself and are not judged."""

    def __init__(self, user, *a, **kw):
        self.user = user
        self.denied: list[tuple[str, str]] = []
        super().__init__(*a, **kw)

    def send(self, *commands) -> None:
        for c in commands:
            args = b(*c)
            spec = TABLE.lookup(args)
            if spec is None or spec.is_container or not spec.check_arity(len(args)):
                continue
            d = self.user.judge(spec, args)
            if d is not None:
                self.denied.append((spec.name, d.reason))
        super().send(*commands)


def connect(upstream, user):
    if upstream.version == "7":
        return JudgedConn(user, upstream.port, username=UPSTREAM_USER, password=UPSTREAM_PASSWORD)
    return JudgedConn(user, upstream.port, password=LEGACY_PASSWORD)


def test_producer_traffic_passes_the_scoped_producer_profile(any_upstream):
    q = f"q-{uuid.uuid4().hex[:8]}"
    with connect(any_upstream, user_for("asynq-producer", [q])) as conn:
        msgs = w.producer_traffic(conn, q)
        msgs += w.batch_enqueue(conn, q, 3)
        assert conn.denied == []
    assert len(msgs) >= 6


def test_worker_traffic_passes_the_scoped_worker_profile(any_upstream):
    q = f"q-{uuid.uuid4().hex[:8]}"
    with connect(any_upstream, user_for("asynq-producer", [q])) as producer:
        for _ in range(5):
            w.enqueue(producer, q)
        w.enqueue(producer, q, group="g1")
        w.enqueue(producer, q, payload=b"u", unique_ttl=60)
    with connect(any_upstream, user_for("asynq-worker", [q])) as conn:
        handled = w.worker_traffic(conn, q)
        assert {"done", "retry", "archive", "complete", "requeue"} <= set(handled)
        msg = w.dequeue(conn, [q])
        while msg is not None and not msg.unique_key:
            w.done(conn, msg)
            msg = w.dequeue(conn, [q])
        assert msg is not None and msg.unique_key
        w.done(conn, msg)                          # doneUniqueCmd
        assert conn.denied == []


def test_worker_subscriber_passes_with_bare_pings(any_upstream):
    with connect(any_upstream, user_for("asynq-worker", ["default"])) as conn:
        confirm = w.subscribe_cancel(conn)
        assert confirm[:2] == [b"subscribe", b"asynq:cancel"]
        pong = w.subscriber_ping(conn)
        assert pong == (b"PONG" if conn.resp3 else [b"pong", b""])
        assert conn.denied == []


def test_scheduler_traffic_passes_the_scheduler_profile(any_upstream):
    q = f"q-{uuid.uuid4().hex[:8]}"
    with connect(any_upstream, user_for("asynq-scheduler", [q])) as conn:
        sid, entry = str(uuid.uuid4()), str(uuid.uuid4())
        w.scheduler_heartbeat(conn, sid, [b"entry-1", b"entry-2"])
        w.scheduler_enqueue(conn, entry, q)
        w.scheduler_shutdown(conn, sid, [entry])
        assert conn.denied == []


def test_inspector_and_admin_traffic_pass_their_profiles(any_upstream):
    q = f"q-{uuid.uuid4().hex[:8]}"
    with connect(any_upstream, user_for("asynq-producer", [q])) as producer:
        msgs = w.producer_traffic(producer, q)
        w.enqueue(producer, q, group="run")
        w.enqueue(producer, q, group="arch")
    with connect(any_upstream, user_for("asynq-inspector", [q])) as conn:
        w.queues(conn)
        w.queue_info(conn, q)
        w.history(conn, q)
        w.task_info(conn, q, msgs[0].id)
        w.list_pending(conn, q)
        w.list_active(conn, q)
        for state in ("scheduled", "retry", "archived", "completed"):
            w.list_zset(conn, q, state)
        w.group_stats(conn, q)
        w.servers(conn)
        w.scheduler_entries(conn)
        w.scheduler_events(conn, "e")
        w.redis_info(conn)
        assert conn.denied == []
    with connect(any_upstream, user_for("asynq-admin", [q])) as conn:
        w.pause(conn, q)
        w.unpause(conn, q)
        assert w.update_task_payload(conn, q, msgs[3].id, b"new payload") == 1
        w.run_task(conn, q, msgs[2].id)            # the scheduled one
        assert w.run_all_aggregating(conn, q, "run") == 1
        assert w.archive_all_aggregating(conn, q, "arch") == 1
        w.delete_all_aggregating(conn, q, "none")
        w.run_all(conn, q, "scheduled")
        w.archive_task(conn, q, msgs[0].id)
        w.run_all(conn, q, "archived")
        w.archive_all_pending(conn, q)
        w.archive_all(conn, q, "scheduled")
        w.delete_task(conn, q, msgs[1].id)
        w.delete_all(conn, q, "archived")
        w.delete_all_pending(conn, q)
        w.cancel(conn, msgs[0].id)
        assert w.delete_queue(conn, q, force=True) == 1
        assert conn.denied == []


def test_rate_traffic_passes_the_rate_profile(any_upstream):
    with connect(any_upstream, user_for("asynq-rate")) as conn:
        scope = f"s-{uuid.uuid4().hex[:8]}"
        assert w.acquire(conn, scope, "t1", max_tokens=1)
        assert not w.acquire(conn, scope, "t2", max_tokens=1)
        assert w.release(conn, scope, "t1") == 1
        assert conn.denied == []
