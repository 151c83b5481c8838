"""Images (execute stage): reading ACIs, and unpacking base images into a StagedRootfs.

A base is an ACI, a plain rootfs tarball (any allowed compression) or a rootfs directory;
all are treated as hostile: archives go through ``extract``, directories are copied
through the same writer (or their files hardlinked, in a stage without RUN), symlinks
verbatim and never followed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from acbuild.errors import ImageError
from acbuild.fs.staging import StagedRootfs
from acbuild.image import compression, manifest
from acbuild.image.extract import RootfsWriter, extract_tar
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
def open_tar_measured(path: Path) -> Iterator[tuple[BinaryIO, Callable[[], tuple[int, int]]]]:
    """``open_tar``, and a function telling how far into the file (compressed bytes) the
    reading is and the file's size: the one progress total known before the end."""
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

        def position() -> tuple[int, int]:
            # The decompressor reads ahead by a buffer: never more than the whole.
            return min(os.lseek(fd, 0, os.SEEK_CUR), info.st_size), info.st_size

        with archive_errors():
            stream = compression.open_decompressed(f)
        yield stream, position


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
             expect_id: str | None = None) -> ImageManifest | None:
    """Extract the archive at ``path`` (entries under ``prefix``, or what its first entry
    says when None) and return the manifest beside them, if the archive has one."""
    reader = ManifestReader(path, limits)

    def outside(name: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        reader.offer(name, member, tar)

    with open_tar_measured(path) as (stream, position):
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
    return _extract(path, rootfs, None, reporter, limits)


def copy_tree(
    src: Path,
    rootfs: StagedRootfs,
    *,
    reporter: Reporter | None = None,
    limits: Limits = Limits(),  # noqa: B008
    link: bool = False,
) -> None:
    """Copy the rootfs directory ``src`` into ``rootfs``: symlinks verbatim, hardlinks kept,
    owners kept (the unprivileged builder's own ids read as 0), nothing followed out.

    ``link`` hardlinks regular files instead of copying them (copying where the kernel
    refuses): only for a stage where nothing can write into a file in place (no RUN), since
    the rootfs then shares inodes with ``src``. Owner, mode, mtime and xattrs come with the
    inode, exactly as the copy would set them; nothing ever changes a shared inode.
    """
    writer = RootfsWriter(rootfs, reporter=reporter)
    state = _CopyState(writer=writer, rootfs=rootfs, limits=limits, link=link,
                       src=os.fsencode(src))
    try:
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"{src}: cannot read: {e.strerror}") from None
    dest = os.open(rootfs.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        writer.root_dir(state.info("", os.fstat(fd), fd, None))
        # Every directory first, then what goes in them: on ext4, filling each directory
        # right after making it costs several times more per new file.
        state.walk(fd, "", dest, dirs=True)
        state.walk(fd, "", dest, dirs=False)
    finally:
        os.close(fd)
        os.close(dest)
    writer.finish()
    if reporter is not None:
        reporter.progress("extract", state.done, None)


# Why os.link may refuse where a copy works: another filesystem, fs.protected_hardlinks,
# too many links to the inode, a filesystem without hardlinks.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP,
                      errno.EEXIST})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True, kw_only=True)
