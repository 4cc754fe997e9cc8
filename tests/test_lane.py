"""The C lane (redisgate._native._lane): a client connection's steady state.

First the Lane alone (no sockets): what it takes and what it hands to the slow path. Then the
proxy with and without it, against real Redis: the same random conversations must get the same
bytes back, byte for byte, and the lane must actually have carried traffic. Then the moments
where the Python path has to take the session back: a config reload, the upstream going away.
"""
from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import hiredis
import pytest

from redisgate.io import server
from redisgate.config import build_config

from proxy import ProxyRunner, pw_hash
from wire import Wire, cmd

_lane = pytest.importorskip("redisgate._native._lane", reason="redisgate._native._lane is not built here")
Lane = _lane.Lane


class Recorder:
    """A lane wired to lists: what it wrote each way, and what it handed to the slow paths."""

    def __init__(self):
        self.up, self.client, self.slow_client, self.slow_up = [], [], [], []
        self.lane = Lane(self.slow_client.append, self.slow_up.append)

    def arm(self, known, due=0, max_args=1024, max_bulk=512 << 20):
        self.lane.arm(known, self.up.append, self.client.append, due, max_args, max_bulk)


NO_KEY, ASK = "allow", "ask"   # entry()'s positions that are not positions


def entry(fewest, most, pos, prefixes=(), exact=frozenset(), match=None, counter=None):
    """A memo entry as Session._inline builds it (memo.compile_entry): a _lane.Verdict (its spec
    is not used by the lane)."""
    counter = _lane.Counter() if counter is None else counter
    if pos == NO_KEY:
        return _lane.Verdict.allow(spec=None, fewest=fewest, most=most, counter=counter)
    if pos == ASK:
        return _lane.Verdict.ask(spec=None, fewest=fewest, most=most, counter=counter)
    return _lane.Verdict.one_key(spec=None, fewest=fewest, most=most, pos=pos,
                                 prefixes=prefixes, exact=frozenset(exact), match=match,
                                 counter=counter)


KNOWN = {
    b"GET": entry(2, 2, 1, (b"k:",), frozenset({b"exact"}), lambda k: k.endswith(b"!")),
    b"get": entry(2, 2, 1, (b"k:",)),
    b"SET": entry(3, 1 << 62, 1, (b"k:", b"kk")),
    b"PING": entry(1, 2, NO_KEY),
    b"EVALSHA": entry(3, 1 << 62, ASK),
}


def test_disarmed_lane_hands_everything_to_the_slow_paths():
    r = Recorder()
    assert not r.lane.armed
    r.lane.client_data(cmd("GET", "k:1"))
    r.lane.upstream_data(b"$1\r\nx\r\n")
    assert r.slow_client == [cmd("GET", "k:1")] and r.slow_up == [b"$1\r\nx\r\n"]
    assert r.up == r.client == []


def test_armed_lane_forwards_allowed_requests_as_they_came_and_passes_their_replies():
    r = Recorder()
    r.arm(KNOWN, due=2)
    data = cmd("GET", "k:1") + cmd("SET", "kkx", "v", "EX", "10") + cmd("GET", "exact") \
        + cmd("GET", "ok!") + cmd("PING") + cmd("get", "k:")
    r.lane.client_data(data)
    assert r.up == [data] and r.slow_client == []
    assert r.lane.due == 2 + 6 and r.lane.passed == 6
    replies = b"$1\r\nx\r\n+OK\r\n$-1\r\n:12\r\n-ERR x\r\n+PONG\r\n"
    r.lane.upstream_data(replies)
    assert r.client == [replies] and r.lane.due == 2
    assert r.lane.disarm() == 2 and not r.lane.armed and r.lane.due == 0


def test_armed_lane_passes_any_whole_reply_due():
    # Arrays, maps and long bulks too (an Asynq dequeue, HGETALL in RESP3, a 16 KB GET).
    r = Recorder()
    r.arm(KNOWN, due=3)
    replies = [b"*2\r\n$3\r\nmsg\r\n:17\r\n", b"%1\r\n+f\r\n_\r\n",
               b"$2000\r\n" + b"x" * 2000 + b"\r\n"]
    for data in replies:
        r.lane.upstream_data(data)
    assert r.client == replies and r.slow_up == [] and r.lane.due == 0


