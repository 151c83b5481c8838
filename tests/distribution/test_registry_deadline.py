"""Wall-clock deadlines of a registry Session (red-team PS-1) against a real HTTP server on
127.0.0.1 that trickles: headers a byte at a time, a body that stops making progress, a
redirect to a trickling host, a trickling token server, a caller's own deadline. Each byte
arrives well within the read timeout, which therefore never fires on its own."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from acbuild.distribution.registry.blobstore import BlobStore
from acbuild.distribution.registry.credentials import IDENTITY_TOKEN_USER, Credential
from acbuild.distribution.registry.deadline import (
    FORWARD_RATE,
    PROGRESS_BYTES,
    Watch,
    watched_client,
)
from acbuild.distribution.registry.platform import Platform
from acbuild.distribution.registry.pull import pull
from acbuild.distribution.registry.reference import RegistryError, parse_reference
from acbuild.distribution.registry.transport import (
    Session,
    Stopped,
    TimedOut,
    TransportOptions,
)
from acbuild.distribution.registry.upload import PushSession, Repository
from acbuild.report import NullReporter
from tests.support.cli import acbuild, interrupted, no_partial_blobs
from tests.support.httpserver import TlsFiles, make_tls
from tests.support.registry import (
    Registry,
    TamperProxy,
    env_without_proxy,
    registry_with_busybox,
)
from tests.support.tlsproxy import TlsProxy, tls_proxy
from tests.support.trickle import TrickleServer, answer, padded, trickle_server

pytest_plugins = ("tests.support.registryfixtures",)

PATH = "/v2/library/busybox/manifests/1.36"
SCOPE = "repository:library/busybox:pull"
TIMEOUT = 1.0

# Every test here bounds wall time within a second or so of a deadline: run alone
# (.ci/run's serial part), not beside other tests' load.
pytestmark = pytest.mark.serial


@pytest.fixture
def server() -> Iterator[TrickleServer]:
    with trickle_server() as s:
        yield s


@pytest.fixture
def other() -> Iterator[TrickleServer]:
    with trickle_server() as s:
        yield s


def session(*servers: TrickleServer, timeout: float = TIMEOUT) -> Session:
    options = TransportOptions(insecure_registries=tuple(s.host for s in servers),
                               timeout=timeout, retries=2, backoff=0.01)
    return Session(servers[0].host, options, None)


def fetch(s: Session) -> bytes:
    with s.get(PATH, scope=SCOPE) as response:
        s.check(response, "manifest")
        return response.read()


def test_headers_trickled_a_byte_at_a_time_time_out(server: TrickleServer) -> None:
    """About 1.5 KiB of headers at a byte every 50 ms: 75 s to arrive, each byte on time."""
    server.answers[PATH] = padded(200, body=b"{}", pad=1500, head_pause=0.05)
    started = time.monotonic()
    with session(server) as s, pytest.raises(TimedOut) as e:
        fetch(s)
    took = time.monotonic() - started
    assert TIMEOUT - 0.1 < took < TIMEOUT + 1.5
    assert e.value.message == (f"registry {server.host}: GET {server.url}{PATH}: timed out: "
                               "no complete answer (status line and headers) within 1 s")
    assert len(server.requests) == 1  # not retried: a retry would only multiply the wait


def test_a_body_that_stops_making_progress_times_out(server: TrickleServer) -> None:
    """A byte every 10 ms (100 B/s): far less than PROGRESS_BYTES a timeout."""
    server.answers[PATH] = answer(200, body=b"x" * (1 << 20), body_pause=0.01)
    started = time.monotonic()
    with session(server) as s, pytest.raises(TimedOut) as e:
        fetch(s)
    assert time.monotonic() - started < TIMEOUT + 1.5
    assert e.value.message.startswith(
        f"registry {server.host}: GET {server.url}{PATH}: timed out: less than "
        f"{PROGRESS_BYTES >> 10} KiB of the body arrived in 1 s (")


def test_a_slow_body_that_keeps_coming_is_read(server: TrickleServer) -> None:
    """PROGRESS_BYTES every 0.4 s: slower overall than the timeout, but always progressing."""
    body = b"y" * (PROGRESS_BYTES * 5)
    server.answers[PATH] = answer(200, body=body, body_pause=0.4, body_piece=PROGRESS_BYTES)
    started = time.monotonic()
    with session(server) as s:
        assert fetch(s) == body
    assert time.monotonic() - started > 1.5 * TIMEOUT


def test_a_redirect_to_a_trickling_host_times_out(server: TrickleServer,
                                                  other: TrickleServer) -> None:
    server.answers[PATH] = answer(307, [("Location", f"{other.url}/blob")])
    other.answers["/blob"] = padded(200, body=b"{}", pad=1500, head_pause=0.05)
    started = time.monotonic()
    with session(server, other) as s, pytest.raises(TimedOut) as e:
        fetch(s)
    assert time.monotonic() - started < TIMEOUT + 1.5
    assert f"registry {server.host}: GET {other.url}/blob: timed out" in e.value.message


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_trickling_token_server_times_out(server: TrickleServer, other: TrickleServer,
                                            part: str) -> None:
    challenge = f'Bearer realm="{other.url}/token",service="s"'
    server.answers[PATH] = answer(401, [("WWW-Authenticate", challenge)])
    token = b'{"token": "' + b"t" * 4000 + b'"}'
    other.answers["/token"] = (padded(200, body=token, pad=1500, head_pause=0.05)
                               if part == "head" else
                               answer(200, body=token, body_pause=0.05))
    started = time.monotonic()
    with session(server, other) as s, pytest.raises(TimedOut) as e:
        fetch(s)
    assert time.monotonic() - started < TIMEOUT + 1.5
    assert e.value.message == (f"registry {server.host}: GET {server.url}{PATH}: timed out "
                               "asking for a token: no complete answer (status line and "
                               "headers) within 1 s")
    assert len(other.requests) == 1


class _Fixed:
    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds

    def at(self) -> float:
        return self._at

    def error(self) -> Exception:
        return RegistryError("the caller's deadline passed")


def test_a_deadline_of_the_caller_bounds_every_request_in_it(server: TrickleServer) -> None:
    """Session.within: a trickle that keeps each request's own limits (PROGRESS_BYTES a
    second) is still cut off at the caller's deadline."""
    server.answers[PATH] = answer(200, body=b"z" * (PROGRESS_BYTES * 20), body_pause=0.25,
                                  body_piece=PROGRESS_BYTES // 2)
    started = time.monotonic()
    with session(server, timeout=10.0) as s, s.within(_Fixed(1.0)), \
            pytest.raises(RegistryError) as e:
        fetch(s)
    assert time.monotonic() - started < 2.0
    assert e.value.message == "the caller's deadline passed"


# ---- base-image pulls: a stalled registry is an error after the documented limit ---------


def pull_from(host: str, store: BlobStore, *, timeout: float = TIMEOUT) -> None:
    options = TransportOptions(insecure_registries=(host,), timeout=timeout, retries=1,
                               backoff=0.01)
    ref = parse_reference(f"docker://{host}/library/busybox:1.36")
    with Session(ref.registry, options, None) as s:
        pull(ref, session=s, store=store, platform=Platform(os="linux", architecture="amd64"),
             reporter=NullReporter())


def leftovers(store: BlobStore) -> list[str]:
    """Files in the store that are not whole, verified blobs (temp files included); the
    store's own CACHEDIR.TAG and the lock its users hold (blobs.lock) are not."""
    out = []
    own = {store.root / "CACHEDIR.TAG", store.root / "blobs.lock"}
    for p in store.root.rglob("*"):
        if p.is_file() and p not in own and \
                hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
            out.append(str(p.relative_to(store.root)))
    return out


def layer_of(proxy: TamperProxy, tmp_path: Path) -> tuple[str, int]:
    store = BlobStore(tmp_path / "probe")
    pull_from(proxy.upstream.host, store)
    manifest = next(p for p in (store.root / "blobs" / "sha256").iterdir()
                    if b'"layers"' in p.read_bytes())
    (layer,) = json.loads(manifest.read_bytes())["layers"]
    return str(layer["digest"]), int(layer["size"])


def test_a_pull_whose_layer_stalls_fails_and_leaves_nothing(proxy: TamperProxy,
                                                            tmp_path: Path) -> None:
    """A byte every 50 ms of the layer, each within the read timeout: before the deadline
    the pull of a 1 MB layer would have taken about 14 hours."""
    digest, size = layer_of(proxy, tmp_path)

    def trickle() -> Iterator[bytes]:
        for _ in range(size):
            time.sleep(0.05)
            yield b"\0"

    proxy.tampering.canned[f"/v2/library/busybox/blobs/{digest}"] = (
        200, [("Content-Length", str(size))], trickle())
    store = BlobStore(tmp_path / "s")
    started = time.monotonic()
    with pytest.raises(TimedOut) as e:
        pull_from(proxy.host, store)
    assert time.monotonic() - started < TIMEOUT + 3.0
    assert e.value.message.startswith(
        f"registry {proxy.host}: GET http://{proxy.host}/v2/library/busybox/blobs/{digest}: "
        f"timed out: less than {PROGRESS_BYTES >> 10} KiB of the body arrived in 1 s (")
    assert "\n" not in e.value.message
    assert leftovers(store) == []


def test_a_pull_whose_manifest_headers_trickle_fails(server: TrickleServer,
                                                      tmp_path: Path) -> None:
    server.answers[PATH] = padded(200, body=b"{}", pad=1500, head_pause=0.05)
    store = BlobStore(tmp_path / "s")
    with pytest.raises(TimedOut) as e:
        pull_from(server.host, store)
    assert "no complete answer (status line and headers) within 1 s" in e.value.message
    assert leftovers(store) == []


def test_an_upload_whose_answer_trickles_times_out(server: TrickleServer) -> None:
    """A push (--cache-to, push): the body may take as long as it keeps going out; the
    answer after it has the timeout, however it trickles."""
    server.answers["/v2/ci/cache/manifests/v1"] = padded(201, pad=1500, head_pause=0.05)
    options = TransportOptions(insecure_registries=(server.host,), timeout=TIMEOUT,
                               retries=2, backoff=0.01)
    started = time.monotonic()
    with PushSession(server.host, options, None) as s, pytest.raises(TimedOut) as e:
        Repository(s, "ci/cache").put_manifest("v1", b"{}", "application/json")
    assert time.monotonic() - started < TIMEOUT + 1.5
    assert e.value.message == (
        f"registry {server.host}: PUT {server.url}/v2/ci/cache/manifests/v1: timed out: "
        "no answer (status line and headers) in 1 s after the registry acknowledged the "
        "whole body")


def test_a_retry_pause_ends_at_the_deadline(server: TrickleServer) -> None:
    """Red-team RT-5: a 503 asking for Retry-After: 10 made the client sleep the 10 s,
    although the head had 1 s; the pause counts against the head's time."""
    server.answers[PATH] = answer(503, [("Retry-After", "10")])
    started = time.monotonic()
    with session(server) as s, pytest.raises(TimedOut) as e:
        fetch(s)
    assert time.monotonic() - started < TIMEOUT + 1.0
    assert "within 1 s" in e.value.message


# ---- stops: Ctrl-C or another stage's failure ends a blocked request within a slice -------


@contextlib.contextmanager
def silent_server(*, reads: bool = True, rcvbuf: int | None = None) -> Iterator[str]:
    """HOST:PORT of a server that accepts connections and never answers (``reads``: it
    reads what is sent; else it reads nothing, so a big request fills the buffers, of
    ``rcvbuf`` bytes if given)."""
    listener = socket.socket()
    if rcvbuf is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            if reads:
                threading.Thread(target=_drain, args=(conn, done), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()
        for conn in held:
            conn.close()


@contextlib.contextmanager
def unconnectable() -> Iterator[str]:
    """HOST:PORT where a connect hangs: a listener whose queue of connections not yet
    accepted is full (Linux then ignores a SYN, as a host that drops it)."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        address = listener.getsockname()
        with socket.create_connection(address, timeout=1):  # fills the queue
            yield f"127.0.0.1:{address[1]}"


def _drain(conn: socket.socket, done: threading.Event) -> None:
    conn.settimeout(0.05)
    while not done.is_set():
        try:
            if not conn.recv(1 << 16):
                return
        except TimeoutError:
            continue
        except OSError:
            return


def _stopped_in_time(work: Callable[[], object], stop: threading.Event) -> str:
    """Run ``work`` in a thread, set ``stop`` once it blocks; its error's message, which
    must come within a second."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as e:  # the test says which
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), errors
    stop.set()
    stopped = time.monotonic()
    thread.join(timeout=10)
    took = time.monotonic() - stopped
    assert not thread.is_alive()
    assert took < 1.0, took
    (error,) = errors
    assert isinstance(error, Stopped), repr(error)
    return error.message


SLOW = 30.0  # a timeout no stop test comes near: each would wait it out without the stop


@pytest.mark.parametrize(("where", "how"), [
    *((where, how) for where in ("connect", "registry-head", "registry-silent", "token-head",
                                 "token-post", "tls-handshake")
      for how in ("cancel", "session")),
    ("upload", "session"),  # an upload has no cancel of its own
])
def test_a_stop_ends_a_blocked_request_at_once(where: str, how: str, server: TrickleServer,
                                               other: TrickleServer) -> None:
    """Red-team RT-1, RT-11: a registry or token server that trickles its headers, or holds
    the connection silent, held a pull's thread until the 60 s head deadline, however its
    pull or build was stopped; so did a TLS handshake with a silent server, an upload to
    one that stopped reading, and a connect to a host that drops it (30 s). Either stop,
    the request's ``cancel`` or the session's ``stop``, ends each within a slice."""
    stop = threading.Event()
    silent = contextlib.ExitStack()
    host = server.host
    insecure: tuple[str, ...] = (server.host, other.host)
    credential = None
    trickled = padded(200, body=b"{}", pad=3000, head_pause=0.05)
    with silent:
        if where == "registry-head":
            server.answers[PATH] = trickled
        elif where in ("registry-silent", "upload"):
            host = silent.enter_context(silent_server(reads=where != "upload"))
            insecure = (host,)
        elif where == "connect":
            host = silent.enter_context(unconnectable())
            insecure = (host,)
        elif where == "tls-handshake":
            host = silent.enter_context(silent_server())
            insecure = ()
        else:
            server.answers[PATH] = answer(401, [(
                "WWW-Authenticate", f'Bearer realm="{other.url}/token",service="s"')])
            other.answers["/token"] = trickled
            if where == "token-post":  # the refresh-token flow: a POST of a form
                credential = Credential(username=IDENTITY_TOKEN_USER, password="refresh")
        options = TransportOptions(insecure_registries=insecure, timeout=SLOW, retries=2,
                                   backoff=0.01)
        cancel = stop if how == "cancel" else None
        with PushSession(host, options, credential,
                         stop=stop if how == "session" else None) as s:
            if where == "upload":
                body = b"u" * (64 << 20)  # far more than the socket buffers hold

                def work() -> None:
                    with s.send("PUT", f"{s.base}/v2/x/blobs/uploads/1", scope="",
                                headers={"Content-Length": str(len(body))},
                                body=lambda: iter((body,))):
                        pass
            else:
                def work() -> None:
                    with s.get(PATH, scope=SCOPE, cancel=cancel) as response:
                        response.read()

            message = _stopped_in_time(work, stop)
    assert message.endswith("stopped"), message
    if where == "token-post":
        assert other.requests == ["POST /token"]


def test_a_stop_set_before_a_retry_pause_ends_it(server: TrickleServer) -> None:
    """The session's stop ends a retry's back-off too (a 503 asking for 10 s)."""
    server.answers[PATH] = answer(503, [("Retry-After", "10")])
    stop = threading.Event()
    options = TransportOptions(insecure_registries=(server.host,), timeout=SLOW, retries=3)
    with Session(server.host, options, None, stop=stop) as s:
        _stopped_in_time(lambda: fetch(s), stop)
    assert len(server.requests) == 1


def test_a_stop_does_not_cut_a_slow_answer_that_keeps_coming(server: TrickleServer) -> None:
    """The slices only look at the stops: an answer whose headers take longer than a slice
    (a byte every 10 ms, about 0.7 s in all) is read whole."""
    server.answers[PATH] = answer(200, body=b"{}", head_pause=0.01)
    options = TransportOptions(insecure_registries=(server.host,), timeout=SLOW)
    with Session(server.host, options, None, stop=threading.Event()) as s:
        assert fetch(s) == b"{}"


def test_a_gated_layer_does_not_time_out_while_a_slow_config_keeps_coming(
        server: TrickleServer, tmp_path: Path) -> None:
    """Red-team RT-9: a layer's body waits (its head arrived) until the config is checked;
    its PROGRESS_BYTES a timeout ran from the head's arrival, so a config that took longer
    than the timeout, while it kept coming, failed the layer. It runs from the first read."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "pad": "p" * (96 << 10)}).encode()
    layer = os.urandom(1 << 20)
    digests = ["sha256:" + hashlib.sha256(blob).hexdigest() for blob in (config, layer)]
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": digests[0], "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": digests[1], "size": len(layer)}]}
    server.answers[PATH] = answer(200, body=json.dumps(manifest).encode())
    # 8 KiB every 0.15 s: 53 KiB/s, for about 1.8 s; more than three times PROGRESS_BYTES a
    # second, so a loaded machine that stretches the pauses does not make it a stall.
    server.answers[f"/v2/library/busybox/blobs/{digests[0]}"] = answer(
        200, body=config, body_pause=0.15, body_piece=8 << 10)
    # In pieces of 1 KiB (about 0.5 MB/s): what arrives with the head is less than
    # PROGRESS_BYTES, so the layer's body is read from the socket after the gate opens.
    server.answers[f"/v2/library/busybox/blobs/{digests[1]}"] = answer(
        200, body=layer, body_pause=0.002, body_piece=1 << 10)
    store = BlobStore(tmp_path / "s")
    started = time.monotonic()
    pull_from(server.host, store)
    assert time.monotonic() - started > 1.5 * TIMEOUT  # the config took longer than it
    assert all(store.has(d, None) for d in digests)
    assert leftovers(store) == []


def test_a_first_address_that_drops_connects_is_passed_over_for_the_next(
        server: TrickleServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """RR-1: a name whose first address drops SYNs (127.0.0.2:P, a listener whose queue is
    full) and whose second answers (127.0.0.1:P) is reached on the second once the first's
    connect timeout passes, as socket.create_connection does."""
    server.answers[PATH] = answer(200, body=b"{}")
    real = socket.getaddrinfo

    def resolve(host: object, port: object, *args: object, **kwargs: object) -> object:
        if host != "two.test":
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, server.port))
                for ip in ("127.0.0.2", "127.0.0.1")]

    with socket.create_server(("127.0.0.2", server.port), backlog=0) as hole, \
            socket.create_connection(hole.getsockname(), timeout=1):  # fills its queue
        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        started = time.monotonic()
        with watched_client(Watch(), trust_env=False,
                            timeout=httpx.Timeout(5, connect=0.5)) as client:
            response = client.get(f"http://two.test:{server.port}{PATH}")
        took = time.monotonic() - started
    assert response.status_code == 200
    assert 0.4 < took < 2.5


def test_every_address_timing_out_is_a_connect_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with unconnectable() as first, unconnectable() as second:
        addresses = [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                      ("127.0.0.1", int(a.rsplit(":", 1)[1]))) for a in (first, second)]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: addresses)
        started = time.monotonic()
        with watched_client(Watch(), trust_env=False,
                            timeout=httpx.Timeout(5, connect=0.3)) as client, \
                pytest.raises(httpx.ConnectTimeout):
            client.get("http://two.test:1/")
    assert 0.5 < time.monotonic() - started < 2.0


def test_a_slow_name_lookup_counts_in_the_first_address_connect_limit(
        server: TrickleServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """RG-3: a lookup of 1 s, then a first address that drops connects: it had a connect
    limit of its own on top (1.5 s), so with a slow nameserver the second address came too
    late for the answer's limit. The lookup is now part of the first address's limit."""
    server.answers[PATH] = answer(200, body=b"{}")
    real = socket.getaddrinfo

    def resolve(host: object, port: object, *args: object, **kwargs: object) -> object:
        if host != "slow.test":
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        if int(kwargs.get("flags", 0)) & socket.AI_NUMERICHOST:  # type: ignore[call-overload]
            raise socket.gaierror(socket.EAI_NONAME, "not numeric")
        time.sleep(1.0)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, server.port))
                for ip in ("127.0.0.2", "127.0.0.1")]

    with socket.create_server(("127.0.0.2", server.port), backlog=0) as hole, \
            socket.create_connection(hole.getsockname(), timeout=1):  # fills its queue
        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        started = time.monotonic()
        with watched_client(Watch(), trust_env=False,
                            timeout=httpx.Timeout(5, connect=1.5)) as client:
            response = client.get(f"http://slow.test:{server.port}{PATH}")
        took = time.monotonic() - started
    assert response.status_code == 200
    assert 1.3 < took < 2.2


@contextlib.contextmanager
def slow_reader(tls: TlsFiles | None, *, piece: int, pause: float,
                rcvbuf: int = 16384) -> Iterator[str]:
    """HOST:PORT of an HTTP (``tls``: HTTPS) server that reads a request's body ``piece``
    bytes every ``pause`` seconds (a small receive buffer, ``rcvbuf``, so what it has not
    read is not acknowledged either: a slow link), then answers 201."""
    context = None
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        accepted = listener.accept()[0]
        with contextlib.suppress(OSError), (
                accepted if context is None else
                context.wrap_socket(accepted, server_side=True)) as conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(1)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while length > 0:
                want = min(piece, length)
                while want > 0:  # a TLS recv gives one record (16 KiB) at most
                    if not (got := len(conn.recv(want))):
                        return  # the client gave up
                    want, length = want - got, length - got
                time.sleep(pause)
            conn.sendall(b"HTTP/1.1 201 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(timeout=10)


class _SinceLastWrite:
    """As transport.Sending: ``seconds`` after the peer last acknowledged more of what was
    written (or the start)."""

    def __init__(self, watch: Watch, seconds: float) -> None:
        self._watch, self._seconds, self._started = watch, seconds, time.monotonic()

    def at(self) -> float:
        return max(self._started, self._watch.progress()) + self._seconds

    def error(self) -> Exception:
        return TimeoutError("nothing sent")


def test_a_slow_tls_upload_that_keeps_going_out_is_not_timed_out(tmp_path: Path) -> None:
    """RR-2: a 1 MiB body piece over TLS at ~800 KiB/s through a small send buffer (as on a
    slow link) takes 1.3 s to go out, more than the 0.6 s allowed since the last write;
    it goes out in sends small enough to mark progress at the rate it really leaves."""
    tls = make_tls(tmp_path / "tls")
    watch = Watch()
    transport = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=tls.ca),
                                    socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                     16384)])
    with slow_reader(tls, piece=20 * 1024, pause=0.025) as host, \
            watched_client(watch, transport=transport, trust_env=False) as client, \
            watch.running(_SinceLastWrite(watch, 0.6)):
        started = time.monotonic()
        response = client.put(f"https://{host}/upload", content=iter((os.urandom(1 << 20),)),
                              headers={"Content-Length": str(1 << 20)})
        took = time.monotonic() - started
    assert response.status_code == 201
    assert 0.8 < took < 4.0


def _put(s: PushSession, body: bytes) -> int:
    with s.send("PUT", f"{s.base}/v2/x/blobs/uploads/1", scope="",
                headers={"Content-Length": str(len(body))},
                body=lambda: iter((body,))) as response:
        return response.status_code


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_upload_slower_than_the_socket_buffers_is_not_timed_out(scheme: str,
                                                                   tmp_path: Path) -> None:
    """RR-2: the 2 s limit counted from when the last piece was handed to the kernel, which
    takes MiBs (4 on loopback) at once; at 32 KiB/s the registry was still receiving when
    "nothing sent" failed the push. Now it counts what the registry acknowledged: 192 KiB,
    six times the server's receive buffer, take 6 s and go through."""
    tls = make_tls(tmp_path / "tls") if scheme == "https" else None
    with slow_reader(tls, piece=16 << 10, pause=0.5) as host:
        options = TransportOptions(insecure_registries=(host,) if tls is None else (),
                                   ca_file=None if tls is None else tls.ca, timeout=2.0,
                                   retries=0)
        with PushSession(host, options, None) as s:
            started = time.monotonic()
            assert _put(s, os.urandom(192 << 10)) == 201
    assert 4.0 < time.monotonic() - started < 10.0


def test_an_upload_the_registry_stops_reading_times_out_at_the_limit() -> None:
    """Nothing read, so nothing acknowledged once the buffers are full: the one-line error
    at the limit after the last acknowledgement (and the half second its 16 KiB of buffer,
    acknowledged at once, take at FORWARD_RATE)."""
    with silent_server(reads=False, rcvbuf=8192) as host:
        options = TransportOptions(insecure_registries=(host,), timeout=TIMEOUT, retries=0)
        with PushSession(host, options, None) as s, pytest.raises(TimedOut) as e:
            started = time.monotonic()
            _put(s, b"u" * (64 << 20))
        took = time.monotonic() - started
    assert TIMEOUT - 0.1 < took < TIMEOUT + 1.5
    assert e.value.message == (f"registry {host}: PUT http://{host}/v2/x/blobs/uploads/1: "
                               "timed out: the registry acknowledged less than 16 KiB of the "
                               "body in 1 s")


def _stopped_after(seconds: float) -> tuple[threading.Event, threading.Timer]:
    """A stop set ``seconds`` from now: it ends a test whose limit failed to (a Stopped,
    not a hang)."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return stop, timer


def test_an_upload_acknowledged_a_little_at_a_time_times_out() -> None:
    """RG-2: a registry whose window opens ~1 KiB at a time, many times within the limit,
    held a push for as long as it liked (any acknowledgement was progress). What moves the
    limit on is PROGRESS_BYTES acknowledged, as for a download's body."""
    stop, timer = _stopped_after(8.0)
    with slow_reader(None, piece=1024, pause=0.2, rcvbuf=2048) as host:
        options = TransportOptions(insecure_registries=(host,), timeout=TIMEOUT, retries=0)
        with PushSession(host, options, None, stop=stop) as s, \
                pytest.raises(TimedOut) as e:
            started = time.monotonic()
            _put(s, os.urandom(1 << 20))
        took = time.monotonic() - started
    timer.cancel()
    assert TIMEOUT - 0.1 < took < TIMEOUT + 1.5
    assert e.value.message == (f"registry {host}: PUT http://{host}/v2/x/blobs/uploads/1: "
                               "timed out: the registry acknowledged less than 16 KiB of the "
                               "body in 1 s")


@contextlib.contextmanager
def forwarding(hold: float) -> Iterator[str]:
    """HOST:PORT of a server that takes a request's whole body at once and answers 201
    ``hold`` seconds later: a proxy that acknowledges everything and passes it on to the
    registry over a slow link."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError), listener.accept()[0] as conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(1 << 16)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += conn.recv(1 << 20)
            time.sleep(hold)
            conn.sendall(b"HTTP/1.1 201 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(timeout=10)


def test_an_upload_through_a_proxy_that_takes_it_at_once_waits_for_the_link_beyond() -> None:
    """RG-5: a proxy acknowledged the whole body in a moment and took longer than the limit
    to pass it on, so the push failed while the registry was still receiving. The answer
    also has the time the body takes at FORWARD_RATE: 256 KiB, 8 s."""
    with forwarding(hold=2.5) as host:
        options = TransportOptions(insecure_registries=(host,), timeout=TIMEOUT, retries=0)
        with PushSession(host, options, None) as s:
            started = time.monotonic()
            assert _put(s, os.urandom(256 << 10)) == 201
    assert 2.4 < time.monotonic() - started < 5.0


def test_an_upload_whose_whole_body_was_taken_and_never_answered_times_out() -> None:
    """That wait is bounded by the body's size: 64 KiB at FORWARD_RATE is 2 s, then the
    limit."""
    with silent_server(reads=True) as host:
        options = TransportOptions(insecure_registries=(host,), timeout=TIMEOUT, retries=0)
        with PushSession(host, options, None) as s, pytest.raises(TimedOut) as e:
            started = time.monotonic()
            _put(s, os.urandom(FORWARD_RATE * 2))
        took = time.monotonic() - started
    assert 2.9 < took < 4.5
    assert e.value.message == (f"registry {host}: PUT http://{host}/v2/x/blobs/uploads/1: "
                               "timed out: no answer (status line and headers) in 3 s after "
                               "the registry acknowledged the whole body")


# ---- stops through an https:// proxy (RR-4) and while a name is looked up (RR-3) ----------


def _proxied(monkeypatch: pytest.MonkeyPatch, proxy: TlsProxy) -> None:
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)


def test_a_stop_ends_a_handshake_withheld_inside_an_https_proxy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RR-4: the registry's TLS inside an https proxy's TLS (TLS in TLS) waited without
    slices: a handshake the far end withholds held a pull's thread for the 30 s connect
    limit, however it was stopped. The proxy's certificate is checked with --ca-file's CA."""
    with tls_proxy(tmp_path / "proxy", tunnels=0) as proxy:
        _proxied(monkeypatch, proxy)
        stop = threading.Event()
        options = TransportOptions(ca_file=proxy.ca, timeout=SLOW, retries=2, backoff=0.01)
        with Session("registry.example.test", options, None, stop=stop) as s:
            message = _stopped_in_time(lambda: fetch(s), stop)
        assert proxy.connects == ["registry.example.test:443"]
    assert message == "registry.example.test: stopped"


def _cli(*args: str | Path, env: dict[str, str], prefix: tuple[str, ...] = ()
         ) -> subprocess.Popen[str]:
    return subprocess.Popen([*prefix, sys.executable, "-m", "acbuild", *map(str, args)],
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "CI": "true"}, cwd=Path(__file__).parents[2])


