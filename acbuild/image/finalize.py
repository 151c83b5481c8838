"""Finalize: manifest + staged rootfs -> .aci, in one pass over the data.

The tar (manifest, then rootfs, then every path in sorted order) is hashed with SHA-512 for
the image ID in the same pass that feeds the compressor, and written atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from acbuild.errors import AcbuildError, BuildError
from acbuild.fs.atomic import atomic_write
from acbuild.fs.staging import StagedRootfs
from acbuild.image.compression import COMPRESSIONS, Compressor, Output, open_compressor
from acbuild.image.rootwalk import RootWalker
from acbuild.image.tarread import MAX_MTIME
from acbuild.image.tarwrite import BLOCK, TarEntry, TarWriter
from acbuild.image.unstaged import materialize
from acbuild.report import Reporter, SilentReporter

# 1980-01-01T00:00:00Z: the earliest time a zip file can hold, the usual reproducible-builds
# default; used when SOURCE_DATE_EPOCH is not set.
DEFAULT_EPOCH = 315532800

# Given every compressed byte of the image as it is written, in order (the cache's copy).
Tee = Callable[[bytes | bytearray | memoryview], object]

_PROGRESS_EVERY = 8 << 20
_HASH_AHEAD = 8  # blocks (TarWriter's CHUNK each) waiting for the hash thread


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


def iter_rootfs_entries(
    rootfs: StagedRootfs, epoch: int, *, prefix: str = "rootfs"
) -> Iterator[tuple[TarEntry, Path | None]]:
    """Every entry of the rootfs in archive order, with the path to read a file's data from.

    Names are ``prefix/rel`` and the root itself is the entry ``prefix``; with ``prefix=""``
    names are relative and the root is left out (an OCI layer). Order: at every level,
    children sorted by name bytes, each directory followed by its contents. A lower tree is
    made real first: every path is one in the staged tree.
    """
    materialize(rootfs)
    cut = len(prefix) + 1 if prefix else 0
    walker = RootWalker(rootfs, epoch, prefix)
    for entry, fd, data in walker.entries():
        if fd >= 0:
            walker.close(fd)
        elif data is None:
            yield entry, None
            continue
        yield entry, rootfs.root / entry.name[cut:]


# --- writing -------------------------------------------------------------------------


def write_rootfs(writer: TarWriter, rootfs: StagedRootfs, epoch: int, prefix: str,
                 progress: Callable[[], None] | None = None) -> int:
    """Every entry of the rootfs into ``writer`` in archive order (names as for
    ``iter_rootfs_entries``), each file's data from the descriptor the walk opened and
    checked, hashed as it is written where it must match a digest (a cache key's, a cache
    entry's: see acbuild.image.rootwalk); the number of entries. ``progress`` runs after
    each."""
    entries = 0
    walker = RootWalker(rootfs, epoch, prefix)
    for entry, fd, data in walker.entries():
        if data is not None:
            writer.add_bytes(entry, data)
        elif fd < 0:
            writer.add(entry)
        else:
            try:
                writer.add_fd(entry, fd, walker.digest(fd))
                walker.check(fd)  # what was read is what was opened (and keyed)
            except OSError as e:
                raise BuildError(f"cannot read {entry.name}: {e.strerror}") from None
            finally:
                walker.close(fd)
        entries += 1
        if progress is not None:
            progress()
    return entries


class _HashingSink:
    """The uncompressed tar goes through here: SHA-512 for the image ID, then compression.

    The hash runs in a thread of its own (hashlib releases the GIL on large updates), in
    the order the blocks come, so it overlaps the walk instead of adding to it. The blocks
    are never changed once written (TarWriter's contract), so the thread may read them
    later; at most _HASH_AHEAD are waiting.
    """

    def __init__(self, compressor: Compressor, reporter: Reporter | None, total: int) -> None:
        self.sha = hashlib.sha512()
        self.size = 0
        self._compressor = compressor
        self._reporter = reporter
        self._total = total
        self._reported = 0
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="sha512")
        self._hashing: deque[Future[None]] = deque()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._hashing.append(self._hasher.submit(self.sha.update, data))
        if len(self._hashing) > _HASH_AHEAD:
            self._hashing.popleft().result()
        self._compressor.write(data)
        self.size += len(data)
        if self._reporter is not None and self.size - self._reported >= _PROGRESS_EVERY:
            self._reported = self.size
            self._reporter.progress("compress", self.size, max(self._total, self.size))
        return len(data)

    def hexdigest(self) -> str:
        """The digest of everything written; the thread is done afterwards."""
        self.close()
        return self.sha.hexdigest()

    def close(self) -> None:
        while self._hashing:
            self._hashing.popleft().result()
        self._hasher.shutdown(wait=True)


def _silent_progress(reporter: Reporter) -> bool:
    """Whether ``reporter`` ignores progress (as -q's does)."""
    progress: object = getattr(type(reporter), "progress", None)
    return progress is SilentReporter.progress


def _estimate(rootfs: StagedRootfs) -> int:
    """Roughly the tar's size, for progress: file sizes plus a header per entry, the files
    a COPY left in the context and a base directory's unstaged ones included (without them
    the bar of a COPY-only image sat at 100% while it was written)."""
    roots = [rootfs.root] if rootfs.lower is None else [rootfs.root, rootfs.lower.source]
    total = sum(BLOCK + size for size in rootfs.refs.sizes())
    for root in roots:
        for _dirpath, dirs, files in os.walk(root):
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


class _Tee:
    """The compressed stream to the output and to a second writer."""

    def __init__(self, out: BinaryIO, tee: Tee) -> None:
        self._out = out
        self._tee = tee

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        written = self._out.write(data)
        self._tee(data)
        return written

    def flush(self) -> None:
        self._out.flush()


def write_aci_stream(
    rootfs: StagedRootfs,
    manifest_json: bytes,
    out: Output,
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
    if reporter is not None and _silent_progress(reporter):
        reporter = None  # shows no progress: no need to walk the tree for a total
    total = _estimate(rootfs) + 2 * BLOCK + len(manifest_json) if reporter is not None else 0
    compressor = open_compressor(compression, out, threads=threads)
    sink = _HashingSink(compressor, reporter, total)
    try:
        writer = TarWriter(sink)
        writer.add(_manifest_entry(manifest_json, epoch), io.BytesIO(manifest_json))
        entries = 1 + write_rootfs(writer, rootfs, epoch, "rootfs")
        writer.close()
    except BaseException:
        sink.close()
        abort = getattr(compressor, "abort", None)
        if abort is not None:
            abort()
        raise
    compressor.close()
    if reporter is not None:
        reporter.progress("compress", sink.size, sink.size)
    return "sha512-" + sink.hexdigest(), sink.size, entries


def write_aci(
    rootfs: StagedRootfs,
    manifest_json: bytes,
    output: Path,
    *,
    compression: str = "gzip",
    epoch: int,
    reporter: Reporter | None = None,
    threads: int | None = None,
    tee: Tee | None = None,
) -> WrittenImage:
    """Write the ACI to ``output`` atomically; a failure leaves any previous file as it was.
    ``tee`` is given every compressed byte written, in order (the cache's copy)."""
    output = Path(output)
    try:
        with atomic_write(output) as out:
            image_id, uncompressed, entries = write_aci_stream(
                rootfs, manifest_json, out if tee is None else _Tee(out, tee),
                compression=compression, epoch=epoch,
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
