"""Images (execute stage): reading ACIs, and unpacking base images into a StagedRootfs.

A base is an ACI, a plain rootfs tarball (any allowed compression) or a rootfs directory;
all are treated as hostile: archives go through ``extract``, directories are copied
through the same writer (or their files hardlinked, in a stage without RUN), symlinks
verbatim and never followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from acbuild.errors import ImageError
from acbuild.fs.keyed import KeyedFiles, signature
from acbuild.fs.staging import StagedRootfs
from acbuild.image import compression, manifest
from acbuild.image.basedir import CONTENT_HINT, copy_tree
from acbuild.image.extract import extract_tar
from acbuild.image.manifest import ImageManifest
from acbuild.image.tarread import CHUNK, Limits, TarSource, archive_errors, clean_name, members
from acbuild.report import Reporter


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryInfo:
    """One archive entry as inspect and diff show it; ``name`` is cleaned ("rootfs/bin")."""

    name: str
    kind: str  # file, dir, symlink, hardlink, chr, blk, fifo, other
    size: int
    mode: int
    uid: int
    gid: int
    linkname: str
    mtime: int


@contextlib.contextmanager
def open_tar(path: Path) -> Iterator[BinaryIO]:
    """The decompressed tar stream of the archive at ``path``."""
    with open_tar_measured(path) as (stream, _position):
        yield stream


@contextlib.contextmanager
def open_tar_measured(path: Path, keyed: KeyedFiles | None = None,
                      ) -> Iterator[tuple[BinaryIO, Callable[[], tuple[int, int]]]]:
    """``open_tar``, and a function telling how far into the file (compressed bytes) the
    reading is and the file's size: the one progress total known before the end.
    ``keyed``: the file must be the one the cache key read, opened and once read."""
    try:
        # O_NONBLOCK: a FIFO in an image's place must be refused, not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        f = os.fdopen(fd, "rb")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path}: not a regular file")
        if keyed is not None and not keyed.holds(os.path.abspath(path), info):
            raise _changed(path)

        def position() -> tuple[int, int]:
            # The decompressor reads ahead by a buffer: never more than the whole.
            return min(os.lseek(fd, 0, os.SEEK_CUR), info.st_size), info.st_size

        expected = None if keyed is None else keyed.digest(os.path.abspath(path))
        raw = _HashingRaw(f) if expected is not None else None
        try:
            with archive_errors():
                stream = compression.open_decompressed(
                    f if raw is None else io.BufferedReader(raw))
        except ImageError as e:  # "not a tar archive": which file is not
            raise ImageError(f"{path}: {e.message}", hint=e.hint) from None
        yield stream, position
        if keyed is not None and signature(os.fstat(f.fileno())) != signature(info):
            raise _changed(path)
        # The bytes read are those the key hashed (a write through a shared mapping of the
        # archive changes no time the signature could show).
        if raw is not None and keyed is not None and \
                not keyed.content_is(os.path.abspath(path), raw.rest_digest()):
            raise ImageError(f"{path} does not hold what the cache key read, although its "
                             "times did not change (written through a shared mapping?)",
                             hint=CONTENT_HINT)


class _HashingRaw(io.RawIOBase):
    """The archive's bytes as read, hashed (sha256, as the key hashed the file)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.f.readinto(b)  # type: ignore[attr-defined]
        if n:
            self.h.update(memoryview(b)[:n])
        return n or 0

    def rest_digest(self) -> bytes:
        """The digest once the rest (past the archive's end) is read too."""
        while chunk := self.f.read(1 << 20):
            self.h.update(chunk)
        return self.h.digest()


def _changed(path: Path) -> ImageError:
    return ImageError(f"{path} changed during the build: it is not the file the cache key "
                      "read", hint="do not change a base image while a build uses it")


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, what: str) -> bytes:
    """The data of a small member (the manifest), refusing more than ``limit`` bytes."""
    if member.size > limit:
        raise ImageError(f"{what} is larger than {limit} bytes")
    with archive_errors():
        data = tar.extractfile(member)
        assert data is not None  # callers pass regular files
        return data.read()


class ManifestReader:
    """The one rule every ACI reader applies to the ``manifest`` entry: there is exactly one
    (whatever its spelling: ``./manifest``, ``rootfs/../manifest``), it is a regular file, and
    it is at most ``limits.max_manifest`` bytes. A second one is an error, never "the first
    wins" or "the last wins": readers that disagreed about which one counts could be shown
    one manifest and run another."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.limits = limits
        self.data: bytes | None = None
        self.seen = False

    def offer(self, name: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> bool:
        """Take the entry if its cleaned ``name`` is the manifest; True when it was."""
        if name != "manifest":
            return False
        if self.seen:
            raise ImageError(f"{self.path}: the image has more than one manifest entry",
                             hint="an ACI has exactly one; rebuild or re-export the image")
        self.seen = True
        if not member.isreg():
            raise ImageError(f"{self.path}: manifest is not a regular file")
        self.data = read_member(tar, member, self.limits.max_manifest, "manifest")
        return True

    def raw(self) -> bytes:
        """The manifest's bytes, after the whole archive was offered."""
        if self.data is None:
            raise ImageError(f"{self.path}: not an ACI: it has no manifest")
        return self.data

    def manifest(self) -> ImageManifest:
        return manifest.read_checked(self.raw(), f"{self.path}: manifest")


