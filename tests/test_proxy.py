"""End to end through the proxy, against real Redis 7.0 (ACL user upstream) and legacy 5.0.

Each test proves one wire behaviour of the core: authentication, judging, ordering, the go-redis
handshake, transactions, blocking commands, pub/sub, large values, bad input, upstream failure.
"""
from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time

import hiredis
import pytest
import redis
import redis.asyncio

from proxy import ProxyRunner, pw_hash
from servers import free_port, redis_cli
from wire import Wire, cmd

PASSWORDS = {"producer": "producer-pw", "admin": "admin-pw", "reader": "reader-pw",
             "default": "default-pw"}
USERS = {
    "producer": f"on {pw_hash('producer-pw')} ~asynq:* &asynq:cancel +ping +sadd +get +set "
                "+hello +client|setname +client|getname +select +multi +exec +discard +watch "
                "+subscribe +unsubscribe +psubscribe +publish +brpop +blmove +bzpopmin +lpush "
                "+zadd +del +echo +acl|whoami +acl|dryrun +acl|log +acl|setuser +quit +reset",
    "admin": f"on {pw_hash('admin-pw')} allkeys allchannels +@all",
    "reader": f"on {pw_hash('reader-pw')} ~ro:* +@read +ping",
}


@pytest.fixture(scope="module", params=["7", "6.2", "5", "7+multiplex", "5+multiplex"])
def env(request):
    # "+multiplex": the same tests with stateless commands on shared upstream links.
    version, _, mux = request.param.partition("+")
    srv = request.getfixturevalue({"7": "redis7", "6.2": "redis62", "5": "redis5"}[version])
    upstream = dict(srv.upstream, multiplex=2) if mux else srv.upstream
    runner = ProxyRunner({"upstream": upstream, "users": USERS}).start()
    runner.srv = srv
    runner.version = version
    yield runner
    runner.stop()


@pytest.fixture
def producer(env):
    c = env.client("producer", PASSWORDS["producer"])
    yield c
    c.close()


@pytest.fixture
def admin(env):
    c = env.client("admin", PASSWORDS["admin"])
    yield c
    c.close()


# ---------------------------------------------------------------- authentication

def test_authenticated_ping_answers_pong(producer):
    assert producer.ping() is True


def test_unauthenticated_command_gets_noauth(env):
    w = Wire(env.port)
    assert str(w.call("GET", "asynq:x")) == "NOAUTH Authentication required."


def test_wrong_password_gets_wrongpass(env):
    w = Wire(env.port)
    reply = w.call("AUTH", "producer", "nope")
    assert str(reply).startswith("WRONGPASS invalid username-password pair")


def test_auth_with_one_argument_means_user_default_which_is_not_configured(env):
    w = Wire(env.port)
    assert str(w.call("AUTH", "producer-pw")).startswith("WRONGPASS")


def test_commands_pipelined_behind_a_failed_auth_are_judged_unauthenticated(env):
    w = Wire(env.port)
    w.send(cmd("AUTH", "producer", "bad") + cmd("SET", "asynq:pipelined", "1") +
           cmd("AUTH", "producer", PASSWORDS["producer"]) + cmd("GET", "asynq:pipelined"))
    r = w.read(4)
    assert str(r[0]).startswith("WRONGPASS")
    assert str(r[1]) == "NOAUTH Authentication required."
    assert r[2] == b"OK"
    assert r[3] is None


def test_client_credentials_never_reach_redis(env, producer):
    # The upstream sees the proxy's own identity, not the client's.
    if env.version == "7":
        producer.ping()   # opens an upstream connection
        clients = env.srv.admin().client_list()
        assert all(c["user"] in ("gate", "default") for c in clients)
        assert not any(c["user"] == "producer" for c in clients)
    assert producer.execute_command("ACL", "WHOAMI") == b"producer"