def _verb(verb: str, ref: str, tmp_path: Path, *reach: str | Path) -> list[str | Path]:
    """The command line of ``verb`` (pull, or a build whose BEGIN is ``ref``)."""
    if verb == "pull":
        return ["pull", ref, *reach]
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Acfile").write_text(f"BEGIN {ref}\nNAME example.com/x\nLABEL version=1.0.0\n")
    return ["build", ctx, "-o", tmp_path / "out.aci", "--insecure-skip-verify", *reach]


def _cas(tmp_path: Path, reg: Registry, proxy: TlsProxy) -> Path:
    """One --ca-file holding both CAs, the registry's and the proxy's."""
    assert reg.ca is not None
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(reg.ca.read_bytes() + proxy.ca.read_bytes())
    return bundle


@pytest.mark.parametrize("verb", ["pull", "build"])
def test_an_interrupt_ends_a_handshake_withheld_inside_an_https_proxy(
        tmp_path: Path, busybox_oci: Path, verb: str) -> None:
    """RR-4 through the CLI: the proxy tunnels the first connection (the tag's manifest, in
    the main thread, where a signal cuts a blocked recv short anyway) and withholds the
    next one's TLS handshake (a blob, or the build stage's pull, in a thread of its own).
    Ctrl-C a second into it ends the command at once, as interrupted, leaving nothing."""
    with registry_with_busybox(tmp_path, "tls", busybox_oci) as reg, \
            tls_proxy(tmp_path / "proxy", tunnels=1) as proxy:
        env = {**env_without_proxy(), "HTTPS_PROXY": proxy.url}
        proc = _cli(*_verb(verb, reg.ref("library/busybox:1.36"), tmp_path,
                           "--ca-file", _cas(tmp_path, reg, proxy)), env=env)
        interrupted(proc, signal.SIGINT, lambda: len(proxy.connects) > 1, settle=1.0)
    assert not (tmp_path / "out.aci").exists()
    no_partial_blobs()


