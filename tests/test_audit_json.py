"""The audit trail (issue 17): JSON lines, one typed event per thing audited, through one emitter
(redisgate.telemetry.audit.emit); the `audit:` section (path, rate, format); no secret or value ever in it;
bounded under a flood (suppressed summaries); the file re-opened on SIGHUP for logrotate; and
`check`'s warning about users nobody can log in as (whose refused logins say `disabled`)."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
import yaml

from redisgate.telemetry import audit
from redisgate.telemetry.audit import Event, Peer
from redisgate.config import AuditSettings, ConfigError, build_config
from redisgate.session.gate import Gate
from redisgate.policy.login import CertIdentity
from redisgate.session import Session

from proxy import ProxyRunner, pw_hash, stop_serve
from servers import free_port
from wire import Wire, cmd

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


def read_events(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    for e in events:
        assert TS.fullmatch(e["ts"]), e
    return events


def wait_for_text(path: Path, text: str, timeout: float = 5) -> None:
    """Until the file at `path` holds `text` (an event written by the proxy's thread)."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text} never written to {path}"
        time.sleep(0.02)


@pytest.fixture
def captured():
    """The Events emitted meanwhile (through the logger, as every handler sees them)."""
    events: list[Event] = []

    class Grab(logging.Handler):
        def emit(self, record):
            events.append(record.audit_event)

    handler = Grab(logging.INFO)
    old = audit.logger.level
    audit.logger.setLevel(logging.INFO)
    audit.logger.addHandler(handler)
    yield events
    audit.logger.removeHandler(handler)
    audit.logger.setLevel(old)


# ---------------------------------------------------------------------------- the format

def test_an_event_is_one_json_object_with_an_rfc3339_utc_timestamp(tmp_path):
    path = tmp_path / "audit.log"
    audit.configure(AuditSettings(path=str(path), rate=0))
    try:
        audit.emit(Event("denied", user="app", peer=Peer(7, "127.0.0.1", 5000, "cn=x"),
                         command="get", kind="key", object=audit.safe(b'k"\n\x00' + b"x" * 300),
                         rule="keys", report_only=False, reason="r"))
        audit.emit(Event("tls-handshake-failed", peer=Peer(None, "::1", 6000), reason="bad"))
    finally:
        audit.configure(None)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert list(first)[:2] == ["ts", "event"]
    assert first == {"ts": first["ts"], "event": "denied", "user": "app",
                     "client": "127.0.0.1:5000", "conn": 7, "tls_identity": "cn=x",
                     "command": "get", "kind": "key", "object": first["object"], "rule": "keys",
                     "report_only": False, "reason": "r"}
    assert first["object"].startswith('k"\\x0a\\x00x') and first["object"].endswith(
        "...[+176 bytes]")
    assert second["client"] == "[::1]:6000" and "conn" not in second and second["user"] is None
    assert audit.rfc3339(0.1234) == "1970-01-01T00:00:00.123Z"
    # Created 0640, appended to.
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_worker_of_a_group_writes_its_share_of_the_rate(tmp_path):
    """serve --workers N: audit.rate is the group's; each worker's limiter gets rate // N."""
    path = tmp_path / "audit.log"
    try:
        audit.share_rate(3)
        audit.configure(AuditSettings(path=str(path), rate=100))
        assert audit._state.limiter.rate == 33
        audit.configure(AuditSettings(path=str(path), rate=2))
        assert audit._state.limiter.rate == 1          # (at least one line a second)
        audit.configure(AuditSettings(path=str(path), rate=0))
        assert audit._state.limiter is None            # (0: no limit, as before)
    finally:
        audit.share_rate(1)
        audit.configure(None)


def test_the_text_format_keeps_todays_lines(tmp_path):
    path = tmp_path / "audit.txt"
    audit.configure(AuditSettings(path=str(path), rate=0, format="text"))
    try:
        audit.emit(Event("auth-ok", user="app", via="password", info="id=1 addr=127.0.0.1:5"))
        audit.emit(Event("connect", peer=Peer(1, "127.0.0.1", 5)))   # no plain-text form
        audit.emit(Event("auth-failed", user="unknown:abcd1234", reason="wrong-password",
                         info="id=2 addr=127.0.0.1:6"))
    finally:
        audit.configure(None)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO redisgate.audit: login user=app via=password "
                             "client=id=1 addr=127.0.0.1:5")
    assert lines[1].endswith("WARNING redisgate.audit: auth-failed user=unknown:abcd1234 "
                             "client=id=2 addr=127.0.0.1:6 reason=wrong-password")