@pytest.mark.parametrize("data", [
    cmd("GET", "z:1"),                                   # key outside every pattern
    cmd("GET", "k:1") + cmd("GET", "z:1"),               # one bad request spoils the read
    cmd("GET", "k:1", "extra"),                          # arity
    cmd("SET", "k:1"),                                   # arity (fewest)
    cmd("PING", "a", "b"),                               # arity (most)
    cmd("EVALSHA", "abc", "0"),                          # ASK: the judge decides
    cmd("DEL", "k:1"),                                   # not in the memo
    cmd("Get", "k:1"),                                   # the memo is per name as sent
    cmd("GET", "k:1")[:-3],                              # cut short
    cmd("GET", "k:1") + b"*2\r\n$3\r\nGET",              # a request still arriving
    b"GET k:1\r\n",                                      # inline
    b"*2\r\n$03\r\nGET\r\n$3\r\nk:1\r\n",                # not canonical
    b"*0\r\n",
    b"",
])
def test_armed_lane_hands_whole_reads_it_cannot_prove_to_the_slow_path(data):
    r = Recorder()
    r.arm(KNOWN, due=1)
    r.lane.client_data(data)
    assert r.up == [] and r.slow_client == [data]
    assert r.lane.armed and r.lane.due == 1   # the slow path disarms (ClientConnection does)


def test_limits_are_the_parsers():
    r = Recorder()
    r.arm(KNOWN, max_args=2, max_bulk=3)
    r.lane.client_data(cmd("GET", "k:1"))
    r.lane.client_data(cmd("GET", "k:12"))       # a bulk beyond max_bulk
    r.lane.client_data(cmd("SET", "k:1", "v"))   # more arguments than max_args
    assert r.up == [cmd("GET", "k:1")]
    assert r.slow_client == [cmd("GET", "k:12"), cmd("SET", "k:1", "v")]


@pytest.mark.parametrize("data", [
    b"$1\r\nx\r\n" * 3,             # more replies than due
    b"$1\r\nx\r\n$1\r\n",           # a reply cut short
    b"*2\r\n$1\r\nx\r\n",           # an array cut short
    b">2\r\n$1\r\na\r\n$1\r\nb\r\n",  # a RESP3 push (tracking, pub/sub): not a reply
    b"$01\r\nx\r\n",                # not canonical
    b"$2000\r\n" + b"x" * 1999,      # a long bulk still arriving
])
def test_replies_the_lane_cannot_count_go_to_the_slow_path(data):
    r = Recorder()
    r.arm(KNOWN, due=2)
    r.lane.upstream_data(data)
    assert r.client == [] and r.slow_up == [data] and r.lane.due == 2


def test_no_replies_due_means_nothing_passes():
    r = Recorder()
    r.arm(KNOWN, due=0)
    r.lane.upstream_data(b"+OK\r\n")
    assert r.client == [] and r.slow_up == [b"+OK\r\n"]


def test_an_emptied_memo_stops_the_lane_at_the_next_command():
    # Gate.forget_fast() empties the memos on reload: that is how a lane sees a reload.
    r = Recorder()
    known = dict(KNOWN)
    r.arm(known)
    r.lane.client_data(cmd("GET", "k:1"))
    known.clear()
    r.lane.client_data(cmd("GET", "k:1"))
    assert r.up == [cmd("GET", "k:1")] and r.slow_client == [cmd("GET", "k:1")]


def test_bad_arguments_and_errors_are_exceptions_not_crashes():
    r = Recorder()
    with pytest.raises(TypeError):
        Lane(1, 2)
    with pytest.raises(TypeError):
        r.lane.arm([], r.up.append, r.client.append, 0, 1, 1)
    with pytest.raises(ValueError):
        r.lane.arm({}, r.up.append, r.client.append, -1, 1, 1)
    r.arm(KNOWN)
    with pytest.raises(RuntimeError):
        r.arm(KNOWN)
    boom = Lane(r.slow_client.append, r.slow_up.append)

    def fail(data):
        raise OSError("write failed")
    boom.arm(KNOWN, fail, fail, 1, 16, 1 << 20)
    with pytest.raises(OSError):
        boom.client_data(cmd("GET", "k:1"))
    with pytest.raises(OSError):
        boom.upstream_data(b"+OK\r\n")
    # A match callable that raises is the caller's exception too.
    bad = Lane(r.slow_client.append, r.slow_up.append)
    bad.arm({b"GET": entry(2, 2, 1, (), (), lambda k: 1 / 0)}, fail, fail, 0, 16, 1 << 20)
    with pytest.raises(ZeroDivisionError):
        bad.client_data(cmd("GET", "x"))
    # Memo entries that are not Verdicts are not read: the slow path decides.
    odd = Recorder()
    odd.arm({b"GET": (None, 2, 2, 1, (b"k:",), frozenset(), None), b"SET": object()})
    odd.lane.client_data(cmd("GET", "k:1"))
    odd.lane.client_data(cmd("SET", "k:1", "v"))
    assert odd.up == [] and len(odd.slow_client) == 2