def test_auth_switches_user_on_the_same_connection(env):
    w = Wire(env.port)
    assert w.call("AUTH", "reader", PASSWORDS["reader"]) == b"OK"
    assert "no permissions" in str(w.call("SET", "asynq:a", "1"))
    assert w.call("AUTH", "producer", PASSWORDS["producer"]) == b"OK"
    assert w.call("SET", "asynq:a", "1") == b"OK"


def test_default_user_with_nopass_needs_no_auth(env):
    users = dict(USERS, default="on nopass ~open:* +get +set +ping")
    runner = ProxyRunner({"upstream": env.srv.upstream, "users": users}).start()
    try:
        c = runner.client()
        assert c.set("open:1", "x") and c.get("open:1") == b"x"
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.get("asynq:secret")
        w = Wire(runner.port)
        assert str(w.call("AUTH", "anything")).startswith(
            "ERR AUTH <password> called without any password configured for the default user")
    finally:
        runner.stop()


def test_pre_auth_multibulk_cap_is_enforced(env):
    w = Wire(env.port)
    w.send(cmd(*(["PING"] + ["x"] * 11)))
    data = w.read_raw_until_closed()
    assert data == b"-ERR Protocol error: unauthenticated multibulk length\r\n"


# ---------------------------------------------------------------- HELLO and the go-redis handshake

def test_go_redis_handshake(env):
    """HELLO 3 AUTH; on an error reply AUTH; CLIENT SETINFO x2 (errors ignored); PING."""
    w = Wire(env.port)
    hello = w.call("HELLO", "3", "AUTH", "producer", PASSWORDS["producer"])
    if env.version == "5":
        # Redis 5's own reply to HELLO, without the credentials (go-redis v9.0 needs its prefix).
        assert str(hello) == "ERR unknown command `HELLO`, with args beginning with: `3`, "
        assert w.call("AUTH", "producer", PASSWORDS["producer"]) == b"OK"
    else:
        assert hello[b"proto"] == 3 and hello[b"server"] == b"redis"
    w.send(cmd("CLIENT", "SETINFO", "LIB-NAME", "go-redis(,go1.22.0)") +
           cmd("CLIENT", "SETINFO", "LIB-VER", "9.14.1"))
    r = w.read(2)
    assert all(isinstance(x, (hiredis.ReplyError, bytes)) for x in r)
    assert w.call("PING") == b"PONG"
    assert w.call("SET", "asynq:hs", "v") == b"OK"


def test_hello_3_gives_resp3_replies_end_to_end(env):
    if env.version == "5":
        pytest.skip("legacy Redis has no RESP3")
    c = env.client("producer", PASSWORDS["producer"], protocol=3)
    assert c.ping()
    c.set("asynq:r3", "1")
    w = Wire(env.port)
    w.call("HELLO", "3", "AUTH", "producer", PASSWORDS["producer"])
    w.send(cmd("GET", "asynq:nope"))
    w.read(1)
    assert w.raw_log.endswith(b"_\r\n")    # RESP3 null, straight from Redis 7


def test_hello_without_auth_when_unauthenticated_gets_noauth(env):
    w = Wire(env.port)
    if env.version == "5":
        assert str(w.call("HELLO", "2")) == \
            "ERR unknown command `HELLO`, with args beginning with: `2`, "
        return
    assert str(w.call("HELLO", "2")).startswith("NOAUTH HELLO must be called with the client already")


def test_hello_bad_protocol_version(env):
    w = Wire(env.port)
    if env.version == "5":
        assert str(w.call("HELLO", "4")) == \
            "ERR unknown command `HELLO`, with args beginning with: `4`, "
        return
    assert str(w.call("HELLO", "4")) == "NOPROTO unsupported protocol version"
    assert str(w.call("HELLO", "x")) == "ERR Protocol version is not an integer or out of range"


