"""The one login decision (redisgate/policy/login.py) and every session path that uses it, without sockets.

The table test runs every login path (connect, AUTH, HELLO AUTH, RESET, the reload re-check) for
every binding kind (none, cn, san_dns, san_uri; with and without require_password; with and
without a binding CA) on every listener kind (plain, TLS with optional client certificates, TLS
with required ones), with real certificates from two test CAs, and compares the session's user
with the rules as README states them (`expected` below).
"""
from __future__ import annotations

import itertools
import logging

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID

from redisgate import certs
from redisgate.config import ConfigError, build_config
from redisgate.session.gate import Gate
from redisgate.policy.login import (CertIdentity, Method, Outcome, Via, chain_trusted_by,
                                    decide_login, map_certificate)
from redisgate.session import LOCAL, Session
from redisgate.tls import ca_scope_warnings

from proxy import pw_hash
from wire import cmd

PW = "default-secret-pw"
RULES = "~d:* +get +set +ping +acl|whoami +hello"


# ---------------------------------------------------------------------------- certificates

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("login-pki")
    ca1, ca2 = certs.make_ca(), certs.make_ca()
    (d / "ca1.crt").write_bytes(ca1.cert_pem())
    (d / "ca2.crt").write_bytes(ca2.cert_pem())

    def leaf(ca, cn="alice", dns=("alice.internal",), uris=("spiffe://corp/alice",)):
        return certs.make_cert(cn, ca, dns=dns, uris=uris, client=True)
    return {"dir": d, "CA1": ca1, "CA2": ca2,
            "match": (leaf(ca1), ca1),            # the right identity, from CA 1
            "ca2": (leaf(ca2), ca2),              # the right identity, from CA 2
            "stranger": (leaf(ca1, "stranger", ("stranger.internal",),
                              ("spiffe://corp/stranger",)), ca1)}


def peercert_of(cert) -> dict:
    """What ssl's getpeercert() returns for a verified certificate (the fields redisgate uses)."""
    subject = tuple(((("commonName", a.value),),) for a in cert.subject
                    if a.oid == NameOID.COMMON_NAME)
    subject = tuple(rdn for (rdn,) in subject)
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        alt = tuple(("DNS", v) for v in san.get_values_for_type(certs.x509.DNSName)) + \
            tuple(("URI", v) for v in san.get_values_for_type(certs.x509.UniformResourceIdentifier))
    except certs.x509.ExtensionNotFound:
        alt = ()
    return {"subject": subject, "subjectAltName": alt}


def chain_of(issued, ca) -> tuple:
    return (issued.cert.public_bytes(Encoding.DER), ca.cert.public_bytes(Encoding.DER))


def identity(gate: Gate, pki, kind: str | None) -> CertIdentity | None:
    if kind is None:
        return None
    issued, ca = pki[kind]
    return gate.certificate_identity(peercert_of(issued.cert), chain_of(issued, ca), kind)


# ---------------------------------------------------------------------------- the table

BINDINGS = {
    "none": None,
    "cn": {"cn": "alice"},
    "san_dns": {"san_dns": "alice.internal"},
    "san_uri": {"san_uri": "spiffe://corp/alice"},
}
LISTENERS = {   # which client certificates a listener kind lets reach the session
    "plain": [None],
    "tls-optional": [None, "match", "ca2", "stranger"],
    "tls-required": ["match", "ca2", "stranger"],
}
PATHS = ["connect", "auth", "auth-wrong", "hello", "reset"]


def cases():
    for (bname, binding), with_ca, reqpw, cred, (lname, certs_), path in itertools.product(
            BINDINGS.items(), (False, True), (False, True), ("nopass", "password"),
            LISTENERS.items(), PATHS):
        if binding is None and (with_ca or reqpw):
            continue              # (config errors: ca and require_password need a binding)
        if reqpw and cred == "nopass":
            continue              # (a warning: nobody can log in)
        for cert in certs_:
            yield pytest.param(bname, with_ca, reqpw, cred, cert, path,
                               id=f"{path}-{bname}{'+ca' if with_ca else ''}"
                                  f"{'+reqpw' if reqpw else ''}-{cred}-{lname}-{cert or 'nocert'}")