# ---------------------------------------------------------------- EVALSHA (session.SCRIPT)

_Q = b"asynq:{default}:"
_SHA_ENQUEUE = b"98d28b42650870a743450ffda9791e9e19c6991b"   # Asynq v0.26's scripts
_SHA_DEQUEUE = b"a8153319360adc71cdc370107f8ab9786f204765"
_SHA_DONE = b"1241eaa1c73409baaf1fea0c08d203a4911bda15"
_WORKER = {"rules": f"on {pw_hash('pw')}", "profile": ["asynq-worker", "asynq-producer"],
           "queues": ["default", "critical"]}


def _asynq_calls(tid: bytes, q: bytes = _Q, date: bytes = b"2024-05-31") -> list[list[bytes]]:
    """enqueue, dequeue and done as go-redis sends them (bench/judge.py's shapes)."""
    task = q + b"t:" + tid
    return [
        [b"evalsha", _SHA_ENQUEUE, b"2", task, q + b"pending", b"msg", tid, b"1717171717000000000"],
        [b"evalsha", _SHA_DEQUEUE, b"4", q + b"pending", q + b"paused", q + b"active",
         q + b"lease", b"1717171747", q + b"t:"],
        [b"evalsha", _SHA_DONE, b"5", q + b"active", q + b"lease", task, q + b"processed:" + date,
         q + b"processed", tid, b"1725000000", b"9223372036854775807"],
    ]


def _scripted_session():
    """A logged-in session of an Asynq worker+producer user, which has judged one call of each
    script for queue `default` (so its memo holds their forms), and its memo."""
    from redisgate.session.gate import Gate
    from redisgate.session import Session
    cfg = build_config({"upstream": {"address": "127.0.0.1:1"}, "users": {"w": _WORKER}})
    s = Session(Gate(cfg, upstream_version=(7, 0, 15)), "test")
    s.lane_scripts = True
    s.client_data(cmd("AUTH", "w", "pw"))
    s.connected()
    calls = b"".join(cmd(*c) for c in _asynq_calls(b"%036d" % 0))
    s.client_data(calls)
    assert b"".join(s.to_upstream) == calls and s.to_client == [b"+OK\r\n"]   # (AUTH's reply)
    return s, s.gate.fast_commands[s.user_entry.user]


def test_the_lane_passes_evalsha_calls_of_the_scripts_and_queues_the_judge_allowed():
    s, known = _scripted_session()
    r = Recorder()
    r.arm(known)
    calls = b"".join(cmd(*c) for c in _asynq_calls(b"%036d" % 7, date=b"2024-06-01"))
    r.lane.client_data(calls)
    assert r.up == [calls] and r.lane.passed == 3
    # Queue `critical` is allowed too, but no call for it was judged yet: the judge decides.
    other = b"".join(cmd(*c) for c in _asynq_calls(b"1", q=b"asynq:{critical}:"))
    r.lane.client_data(other)
    assert r.slow_client == [other]
    # Once it has, that queue's calls pass as well.
    s.client_data(other)
    r.lane.client_data(other)
    assert r.up == [calls, other]


def _mutations(rnd: random.Random, args: list[bytes]) -> list[bytes]:
    args = list(args)
    i = rnd.randrange(1, len(args) + 1)
    pick = rnd.random()
    if pick < 0.15 and i < len(args):
        del args[i]
    elif pick < 0.25:
        args.insert(i, rnd.choice([b"x", b"asynq:{default}:pending", b""]))
    elif i < len(args):
        a = args[i]
        args[i] = rnd.choice([
            a[:-1], a + b"x", a.upper(), b"", b"0" + a, a.replace(b"default", b"critical"),
            a.replace(b"default", b"other"), a.replace(b"default", b"def}ault"),
            a.replace(b"{default}", b"{}"), a.replace(b"-", b"/"), a.replace(b"05", b"5"),
            a.replace(b"2024", b"\xef\xbc\x92024"), a.replace(b":t:", b":t"), a + b"-01",
            a.replace(b"asynq:", b"asynq;"), rnd.choice([b"1", b"2", b"3", b"4", b"5", b"-2"]),
        ])
    return args