def test_hello_2_with_auth_answers_server_map(env):
    w = Wire(env.port)
    r = w.call("HELLO", "2", "AUTH", "producer", PASSWORDS["producer"], "SETNAME", "w1")
    if env.version == "5":
        # As Redis 5 answers any HELLO; the credentials and what follows them are left out.
        assert str(r) == "ERR unknown command `HELLO`, with args beginning with: `2`, "
        assert str(w.call("CLIENT", "GETNAME")) == "NOAUTH Authentication required."
        return
    assert isinstance(r, list) and r[0] == b"server"
    assert w.call("CLIENT", "GETNAME") == b"w1"


# ---------------------------------------------------------------- judging

def test_denied_command_gets_noperm(env, producer):
    with pytest.raises(redis.exceptions.NoPermissionError) as e:
        producer.flushall()
    assert "no permissions to run the 'flushall' command" in str(e.value)


def test_denied_key_gets_noperm(env, producer):
    with pytest.raises(redis.exceptions.NoPermissionError) as e:
        producer.get("other:key")
    assert "no permissions to access one of the keys" in str(e.value)


def test_unknown_command_matches_redis_text(env, producer):
    with pytest.raises(redis.exceptions.ResponseError) as via_proxy:
        producer.execute_command("NOSUCHCMD", "a", "b")
    with pytest.raises(redis.exceptions.ResponseError) as direct:
        env.srv.admin().execute_command("NOSUCHCMD", "a", "b")
    assert str(via_proxy.value) == str(direct.value)


def test_wrong_arity_matches_redis_text(env, producer):
    with pytest.raises(redis.exceptions.ResponseError) as via_proxy:
        producer.execute_command("GET")
    with pytest.raises(redis.exceptions.ResponseError) as direct:
        env.srv.admin().execute_command("GET")
    assert str(via_proxy.value) == str(direct.value)


def test_command_newer_than_the_upstream_is_unknown(env, producer, admin):
    if env.version != "5":
        pytest.skip("needs a legacy upstream")
    with pytest.raises(redis.exceptions.ResponseError) as via_proxy:
        admin.execute_command("GETDEL", "asynq:x")
    with pytest.raises(redis.exceptions.ResponseError) as direct:
        env.srv.admin().execute_command("GETDEL", "asynq:x")
    assert str(via_proxy.value) == str(direct.value)


def test_deep_pipeline_keeps_order_with_every_third_denied(env):
    w = Wire(env.port)
    assert w.call("AUTH", "producer", PASSWORDS["producer"]) == b"OK"
    n = 10_000
    buf = bytearray()
    for i in range(n):
        if i % 3 == 2:
            buf += cmd("GET", f"denied:{i}")
        else:
            buf += cmd("ECHO", f"v{i}")
    w.send(bytes(buf))
    replies = w.read(n)
    for i, r in enumerate(replies):
        if i % 3 == 2:
            assert isinstance(r, hiredis.ReplyError), i
        else:
            assert r == f"v{i}".encode(), i


def test_inline_commands_are_judged_like_any_other(env):
    w = Wire(env.port)
    w.send(b"PING\r\n")
    assert str(w.read(1)[0]) == "NOAUTH Authentication required."
    w.send(b"AUTH producer producer-pw\r\nSET asynq:inline \"a b\"\r\nGET asynq:inline\r\nGET other\r\n")
    r = w.read(4)
    assert r[:3] == [b"OK", b"OK", b"a b"]
    assert "no permissions" in str(r[3])


# ---------------------------------------------------------------- transactions

def test_denied_command_inside_multi_aborts_exec(env, producer):
    producer.delete("asynq:tx")
    w = Wire(env.port)
    w.call("AUTH", "producer", PASSWORDS["producer"])
    w.send(cmd("MULTI") + cmd("SET", "asynq:tx", "1") + cmd("GET", "forbidden") + cmd("EXEC"))
    r = w.read(4)
    assert r[0] == b"OK" and r[1] == b"QUEUED"
    assert "no permissions" in str(r[2])
    assert str(r[3]) == "EXECABORT Transaction discarded because of previous errors."
    assert producer.get("asynq:tx") is None
    assert w.call("PING") == b"PONG"