def test_a_pull_through_an_https_proxy_works(tmp_path: Path, busybox_oci: Path) -> None:
    """The registry's TLS inside the https proxy's: a real pull, end to end, one --ca-file
    holding both CAs (the proxy's and the registry's)."""
    with registry_with_busybox(tmp_path, "tls", busybox_oci) as reg, \
            tls_proxy(tmp_path / "proxy") as proxy:
        bundle = _cas(tmp_path, reg, proxy)
        r = acbuild("pull", reg.ref("library/busybox:1.36"), "--ca-file", bundle,
                    env={**env_without_proxy(), "HTTPS_PROXY": proxy.url})
        assert r.code == 0, r.stderr
        assert set(proxy.connects) == {reg.host}
    r = acbuild("pull", reg.ref("library/busybox:1.36"), "--ca-file", bundle,
                env=env_without_proxy())
    assert r.code != 0  # the registry is gone: what the first pull got came through it


@contextlib.contextmanager
def silent_nameserver() -> Iterator[tuple[str, threading.Event]]:
    """A loopback address whose UDP port 53 takes DNS queries and never answers (a resolver
    waits its timeout for each), and an event set once a query came."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(50):  # another test run's may hold one
        address = f"127.53.{random.randrange(256)}.{random.randrange(1, 255)}"
        try:
            sock.bind((address, 53))
            break
        except OSError:
            continue
    else:
        pytest.skip("no loopback address free for a nameserver")
    asked = threading.Event()
    done = threading.Event()
    sock.settimeout(0.05)

    def listen() -> None:
        while not done.is_set():
            try:
                sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            asked.set()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield address, asked
    finally:
        done.set()
        thread.join(timeout=5)
        sock.close()


def _resolving_with(nameserver: str, tmp_path: Path) -> tuple[str, ...]:
    """The prefix of a command run in a mount namespace of its own whose resolv.conf names
    ``nameserver`` alone (5 s a try, 2 tries) and whose nsswitch.conf asks DNS alone (so
    /etc/hosts cannot answer)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a mount namespace)")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {nameserver}\noptions timeout:5 attempts:2\n")
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("hosts: dns\n")
    return ("unshare", "--mount", "sh", "-c",
            'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf'
            ' && shift 2 && exec "$@"', "sh", str(resolv), str(nsswitch))