def test_the_lane_never_passes_an_evalsha_the_judge_would_refuse():
    """Random mutations of allowed calls (other queues, cut or extended names, dates, numkeys,
    argument counts): whatever the lane forwards, the judge allows."""
    from redisgate.protocol.commands import TABLE
    s, known = _scripted_session()
    user = s.user_entry.user
    rnd = random.Random(4)
    passed = refused = 0
    for n in range(3000):
        base = rnd.choice(_asynq_calls(b"%036d" % rnd.randrange(10**6),
                                       date=rnd.choice([b"2024-05-31", b"2031-12-01"])))
        args = base if n % 10 == 0 else _mutations(rnd, base)
        r = Recorder()
        r.arm(known)
        r.lane.client_data(cmd(*args))
        if r.up:
            passed += 1
            spec = TABLE.lookup(args)
            assert spec is not None and spec.check_arity(len(args))
            assert user.judge(spec, args, 0) is None, args
        else:
            refused += 1
    assert passed > 300 and refused > 1000


# ---------------------------------------------------------------- end to end, with and without

USERS = {
    "app": f"on {pw_hash('pw')} ~k:* ~x?y* ~exact %R~ro:* +@all -flushall -flushdb -debug "
           "-shutdown -config -keys -scan -randomkey -client -monitor -sync -psync -replicaof "
           "-slaveof -save -bgsave -bgrewriteaof -failover -lastsave -time -info -object "
           "-memory -latency -slowlog -acl -wait -script -function -fcall -fcall_ro -eval "
           "-eval_ro -evalsha -evalsha_ro -cluster -migrate -restore -dump -swapdb -move -copy "
           "-pfdebug -pfselftest -lolwut -command -hello -reset -quit -blpop -brpop -blmove "
           "-brpoplpush -bzpopmin -bzpopmax -blmpop -bzmpop -xread -xreadgroup -psubscribe "
           "-subscribe -ssubscribe -unsubscribe -punsubscribe -sunsubscribe",
}

_KEYS = [b"k:1", b"k:2", b"k:list", b"xay", b"xzy1", b"exact", b"ro:1", b"z:1", b"exactly", b"x"]


def _random_request(rnd: random.Random) -> bytes:
    key = rnd.choice(_KEYS)
    pick = rnd.random()
    if pick < 0.25:
        return cmd("GET", key)
    if pick < 0.4:
        return cmd("SET", key, rnd.choice([b"v", b"\r\n", b"x" * rnd.randint(0, 3000)]))
    if pick < 0.5:
        return cmd("INCR", key)
    if pick < 0.58:
        return cmd("RPUSH", b"k:list", b"e%d" % rnd.randint(0, 9))
    if pick < 0.64:
        return cmd("LRANGE", b"k:list", 0, rnd.randint(-1, 5))    # array replies
    if pick < 0.68:
        return cmd("MGET", key, rnd.choice(_KEYS))                 # several keys: the judge
    if pick < 0.72:
        return cmd(rnd.choice(["get", "gEt", "GET"]), key)
    if pick < 0.75:
        return cmd("PING")
    if pick < 0.78:
        return cmd("FLUSHALL")                                      # denied
    if pick < 0.80:
        return cmd("NOSUCHCMD", key)                                # unknown
    if pick < 0.82:
        return cmd("GET")                                           # arity
    if pick < 0.84:
        return b"PING\r\n"                                          # inline
    if pick < 0.87:
        return cmd("MULTI") + cmd("INCR", b"k:1") + cmd("GET", key) + cmd("EXEC")
    if pick < 0.89:
        return cmd("SELECT", rnd.choice([0, 1]))
    if pick < 0.91:
        return cmd("WATCH", b"k:1") + cmd("UNWATCH")
    if pick < 0.93:
        return cmd("ECHO", b"e" * rnd.randint(0, 2000))
    if pick < 0.95:
        return cmd("AUTH", "app", rnd.choice(["pw", "wrong"]))
    return cmd("DEL", key)


