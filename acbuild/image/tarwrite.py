"""Finalize: a deterministic tar writer (ustar, plus PAX extended headers where needed).

Headers are built here rather than with ``tarfile``, whose per-member header building and
stream buffering cost more than compressing. Output is handed on in whole blocks.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from acbuild.errors import BuildError, ImageError

BLOCK = 512
# The unit in which the stream is handed to ``out``: large enough to amortise the per-call
# cost of hashing and compressing, small enough to keep several in flight.
CHUNK = 1 << 20

_TYPEFLAGS = {
    "file": b"0",
    "hardlink": b"1",
    "symlink": b"2",
    "chr": b"3",
    "blk": b"4",
    "dir": b"5",
    "fifo": b"6",
}
_MAX_OCTAL_8 = 0o7777777  # largest value of an 8-byte field (7 digits + NUL)
_MAX_OCTAL_12 = 0o77777777777  # largest value of a 12-byte field (11 digits + NUL)
# Fixed name for PAX headers: GNU tar's default embeds the pid, which is not reproducible.
_PAX_NAME = b"././@PaxHeader"
# os.fsencode's encoding, without its per-call overhead.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TarEntry:
    """One archive member. ``name`` is the full path in the archive, without trailing slash."""

    name: str
    kind: str  # "file" | "dir" | "symlink" | "hardlink" | "chr" | "blk" | "fifo"
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    # The length prefix counts itself, so grow it until it is stable.
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d" % length + body


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fitting the ustar fields, or None when only PAX can hold it."""
    if len(name) <= 100:
        return b"", name
    # The prefix must end at a slash and the remaining name must be non-empty; take the
    # leftmost slash that leaves a name of at most 100 bytes (what GNU tar does).
    start = max(len(name) - 101, 1)  # a cut at 0 would lose a leading slash
    cut = name.find(b"/", start, 156)
    while cut != -1:
        rest = name[cut + 1 :]
        if 0 < len(rest) <= 100 and cut <= 155:
            return name[:cut], rest
        cut = name.find(b"/", cut + 1, 156)
    return None


_MAGIC = b"ustar\x0000" + b"\0" * 64  # uname and gname empty: owners are numeric only
# The checksum counts its own field as eight spaces; the magic is the same in every header.
_CHECKSUM_BASE = 8 * 32 + sum(_MAGIC)


def _header(
    *,
    name: bytes,
    prefix: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    devmajor: int,
    devminor: int,
) -> bytes:
    # Summed field by field: the zero padding adds nothing, and summing the few bytes that
    # are not zero costs a fraction of summing all 512 (this runs once per file).
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    devices = b"%07o\0%07o\0" % (devmajor, devminor)
    checksum = (_CHECKSUM_BASE + sum(name) + sum(numbers) + typeflag[0] + sum(linkname)
                + sum(devices) + sum(prefix))
    return b"".join((name.ljust(100, b"\0"), numbers, b"%06o\0 " % checksum, typeflag,
                     linkname.ljust(100, b"\0"), _MAGIC, devices, prefix.ljust(167, b"\0")))


_NO_DEVICES = b"%07o\0%07o\0" % (0, 0)
# What follows the checksum in a regular file's ustar header: its typeflag, no linkname, the
# magic, no device numbers, no prefix.
_FILE_TAIL = b"0" + b"\0" * 100 + _MAGIC + _NO_DEVICES + b"\0" * 167
_FILE_CHECKSUM_BASE = _CHECKSUM_BASE + _TYPEFLAGS["file"][0] + sum(_NO_DEVICES)


def _file_header(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int) -> bytes:
    """``_header`` of a regular file whose name and numbers fit (the caller checked): the
    same bytes, with the fields every such header shares laid out once."""
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    return b"".join((name.ljust(100, b"\0"), numbers,
                     b"%06o\0 " % (_FILE_CHECKSUM_BASE + sum(name) + sum(numbers)),
                     _FILE_TAIL))


def _fit(value: int, limit: int, key: bytes, pax: list[bytes]) -> int:
    """The value for a numeric field, or 0 with a PAX record when it does not fit."""
    if 0 <= value <= limit:
        return value
    pax.append(_pax_record(key, b"%d" % value))
    return 0


