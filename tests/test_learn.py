"""learn.py: key generalisation, and that learned rules allow exactly the traffic that taught
them (replayed through rules.User.judge) and not the neighbouring queues.

The traffic runs our own scripts (tests/asynq_lua/). Where a test needs Asynq's SHA1s (naming
scripts, suggesting a built-in profile), ``as_asynq`` turns each script call into the EVALSHA
that Asynq itself sends for it, using the reference SHA1 table."""
from __future__ import annotations

import uuid

import pytest

import asynq_workload as w
from conftest import UPSTREAM_PASSWORD, UPSTREAM_USER
from redisgate.protocol.commands import TABLE
from redisgate.policy.learn import Learner, generalise_key, glob_escape
from redisgate.policy.rules import parse_user
from redisgate.policy.scripts import ScriptPolicy


def b(*args) -> list[bytes]:
    return [a if isinstance(a, bytes) else str(a).encode() for a in args]


def observe(learner: Learner, *args) -> None:
    args = b(*args)
    learner.observe(TABLE.lookup(args), args)


# --- generalisation ---------------------------------------------------------------------------

@pytest.mark.parametrize("key, pattern, queue", [
    (b"asynq:{default}:t:0b1c2d3e-aaaa", "asynq:{default}:t:*", "default"),
    (b"asynq:{default}:pending", "asynq:{default}:pending", "default"),
    (b"asynq:{default}:t:", "asynq:{default}:t:", "default"),
    (b"asynq:{default}:processed:2024-05-01", "asynq:{default}:processed:*", "default"),
    (b"asynq:{default}:unique:email:abc123", "asynq:{default}:unique:*", "default"),
    (b"asynq:{default}:g:batch:0b1c", "asynq:{default}:g:*", "default"),
    (b"asynq:{we*ird}:pending", "asynq:{we\\*ird}:pending", "we*ird"),
    (b"asynq:servers:{host:42:0b1c}", "asynq:servers:{*}", None),
    (b"asynq:workers:{host:42:0b1c}", "asynq:workers:{*}", None),
    (b"asynq:scheduler_history:0b1c", "asynq:scheduler_history:*", None),
    (b"asynq:queues", "asynq:queues", None),
    (b"user:12345:profile", "user:*:profile", None),
    (b"session:0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e", "session:*", None),
    (b"12345:profile", "12345:profile", None),           # nothing literal to anchor on
    (b"cache:page[1]*", "cache:page\\[1\\]\\*", None),
])
def test_keys_generalise_to_anchored_patterns(key, pattern, queue):
    assert generalise_key(key) == (pattern, queue)


def test_queue_names_are_never_generalised():
    # A '*' between the braces would match every queue (and span '}'): the queue stays literal.
    for key in (b"asynq:{a}:t:1", b"asynq:{b}:t:1"):
        pattern, _ = generalise_key(key)
        assert "{*}" not in pattern


def test_glob_escape_round_trips_through_the_proxys_glob():
    from redisgate.policy.glob import stringmatch
    text = "a*b?c[d]e\\f"
    assert stringmatch(glob_escape(text).encode(), text.encode())
    assert not stringmatch(glob_escape(text).encode(), b"aXb?c[d]e\\f")


# --- the learner ------------------------------------------------------------------------------

def test_keyless_commands_go_to_the_root_and_keyed_ones_to_selectors():
    learner = Learner()
    observe(learner, "ping")
    observe(learner, "hset", "asynq:{q}:t:1", "result", "x")
    observe(learner, "sadd", "asynq:queues", "q")
    tokens = learner.rule_tokens()
    assert "+ping" in tokens
    assert "(+hset ~asynq:{q}:t:*)" in tokens
    assert "(+sadd ~asynq:queues)" in tokens


def test_evalsha_and_eval_are_learned_together():
    learner = Learner()
    observe(learner, "evalsha", w.SCRIPTS["enqueueCmd"].sha, 2, "asynq:{q}:t:1",
            "asynq:{q}:pending", "m", 1, 1)
    tokens = learner.rule_tokens()
    assert "(+eval +evalsha ~asynq:{q}:pending ~asynq:{q}:t:*)" in tokens
    assert learner.profile()["scripts"] == [w.SCRIPTS["enqueueCmd"].sha]


def test_eval_body_and_script_load_record_the_body_sha1():
    learner = Learner()
    s = w.SCRIPTS["scheduleCmd"]
    observe(learner, "eval", s.body, 2, "asynq:{q}:t:1", "asynq:{q}:scheduled", "m", 1, 1)
    observe(learner, "script", "load", w.SCRIPTS["enqueueCmd"].body)
    assert learner.profile()["scripts"] == sorted([s.sha, w.SCRIPTS["enqueueCmd"].sha])


def test_channels_are_escaped_and_patterns_kept_literal():
    learner = Learner()
    observe(learner, "subscribe", "asynq:cancel", "odd*chan")
    observe(learner, "psubscribe", "news.*")
    assert learner.channels == {"asynq:cancel", "odd\\*chan", "news.*"}


def test_unknown_commands_are_reported_not_granted():
    learner = Learner()
    observe(learner, "client", "setinfo", "LIB-NAME", "go-redis(,go1.22.0)")
    observe(learner, "frobnicate", "x")
    assert learner.rule_tokens() == []
    assert learner.summary()["unknown_commands"] == ["client setinfo", "frobnicate"]