def _plain_request(rnd: random.Random) -> bytes:
    key = rnd.choice(_KEYS[:6] + [b"ro:1"])    # allowed, by prefix, glob, exact name; ro: reads
    pick = rnd.random()
    if pick < 0.5:
        return cmd(rnd.choice(["GET", "get"]), key)
    if pick < 0.7:
        return cmd("SET", key, b"v%d" % rnd.randint(0, 99))
    if pick < 0.85:
        return cmd("INCR", b"k:n")
    return cmd("PING")


def _conversation(port: int, seed: int, resp3: bool = False) -> bytes:
    """Send a random conversation, in runs of whole requests or cut anywhere; everything the
    proxy answered (after HELLO's reply, which names a connection), as bytes."""
    rnd = random.Random(seed)
    requests = []
    while len(requests) < 60:
        # Runs of plain traffic (the lane's) between runs of anything.
        make = _plain_request if rnd.random() < 0.5 else _random_request
        requests += [make(rnd) for _ in range(rnd.randint(1, 10))]
    marker = b"the end %d" % seed
    requests.append(cmd("ECHO", marker))
    sock = socket.create_connection(("127.0.0.1", port), 10)
    got = bytearray()
    try:
        if resp3:
            sock.sendall(cmd("HELLO", "3", "AUTH", "app", "pw"))
            reader = hiredis.Reader()
            while reader.gets() is False:
                reader.feed(sock.recv(65536))
        else:
            sock.sendall(cmd("AUTH", "app", "pw"))
        i = 0
        while i < len(requests):
            run = rnd.randint(1, 8)
            data = b"".join(requests[i:i + run])
            i += run
            if rnd.random() < 0.3:    # cut anywhere, as TCP may
                cut = rnd.randint(1, len(data))
                sock.sendall(data[:cut])
                time.sleep(0.001)
                data = data[cut:]
            sock.sendall(data)
            if rnd.random() < 0.5:
                time.sleep(0.002)     # let the proxy see the boundary
        sock.settimeout(10)
        end = b"$%d\r\n%s\r\n" % (len(marker), marker)
        while not got.endswith(end):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    finally:
        sock.close()
    return bytes(got)


def _fresh(redis_server) -> None:
    redis_server.admin().flushall()


@pytest.mark.parametrize("seed_base, resp3", [(0, False), (1000, True)])
def test_the_lane_answers_byte_for_byte_what_the_python_path_answers(redis7, monkeypatch,
                                                                    seed_base, resp3):
    made = []

    def recorded_lane(*args):
        made.append(Lane(*args))
        return made[-1]
    runner = ProxyRunner({"upstream": redis7.upstream, "users": USERS}).start()
    try:
        for seed in range(seed_base, seed_base + 25):
            monkeypatch.setattr(server, "Lane", None)      # connections made now have no lane
            _fresh(redis7)
            expected = _conversation(runner.port, seed, resp3)
            monkeypatch.setattr(server, "Lane", recorded_lane)
            _fresh(redis7)
            assert _conversation(runner.port, seed, resp3) == expected, f"seed {seed}"
    finally:
        runner.stop()
    assert len(made) == 25 and sum(lane.passed for lane in made) > 100


def _clients(runner):
    return runner.call(lambda: list(runner.proxy.clients))


def _armed_client(runner):
    """A logged-in raw client after a few GETs of a missing key, and its (armed) connection."""
    w = Wire(runner.port)
    assert w.call("AUTH", "app", "pw") == b"OK"
    assert w.call("DEL", "k:1") in (0, 1)
    for _ in range(5):
        assert w.call("GET", "k:1") is None
    [conn] = _clients(runner)
    assert runner.call(lambda: conn.lane.armed)
    return w, conn


def test_the_lane_carries_the_steady_state_and_lets_go_for_anything_else(redis7):
    runner = ProxyRunner({"upstream": redis7.upstream, "users": USERS}).start()
    try:
        w = Wire(runner.port)
        assert w.call("AUTH", "app", "pw") == b"OK"
        assert w.call("SET", "k:1", "v") == b"OK"
        for _ in range(50):
            assert w.call("GET", "k:1") == b"v"
        [conn] = _clients(runner)
        assert conn.lane.armed and conn.lane.passed >= 49
        # A denial goes through the Python path (and its exact error), then the lane again.
        assert isinstance(w.call("GET", "z:1"), Exception)
        w.send(cmd("GET", "k:1") * 100)
        assert w.read(100) == [b"v"] * 100
        assert runner.call(lambda: conn.lane.armed) and conn.lane.passed >= 149
        # A transaction is the Python path's, and the lane comes back after EXEC.
        w.send(cmd("MULTI") + cmd("GET", "k:1") + cmd("EXEC"))
        assert w.read(3) == [b"OK", b"QUEUED", [b"v"]]
        assert w.call("GET", "k:1") == b"v"
        assert runner.call(lambda: conn.lane.armed)
    finally:
        runner.stop()