def encode_headers(entry: TarEntry) -> bytes:
    """The header block(s) of ``entry``: a PAX extended header first when one is needed."""
    typeflag = _TYPEFLAGS.get(entry.kind)
    if typeflag is None:
        raise ValueError(f"unknown tar entry kind {entry.kind!r}")
    raw_name = entry.name.encode(_FS_ENCODING, _FS_ERRORS) + (b"/" if entry.kind == "dir" else b"")
    if (typeflag == b"0" and len(raw_name) <= 100 and not entry.xattrs
            and 0 <= entry.size <= _MAX_OCTAL_12 and 0 <= entry.mtime <= _MAX_OCTAL_12
            and 0 <= entry.uid <= _MAX_OCTAL_8 and 0 <= entry.gid <= _MAX_OCTAL_8
            and not entry.linkname and not entry.devmajor and not entry.devminor):
        # Most entries: a regular file whose header is one ustar block.
        return _file_header(raw_name, entry.mode & 0o7777, entry.uid, entry.gid, entry.size,
                            entry.mtime)
    raw_link = entry.linkname.encode(_FS_ENCODING, _FS_ERRORS) if entry.linkname else b""
    if (len(raw_name) <= 100 and len(raw_link) <= 100 and not entry.xattrs
            and 0 <= entry.size <= _MAX_OCTAL_12 and 0 <= entry.mtime <= _MAX_OCTAL_12
            and 0 <= entry.uid <= _MAX_OCTAL_8 and 0 <= entry.gid <= _MAX_OCTAL_8
            and 0 <= entry.devmajor <= _MAX_OCTAL_8 and 0 <= entry.devminor <= _MAX_OCTAL_8):
        # The common case, one ustar header; the same bytes the general path below gives.
        return _header(name=raw_name, prefix=b"", mode=entry.mode & 0o7777, uid=entry.uid,
                       gid=entry.gid, size=entry.size, mtime=entry.mtime, typeflag=typeflag,
                       linkname=raw_link, devmajor=entry.devmajor, devminor=entry.devminor)
    pax: list[bytes] = []
    split = _split_name(raw_name)
    if split is None:
        pax.append(_pax_record(b"path", raw_name))
        split = b"", raw_name[:100]
    if len(raw_link) > 100:
        pax.append(_pax_record(b"linkpath", raw_link))
        raw_link = raw_link[:100]
    size = _fit(entry.size, _MAX_OCTAL_12, b"size", pax)
    mtime = _fit(entry.mtime, _MAX_OCTAL_12, b"mtime", pax)
    uid = _fit(entry.uid, _MAX_OCTAL_8, b"uid", pax)
    gid = _fit(entry.gid, _MAX_OCTAL_8, b"gid", pax)
    if not (0 <= entry.devmajor <= _MAX_OCTAL_8 and 0 <= entry.devminor <= _MAX_OCTAL_8):
        raise ImageError(f"{entry.name!r}: device number {entry.devmajor},{entry.devminor} "
                         "does not fit in a tar header")
    for key, value in sorted(entry.xattrs):
        pax.append(_pax_record(b"SCHILY.xattr." + key.encode("utf-8", "surrogateescape"), value))
    main = _header(
        name=split[1],
        prefix=split[0],
        mode=entry.mode & 0o7777,
        uid=uid,
        gid=gid,
        size=size,
        mtime=mtime,
        typeflag=_TYPEFLAGS[entry.kind],
        linkname=raw_link,
        devmajor=entry.devmajor,
        devminor=entry.devminor,
    )
    if not pax:
        return main
    if any(_not_utf8(r) for r in pax):
        # Raw (non-UTF-8) file names are kept byte for byte, as POSIX allows.
        pax.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
    body = b"".join(pax)
    ext = _header(
        name=_PAX_NAME,
        prefix=b"",
        mode=0o644,
        uid=0,
        gid=0,
        size=len(body),
        mtime=0,
        typeflag=b"x",
        linkname=b"",
        devmajor=0,
        devminor=0,
    )
    return ext + body + _padding(len(body)) + main