UPSTREAM_SAMPLES = [
    Event("upstream-unreachable", address="10.0.0.5:6379", reason="connection refused"),
    Event("sentinel-error", master="mymaster", sentinel="10.0.0.1:26379", stage="query",
          reason="unreachable: timed out"),
    Event("resolution-failed", master="mymaster",
          reason="no sentinel named a usable master (recheck; asked 10.0.0.1:26379)"),
    Event("master-rejected", master="mymaster", address="10.0.0.6:6379",
          sentinel="10.0.0.1:26379", reason="ROLE says 'slave', not master"),
    Event("failover-started", master="mymaster", old="10.0.0.5:6379", sentinel="10.0.0.1:26379",
          channel="+try-failover"),
    Event("switch-master", master="mymaster", old="10.0.0.5:6379", new="10.0.0.6:6379",
          sentinel="10.0.0.2:26379"),
    Event("master-changed", master="mymaster", old="10.0.0.5:6379", new="10.0.0.6:6379",
          reason="ROLE master, +switch-master from sentinel 10.0.0.2:26379"),
    Event("failover-lifted", master="mymaster", address="10.0.0.5:6379",
          reason="named by sentinel 10.0.0.1:26379 (failover aborted)"),
    Event("failover-moved", old="10.0.0.5:6379", clients=3, links=1,
          reason="+try-failover from sentinel 10.0.0.1:26379"),
]
WORKER_SAMPLES = [
    Event("worker-restart", worker=1, pid=4242, reason="was killed by SIGKILL", seconds=0.2),
    Event("worker-gave-up", worker=0, pid=4343, reason="exited with code 1", failures=5),
]


def test_the_upstream_and_worker_events_in_json_and_text(tmp_path):
    """Every upstream (Sentinel, failover) and worker event, in both formats: JSON with its
    typed fields; text as `event name=value ... reason=free text`, the worker lines as before."""
    path, text_path = tmp_path / "audit.log", tmp_path / "audit.txt"
    audit.configure(AuditSettings(path=str(path), rate=0))
    try:
        for e in UPSTREAM_SAMPLES + WORKER_SAMPLES:
            audit.emit(e)
    finally:
        audit.configure(None)
    got = read_events(path)
    assert [e["event"] for e in got] == [e.event for e in UPSTREAM_SAMPLES + WORKER_SAMPLES]
    assert got[6] == {"ts": got[6]["ts"], "event": "master-changed", "user": None,
                      "reason": "ROLE master, +switch-master from sentinel 10.0.0.2:26379",
                      "master": "mymaster", "old": "10.0.0.5:6379", "new": "10.0.0.6:6379"}
    assert got[8]["clients"] == 3 and got[8]["links"] == 1
    assert got[9] == {"ts": got[9]["ts"], "event": "worker-restart", "user": None,
                      "reason": "was killed by SIGKILL", "seconds": 0.2, "worker": 1,
                      "pid": 4242}
    assert got[10]["failures"] == 5
    audit.configure(AuditSettings(path=str(text_path), rate=0, format="text"))
    try:
        for e in UPSTREAM_SAMPLES + WORKER_SAMPLES:
            audit.emit(e)
    finally:
        audit.configure(None)
    lines = [line.split(" ", 2)[2] for line in text_path.read_text().splitlines()]
    assert lines == [
        "WARNING redisgate.audit: upstream-unreachable address=10.0.0.5:6379 "
        "reason=connection refused",
        "WARNING redisgate.audit: sentinel-error master=mymaster sentinel=10.0.0.1:26379 "
        "stage=query reason=unreachable: timed out",
        "ERROR redisgate.audit: resolution-failed master=mymaster reason=no sentinel named a "
        "usable master (recheck; asked 10.0.0.1:26379)",
        "WARNING redisgate.audit: master-rejected master=mymaster address=10.0.0.6:6379 "
        "sentinel=10.0.0.1:26379 reason=ROLE says 'slave', not master",
        "WARNING redisgate.audit: failover-started master=mymaster old=10.0.0.5:6379 "
        "sentinel=10.0.0.1:26379 channel=+try-failover",
        "WARNING redisgate.audit: switch-master master=mymaster old=10.0.0.5:6379 "
        "new=10.0.0.6:6379 sentinel=10.0.0.2:26379",
        "WARNING redisgate.audit: master-changed master=mymaster old=10.0.0.5:6379 "
        "new=10.0.0.6:6379 reason=ROLE master, +switch-master from sentinel 10.0.0.2:26379",
        "WARNING redisgate.audit: failover-lifted master=mymaster address=10.0.0.5:6379 "
        "reason=named by sentinel 10.0.0.1:26379 (failover aborted)",
        "WARNING redisgate.audit: failover-moved old=10.0.0.5:6379 clients=3 links=1 "
        "reason=+try-failover from sentinel 10.0.0.1:26379",
        "WARNING redisgate.audit: worker-restart worker=1 pid=4242 reason=was-killed-by-SIGKILL",
        "ERROR redisgate.audit: worker-gave-up worker=0 pid=4343 reason=exited-with-code-1",
    ]


