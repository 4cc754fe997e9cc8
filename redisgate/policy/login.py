"""The one login decision: may this connection be this user? Pure code, no I/O, no logging.

Every way a connection becomes a user goes through `decide_login`: the automatic login at connect
and after RESET (a certificate user, or a `nopass` default user), AUTH, HELLO AUTH, and the
re-check of every open session after a reload. It applies, in this order:

1. the user exists (an unknown name costs the same hashing as a known one);
2. a verified client certificate that maps to no user gets nothing at all (no AUTH either);
3. the user is `on`;
4. a password, when one was presented, is right (any password for `nopass`, except for a user with
   `require_password`, which needs a real one);
5. a user bound to a certificate (`certificate: {cn|san_dns|san_uri: ..., ca: ...}`) needs the
   connection's certificate to map to it; with `require_password` also a right password;
6. an unbound user needs a right password or `nopass`.

The automatic login (`Via.CONNECT`, `Via.RESET`) tries the user the certificate maps to, else
`default`; it presents no password, so it lets in a certificate user (without `require_password`)
and a `nopass` default user that is bound to no certificate. A default user bound to a certificate
is logged in automatically only by that certificate.

`Via.RELOAD` asks whether an open session would still be let in as its user by the route it took
(`proven`: the method of its login). A session that logged in with a password keeps that
credit (a changed password does not end sessions, as in Redis); a `nopass` or certificate session
must still be let in without one. Everything else (user removed or disabled, its binding changed
so that the certificate no longer maps to it, its CA no longer trusted, `require_password` added,
`nopass` removed) ends it.

`map_certificate` finds the one user a verified certificate maps to (selector and, if the binding
names one, its CA); `CertIdentity` carries the result with the certificate.
"""
from __future__ import annotations

import _ssl   # (CPython's certificate objects: public_bytes(ENCODING_DER))
import functools
import hashlib
import hmac
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # annotations only (config imports this module's users; x509 is heavy)
    from cryptography.x509 import Certificate

    from ..config import UserEntry

_DUMMY_HASH = bytes(32)


class Via(str, Enum):
    """How the login was attempted."""
    CONNECT = "connect"     # automatic, when the connection is accepted
    RESET = "reset"         # automatic, after RESET
    AUTH = "auth"
    HELLO = "hello"         # HELLO ... AUTH user password
    RELOAD = "reload"       # re-check of an open session after a configuration reload

    @property
    def automatic(self) -> bool:
        return self in (Via.CONNECT, Via.RESET)


class Method(str, Enum):
    """What let a session in (kept by the session for the reload re-check)."""
    PASSWORD = "password"
    CERTIFICATE = "certificate"
    NOPASS = "nopass"


class Outcome(str, Enum):
    OK = "ok"
    UNKNOWN_USER = "unknown-user"
    WRONG_PASSWORD = "wrong-password"
    DISABLED = "disabled"
    CERT_UNMAPPED = "cert-unmapped"        # a verified certificate that maps to no user
    CERT_REQUIRED = "cert-required"        # the user is bound to a certificate; none presented
    CERT_MISMATCH = "cert-mismatch"        # the certificate maps to another user
    PASSWORD_REQUIRED = "password-required"  # no password presented, and one is needed


@dataclass(frozen=True)
class LoginResult:
    outcome: Outcome
    method: Method | None = None    # set when ok

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True)
class CertIdentity:
    """A client certificate that the listener verified.

    `peercert`: `getpeercert()`'s dict. `chain`: the verified chain, leaf first, as DER bytes or
    objects with `public_bytes` (CPython's `_ssl.Certificate`); empty when unknown. `user`: the
    user it maps to (`map_certificate`), None for nobody. `trusted`: False once a reload removed
    every CA of its chain from its listener's `client_ca` (it then maps to nobody).
    """
    peercert: Mapping[str, Any]
    chain: tuple[Any, ...] = ()
    user: str | None = None
    trusted: bool = True
    description: str = field(default="", compare=False)


def decide_login(entry: UserEntry | None, *, password: bytes | None, via: Via, cert: CertIdentity | None,
                 proven: Method | None = None) -> LoginResult:
    """May this connection log in as `entry` (a config.UserEntry, or None for an unknown name)?

    `password`: what the client presented (None: nothing, as in the automatic login). `cert`: the
    connection's verified certificate, None without one. `proven`: for `Via.RELOAD`, how the
    session logged in. Constant time in the password whether the user exists or not.
    """
    presented = password is not None
    if password is not None:
        if entry is not None and entry.user.has_passwords():
            pw_ok = entry.user.check_password(password)
        else:
            # The same hashing and comparison as for a known user, so timing tells no names.
            hmac.compare_digest(hashlib.sha256(password).digest(), _DUMMY_HASH)
            pw_ok = False
    else:
        pw_ok = proven is Method.PASSWORD
    if entry is None:
        return LoginResult(Outcome.UNKNOWN_USER)
    if cert is not None and cert.user is None:
        return LoginResult(Outcome.CERT_UNMAPPED)
    user = entry.user
    if not user.enabled:
        return LoginResult(Outcome.DISABLED)
    nopass_ok = user.nopass and not entry.require_password
    if presented and not (pw_ok or nopass_ok):
        return LoginResult(Outcome.WRONG_PASSWORD)
    if entry.certificate is not None:
        if cert is None:
            return LoginResult(Outcome.CERT_REQUIRED)
        if cert.user != entry.name:
            return LoginResult(Outcome.CERT_MISMATCH)
        if entry.require_password and not pw_ok:
            return LoginResult(Outcome.PASSWORD_REQUIRED)
        return LoginResult(Outcome.OK, Method.PASSWORD if pw_ok else Method.CERTIFICATE)
    if pw_ok:
        return LoginResult(Outcome.OK, Method.PASSWORD)
    if user.nopass and (presented or proven is not Method.CERTIFICATE):
        return LoginResult(Outcome.OK, Method.NOPASS)
    return LoginResult(Outcome.PASSWORD_REQUIRED)


