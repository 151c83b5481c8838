"""Convert (input): the streams under an image — digest-checked reads, completed layer tars,
and the blob stores of layout directories and outer archives (read in place, never unpacked).
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Protocol

from acbuild.errors import ConvertError, ImageError
from acbuild.fs.regular import open_regular
from acbuild.image.compression import open_decompressed, sniff
from acbuild.image.tarread import BoundedTarInfo

CHUNK = 1 << 20
# PAX records are small; a larger extended header is passed on without reading its size.
PAX_LIMIT = 16 << 20


class BlobStore(Protocol):
    def open(self, name: str) -> BinaryIO: ...

    def close(self) -> None: ...

    def discard(self, name: str) -> bool:
        """Forget a blob found corrupt, if it is a copy this program keeps (True); a user's
        own file is never touched."""
        ...


class DigestReader(io.RawIOBase):
    """Passes a stream through, hashing and counting what is read."""

    def __init__(
        self, inner: BinaryIO, digest: str | None, progress: Callable[[int], None] | None = None
    ) -> None:
        self._inner = inner
        self.expected = digest
        self._hash = hashlib.new(digest.split(":", 1)[0] if digest else "sha256")
        self.count = 0
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(b))
        n = len(data)
        b[:n] = data
        self._hash.update(data)
        self.count += n
        if self._progress is not None and n:
            self._progress(self.count)
        return n

    def digest(self) -> str:
        return f"{self._hash.name}:{self._hash.hexdigest()}"

    def matches(self) -> bool:
        return self.expected is None or self.digest() == self.expected


class EndedTar(io.RawIOBase):
    """A tar stream that ends in end-of-archive blocks if its last entry is complete.

    Some tools omit those blocks; the layer's digest vouches for what is there, so a stream
    that stops cleanly between entries is completed. A stream cut inside an entry is left
    cut, for the extractor to reject. Headers are followed just far enough to know.
    """

    def __init__(self, inner: BinaryIO | DigestReader) -> None:
        self._inner = inner
        self._pos = 0  # bytes passed on
        self._next = 0  # offset of the next header
        self._header = bytearray()
        self._pax = bytearray()  # data of a PAX header, which may override the next size
        self._pax_start = self._pax_end = -1
        self._size_override: int | None = None
        self._done = False  # an end block was seen or supplied: just pass bytes on
        self._complete = False  # the last header was an entry's own, not a PAX/long name

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(b))
        if not data:
            if self._done or self._pos != self._next or not self._complete:
                return 0
            self._done = True
            data = b"\0" * 1024
        elif not self._done:
            self._follow(data)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _follow(self, data: bytes) -> None:
        start = pos = self._pos
        end = start + len(data)
        while not self._done and pos < end:
            if pos < self._next:  # inside an entry's data
                stop = min(end, self._next)
                lo, hi = max(pos, self._pax_start), min(stop, self._pax_end)
                if lo < hi:
                    self._pax += data[lo - start : hi - start]
                pos = stop
                if pos == self._next and self._pax_end >= 0:
                    self._size_override = _pax_size(bytes(self._pax))
                    self._pax_end = -1
                continue
            chunk = data[pos - start : pos - start + 512 - len(self._header)]
            self._header += chunk
            pos += len(chunk)
            if len(self._header) == 512:
                self._parse(bytes(self._header))
                self._header.clear()

    def _parse(self, header: bytes) -> None:
        header_at = self._next
        if not any(header):
            self._done = True
            return
        kind = header[156:157]
        self._complete = kind not in (b"x", b"L", b"K")
        size = _tar_number(header[124:136])
        if self._size_override is not None and kind not in (b"x", b"g", b"L", b"K"):
            size, self._size_override = self._size_override, None
        if kind in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0  # tarfile reads no data for these whatever the header says
        self._next = header_at + 512 + -(-size // 512) * 512
        if kind == b"x" and 0 < size <= PAX_LIMIT:
            self._pax_start, self._pax_end = header_at + 512, header_at + 512 + size
            self._pax.clear()


def _pax_size(records: bytes) -> int | None:
    for line in records.split(b"\n"):
        _, _, record = line.partition(b" ")
        if record.startswith(b"size="):
            with suppress(ValueError):
                return int(record[5:])
    return None


def _tar_number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return 0


def drain(f: BinaryIO | DigestReader) -> None:
    while f.read(CHUNK):
        pass


# ---- stores ------------------------------------------------------------------------------


class DirStore:
    """Blobs of an OCI layout directory. A blob that is not a regular file (a FIFO, which a
    plain open() would wait on for ever; a link to /dev/zero, read for ever) is refused."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, name: str) -> BinaryIO:
        return open_regular(self.root / name)

    def close(self) -> None:
        pass

    def discard(self, name: str) -> bool:
        return False  # the user's layout