def test_a_reload_reaches_an_armed_connection_at_its_next_command(redis7):
    runner = ProxyRunner({"upstream": redis7.upstream, "users": USERS}).start()
    try:
        w, conn = _armed_client(runner)
        cfg = build_config({"listen": f"127.0.0.1:{runner.port}", "upstream": redis7.upstream,
                            "users": {"app": f"on {pw_hash('pw')} ~other:* +get"}},
                           base_dir=Path("."), allow_embedded=False)
        runner.call(runner.proxy.gate.reload, cfg)
        reply = w.call("GET", "k:1")
        assert isinstance(reply, Exception) and "no permissions" in str(reply)
        assert w.call("GET", "other:1") is None
    finally:
        runner.stop()


def test_an_armed_connection_whose_upstream_dies_is_closed_as_by_a_redis_restart(redis7):
    # (A dedicated link: a lost shared link closes only the clients with replies in flight.)
    runner = ProxyRunner({"upstream": dict(redis7.upstream, multiplex=0), "users": USERS}).start()
    try:
        w, conn = _armed_client(runner)
        # Kill the proxy's upstream connection from Redis's side.
        admin = redis7.admin()
        ids = [c["id"] for c in admin.client_list() if c.get("cmd") in ("get", "auth")
               and int(c["id"]) != admin.client_id()]
        assert ids
        for i in ids:
            admin.client_kill_filter(_id=i)
        assert w.closed()
        assert conn.lane is None   # let go of when the connection closed
    finally:
        runner.stop()


# ---------------------------------------------------------------- shared links: Lane + Router

class FakeLink:
    """A shared link's books (a real _lane.LinkState, what server.SharedLink keeps them in) with
    a recording connection: what a Lane and a Router act on."""

    def __init__(self):
        self.written = []
        self.queued = []   # after_send's calls: (owner, size, replies)
        self.state = _lane.LinkState(lambda *args: self.queued.append(args))
        self.state.attach(self, self.written.append)
        self.state.ready = True


class FakeOwner:
    """A ClientConnection whose lane is armed on the link."""

    def __init__(self, link, due=0):
        self.rec = Recorder()
        self.lane = self.rec.lane
        self.lane.arm(KNOWN, None, self.rec.client.append, due, 1024, 1 << 20, link=link.state,
                      owner=self)


def test_a_shared_lane_writes_an_idle_link_at_once_and_tells_its_books():
    link = FakeLink()
    st = link.state
    a = FakeOwner(link)
    a.lane.client_data(cmd("GET", "k:1") + cmd("GET", "k:2"))
    assert link.written == [cmd("GET", "k:1") + cmd("GET", "k:2")] and link.queued == []
    assert st.due_owners() == [a, a] and st.due == 2 and a.lane.due == 2
    # Busy now: queued (and counted), and after_send is told once (it schedules the flush)...
    a.lane.client_data(cmd("GET", "k:3"))
    assert link.queued == [(a, len(cmd("GET", "k:3")), 1)] and st.flush_soon
    assert st.due_owners() == [a] * 3 and st.due == 3 and a.lane.due == 3
    # ...after which the turn's other bytes join the queue in C.
    b = FakeOwner(link)
    b.lane.client_data(cmd("SET", "k:4", "v"))
    a.lane.client_data(cmd("PING"))
    assert st.out == [cmd("GET", "k:3"), cmd("SET", "k:4", "v"), cmd("PING")]
    assert len(link.queued) == 1
    assert st.due_owners() == [a, a, a, b, a] and st.due == 5
    st.flush()
    assert link.written[-1] == cmd("GET", "k:3") + cmd("SET", "k:4", "v") + cmd("PING")
    assert st.out == [] and not st.flush_soon
    # A link that is not ready (connecting): queued, and after_send told every time.
    st.ready = False
    a.lane.client_data(cmd("PING"))
    a.lane.client_data(cmd("PING"))
    assert link.queued[1:] == [(a, len(cmd("PING")), 1)] * 2 and st.out == [cmd("PING")] * 2
    st.flush()   # (nothing is written while not ready)
    assert st.out == [cmd("PING")] * 2 and len(link.written) == 2