def test_pattern_cap_counts_what_it_drops():
    learner = Learner(max_patterns=2)
    for k in ("a:x", "b:x", "c:x"):
        observe(learner, "get", k)
    assert learner.dropped == 1 and sum(len(p) for p in learner.commands.values()) == 2


def test_a_command_whose_keys_redis_cannot_extract_names_no_key():
    learner = Learner()
    observe(learner, "evalsha", "ab" * 20, "-1")        # Redis: numkeys can't be negative
    assert learner.commands == {"evalsha": set()}


# --- learned rules against real traffic --------------------------------------------------------

class LearningConn(w.GoRedisConn):
    """Feeds every command it sends to a Learner, as the session does for a learn-mode user."""

    def __init__(self, learner, *a, **kw):
        self.learner, self.sent = learner, []
        super().__init__(*a, **kw)

    def send(self, *commands) -> None:
        for c in commands:
            args = b(*c)
            self.sent.append(args)
            self.learner.observe(TABLE.lookup(args), args)
        super().send(*commands)


def learned_user(learner: Learner):
    profile = learner.profile()
    user = parse_user("learned", "on nopass " + profile["rules"])
    user.scripts = ScriptPolicy(profile["scripts"])
    return user


def replay_denials(user, sent) -> list:
    out = []
    for args in sent:
        spec = TABLE.lookup(args)
        if spec is None or spec.is_container:
            continue
        d = user.judge(spec, args)
        if d is not None:
            out.append((args[0], d.reason))
    return out


@pytest.fixture
def worker_run(redis7):
    q = f"q-{uuid.uuid4().hex[:8]}"
    with w.GoRedisConn(redis7.port, username=UPSTREAM_USER, password=UPSTREAM_PASSWORD) as p:
        for _ in range(5):
            w.enqueue(p, q)
        w.enqueue(p, q, group="g")
    learner = Learner()
    with LearningConn(learner, redis7.port, username=UPSTREAM_USER,
                      password=UPSTREAM_PASSWORD) as conn:
        w.worker_traffic(conn, q)
        sub = LearningConn(learner, redis7.port, username=UPSTREAM_USER,
                           password=UPSTREAM_PASSWORD)
        w.subscribe_cancel(sub)
        w.subscriber_ping(sub)
        sub.close()
        sent = conn.sent + sub.sent
    return q, learner, sent


def test_learned_rules_allow_the_traffic_they_were_learned_from(worker_run):
    q, learner, sent = worker_run
    assert replay_denials(learned_user(learner), sent) == []


def test_learned_rules_refuse_the_same_traffic_on_another_queue(worker_run):
    q, learner, sent = worker_run
    other = [[a.replace(q.encode(), b"other") for a in args] for args in sent]
    denied = replay_denials(learned_user(learner), other)
    assert any(cmd == b"evalsha" for cmd, _ in denied)
    assert any(cmd == b"hset" for cmd, _ in denied)


def test_learned_rules_stay_inside_the_keys_seen(worker_run):
    _, learner, _ = worker_run
    user = learned_user(learner)
    for args in (b("get", "session:1"), b("flushall"), b("del", "asynq:queues"),
                 b("hset", "asynq:servers:{x}", "a", "b")):
        assert user.judge(TABLE.lookup(args), args) is not None, args


_BY_SHA = {s.sha.encode(): s for s in w.SCRIPTS.values()}
_BY_BODY = {s.body: s for s in w.SCRIPTS.values()}


def as_asynq(sent: list[list[bytes]]) -> list[list[bytes]]:
    """The commands as Asynq sends them: EVALSHA of our script, or EVAL of our body, becomes
    EVALSHA of Asynq's SHA1 for the script it imitates (same KEYS and ARGV)."""
    out = []
    for args in sent:
        head = args[0].lower()
        found = _BY_SHA.get(args[1]) if head == b"evalsha" else \
            _BY_BODY.get(args[1]) if head == b"eval" else None
        out.append([b"evalsha", found.asynq_sha.encode(), *args[2:]] if found else args)
    return out


def learn(sent: list[list[bytes]]) -> Learner:
    learner = Learner()
    for args in sent:
        learner.observe(TABLE.lookup(args), args)
    return learner


def test_summary_names_asynqs_scripts_and_suggests_the_worker_profile(worker_run):
    q, _, sent = worker_run
    summary = learn(as_asynq(sent)).summary()
    assert summary["suggestion"] == {"profile": "asynq-worker", "queues": [q]}
    assert summary["queues"] == [q]
    assert "dequeueCmd" in summary["scripts"].values()


def test_own_scripts_are_listed_by_sha1_and_no_built_in_profile_is_suggested(worker_run):
    # No built-in profile allows our SHA1s (they need {sha1, like} entries), so none fits.
    _, learner, _ = worker_run
    summary = learner.summary()
    assert summary["scripts"][w.SCRIPTS["dequeueCmd"].sha] == "unknown script"
    assert "suggestion" not in summary


def test_producer_traffic_suggests_the_producer_profile(redis7):
    q = f"q-{uuid.uuid4().hex[:8]}"
    with LearningConn(Learner(), redis7.port, username=UPSTREAM_USER,
                      password=UPSTREAM_PASSWORD) as conn:
        w.producer_traffic(conn, q)
    assert learn(as_asynq(conn.sent)).suggest_profile() == {"profile": "asynq-producer",
                                                            "queues": [q]}


def test_no_suggestion_for_traffic_outside_asynq():
    learner = Learner()
    observe(learner, "get", "session:1")
    assert learner.suggest_profile() is None
