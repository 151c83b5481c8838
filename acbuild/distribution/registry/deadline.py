"""Registries: wall-clock deadlines under httpx, which has only per-operation timeouts.

A server that trickles its headers or body a byte at a time, each byte within the read
timeout, never lets a per-read timeout fire. So every socket operation of a Session
(connect, TLS handshake, each write and read) waits at most until the earliest deadline its
thread has running (httpx's sync I/O runs in the caller's thread): a blocked read returns
at the deadline, httpx raises a timeout, and the Session turns it into that deadline's error.

A stop (``Stop``: Ctrl-C, another stage's failure) is a deadline too, one that has passed
once its event is set. Since no clock says when that happens, a blocked read, write or TLS
handshake waits in slices of at most ``SLICE`` seconds and looks at the deadlines between
them: a slice that ends with nothing passed just waits again. Retrying is safe: a recv that
timed out consumed nothing, a send sent nothing and is retried with the same bytes; TLS
runs in memory buffers over the plain socket's stream (``_Tls``), which keep a partial
record or handshake, so its waits are that stream's, the same directly, through an http://
proxy's CONNECT and as TLS inside an https:// proxy's TLS. A connect is made non-blocking
and waited for in slices; the name lookup before it runs in a thread of its own, whose end
is waited for so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import math
import os
import select
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpcore
import httpx
from httpcore._backends.sync import SyncBackend, SyncStream  # the sockets slices wait on

SLICE = 0.2  # seconds a blocked socket operation waits before it looks at its stops again

_T = TypeVar("_T")

# A body that moves less than this in a ``timeout`` is stalled: a download's (the count is
# of body bytes, not of chunk framing or headers), an upload's (what the peer acknowledged).
PROGRESS_BYTES = 16 << 10
# Bytes a second a link beyond the registry's end of an upload's connection (a proxy that
# took the body at once) is assumed to pass on at least: 256 kbit/s, a slow uplink's rate.
FORWARD_RATE = 32 << 10

READ_BYTES = 1 << 20
# Bytes handed to one send: a TLS send that timed out is repeated with the same bytes while
# OpenSSL holds the records it made of them, so a piece stays small.
WRITE_BYTES = 1 << 16


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes of ``sock``'s send queue its peer has not acknowledged yet (Linux SIOCOUTQ;
    through TLS, the records' bytes); OSError when it cannot be known (a closed socket)."""
    queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    count: int = struct.unpack("i", queued)[0]
    return count


class _Outgoing:
    """What one thread's writes handed to one socket and how much of it the peer has
    acknowledged: a slow link hides behind the kernel's send buffer (some MiB, a minute and
    more of a slow uplink), so progress is what the peer took, not what the kernel did
    (RR-2). It counts in steps of PROGRESS_BYTES (or the last of what was handed), as a
    download's body does: a peer that acknowledges a few bytes at a time would otherwise hold
    an upload for days (RG-2).

    What the peer acknowledged may not have reached the registry: a proxy takes a body as
    fast as it is sent and passes it on as fast as the link beyond it goes, and the registry
    answers once it has the last byte (RG-5). So each step also moves ``drained``: when a
    link beyond the peer that passes on FORWARD_RATE would have passed on all of it.
    ``blind``: the queue cannot be read, so a handed-over write counts instead."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.at = self.drained = time.monotonic()
        self.counted = 0  # acknowledged as of ``at``
        self.whole = False  # and it was all that had been handed
        try:
            # what was queued before (an earlier request on the connection) counts as handed
            self.handed = 0 if sock is None else _unacknowledged(sock)
            self.blind = sock is None
        except (OSError, ValueError):
            self.handed, self.blind = 0, True

    def wrote(self, count: int) -> None:
        self.handed += count
        self.whole = False
        if self.blind:
            self._step(self.handed)

    def _step(self, acked: int) -> None:
        now = time.monotonic()
        self.drained = max(self.drained, now) + (acked - self.counted) / FORWARD_RATE
        self.at, self.counted, self.whole = now, acked, acked == self.handed

    def progress(self) -> float:
        """Until when the upload counts as moving: the peer's last step of
        acknowledgement, or the time what it acknowledged takes beyond it, if later."""
        if not self.blind and self.sock is not None:
            try:
                acked = self.handed - _unacknowledged(self.sock)
            except (OSError, ValueError):  # closed: nothing more will be acknowledged
                acked = self.counted
            if acked - self.counted >= PROGRESS_BYTES or \
                    (acked == self.handed and acked > self.counted):
                self._step(acked)
        return max(self.at, self.drained)


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """How far the peer of a thread's upload got: ``whole``: all it was handed, at ``at``."""

    whole: bool
    at: float


class Deadline(Protocol):
    """A point in ``time.monotonic()`` that may move while it runs (a budget that grows
    with what arrived), and the error to raise once it has passed."""

    def at(self) -> float: ...

    def error(self) -> Exception: ...