def _routed(due: int):
    """A fake link, its Router (whose slow path records), and one owner armed on the link that
    is due `due` replies, as the link's books say too."""
    link = FakeLink()
    slow = []
    router = _lane.Router(link.state, link, slow.append)
    owner = FakeOwner(link, due=due)
    link.state.sent(owner, due, owner.lane)
    link.state.due = due
    return link, slow, router, owner


def test_the_router_routes_flat_replies_to_armed_lanes_and_leaves_the_rest_to_python():
    link = FakeLink()
    st = link.state
    slow = []
    router = _lane.Router(st, link, slow.append)
    a, b = FakeOwner(link, due=2), FakeOwner(link, due=1)
    st.sent(a, 2, a.lane)
    st.sent(b, 1, b.lane)
    st.sent(a, 0, a.lane)
    setup = object()
    st.sent(setup, 1)
    st.due = 4
    router.data_received(b"+OK\r\n$1\r\nx\r\n:1\r\n+OK\r\n")
    assert a.rec.client == [b"+OK\r\n$1\r\nx\r\n"] and b.rec.client == [b":1\r\n"]
    assert slow == [b"+OK\r\n"]          # the setup reply: the Python path's
    assert st.due_owners() == [setup] and st.due == 1 and st.pending == 1
    assert a.lane.due == 0 and b.lane.due == 0


@pytest.mark.parametrize("reply", [
    b"$1\r\n",                   # cut short
    b"*2\r\n$1\r\nx\r\n",        # an array cut short
    b">2\r\n$1\r\na\r\n$1\r\nb\r\n",   # a push: nobody's reply
    b"|1\r\n+a\r\n+b\r\n+c\r\n",      # an attribute (Redis sends none)
])
def test_the_router_stops_at_a_reply_it_cannot_count(reply):
    link, slow, router, a = _routed(2)
    router.data_received(b"+OK\r\n" + reply)
    assert a.rec.client == [b"+OK\r\n"] and slow == [reply]
    assert link.state.due_owners() == [a] and link.state.due == 1 and a.lane.due == 1


def test_the_router_leaves_disarmed_owners_half_read_replies_and_old_connections_to_python():
    link, slow, router, a = _routed(1)
    st = link.state
    st.clean = False                         # a reply half read by the Python path
    router.data_received(b"+OK\r\n")
    st.clean = True
    st.attach(object(), link.written.append)   # a reconnect: this router's connection is old
    router.data_received(b"+OK\r\n")
    st.attach(link, link.written.append)
    a.lane.disarm()
    router.data_received(b"+OK\r\n")
    assert slow == [b"+OK\r\n"] * 3 and a.rec.client == []
    other = FakeLink()                       # armed on another link
    b = FakeOwner(other, due=1)
    assert st.forget() == [a]
    st.sent(b, 1, b.lane)
    router.data_received(b"+OK\r\n")
    c = FakeOwner(link, due=1)               # sent by the Python path without its lane
    st.forget()
    st.sent(c, 1)
    router.data_received(b"+OK\r\n")
    assert b.rec.client == [] and c.rec.client == [] and len(slow) == 5


def test_the_router_never_routes_more_than_a_lane_or_the_link_is_due():
    link = FakeLink()
    slow = []
    router = _lane.Router(link.state, link, slow.append)
    a = FakeOwner(link, due=1)
    link.state.sent(a, 3, a.lane)            # inconsistent books: the Python path sorts it out
    link.state.due = 3
    router.data_received(b"+OK\r\n+OK\r\n")
    assert a.rec.client == [] and slow == [b"+OK\r\n+OK\r\n"]
    link, slow, router, a = _routed(2)
    link.state.due = 1
    router.data_received(b"+OK\r\n+OK\r\n")
    assert a.rec.client == [] and slow == [b"+OK\r\n+OK\r\n"]


