"""Test helper: craft hostile (and ordinary) tar archives byte by byte.

tarfile writes whatever TarInfo it is given, so names like ``../x`` or ``/etc/x`` and
links anywhere go in verbatim; ``raw_header`` builds headers tarfile would refuse to write.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
from pathlib import Path

MINIMAL_MANIFEST = {
    "acKind": "ImageManifest",
    "acVersion": "0.8.11",
    "name": "example.com/test",
    "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
}


class Tar:
    """An archive built entry by entry; ``data()`` is the uncompressed tar."""

    def __init__(self, *, fmt: int = tarfile.PAX_FORMAT, mtime: int = 1_500_000_000) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=fmt)  # noqa: SIM115
        self._mtime = mtime

    def _info(self, name: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.mtime = self._mtime
        return info

    def file(
        self,
        name: str,
        data: bytes = b"",
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        pax: dict[str, str] | None = None,
    ) -> Tar:
        info = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        if pax:
            info.pax_headers = dict(pax)
        self._tar.addfile(info, io.BytesIO(data))
        return self

    def dir(self, name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Tar:
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))
        return self

    def symlink(self, name: str, target: str, *, uid: int = 0, gid: int = 0) -> Tar:
        info = self._info(name, tarfile.SYMTYPE, 0o777, uid, gid)
        info.linkname = target
        self._tar.addfile(info)
        return self

    def hardlink(self, name: str, target: str) -> Tar:
        info = self._info(name, tarfile.LNKTYPE, 0o644, 0, 0)
        info.linkname = target
        self._tar.addfile(info)
        return self

    def device(
        self, name: str, kind: str, major: int = 0, minor: int = 0, *, mode: int = 0o600
    ) -> Tar:
        flag = {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
        info = self._info(name, flag, mode, 0, 0)
        info.devmajor, info.devminor = major, minor
        self._tar.addfile(info)
        return self

    def raw(self, block: bytes) -> Tar:
        """Append raw bytes (a crafted header and its data) to the stream as it is."""
        self._tar.fileobj.write(block)
        self._tar.offset += len(block)
        return self

    def data(self, *, end: bool = True) -> bytes:
        """The archive; without ``end`` the end-of-archive blocks are left off."""
        if end:
            self._tar.close()
            return self._buf.getvalue()
        return self._buf.getvalue()


def aci(manifest: dict[str, object] | bytes | None = None, *, rootfs: bool = True) -> Tar:
    """An ACI skeleton: manifest then the ``rootfs`` directory; add entries after it."""
    t = Tar()
    if isinstance(manifest, bytes):
        body = manifest
    else:
        body = json.dumps(manifest or MINIMAL_MANIFEST).encode()
    t.file("manifest", body)
    if rootfs:
        t.dir("rootfs")
    return t


def raw_header(
    name: str,
    *,
    kind: bytes = b"0",
    size: int = 0,
    linkname: str = "",
    mode: int = 0o644,
    checksum: bool = True,
) -> bytes:
    """A ustar header tarfile would not write (bad checksum, any name), padded to 512."""
    h = bytearray(512)

    def put(offset: int, width: int, value: bytes) -> None:
        h[offset : offset + width] = value[:width].ljust(width, b"\0")

    put(0, 100, name.encode())
    put(100, 8, b"%07o" % mode)
    put(108, 8, b"%07o" % 0)
    put(116, 8, b"%07o" % 0)
    put(124, 12, b"%011o" % size)
    put(136, 12, b"%011o" % 1_500_000_000)
    h[148:156] = b" " * 8
    put(156, 1, kind)
    put(157, 100, linkname.encode())
    put(257, 6, b"ustar\0")
    put(263, 2, b"00")
    total = sum(h) if checksum else sum(h) + 1
    put(148, 8, b"%06o\0 " % total)
    return bytes(h)


def compress(data: bytes, kind: str = "gzip") -> bytes:
    match kind:
        case "gzip":
            return gzip.compress(data, mtime=0)
        case "bzip2":
            return bz2.compress(data)
        case "xz":
            return lzma.compress(data)
        case "none":
            return data
    raise ValueError(kind)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Everything below ``path`` (mode, size, content or link target), to compare later."""
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            body: bytes | str = str(p.readlink())
        elif p.is_file():
            body = p.read_bytes()
        else:
            body = b""
        out[str(p.relative_to(path))] = (st.st_mode, st.st_size, body)
    return out
