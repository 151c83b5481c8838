"""Test fixtures: a real threaded HTTP server on 127.0.0.1 serving a temporary directory.

Besides plain files it can redirect a path, answer a path with a status, or cut a download
off halfway (full Content-Length announced, half the bytes sent, connection closed).
A test module declares a fixture:
``def http_server(tmp_path): yield from serve_tmp(tmp_path)``.
With ``tls=make_tls(dir)`` it speaks HTTPS, with a throwaway CA's certificate for
``localhost`` and 127.0.0.1 (made with the ``cryptography`` package).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(slots=True)
class Behaviour:
    """What the server does besides serving files; tests change it while it runs."""

    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    statuses: dict[str, int] = field(default_factory=dict)  # path -> status code
    cut_off: set[str] = field(default_factory=set)  # paths sent only halfway
    requests: list[str] = field(default_factory=list)  # every request line's target
    paced: dict[str, float] = field(default_factory=dict)  # path -> seconds per 64 KiB sent


class _Handler(http.server.SimpleHTTPRequestHandler):
    behaviour: Behaviour

    def __init__(self, *args: object, behaviour: Behaviour, **kwargs: object) -> None:
        self.behaviour = behaviour
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def do_GET(self) -> None:
        self.behaviour.requests.append(self.path)
        path = urlsplit(self.path).path
        if path in self.behaviour.redirects:
            self.send_response(302)
            self.send_header("Location", self.behaviour.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path in self.behaviour.statuses:
            self.send_error(self.behaviour.statuses[path])
        elif path in self.behaviour.cut_off:
            self._send_half(path)
        elif path in self.behaviour.paced:
            self._send_paced(path, self.behaviour.paced[path])
        else:
            super().do_GET()

    def _send_half(self, path: str) -> None:
        data = Path(self.translate_path(path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def _send_paced(self, path: str, pause: float) -> None:
        """The whole file, slowly: a client's progress bar can be watched mid-transfer."""
        source = Path(self.translate_path(path))
        self.send_response(200)
        self.send_header("Content-Length", str(source.stat().st_size))
        self.end_headers()
        with source.open("rb") as f, contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # a client that gives up mid-transfer (a deadline) is not the server's error
            while chunk := f.read(64 << 10):
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(pause)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files: the CA a client passes as ``--ca-file``, and the server's chain and key."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
             ca_name: str = "acbuild-py test CA", san: bool = True) -> TlsFiles:
    """A fresh CA and a server certificate it signed for ``hosts``, written to ``directory``
    (not ``san``: named only by its subject's CN, ``hosts[0]``, as certificates were before
    subjectAltName)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        _cert_builder(ca_subject, ca_subject, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(**_usage(key_cert_sign=True, crl_sign=True)),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h)
             for h in hosts]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    builder = (
        _cert_builder(subject, ca_subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**_usage(digital_signature=True)), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    files = TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem",
                     key=directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


def _cert_builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
                  now: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _usage(**set_bits: bool) -> dict[str, bool]:
    bits = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return {bit: set_bits.get(bit, False) for bit in bits}


class _TlsServer(http.server.ThreadingHTTPServer):
    """HTTPS: each connection's handshake runs in its handler thread, not in accept(), so a
    client that rejects the certificate cannot stall the server."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: object, tls: TlsFiles) -> None:
        super().__init__(address, handler)  # type: ignore[arg-type]
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tls.cert, tls.key)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), address

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a refused handshake is what some tests want; the client reports it


@dataclass(slots=True)
class Server:
    root: Path
    port: int
    behaviour: Behaviour
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


@contextlib.contextmanager
def serve(root: Path, *, tls: TlsFiles | None = None) -> Iterator[Server]:
    """Serve ``root`` on 127.0.0.1 on a free port until the block ends (HTTPS with ``tls``)."""
    behaviour = Behaviour()
    handler = functools.partial(_Handler, behaviour=behaviour, directory=str(root))
    httpd = (http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) if tls is None
             else _TlsServer(("127.0.0.1", 0), handler, tls))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(root=root, port=httpd.server_address[1], behaviour=behaviour,
                     scheme="http" if tls is None else "https")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def serve_tmp(tmp_path: Path, *, tls: TlsFiles | None = None) -> Iterator[Server]:
    """A server for ``tmp_path/www`` (created empty), for a fixture to ``yield from``."""
    root = tmp_path / "www"
    root.mkdir()
    with serve(root, tls=tls) as server:
        yield server


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """A base for a test's own server: HTTP/1.1, quiet, and ``answer`` for a whole reply."""

    protocol_version = "HTTP/1.1"

    def answer(self, status: int, body: bytes = b"",
               headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for k, v in headers or []:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def threaded(handler: type[http.server.BaseHTTPRequestHandler], port: int = 0
             ) -> Iterator[str]:
    """``handler`` serving on 127.0.0.1 (``port``, else a free one) in a thread; yields
    HOST:PORT and stops the server when the block ends."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