def user_config(pki, bname, with_ca, reqpw, cred) -> dict:
    spec = {"rules": f"on {'nopass' if cred == 'nopass' else pw_hash(PW)} {RULES}"}
    if BINDINGS[bname] is not None:
        spec["certificate"] = dict(BINDINGS[bname])
        if with_ca:
            spec["certificate"]["ca"] = str(pki["dir"] / "ca1.crt")
        if reqpw:
            spec["require_password"] = True
    return spec


def make_gate(users: dict) -> Gate:
    cfg = build_config({"upstream": {"address": "127.0.0.1:1"}, "users": users})
    return Gate(cfg, upstream_version=(7, 0, 15))


def expected(bname, with_ca, reqpw, cred, cert, path) -> bool:
    """README's rules, stated independently of login.py: is the client `default` afterwards?"""
    bound = bname != "none"
    maps = bound and cert in ("match", "ca2") and not (with_ca and cert == "ca2")
    if cert is not None and not maps:
        return False          # a verified certificate that maps to nobody: no access at all
    if path in ("connect", "reset"):
        return maps and not reqpw if bound else cred == "nopass"
    right = path != "auth-wrong"
    password_ok = (cred == "password" and right) or (cred == "nopass" and not reqpw)
    return password_ok and (maps or not bound)


def run_path(s: Session, path: str) -> None:
    if path in ("auth", "auth-wrong"):
        s.client_data(cmd("AUTH", "default", PW if path == "auth" else "wrong-" + PW))
    elif path == "hello":
        s.client_data(cmd("HELLO", "3", "AUTH", "default", PW))
    elif path == "reset":
        s.client_data(cmd("RESET"))


@pytest.mark.parametrize("bname,with_ca,reqpw,cred,cert,path", list(cases()))
def test_every_login_path_applies_the_binding(pki, bname, with_ca, reqpw, cred, cert, path):
    gate = make_gate({"default": user_config(pki, bname, with_ca, reqpw, cred)})
    s = Session(gate, "test", identity(gate, pki, cert))
    if path in ("auth", "auth-wrong", "hello"):
        s.client_data(cmd("RESET"))   # (start from no user: the explicit login decides alone)
        s.to_client.clear()
    before = s.username
    run_path(s, path)
    want = expected(bname, with_ca, reqpw, cred, cert, path)
    # (Local replies wait behind the RESET forwarded upstream: read them from their slots.)
    reply = b"".join(s.to_client) + b"".join(slot[2] for slot in s.slots if slot[0] == LOCAL)
    if path in ("auth", "auth-wrong", "hello"):
        # (A refused AUTH keeps the user the connection had, as in Redis: the reply tells.)
        assert (not reply.startswith(b"-")) is want, reply
        # The same reply whatever the reason (wrong password, certificate, disabled, unknown).
        assert want or reply.startswith(b"-WRONGPASS"), reply
        assert s.username == ("default" if want else before)
    else:
        assert (s.username == "default") is want, (s.username, reply)


RELOADS = {
    "same": lambda spec: spec,
    "rebound": lambda spec: {**spec, "certificate": {"cn": "alice-new"}},
    "bound-now": lambda spec: {**spec, "certificate": {"cn": "alice"}},
    "ca-now-other": lambda spec: {**spec, "certificate": {**spec.get("certificate", {"cn": "alice"}),
                                                          "ca": "CA2"}},
    "require-password-now": lambda spec: {**spec, "certificate": spec.get("certificate", {"cn": "alice"}),
                                          "require_password": True},
    "removed": None,
    "disabled": lambda spec: {**spec, "rules": spec["rules"] + " off"},
}


def reload_expected(bname, with_ca, reqpw, cred, cert, how, change) -> bool:
    """Does a session that logged in by `how` keep `default` after the reload `change`?"""
    if change in ("removed", "disabled"):
        return False
    if change == "same":
        return True
    proven_pw = how in ("auth", "hello") and cred == "password"
    new_reqpw = reqpw or change == "require-password-now"
    new_ca2 = change == "ca-now-other"
    new_with_ca = with_ca and change != "rebound"
    if change == "rebound":
        return False          # no test certificate carries CN=alice-new
    # Bound now (bound-now / ca-now-other / require-password-now all bind to alice).
    maps = cert in ("match", "ca2") and not (new_ca2 and cert != "ca2") \
        and not (new_with_ca and not new_ca2 and cert == "ca2")
    if not maps:
        return False
    return not new_reqpw or proven_pw


