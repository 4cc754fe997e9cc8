"""scripts' compiled contracts (_FastContract) and the policy's EVALSHA fast path say yes only
where check_contract and the general path do.

The shortcut's tests: see tests/shortcuts.py.
"""
from __future__ import annotations

import random
from types import SimpleNamespace


from redisgate.policy import scripts
from redisgate.protocol.commands import TABLE
from redisgate.config import build_config
from redisgate.policy.rules import parse_user
from redisgate.asynq.scripts import KNOWN_SCRIPTS
from redisgate.policy.scripts import QueueKey, ScriptPolicy, check_contract
from test_rules_fast import outcome
from shortcuts import BOTH_SCANS


pytestmark = BOTH_SCANS


# --- scripts: compiled contracts say yes only where check_contract does -------------------------

def _key(shape, head: bytes, rng: random.Random) -> bytes:
    if isinstance(shape, QueueKey):
        suffix = rng.choice(shape.suffixes)
        tail = {None: b"", "any": b"t%d" % rng.randint(0, 99), "date": b"2024-05-31"}[shape.tail]
        return head + suffix + tail
    if isinstance(shape, scripts.TaggedKey):
        return shape.prefix + b"{h1}"
    if isinstance(shape, scripts.PrefixedKey):
        return shape.prefix + b"x"
    if isinstance(shape, scripts.ExactKey):
        return rng.choice(shape.names)
    return _key(rng.choice(shape.shapes), head, rng)   # AnyOf


def _valid_call(contract, q: bytes, rng: random.Random) -> list[bytes]:
    head = b"asynq:{" + q + b"}:"
    keys = [_key(shape, head, rng) for shape in contract.keys]
    need = max([p.index for p in contract.prefixes] + [contract.min_argv, 1])
    argv = [b"%d" % rng.randint(0, 9) for _ in range(need + rng.randint(0, 2))]
    for p in contract.prefixes:
        argv[p.index - 1] = head + p.suffix
    return [b"evalsha", contract.sha1.encode(), b"%d" % len(keys)] + keys + argv


def _mutate(args: list[bytes], rng: random.Random) -> list[bytes]:
    args = list(args)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(2, len(args))
        choice = rng.random()
        if choice < 0.3:
            args[i] = args[i].replace(b"default", rng.choice([b"other", b"", b"de}f"]))
        elif choice < 0.5:
            args[i] = args[i][:rng.randint(0, len(args[i]))]
        elif choice < 0.6:
            args[i] = rng.choice([b"02", b"x", b"-1", b"99"])
        elif choice < 0.7 and len(args) > 4:
            del args[rng.randrange(3, len(args))]
        elif choice < 0.8:
            args[i] = args[i] + rng.choice([b"x", b":", b"-13"])
        else:
            args[i] = args[i].upper()
    return args


def _random_call(contract, queues: list[bytes], rng: random.Random, mutate: float,
                 ro: float) -> list[bytes]:
    """A valid call of `contract` for one of `queues`, mutated with probability `mutate`, sent
    as EVALSHA_RO with probability `ro`."""
    args = _valid_call(contract, rng.choice(queues), rng)
    if rng.random() < mutate:
        args = _mutate(args, rng)
    if rng.random() < ro:
        args[0] = b"evalsha_ro"
    return args


def test_compiled_contracts_agree_with_check_contract():
    rng = random.Random(5)
    users = [parse_user("w", "on nopass ~asynq:{default}:* +@all"),
             parse_user("r", "on nopass %R~asynq:{default}:* +@all"),
             parse_user("a", "on nopass allkeys +@all"),
             SimpleNamespace(has_allkeys=False, check_key=lambda key, write=False: not write)]
    fast_yes = 0
    for contract in KNOWN_SCRIPTS.values():
        fast = scripts._FastContract.compile(contract)
        if fast is None:
            assert contract.variadic or any(
                type(s) is not QueueKey or (s.tail and len(s.suffixes) > 1) for s in contract.keys)
            continue
        for _ in range(60):
            q = rng.choice([b"default", b"default", b"critical", b"q:1"])
            args = _valid_call(contract, q, rng)
            if rng.random() < 0.6:
                args = _mutate(args, rng)
            for user in users:
                honoured = fast.honoured(args, user)
                if honoured:
                    fast_yes += 1
                    assert check_contract(contract, args, user) is None, (contract.name, args)
                elif args[2] == b"%d" % len(contract.keys) and \
                        check_contract(contract, args, user) is None:
                    # the fast shape covers every well-formed call with canonical numkeys
                    raise AssertionError((contract.name, args))
    assert fast_yes > 1000