def test_without_an_audit_section_upstream_events_stay_in_the_process_log_only(captured):
    """No `audit:` section: the process log (logger redisgate) has a line for each upstream event
    already, so the audit logger writes none of them; the worker lines are written as before."""
    assert not any(audit.wanted(e.event) for e in UPSTREAM_SAMPLES)
    for e in UPSTREAM_SAMPLES + WORKER_SAMPLES:
        audit.emit(e)
    assert [e.event for e in captured] == ["worker-restart", "worker-gave-up"]


def test_the_audit_section_is_validated_with_where_why_messages(tmp_path):
    base = {"upstream": "127.0.0.1:6379", "users": {"a": "on nopass +ping"}}
    cases = {
        "audit.format: expected json or text, got 'xml'": {"format": "xml"},
        "audit.rate: expected a whole number of lines per second >= 0 (0: no limit), got -1":
            {"rate": -1},
        "audit.rate: expected a whole number of lines per second >= 0 (0: no limit), got '10'":
            {"rate": "10"},
        "audit.path: expected \"-\" (stdout) or a file path, got ''": {"path": ""},
        "audit.colour: unknown setting (known: path, rate, format)": {"colour": "red"},
        f"audit.path: directory {str(tmp_path / 'nope')!r} does not exist":
            {"path": str(tmp_path / "nope" / "audit.log")},
        f"audit.path: {str(tmp_path)!r} is a directory; name a file in it": {"path": str(tmp_path)},
    }
    for message, section in cases.items():
        with pytest.raises(ConfigError) as e:
            build_config({**base, "audit": section}, base_dir=tmp_path)
        assert message in e.value.problems, (message, e.value.problems)
    assert build_config(base).audit is None                     # no section: today's lines
    assert build_config({**base, "audit": None}).audit is None
    assert build_config({**base, "audit": {}}).audit == AuditSettings("-", 100, "json")
    cfg = build_config({**base, "audit": {"path": "a.log", "rate": 0, "format": "TEXT"}},
                       base_dir=tmp_path)
    assert cfg.audit == AuditSettings(str(tmp_path / "a.log"), 0, "text")


# ---------------------------------------------------------------------------- users nobody can be

def test_check_warns_about_users_nobody_can_log_in_as(tmp_path):
    raw = {"upstream": "127.0.0.1:6379", "users": {
        "producer": {"profile": "asynq-producer", "certificate": {"cn": "producer"}},
        "ghost": "on +ping",
        "off-user": f"off {pw_hash('x')} +ping",
        "fine": f"on {pw_hash('x')} +ping"}}
    cfg = tmp_path / "rg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "redisgate", "check", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr          # warnings, as ever, do not fail `check`
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert any(line.startswith("warning: users.producer: user is not 'on'") for line in warned)
    assert any(line.startswith("warning: users.off-user: user is not 'on'") for line in warned)
    assert any(line.startswith("warning: users.ghost: user is 'on' but has no password, nopass "
                               "or certificate") for line in warned)
    assert not any("users.fine" in line for line in warned)