def automatic_candidate(users: Mapping[str, UserEntry],
                        cert: CertIdentity | None) -> UserEntry | None:
    """The user an automatic login (connect, RESET) tries: the certificate's, else `default`.
    A certificate that maps to nobody gets None (and no access)."""
    if cert is not None:
        return users.get(cert.user) if cert.user is not None else None
    return users.get("default")


# ---------------------------------------------------------------------------- certificates

def _der(cert: Any) -> bytes:
    if isinstance(cert, (bytes, bytearray)):
        return bytes(cert)
    der: bytes = cert.public_bytes(_ssl.ENCODING_DER)
    return der


def chain_trusted_by(chain: Iterable[Any], cas: Iterable[Certificate]) -> bool:
    """Whether one of `cas` (x509.Certificate objects, e.g. a binding's `ca` file) vouches for a
    verified chain (leaf first): a certificate of the chain is one of them, or was issued by one
    of them (issuer name and signature checked: a renewed CA with the same key still counts)."""
    cas = tuple(cas)
    if not cas:
        return False
    ders = [_der(item) for item in chain]
    ca_ders = _ders_of(cas)
    if any(der in ca_ders for der in ders):
        return True      # (the usual case, and cheap: the chain's root is in the file)
    # (deferred: cryptography's x509 is heavy, and only a binding's `ca` needs it)
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    for der in ders:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        for ca in cas:
            if cert.issuer != ca.subject:
                continue
            try:
                cert.verify_directly_issued_by(ca)
                return True
            except (InvalidSignature, ValueError, TypeError):
                continue
    return False



# -- certificate selectors: which certificate a `users.NAME.certificate` binding names

SELECTOR_KINDS = ("cn", "san_dns", "san_uri")


def common_names(peercert: Mapping[str, Any]) -> list[str]:
    return [value for rdn in peercert.get("subject", ()) for (name, value) in rdn
            if name == "commonName"]


def _san(peercert: Mapping[str, Any], kind: str) -> list[str]:
    return [value for (k, value) in peercert.get("subjectAltName", ()) if k == kind]


def identity_of(peercert: Mapping[str, Any] | None, selector: Mapping[str, Any]) -> str | None:
    """The certificate's value that `selector` asks for, if it equals the selector's value.

    `{cn: V}`: the subject's only CN equals V (a subject with two CNs identifies nobody).
    `{san_dns: V}`: a DNS subjectAltName equals V, ignoring case and a trailing dot.
    `{san_uri: V}`: a URI subjectAltName equals V exactly (e.g. a SPIFFE ID).
    Returns None for no certificate, an unverified one (`{}`), or no match.
    """
    if not peercert or not isinstance(selector, Mapping) or len(selector) != 1:
        return None
    (kind, want), = selector.items()
    if not isinstance(want, str) or not want:
        return None
    if kind == "cn":
        names = common_names(peercert)
        return names[0] if len(names) == 1 and names[0] == want else None
    if kind == "san_dns":
        norm = want.lower().rstrip(".")
        for value in _san(peercert, "DNS"):
            if value.lower().rstrip(".") == norm:
                return value
        return None
    if kind == "san_uri":
        return want if want in _san(peercert, "URI") else None
    return None


def validate_selector(selector: Any, where: str) -> list[str]:
    """Problems with a `users.NAME.certificate` mapping (empty list when it is fine)."""
    if (not isinstance(selector, Mapping) or len(selector) != 1
            or next(iter(selector)) not in SELECTOR_KINDS):
        return [f"{where}: expected exactly one of {{cn: ...}}, {{san_dns: ...}}, {{san_uri: ...}}"]
    (kind, value), = selector.items()
    if not isinstance(value, str) or not value.strip():
        return [f"{where}.{kind}: expected a non-empty string"]
    return []


@functools.lru_cache(maxsize=64)
def _ders_of(cas: tuple[Certificate, ...]) -> frozenset[bytes]:
    from cryptography.hazmat.primitives.serialization import Encoding  # (deferred: as above)
    return frozenset(c.public_bytes(Encoding.DER) for c in cas)


def binding_matches(peercert: Mapping[str, Any] | None, chain: tuple[Any, ...],
                    binding: Mapping[str, Any],
                    ca_certs: tuple[Certificate, ...] | None = None) -> bool:
    """Whether a verified certificate satisfies a user's binding: its selector (`cn`, `san_dns`,
    `san_uri`) and, when the binding names a `ca` (`ca_certs`: that file's certificates), that
    CA vouches for the certificate's verified chain."""
    selector = {k: v for k, v in binding.items() if k != "ca"}
    if identity_of(peercert, selector) is None:
        return False
    if binding.get("ca") is not None:
        # (an empty ca_certs: chain_trusted_by is False)
        return ca_certs is not None and bool(chain) and chain_trusted_by(chain, ca_certs)
    return True


def map_certificate(peercert: Mapping[str, Any] | None, chain: tuple[Any, ...],
                    entries: Iterable[UserEntry]) -> list[str]:
    """The names of the users (config.UserEntry) whose binding this certificate satisfies. One
    name: the certificate's user; none or several: nobody (deny by default)."""
    if not peercert:
        return []
    return [e.name for e in entries
            if e.certificate is not None
            and binding_matches(peercert, chain, e.certificate, getattr(e, "certificate_ca", None))]
