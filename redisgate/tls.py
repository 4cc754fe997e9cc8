"""TLS for redisgate: SSL contexts built from config, certificate identities, reload without restart.

No sockets here. The module builds and swaps `ssl.SSLContext` objects from files, maps a verified
client certificate to a configured user, and offers `TLSEngine`, a sans-I/O TLS endpoint over
`ssl.MemoryBIO` for the I/O layer that wants to see every handshake failure itself.

Contracts
---------
* `ListenerTLS(cfg, base_dir, where="listen[1].tls")` validates one listener's `tls:` mapping and
  loads its files; any problem raises `TLSConfigError` (a `ValueError`) whose `.problems` are
  ``<where>.<key>: <why>`` lines. `.context` is the *current* server context; `.reload()` rebuilds
  it from the same files and returns True, or logs one line naming the file and the reason and
  keeps the previous context (returns False): only files. A configuration reload builds a new
  `ListenerTLS` from the new settings and the running one `.adopt()`s it (every setting and file
  then applies to new handshakes; server.Proxy.reload refuses the whole reload when one cannot be
  built). `.client_cas` are the certificates of `client_ca`; `.trusts(chain)` re-checks a
  connection's verified chain against them. `client_cert` defaults to `optional`
  when `client_ca` is set, else `none`. TLS session tickets are off (see `_build`).
  `.user_for(peercert, users)` and `.describe(peercert)` are the module functions below.
* Two ways for a listener to pick up a reloaded context for new handshakes while established
  connections keep theirs: (1) per connection, `TLSEngine(listener.context)`; (2) with
  `loop.create_server(ssl=listener.context)`, every context this class builds carries an
  `sni_callback` that moves each new handshake onto the current context (OpenSSL calls it for every
  ClientHello, with or without SNI; certificate, key and CA store all follow the swap).
  Only (1) lets the server see a failed handshake: asyncio and uvloop both swallow handshake
  errors of `create_server(ssl=...)` (an `OSError` is only debug-logged), and `loop.start_tls` on
  a fresh server connection loses the ClientHello under uvloop, which starts reading after
  `connection_made` whatever the protocol paused.
* `UpstreamTLS(cfg, base_dir, where="upstream.tls", default_server_name=None)`: the client
  context for TLS to Redis (`tls-port`): CA verification plus hostname check against
  `server_name`, optional client certificate. `insecure_skip_verify: true` (a real boolean) turns
  verification off and logs a warning once, at construction. `.context`, `.server_name(host)`
  (the configured name, else the upstream host), `.reload()`.
* `match_certificate_user(peercert, users)` (with `login.identity_of`, the one selector match): a selector is
  `{cn: V}`, `{san_dns: V}` or `{san_uri: V}`; `peercert` is the dict of
  `SSLObject.getpeercert()` for a *verified* certificate. Exact matching only: no wildcards, the
  subject must carry exactly one CN, DNS names compare case-insensitively. A certificate that
  matches several users matches none (deny by default).
* `load_binding_ca(value, base_dir, where, problems)` reads a user binding's `ca:` file;
  `ca_scope_warnings(listeners, users)`: `check`'s warnings about bindings without `ca` when
  listeners trust different client CAs, and about a binding `ca` no listener trusts. Which user
  a certificate maps to (selector plus `ca`) is decided in login.py (`map_certificate`).
* `TLSEngine.verified_chain`: the client's verified chain, leaf first (CPython 3.10+'s
  `get_verified_chain`; only the leaf where it is missing), for binding CAs and the reload
  re-check of a connection's CA.
* `record_layer()`: the C record layer (`redisgate._native._tlsrec.Record`) when it is built, runs the
  same OpenSSL as Python's ssl module and `REDISGATE_NO_TLSREC` (or `REDISGATE_PURE_PYTHON`) is
  unset; else None.
  `TLSEngine.hand_over(record, ...)` moves a connection's records to it once the handshake
  (always run here, so that every failure is audited) is done: see `_tlsrec.c`.
* `handshake_failure_reason(exc, first_byte)` turns whatever a failed handshake raised into a short,
  secret-free reason for the audit log.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import ssl
from pathlib import Path
from typing import Any, Callable, Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding

from .telemetry.audit import safe
from .config import FileProblem, read_regular_file
from .policy.login import chain_trusted_by, common_names, identity_of

log = logging.getLogger("redisgate.tls")

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
CLIENT_CERT_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                     "required": ssl.CERT_REQUIRED}
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# A listener's TLS 1.2 suites unless `ciphers` is set: forward-secret AEAD only (no CBC, whose
# MAC-then-encrypt has a long record of padding-oracle attacks, no RSA key exchange). TLS 1.3
# suites are all AEAD and are not affected by this string.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"

LISTENER_KEYS = ("cert", "key", "client_ca", "client_cert", "min_version", "ciphers",
                 "handshake_timeout")
UPSTREAM_KEYS = ("ca", "server_name", "cert", "key", "insecure_skip_verify", "min_version")

# X509_V_ERR_* codes a failed client-certificate verification carries (openssl/x509_vfy.h).
_VERIFY_REASONS = {
    2: "certificate not trusted (issuer unknown)",
    9: "certificate not yet valid",
    10: "certificate expired",
    18: "certificate not trusted (self-signed)",
    19: "certificate not trusted (self-signed CA in chain)",
    20: "certificate not trusted (unknown CA)",
    21: "certificate not trusted (unknown CA)",
    23: "certificate revoked",
    26: "certificate not valid for this purpose",
}
_SSL_REASONS = {
    "WRONG_VERSION_NUMBER": "not a TLS handshake",
    "HTTP_REQUEST": "not a TLS handshake (HTTP request)",
    "UNSUPPORTED_PROTOCOL": "TLS version below the configured minimum",
    "NO_SHARED_CIPHER": "no shared cipher",
    "NO_CIPHERS_AVAILABLE": "no shared cipher",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate (client_cert: required)",
    "UNEXPECTED_EOF_WHILE_READING": "connection closed during the handshake",
}


class TLSConfigError(ValueError):
    """Invalid TLS settings or unusable files; `.problems` lists ``<where>.<key>: <why>`` lines."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class TLSHandshakeError(Exception):
    """A handshake failed; `.reason` is short, secret-free text for the audit log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TLSRecordError(Exception):
    """A TLS error after the handshake (corrupt record, unexpected message): close the connection."""


# ---------------------------------------------------------------------------- settings helpers

def _resolve(base_dir: str | os.PathLike | None, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else Path(base_dir or ".") / path


def _path_setting(cfg: Mapping, key: str, where: str, base_dir, problems: list[str]) -> Path | None:
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}.{key}: expected a file path")
        return None
    return _resolve(base_dir, value)


def _min_version(cfg: Mapping, where: str, problems: list[str]) -> ssl.TLSVersion:
    value = cfg.get("min_version", "1.2")
    # YAML reads an unquoted 1.2 as a float; accept it and "TLSv1.2" as well.
    text = str(value).strip().lower().removeprefix("tlsv")
    if isinstance(value, bool) or text not in TLS_VERSIONS:
        problems.append(f'{where}.min_version: must be "1.2" or "1.3" '
                        f"(TLS 1.0 and 1.1 are not supported), got {value!r}")
        return ssl.TLSVersion.TLSv1_2
    return TLS_VERSIONS[text]


def _unknown_keys(cfg: Mapping, known: tuple[str, ...], where: str, problems: list[str]) -> None:
    for key in cfg:
        if key not in known:
            problems.append(f"{where}.{key}: unknown setting (known: {', '.join(known)})")


# PEM files: certificates, keys and CA bundles are read at most this large (a system CA bundle
# is about 200 KiB), and only from regular files (a FIFO would block the event loop on reload).
MAX_PEM_BYTES = 4 * 1024 * 1024


def _read(path: Path, where_key: str) -> bytes:
    try:
        return read_regular_file(path, MAX_PEM_BYTES)[0]
    except FileProblem as e:
        raise TLSConfigError([f"{where_key}: cannot read {path}: {e}"]) from None


def _load_certificates(path: Path, where_key: str) -> list[x509.Certificate]:
    data = _read(path, where_key)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSConfigError([f"{where_key}: {path} holds no PEM certificate"])
    return certs


def _check_key_pair(cert_path: Path, key_path: Path, where: str) -> x509.Certificate:
    """Check with `cryptography` first: OpenSSL's own errors ("PEM lib") do not say what is wrong."""
    leaf = _load_certificates(cert_path, f"{where}.cert")[0]
    data = _read(key_path, f"{where}.key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # Never let OpenSSL prompt on the terminal for a pass phrase (it would on reload, too).
        raise TLSConfigError([f"{where}.key: {key_path} is encrypted; redisgate needs an "
                              "unencrypted private key (protect it with file permissions)"]) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError([f"{where}.key: {key_path} holds no readable PEM private key"]) from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise TLSConfigError([f"{where}.key: {key_path} does not belong to the certificate in "
                              f"{cert_path}"])
    return leaf


def _load_chain(ctx: ssl.SSLContext, cert_path: Path, key_path: Path, where: str) -> x509.Certificate:
    leaf = _check_key_pair(cert_path, key_path, where)
    try:
        ctx.load_cert_chain(cert_path, key_path, password=_no_password)
    except (ssl.SSLError, OSError, _PasswordNeeded) as e:
        raise TLSConfigError([f"{where}.cert: OpenSSL rejected {cert_path} / {key_path}: "
                              f"{getattr(e, 'reason', None) or e}"]) from None
    return leaf


def _load_ca(ctx: ssl.SSLContext, ca_path: Path, where_key: str) -> list[x509.Certificate]:
    cas = _load_certificates(ca_path, where_key)
    try:
        ctx.load_verify_locations(cafile=ca_path)
    except (ssl.SSLError, OSError) as e:
        raise TLSConfigError([f"{where_key}: OpenSSL rejected {ca_path}: "
                              f"{getattr(e, 'reason', None) or e}"]) from None
    return cas


def load_binding_ca(value: Any, base_dir, where: str,
                    problems: list[str]) -> tuple[Path, tuple[x509.Certificate, ...]] | None:
    """A user binding's `ca: <file>`: (resolved path, its certificates), or None after adding a
    ``<where>: <why>`` line to `problems`."""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: expected the path of a PEM file of CA certificates")
        return None
    path = _resolve(base_dir, value)
    try:
        return path, tuple(_load_certificates(path, where))
    except TLSConfigError as e:
        problems.extend(e.problems)
        return None


class _PasswordNeeded(Exception):
    pass


def _no_password() -> bytes:
    raise _PasswordNeeded("the private key is encrypted")


def _warn_validity(cert: x509.Certificate, path: Path, where: str) -> None:
    now = _dt.datetime.now(_dt.timezone.utc)
    if cert.not_valid_after_utc <= now:
        log.warning("%s: the certificate in %s expired on %s; peers will refuse it", where, path,
                    cert.not_valid_after_utc.isoformat())
    elif cert.not_valid_before_utc > now:
        log.warning("%s: the certificate in %s is not valid before %s; peers will refuse it",
                    where, path, cert.not_valid_before_utc.isoformat())


def weak_cipher_suites(ciphers: str) -> list[str]:
    """The TLS 1.2 suites an OpenSSL cipher string admits that nobody should negotiate today:
    not AEAD (CBC), no forward secrecy (RSA key exchange), no or pre-shared-key authentication,
    or under 128 bits; plus a note when it lowers OpenSSL's security level below 2. `check`
    warns with these. An invalid string gives [] (ListenerTLS reports it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        return []
    weak = [c["name"] for c in ctx.get_ciphers()
            if c.get("protocol") != "TLSv1.3"
            and (not c.get("aead") or c.get("kea") not in ("kx-ecdhe", "kx-dhe")
                 or c.get("auth") in ("auth-null", "auth-psk", "auth-srp")
                 or (c.get("strength_bits") or 0) < 128)]
    if re.search(r"@SECLEVEL=[01](?!\d)", ciphers):
        weak.append("@SECLEVEL below 2")
    return weak


# ---------------------------------------------------------------------------- listener (server)

def _rebuilt(where: str, build: Callable[[], ssl.SSLContext], kept: str) -> ssl.SSLContext | None:
    """A reload's new context from `build`, or None when the files do not make one (logged: the
    caller keeps its current context, `kept` says what of it)."""
    try:
        return build()
    except TLSConfigError as e:
        log.error("%s: TLS reload failed, still using the previous %s: %s", where, kept,
                  "; ".join(e.problems))
        return None


class ListenerTLS:
    """One listener's TLS settings and its current, reloadable server context."""

    def __init__(self, cfg: Mapping[str, Any], base_dir: str | os.PathLike | None = None, *,
                 where: str = "listen.tls",
                 default_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT):
        self.where = where
        problems: list[str] = []
        if not isinstance(cfg, Mapping):
            raise TLSConfigError([f"{where}: expected a mapping with at least cert and key"])
        _unknown_keys(cfg, LISTENER_KEYS, where, problems)
        self.cert_path = _path_setting(cfg, "cert", where, base_dir, problems)
        self.key_path = _path_setting(cfg, "key", where, base_dir, problems)
        for key in ("cert", "key"):
            if cfg.get(key) is None:
                problems.append(f"{where}.{key}: required")
        self.client_ca_path = _path_setting(cfg, "client_ca", where, base_dir, problems)
        mode = cfg.get("client_cert", "optional" if self.client_ca_path else "none")
        if mode not in CLIENT_CERT_MODES:
            problems.append(f"{where}.client_cert: must be none, optional or required, got {mode!r}")
            mode = "none"
        elif mode != "none" and self.client_ca_path is None:
            problems.append(f"{where}.client_ca: required when client_cert is {mode} "
                            "(the CA that signs client certificates)")
        self.client_cert: str = mode
        self.min_version = _min_version(cfg, where, problems)
        ciphers = cfg.get("ciphers")
        if ciphers is not None and (not isinstance(ciphers, str) or not ciphers.strip()):
            problems.append(f"{where}.ciphers: expected an OpenSSL cipher list string")
            ciphers = None
        self.ciphers: str | None = ciphers
        timeout = cfg.get("handshake_timeout", default_handshake_timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 \
                or timeout == float("inf"):
            problems.append(f"{where}.handshake_timeout: expected a number of seconds > 0, "
                            f"got {timeout!r}")
            timeout = default_handshake_timeout
        self.handshake_timeout = float(timeout)
        if problems:
            raise TLSConfigError(problems)
        self._context = self._build()
        self.client_cas = self._built_cas

    SETTINGS = ("cert_path", "key_path", "client_ca_path", "client_cert", "min_version", "ciphers",
                "handshake_timeout")

    @property
    def context(self) -> ssl.SSLContext:
        """The context new handshakes must use (replaced by a successful `reload`)."""
        return self._context

    def adopt(self, new: "ListenerTLS") -> list[str]:
        """Take over the settings and context of `new` (built from the reloaded config for the
        same listener): every setting applies to new handshakes, established connections keep
        theirs. Returns the names of the settings that changed."""
        changed = [name.removesuffix("_path") for name in self.SETTINGS
                   if getattr(self, name) != getattr(new, name)]
        for name in self.SETTINGS:
            setattr(self, name, getattr(new, name))
        ctx = new._context
        ctx.sni_callback = self._use_current   # (it named `new`, which is dropped)
        self._context = ctx
        self.client_cas = new.client_cas
        return changed

    def trusts(self, chain) -> bool:
        """Whether this listener's current `client_ca` vouches for a verified chain (leaf first):
        the reload re-check of connections accepted under an earlier CA file."""
        return bool(self.client_cas) and chain_trusted_by(chain, self.client_cas)

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.cert_path, self.key_path, self.client_ca_path) if p is not None]

    def user_for(self, peercert: Mapping | None, users: Mapping[str, Mapping[str, Any]]) -> str | None:
        """`match_certificate_user` for a connection accepted on this listener."""
        return match_certificate_user(peercert, users)

    def describe(self, peercert: Mapping | None) -> str:
        """`describe_peer`: a log-safe description of the client's certificate."""
        return describe_peer(peercert)

    def reload(self) -> bool:
        """Re-read cert, key and CA; on any problem keep the current context and log why."""
        ctx = _rebuilt(self.where, self._build, "certificate")
        if ctx is None:
            return False
        self._context = ctx
        self.client_cas = self._built_cas
        log.info("%s: TLS certificate reloaded from %s", self.where, self.cert_path)
        return True

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        # Client-initiated renegotiation is a cheap CPU attack and nothing here needs it.
        ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_TICKET
        # No session tickets: a resumed session skips certificate verification, so it would keep
        # identifying a client by a certificate that a rotated CA no longer vouches for.
        ctx.num_tickets = 0
        try:
            ctx.set_ciphers(self.ciphers or DEFAULT_CIPHERS)
        except ssl.SSLError:
            raise TLSConfigError([f"{self.where}.ciphers: no cipher matches "
                                  f"{self.ciphers!r}"]) from None
        leaf = _load_chain(ctx, self.cert_path, self.key_path, self.where)
        _warn_validity(leaf, self.cert_path, self.where)
        self._built_cas: tuple[x509.Certificate, ...] = ()
        if self.client_ca_path is not None:
            self._built_cas = tuple(_load_ca(ctx, self.client_ca_path, f"{self.where}.client_ca"))
        ctx.verify_mode = CLIENT_CERT_MODES[self.client_cert]
        ctx.sni_callback = self._use_current
        return ctx

    def _use_current(self, ssl_object, server_name, context) -> None:
        # OpenSSL's servername callback runs for every ClientHello before the certificate is
        # chosen; SSL_set_SSL_CTX moves this handshake onto the newest cert, key and CA store.
        current = self._context
        if ssl_object.context is not current:
            ssl_object.context = current
        return None