class Stop:
    """A deadline without a time: passed once ``event`` is set (Ctrl-C, a failure
    elsewhere), then failing with ``error()``."""

    def __init__(self, event: threading.Event, error: Callable[[], Exception]) -> None:
        self._event = event
        self._error = error

    def at(self) -> float:
        return -math.inf if self._event.is_set() else math.inf

    def error(self) -> Exception:
        return self._error()


class Watch:
    """The deadlines running in each thread, for one Session's connections; ``always``
    run in every thread (a build-wide Stop)."""

    def __init__(self, always: tuple[Deadline, ...] = ()) -> None:
        self._local = threading.local()
        self._always = always

    def _running(self) -> tuple[Deadline, ...]:
        running: tuple[Deadline, ...] = getattr(self._local, "running", ())
        return (*self._always, *running)

    @contextlib.contextmanager
    def running(self, deadline: Deadline) -> Iterator[None]:
        """``deadline`` bounds this thread's socket operations until the block ends."""
        before = self._running()
        self._local.running = (*before, deadline)
        try:
            yield
        finally:
            self._local.running = before

    def wrote(self, sock: socket.socket | None, count: int) -> None:
        """This thread handed ``count`` bytes to ``sock`` (None: a stream whose socket
        cannot be seen, whose writes count as progress once they return)."""
        outgoing: _Outgoing | None = getattr(self._local, "outgoing", None)
        if outgoing is None or outgoing.sock is not sock:
            outgoing = self._local.outgoing = _Outgoing(sock)
        outgoing.wrote(count)

    def sending(self) -> None:
        """A new request body begins in this thread: what an earlier one sent on the same
        connection was answered, so none of it is still on its way."""
        outgoing: _Outgoing | None = getattr(self._local, "outgoing", None)
        if outgoing is not None:
            outgoing.drained = time.monotonic()

    def progress(self) -> float:
        """Until when this thread's upload counts as moving (``_Outgoing.progress``; 0.0:
        nothing written yet). Polled by a deadline's ``at``, so at every slice of a blocked
        send or of the wait for the answer after it."""
        outgoing: _Outgoing | None = getattr(self._local, "outgoing", None)
        return 0.0 if outgoing is None else outgoing.progress()

    def acknowledged(self) -> Acknowledged | None:
        """How far the peer of this thread's upload got (None: nothing written yet)."""
        outgoing: _Outgoing | None = getattr(self._local, "outgoing", None)
        return None if outgoing is None else Acknowledged(outgoing.whole, outgoing.at)

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
        if math.isinf(left):  # only Stops that are not set
            return timeout
        return left if timeout is None else min(timeout, left)

    def sliced(self, op: Callable[[float], _T], timeout: float | None,
               timed_out: type[Exception]) -> _T:
        """``op(seconds)``, which raises ``timed_out`` when nothing happened in that time
        and may then be called again, run in SLICEs until it returns, ``timeout`` passes
        or a running deadline does (a Stop set meanwhile included)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.clamp(None if end is None else end - time.monotonic(), timed_out)
            if left is not None and left <= 0:
                raise timed_out("timed out")
            try:
                return op(SLICE if left is None else min(SLICE, left))
            except timed_out:
                if left is not None and left <= SLICE:
                    raise

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless a running deadline passes first (then raise its error):
        a pause between retries is no socket operation."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if (passed := self.expired()) is not None:
                raise passed.error()
            time.sleep(min(SLICE, left))
        if (passed := self.expired()) is not None:
            raise passed.error()


def _send(sock: socket.socket, data: memoryview, timeout: float) -> int:
    try:
        sock.settimeout(timeout)
        return sock.send(data)
    except TimeoutError:
        raise httpcore.WriteTimeout("timed out") from None
    except OSError as e:
        raise httpcore.WriteError(str(e)) from e


class _Stream(httpcore.NetworkStream):
    """httpcore's stream of a plain socket (or another backend's stream), its waits sliced;
    TLS over it is a ``_Tls``, whose waits are this stream's."""

    def __init__(self, inner: httpcore.NetworkStream, watch: Watch) -> None:
        self._inner = inner
        self._watch = watch

    def _socket(self) -> socket.socket | None:
        """The socket of httpcore's own stream; None for another backend's."""
        if not isinstance(self._inner, SyncStream):
            return None
        sock = self._inner.get_extra_info("socket")
        return sock if isinstance(sock, socket.socket) else None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # httpcore asks for 64 KiB a read; what the socket holds is taken at once (up to
        # 1 MiB), so a layer passes through h11, httpcore and httpx in 16 times fewer pieces.
        # httpcore's read is a settimeout and one recv (of any stream): safe to repeat.
        size = max(max_bytes, READ_BYTES)
        return self._watch.sliced(lambda t: self._inner.read(size, t), timeout,
                                  httpcore.ReadTimeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        sock = self._socket()
        data = memoryview(buffer)
        if sock is None:
            for start in range(0, len(data), WRITE_BYTES):
                piece = bytes(data[start:start + WRITE_BYTES])
                self._inner.write(piece, self._watch.clamp(timeout, httpcore.WriteTimeout))
                self._watch.wrote(None, len(piece))
            return
        # httpcore's write loops over send and loses count when one times out, so the loop
        # is here: a send that timed out sent nothing and is repeated with the same bytes.
        while data:
            sent = self._watch.sliced(functools.partial(_send, sock, data[:WRITE_BYTES]),
                                      timeout, httpcore.WriteTimeout)
            data = data[sent:]
            self._watch.wrote(sock, sent)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        if self._socket() is None:
            inner = self._inner.start_tls(ssl_context, server_hostname,
                                          self._watch.clamp(timeout, httpcore.ConnectTimeout))
            return _Stream(inner, self._watch)
        return _Tls.over(self, ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class CertificateRefused(httpcore.ConnectError):
    """``host``'s certificate failed verification (``error``): the registry's, or an
    https:// proxy's, whose name it is then. Asking again cannot change it."""

    def __init__(self, host: str, error: ssl.SSLCertVerificationError) -> None:
        super().__init__(str(error))
        self.host = host
        self.error = error


class _Tls(httpcore.NetworkStream):
    """TLS in memory buffers over ``lower``: a ``_Stream`` (the registry's TLS, or an https
    proxy's) or another ``_Tls`` (the registry's TLS inside an https proxy's, which
    httpcore's SSLSocket cannot carry). Every wait is a read or write of ``lower``, so, at
    the bottom, of the plain socket's ``_Stream``: sliced, its stops looked at between
    slices, the same for a registry reached directly, through an http:// proxy's CONNECT
    or through an https:// one. OpenSSL keeps what arrived of a record or a handshake in
    the incoming buffer, so a read of ``lower`` that times out loses nothing."""

    def __init__(self, lower: httpcore.NetworkStream, tls: ssl.SSLObject,
                 incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self._lower = lower
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing

    @classmethod
    def over(cls, lower: httpcore.NetworkStream, ssl_context: ssl.SSLContext,
             server_hostname: str | None, timeout: float | None) -> _Tls:
        """TLS over ``lower``, its handshake done within ``timeout`` (``lower`` closed if
        it fails)."""
        end = None if timeout is None else time.monotonic() + timeout
        try:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            stream = cls(lower, ssl_context.wrap_bio(incoming, outgoing,
                                                     server_hostname=server_hostname),
                         incoming, outgoing)
            stream._io(stream._tls.do_handshake,
                       lambda: None if end is None else max(0.0, end - time.monotonic()))
        except (httpcore.ReadTimeout, httpcore.WriteTimeout):
            lower.close()
            raise httpcore.ConnectTimeout("timed out") from None
        except ssl.SSLCertVerificationError as e:
            lower.close()
            raise CertificateRefused(server_hostname or "", e) from e
        except (httpcore.ReadError, httpcore.WriteError, OSError, ValueError) as e:
            lower.close()
            raise httpcore.ConnectError(str(e)) from e
        except BaseException:
            lower.close()
            raise
        return stream

    def _io(self, op: Callable[[], _T], timeout: Callable[[], float | None]) -> _T:
        """``op()`` on the TLS object, what it wants read taken from ``lower`` and what it
        made sent, each within ``timeout()``."""
        while True:
            try:
                result = op()
            except ssl.SSLWantReadError:
                self._flush(timeout())
                data = self._lower.read(READ_BYTES, timeout())
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            self._flush(timeout())
            return result

    def _flush(self, timeout: float | None) -> None:
        if self._outgoing.pending:
            self._lower.write(self._outgoing.read(), timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        size = max(max_bytes, READ_BYTES)
        try:
            data = self._io(functools.partial(self._tls.read, size), lambda: timeout)
            pieces = [data]
            while data and (left := size - sum(map(len, pieces))) > 0 and \
                    self._incoming.pending:  # more records already here: no wait for them
                try:
                    data = self._tls.read(left)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                pieces.append(data)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""  # closed, with or without a close_notify (as SSLSocket.recv)
        except ssl.SSLError as e:
            raise httpcore.ReadError(str(e)) from e
        return b"".join(pieces)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # In pieces, so ``lower`` sends each as it is made and marks progress at that rate.
        data = memoryview(buffer)
        for start in range(0, len(data), WRITE_BYTES):
            try:
                self._io(functools.partial(self._tls.write, data[start:start + WRITE_BYTES]),
                         lambda: timeout)
            except ssl.SSLError as e:
                raise httpcore.WriteError(str(e)) from e

    def close(self) -> None:
        self._lower.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Tls.over(self, ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._tls
        return self._lower.get_extra_info(info)  # the socket, its addresses, is_readable


def _connected(sock: socket.socket, timeout: float) -> None:
    """Wait up to ``timeout`` for a non-blocking connect of ``sock`` to end."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    if not poller.poll(timeout * 1000):
        raise httpcore.ConnectTimeout("timed out")


_Address = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


def _lookup_apart(host: str, port: int) -> Callable[[float], list[_Address]]:
    """getaddrinfo of ``host`` begun in a daemon thread; a wait of some seconds for it, which
    raises ConnectTimeout if it has not ended by then (and may be called again), else
    returns its addresses or raises its error."""
    done = threading.Event()
    found: list[_Address] = []
    failed: list[Exception] = []

    def look_up() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as e:  # raised again in the thread that waits
            failed.append(e)
        finally:
            done.set()

    threading.Thread(target=look_up, name=f"lookup {host}", daemon=True).start()

    def wait(seconds: float) -> list[_Address]:
        if not done.wait(seconds):
            raise httpcore.ConnectTimeout("timed out looking the name up")
        if failed:
            raise failed[0]
        return found

    return wait


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend, watch: Watch) -> None:
        self._inner = inner
        self._watch = watch

    def _connect(self, host: str, port: int, timeout: float | None,
                 socket_options: Iterable[Any]) -> httpcore.NetworkStream:
        """As httpcore's SyncBackend (socket.create_connection: each address in turn while
        they fail), the wait for each in slices; running out of ``timeout`` ends it. Each
        address has ``timeout``, the first less the name lookup's time (RG-3): a slow lookup
        must not keep the next address from being tried within the answer's limit."""
        started = time.monotonic()
        try:
            addresses = self._lookup(host, port, timeout)
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        failure: OSError = OSError(errno.EADDRNOTAVAIL, f"{host}: no address")
        for index, (family, kind, proto, _, address) in enumerate(addresses):
            limit = timeout
            if timeout is not None and index == 0:
                limit = max(0.0, started + timeout - time.monotonic())
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code == errno.EINPROGRESS:
                    self._wait_connected(sock, limit)
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))  # ConnectionRefusedError, …
                sock.setblocking(True)
                for option in socket_options:
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return SyncStream(sock)
            except OSError as e:
                sock.close()
                failure = e
            except BaseException:
                sock.close()
                raise
        if isinstance(failure, TimeoutError):  # the last address timed out: say so
            raise httpcore.ConnectTimeout("timed out")
        try:  # raised from the OSError, as httpcore's map_exceptions does: its pool drops
            raise failure  # the cause, and refused() finds ECONNREFUSED in the context
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e

    def _lookup(self, host: str, port: int, timeout: float | None) -> list[_Address]:
        """``host``'s addresses. A name is looked up in a thread of its own, waited for in
        slices within ``timeout`` (the connect's limit) and the running deadlines: the C
        resolver waits for a silent nameserver (about 10 s each) and no signal cuts it short,
        in the main thread neither. A lookup given up on ends by itself, unread. A numeric
        address is its own answer, at once, with no thread."""
        try:
            return list(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_NUMERICHOST))
        except socket.gaierror as e:
            if e.errno != socket.EAI_NONAME:
                raise
        return self._watch.sliced(_lookup_apart(host, port), timeout, httpcore.ConnectTimeout)

    def _wait_connected(self, sock: socket.socket, timeout: float | None) -> None:
        """Wait for ``sock``'s connect; its own ``timeout`` running out is a failure of this
        address (TimeoutError, so the next one is tried, as socket.create_connection does),
        a running deadline passing (a Stop included) ends the whole connect."""
        try:
            self._watch.sliced(functools.partial(_connected, sock), timeout,
                               httpcore.ConnectTimeout)
        except httpcore.ConnectTimeout:
            earliest = self._watch.earliest()
            if timeout is None or self._watch.expired() is not None or (
                    earliest is not None and earliest.at() <= time.monotonic() + SLICE / 10):
                raise
            raise TimeoutError(errno.ETIMEDOUT, "timed out") from None

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        if isinstance(self._inner, SyncBackend) and local_address is None:
            return _Stream(self._connect(host, port, timeout, socket_options or ()),
                           self._watch)
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
    yet. A future httpx that moves these attributes fails here, loudly, not open.
    An https:// proxy's certificate is checked with ``verify`` too."""
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
        if isinstance(pool, httpcore.HTTPProxy) and pool._proxy_ssl_context is None and \
                isinstance(verify := options.get("verify"), ssl.SSLContext):
            # An https:// proxy's certificate is checked against the CAs the registries'
            # are (the system's, --ca-file's), not httpcore's own bundle.
            pool._proxy_ssl_context = verify
    return client