@pytest.mark.parametrize(("verb", "sig"), [("pull", signal.SIGINT), ("build", signal.SIGINT),
                                           ("pull", signal.SIGTERM)])
def test_an_interrupt_ends_a_name_lookup_a_nameserver_never_answers(
        tmp_path: Path, verb: str, sig: int) -> None:
    """RR-3: the C resolver's wait for a nameserver (5 s a try, 2 tries here) sees no
    signal: Ctrl-C while a registry's name was looked up took effect ~10 s later, in the
    main thread too. Here the command's only nameserver never answers."""
    with silent_nameserver() as (nameserver, asked):
        proc = _cli(*_verb(verb, "docker://registry.example.test/x:1", tmp_path),
                    env=env_without_proxy(), prefix=_resolving_with(nameserver, tmp_path))
        interrupted(proc, sig, asked.is_set, settle=1.0)
        assert asked.is_set()
    assert not (tmp_path / "out.aci").exists()
    no_partial_blobs()


_LOOK_UP = """
import sys, time
from acbuild.distribution.registry.transport import Session, TimedOut, TransportOptions
started = time.monotonic()
try:
    with Session("registry.example.test", TransportOptions(timeout=1.0), None) as s:
        s.get("/v2/", scope="").__enter__()
except TimedOut as e:
    print(e.message)
print(round(time.monotonic() - started, 2))
"""