@pytest.mark.parametrize("change", list(RELOADS))
@pytest.mark.parametrize("bname,with_ca,reqpw,cred,cert,how", [   # the ways a session got in
    (*c.values[:5], how) for c in cases() if c.values[5] == "connect" and c.values[4] != "stranger"
    and not (c.values[4] is None and "tls-optional" in c.id) for how in ("connect", "auth", "hello")
    if expected(*c.values[:5], how)])
def test_the_reload_recheck_keeps_only_sessions_that_would_still_get_in(
        pki, bname, with_ca, reqpw, cred, cert, how, change):
    spec = user_config(pki, bname, with_ca, reqpw, cred)
    gate = make_gate({"default": spec, "other": f"on {pw_hash('x')} +ping"})
    s = Session(gate, "test", identity(gate, pki, cert))
    if how != "connect":
        s.client_data(cmd("RESET"))
        run_path(s, how)
    assert s.username == "default"
    new = RELOADS[change]
    users = {"other": f"on {pw_hash('x')} +ping"}
    if new is not None:
        users["default"] = new(dict(spec))
        cert_spec = users["default"].get("certificate")
        if cert_spec and cert_spec.get("ca") == "CA2":
            cert_spec["ca"] = str(pki["dir"] / "ca2.crt")
    cfg = build_config({"upstream": {"address": "127.0.0.1:1"}, "users": users})
    gate.reload(cfg)
    s.client_data(cmd("PING"))   # the lazy re-check (the proxy also runs it at once)
    keeps = reload_expected(bname, with_ca, reqpw, cred, cert, how, change)
    assert (not s._dead and s.username == "default") is keeps


# ---------------------------------------------------------------------------- the findings

def test_finding_1_a_bound_nopass_default_is_not_logged_in_without_its_certificate(pki):
    gate = make_gate({"default": {"rules": f"on nopass {RULES}", "certificate": {"cn": "alice"}}})
    for cert in (None, "stranger"):
        s = Session(gate, "test", identity(gate, pki, cert))
        assert s.username is None
        s.client_data(cmd("SET", "d:1", "x"))
        assert b"".join(s.to_client).startswith(b"-NOAUTH")
        s.to_client.clear()
        s.client_data(cmd("RESET"))
        assert s.username is None
        s.client_data(cmd("AUTH", "default", "x"))
        assert s.username is None
    s = Session(gate, "test", identity(gate, pki, "match"))
    assert s.username == "default" and s.login_method is Method.CERTIFICATE
    s.client_data(cmd("RESET"))
    assert s.username == "default"


def test_finding_4_a_re_bound_require_password_user_refuses_auth_from_an_old_connection(pki):
    spec = {"rules": f"on {pw_hash(PW)} {RULES}", "certificate": {"cn": "alice"},
            "require_password": True}
    gate = make_gate({"alice": spec})
    s = Session(gate, "test", identity(gate, pki, "match"))
    assert s.username is None and s.cert_user == "alice"
    gate.reload(build_config({"upstream": {"address": "127.0.0.1:1"},
                              "users": {"alice": {**spec, "certificate": {"cn": "alice-new"}}}}))
    s.client_data(cmd("AUTH", "alice", PW))
    assert s.username is None and b"".join(s.to_client).startswith(b"-WRONGPASS")


def test_finding_4_a_listener_ca_no_longer_trusted_ends_the_session(pki):
    gate = make_gate({"alice": {"rules": f"on {RULES}", "certificate": {"cn": "alice"}}})
    s = Session(gate, "test", identity(gate, pki, "match"))
    assert s.username == "alice"
    gate.reload(gate.config)
    s.reloaded(cert_trusted=False)        # what the proxy passes when client_ca lost CA 1
    assert s._dead and s.user_entry is None


# ---------------------------------------------------------------------------- the pure function

