"""`redisgate certs`: the files it writes, their modes, and that it never overwrites without --force.

Server certificates are checked with cryptography's RFC 5280 verifier and client certificates with
`openssl verify -x509_strict`, both stricter than what redis-server, redis-cli, Python and Go demand.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from redisgate import certs


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify_server(out, name: x509.GeneralName):
    store = Store([_cert(out / "ca.crt")])
    verifier = PolicyBuilder().store(store).build_server_verifier(name)
    return verifier.verify(_cert(out / "server.crt"), [])


def _verify_client(out, user: str):
    # cryptography's client verifier insists on a subjectAltName (a Web PKI rule); OpenSSL, Go
    # and Redis identify a client by its subject CN, so check with OpenSSL in strict mode.
    run = subprocess.run(["openssl", "verify", "-x509_strict", "-purpose", "sslclient",
                          "-CAfile", str(out / "ca.crt"), str(out / f"{user}.crt")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_writes_ca_server_and_client_files_with_private_key_modes(tmp_path, capsys):
    out = tmp_path / "certs"
    assert certs.main(["--out", str(out), "--client", "worker", "--client", "admin"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["admin.crt", "admin.key", "ca.crt", "ca.key", "server.crt", "server.key",
                     "worker.crt", "worker.key"]
    for p in out.iterdir():
        assert _mode(p) == (0o600 if p.suffix == ".key" else 0o644), p
    printed = capsys.readouterr().out
    assert f"wrote {out / 'server.key'}" in printed


def test_private_keys_are_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        certs.generate(tmp_path, clients=["bob"])
    finally:
        os.umask(old)
    assert _mode(tmp_path / "bob.key") == 0o600 and _mode(tmp_path / "ca.key") == 0o600


def test_server_certificate_covers_loopback_names_and_extra_hosts(tmp_path):
    assert certs.main(["--out", str(tmp_path), "--host", "redis.internal", "--host", "10.1.2.3"]) == 0
    san = _cert(tmp_path / "server.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "redis.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                        ipaddress.ip_address("::1"),
                                                        ipaddress.ip_address("10.1.2.3")]
    for name in (x509.DNSName("localhost"), x509.DNSName("redis.internal"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.IPAddress(ipaddress.ip_address("::1"))):
        _verify_server(tmp_path, name)
    with pytest.raises(VerificationError):
        _verify_server(tmp_path, x509.DNSName("elsewhere.example"))


def test_client_certificate_subject_cn_is_the_user_and_is_for_client_auth(tmp_path):
    certs.generate(tmp_path, clients=["asynq-worker"])
    cert = _cert(tmp_path / "asynq-worker.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "asynq-worker"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    _verify_client(tmp_path, "asynq-worker")


def test_refuses_to_overwrite_without_force_and_names_every_file(tmp_path, capsys):
    certs.generate(tmp_path, clients=["bob"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert certs.main(["--out", str(tmp_path), "--client", "bob"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("redisgate certs: refusing to overwrite existing files (use --force): ")
    for name in ("server.crt", "server.key", "bob.crt", "bob.key"):
        assert str(tmp_path / name) in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_force_replaces_server_and_client_files_but_keeps_the_ca(tmp_path, capsys):
    certs.generate(tmp_path, clients=["bob"])
    ca_before = (tmp_path / "ca.crt").read_bytes()
    old_bob = (tmp_path / "bob.crt").read_bytes()
    assert certs.main(["--out", str(tmp_path), "--client", "bob", "--client", "carol",
                       "--force"]) == 0
    assert f"using the existing CA {tmp_path / 'ca.crt'}" in capsys.readouterr().out
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "bob.crt").read_bytes() != old_bob
    assert _mode(tmp_path / "bob.key") == 0o600
    _verify_client(tmp_path, "carol")
    # A certificate issued before the re-run is still signed by the (same) CA.
    (tmp_path / "old.crt").write_bytes(old_bob)
    _verify_client(tmp_path, "old")


def test_a_lone_ca_file_is_not_silently_replaced(tmp_path, capsys):
    (tmp_path / "ca.crt").write_text("placeholder")
    assert certs.main(["--out", str(tmp_path)]) == 1
    assert str(tmp_path / "ca.crt") in capsys.readouterr().err
    assert (tmp_path / "ca.crt").read_text() == "placeholder"


def test_no_temporary_files_are_left_behind(tmp_path):
    certs.generate(tmp_path, clients=["bob"])
    certs.generate(tmp_path, clients=["bob"], force=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("user, why", [
    ("ca", "collides with ca.crt/.key"),
    ("Server", "collides with server.crt/.key"),
    ("../evil", "a client name must start with a letter or digit"),
    (".hidden", "a client name must start with a letter or digit"),
    ("a b", "a client name must start with a letter or digit"),
])
def test_client_names_that_are_unsafe_file_names_are_refused(tmp_path, capsys, user, why):
    assert certs.main(["--out", str(tmp_path / "d"), "--client", user]) == 1
    assert why in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_make_cert_builds_expired_and_not_yet_valid_certificates():
    ca = certs.make_ca()
    now = dt.datetime.now(dt.timezone.utc)
    expired = certs.make_client_cert(ca, "old", not_before=now - dt.timedelta(days=30),
                                     not_after=now - dt.timedelta(days=1))
    future = certs.make_client_cert(ca, "new", not_before=now + dt.timedelta(days=1),
                                    not_after=now + dt.timedelta(days=30))
    assert expired.cert.not_valid_after_utc < now < future.cert.not_valid_before_utc
    assert expired.cert.issuer == ca.cert.subject


def test_load_pair_rejects_a_key_of_another_certificate(tmp_path):
    certs.generate(tmp_path, clients=["bob"])
    with pytest.raises(certs.CertsError, match="does not belong to the certificate"):
        certs.load_pair(tmp_path / "server.crt", tmp_path / "bob.key")