def read_manifest(path: Path, *, limits: Limits = Limits()) -> ImageManifest:  # noqa: B008
    """The manifest of the ACI at ``path``. The whole archive is read: only at its end is it
    known that no second manifest entry follows."""
    return scan(path, limits=limits)[0]


def scan(path: Path, *, limits: Limits = Limits()) -> tuple[ImageManifest, str]:  # noqa: B008
    """The manifest and the image ID of the ACI at ``path``, in one pass."""
    reader = ManifestReader(path, limits)
    digest = hashlib.sha512()
    with open_tar(path) as stream:
        for member, tar in members(TarSource(stream, hasher=digest), limits):
            reader.offer(clean_name(member.name), member, tar)
    return reader.manifest(), "sha512-" + digest.hexdigest()


def image_id(path: Path) -> str:
    """``sha512-`` + the hex SHA-512 of the decompressed tar, read in blocks."""
    digest = hashlib.sha512()
    with open_tar(path) as stream, archive_errors():
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return "sha512-" + digest.hexdigest()


def entry_kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    for kind, test in (("dir", member.isdir), ("symlink", member.issym), ("hardlink", member.islnk),
                       ("chr", member.ischr), ("blk", member.isblk), ("fifo", member.isfifo)):
        if test():
            return kind
    return "other"


def entry_info(member: tarfile.TarInfo) -> EntryInfo:
    return EntryInfo(
        name=clean_name(member.name),
        kind=entry_kind(member),
        size=member.size if member.isreg() else 0,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        linkname=member.linkname,
        mtime=int(member.mtime),
    )


def iter_entries(path: Path, *, limits: Limits = Limits()) -> Iterator[EntryInfo]:  # noqa: B008
    """Every entry of the archive at ``path``, in archive order."""
    with open_tar(path) as stream:
        for member, _tar in members(TarSource(stream), limits):
            yield entry_info(member)


def unpack_image(
    path: Path,
    rootfs: StagedRootfs,
    *,
    reporter: Reporter | None = None,
    limits: Limits = Limits(),  # noqa: B008
    keep: Callable[[str], bool] | None = None,
    expect_id: str | None = None,
) -> ImageManifest:
    """Extract the ACI at ``path`` into ``rootfs`` (only the rootfs entries ``keep`` accepts,
    when given); returns its manifest.

    ``expect_id``: the image ID the caller checked (a signature, a dependency's pin); the
    bytes extracted are hashed as they are read and must be those, else ImageError (the
    caller then discards ``rootfs``)."""
    found = _extract(path, rootfs, "rootfs/", reporter, limits, keep, expect_id)
    if found is None:
        raise ImageError(f"{path}: not an ACI: it has no manifest")
    return found


class _Hashing:
    """A read-only stream that hashes what is read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha512()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data


def _extract(path: Path, rootfs: StagedRootfs, prefix: str | None,
             reporter: Reporter | None, limits: Limits,
             keep: Callable[[str], bool] | None = None,
             expect_id: str | None = None,
             keyed: KeyedFiles | None = None) -> ImageManifest | None:
    """Extract the archive at ``path`` (entries under ``prefix``, or what its first entry
    says when None) and return the manifest beside them, if the archive has one."""
    reader = ManifestReader(path, limits)

    def outside(name: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        reader.offer(name, member, tar)

    with open_tar_measured(path, keyed) as (stream, position):
        hashing = _Hashing(stream)

        def progress() -> None:
            if reporter is not None:
                reporter.progress("extract", *position())

        used = extract_tar(
            hashing, rootfs, prefix=prefix, limits=limits,  # type: ignore[arg-type]
            reporter=reporter, on_outside=outside, keep=keep, progress=progress,
        )
        with archive_errors():
            while hashing.read(CHUNK):
                pass  # extract_tar stops at the tar's end; the ID covers every byte
        progress()
    if expect_id is not None and not ("sha512-" + hashing.digest.hexdigest()).startswith(
            expect_id):
        raise ImageError(f"{path} changed after it was checked: its image ID is no longer "
                         f"{expect_id[:19]}…")
    if reader.data is None:
        if used and prefix is None:
            raise ImageError(
                f"{path}: looks like an ACI (it starts with rootfs/) but has no manifest")
        return None
    return reader.manifest()


def unpack_base(
    path: Path,
    rootfs: StagedRootfs,
    *,
    reporter: Reporter | None = None,
    limits: Limits = Limits(),  # noqa: B008
    link: bool = False,
) -> ImageManifest | None:
    """Unpack a base: an ACI gives its manifest; a rootfs tarball or directory gives None.

    An archive whose first entry is ``manifest`` or ``rootfs`` is taken as an ACI (every
    ACI writer puts one of them first); it must then have a manifest. ``link``: see
    copy_tree (only a directory's files are hardlinked).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image or directory") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        copy_tree(path, rootfs, reporter=reporter, limits=limits, link=link)
        return None
    return _extract(path, rootfs, None, reporter, limits, keyed=rootfs.keyed)