def test_a_name_lookup_counts_in_the_answers_limit(tmp_path: Path) -> None:
    """RR-3: a lookup no nameserver answers is cut off at the request's limit (1 s here),
    not after the resolver's 10 s."""
    with silent_nameserver() as (nameserver, asked):
        r = subprocess.run([*_resolving_with(nameserver, tmp_path), sys.executable, "-c",
                            _LOOK_UP], capture_output=True, text=True, timeout=60,
                           env=env_without_proxy(), cwd=Path(__file__).parents[2])
        assert asked.is_set()
    assert r.returncode == 0, r.stderr
    message, took = r.stdout.splitlines()
    assert message == ("registry registry.example.test: GET https://registry.example.test/v2/: "
                       "timed out: no complete answer (status line and headers) within 1 s")
    assert float(took) < 2.0, took


def test_a_numeric_host_is_connected_to_without_a_lookup_thread(
        server: TrickleServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 is its own address: no thread is started to look it up."""
    server.answers[PATH] = answer(200, body=b"{}")
    started: list[str] = []
    real = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with watched_client(Watch(), trust_env=False) as client:
        assert client.get(f"{server.url}{PATH}").status_code == 200
        assert client.get(f"http://localhost:{server.port}{PATH}").status_code == 200
    assert [n for n in started if n.startswith("lookup")] == ["lookup localhost"]