def _not_utf8(record: bytes) -> bool:
    if b" SCHILY.xattr." in record[:24]:
        return False  # xattr values are binary by definition
    try:
        record.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class TarWriter:
    """Writes a tar stream to ``out`` in CHUNK-sized blocks; counts the bytes.

    Each block handed to ``out.write`` is a fresh object that is never modified afterwards,
    so ``out`` may keep it (a parallel compressor does) without copying.
    """

    def __init__(self, out: Sink) -> None:
        self._out = out
        # Zeros past ``_pos``: each block is a fresh buffer, written from the start on, so
        # padding need not be written where the buffer has room for it.
        self._buf = bytearray(CHUNK)
        self._pos = 0
        self._flushed = 0
        self._closed = False

    @property
    def offset(self) -> int:
        """Bytes of tar written so far (including what is still buffered)."""
        return self._flushed + self._pos

    def add(self, entry: TarEntry, data: BinaryIO | None = None) -> None:
        """Add ``entry``; for a regular file, stream exactly ``entry.size`` bytes of ``data``."""
        self._put(encode_headers(entry))
        if entry.kind != "file" or entry.size == 0:
            return
        if data is None:
            raise ValueError(f"{entry.name}: file data missing")
        readinto = getattr(data, "readinto", None)
        if readinto is None:
            self._copy(entry, lambda view: _read_into(data, view))
        else:
            self._copy(entry, readinto)

    def add_bytes(self, entry: TarEntry, data: bytes) -> None:
        """Like add(), the file's data given whole (exactly ``entry.size`` bytes)."""
        if len(data) != entry.size:
            raise ImageError(f"{entry.name}: data ended after {len(data)} of {entry.size} "
                             "bytes (file changed while archiving?)")
        header = encode_headers(entry)
        pos = self._pos
        end = pos + len(header) + len(data)
        if end <= CHUNK:
            # Straight into the buffer; the padding is there already (see _buf).
            buf = self._buf
            buf[pos : pos + len(header)] = header
            buf[pos + len(header) : end] = data
            self._pos = end + (-end % BLOCK)  # at most CHUNK: CHUNK is a multiple of BLOCK
            return
        self._put(header)
        if data:
            self._put(data)
            self._put(_padding(len(data)))

    def add_fd(self, entry: TarEntry, fd: int, digest: hashlib._Hash | None = None) -> None:
        """Like add(), reading the file data from an open file descriptor; ``digest`` is
        updated with every byte read (what went into the archive)."""
        self._put(encode_headers(entry))
        size = entry.size
        if entry.kind != "file" or not size:
            return

        def read(view: memoryview) -> int:
            got = os.readv(fd, (view,))
            if digest is not None:
                digest.update(view[:got])
            return got

        end = self._pos + size
        if end <= CHUNK:
            # A small file (most of them): one read straight into the buffer.
            got = read(memoryview(self._buf)[self._pos : end])
            self._pos += got
            if got == size:
                self._put(_padding(size))
                return
            self._copy(entry, read, done=got)
            return
        self._copy(entry, read)

    def close(self) -> None:
        """End the archive with two zero blocks and hand on what is buffered."""
        if self._closed:
            return
        self._put(b"\0" * (2 * BLOCK))
        self._flush()
        self._closed = True

    def _copy(self, entry: TarEntry, readinto: object, done: int = 0) -> None:
        """Stream the rest of the entry's data; ``done`` bytes of it are buffered already."""
        remaining = entry.size - done
        view = memoryview(self._buf)
        while remaining:
            if self._pos == CHUNK:
                self._flush()
                view = memoryview(self._buf)
            n = min(remaining, CHUNK - self._pos)
            got = readinto(view[self._pos : self._pos + n])  # type: ignore[operator]
            if not got:
                raise ImageError(
                    f"{entry.name}: data ended after {entry.size - remaining} "
                    f"of {entry.size} bytes (file changed while archiving?)"
                )
            self._pos += got
            remaining -= got
        view.release()
        self._put(_padding(entry.size))

    def _put(self, data: bytes) -> None:
        while data:
            if self._pos == CHUNK:
                self._flush()
            n = min(len(data), CHUNK - self._pos)
            self._buf[self._pos : self._pos + n] = data[:n]
            self._pos += n
            data = data[n:]

    def _flush(self) -> None:
        if not self._pos:
            return
        block = self._buf if self._pos == CHUNK else self._buf[: self._pos]
        self._out.write(block)
        self._flushed += self._pos
        # A new buffer, because ``out`` may still hold the old one.
        self._buf = bytearray(CHUNK)
        self._pos = 0


def _read_into(data: BinaryIO, view: memoryview) -> int:
    chunk = data.read(len(view))
    view[: len(chunk)] = chunk
    return len(chunk)


def add_file_at(writer: TarWriter, entry: TarEntry, path: str | os.PathLike[str], *,
                what: str) -> None:
    """Stream the regular file at ``path`` as ``entry``. ``what`` names the archive being
    written ("image", "layer") in errors; read failures are build errors, not crashes."""
    # O_NONBLOCK: if the file was swapped for a FIFO since the walk, open must not hang.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise BuildError(f"cannot read {entry.name}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BuildError(f"{entry.name} changed while the {what} was being written")
        writer.add_fd(entry, fd)
    except OSError as e:
        raise BuildError(f"cannot read {entry.name}: {e.strerror}") from None
    finally:
        os.close(fd)