@pytest.mark.parametrize("seeds, resp3", [(range(2000, 2015), False), (range(2100, 2115), True)])
def test_on_a_shared_link_the_lane_answers_what_the_python_path_answers(redis7, monkeypatch,
                                                                       seeds, resp3):
    """The same conversations on a shared link (upstream.multiplex: 1) with and without lanes,
    while another client keeps the link busy with its own traffic (so replies interleave). RESP3
    clients (HELLO 3, as go-redis) share a RESP3 link, and the noise is on it too."""
    import threading
    made = []

    def recorded_lane(*args):
        made.append(Lane(*args))
        return made[-1]
    runner = ProxyRunner({"upstream": dict(redis7.upstream, multiplex=1), "users": USERS}).start()
    stop = threading.Event()
    noise_errors = []

    def noise():
        try:
            w = Wire(runner.port)
            if resp3:
                w.call("HELLO", "3", "AUTH", "app", "pw")
            else:
                assert w.call("AUTH", "app", "pw") == b"OK"
            n = 0
            while not stop.is_set():
                w.send(cmd("INCR", "k:noise") * 5 + cmd("GET", "k:noise"))
                got = w.read(6)
                assert got[:5] == list(range(n + 1, n + 6)) and got[5] == b"%d" % (n + 5)
                n += 5
        except Exception as e:   # noqa: BLE001 - reported below
            noise_errors.append(e)
    def noisy_conversation(lane, seed: int) -> bytes:
        monkeypatch.setattr(server, "Lane", lane)   # for the connections made from now on
        _fresh(redis7)
        t = threading.Thread(target=noise)
        t.start()
        try:
            return _conversation(runner.port, seed, resp3)
        finally:
            stop.set()
            t.join(10)
            stop.clear()
    try:
        for seed in seeds:
            expected = noisy_conversation(None, seed)
            assert noisy_conversation(recorded_lane, seed) == expected, f"seed {seed}"
            assert not noise_errors, noise_errors
    finally:
        stop.set()
        runner.stop()
    assert sum(lane.passed for lane in made) > 100


@pytest.mark.parametrize("multiplex", [0, 1])
def test_asynq_scripts_take_the_lane_once_judged(redis7, multiplex):
    runner = ProxyRunner({"upstream": dict(redis7.upstream, multiplex=multiplex),
                          "users": {"w": _WORKER}}).start()
    try:
        w = Wire(runner.port)
        w.call("HELLO", "3", "AUTH", "w", "pw")     # go-redis's handshake
        for i in range(20):
            w.send(b"".join(cmd(*c) for c in _asynq_calls(b"%036d" % i)))
            assert all("NOSCRIPT" in str(r) for r in w.read(3))   # (Redis has not loaded them)
        [conn] = _clients(runner)
        assert runner.call(lambda: conn.lane.passed) >= 50
        # Another queue's keys, or a date that is not one: refused, by the proxy.
        for bad in (_asynq_calls(b"1", q=b"asynq:{other}:")[1],
                    _asynq_calls(b"1", date=b"2024-05-3x")[2]):
            assert "NOPERM" in str(w.call(*bad))
        assert "NOSCRIPT" in str(w.call(*_asynq_calls(b"2")[1]))
    finally:
        runner.stop()


# ---------------------------------------------------------------- metrics kept in C (issue 17)

def test_the_lane_counts_what_it_forwards_per_entry_in_c_and_only_whole_reads():
    from redisgate.telemetry import metrics
    get_c, set_c = _lane.Counter(), _lane.Counter()
    known = {b"GET": entry(2, 2, 1, (b"k:",), counter=get_c),
             b"SET": entry(3, 3, 1, (b"k:",), counter=set_c),
             b"PING": entry(1, 2, NO_KEY)}   # (its own counter)
    r = Recorder()
    r.arm(known)
    before = _lane.stats()
    reads = [cmd("GET", "k:1") * 16, cmd("SET", "k:1", "v") + cmd("GET", "k:2") + cmd("PING"),
             cmd("GET", "k:1") + cmd("GET", "other")]   # (the last goes to Python whole)
    for data in reads:
        r.lane.client_data(data)
    assert (get_c.value, set_c.value) == (17, 1)
    assert r.up == reads[:2] and r.slow_client == [reads[2]]
    r.lane.upstream_data(b"$1\r\nv\r\n" * 19)
    after = _lane.stats()
    assert after["bytes_in"] - before["bytes_in"] == len(reads[0]) + len(reads[1])
    assert after["bytes_out"] - before["bytes_out"] == 7 * 19
    assert after["reads"] - before["reads"] == 4
    # The collector's family reads the very counters the memo entries hold.
    c = metrics.forwarded_counter("nobody-configured", "get")
    assert c is metrics.forwarded_counter("nobody-configured", "get")
    assert c is metrics.forwarded_counter("another-unknown", "get")   # (both `unknown`)
    assert isinstance(c, _lane.Counter)
