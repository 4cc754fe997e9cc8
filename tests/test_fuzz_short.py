"""The fuzz targets of fuzz/ (fuzz_parser.py, fuzz_session.py), run briefly inside the test suite.

Their harness functions run here under hypothesis (fuzz/README.md has the long coverage-guided
runs with atheris); each atheris entry point also runs for a bounded number of inputs when atheris
is installed (the `fuzz` extra), so the entry points cannot rot.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))

import fuzz_parser  # noqa: E402
import fuzz_session  # noqa: E402

SHORT = settings(max_examples=250, deadline=None, derandomize=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def inputs(modes):
    """A mode byte from `modes`, then fuzz bytes."""
    return st.tuples(st.sampled_from(modes), st.binary(max_size=180)).map(
        lambda t: bytes([t[0]]) + t[1])


# ------------------------------------------------------------------------------- the parser

@pytest.mark.parametrize("seed", fuzz_parser.seeds(), ids=lambda s: f"{s[:12].hex()}")
def test_parser_seeds(seed):
    fuzz_parser.check(seed)


@SHORT
@given(inputs(range(8)))
def test_parser_production_loop_c_and_python_agree(data):
    fuzz_parser.check(data)


RESPISH = st.lists(st.sampled_from([b"*", b"$", b"\r\n", b"\r", b"1", b"0", b"2", b"3", b"-",
                                    b"GET", b"a", b" ", b"\x00", b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"]),
                   max_size=50).map(b"".join)


@SHORT
@given(st.integers(0, 7), st.lists(st.integers(1, 30), max_size=6), RESPISH)
def test_parser_resp_like_inputs(flags, sizes, body):
    fuzz_parser.check(bytes([flags, len(sizes)] + sizes) + body)


# ------------------------------------------------------------------------------- the session

def session_check(data, tolerate=()):
    try:
        fuzz_session.check(data)
    except fuzz_session.Violation as v:
        if v.kind not in tolerate:
            raise AssertionError(f"{v}\n{fuzz_session.describe(data)}") from None


SESSION_SEEDS = fuzz_session.seeds()


@pytest.mark.parametrize("seed", [s for s in SESSION_SEEDS if not s[0] & 1], ids=lambda s: s.hex()[:24])
def test_session_seeds_dedicated(seed):
    session_check(seed)


@pytest.mark.parametrize("seed", [s for s in SESSION_SEEDS if s[0] & 1], ids=lambda s: s.hex()[:24])
def test_session_seeds_multiplex(seed):
    session_check(seed)


@SHORT
@given(inputs([0, 2, 4, 6]))
def test_session_forwards_exactly_the_allowed_commands_dedicated(data):
    session_check(data)


@SHORT
@given(inputs([1, 3, 5, 7]))
def test_session_forwards_exactly_the_allowed_commands_multiplex(data):
    session_check(data)


@pytest.mark.parametrize("case", ["switch-twice", "go-redis", "switch-after-get"])
def test_session_multiplex_finding_1(case):
    """Issue 23 finding 1 (fixed; regression tests): HELLO reached a shared link (the go-redis
    handshake's HELLO 3; AUTH + HELLO 3 + HELLO 2 switched the shared RESP2 link to RESP3), and
    commands sent before a switch in the same read went to a link of the new protocol. Now
    HELLO on a shared link is answered by the proxy and each command is bound to a link of the
    protocol its client spoke when it was judged."""
    auth, hello, get = (fuzz_session._index(n) for n in (b"AUTH", b"HELLO", b"GET"))
    if case == "switch-twice":
        # AUTH none none-pw; HELLO 3; HELLO 2; GET app:1 in one read: HELLO 3 on the shared link.
        steps = [(auth, 41, 0), (hello, 4, 0), (hello, 2, 0), (get, 0, 0)]
    elif case == "go-redis":
        steps = [(hello, 241, 0), (get, 0, 0)]   # HELLO 3 AUTH app app-pw; GET app:1
    else:
        # AUTH app app-pw | GET app:1; HELLO 3 in one read: the RESP2 client's GET goes to the
        # RESP3 link (chosen by the protocol at flush time).
        steps = [(auth, 40, 2), (get, 0, 0), (hello, 4, 0)]
    session_check(fuzz_session.plan_bytes(1, *steps))


@pytest.mark.parametrize("multiplex", [0, 1])
def test_session_nothing_after_quit_is_forwarded(multiplex):
    """Issue 23 finding 12 (fixed; a regression test): Session._run went on with the batch after
    _handle(QUIT) marked the session dead, so a command pipelined after QUIT was forwarded once
    the upstream was ready."""
    # Found by fuzz_session.py: AUTH app app-pw | (upstream open) | QUIT + PUBLISH chan:1 hi.
    auth, ping, publish = (fuzz_session._index(n) for n in (b"AUTH", b"PING", b"PUBLISH"))
    steps = [(auth, 40, 2 | 8), (ping, 255, 0), (publish, 0, 0)]   # (ping, 255): QUIT
    session_check(fuzz_session.plan_bytes(4 | multiplex, *steps))


def test_session_resp2_subscribed_mode_refuses_logins():
    """Found by the atheris target after the re-AUTH rework (a model fix, not a proxy bug): in
    RESP2 subscribed mode AUTH and HELLO get Redis's "Can't execute" error, so the logged-in
    user (here multidb, who may SUBSCRIBE chan:1) stays; the oracle must not switch users."""
    import base64
    data = base64.b64decode("AQDZ//+3AgIXAAAIAwGAAAQHBBsAEgAHAAg=")
    # AUTH multidb | SUBSCRIBE chan:1 chan:1 | HELLO 2 AUTH none none-pw; AUTH worker worker-pw |
    # AUTH worker wrong; AUTH only-a-password | SUBSCRIBE chan:1 | AUTH multidb wrong
    session_check(data)


def test_session_exec_reply_spills_like_redis():
    """Found by the atheris target (a fake-upstream fix, not a proxy bug): Redis 7 answers
    MULTI; SUBSCRIBE chan:1 chan:1; EXEC with `*1` and the second confirmation after the array
    (checked against redis-server 7.0), as session.transactions.Transaction.exec_plan expects; the fake upstream put
    both inside a `*2`, so the proxy waited for a spill that never came."""
    auth, sub, multi, exec_, ping, blpop = (fuzz_session._index(n) for n in (
        b"AUTH", b"SUBSCRIBE", b"MULTI", b"EXEC", b"PING", b"BLPOP"))
    twice = (sub, 0xff, 0)   # SUBSCRIBE chan:1 chan:1
    steps = [(auth, 40, 0), (multi, 0, 0), twice, (exec_, 0, 0), twice, (ping, 0, 0),
             (multi, 0, 0), twice, (exec_, 0, 0), (blpop, 0, 0)]
    for flags in range(8):
        session_check(fuzz_session.plan_bytes(flags, *steps))


def test_session_multi_in_resp2_subscribed_mode_is_refused():
    """Found by the atheris target (a proxy bug, fixed in session.transactions.cmd_multi): in RESP2
    subscribed mode Redis refuses MULTI ("Can't execute 'multi'"), but the session forwarded it
    and believed a transaction open: the SUBSCRIBEs after it, which Redis runs at once, were
    counted as +QUEUED, the replies went out of step, and after RESET a DISCARD was never sent."""
    auth, sub, multi, blpop, reset, discard = (fuzz_session._index(n) for n in (
        b"AUTH", b"SUBSCRIBE", b"MULTI", b"BLPOP", b"RESET", b"DISCARD"))
    twice = (sub, 0xff, 0)   # SUBSCRIBE chan:1 chan:1
    steps = [(auth, 40, 0), twice, (multi, 0, 0), twice, twice, (blpop, 0x9d, 0), (reset, 0, 0),
             (auth, 40, 2), (discard, 0, 4)]
    for flags in range(8):
        session_check(fuzz_session.plan_bytes(flags, *steps))


# ------------------------------------------------------------------------------- atheris

def _atheris_run(script, corpus, runs, tmp_path, env=None):
    pytest.importorskip("atheris")
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for i, seed in enumerate(corpus):
        (corpus_dir / f"seed{i}").write_bytes(seed)
    proc = subprocess.run(
        [sys.executable, str(FUZZ_DIR / script), f"-atheris_runs={runs}", "-max_total_time=8",
         "-max_len=300", f"-artifact_prefix={tmp_path}/", str(corpus_dir)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, **(env or {})))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done " in proc.stderr


def test_atheris_parser_target_runs(tmp_path):
    _atheris_run("fuzz_parser.py", fuzz_parser.seeds(), 3000, tmp_path)


def test_atheris_session_target_runs(tmp_path):
    _atheris_run("fuzz_session.py", fuzz_session.seeds(), 2000, tmp_path)
