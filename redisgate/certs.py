"""`redisgate certs`: a development CA, a server certificate and per-user client certificates.

Files only, no network. Everything is built with `cryptography`: ECDSA P-256 keys, SHA-256
signatures, and the X.509 extensions strict verifiers insist on (critical basic constraints and key
usage, subject/authority key identifiers, extended key usage), so the files work with OpenSSL
(redis-server, redis-cli, Python) and Go (go-redis) alike.

`redisgate certs --out DIR [--host NAME ...] [--client USER ...] [--force]` writes

* `ca.crt` / `ca.key`: the development CA. An existing, loadable pair is reused, so certificates
  issued earlier stay valid when clients are added later; delete both files to start a new CA.
* `server.crt` / `server.key`: SAN `localhost`, `127.0.0.1`, `::1` plus every `--host` (a name, or
  an IP address, which becomes an IP SAN).
* `USER.crt` / `USER.key` for every `--client USER`: subject CN = USER, extended key usage
  clientAuth, so `users.USER.certificate: {cn: USER}` identifies it.

Private keys are mode 0600, certificates 0644. No existing file is ever replaced unless `--force` is
given; without it the command names every file in the way and writes nothing. Files are written to a
temporary name and renamed into place, so a server reloading on SIGHUP never reads half a file.

The building blocks (`make_ca`, `make_cert`, `write_pair`, ...) are public because tests need
certificates the CLI never makes: expired, not yet valid, signed by a foreign CA.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import write_private

CA_DAYS = 3650
LEAF_DAYS = 825
# Certificates start a little in the past so a peer whose clock lags ours still accepts them.
BACKDATE = _dt.timedelta(minutes=5)
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")

# A client name becomes a file name: keep it to characters that are safe there and that cannot
# collide with the CA's or the server's files.
_USER_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}\Z")
_RESERVED = {"ca", "server"}


class CertsError(Exception):
    """A precise, user-facing reason why `redisgate certs` cannot do what it was asked."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def make_ca(cn: str | None = None, *, not_before: _dt.datetime | None = None,
            not_after: _dt.datetime | None = None,
            key: ec.EllipticCurvePrivateKey | None = None) -> Issued:
    """A self-signed CA certificate (path length 0: it signs leaves only)."""
    key = key or new_key()
    if cn is None:
        # A distinct name per CA: OpenSSL finds issuers by subject name, so two development CAs
        # with one name in the same trust store would shadow each other.
        cn = f"redisgate development CA {os.urandom(4).hex()}"
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "redisgate"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    not_before = not_before or _now() - BACKDATE
    not_after = not_after or not_before + _dt.timedelta(days=CA_DAYS)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def make_cert(cn: str, issuer: Issued, *, dns: Iterable[str] = (), ips: Iterable[str] = (),
              uris: Iterable[str] = (), server: bool = False, client: bool = False,
              not_before: _dt.datetime | None = None, not_after: _dt.datetime | None = None,
              key: ec.EllipticCurvePrivateKey | None = None) -> Issued:
    """A leaf certificate for `cn` signed by `issuer`.

    `dns`, `ips` and `uris` become subjectAltName entries; `server` / `client` add the
    serverAuth / clientAuth extended key usages. `not_before` / `not_after` default to now
    (backdated by BACKDATE) and LEAF_DAYS later; pass past or future dates for expired or
    not-yet-valid certificates.
    """
    key = key or new_key()
    not_before = not_before or _now() - BACKDATE
    not_after = not_after or not_before + _dt.timedelta(days=LEAF_DAYS)
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    san += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    san += [x509.UniformResourceIdentifier(u) for u in uris]
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(issuer.cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                            crl_sign=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer.key.public_key()), critical=False))
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def split_hosts(hosts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) for SERVER_NAMES plus `hosts`, without duplicates, in order."""
    dns: list[str] = []
    ips: list[str] = []
    for host in (*SERVER_NAMES, *hosts):
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            name = host.strip().lower().rstrip(".")
            if not name or any(c.isspace() for c in name) or "/" in name:
                raise CertsError(f"--host {host!r}: not a host name or IP address") from None
            if name not in dns:
                dns.append(name)
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def make_server_cert(issuer: Issued, hosts: Iterable[str] = (), **kw) -> Issued:
    """The proxy's (or a test Redis's) certificate: SAN localhost, 127.0.0.1, ::1 and `hosts`."""
    dns, ips = split_hosts(hosts)
    return make_cert(dns[0], issuer, dns=dns, ips=ips, server=True, **kw)


def make_client_cert(issuer: Issued, user: str, **kw) -> Issued:
    """A client certificate whose subject CN is `user`."""
    return make_cert(user, issuer, client=True, **kw)


def _write_atomic(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write `data` to `path` with `mode`, all at once; replace an existing file only if `force`."""
    try:
        write_private(path, data, mode, replace=force)
    except FileExistsError:
        raise CertsError(f"{path} already exists; refusing to overwrite it "
                         "(use --force)") from None


def write_pair(out_dir: str | os.PathLike, name: str, issued: Issued, *,
               force: bool = False) -> tuple[Path, Path]:
    """Write `name.crt` (0644) and `name.key` (0600) into `out_dir`; returns their paths."""
    out = Path(out_dir)
    crt, key = out / f"{name}.crt", out / f"{name}.key"
    _write_atomic(key, issued.key_pem(), 0o600, force)
    _write_atomic(crt, issued.cert_pem(), 0o644, force)
    return crt, key