def test_a_certificate_user_that_is_not_on_is_refused_as_disabled(captured):
    cfg = build_config({"upstream": "127.0.0.1:6379", "users": {
        "producer": {"profile": "asynq-producer", "certificate": {"cn": "producer"}}}})
    gate = Gate(cfg, upstream_version=(7, 0, 15))
    cert = CertIdentity(peercert={"subject": ((("commonName", "producer"),),)}, user="producer")
    s = Session(gate, "id=1 addr=127.0.0.1:5", cert, Peer(1, "127.0.0.1", 5, "cn=producer"))
    assert s.user_entry is None
    s.client_data(cmd("PING"))
    assert s.to_client[-1].startswith(b"-NOAUTH")
    failed = [e for e in captured if e.event == "auth-failed"]
    assert len(failed) == 1 and failed[0].reason == "disabled" and failed[0].user == "producer"
    assert failed[0].peer.tls_identity == "cn=producer"


# ---------------------------------------------------------------------------- a whole session

def test_a_full_session_leaves_no_password_and_no_value_in_the_audit(redis7, tmp_path):
    """Logins (AUTH, HELLO AUTH), allowed SET/GET with distinctive values, refused commands with
    distinctive keys and values, failed AUTHs with distinctive passwords: the audit has the
    events, the refused keys, and none of the passwords or values."""
    path = tmp_path / "audit.jsonl"
    secrets = {
        "app": "App-Pw-7f3a9c1e", "hello": "Hello-Pw-55d0e2b4",
        "wrong1": "Wrong-Guess-0a1b2c3d", "wrong2": "Wrong-Guess-9e8f7a6b",
        "in_name_slot": "Typed-As-Name-3c4d5e6f",
    }
    values = ["Value-Set-11aa22bb", "Value-Refused-33cc44dd", "Value-Hset-55ee66ff",
              "Value-Script-77aa88bb", "Value-Publish-99ccddee"]
    runner = ProxyRunner({
        "upstream": redis7.upstream,
        "users": {"app": f"on {pw_hash(secrets['app'])} ~app:* &news +get +set +publish +ping "
                         "+hset +select +evalsha +config|get +subscribe",
                  "helloer": f"on {pw_hash(secrets['hello'])} ~h:* +ping +set"},
        "audit": {"path": str(path), "rate": 0},
    }).start()
    try:
        w = Wire(runner.port)
        assert str(w.call("AUTH", "app", secrets["wrong1"])) == WRONGPASS
        assert str(w.call("AUTH", secrets["in_name_slot"], secrets["wrong2"])) == WRONGPASS
        assert str(w.call("AUTH", "nosuchuser", "x")) == WRONGPASS
        assert w.call("AUTH", "app", secrets["app"]) == b"OK"
        assert w.call("SET", "app:k", values[0]) == b"OK"
        assert w.call("GET", "app:k") == values[0].encode()
        refused = [("SET", "Forbidden-Key-aa01", values[1]),
                   ("HSET", "Forbidden-Key-bb02", "field", values[2]),
                   ("EVALSHA", "f" * 40, "1", "app:q", values[3]),
                   ("PUBLISH", "Forbidden-Channel-cc03", values[4]),
                   ("SELECT", "5"), ("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1")]
        for args in refused:
            assert str(w.call(*args)).startswith("NOPERM"), args
        w.close()
        h = Wire(runner.port)
        reply = h.call("HELLO", "3", "AUTH", "helloer", secrets["hello"])
        assert reply[b"proto"] == 3
        assert h.call("SET", "h:1", values[0]) == b"OK"
        h.close()
        r = runner.client("app", secrets["app"])
        assert r.get("app:k") == values[0].encode()
        r.close()
        time.sleep(0.2)
    finally:
        runner.stop()
    text = path.read_text()
    for secret in [*secrets.values(), *values, redis7.upstream["password"]]:
        assert secret not in text, secret
    events = read_events(path)
    kinds = [e["event"] for e in events]
    assert kinds.count("connect") == 3 and kinds.count("disconnect") == 3
    assert kinds[-1] == "shutdown"
    failed = [e for e in events if e["event"] == "auth-failed"]
    assert [e["reason"] for e in failed] == ["wrong-password", "unknown-user", "unknown-user"]
    assert failed[0]["user"] == "app" and failed[1]["user"].startswith("unknown:")
    ok = [e for e in events if e["event"] == "auth-ok"]
    assert [(e["user"], e["method"]) for e in ok] == [("app", "auth"), ("helloer", "hello"),
                                                       ("app", "auth")]
    denied = {e["object"]: e for e in events if e["event"] == "denied"}
    assert {(e["command"], e.get("subcommand"), e["kind"], e["rule"]) for e in denied.values()} == {
        ("set", None, "key", "keys"), ("hset", None, "key", "keys"),
        ("evalsha", None, "script", "scripts"), ("publish", None, "channel", "channels"),
        ("select", None, "database", "databases"), ("flushall", None, "command", "commands"),
        ("config", "set", "command", "commands")}
    assert {"Forbidden-Key-aa01", "Forbidden-Key-bb02", "f" * 40,
            "Forbidden-Channel-cc03"} <= set(denied)
    assert all(e["report_only"] is False and e["user"] == "app" for e in denied.values())
    first = next(e for e in events if e["event"] == "disconnect")
    assert first["user"] == "app" and first["reason"] == "client-closed"
    assert first["commands"] == 13 and first["duration"] >= 0
    for e in events:
        if e["event"] in ("connect", "disconnect", "auth-ok", "auth-failed", "denied"):
            assert re.fullmatch(r"127\.0\.0\.1:\d+", e["client"]) and e["conn"] > 0