class _CopyState:
    writer: RootfsWriter
    rootfs: StagedRootfs
    limits: Limits
    link: bool = False
    src: bytes = b""
    done: int = 0
    count: int = 0
    links: dict[tuple[int, int], str] = field(default_factory=dict)

    def walk(self, dir_fd: int, rel_dir: str, dest_fd: int, *, dirs: bool) -> None:
        """Copy the children of the open directory ``dir_fd`` (sorted, depth first) into
        the open directory ``dest_fd`` (which this copy made: nothing there is followed):
        the directories (``dirs``), or everything else below the directories made."""
        with os.scandir(dir_fd) as it:
            names = sorted((e.name for e in it), key=os.fsencode)
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # vanished while we copied
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir == dirs:
                self.count += 1
                if self.count > self.limits.max_entries:
                    raise ImageError(
                        f"base directory has more than {self.limits.max_entries} entries")
            if is_dir:
                self.directory(dir_fd, name, rel, st, dest_fd, make=dirs)
            elif dirs:
                continue
            elif stat.S_ISREG(st.st_mode):
                self.file(dir_fd, name, rel, st, dest_fd)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=dir_fd)
                self.writer.other(rel, self.info(rel, st, None, target))
            elif not stat.S_ISSOCK(st.st_mode):
                self.writer.other(rel, self.info(rel, st, None, None))

    def directory(self, dir_fd: int, name: str, rel: str, st: os.stat_result,
                  dest_fd: int, *, make: bool) -> None:
        child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            if make:
                self.writer.other(rel, self.info(rel, st, child, None))
            try:
                made = os.open(name, _DIR_FLAGS, dir_fd=dest_fd)
            except FileNotFoundError:
                raise ImageError(f"base directory changed while it was copied: {rel!r}") from None
            try:
                self.walk(child, rel, made, dirs=make)
            finally:
                os.close(made)
        finally:
            os.close(child)

    def file(self, dir_fd: int, name: str, rel: str, st: os.stat_result, dest_fd: int) -> None:
        if st.st_nlink > 1:
            first = self.links.setdefault((st.st_dev, st.st_ino), rel)
            if first != rel:
                self.writer.hardlink(rel, first)
                return
        self.done += st.st_size
        if self.done > self.limits.max_total_bytes:
            raise ImageError(
                f"image content is larger than the limit of {self.limits.max_total_bytes} bytes",
                hint="raise the limit with --max-image-size",
            )
        if self.link and self._linked(dir_fd, name, rel, dest_fd):
            return
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as data:
            self.writer.file(rel, data, self.info(rel, st, data.fileno(), None))

    def _linked(self, dir_fd: int, name: str, rel: str, dest_fd: int) -> bool:
        """Hardlink the file; False when it must be copied instead."""
        if not self.rootfs.privileged and not self._xattrs_kept(rel):
            return False  # a copy drops what an unprivileged build cannot set; so must we
        try:
            os.link(name, name, src_dir_fd=dir_fd, dst_dir_fd=dest_fd, follow_symlinks=False)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise ImageError(f"cannot extract {rel!r}: {e.strerror}") from None
            if e.errno == errno.EXDEV:
                self.link = False  # every other file is on the same filesystem
            return False
        return True

    def _xattrs_kept(self, rel: str) -> bool:
        """Whether a copy would keep every xattr of the file (only user.* without root)."""
        try:
            names = os.listxattr(self.src + b"/" + os.fsencode(rel), follow_symlinks=False)
        except OSError:
            return True  # a filesystem without xattrs
        return all(n.startswith("user.") or n == "security.selinux" for n in names)

    def info(
        self, rel: str, st: os.stat_result, fd: int | None, link: str | None
    ) -> tarfile.TarInfo:
        """A TarInfo describing the source entry, so the writer treats it like a member."""
        member = tarfile.TarInfo(rel or ".")
        member.mode = stat.S_IMODE(st.st_mode)
        member.mtime = st.st_mtime_ns / 1e9
        uid, gid = st.st_uid, st.st_gid
        if not self.rootfs.privileged:
            uid = 0 if uid == os.geteuid() else uid
            gid = 0 if gid == os.getegid() else gid
        member.uid, member.gid = uid, gid
        member.type = _TYPES.get(stat.S_IFMT(st.st_mode), tarfile.REGTYPE)
        if link is not None:
            member.linkname = link
        if member.isdev():
            member.devmajor, member.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        if fd is not None:
            headers: dict[str, str] = {}
            with contextlib.suppress(OSError):
                for key in os.listxattr(fd):
                    value = os.getxattr(fd, key).decode("utf-8", "surrogateescape")
                    headers[f"SCHILY.xattr.{key}"] = value
            member.pax_headers = headers
        return member


_TYPES = {
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
}