class KeptBlobs(DirStore):
    """Blobs this program pulled and keeps (the image store's ``blobs/``): a copy found
    corrupt is removed, so that the next use downloads it again instead of failing for ever.
    ``holder``: what must live while they are read (the store object whose lock keeps
    ``gc --blobs`` away from them)."""

    def __init__(self, root: Path, *, holder: object = None) -> None:
        super().__init__(root)
        self.holder = holder

    def discard(self, name: str) -> bool:
        (self.root / name).unlink(missing_ok=True)
        return True


class _Window(io.RawIOBase):
    """``size`` bytes of the open file ``fd`` from ``offset``: one member of an
    uncompressed tar, read with pread (windows of one store share the open file, never an
    offset). ``fd`` is the window's own, closed with it."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd = fd
        self._at = offset
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = os.pread(self._fd, min(len(b), self._left), self._at)
        b[: len(data)] = data
        self._at += len(data)
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class TarStore:
    """Members of an outer tar (docker save, oci-archive), read in place.

    The archive is opened once, refused unless it is a regular file, and that descriptor
    serves the index and every member: a name swapped for a FIFO or another file after the
    index was made is never read. A compressed outer tar is first spooled, decompressed, to
    a private temporary file, which is then the one read.
    """

    def __init__(self, path: Path) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.path = path
        self._file = self._uncompressed(path)
        try:
            self.members = _index_members(self.path, self._file)
        except BaseException:
            self.close()
            raise

    def _uncompressed(self, path: Path) -> BinaryIO:
        f = None
        try:
            f = open_regular(path)
            kind = sniff(f.read(512))
            if kind == "tar":
                return f
            if kind == "unknown":
                raise ConvertError(f"{path}: not a tar archive")
            f.seek(0)
            self._tmp = tempfile.TemporaryDirectory(prefix="acbuild-archive-")
            spool = Path(self._tmp.name) / "archive.tar"
            with f, open_decompressed(f) as src, spool.open("w+b") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
                self.path = spool
                return open_regular(os.dup(dst.fileno()))
        except BaseException as e:
            if f is not None:
                f.close()
            self.close()
            if isinstance(e, ImageError):
                raise ConvertError(f"{path}: {e.message}") from None
            if isinstance(e, OSError):
                raise ConvertError(f"{path}: cannot read: {e.strerror or e}") from None
            raise

    def has(self, name: str) -> bool:
        return norm_name(name) in self.members

    def open(self, name: str) -> BinaryIO:
        ti = self._resolve(norm_name(name))
        return io.BufferedReader(_Window(os.dup(self._file.fileno()), ti.offset_data, ti.size))

    def _resolve(self, name: str) -> tarfile.TarInfo:
        # docker save links identical layers: "<id>/layer.tar -> ../<other>/layer.tar".
        for _ in range(8):
            ti = self.members.get(name)
            if ti is None:
                raise ConvertError(f"{self.path}: no member {name!r}")
            if ti.issym():
                name = norm_name(posixpath.join(posixpath.dirname(name), ti.linkname))
            elif ti.islnk():
                name = norm_name(ti.linkname)
            elif ti.isfile() and not ti.issparse():
                return ti
            else:
                raise ConvertError(f"{self.path}: member {name!r} is not a regular file")
        raise ConvertError(f"{self.path}: member {name!r}: too many links")

    def discard(self, name: str) -> bool:
        return False  # the user's archive

    def close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def norm_name(name: str) -> str:
    """A member name as tar extraction would place it: no leading slash, no ``..`` above."""
    return posixpath.normpath("/" + name).lstrip("/")


def _index_members(path: Path, file: BinaryIO) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    try:
        file.seek(0)
        with tarfile.open(fileobj=file, mode="r:", tarinfo=BoundedTarInfo) as tar:
            for ti in tar:
                members[norm_name(ti.name)] = ti  # later entries win, as when a tar is extracted
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConvertError(f"{path}: not a readable tar archive: {e}") from None
    return members
