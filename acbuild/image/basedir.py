"""Base directories (execute stage): a `BEGIN <dir>` copied into the staged rootfs, or not.

In a stage where something may write into a file in place (a RUN), the base is copied. In
a stage without RUN nothing ever does, so the base's regular files need not be staged at
all: the staged tree gets the base's directories, symlinks and other non-files, and the
rootfs names the base as its ``lower`` tree, from which the finalizer reads the files
(through directory descriptors, never following a symlink, each file checked to be the one
listed). This saves linking every file in and unlinking it again (~20 µs a file). Whatever
else needs the files as real entries of the staged tree makes them so first:
``prepare_path`` for a path a COPY or WORKDIR resolves, ``materialize`` for all of them (a
cache snapshot, a COPY --from reading the stage, an OCI export). Both hardlink the base's
files (copying where the kernel refuses), as the staged copy always did in such a stage;
except when cache keys read the base: they are then copied, since a hardlink changes the
file's ctime, and with it the signature the key recorded (see acbuild.fs.keyed).

Every file is opened without following a symlink and without blocking (a FIFO swapped in
cannot hang the build), checked on the descriptor to be the one listed (and the one the
key read), and checked again once read: a file changed meanwhile fails the build.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from acbuild.errors import ImageError
from acbuild.fs.copyrange import copy_range
from acbuild.fs.keyed import (
    KeyedFiles,
    Listing,
    Signature,
    by_name_bytes,
    content_digest,
    listing_signature,
    shared_signature,
    signature,
)
from acbuild.fs.staging import CacheFiles, LowerTree, StagedRootfs, xattr_field, xattrs_of
from acbuild.image.extract import RootfsWriter
from acbuild.image.tarread import Limits
from acbuild.report import Reporter


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

    ``link``: only for a stage where nothing can write into a file in place (no RUN). The
    regular files are then not staged: ``rootfs.lower`` names ``src`` and they are read
    from there (see the module's doc); when they must be made real, they are hardlinked,
    sharing inodes with ``src``: owner, mode, mtime and xattrs come with the inode exactly
    as the copy would set them, and nothing ever changes a shared inode.
    """
    writer = RootfsWriter(rootfs, reporter=reporter)
    state = CopyState(writer=writer, rootfs=rootfs, limits=limits, link=link, defer=link,
                       src=os.fsencode(src), base=os.path.abspath(src))
    try:
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"{src}: cannot read: {e.strerror}") from None
    dest = os.open(rootfs.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        state.keyed_entry("", os.fstat(fd))
        writer.root_dir(state.info("", os.fstat(fd), fd, None))
        state.dirs[""] = (_identity(os.fstat(dest)), _identity(os.fstat(fd)))
        # Every directory first, then what goes in them: on ext4, filling each directory
        # right after making it costs several times more per new file.
        state.walk(fd, "", dest, dirs=True)
        state.walk(fd, "", dest, dirs=False)
    finally:
        os.close(fd)
        os.close(dest)
    writer.finish()
    if state.defer:
        rootfs.lower = LowerTree(source=Path(os.path.abspath(src)), dirs=state.dirs,
                                 listings=state.listings, max_bytes=limits.max_total_bytes)
    if reporter is not None:
        reporter.progress("extract", state.done, None)


@contextlib.contextmanager
def filling(rootfs: StagedRootfs, lower: LowerTree) -> Iterator[tuple[CopyState, int, int]]:
    """(copier, source root fd, staged root fd) for making lower files real: its
    ``fill(src_fd, rel_dir, dest_fd, only=name or None)``."""
    # Hardlinked, unless keys read the base: a link would change the ctime they recorded.
    state = CopyState(writer=RootfsWriter(rootfs), rootfs=rootfs,
                      link=rootfs.keyed is None or not lower.user_files,
                       lower=lower, limits=Limits(max_total_bytes=lower.max_bytes),
                       src=os.fsencode(lower.source), base=os.fspath(lower.source),
                       dirs=lower.dirs)
    try:
        src = os.open(lower.source, _DIR_FLAGS)
    except OSError as e:
        raise ImageError(f"{lower.source}: cannot read: {e.strerror}") from None
    try:
        dest = os.open(rootfs.root, _DIR_FLAGS)
        try:
            yield state, src, dest
        finally:
            os.close(dest)
    finally:
        os.close(src)


def _name(item: tuple[str, bool, bool]) -> str:
    return item[0]


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


# A content digest differs although the signature held: a write through a shared mapping.
CONTENT_CHANGED = ("does not hold what the cache key read, although its times did not change "
                   "(written through a shared mapping?)")
# The stat cache may have keyed it by an old digest: a new ctime makes it read again.
# the stat cache has dropped the stale digest (acbuild.fs.keyed.KeyedFiles.content_is)
CONTENT_HINT = "build again once nothing writes to it: the next build reads it afresh"


def base_changed(base: str | os.PathLike[str], rel: str, what: str) -> ImageError:
    """The one error for a base directory that is not what it was."""
    return ImageError(f"base directory {os.fspath(base)} changed during the build: {rel!r} "
                      f"{what}", hint=CONTENT_HINT if what == CONTENT_CHANGED else
                      "do not change a base directory while a build uses it")


# Why os.link may refuse where a copy works: another filesystem, fs.protected_hardlinks,
# too many links to the inode, a filesystem without hardlinks.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP,
                      errno.EEXIST})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a file swapped for a FIFO since it was listed must not hang the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