def test_multi_exec_passes_through(producer):
    p = producer.pipeline(transaction=True)
    p.set("asynq:t1", "a").get("asynq:t1")
    assert p.execute() == [True, b"a"]


def test_watch_keys_are_checked(producer):
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.execute_command("WATCH", "other:watched")


# ---------------------------------------------------------------- blocking, pub/sub, big values

def test_blocking_commands_with_timeouts(env, producer):
    producer.delete("asynq:bl")
    t0 = time.monotonic()
    timeout = 0.2 if env.version == "7" else 1    # Redis 5 takes whole seconds only
    assert producer.brpop(["asynq:bl"], timeout=timeout) is None
    assert time.monotonic() - t0 >= timeout * 0.9
    if env.version == "7":
        assert producer.bzpopmin(["asynq:bz"], timeout=0.1) is None
        assert producer.blmove("asynq:bl", "asynq:bl2", 0.1) is None

    def later():
        time.sleep(0.2)
        env.client("producer", PASSWORDS["producer"]).lpush("asynq:bl", "x")
    threading.Thread(target=later).start()
    assert producer.brpop(["asynq:bl"], timeout=5) == (b"asynq:bl", b"x")


@pytest.mark.parametrize("protocol", [2, 3])
def test_pubsub_subscribe_and_receive(env, protocol):
    if protocol == 3 and env.version == "5":
        pytest.skip("no RESP3 on Redis 5")
    sub = env.client("producer", PASSWORDS["producer"], protocol=protocol).pubsub()
    sub.subscribe("asynq:cancel")
    msg = sub.get_message(timeout=5)
    assert msg["type"] == "subscribe"
    pub = env.client("producer", PASSWORDS["producer"])
    assert pub.publish("asynq:cancel", "task-1") >= 1
    msg = sub.get_message(timeout=5)
    while msg is None or msg["type"] != "message":
        msg = sub.get_message(timeout=5)
    assert msg["data"] == b"task-1"
    sub.ping()
    sub.unsubscribe("asynq:cancel")
    sub.close()


def test_pubsub_denied_channel(env):
    w = Wire(env.port)
    w.call("AUTH", "producer", PASSWORDS["producer"])
    r = w.call("SUBSCRIBE", "asynq:cancel", "secret-channel")
    assert "no permissions to access one of the channels" in str(r)


def test_pubsub_bare_ping_while_subscribed_resp2(env):
    w = Wire(env.port)
    w.call("AUTH", "producer", PASSWORDS["producer"])
    assert w.call("SUBSCRIBE", "asynq:cancel")[0] == b"subscribe"
    assert w.call("PING") == [b"pong", b""]
    env.client("producer", PASSWORDS["producer"]).publish("asynq:cancel", "t")
    assert w.read(1)[0] == [b"message", b"asynq:cancel", b"t"]
    assert w.call("PING") == [b"pong", b""]


def test_psubscribe_receives_pmessages(env):
    w = Wire(env.port)
    w.call("AUTH", "admin", PASSWORDS["admin"])
    assert w.call("PSUBSCRIBE", "news.*")[0] == b"psubscribe"
    env.client("admin", PASSWORDS["admin"]).publish("news.a", "hi")
    assert w.read(1)[0] == [b"pmessage", b"news.*", b"news.a", b"hi"]


def test_64mb_value_round_trips(producer):
    value = b"x" * (64 * 1024 * 1024)
    assert producer.set("asynq:big", value)
    assert producer.get("asynq:big") == value
    producer.delete("asynq:big")


# ---------------------------------------------------------------- connection commands

def test_quit_closes_after_ok(env):
    w = Wire(env.port)
    w.send(cmd("AUTH", "producer", PASSWORDS["producer"]) + cmd("QUIT") + cmd("PING"))
    assert w.read(2) == [b"OK", b"OK"]
    assert w.closed()