class _User:
    def __init__(self, enabled=True, nopass=False, passwords=()):
        self.enabled, self.nopass, self._pw = enabled, nopass, set(passwords)

    def has_passwords(self):
        return bool(self._pw)

    def check_password(self, pw):
        return pw in self._pw


class _Entry:
    def __init__(self, name="u", certificate=None, require_password=False, **user):
        self.name, self.certificate, self.require_password = name, certificate, require_password
        self.user = _User(**user)


def test_decide_login_outcomes_are_named():
    bound = _Entry(certificate={"cn": "u"}, passwords={b"pw"})
    mine = CertIdentity({"subject": ()}, user="u")
    other = CertIdentity({"subject": ()}, user="v")
    nobody = CertIdentity({"subject": ()}, user=None)
    assert decide_login(None, password=b"x", via=Via.AUTH, cert=None).outcome is Outcome.UNKNOWN_USER
    assert decide_login(_Entry(enabled=False, nopass=True), password=None, via=Via.CONNECT,
                        cert=None).outcome is Outcome.DISABLED
    assert decide_login(bound, password=b"pw", via=Via.AUTH, cert=None).outcome is Outcome.CERT_REQUIRED
    assert decide_login(bound, password=b"pw", via=Via.AUTH, cert=other).outcome is Outcome.CERT_MISMATCH
    assert decide_login(bound, password=b"pw", via=Via.AUTH, cert=nobody).outcome is Outcome.CERT_UNMAPPED
    assert decide_login(bound, password=b"no", via=Via.AUTH, cert=mine).outcome is Outcome.WRONG_PASSWORD
    ok = decide_login(bound, password=None, via=Via.CONNECT, cert=mine)
    assert ok.ok and ok.method is Method.CERTIFICATE
    bound.require_password = True
    assert decide_login(bound, password=None, via=Via.CONNECT, cert=mine).outcome \
        is Outcome.PASSWORD_REQUIRED
    assert decide_login(bound, password=b"pw", via=Via.HELLO, cert=mine).method is Method.PASSWORD
    assert decide_login(bound, password=None, via=Via.RELOAD, cert=mine,
                        proven=Method.PASSWORD).ok
    assert decide_login(_Entry(passwords={b"pw"}), password=None, via=Via.CONNECT,
                        cert=None).outcome is Outcome.PASSWORD_REQUIRED


def test_unknown_and_known_users_cost_the_same_hashing(monkeypatch):
    import hashlib
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    decide_login(None, password=b"x", via=Via.AUTH, cert=None)
    decide_login(_Entry(nopass=True), password=b"x", via=Via.AUTH, cert=None)
    assert len(calls) == 2


# ---------------------------------------------------------------------------- bindings with a CA

def test_binding_ca_checks_the_verified_chain(pki):
    ca1 = pki["CA1"].cert
    leaf1, _ = pki["match"]
    leaf2, _ = pki["ca2"]
    assert chain_trusted_by(chain_of(leaf1, pki["CA1"]), [ca1])
    assert not chain_trusted_by(chain_of(leaf2, pki["CA2"]), [ca1])
    # Only the leaf known (no verified chain): its issuer name and signature decide.
    assert chain_trusted_by(chain_of(leaf1, pki["CA1"])[:1], [ca1])
    assert not chain_trusted_by(chain_of(leaf2, pki["CA2"])[:1], [ca1])
    # A CA renewed with the same key and name still vouches for what it issued.
    renewed = certs.make_ca(ca1.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
                            key=pki["CA1"].key).cert
    assert chain_trusted_by(chain_of(leaf1, pki["CA1"])[:1], [renewed])


def test_finding_7_bindings_are_scoped_to_their_ca(pki):
    gate = make_gate({"bob": {"rules": f"on {RULES}",
                              "certificate": {"cn": "alice", "ca": str(pki["dir"] / "ca1.crt")}}})
    assert identity(gate, pki, "match").user == "bob"
    assert identity(gate, pki, "ca2").user is None