def test_report_only_denials_say_so(redis7, captured):
    runner = ProxyRunner({"upstream": redis7.upstream, "users": {
        "ro": {"rules": f"on {pw_hash('pw')} ~ro:* +get", "report_only": True}}}).start()
    try:
        r = runner.client("ro", "pw")
        assert r.get("elsewhere") is None     # let through, reported
        r.close()
    finally:
        runner.stop()
    denied = [e for e in captured if e.event == "denied"]
    assert len(denied) == 1 and denied[0].report_only is True and denied[0].object == "elsewhere"


@pytest.mark.parametrize("multiplex", [0, 1])
@pytest.mark.parametrize("ending", ["client-closed", "shutdown"])
def test_disconnect_counts_the_commands_the_c_lane_forwarded_too(redis7, tmp_path, multiplex,
                                                                 ending):
    """Every request once: the lane's (Lane.passed, kept across the shutdown's drain, which drops
    the lane) and the Python path's (denied ones, a pipeline the lane gives up on)."""
    path = tmp_path / "audit.jsonl"
    runner = ProxyRunner({"upstream": dict(redis7.upstream, multiplex=multiplex),
                          "audit": {"path": str(path)},
                          "users": {"app": f"on {pw_hash('pw')} ~app:* +get"}}).start()
    try:
        w = Wire(runner.port)
        assert w.call("AUTH", "app", "pw") == b"OK"
        for _ in range(5):      # pipelines, once the steady state (the lane) has taken over
            w.send(b"".join(cmd("GET", f"app:{i}") for i in range(200)))
            assert w.read(200) == [None] * 200
        # A read with a denied command in it: the lane gives all of it to the session.
        w.send(cmd("GET", "app:x") + cmd("SET", "app:x", "v") + cmd("GET", "app:y"))
        got = w.read(3)
        assert got[0] is None and str(got[1]).startswith("NOPERM") and got[2] is None
        (conn,) = runner.call(lambda: list(runner.proxy.clients))
        lane = runner.call(lambda: conn.lane_passed)
        assert lane >= 200 or conn.lane is None   # (REDISGATE_NO_LANE: all of it in Python)
        if ending == "client-closed":
            w.close()
            wait_for_text(path, '"disconnect"')
    finally:
        runner.stop()
        if ending == "shutdown":
            w.close()
    gone = [e for e in read_events(path) if e["event"] == "disconnect"]
    assert len(gone) == 1 and gone[0]["commands"] == 1004 and gone[0]["reason"] == ending