def test_reset_logs_out(env):
    w = Wire(env.port)
    w.call("AUTH", "producer", PASSWORDS["producer"])
    assert w.call("RESET") == b"RESET"
    assert str(w.call("GET", "asynq:x")) == "NOAUTH Authentication required."
    assert w.call("AUTH", "producer", PASSWORDS["producer"]) == b"OK"
    assert w.call("PING") == b"PONG"


def test_select_of_a_database_the_user_may_not_use_is_refused(env, producer, admin):
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.execute_command("SELECT", "1")
    assert producer.execute_command("SELECT", "0") is True
    assert admin.execute_command("SELECT", "1") is True


def test_client_setname_and_getname(producer):
    assert producer.client_setname("asynq-worker-1")
    assert producer.client_getname() == "asynq-worker-1" or producer.client_getname() == b"asynq-worker-1"


def test_acl_setuser_from_a_client_is_refused(producer):
    with pytest.raises(redis.exceptions.ResponseError) as e:
        producer.execute_command("ACL", "SETUSER", "x", "on")
    assert "only through its configuration" in str(e.value)


def test_acl_dryrun_uses_redisgates_engine(producer):
    assert producer.execute_command("ACL", "DRYRUN", "reader", "GET", "ro:1") == b"OK"
    assert b"no permissions" in producer.execute_command("ACL", "DRYRUN", "reader", "SET", "ro:1", "x")


def test_acl_log_records_denials(env, producer):
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.get("logged:key")
    entries = producer.execute_command("ACL", "LOG", "5")
    assert any(b"logged:key" in bytes(e[e.index(b"object") + 1]) for e in entries)


# ---------------------------------------------------------------- bad input and failures

@pytest.mark.parametrize("payload,reply", [
    (b"*2\r\n$3\r\nGET\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n*1\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n"),
    (b"*abc\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$3\r\nGETxx", b"-ERR Protocol error: "),
])
def test_malformed_resp_gets_protocol_error_and_close(env, payload, reply):
    w = Wire(env.port)
    w.call("AUTH", "producer", PASSWORDS["producer"])
    w.send(payload)
    data = w.read_raw_until_closed()
    assert data.startswith(reply[:30])


def test_nothing_partial_reaches_redis_on_protocol_error(env, producer):
    producer.delete("asynq:partial")
    w = Wire(env.port)
    w.call("AUTH", "producer", PASSWORDS["producer"])
    w.send(b"*3\r\n$3\r\nSET\r\n$13\r\nasynq:partial\r\n$1\r\n1XX")
    w.read_raw_until_closed()
    assert producer.get("asynq:partial") is None


def test_upstream_down_gives_clear_error_and_proxy_keeps_serving(env):
    dead = free_port()
    runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{dead}"}, "users": USERS}).start()
    try:
        w = Wire(runner.port)
        assert w.call("AUTH", "producer", PASSWORDS["producer"]) == b"OK"
        r = w.call("PING")
        assert "upstream Redis unavailable" in str(r)
        w2 = Wire(runner.port)
        assert str(w2.call("GET", "x")) == "NOAUTH Authentication required."
    finally:
        runner.stop()


# ---------------------------------------------------------------- real clients

