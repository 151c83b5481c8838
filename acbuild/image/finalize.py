"""Finalize: manifest + staged rootfs -> .aci, in one pass over the data.

The tar (manifest, then rootfs, then every path in sorted order) is hashed with SHA-512 for
the image ID in the same pass that feeds the compressor, and written atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from acbuild.errors import AcbuildError, BuildError
from acbuild.fs.atomic import atomic_write
from acbuild.fs.staging import DeviceNode, StagedRootfs
from acbuild.image.compression import COMPRESSIONS, Compressor, open_compressor
from acbuild.image.tarread import MAX_MTIME
from acbuild.image.tarwrite import BLOCK, TarEntry, TarWriter, add_file_at
from acbuild.report import Reporter

# 1980-01-01T00:00:00Z: the earliest time a zip file can hold, the usual reproducible-builds
# default; used when SOURCE_DATE_EPOCH is not set.
DEFAULT_EPOCH = 315532800

# Host policy, not image content: an SELinux label would make the image depend on the host.
_SKIPPED_XATTRS = frozenset({"security.selinux"})
_PROGRESS_EVERY = 8 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenImage:
    image_id: str  # "sha512-" + 128 hex digits of the uncompressed tar
    path: Path
    size: int  # bytes on disk
    uncompressed_size: int
    entries: int
    compression: str


def build_epoch(environ: Mapping[str, str]) -> int:
    """The build's timestamp: SOURCE_DATE_EPOCH when set, else DEFAULT_EPOCH."""
    raw = environ.get("SOURCE_DATE_EPOCH")
    if raw is None:
        return DEFAULT_EPOCH
    text = raw.strip()
    # Below tarread.MAX_MTIME: an image must be readable by the reader that checks its headers.
    if not text.isascii() or not text.isdigit() or len(text) > 12 or int(text) >= MAX_MTIME:
        raise AcbuildError(
            "SOURCE_DATE_EPOCH must be a non-negative integer (seconds since 1970) below "
            f"{MAX_MTIME}, got {raw!r}"
        )
    return int(text)


# --- walking the rootfs --------------------------------------------------------------


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()  # filesystem without xattrs
    found: list[tuple[str, bytes]] = []
    for name in names:
        if name in _SKIPPED_XATTRS:
            continue
        try:
            found.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue  # e.g. trusted.* without CAP_SYS_ADMIN
    return tuple(sorted(found, key=lambda item: os.fsencode(item[0])))


def _device_entry(
    rootfs: StagedRootfs,
    name: str,
    rel: str,
    node: DeviceNode,
    st: os.stat_result | None,
    epoch: int,
) -> TarEntry:
    if st is not None:
        uid, gid = rootfs.owner(rel, st)
        mtime = _clamp(st, epoch)
    else:
        uid, gid = rootfs.owners.get(rel, (0, 0))
        mtime = epoch
    return TarEntry(
        name=name,
        kind=node.kind,
        mode=node.mode & 0o7777,
        uid=uid,
        gid=gid,
        mtime=mtime,
        devmajor=node.major if node.kind != "fifo" else 0,
        devminor=node.minor if node.kind != "fifo" else 0,
    )


