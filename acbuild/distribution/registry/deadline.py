"""Registries: wall-clock deadlines under httpx, which has only per-operation timeouts.

A server that trickles its headers or body a byte at a time, each byte within the read
timeout, never lets a per-read timeout fire. So every socket operation of a Session
(connect, TLS handshake, each write and read) waits at most until the earliest deadline its
thread has running (httpx's sync I/O runs in the caller's thread): a blocked read returns
at the deadline, httpx raises a timeout, and the Session turns it into that deadline's error.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import httpcore
import httpx

READ_BYTES = 1 << 20


class Deadline(Protocol):
    """A point in ``time.monotonic()`` that may move while it runs (a budget that grows
    with what arrived), and the error to raise once it has passed."""

    def at(self) -> float: ...

    def error(self) -> Exception: ...


class Watch:
    """The deadlines running in each thread, for one Session's connections."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _running(self) -> tuple[Deadline, ...]:
        running: tuple[Deadline, ...] = getattr(self._local, "running", ())
        return running

    @contextlib.contextmanager
    def running(self, deadline: Deadline) -> Iterator[None]:
        """``deadline`` bounds this thread's socket operations until the block ends."""
        before = self._running()
        self._local.running = (*before, deadline)
        try:
            yield
        finally:
            self._local.running = before

    def wrote(self) -> None:
        """A write of this thread's went out (an upload's body makes progress)."""
        self._local.wrote_at = time.monotonic()

    def last_write(self) -> float:
        """When this thread's last write went out (0.0: none yet)."""
        wrote_at: float = getattr(self._local, "wrote_at", 0.0)
        return wrote_at

    def expired(self) -> Deadline | None:
        """The running deadline that passed first, if any has."""
        now = time.monotonic()
        passed = [d for d in self._running() if d.at() <= now]
        return min(passed, key=lambda d: d.at()) if passed else None

    def earliest(self) -> Deadline | None:
        """The running deadline that comes first, if any runs."""
        return min(self._running(), key=lambda d: d.at(), default=None)

    def clamp(self, timeout: float | None, timed_out: type[Exception]) -> float | None:
        """``timeout`` cut to what is left of the earliest running deadline; raises
        ``timed_out`` when none is left."""
        running = self._running()
        if not running:
            return timeout
        left = min(d.at() for d in running) - time.monotonic()
        if left <= 0:
            raise timed_out("deadline passed")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, watch: Watch) -> None:
        self._inner = inner
        self._watch = watch

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # httpcore asks for 64 KiB a read; what the socket holds is taken at once (up to
        # 1 MiB), so a layer passes through h11, httpcore and httpx in 16 times fewer pieces.
        return self._inner.read(max(max_bytes, READ_BYTES),
                                self._watch.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._watch.clamp(timeout, httpcore.WriteTimeout))
        self._watch.wrote()

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname,
                                      self._watch.clamp(timeout, httpcore.ConnectTimeout))
        return _Stream(inner, self._watch)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend, watch: Watch) -> None:
        self._inner = inner
        self._watch = watch

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port,
                                         self._watch.clamp(timeout, httpcore.ConnectTimeout),
                                         local_address, socket_options)
        return _Stream(stream, self._watch)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, self._watch.clamp(timeout, httpcore.ConnectTimeout), socket_options)
        return _Stream(stream, self._watch)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def watched_client(watch: Watch, **options: Any) -> httpx.Client:
    """An httpx.Client (``options`` as httpx takes them) whose connections, the proxies'
    that trust_env adds included, keep ``watch``'s deadlines.

    httpx has no option for a network backend, and building its transports by hand would
    mean redoing its proxy selection (HTTPS_PROXY, NO_PROXY); so the backend of each pool it
    made is wrapped. The pools read it only when they open a connection, and none is open
    yet. A future httpx that moves these attributes fails here, loudly, not open."""
    client = httpx.Client(**options)
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        if transport is None:  # a NO_PROXY pattern: requests go to the default transport
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(backend, httpcore.NetworkBackend):
            client.close()
            raise AssertionError(f"httpx {httpx.__version__}: cannot bound the time of its "
                                 "connections (no network backend found)")
        pool._network_backend = _Backend(backend, watch)  # type: ignore[union-attr]
    return client