def test_a_lost_upstream_connection_is_audited_as_upstream_lost(redis7, tmp_path):
    path = tmp_path / "audit.jsonl"
    runner = ProxyRunner({"upstream": redis7.upstream, "audit": {"path": str(path)},
                          "users": {"app": f"on {pw_hash('pw')} ~app:* +get"}}).start()
    try:
        w = Wire(runner.port)
        assert w.call("AUTH", "app", "pw") == b"OK"
        assert w.call("GET", "app:1") is None
        ports = runner.call(lambda: [c.upstream.transport.get_extra_info("sockname")[1]
                                     for c in runner.proxy.clients if c.upstream is not None])
        assert len(ports) == 1
        # (Only this proxy's connection: the session's Redis is shared with other tests.)
        redis7.admin().execute_command("CLIENT", "KILL", "ADDR", f"127.0.0.1:{ports[0]}")
        w.sock.settimeout(10)
        assert w.sock.recv(100) == b""       # the client is closed, as by a Redis restart
        wait_for_text(path, '"upstream-lost"')
    finally:
        runner.stop()
    lost = [e for e in read_events(path) if e["event"] == "upstream-lost"]
    assert len(lost) == 1
    assert lost[0]["user"] == "app" and lost[0]["reason"] == "connection lost"
    assert lost[0]["client"].startswith("127.0.0.1:") and "conn" in lost[0]


# ---------------------------------------------------------------------------- bounded under a flood

def test_a_flood_of_denials_is_bounded_and_the_summaries_add_up(redis7, tmp_path):
    path = tmp_path / "audit.jsonl"
    rate = 50
    runner = ProxyRunner({
        "upstream": redis7.upstream,
        "users": {"app": f"on {pw_hash('pw')} ~app:* +get", "other": f"on {pw_hash('pw')} +ping"},
        "audit": {"path": str(path), "rate": rate},
    }).start()
    n = 5000
    try:
        start = time.monotonic()
        w = Wire(runner.port)
        assert w.call("AUTH", "app", "pw") == b"OK"
        sender = threading.Thread(target=w.send, args=(
            b"".join(cmd("GET", f"nope:{i}") for i in range(n)),))
        sender.start()
        replies = w.read(n)
        sender.join(10)
        assert all(str(r).startswith("NOPERM") for r in replies)
        bad = Wire(runner.port)
        guesses = 300
        assert [str(r) for r in (bad.call("AUTH", "other", f"guess-{i}")
                                 for i in range(guesses))] == [WRONGPASS] * guesses
        w.close()
        bad.close()
        time.sleep(1.2)       # the last second's summaries come by a timer
        elapsed = time.monotonic() - start
    finally:
        runner.stop()
    events = read_events(path)
    seconds = int(elapsed) + 3
    for kind in ("denied", "auth-failed", "connect", "auth-ok", "disconnect"):
        assert sum(e["event"] == kind for e in events) <= rate * seconds   # each kind's budget
    summaries = [e for e in events if e["event"] == "suppressed"]
    assert summaries and len(summaries) <= 6 * seconds   # (user, event) pairs a second
    for e in summaries:
        assert set(e) == {"ts", "event", "user", "event_suppressed", "count"} and e["count"] > 0
    denied = sum(e["event"] == "denied" for e in events)
    assert denied + sum(e["count"] for e in summaries
                        if (e["user"], e["event_suppressed"]) == ("app", "denied")) == n
    failed = sum(e["event"] == "auth-failed" for e in events)
    assert failed + sum(e["count"] for e in summaries
                        if (e["user"], e["event_suppressed"]) == ("other", "auth-failed")) \
        == guesses
    assert len(path.read_bytes()) < 250 * (2 * rate + 6) * seconds


# ---------------------------------------------------------------------------- logrotate

def _serve(tmp_path: Path, raw: dict) -> tuple[subprocess.Popen, Path]:
    cfg = tmp_path / "redisgate.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "redisgate", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    port = int(raw["listen"].rsplit(":", 1)[1])
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            redis.Redis(port=port, socket_timeout=2).ping()
        except redis.exceptions.AuthenticationError:
            break
        except redis.exceptions.ResponseError:
            break
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "never listened"
            time.sleep(0.05)
    return proc, cfg


def _failed_auths(port: int, tag: str, n: int) -> None:
    w = Wire(port)
    for i in range(n):
        assert str(w.call("AUTH", "app", f"{tag}-{i}")) == WRONGPASS
    w.close()


