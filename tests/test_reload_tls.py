"""Proxy.reload and TLS settings (issue 22, finding 5), without sockets: every listener and upstream
TLS setting applies to new connections, or the whole reload is refused with a line naming it."""
from __future__ import annotations

import logging
import ssl

import pytest
import yaml

from redisgate import certs
from redisgate.config import load_config
from redisgate.io.server import Proxy


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("reload-pki")
    certs.generate(d, clients=["bob"])
    other = d / "other"
    certs.generate(other)
    return d


def write(path, listeners, upstream_tls=None, users=None):
    cfg = {"listen": listeners,
           "upstream": {"address": "127.0.0.1:1", **({"tls": upstream_tls} if upstream_tls else {})},
           "users": users or {"app": "on nopass +ping"}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def tls_listener(pki, port=16001, **kw):
    return {"address": f"127.0.0.1:{port}",
            "tls": {"cert": str(pki / "server.crt"), "key": str(pki / "server.key"), **kw}}


@pytest.fixture
def proxy(tmp_path, pki):
    path = tmp_path / "redisgate.yaml"
    write(path, [{"address": "127.0.0.1:16000"},
                 tls_listener(pki, client_ca=str(pki / "ca.crt"), client_cert="optional")],
          upstream_tls={"insecure_skip_verify": True})
    p = Proxy(load_config(path))
    p.path = path
    return p


def test_listener_settings_apply_to_new_connections(proxy, pki, caplog):
    tls = proxy.listener_tls[1]
    write(proxy.path, [{"address": "127.0.0.1:16000"},
                       tls_listener(pki, client_ca=str(pki / "other" / "ca.crt"),
                                    client_cert="required", min_version="1.3",
                                    ciphers="ECDHE+AESGCM", handshake_timeout=2)],
          upstream_tls={"insecure_skip_verify": True})
    with caplog.at_level(logging.INFO):
        assert proxy.reload() is True
    assert proxy.listener_tls[1] is tls            # the object the listener's factory holds
    assert tls.client_cert == "required" and tls.handshake_timeout == 2
    ctx = tls.context
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.sni_callback == tls._use_current    # later reloads still reach new handshakes
    assert tls.client_cas[0].subject == certs.load_pair(pki / "other" / "ca.crt",
                                                        pki / "other" / "ca.key").cert.subject
    assert "listen[1].tls: client_ca, client_cert, min_version, ciphers, handshake_timeout " \
           "changed; applies to new connections" in caplog.text


def test_upstream_settings_apply_to_new_upstream_connections(proxy, pki, caplog):
    write(proxy.path, [{"address": "127.0.0.1:16000"},
                       tls_listener(pki, client_ca=str(pki / "ca.crt"), client_cert="optional")],
          upstream_tls={"ca": str(pki / "ca.crt"), "server_name": "localhost", "min_version": "1.3"})
    with caplog.at_level(logging.INFO):
        assert proxy.reload() is True
    ctx, name = proxy.upstream_ssl()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname and name == "localhost"
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert "upstream.tls: TLS files reloaded; ca, server_name, insecure_skip_verify, min_version " \
           "changed" in caplog.text


@pytest.mark.parametrize("listeners,upstream_tls,line", [
    (lambda pki: [{"address": "127.0.0.1:16000"}, tls_listener(pki, ciphers="NOPE")], True,
     "listen[1].tls.ciphers: no cipher matches 'NOPE'"),
    (lambda pki: [{"address": "127.0.0.1:16000"}, tls_listener(pki, client_ca="/nonexistent.crt")],
     True, "listen[1].tls.client_ca: cannot read /nonexistent.crt"),
    (lambda pki: [{"address": "127.0.0.1:16000"}, {"address": "127.0.0.1:16001"}], True,
     "listen[1].tls: switching the listener 127.0.0.1:16001 between plain and TLS needs a restart"),
    (lambda pki: [tls_listener(pki, 16000), tls_listener(pki)], True,
     "listen[0].tls: switching the listener 127.0.0.1:16000 between plain and TLS"),
    (lambda pki: [{"address": "127.0.0.1:16000"}, tls_listener(pki)], None,
     "upstream.tls: switching the upstream between plain and TLS needs a restart"),
    (lambda pki: [{"address": "127.0.0.1:16000"}, tls_listener(pki)], {"ca": "/nonexistent.crt"},
     "upstream.tls: TLS reload failed, still using the previous files: upstream.tls.ca: cannot read"),
])
def test_a_setting_that_cannot_apply_refuses_the_whole_reload(proxy, pki, caplog, listeners,
                                                              upstream_tls, line):
    tls, users, upstream = proxy.listener_tls[1], proxy.gate.users, proxy._upstream_tls
    before = (tls.context, tls.client_cert, tls.ciphers)
    write(proxy.path, listeners(pki),
          upstream_tls={"insecure_skip_verify": True} if upstream_tls is True else upstream_tls,
          users={"app": "on nopass +ping", "new": "on nopass +ping"})
    with caplog.at_level(logging.INFO):
        assert proxy.reload() is False
    assert line in caplog.text
    assert "reload rejected" in caplog.text and "configuration reloaded" not in caplog.text
    assert proxy.gate.users is users and "new" not in proxy.gate.users
    assert (tls.context, tls.client_cert, tls.ciphers) == before
    assert proxy._upstream_tls is upstream


def test_moved_listeners_wait_for_a_restart_and_the_rest_applies(proxy, pki, caplog):
    tls = proxy.listener_tls[1]
    write(proxy.path, [{"address": "127.0.0.1:16000"},
                       tls_listener(pki, client_ca=str(pki / "ca.crt"), client_cert="required"),
                       {"address": "127.0.0.1:16002"}],
          upstream_tls={"insecure_skip_verify": True},
          users={"app": "on nopass +ping", "new": "on nopass +ping"})
    with caplog.at_level(logging.INFO):
        assert proxy.reload() is True
    assert "listeners added, removed or moved take effect only after a restart" in caplog.text
    assert "new" in proxy.gate.users and tls.client_cert == "required"
    # The next reload still pairs the running listeners with their TLS settings.
    write(proxy.path, [{"address": "127.0.0.1:16000"},
                       tls_listener(pki, client_ca=str(pki / "ca.crt"), client_cert="optional")],
          upstream_tls={"insecure_skip_verify": True})
    assert proxy.reload() is True and tls.client_cert == "optional"