def test_binding_ca_config_problems_name_the_key(pki, tmp_path):
    for ca, why in ((str(tmp_path / "missing.crt"), "cannot read"), (3, "expected the path"),
                    (str(pki["dir"] / "ca1.crt") + "x", "cannot read")):
        with pytest.raises(ConfigError) as e:
            build_config({"users": {"bob": {"rules": "on +ping",
                                            "certificate": {"cn": "bob", "ca": ca}}}})
        assert any(p.startswith("users.bob.certificate.ca: ") and why in p for p in e.value.problems)
    with pytest.raises(ConfigError):
        build_config({"users": {"bob": {"rules": "on +ping", "certificate": {"ca": "x"}}}})


def test_check_warns_when_listeners_trust_different_cas_and_a_binding_names_none(pki):
    class L:
        def __init__(self, where, cas):
            self.where, self.client_cas = where, cas
    users = build_config({"users": {
        "bob": {"rules": "on +ping", "certificate": {"cn": "bob"}},
        "eve": {"rules": "on +ping", "certificate": {"cn": "eve", "ca": str(pki["dir"] / "ca2.crt")}},
    }}).users
    one, two = (pki["CA1"].cert,), (pki["CA2"].cert,)
    warnings = ca_scope_warnings([None, L("listen[1].tls", one), L("listen[2].tls", two)], users)
    assert len(warnings) == 1 and warnings[0].startswith("users.bob.certificate: listeners trust "
                                                          "different client CAs")
    assert ca_scope_warnings([L("listen[1].tls", one), L("listen[2].tls", two)], {
        n: users[n] for n in ("eve",)}) == []
    assert ca_scope_warnings([L("listen[1].tls", one), L("listen[2].tls", one)], {
        n: users[n] for n in ("bob",)}) == []
    # A binding's CA that no listener trusts: nobody can log in with it.
    assert ca_scope_warnings([L("listen[1].tls", one)], users) == [
        "users.eve.certificate.ca: no TLS listener's client_ca trusts this CA; nobody can log in "
        "with its certificates"]


def test_several_matching_bindings_map_to_nobody(pki, caplog):
    gate = make_gate({"a": {"rules": "on +ping", "certificate": {"cn": "alice"}},
                      "b": {"rules": "on +ping", "certificate": {"san_dns": "alice.internal"}}})
    with caplog.at_level(logging.WARNING, "redisgate.tls"):
        assert identity(gate, pki, "match").user is None
    assert "matches several users" in caplog.text
    assert map_certificate(None, (), gate.bound_users) == []


# ---------------------------------------------------------------------------- one decision

def test_every_login_path_goes_through_decide_login(pki, monkeypatch):
    import redisgate.session.connection as session_mod   # (the session's login lives there)
    seen = []
    real = session_mod.decide_login

    def spy(entry, **kw):
        seen.append(kw["via"])
        return real(entry, **kw)
    monkeypatch.setattr(session_mod, "decide_login", spy)
    gate = make_gate({"default": f"on nopass {RULES}", "app": f"on {pw_hash(PW)} {RULES}"})
    s = Session(gate, "test")
    s.client_data(cmd("AUTH", "app", PW))
    s.client_data(cmd("HELLO", "2", "AUTH", "app", PW))
    s.client_data(cmd("RESET"))
    gate.reload(gate.config)
    s.client_data(cmd("PING"))
    assert seen == [Via.CONNECT, Via.AUTH, Via.HELLO, Via.RESET, Via.RELOAD]


def test_the_session_makes_no_login_decision_of_its_own():
    """Passwords, bindings and require_password are read in login.py only (the next login path
    must call decide_login rather than grow its own checks)."""
    import inspect
    import pkgutil
    import redisgate.session as session_pkg
    modules = [m.name for m in pkgutil.iter_modules(session_pkg.__path__)]
    assert {"machine", "connection", "replies"} <= set(modules)
    # (gate.py, the proxy-wide state, hands login.map_certificate the users with a binding)
    for name in ["__init__"] + [m for m in modules if m != "gate"]:
        module = session_pkg if name == "__init__" else \
            __import__(f"redisgate.session.{name}", fromlist=["_"])
        source = inspect.getsource(module)
        for word in ("check_password", ".certificate", "require_password", "compare_digest"):
            assert word not in source, (name, word)
