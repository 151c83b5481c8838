"""How a registry connection that failed is told (RG-4): a certificate that failed
verification is named with whose it is (the registry's, or an https:// proxy's), is not
asked for again, and its hint does not point to switching verification off or around; a TLS
stream broken after a good handshake is not taken for a server without TLS. Against real
TLS servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.distribution.registry.reference import RegistryError
from acbuild.distribution.registry.transport import Session, TransportOptions
from tests.support.httpserver import TlsFiles, make_tls
from tests.support.tlsproxy import tls_proxy

MANIFEST = "/v2/library/busybox/manifests/1.36"
SCOPE = "repository:library/busybox:pull"


@contextlib.contextmanager
def tls_server(tls: TlsFiles, *, after: bytes = b"") -> Iterator[tuple[int, list[str]]]:
    """The port of a TLS server with ``tls``'s certificate and what happened on each
    connection it took: "refused" (the client ended the handshake) or "served" (it read the
    request, then sent ``after`` on the plain socket, outside TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    seen: list[str] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(5)
            with raw:
                try:
                    conn = context.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError):
                    seen.append("refused")
                    continue
                with contextlib.suppress(OSError), conn:
                    conn.recv(1 << 16)
                    os.write(conn.fileno(), after)
                seen.append("served")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        done.set()
        thread.join(timeout=10)
        listener.close()


def _get(host: str, options: TransportOptions) -> RegistryError:
    with Session(host, options, None) as s, pytest.raises(RegistryError) as e, \
            s.get(MANIFEST, scope=SCOPE):
        pass
    return e.value


@pytest.mark.parametrize(("name", "mismatch"), [("localhost", "Hostname mismatch"),
                                                ("127.0.0.1", "IP address mismatch")])
def test_a_certificate_for_another_name_is_named_and_not_asked_for_again(
        tmp_path: Path, name: str, mismatch: str) -> None:
    other = make_tls(tmp_path / "tls", hosts=("registry.example.org",))
    with tls_server(other) as (port, seen):
        error = _get(f"{name}:{port}", TransportOptions(ca_file=other.ca, retries=2,
                                                       backoff=0.01))
    assert error.message.startswith(
        f"cannot reach https://{name}:{port}{MANIFEST}: the certificate of {name} is not "
        f"trusted ({mismatch}, certificate is not valid for '{name}'.)")
    assert error.hint == (f"it is a certificate for another name than {name}: check the "
                          "name; if it is right, whoever answered is not the server you named")
    assert seen == ["refused"]  # once, not once for each retry


def test_an_unknown_ca_is_told_without_pointing_to_plain_http(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    with tls_server(tls) as (port, seen):
        error = _get(f"127.0.0.1:{port}", TransportOptions(retries=2, backoff=0.01))
    assert "the certificate of 127.0.0.1 is not trusted (unable to get local issuer " \
        "certificate)" in error.message
    assert error.hint is not None and "--ca-file" in error.hint
    assert "--insecure-registry" not in error.hint
    assert seen == ["refused"]


def test_an_https_proxy_certificate_is_told_as_the_proxy_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = make_tls(tmp_path / "tls")
    with tls_server(tls) as (port, seen), tls_proxy(tmp_path / "proxy") as proxy:
        for variable in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
                         "all_proxy", "https_proxy"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        # the registry's CA only: the proxy's certificate is not trusted
        error = _get(f"localhost:{port}", TransportOptions(ca_file=tls.ca, retries=2,
                                                          backoff=0.01))
        assert proxy.connects == []  # refused before any CONNECT
    assert seen == []
    assert ": the certificate of 127.0.0.1 (the https:// proxy the environment names) is " \
        "not trusted (unable to get local issuer certificate)" in error.message


def test_a_tls_stream_broken_after_a_good_handshake_is_not_taken_for_plain_http(
        tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    with tls_server(tls, after=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as (port, _):
        error = _get(f"127.0.0.1:{port}", TransportOptions(ca_file=tls.ca, retries=0))
    assert error.hint == ("its TLS stream broke after a good handshake: a faulty link, or "
                          "something on the path altering what it sends")


def test_a_server_without_tls_is_told_so_at_once(tmp_path: Path) -> None:
    """Asked once: a plain-http server will not speak TLS on a retry (the red team saw ~8 s
    of retries before the hint)."""
    connections = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def answer() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                connections.append(conn)
                with conn:
                    conn.recv(1 << 16)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        error = _get(f"127.0.0.1:{port}", TransportOptions(retries=3, backoff=0.5))
    thread.join(timeout=10)
    assert len(connections) == 1
    assert error.hint == f"it does not speak TLS: for plain http use --insecure-registry " \
        f"127.0.0.1:{port}"
