"""Finalize and fetch: sniffing and opening compressed archives; writing gzip, xz, bzip2, none.

gzip is written pigz-style: fixed-size blocks deflated in parallel threads, each primed with
the previous block's last 32 KiB, joined into one gzip member. The deflate is ISA-L's (isal,
which releases the GIL): at its level 2 it takes about a fifth of zlib-ng's CPU at level 6
for output within 3 % of ``gzip -6``'s size (docs/performance.md). Reading stays on zlib-ng.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Protocol

from isal import isal_zlib
from zlib_ng import gzip_ng, zlib_ng

from acbuild.errors import ImageError

COMPRESSIONS = ("gzip", "xz", "bzip2", "none")

# Fixed, so the output bytes never depend on the number of threads or on how callers
# split their writes: the stream is cut into blocks of exactly this size.
GZIP_BLOCK = 1 << 20
GZIP_LEVEL = 2  # on ISA-L's scale of 0-3
_WINDOW = 32 * 1024
# Fixed header: no mtime, no file name, OS byte 255 ("unknown") on every host.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


class Compressor(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

    def close(self) -> None: ...


class Output(Protocol):
    """Where a compressor writes: a binary file, or anything writing like one."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

    def flush(self) -> None: ...


def sniff(head: bytes) -> str:
    """The format of an archive from its first bytes (at least 262 to recognise plain tar)."""
    for magic, kind in _MAGICS:
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    return "unknown"


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def open_compressor(
    kind: str, out: Output, *, level: int | None = None, threads: int | None = None
) -> Compressor:
    """A writer compressing into ``out``; close() finishes the stream but leaves ``out`` open.

    ``threads`` only changes speed, never the bytes.
    """
    if kind == "gzip":
        return ParallelGzipWriter(out, level=GZIP_LEVEL if level is None else level,
                                  threads=threads)
    if kind == "xz":
        return _OneShot(out, lzma.LZMACompressor(preset=6 if level is None else level))
    if kind == "bzip2":
        return _OneShot(out, bz2.BZ2Compressor(9 if level is None else level))
    if kind == "none":
        return _Passthrough(out)
    raise ValueError(f"unknown compression {kind!r}; expected one of {', '.join(COMPRESSIONS)}")


class _Passthrough:
    def __init__(self, out: Output) -> None:
        self._out = out

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._out.write(data)
        return len(data)

    def close(self) -> None:
        self._out.flush()


class _OneShot:
    """xz and bzip2 through their incremental compressors, single-threaded."""

    def __init__(self, out: Output, engine: lzma.LZMACompressor | bz2.BZ2Compressor) -> None:
        self._out = out
        self._engine: lzma.LZMACompressor | bz2.BZ2Compressor | None = engine

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        assert self._engine is not None, "write after close"
        self._out.write(self._engine.compress(data))
        return len(data)

    def close(self) -> None:
        if self._engine is not None:
            self._out.write(self._engine.flush())
            self._engine = None
            self._out.flush()


def _deflate_block(
    data: bytes | bytearray, zdict: bytes | bytearray, level: int
) -> tuple[bytes, int]:
    """One block as raw deflate ending on a byte boundary (sync flush), and its CRC-32."""
    if zdict:
        engine = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=zdict)
    else:
        engine = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    deflated = engine.compress(data) + engine.flush(isal_zlib.Z_SYNC_FLUSH)
    return deflated, isal_zlib.crc32(data)


