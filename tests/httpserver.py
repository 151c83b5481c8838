"""Test fixtures: a real threaded HTTP server on 127.0.0.1 serving a temporary directory.

Besides plain files it can redirect a path, answer a path with a status, or cut a download
off halfway (full Content-Length announced, half the bytes sent, connection closed).
A test module declares a fixture:
``def http_server(tmp_path): yield from serve_tmp(tmp_path)``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(slots=True)
class Behaviour:
    """What the server does besides serving files; tests change it while it runs."""

    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    statuses: dict[str, int] = field(default_factory=dict)  # path -> status code
    cut_off: set[str] = field(default_factory=set)  # paths sent only halfway
    requests: list[str] = field(default_factory=list)  # every request line's target


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

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(slots=True)
class Server:
    root: Path
    port: int
    behaviour: Behaviour

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Server]:
    """Serve ``root`` on 127.0.0.1 on a free port until the block ends."""
    behaviour = Behaviour()
    handler = functools.partial(_Handler, behaviour=behaviour, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(root=root, port=httpd.server_address[1], behaviour=behaviour)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def serve_tmp(tmp_path: Path) -> Iterator[Server]:
    """A server for ``tmp_path/www`` (created empty), for a fixture to ``yield from``."""
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as server:
        yield server
