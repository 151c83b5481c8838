"""Wall-clock deadlines of a registry Session (red-team PS-1) against a real HTTP server on
127.0.0.1 that trickles: headers a byte at a time, a body that stops making progress, a
redirect to a trickling host, a trickling token server, a caller's own deadline. Each byte
arrives well within the read timeout, which therefore never fires on its own."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.distribution.registry.blobstore import BlobStore
from acbuild.distribution.registry.platform import Platform
from acbuild.distribution.registry.pull import pull
from acbuild.distribution.registry.reference import RegistryError, parse_reference
from acbuild.distribution.registry.transport import (
    PROGRESS_BYTES,
    Session,
    TimedOut,
    TransportOptions,
)
from acbuild.distribution.registry.upload import PushSession, Repository
from acbuild.report import NullReporter
from tests.support.registry import TamperProxy
from tests.support.trickle import TrickleServer, answer, padded, trickle_server

pytest_plugins = ("tests.support.registryfixtures",)

PATH = "/v2/library/busybox/manifests/1.36"
SCOPE = "repository:library/busybox:pull"
TIMEOUT = 1.0


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
    """Files in the store that are not whole, verified blobs (temp files included)."""
    out = []
    for p in store.root.rglob("*"):
        if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
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
        "nothing sent nor answered (status line and headers) in 1 s")


def test_a_retry_pause_ends_at_the_deadline(server: TrickleServer) -> None:
    """Red-team RT-5: a 503 asking for Retry-After: 10 made the client sleep the 10 s,
    although the head had 1 s; the pause counts against the head's time."""
    server.answers[PATH] = answer(503, [("Retry-After", "10")])
    started = time.monotonic()
    with session(server) as s, pytest.raises(TimedOut) as e:
        fetch(s)
    assert time.monotonic() - started < TIMEOUT + 1.0
    assert "within 1 s" in e.value.message