class ParallelGzipWriter:
    """One gzip member made of independently deflated GZIP_BLOCK-sized blocks.

    Blocks are compressed by a pool; at most ``2 * threads`` are in flight, and output is
    written in order by whichever thread calls write()/close().
    """

    def __init__(self, out: Output, *, level: int = GZIP_LEVEL,
                 threads: int | None = None) -> None:
        self._out = out
        self._level = level
        self._threads = threads or default_threads()
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 1 else None
        self._pending: deque[tuple[Future[tuple[bytes, int]], int]] = deque()
        self._buf = bytearray()
        self._previous: bytes | bytearray = b""
        self._crc = 0
        self._size = 0
        self._closed = False
        out.write(_GZIP_HEADER)

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._closed:
            raise ValueError("write to a closed compressor")
        length = len(data)
        if not self._buf and length == GZIP_BLOCK:
            # The common case, whole blocks from TarWriter. Copied unless immutable: the
            # caller may reuse its buffer once write() returns, the workers read it later.
            self._submit(data if isinstance(data, bytes) else bytes(data))
            return length
        self._buf += data
        while len(self._buf) >= GZIP_BLOCK:
            block = bytes(self._buf[:GZIP_BLOCK])
            del self._buf[:GZIP_BLOCK]
            self._submit(block)
        return length

    def close(self) -> None:
        """Compress what is left, write the trailer; ``out`` stays open."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._buf:
                self._submit(bytes(self._buf))
                self._buf = bytearray()
            while self._pending:
                self._drain_one()
            # An empty final block (BFINAL set) ends the deflate stream.
            self._out.write(b"\x03\x00")
            self._out.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
            self._out.flush()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the workers without finishing the stream (after a failure)."""
        self._closed = True
        if self._pool is not None:
            for future, _ in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending.clear()

    def _submit(self, block: bytes | bytearray) -> None:
        zdict = self._previous[-_WINDOW:]
        self._previous = block
        if self._pool is None:
            self._emit(*_deflate_block(block, zdict, self._level), len(block))
            return
        future = self._pool.submit(_deflate_block, block, zdict, self._level)
        self._pending.append((future, len(block)))
        if len(self._pending) >= 2 * self._threads:
            self._drain_one()

    def _drain_one(self) -> None:
        future, length = self._pending.popleft()
        self._emit(*future.result(), length)

    def _emit(self, deflated: bytes, crc: int, length: int) -> None:
        self._out.write(deflated)
        self._crc = zlib_ng.crc32_combine(self._crc, crc, length) if self._size else crc
        self._size += length


# --- reading -------------------------------------------------------------------------


class _Prepended(io.RawIOBase):
    """``head`` followed by the rest of ``f``: lets us sniff a stream that cannot seek."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self._head = memoryview(head)
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)


# zlib_ng.error is an Exception subclass, though its stub does not say so.
_DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (  # type: ignore[assignment]
    OSError, EOFError, ValueError, lzma.LZMAError, zlib_ng.error,
)


class _Guarded(io.RawIOBase):
    """Turns decompression errors (bad CRC, truncation, corrupt data) into ImageError."""

    def __init__(self, inner: BinaryIO, kind: str) -> None:
        self._inner = inner
        self._kind = kind

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            return self._inner.readinto(b)  # type: ignore[attr-defined, no-any-return]
        except ImageError:
            raise
        except _DECOMPRESSION_ERRORS as e:
            raise ImageError(f"corrupt {self._kind} archive: {e}") from None

    def close(self) -> None:
        self._inner.close()
        super().close()


def _zstd_reader(f: BinaryIO) -> BinaryIO:
    try:
        import zstandard
    except ImportError:
        raise ImageError(
            "archive is zstd-compressed, which AppC does not allow",
            hint="install the 'zstandard' package to read it anyway",
        ) from None
    return zstandard.ZstdDecompressor().stream_reader(f)  # type: ignore[no-any-return, unused-ignore]


def _reader(kind: str, f: BinaryIO) -> BinaryIO:
    if kind == "gzip":
        return gzip_ng.GzipFile(fileobj=f, mode="rb")  # type: ignore[no-untyped-call, return-value]
    if kind == "bzip2":
        return bz2.BZ2File(f, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(f, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        return _zstd_reader(f)
    return f


def open_decompressed(f: BinaryIO) -> BinaryIO:
    """A streaming reader of the tar inside ``f``, whatever its (allowed) compression."""
    head = _read_head(f, 512)
    kind = sniff(head)
    if kind == "unknown":
        if not head:
            raise ImageError("archive is empty")
        raise ImageError("not a tar archive, nor gzip, bzip2 or xz compressed")
    source = io.BufferedReader(_Prepended(head, f), buffer_size=1 << 16)
    inner = _reader(kind, source)
    return io.BufferedReader(_Guarded(inner, kind), buffer_size=1 << 16)


def _read_head(f: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        try:
            chunk = f.read(n - got)
        except OSError as e:
            raise ImageError(f"cannot read archive: {e.strerror or e}") from None
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