def load_pair(crt: str | os.PathLike, key: str | os.PathLike) -> Issued:
    """Load a PEM certificate and its unencrypted PEM private key; CertsError on any mismatch."""
    try:
        cert = x509.load_pem_x509_certificate(Path(crt).read_bytes())
    except (OSError, ValueError) as e:
        raise CertsError(f"{crt}: cannot load the certificate: {e}") from None
    try:
        pkey = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise CertsError(f"{key}: cannot load the private key: {e}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (pkey.public_key().public_bytes(serialization.Encoding.DER, spki)
            != cert.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise CertsError(f"{key} does not belong to the certificate in {crt}")
    return Issued(cert, pkey)


def _check_user(user: str) -> str:
    if not _USER_FILE_NAME.match(user):
        raise CertsError(f"--client {user!r}: a client name must start with a letter or digit and "
                         "hold only letters, digits and . _ @ + - (it becomes a file name)")
    if user.lower() in _RESERVED:
        raise CertsError(f"--client {user}: the name collides with {user.lower()}.crt/.key; "
                         "choose another user name")
    return user


def _check_ca_key(path: Path) -> None:
    """A CA key to reuse must be a regular file (not a symlink), ours, and 0600: a key others
    could read (or that someone else planted) may already mint client certificates."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise CertsError(f"{path}: not a regular file (a symlink?); refusing to reuse this CA: "
                         "delete ca.crt and ca.key to create a new CA")
    if st.st_uid != os.getuid():
        raise CertsError(f"{path}: owned by another user (uid {st.st_uid}); refusing to reuse "
                         "this CA: delete ca.crt and ca.key to create a new CA")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise CertsError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, readable or writable by "
                         "group or others; whoever read it can mint client certificates. Refusing "
                         "to reuse this CA: delete ca.crt and ca.key to create a new CA (or chmod "
                         "600 it if nobody else could have read it)")


def generate(out_dir: str | os.PathLike, hosts: Sequence[str] = (),
             clients: Sequence[str] = (), *, force: bool = False) -> list[Path]:
    """Create the CA (or reuse an existing pair), the server pair and one pair per client.

    Returns the paths written. Raises CertsError (nothing written) when an argument is invalid or,
    without `force`, when any file to be written already exists.
    """
    out = Path(out_dir)
    users = list(dict.fromkeys(_check_user(u) for u in clients))
    lowered = [u.lower() for u in users]
    if len(set(lowered)) != len(lowered):
        # Case-insensitive file systems would map Bob.crt and bob.crt to one file.
        raise CertsError("--client names must differ in more than letter case")
    split_hosts(hosts)  # validate before touching the disk
    if out.exists() and not out.is_dir():
        raise CertsError(f"--out {out}: exists and is not a directory")

    ca_crt, ca_key = out / "ca.crt", out / "ca.key"
    reuse_ca = ca_crt.exists() and ca_key.exists()
    targets = [] if reuse_ca else [ca_crt, ca_key]
    for name in ("server", *users):
        targets += [out / f"{name}.crt", out / f"{name}.key"]
    in_the_way = [str(p) for p in targets if p.exists() or p.is_symlink()]
    if in_the_way and not force:
        raise CertsError("refusing to overwrite existing files (use --force): "
                         + ", ".join(in_the_way))

    if reuse_ca:
        _check_ca_key(ca_key)
    ca = load_pair(ca_crt, ca_key) if reuse_ca else None
    if ca is not None:
        try:
            ok = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ok = False
        if not ok:
            raise CertsError(f"{ca_crt} is not a CA certificate; delete ca.crt and ca.key to "
                             "create a new CA")
        if ca.cert.not_valid_after_utc <= _now():
            raise CertsError(f"{ca_crt} expired on {ca.cert.not_valid_after_utc:%Y-%m-%d}; delete "
                             "ca.crt and ca.key to create a new CA")

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if ca is None:
        ca = make_ca()
        written += write_pair(out, "ca", ca, force=force)
    written += write_pair(out, "server", make_server_cert(ca, hosts), force=force)
    for user in users:
        written += write_pair(out, user, make_client_cert(ca, user), force=force)
    return written


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `certs` options to `parser` (used by cli.py's sub-command and by `main`)."""
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory for ca.crt/.key, server.crt/.key and USER.crt/.key")
    parser.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="extra server name or IP address (repeatable); localhost, "
                             "127.0.0.1 and ::1 are always included")
    parser.add_argument("--client", action="append", default=[], metavar="USER",
                        help="issue a client certificate with subject CN=USER (repeatable)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing server and client files")
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute parsed `certs` arguments; returns the process exit code."""
    out = Path(args.out)
    reused = (out / "ca.crt").exists() and (out / "ca.key").exists()
    try:
        written = generate(out, args.host, args.client, force=args.force)
    except CertsError as e:
        print(f"redisgate certs: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"redisgate certs: {e.filename or args.out}: {e.strerror}", file=sys.stderr)
        return 1
    if reused:
        print(f"using the existing CA {out / 'ca.crt'}")
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(
        prog="redisgate certs", description="Create a development CA and TLS certificates."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