@pytest.mark.parametrize("how", ["SIGHUP", "redisgate reload"])
def test_the_file_is_reopened_for_logrotate_and_no_line_is_lost(redis7, tmp_path, how):
    port = free_port()
    path = tmp_path / "audit.jsonl"
    raw = {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
           "users": {"app": f"on {pw_hash('pw')} ~app:* +get"},
           "auth_throttle": {"max_failures": 1_000_000}, "pid_file": "rg.pid",
           "audit": {"path": "audit.jsonl", "rate": 0}}
    proc, cfg = _serve(tmp_path, raw)
    try:
        _failed_auths(port, "before", 20)
        rotated = tmp_path / "audit.jsonl.1"
        os.rename(path, rotated)                    # logrotate's rename ...
        _failed_auths(port, "between", 5)           # (these still go to the renamed file)
        if how == "SIGHUP":                         # ... and its postrotate
            proc.send_signal(signal.SIGHUP)
        else:
            r = subprocess.run([sys.executable, "-m", "redisgate", "reload", "--config", str(cfg)],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline, "not re-opened"
            time.sleep(0.05)
        _failed_auths(port, "after", 20)
        time.sleep(0.3)
    finally:
        stop_serve(proc)
    assert proc.returncode == 0, proc.stderr.read().decode()
    old, new = read_events(rotated), read_events(path)
    assert sum(e["event"] == "auth-failed" for e in old) == 25
    assert sum(e["event"] == "auth-failed" for e in new) == 20
    reload = [e for e in new if e["event"] == "reload"]
    assert len(reload) == 1 and reload[0]["ok"] is True
    assert new[-1]["event"] == "shutdown" and new[-1]["reason"] == "SIGTERM"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    # Every connection's connect has its disconnect, across the two files.
    both = old + new
    assert sum(e["event"] == "connect" for e in both) == sum(
        e["event"] == "disconnect" for e in both) >= 4


def test_a_rejected_reload_is_audited_with_each_problem(redis7, tmp_path):
    port = free_port()
    raw = {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
           "users": {"app": f"on {pw_hash('pw')} ~app:* +get"},
           "audit": {"path": "audit.jsonl"}}
    proc, cfg = _serve(tmp_path, raw)
    try:
        cfg.write_text(yaml.safe_dump({**raw, "users": {"app": "on >plaintext +get"},
                                       "limits": {"max_clients": -1}}))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while '"reload"' not in (tmp_path / "audit.jsonl").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop_serve(proc)
    events = read_events(tmp_path / "audit.jsonl")
    reload = [e for e in events if e["event"] == "reload"]
    assert len(reload) == 1 and reload[0]["ok"] is False and len(reload[0]["problems"]) == 2
    assert any(p.startswith("limits.max_clients:") for p in reload[0]["problems"])
    assert "plaintext" not in (tmp_path / "audit.jsonl").read_text()


def test_an_audit_file_that_cannot_be_opened_stops_serve_with_a_clear_message(redis7, tmp_path):
    port = free_port()
    # A dangling symbolic link into a directory that does not exist: check's look at the path
    # passes, opening it fails.
    (tmp_path / "audit.log").symlink_to(tmp_path / "gone" / "audit.log")
    raw = {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
           "users": {"app": f"on {pw_hash('pw')} +get"}, "audit": {"path": "audit.log"}}
    cfg = tmp_path / "redisgate.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "redisgate", "serve", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "audit.path:" in r.stderr and "Traceback" not in r.stderr


def test_stdout_json_from_a_real_serve(redis7, tmp_path):
    port = free_port()
    raw = {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
           "users": {"app": f"on {pw_hash('pw')} ~app:* +get"}, "audit": {}}
    proc, _ = _serve(tmp_path, raw)
    try:
        c = redis.Redis(port=port, username="app", password="pw", protocol=2)
        assert c.get("app:x") is None
        c.close()
        time.sleep(0.2)
    finally:
        stop_serve(proc)
    out = proc.stdout.read().decode()
    events = [json.loads(line) for line in out.splitlines()]
    assert {"connect", "auth-ok", "disconnect", "shutdown"} <= {e["event"] for e in events}
    assert "redisgate.audit" not in proc.stderr.read().decode()   # not also on stderr
