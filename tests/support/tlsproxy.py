"""Test fixture: an ``https://`` proxy on 127.0.0.1 (TLS to the proxy, its certificate signed
by a throwaway CA) that takes CONNECT HOST:PORT and then tunnels to that address, or, once it
has tunnelled ``tunnels`` connections, answers 200 and withholds every byte after it (the
registry's TLS handshake inside the tunnel then waits for ever). Every CONNECT is recorded."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.httpserver import make_tls


@dataclass(slots=True)
class TlsProxy:
    port: int
    ca: Path  # the CA that signed the proxy's certificate
    connects: list[str] = field(default_factory=list)  # "HOST:PORT" of each CONNECT

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _head(conn: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return b""
        data += chunk
    return data


def _pipe(conn: ssl.SSLSocket, upstream: socket.socket, done: threading.Event) -> None:
    """Bytes both ways until either side hangs up (one thread: an SSLSocket is not for two)."""
    while not done.is_set():
        ready = [conn] if conn.pending() else \
            select.select([conn, upstream], [], [], 0.05)[0]
        for sock in ready:
            data = sock.recv(1 << 16)
            if not data:
                return
            (upstream if sock is conn else conn).sendall(data)


def _serve(proxy: TlsProxy, raw: socket.socket, context: ssl.SSLContext, tunnels: int | None,
           done: threading.Event) -> None:
    with contextlib.suppress(OSError), raw, context.wrap_socket(raw, server_side=True) as conn:
        head = _head(conn)
        method, _, rest = head.partition(b" ")
        if method != b"CONNECT":
            return
        target = rest.split(b" ", 1)[0].decode()
        proxy.connects.append(target)
        tunnel = tunnels is None or len(proxy.connects) <= tunnels
        if not tunnel:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            done.wait()  # holds the tunnel open, silent
            return
        host, _, port = target.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as upstream:
            upstream.settimeout(None)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pipe(conn, upstream, done)


@contextlib.contextmanager
def tls_proxy(directory: Path, *, tunnels: int | None = None) -> Iterator[TlsProxy]:
    """A running proxy (its CA written under ``directory``) until the block ends;
    ``tunnels``: how many CONNECTs it tunnels before it withholds (None: every one)."""
    tls = make_tls(directory, ca_name="acbuild-py test proxy CA")  # not the registry's name
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    proxy = TlsProxy(port=listener.getsockname()[1], ca=tls.ca)
    done = threading.Event()
    workers: list[threading.Thread] = []

    def accept() -> None:
        while not done.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(None)
            worker = threading.Thread(target=_serve, args=(proxy, raw, context, tunnels, done),
                                      daemon=True)
            worker.start()
            workers.append(worker)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield proxy
    finally:
        done.set()
        acceptor.join(timeout=5)
        listener.close()
        for worker in workers:
            worker.join(timeout=5)