def test_redis_cli_ping(env):
    cli = redis_cli()
    out = subprocess.run([cli, "-p", str(env.port), "--user", "producer", "--pass",
                          PASSWORDS["producer"], "--no-auth-warning", "PING"],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == "PONG"


def test_redis_cli_denied(env):
    out = subprocess.run([redis_cli(), "-p", str(env.port), "--user", "producer", "--pass",
                          PASSWORDS["producer"], "--no-auth-warning", "FLUSHALL"],
                         capture_output=True, text=True, timeout=10)
    assert "NOPERM" in out.stdout


def test_asyncio_client_pipeline(env):
    async def main():
        c = redis.asyncio.Redis(host="127.0.0.1", port=env.port, username="producer",
                                password=PASSWORDS["producer"], protocol=2)
        async with c.pipeline(transaction=False) as p:
            p.set("asynq:aio", "1").get("asynq:aio").get("nope:1")
            r = await p.execute(raise_on_error=False)
        await c.aclose()
        return r
    r = asyncio.run(main())
    assert r[0] is True and r[1] == b"1" and isinstance(r[2], redis.exceptions.NoPermissionError)


def _flood(s: socket.socket, chunk: bytes, runner: ProxyRunner) -> int:
    """Log in as producer, then send `chunk` again and again without reading, until 64 MiB are
    sent or the proxy stops reading: sends make no progress for half a second and the proxy
    holds this client's input (ClientConnection.hold_input, whatever the reason). A proxy that
    is merely slow (a loaded machine) stalls sends too: the flood goes on then. The bytes sent."""
    s.sendall(cmd("AUTH", "producer", PASSWORDS["producer"]))
    time.sleep(0.2)
    s.settimeout(0.5)
    me = s.getsockname()

    def held() -> bool:   # (the loop may still be busy with what it read: seconds, under load)
        return runner.call(lambda: any(
            c.transport.get_extra_info("peername")[:2] == me and c.flow.read_paused
            for c in list(runner.proxy.clients)), timeout=120)
    view, pos, sent = memoryview(chunk), 0, 0
    deadline = time.monotonic() + 120
    while sent < 64 << 20:
        try:
            n = s.send(view[pos:])
        except socket.timeout:
            if held():
                break
            assert time.monotonic() < deadline, "the proxy neither read on nor held the client"
            continue
        sent += n
        pos = (pos + n) % len(chunk)
    return sent


@pytest.mark.parametrize("multiplex", [0, 1])
def test_commands_waiting_for_an_upstream_being_opened_are_bounded(monkeypatch, multiplex):
    """While the upstream connection (or the shared link) is still being opened, a client's
    commands wait in the proxy; past WAITING_LIMIT the proxy stops reading that client."""
    import redisgate.io.server as server
    monkeypatch.setattr(server, "WAITING_LIMIT", 1 << 20)
    # An upstream whose accept queue is full: the kernel drops further SYNs, so connecting hangs.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(0)
    fillers = []
    for _ in range(2):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(hung.getsockname())
        fillers.append(f)
    time.sleep(0.1)
    runner = ProxyRunner({"upstream": {"address": "127.0.0.1:%d" % hung.getsockname()[1],
                                       # (long: it must still be connecting when the flood
                                       # stops, however slow a loaded machine is)
                                       "connect_timeout": 60, "multiplex": multiplex},
                          "users": USERS}).start()
    s = socket.create_connection(("127.0.0.1", runner.port))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sent = _flood(s, cmd("SET", "asynq:k", "v" * 1000) * 100, runner)
        assert sent < 32 << 20, "the proxy kept reading commands it could not send"
        waiting = runner.call(lambda: [c.session.held_bytes() for c in runner.proxy.clients]
                              + [sum(map(len, link.out)) for link in runner.proxy.links])
        assert max(waiting) < 4 << 20
    finally:
        s.close()
        runner.stop()
        for f in fillers:
            f.close()
        hung.close()


def test_a_client_that_never_reads_its_refusals_is_no_longer_read(env):
    """Local replies piling up unread past the transport's high-water mark pause reading that
    client (bounded memory)."""
    s = socket.create_connection(("127.0.0.1", env.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent = _flood(s, cmd("GET", "denied:key") * 2000, env)
    assert sent < 64 << 20, "the proxy kept reading a client that does not read"
    sizes = env.call(lambda: [c.transport.get_write_buffer_size() for c in env.proxy.clients],
                     timeout=120)
    assert max(sizes) < 8 << 20
    s.close()