def test_policy_fast_path_gives_the_general_paths_verdict():
    rng = random.Random(11)
    rules = "on nopass ~asynq:{default}:* ~asynq:{critical}:* -@all +evalsha +evalsha_ro +eval"
    user = parse_user("w", rules)
    user.scripts = ScriptPolicy(allowed_shas=list(KNOWN_SCRIPTS)[:40])
    bare = ScriptPolicy(allowed_shas=list(KNOWN_SCRIPTS)[:40])
    bare.by_sha = {}                              # the same policy without its fast path
    slow_user = parse_user("w", rules)            # User.judge's shortcut then finds no check
    slow_user.scripts = bare
    for contract in KNOWN_SCRIPTS.values():
        for _ in range(20):
            args = _random_call(contract, [b"default", b"critical", b"low"], rng, 0.5, 0.2)
            spec = TABLE.lookup(args)
            got = user.scripts.judge(user, spec, args)
            want = bare.judge(user, spec, args)
            assert (got is None) == (want is None) and (got is None or got == want), args
            if spec.check_arity(len(args)):
                assert user.judge(spec, args) == slow_user.judge(spec, args), args


def test_evalsha_key_coverage_memo_gives_the_general_paths_verdict():
    # User.judge lets a compiled contract vouch for an EVALSHA's KEYS (memoised per user, command
    # and queue). Read-only, write-only, partial and non-prefix patterns, EVALSHA and EVALSHA_RO
    # mixed on the same user objects: the verdicts are those of the policy without the shortcut.
    rng = random.Random(12)
    patterns = ["~asynq:{default}:*", "%R~asynq:{default}:*", "%W~asynq:{default}:*",
                "~asynq:{default}:t:* ~asynq:{default}:pending", "~asynq:{def*}:*",
                "%R~asynq:{default}:* %W~asynq:{default}:t:*", "~asynq:{critical}:* %R~asynq:*",
                "allkeys", "~asynq:{default}:active ~asynq:{default}:lease"]
    shas = list(KNOWN_SCRIPTS)
    allowed = 0
    for keys in patterns:
        rules = f"on nopass {keys} -@all +evalsha +evalsha_ro"
        user, slow_user = parse_user("w", rules), parse_user("w", rules)
        user.scripts = ScriptPolicy(allowed_shas=shas)
        slow_user.scripts = ScriptPolicy(allowed_shas=shas)
        slow_user.scripts.by_sha = {}
        for _ in range(600):
            contract = KNOWN_SCRIPTS[rng.choice(shas)]
            args = _random_call(contract, [b"default", b"default", b"critical"], rng, 0.2, 0.5)
            spec = TABLE.lookup(args)
            if not spec.check_arity(len(args)):
                continue
            got = outcome(user.judge, spec, args, 0)
            assert got == outcome(slow_user.judge, spec, args, 0), (keys, args)
            allowed += got is None
    assert allowed > 500


def test_profile_users_evalsha_keys_are_vouched_for_by_the_contract():
    # asynq-worker without `queues:` has glob patterns (~asynq:{*}:*), not plain prefixes: the
    # contract still vouches for every task key under asynq:{q}:t: (glob.covers_prefix), and
    # not for a user whose patterns leave some KEYS out.
    cfg = build_config({"upstream": {"address": "127.0.0.1:1"}, "users": {
        "w": {"rules": "on nopass", "profile": "asynq-worker"},
        "narrow": {"rules": "on nopass", "profile": "asynq-worker", "queues": ["critical"]}}})
    checked = 0
    for name, want in (("w", True), ("narrow", False)):
        user = cfg.users[name].user
        for contract in KNOWN_SCRIPTS.values():
            sha = contract.sha1.encode()
            fast = user.scripts.by_sha.get(sha)
            if fast is None or fast is True or contract.name != "dequeueCmd":
                continue
            args = _valid_call(contract, b"default", random.Random(1))
            spec = TABLE.lookup(args)
            assert fast.honoured(args, user, user.verdict(spec)) is want, (name, contract.sha1)
            assert (user.judge(spec, args) is None) is want
            checked += 1
    assert checked >= 2