def _clamp(st: os.stat_result, epoch: int) -> int:
    # Floor to whole seconds; before 1970 cannot be written in a ustar field, so clamp to 0.
    return max(0, min(st.st_mtime_ns // 1_000_000_000, epoch))


class _Walker:
    """Produces the entries of one rootfs; remembers inodes to emit hardlinks."""

    def __init__(self, rootfs: StagedRootfs, epoch: int, prefix: str) -> None:
        self.rootfs = rootfs
        self.root = os.fspath(rootfs.root)  # str paths: no pathlib per entry
        self.epoch = epoch
        self.prefix = prefix
        self.links: dict[tuple[int, int], str] = {}
        self.virtual: dict[str, dict[str, DeviceNode]] = {}
        for rel, node in rootfs.devices.items():
            parent, _, base = rel.rpartition("/")
            self.virtual.setdefault(parent, {})[base] = node

    def archive_name(self, rel: str) -> str:
        if not self.prefix:
            return rel
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def children(self, rel: str) -> list[tuple[str, os.stat_result | None]]:
        """(relative path, lstat) of the children of directory ``rel``, sorted by name bytes."""
        directory = self.rootfs.root / rel if rel else self.rootfs.root
        found: dict[str, os.stat_result | None] = {}
        try:
            with os.scandir(directory) as it:
                for item in it:
                    found[item.name] = item.stat(follow_symlinks=False)
        except OSError as e:
            raise BuildError(f"cannot read {self.archive_name(rel) or '.'}: {e.strerror}") from None
        for name in self.virtual.get(rel, {}):
            found.setdefault(name, None)
        names = sorted(found, key=os.fsencode)
        return [(f"{rel}/{n}" if rel else n, found[n]) for n in names]

    def entry(self, rel: str, st: os.stat_result | None) -> tuple[TarEntry, str | None] | None:
        name = self.archive_name(rel)
        node = self.rootfs.devices.get(rel)
        if node is not None:
            return _device_entry(self.rootfs, name, rel, node, st, self.epoch), None
        assert st is not None
        path = f"{self.root}/{rel}" if rel else self.root
        kind, size, linkname, major, minor = self._kind(st, path)
        if kind is None:
            return None  # sockets and anything else a tar cannot hold
        if kind == "file" and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.setdefault(key, name)
            if first != name:
                kind, size, linkname = "hardlink", 0, first
        uid, gid = self.rootfs.owner(rel, st)
        entry = TarEntry(
            name=name,
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=uid,
            gid=gid,
            mtime=_clamp(st, self.epoch),
            size=size,
            linkname=linkname,
            devmajor=major,
            devminor=minor,
            xattrs=_xattrs(path) if kind != "hardlink" else (),
        )
        return entry, (path if kind == "file" else None)

    @staticmethod
    def _kind(st: os.stat_result, path: str) -> tuple[str | None, int, str, int, int]:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return "file", st.st_size, "", 0, 0
        if stat.S_ISDIR(mode):
            return "dir", 0, "", 0, 0
        if stat.S_ISLNK(mode):
            try:
                return "symlink", 0, os.readlink(path), 0, 0
            except OSError as e:
                raise BuildError(f"cannot read symlink {path}: {e.strerror}") from None
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = "chr" if stat.S_ISCHR(mode) else "blk"
            return kind, 0, "", os.major(st.st_rdev), os.minor(st.st_rdev)
        if stat.S_ISFIFO(mode):
            return "fifo", 0, "", 0, 0
        return None, 0, "", 0, 0


def iter_rootfs_entries(
    rootfs: StagedRootfs, epoch: int, *, prefix: str = "rootfs"
) -> Iterator[tuple[TarEntry, Path | None]]:
    """Every entry of the rootfs in archive order, with the path to read a file's data from.

    Names are ``prefix/rel`` and the root itself is the entry ``prefix``; with ``prefix=""``
    names are relative and the root is left out (an OCI layer). Order: at every level,
    children sorted by name bytes, each directory followed by its contents.
    """
    for entry, path in _entries(rootfs, epoch, prefix):
        yield entry, None if path is None else Path(path)


def _entries(rootfs: StagedRootfs, epoch: int,
             prefix: str) -> Iterator[tuple[TarEntry, str | None]]:
    walker = _Walker(rootfs, epoch, prefix)
    if prefix:
        try:
            root_st = os.lstat(rootfs.root)
        except OSError as e:
            raise BuildError(f"cannot read the rootfs {rootfs.root}: {e.strerror}") from None
        root = walker.entry("", root_st)
        assert root is not None
        yield root
    stack = [iter(walker.children(""))]
    while stack:
        for rel, st in stack[-1]:
            produced = walker.entry(rel, st)
            if produced is None:
                continue
            yield produced
            if produced[0].kind == "dir":
                stack.append(iter(walker.children(rel)))
                break
        else:
            stack.pop()


# --- writing -------------------------------------------------------------------------


class _HashingSink:
    """The uncompressed tar goes through here: SHA-512 for the image ID, then compression."""

    def __init__(self, compressor: Compressor, reporter: Reporter | None, total: int) -> None:
        self.sha = hashlib.sha512()
        self.size = 0
        self._compressor = compressor
        self._reporter = reporter
        self._total = total
        self._reported = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self.sha.update(data)
        self._compressor.write(data)
        self.size += len(data)
        if self._reporter is not None and self.size - self._reported >= _PROGRESS_EVERY:
            self._reported = self.size
            self._reporter.progress("compress", self.size, max(self._total, self.size))
        return len(data)


def _estimate(rootfs: StagedRootfs) -> int:
    """Roughly the tar's size, for progress: file sizes plus a header per entry."""
    total = 0
    for _dirpath, dirs, files in os.walk(rootfs.root):
        total += BLOCK * (len(dirs) + len(files) + 1)
        for name in files:
            try:
                total += os.lstat(os.path.join(_dirpath, name)).st_size
            except OSError:
                continue
    return total


def _manifest_entry(manifest_json: bytes, epoch: int) -> TarEntry:
    return TarEntry(
        name="manifest", kind="file", mode=0o644, uid=0, gid=0, mtime=epoch,
        size=len(manifest_json),
    )


def write_aci_stream(
    rootfs: StagedRootfs,
    manifest_json: bytes,
    out: BinaryIO,
    *,
    compression: str,
    epoch: int,
    reporter: Reporter | None = None,
    threads: int | None = None,
) -> tuple[str, int, int]:
    """Write the compressed ACI to ``out``: (image ID, uncompressed size, entry count)."""
    if compression not in COMPRESSIONS:
        raise AcbuildError(
            f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}"
        )
    total = _estimate(rootfs) + 2 * BLOCK + len(manifest_json) if reporter is not None else 0
    compressor = open_compressor(compression, out, threads=threads)
    try:
        sink = _HashingSink(compressor, reporter, total)
        writer = TarWriter(sink)
        writer.add(_manifest_entry(manifest_json, epoch), io.BytesIO(manifest_json))
        entries = 1
        for entry, source in _entries(rootfs, epoch, "rootfs"):
            if source is None:
                writer.add(entry)
            else:
                add_file_at(writer, entry, source, what="image")
            entries += 1
        writer.close()
    except BaseException:
        abort = getattr(compressor, "abort", None)
        if abort is not None:
            abort()
        raise
    compressor.close()
    if reporter is not None:
        reporter.progress("compress", sink.size, sink.size)
    return "sha512-" + sink.sha.hexdigest(), sink.size, entries


def write_aci(
    rootfs: StagedRootfs,
    manifest_json: bytes,
    output: Path,
    *,
    compression: str = "gzip",
    epoch: int,
    reporter: Reporter | None = None,
    threads: int | None = None,
) -> WrittenImage:
    """Write the ACI to ``output`` atomically; a failure leaves any previous file as it was."""
    output = Path(output)
    try:
        with atomic_write(output) as out:
            image_id, uncompressed, entries = write_aci_stream(
                rootfs, manifest_json, out, compression=compression, epoch=epoch,
                reporter=reporter, threads=threads,
            )
            out.flush()
            size = out.tell()
    except OSError as e:
        raise AcbuildError(f"cannot write {output}: {e.strerror or e}") from None
    return WrittenImage(
        image_id=image_id, path=output, size=size, uncompressed_size=uncompressed,
        entries=entries, compression=compression,
    )