@dataclass(slots=True, kw_only=True)
class CopyState:
    writer: RootfsWriter
    rootfs: StagedRootfs
    limits: Limits
    link: bool = False
    defer: bool = False  # leave regular files in the source (rootfs.lower)
    lower: LowerTree | None = None  # filling the staged tree from its lower tree
    src: bytes = b""
    base: str = ""  # the source, absolute: what the keys named its entries after
    done: int = 0
    count: int = 0
    links: dict[tuple[int, int], str] = field(default_factory=dict)
    # staged directory -> (its identity, the identity of the source directory it was made of)
    dirs: dict[str, tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=dict)
    listings: dict[str, Listing] = field(default_factory=dict)
    # a deferred directory -> its entries but its files (left in the source), listed in the
    # first pass for the second: no second listing of every file
    held: dict[str, list[tuple[str, bool, bool]]] = field(default_factory=dict)

    @property
    def keyed(self) -> KeyedFiles | None:
        """What the cache keys read of the source, when it is the user's (the cache's own
        snapshot tree as a lower tree was checked when it was restored)."""
        if self.lower is not None and not self.lower.user_files:
            return None
        return self.rootfs.keyed

    def walk(self, dir_fd: int, rel_dir: str, dest_fd: int, *, dirs: bool) -> None:
        """Copy the children of the open directory ``dir_fd`` (sorted, depth first) into
        the open directory ``dest_fd`` (which this copy made: nothing there is followed):
        the directories (``dirs``), or everything else below the directories made."""
        if dirs or not self.defer:
            with os.scandir(dir_fd) as it:
                # The kinds from the directory entries (d_type): no stat for what is skipped.
                found = by_name_bytes(((e.name, e.is_dir(follow_symlinks=False),
                                        e.is_file(follow_symlinks=False)) for e in it), _name)
        else:
            held = self.held.pop(rel_dir, None)
            if held is None:  # not a directory when the first pass came to it
                raise ImageError(f"base directory changed while it was copied: {rel_dir!r}")
            found = held
        keyed = self.keyed
        if dirs and keyed is not None and self.lower is None and \
                keyed.listing(self._path(rel_dir)) != listing_signature(found):
            raise self._changed(rel_dir or ".", "does not hold what the cache key listed")
        if dirs and self.defer:
            self.listings[rel_dir] = listing_signature(found)
            held = [item for item in found if not item[2]]
            self.held[rel_dir] = held
            self._counted(len(found) - len(held))  # the files, which no pass visits
        for name, is_dir, _ in found:
            if is_dir == dirs:
                self._counted(1)
            elif not is_dir:
                continue  # the directories' pass: the other pass's
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if is_dir and not dirs:
                self.directory(dir_fd, name, rel, None, dest_fd)
                continue
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # vanished while we copied
            if not stat.S_ISREG(st.st_mode):
                self.keyed_entry(rel, st)  # a file: checked on its descriptor
            if stat.S_ISDIR(st.st_mode):
                self.directory(dir_fd, name, rel, st, dest_fd)
            elif stat.S_ISREG(st.st_mode):
                self.file(dir_fd, name, rel, st, dest_fd)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=dir_fd)
                self.writer.other(rel, self.info(rel, st, None, target))
            elif not stat.S_ISSOCK(st.st_mode):
                self.writer.other(rel, self.info(rel, st, None, None))

    def _counted(self, entries: int) -> None:
        self.count += entries
        if self.count > self.limits.max_entries:
            raise ImageError(f"base directory has more than {self.limits.max_entries} entries")

    def directory(self, dir_fd: int, name: str, rel: str, st: os.stat_result | None,
                  dest_fd: int) -> None:
        """``st``: the first pass, which makes the directory; None: the second."""
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            raise ImageError(f"base directory changed while it was copied: {rel!r}"
                             f" ({e.strerror})") from None
        try:
            if st is not None:
                self.writer.other(rel, self.info(rel, st, child, None))
            try:
                made = os.open(name, _DIR_FLAGS, dir_fd=dest_fd)
            except FileNotFoundError:
                raise ImageError(f"base directory changed while it was copied: {rel!r}") from None
            try:
                if st is not None:
                    self.dirs[rel] = (_identity(os.fstat(made)), _identity(os.fstat(child)))
                self.walk(child, rel, made, dirs=st is not None)
            finally:
                os.close(made)
        finally:
            os.close(child)

    def fill(self, src_fd: int, rel_dir: str, dest_fd: int, *, only: str | None) -> bool:
        """Make the lower tree's files below ``rel_dir`` (or just ``only`` there) real in
        the staged directory ``dest_fd``; whether any was. Directories the staged tree no
        longer has from the lower tree are skipped; a source directory that is not the one
        copied is an error."""
        assert self.lower is not None
        upper, source = self.lower.dirs[rel_dir]
        if _identity(os.fstat(dest_fd)) != upper:
            return False  # replaced in the staged tree: nothing below it is the base's
        if _identity(os.fstat(src_fd)) != source:
            raise self._changed(rel_dir or ".", "is not the directory it was")
        with os.scandir(src_fd) as it:
            found = by_name_bytes(((e.name, e.is_dir(follow_symlinks=False),
                                    e.is_file(follow_symlinks=False)) for e in it), _name)
        if listing_signature(found) != self.lower.listings.get(rel_dir):
            raise self._changed(rel_dir or ".", "does not hold what it did")
        filled = False
        with _writable(dest_fd):
            for name, is_dir, is_file in found:
                if only is not None and name != only:
                    continue
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if is_dir and rel in self.lower.dirs and only is None:
                    self._fill_below(src_fd, name, rel, dest_fd)
                    continue
                if not is_file or rel in self.rootfs.devices or _exists(name, dest_fd):
                    continue  # staged already, or replaced by what a later step put there
                try:
                    st = os.lstat(name, dir_fd=src_fd)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    self.file(src_fd, name, rel, st, dest_fd)
                    filled = True
        return filled

    def _fill_below(self, src_fd: int, name: str, rel: str, dest_fd: int) -> None:
        try:
            made = os.open(name, _DIR_FLAGS, dir_fd=dest_fd)
        except OSError:
            return  # no longer a directory in the staged tree
        try:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
            except OSError as e:
                raise self._changed(rel, f"cannot be opened ({e.strerror})") from None
            try:
                self.fill(child, rel, made, only=None)
            finally:
                os.close(child)
        finally:
            os.close(made)

    def file(self, dir_fd: int, name: str, rel: str, st: os.stat_result, dest_fd: int) -> None:
        if st.st_nlink > 1:
            first = self.links.setdefault((st.st_dev, st.st_ino), rel)
            if first != rel:
                cached = self.cached
                if cached is not None and cached.expected(rel, st) is None:
                    # a name linked to another of the entry's files since it was verified
                    raise self._changed(rel, "is not the file the entry held")
                self.writer.hardlink(rel, first)
                return
        self.done += st.st_size
        if self.done > self.limits.max_total_bytes:
            raise ImageError(
                f"image content is larger than the limit of {self.limits.max_total_bytes} bytes",
                hint="raise the limit with --max-image-size",
            )
        if self.link and self._linked(dir_fd, name, rel, dest_fd):
            self._cache_link(name, rel, dest_fd)
            return
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            raise self._changed(rel, f"cannot be opened ({e.strerror})") from None
        try:
            found = os.fstat(fd)
            if self._signature(found) != self._signature(st):
                raise self._changed(rel, "was replaced while it was copied")
            self._keyed_file(rel, found)
            cached = self.cached
            if cached is not None and \
                    not cached.holds(rel, found, xattr_field(xattrs_of(fd))):
                raise self._changed(rel, "is not the file the entry held")
            os.set_blocking(fd, True)
            self._copied(fd, found, name, rel, dest_fd)
            if self._signature(os.fstat(fd)) != self._signature(found):
                raise self._changed(rel, "changed while it was copied")
        finally:
            os.close(fd)

    def _signature(self, st: os.stat_result) -> Signature:
        """What must not change while a file is copied: its signature; a cache entry's
        file, its shared_signature (its content is compared with the verified digest, the
        rest when it is opened)."""
        return signature(st) if self.cached is None else shared_signature(st)

    def _copied(self, src: int, st: os.stat_result, name: str, rel: str, dest_fd: int) -> None:
        """A base's file copied into the staged tree (what a hardlink would give, as a new
        inode): data kernel-side with its holes, the owner (recorded without root), the
        xattrs a copy keeps, the mode and the exact mtime. ``dest_fd`` is a staged
        directory this build made (nothing in it is followed)."""
        out = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dest_fd)
        try:
            _copy_data(src, out, st.st_size)
            self._keyed_content(rel, out, st)
            if self.rootfs.privileged:
                os.fchown(out, st.st_uid, st.st_gid)  # before the mode: chown clears setuid
            else:
                self.rootfs.set_owner(rel, *self.rootfs.owner(rel, st))
            with contextlib.suppress(OSError):
                for key in os.listxattr(src):
                    space = key.partition(".")[0]
                    if key == "security.selinux":
                        continue
                    if not self.rootfs.privileged and space != "user":
                        self.writer.warn_once(
                            space, f"xattrs in the {space}.* namespace need root; not kept")
                        continue
                    os.setxattr(out, key, os.getxattr(src, key))
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            os.utime(out, ns=(st.st_mtime_ns, st.st_mtime_ns))
        finally:
            os.close(out)

    def keyed_entry(self, rel: str, st: os.stat_result) -> None:
        """With cache keys: ``st`` of the entry ``rel`` must be what the key read."""
        keyed = self.keyed
        if keyed is not None and not keyed.holds(self._path(rel), st):
            raise self._changed(rel or ".", "is not what the cache key read")

    def _keyed_file(self, rel: str, st: os.stat_result) -> None:
        keyed = self.keyed
        if keyed is not None and not keyed.holds(self._path(rel), st):
            raise self._changed(rel, "is not the file the cache key read")

    def _keyed_content(self, rel: str, copy: int, st: os.stat_result) -> None:
        """With cache keys: the copy made of ``rel`` (open at ``copy``) holds what the key
        hashed. Its own inode, that no one else writes: what it holds now is what the
        image and the cache get. Likewise for a copy of a cache entry's file (``st``): what
        its restore verified (a copy is made only where the kernel refuses a link)."""
        cached = self.cached
        if cached is not None and content_digest(copy) != cached.expected(rel, st):
            raise self._changed(rel, "does not hold the bytes the entry recorded")
        keyed = self.keyed
        if keyed is not None and keyed.digest(self._path(rel)) is not None and \
                not keyed.content_is(self._path(rel), content_digest(copy)):
            raise self._changed(rel, CONTENT_CHANGED)

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    @property
    def cached(self) -> CacheFiles | None:
        """The cache entry whose files these are, when the lower tree is one's (the
        rootfs's record of what its restore verified)."""
        if self.lower is None or self.lower.user_files:
            return None
        return self.rootfs.cached

    def _cache_link(self, name: str, rel: str, dest_fd: int) -> None:
        """A cache entry's file just linked into the staged tree: the inode must be the one
        the restore verified at ``rel`` (a file renamed over it since is not), with what was
        verified of it; its content is compared when the finalizer reads it
        (acbuild.image.rootwalk)."""
        cached = self.cached
        if cached is None:
            return
        fd = os.open(name, _FILE_FLAGS, dir_fd=dest_fd)  # the link this build just made
        try:
            held = cached.holds(rel, os.fstat(fd), xattr_field(xattrs_of(fd)))
        finally:
            os.close(fd)
        if not held:
            os.unlink(name, dir_fd=dest_fd)
            raise self._changed(rel, "is not the file the entry held")

    def _changed(self, rel: str, what: str) -> ImageError:
        if self.lower is not None and not self.lower.user_files and \
                self.rootfs.cached is not None:
            return self.rootfs.cached.changed(rel, what)
        return base_changed(self.base, rel, what)

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


def _copy_data(src: int, dst: int, size: int) -> None:
    """``size`` bytes, kernel-side where it can; fewer if the file shrank (the check after
    the copy reports it). Holes stay holes: only the data extents are copied (a sparse
    /var/log/lastlog may be tens of GiB long and hold a few KiB)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
            end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break  # no data after offset: the rest is a hole
            copy_range(src, dst, size - offset)  # no SEEK_DATA here: every byte
            return
        if start >= size:
            break
        os.lseek(src, start, os.SEEK_SET)
        os.lseek(dst, start, os.SEEK_SET)
        copy_range(src, dst, end - start)
        offset = end
    os.ftruncate(dst, size)


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def _writable(fd: int) -> Iterator[None]:
    """Files may be added to the directory ``fd`` (a base's 0555 one too, without root);
    its mode and mtime are what they were before, afterwards."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o700 != 0o700 and os.geteuid() != 0:
        os.fchmod(fd, mode | 0o700)
    try:
        yield
    finally:
        now = os.fstat(fd)
        if stat.S_IMODE(now.st_mode) != mode:
            os.fchmod(fd, mode)
        if now.st_mtime_ns != st.st_mtime_ns:
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
