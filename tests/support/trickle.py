"""Test fixtures: a real HTTP server on 127.0.0.1 that answers as slowly as a test says.

Each path has a scripted ``Answer``: its head (status line and headers) and body bytes, each
sent in pieces with a pause between them, so a test can trickle the headers a byte at a time
(every byte well within a client's read timeout) or the body, or answer at once. One answer a
connection (``Connection: close``), and a client that hangs up ends the answer. Stopping the
server ends every answer still being sent.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    head: bytes  # status line and headers, ending in an empty line
    body: bytes = b""
    head_piece: int = 1 << 20  # bytes of the head sent at a time
    head_pause: float = 0.0  # seconds between them
    body_piece: int = 1 << 20
    body_pause: float = 0.0


def answer(status: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b"", *,
           length: int | None = None, head_pause: float = 0.0, head_piece: int = 1,
           body_pause: float = 0.0, body_piece: int = 1) -> Answer:
    """An Answer with ``Content-Length`` (``length``, else the body's) and ``Connection:
    close``; a pause makes that part go ``piece`` bytes at a time."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body) if length is None else length}",
             "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    return Answer(head=("\r\n".join(lines) + "\r\n\r\n").encode(), body=body,
                  head_piece=head_piece if head_pause else 1 << 20, head_pause=head_pause,
                  body_piece=body_piece if body_pause else 1 << 20, body_pause=body_pause)


def padded(status: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b"", *,
           pad: int, head_pause: float) -> Answer:
    """An answer whose head has ``pad`` bytes of extra headers, trickled a byte at a time:
    it takes ``pad * head_pause`` seconds and more to arrive, each byte on time."""
    filler = [(f"X-Pad-{n}", "p" * 60) for n in range(pad // 70 + 1)]
    return answer(status, [*headers, *filler], body, head_pause=head_pause)


@dataclass(slots=True)
class TrickleServer:
    port: int
    answers: dict[str, Answer] = field(default_factory=dict)  # path (no query) -> answer
    otherwise: Answer | None = None  # for any other path (None: a 404 at once)
    requests: list[str] = field(default_factory=list)  # "METHOD TARGET" of each request
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b""
        data += chunk
    return data


def _send(server: TrickleServer, sock: socket.socket, data: bytes, piece: int,
          pause: float) -> None:
    for start in range(0, len(data), piece):
        if start and pause and server.stopping.wait(pause):
            return
        sock.sendall(data[start:start + piece])


@contextlib.contextmanager
def trickle_server() -> Iterator[TrickleServer]:
    box: list[TrickleServer] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            server = box[0]
            sock: socket.socket = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                head = _read_head(sock)
                if not head:
                    return
                method, target = head.split(b"\r\n", 1)[0].decode().split(" ")[:2]
                server.requests.append(f"{method} {target}")
                got = server.answers.get(target.split("?", 1)[0], server.otherwise)
                if got is None:
                    got = answer(404, body=b'{"errors":[{"code":"NOT_FOUND"}]}')
                _send(server, sock, got.head, got.head_piece, got.head_pause)
                if method != "HEAD":
                    _send(server, sock, got.body, got.body_piece, got.body_pause)
            except OSError:
                pass  # the client hung up: that is what a timeout does

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    httpd = Server(("127.0.0.1", 0), Handler)
    box.append(TrickleServer(port=int(httpd.server_address[1])))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        box[0].stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)