# ---------------------------------------------------------------------------- upstream (client)

class UpstreamTLS:
    """TLS towards the upstream Redis: a verifying client context, reloadable."""

    def __init__(self, cfg: Mapping[str, Any] | bool, base_dir: str | os.PathLike | None = None,
                 *, where: str = "upstream.tls", default_server_name: str | None = None):
        self.where = where
        if cfg is True:
            cfg = {}
        if not isinstance(cfg, Mapping):
            raise TLSConfigError([f"{where}: expected a mapping (ca, server_name, cert, key, "
                                  "insecure_skip_verify)"])
        problems: list[str] = []
        _unknown_keys(cfg, UPSTREAM_KEYS, where, problems)
        self.ca_path = _path_setting(cfg, "ca", where, base_dir, problems)
        self.cert_path = _path_setting(cfg, "cert", where, base_dir, problems)
        self.key_path = _path_setting(cfg, "key", where, base_dir, problems)
        if (cfg.get("cert") is None) != (cfg.get("key") is None):
            missing = "key" if cfg.get("key") is None else "cert"
            problems.append(f"{where}.{missing}: required together with "
                            f"{'cert' if missing == 'key' else 'key'} (the client certificate)")
        name = cfg.get("server_name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            problems.append(f"{where}.server_name: expected the host name in the Redis certificate")
            name = None
        self.configured_server_name: str | None = name
        self._default_server_name = default_server_name
        insecure = cfg.get("insecure_skip_verify", False)
        if not isinstance(insecure, bool):
            problems.append(f"{where}.insecure_skip_verify: must be true or false, got {insecure!r}")
            insecure = False
        self.insecure = insecure
        self.min_version = _min_version(cfg, where, problems)
        if problems:
            raise TLSConfigError(problems)
        self._context = self._build()
        if self.insecure:
            log.warning("%s.insecure_skip_verify is true: the upstream Redis certificate is NOT "
                        "verified; anyone on the network path can impersonate it", where)

    SETTINGS = ("ca_path", "cert_path", "key_path", "configured_server_name", "insecure",
                "min_version")

    @property
    def context(self) -> ssl.SSLContext:
        """The context new upstream connections must use."""
        return self._context

    def changed_settings(self, new: "UpstreamTLS") -> list[str]:
        names = {"ca_path": "ca", "cert_path": "cert", "key_path": "key",
                 "configured_server_name": "server_name", "insecure": "insecure_skip_verify"}
        return [names.get(n, n) for n in self.SETTINGS if getattr(self, n) != getattr(new, n)]

    def server_name(self, host: str | None = None) -> str | None:
        """The name to send as SNI and check the certificate against: `server_name` if set,
        else `host` (the upstream address's host; an IP address is matched against IP SANs)."""
        return self.configured_server_name or host or self._default_server_name

    def reload(self) -> bool:
        ctx = _rebuilt(self.where, self._build, "files")
        if ctx is None:
            return False
        self._context = ctx
        log.info("%s: TLS files reloaded", self.where)
        return True

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = self.min_version
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_path is not None:
            _load_ca(ctx, self.ca_path, f"{self.where}.ca")
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if self.cert_path is not None and self.key_path is not None:
            leaf = _load_chain(ctx, self.cert_path, self.key_path, self.where)
            _warn_validity(leaf, self.cert_path, self.where)
        return ctx


# ---------------------------------------------------------------------------- identities

def match_certificate_user(peercert: Mapping | None,
                           users: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The one user whose certificate selector matches `peercert`; None for none or several."""
    if not peercert:
        return None
    matches = [name for name, selector in users.items() if identity_of(peercert, selector)]
    if len(matches) > 1:
        log.warning("client certificate %s matches several users (%s); granting none",
                    describe_peer(peercert), ", ".join(sorted(matches)))
        return None
    return matches[0] if matches else None


def describe_peer(peercert: Mapping | None) -> str:
    """A short, log-safe description of a certificate: ``CN=bob SAN=DNS:a,URI:b``. Each value is
    the CA's but chosen by whoever asked for the certificate: escaped and cut (audit.safe)."""
    if not peercert:
        return "no certificate"
    parts = [f"CN={safe(cn)}" for cn in common_names(peercert)[:4]]
    san = [f"{k}:{safe(v)}" for (k, v) in peercert.get("subjectAltName", ())
           if k in ("DNS", "URI")][:8]
    if san:
        parts.append("SAN=" + ",".join(san))
    return " ".join(parts) or "certificate without CN or SAN"


def ca_scope_warnings(listeners, users: Mapping[str, Any]) -> list[str]:
    """`check` and serve warnings: listeners (ListenerTLS or None) that trust different client
    CAs make every binding without `ca` reachable from each of them."""

    trusted = {}
    for lst in listeners:
        if lst is not None and lst.client_cas:
            trusted.setdefault(frozenset(c.public_bytes(Encoding.DER) for c in lst.client_cas),
                               []).append(lst.where.removesuffix(".tls"))
    out = []
    wheres = " and ".join(", ".join(w) for w in trusted.values())
    for name, entry in users.items():
        if entry.certificate is None:
            continue
        cas = getattr(entry, "certificate_ca", None)
        if entry.certificate.get("ca") is None:
            if len(trusted) > 1:
                out.append(f"users.{name}.certificate: listeners trust different client CAs "
                           f"({wheres}) and this binding names none, so a certificate from any "
                           f"of them can log in as {name}; add ca: <file of the CA meant for it>")
        elif cas and not any(chain_trusted_by([c.public_bytes(Encoding.DER) for c in cas],
                                              lst.client_cas)
                             for lst in listeners if lst is not None and lst.client_cas):
            out.append(f"users.{name}.certificate.ca: no TLS listener's client_ca trusts this CA; "
                       "nobody can log in with its certificates")
    return out


# ---------------------------------------------------------------------------- handshake failures

def handshake_failure_reason(exc: BaseException, first_byte: int | None = None) -> str:
    """A short audit reason for an exception raised by a failed server-side handshake.

    `first_byte` is the first byte the client sent, if known: a TLS connection starts with a
    handshake record (0x16), so anything else is plaintext or garbage.
    """
    if first_byte is not None and first_byte != 0x16:
        ch = chr(first_byte)
        if ch == "*" or ch.isalpha():
            return "plaintext instead of a TLS handshake (a RESP command?)"
        return "garbage instead of a TLS handshake"
    if isinstance(exc, TLSHandshakeError):
        return exc.reason
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = _VERIFY_REASONS.get(exc.verify_code, exc.verify_message or "verification failed")
        return f"client {why}"
    if isinstance(exc, (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)):
        return "connection closed during the handshake"
    if isinstance(exc, (TimeoutError, ConnectionAbortedError)):
        return "handshake timeout"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _SSL_REASONS:
            return _SSL_REASONS[reason]
        if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
            alert = reason.split("ALERT_", 1)[1].lower().replace("_", " ")
            return f"client sent alert: {alert}"
        return f"TLS error: {reason or exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ---------------------------------------------------------------------------- sans-I/O endpoint

def record_layer():
    """`redisgate._native._tlsrec.Record`, or None where it is not built, is turned off
    (REDISGATE_NO_TLSREC=1 or REDISGATE_PURE_PYTHON=1), or was linked against another OpenSSL than Python's ssl module."""
    if os.environ.get("REDISGATE_NO_TLSREC") or os.environ.get("REDISGATE_PURE_PYTHON"):
        return None
    try:
        from ._native import _tlsrec   # (optional C module: absent without a compiler or libssl-dev)
    except ImportError:
        return None
    if _tlsrec.OPENSSL_VERSION_NUMBER != ssl.OPENSSL_VERSION_NUMBER:
        return None
    return _tlsrec.Record


class TLSEngine:
    """One TLS connection without I/O: bytes from the socket in, plaintext out, and back.

    Usage by a server protocol::

        engine = TLSEngine(listener.context)          # the current context: reloads apply here
        plain = engine.receive(data)                  # may raise TLSHandshakeError / TLSRecordError
        transport.write(engine.data_to_send())        # after every call: handshake, alerts, records
        if engine.handshake_done: ... engine.peercert ...
        engine.send(reply); transport.write(engine.data_to_send())

    After an exception, `data_to_send()` may still hold an alert for the peer: write it, then
    close. `peer_closed` becomes True when the peer sent close_notify. `send` before the
    handshake completes is buffered and encrypted once it does.
    """

    READ_CHUNK = 256 * 1024

    def __init__(self, context: ssl.SSLContext, *, server_side: bool = True,
                 server_hostname: str | None = None):
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=server_hostname)
        self.handshake_done = False
        self.peer_closed = False
        self.first_byte: int | None = None
        self._pending: list[bytes] = []
        self._failed = False

    @property
    def peercert(self) -> dict | None:
        """The verified peer certificate (`getpeercert()`), None without one."""
        return self._obj.getpeercert() if self.handshake_done else None

    @property
    def verified_chain(self) -> tuple:
        """The verified peer chain, leaf first (objects with `public_bytes`, or DER bytes); only
        the leaf's DER where this Python offers no verified chain; () without a certificate."""
        if not self.handshake_done or not self._obj.getpeercert():
            return ()
        getter = getattr(self._obj, "get_verified_chain", None) or getattr(
            getattr(self._obj, "_sslobj", None), "get_verified_chain", None)   # 3.13 / 3.10+
        if getter is not None:
            try:
                return tuple(getter())
            except (ssl.SSLError, ValueError, AttributeError):
                pass
        leaf = self._obj.getpeercert(binary_form=True)
        return (leaf,) if leaf else ()

    @property
    def version(self) -> str | None:
        return self._obj.version() if self.handshake_done else None

    @property
    def cipher(self) -> str | None:
        c = self._obj.cipher() if self.handshake_done else None
        return c[0] if c else None

    def receive(self, data: bytes) -> bytes:
        """Feed bytes read from the socket; return the application data they complete."""
        if self._failed:
            return b""
        if data:
            if self.first_byte is None:
                self.first_byte = data[0]
            self._in.write(data)
        if not self.handshake_done:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            except (ssl.SSLError, OSError, ValueError) as e:
                self._failed = True
                raise TLSHandshakeError(handshake_failure_reason(e, self.first_byte)) from e
            self.handshake_done = True
            for chunk in self._pending:
                self._write(chunk)
            self._pending.clear()
        chunks = []
        while True:
            try:
                chunk = self._obj.read(self.READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            except ssl.SSLError as e:
                self._failed = True
                raise TLSRecordError(f"TLS error: {e.reason or e}") from e
            if not chunk:               # SSL_ERROR_ZERO_RETURN surfaces as b"": close_notify
                self.peer_closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        """Encrypt application data; fetch the records with `data_to_send()`."""
        if not data or self._failed:
            return
        if not self.handshake_done:
            self._pending.append(bytes(data))
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._obj.write(view)
            view = view[n:]

    def hand_over(self, record, raw_write, owner, sink, on_fail, on_close) -> bool:
        """Let `record` (a started `_tlsrec.Record`) read and write this connection's records
        from now on; False (and nothing changed) when it cannot: the handshake is not done, the
        connection failed, or this Python's ssl objects are not what _tlsrec.c expects. Call it
        with nothing left in `data_to_send()`; the certificate, `close()` and the properties
        keep working (they read the same OpenSSL connection)."""
        sslobj = getattr(self._obj, "_sslobj", None)
        if sslobj is None or not self.handshake_done or self._failed or self._pending \
                or self.peer_closed:
            return False
        try:
            record.start(sslobj, self._in, raw_write, owner, sink, on_fail, on_close)
        except TypeError:
            return False
        return True

    def mark_failed(self) -> None:
        """The record layer it was handed over to met a TLS error: nothing more is read or
        sent, and `close()` sends no close_notify (as after a TLSRecordError here)."""
        self._failed = True

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (and forget)."""
        return self._out.read()

    def close(self) -> None:
        """Queue a close_notify alert (best effort; the transport is closed right after)."""
        if not self.handshake_done or self._failed:
            return
        try:
            self._obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError, OSError, ValueError):
            pass
