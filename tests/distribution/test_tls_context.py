"""The TLS context of every HTTPS client: the system's CAs loaded by the first handshake
(not when a client is made), --ca-file read at once; checks as create_default_context's."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from acbuild.distribution.tls import tls_context
from acbuild.errors import FetchError
from tests.support.httpserver import TlsFiles, make_tls

SYSTEM_CAS = Path(ssl.get_default_verify_paths().cafile or "/nonexistent")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.mark.skipif(not SYSTEM_CAS.is_file(), reason="no system CA bundle")
def test_the_system_cas_are_loaded_by_the_first_handshake_only() -> None:
    context = tls_context(None)
    assert context.cert_store_stats()["x509_ca"] == 0  # a plain-http pull never pays it
    context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.com")
    loaded = context.cert_store_stats()["x509_ca"]
    assert loaded > 0
    context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.com")
    assert context.cert_store_stats()["x509_ca"] == loaded  # once


def test_checks_are_those_of_the_default_context() -> None:
    context, default = tls_context(None), ssl.create_default_context()
    assert context.verify_mode == default.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname and default.check_hostname
    assert context.verify_flags == default.verify_flags
    assert context.minimum_version == default.minimum_version
    assert context.options == default.options


def test_a_ca_file_is_read_at_once_and_a_bad_one_is_an_error(tls: TlsFiles,
                                                             tmp_path: Path) -> None:
    assert tls_context(tls.ca).cert_store_stats()["x509_ca"] == 1
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(FetchError, match="cannot use CA file"):
        tls_context(bad)


def _serve_once(tls: TlsFiles) -> tuple[socket.socket, threading.Thread]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tls.cert, tls.key)
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)
        except (OSError, ssl.SSLError):
            pass  # the client refusing the certificate is what one test wants

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("trusted", [True, False])
def test_a_handshake_trusts_the_ca_file_and_nothing_else(tls: TlsFiles, trusted: bool) -> None:
    listener, thread = _serve_once(tls)
    context = tls_context(tls.ca if trusted else None)
    with listener, socket.create_connection(listener.getsockname()) as raw:
        if trusted:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                assert conn.version() is not None
                conn.sendall(b"x")
        else:
            with pytest.raises(ssl.SSLCertVerificationError):
                context.wrap_socket(raw, server_hostname="localhost")
    thread.join(timeout=10)


def test_a_certificate_named_only_by_its_common_name_is_refused(tmp_path: Path) -> None:
    """RG-1: a certificate of the trusted CA without subjectAltName, CN=localhost, passed
    for localhost (CPython still matches the CN); Go, which skopeo and docker use, and
    browsers refuse it."""
    cn_only = make_tls(tmp_path / "cn", hosts=("localhost",), san=False)
    listener, thread = _serve_once(cn_only)
    with listener, socket.create_connection(listener.getsockname()) as raw, \
            pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        tls_context(cn_only.ca).wrap_socket(raw, server_hostname="localhost")
    thread.join(timeout=10)
