"""contracts.py: the script-family registry, the generic contract machinery with a tag that is not
Asynq's, and the boundary: Asynq's knowledge lives in redisgate/asynq/ only.

Pure code, no servers.
"""
from __future__ import annotations

import ast
import pathlib
from types import SimpleNamespace

import pytest

from redisgate import asynq
from redisgate.policy import contracts, scripts
from redisgate.asynq import learn as asynq_learn, profiles as asynq_profiles
from redisgate.asynq import scripts as asynq_scripts
from redisgate.protocol.commands import TABLE
from redisgate.policy.learn import generalise_key
from redisgate.policy.scripts import (PrefixArg, QueueKey, ScriptContract, ScriptPolicy,
                                      TaggedKey, _FastContract, check_contract)

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "redisgate"


# --- the registry ---------------------------------------------------------------------------

def test_asynq_is_the_registered_family():
    fam = contracts.family()
    assert fam is asynq.FAMILY
    assert fam.queue_tag == asynq_scripts.QUEUE_TAG == b"asynq:{"
    assert fam.known is asynq_scripts.KNOWN_SCRIPTS
    assert fam.named_sets is asynq_scripts.SCRIPT_SETS
    assert fam.profile_names() == asynq_profiles.profile_names()
    assert fam.generalise_key is asynq_learn.generalise_key
    # The policy side's defaults come from it.
    assert ScriptPolicy(()).contracts is fam.known
    assert scripts.queue_of(b"asynq:{q}:t:1") == (b"q", b"t:1")
    assert scripts.expand_script_names(["asynq-worker@v0.26"]) \
        == fam.expand_names(["asynq-worker@v0.26"])


def test_a_second_family_is_refused_and_the_same_one_is_a_no_op():
    contracts.register(asynq.FAMILY)   # (again: nothing happens)
    other = contracts.ScriptFamily(**{**asynq.FAMILY.__dict__, "name": "other"})
    with pytest.raises(RuntimeError, match="there is one"):
        contracts.register(other)
    assert contracts.family() is asynq.FAMILY


def test_profile_errors_are_the_generic_ones():
    assert asynq_profiles.ProfileError is contracts.ProfileError
    with pytest.raises(contracts.ProfileError, match="unknown profile"):
        contracts.family().load_profile("nope", None)
    with pytest.raises(contracts.ProfileError, match="brace"):
        contracts.family().check_queue_name("a}b")


def test_learn_asks_the_family_first_then_its_generic_rules():
    assert generalise_key(b"asynq:{default}:t:abc") == ("asynq:{default}:t:*", "default")
    assert generalise_key(b"asynq:servers:{h:1:u}") == ("asynq:servers:{*}", None)
    assert asynq_learn.generalise_key(b"app:user:12345") is None
    assert generalise_key(b"app:user:12345") == ("app:user:*", None)


# --- the generic machinery with a family of another tag ---------------------------------------

OTHER_TAG = b"jobs{"
PENDING = QueueKey(OTHER_TAG, (b"pending",))
TASK = QueueKey(OTHER_TAG, (b"t:",), tail="any")
POP = ScriptContract("popCmd", "a" * 40, frozenset(), frozenset(), (PENDING, TASK),
                     (PrefixArg(1, b"t:", True, "task key prefix"),))
KEYS_ALL = SimpleNamespace(has_allkeys=True)


def _call(*args: bytes | str) -> list[bytes]:
    return [a if isinstance(a, bytes) else a.encode() for a in ("evalsha", "a" * 40, *args)]


def test_a_contract_of_another_tag_is_checked_with_that_tag():
    assert POP.queue_tag == OTHER_TAG
    assert PENDING.describe() == "jobs{Q}:pending"
    ok = _call("2", "jobs{q}:pending", "jobs{q}:t:1", "jobs{q}:t:")
    assert check_contract(POP, ok, KEYS_ALL) is None
    why = check_contract(POP, _call("2", "jobs{q}:pending", "jobs{r}:t:1", "jobs{q}:t:"))
    assert why is not None and "same queue" in why
    why = check_contract(POP, _call("2", "jobs{q}:pending", "jobs{q}:t:1", "asynq:{q}:t:"))
    assert why is not None and "task key prefix" in why and "'jobs{q}:t:'" in why
    fast = _FastContract.compile(POP)
    assert fast is not None and fast.honoured(ok, KEYS_ALL)
    assert not fast.honoured(_call("2", "asynq:{q}:pending", "asynq:{q}:t:1", "asynq:{q}:t:"),
                             KEYS_ALL)
    form = fast.lane_form(ok, KEYS_ALL, None)
    assert form is not None and {c.value for c in form.checks} \
        == {b"jobs{q}:pending", b"jobs{q}:t:"}


def test_a_contract_mixing_tags_or_prefixes_without_a_queue_is_refused():
    with pytest.raises(ValueError, match="several tags"):
        ScriptContract("x", "b" * 40, frozenset(), frozenset(),
                       (PENDING, QueueKey(b"asynq:{", (b"pending",))))
    with pytest.raises(ValueError, match="need queue KEYS"):
        ScriptContract("x", "b" * 40, frozenset(), frozenset(), (TaggedKey(b"s:"),),
                       (PrefixArg(1, b"t:", False),))


def test_a_policy_holds_any_contract_table():
    policy = ScriptPolicy(["a" * 40], contracts={"a" * 40: POP})
    ok = _call("2", "jobs{q}:pending", "jobs{q}:t:1", "jobs{q}:t:")
    assert policy.judge(KEYS_ALL, TABLE.lookup(ok), ok) is None
    bad = _call("1", "jobs{q}:pending", "x")
    denial = policy.judge(KEYS_ALL, TABLE.lookup(bad), bad)
    assert denial is not None and "popCmd" in denial.reason


# --- the boundary -----------------------------------------------------------------------------

def _modules_outside_asynq() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "asynq" not in p.relative_to(PACKAGE).parts)


def _code_constants(tree: ast.AST) -> list[ast.Constant]:
    """The string and bytes constants of a module that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(id(node.body[0].value))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docstrings
            and isinstance(n.value, (str, bytes))]


def test_no_module_outside_the_asynq_package_names_asynq_keys():
    """Asynq's key forms (``asynq:{``, ``asynq:servers``...) are written in redisgate/asynq/
    only; elsewhere they may appear in docstrings and comments, never in code."""
    found = []
    for path in _modules_outside_asynq():
        for node in _code_constants(ast.parse(path.read_text(encoding="utf-8"))):
            value = node.value if isinstance(node.value, bytes) else node.value.encode()
            if b"asynq:" in value.lower():
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not found


def test_only_the_registration_point_imports_the_asynq_package():
    importers = []
    for path in _modules_outside_asynq():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n == "asynq" or n.endswith(".asynq") or ".asynq." in n for n in names):
                importers.append(str(path.relative_to(PACKAGE)))
    assert importers == ["policy/contracts.py"]


def test_no_c_source_names_a_product():
    sources = sorted(PACKAGE.glob("_native/*.c")) + sorted(PACKAGE.glob("_native/*.h"))
    assert sources
    assert [p.name for p in sources if "asynq" in p.read_text(encoding="utf-8").lower()] == []
