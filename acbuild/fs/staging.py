"""Staging: the directory a stage's rootfs is built in, and what it cannot store on disk.

As root, owners are applied to the files themselves. Without root (a user namespace maps
only the caller's uid to 0), chown to other ids is impossible, so the owner is recorded here
and the finalizer reads it back: root and rootless builds give the same image.

Character and block devices of an image are never made on the host, as root or not: a
base image's node with the major:minor of a host disk would otherwise be a door to that
disk for anyone who can reach the staging directory, and for the build's own RUN steps.
They live only as records (``devices``), with their owner, and the finalizer writes them
into the tar. FIFOs are harmless and are made on disk where the builder can.

A base directory in a stage without RUN is not staged file by file: ``lower`` names it, the
staged tree holds its directories, symlinks and other non-files, and the base's regular
files are read from the base by the finalizer (see acbuild.image.basedir). Likewise, a COPY
from the build context followed by no RUN leaves ``refs``, files read from the context.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from acbuild.errors import ImageError, Span
from acbuild.fs.framing import framed
from acbuild.fs.keyed import KeyedFiles, Listing, Signature, signature


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceNode:
    """A device node (never made on disk) or a FIFO that could not be made; kept for the tar."""

    kind: str  # "chr", "blk" or "fifo"
    major: int
    minor: int
    mode: int  # permission bits


@dataclass(frozen=True, slots=True, kw_only=True)
class LowerTree:
    """A base directory whose regular files are part of the rootfs without being staged.

    ``dirs`` maps each staged directory made from a directory of ``source`` (same relative
    path) to the identities ``(upper (dev, ino), lower (dev, ino))``: a regular file of
    ``source`` is in the rootfs when the staged tree has nothing at its path and its parent
    is still that staged directory. Anything else of ``source`` is staged.
    """

    source: Path
    dirs: dict[str, tuple[tuple[int, int], tuple[int, int]]]
    # directory -> listing_signature of what the source directory held: a file or directory
    # added, removed, renamed or swapped for another kind since is the base changing
    listings: dict[str, Listing]
    max_bytes: int  # the limit on the base's file bytes, checked as they are read
    # Whether its files are the user's, read by the cache keys and so checked against what
    # they read (acbuild.fs.keyed); else the cache's own snapshot tree, whose files are
    # checked against what its restore verified (the rootfs's ``cached``: CacheFiles).
    user_files: bool = True


# What a restore verified of a cache entry's file, by inode: (st_size, st_mtime_ns, st_mode,
# st_uid, st_gid, its xattrs as acbuild.cache.snapshot frames them, sha256 of its content).
# No ctime: linking the inode (materialize, a later snapshot) moves it; every field the
# image takes from the file is compared itself instead.
CachedFile = tuple[int, int, int, int, int, bytes, bytes]


# Host policy, not image content: an SELinux label would make the image depend on the host.
_SKIPPED_XATTRS = frozenset({"security.selinux"})


def xattrs_of(target: str | bytes | int, *,
              user_only: bool = False) -> tuple[tuple[str, bytes], ...]:
    """The xattrs of a path (not followed) or an open descriptor, sorted by name bytes;
    ``user_only``: only user.* (what a copy made without root keeps)."""
    try:
        names = (os.listxattr(target) if isinstance(target, int)
                 else os.listxattr(target, follow_symlinks=False))
    except OSError:
        return ()  # filesystem without xattrs
    if not names:
        return ()  # most files
    found: list[tuple[str, bytes]] = []
    for name in names:
        if name in _SKIPPED_XATTRS or (user_only and not name.startswith("user.")):
            continue
        try:
            value = (os.getxattr(target, name) if isinstance(target, int)
                     else os.getxattr(target, name, follow_symlinks=False))
        except OSError:
            continue  # e.g. trusted.* without CAP_SYS_ADMIN
        found.append((name, value))
    return tuple(sorted(found, key=lambda item: os.fsencode(item[0])))


def xattr_field(pairs: Iterable[tuple[str, bytes]]) -> bytes:
    """(name, value) xattrs as one field, sorted by name bytes: what the snapshot's digest,
    a cache entry's verified files (CacheFiles) and a base directory's key hash or compare.
    Each name and value length-framed: values are binary (security.capability holds NULs),
    so {user.a: b"v\\0user.b=w"} and {user.a: b"v", user.b: b"w"} must not be one field."""
    encoded = sorted((os.fsencode(k), v) for k, v in pairs)
    return framed(*(part for pair in encoded for part in pair))


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheFiles:
    """The files of a cache entry's tree that a lazily restored rootfs uses in place (its
    lower tree, and the hardlinks ``materialize`` makes of them), as the restore verified
    them against the entry's digest: ``paths`` maps the relative path of every name of a
    regular file (each hardlink's too) to the inode (st_dev, st_ino) that was there, and
    ``files`` each of those inodes to what was verified of it (CachedFile).

    What is verified is the path: a file of the entry found at ``rel`` must be the inode
    that was at ``rel``, with that inode's verified fields and content. So two files of
    equal metadata swapped by name, or a name re-pointed at another of the entry's inodes
    (a hardlink made or broken), are refused: the link structure is the recorded one.

    The entry stays writable by its owner after that check (another build, a tool, a write
    through a shared mapping that moves no timestamp), so whatever takes bytes from these
    inodes for the image compares them with the digest as it reads them. A mismatch fails
    the build and ``discard_all`` takes the entry out of use, with every entry this build
    stored from the rootfs since (``stored``): they may share the changed inode."""

    entry: str  # the entry's key, for errors
    paths: Mapping[str, tuple[int, int]]
    files: Mapping[tuple[int, int], CachedFile]
    discard: Callable[[str], None]  # one entry, by key
    stored: list[str] = field(default_factory=list)

    def ours(self, st: os.stat_result) -> bool:
        """Whether ``st`` is one of the entry's inodes (at whatever path)."""
        return (st.st_dev, st.st_ino) in self.files

    def expected(self, rel: str, st: os.stat_result) -> bytes | None:
        """The sha256 the restore verified for the file at ``rel``, if ``st`` is the inode
        that was there."""
        inode = (st.st_dev, st.st_ino)
        known = self.files.get(inode) if self.paths.get(rel) == inode else None
        return None if known is None else known[6]

    def holds(self, rel: str, st: os.stat_result, xattrs: bytes) -> bool:
        """Whether ``st`` (with ``xattrs``, framed by ``xattr_field``) is the inode the
        restore verified at ``rel``, with the size, mtime, mode, owner and xattrs
        verified. Nothing another honest build changes is compared (its links of the
        inode move the ctime and the link count)."""
        inode = (st.st_dev, st.st_ino)
        known = self.files.get(inode) if self.paths.get(rel) == inode else None
        return known is not None and known[:6] == (st.st_size, st.st_mtime_ns, st.st_mode,
                                                   st.st_uid, st.st_gid, xattrs)

    def changed(self, rel: str, what: str) -> ImageError:
        """The one error for a file of the entry that is not what was verified; the entry
        (and what was stored from it) is discarded first, so the next build rebuilds."""
        self.discard_all()
        return ImageError(f"cache entry {self.entry} changed during the build: {rel or '.'!r} "
                          f"{what}; the entry is discarded (the next build rebuilds the step)")

    def discard_all(self) -> None:
        for key in (self.entry, *self.stored):
            self.discard(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefSource:
    """What the references a COPY made from one directory of the build context share (or
    from one file it names as a source): the finalizer reads their data from the context
    (through descriptors, each file checked to be the one the COPY saw) and writes each
    entry with the owner and mtime a copy would have had."""

    root: str  # the build context
    root_id: tuple[int, int]  # its (st_dev, st_ino)
    directory: str  # the directory holding the files, in the context ("" for its top)
    # The file's name there, when it is not its name in the rootfs (a file source COPY'd
    # to another name); None for the files of a directory, which keep their names.
    name: str | None
    uid: int
    gid: int
    mtime: int  # seconds: when the COPY ran, what a copy's mtime would be
    span: Span | None = None  # the COPY, for errors found when the file is read


class FileRef(NamedTuple):
    """A file a COPY put in the rootfs without writing it (see ``FileRefs``)."""

    source: RefSource
    rel: str  # the file in the context
    # acbuild.fs.keyed's signature at the COPY (the one its key read): the ctime too,
    # since an edit in place can put the mtime back but never the ctime.
    seen: Signature
    digest: bytes | None  # the sha256 its key hashed (None: no key): the bytes read must match
    mode: int

    @property
    def root(self) -> str:
        return self.source.root

    @property
    def root_id(self) -> tuple[int, int]:
        return self.source.root_id

    @property
    def uid(self) -> int:
        return self.source.uid

    @property
    def gid(self) -> int:
        return self.source.gid

    @property
    def mtime(self) -> int:
        return self.source.mtime

    @property
    def span(self) -> Span | None:
        return self.source.span


# A reference as FileRefs keeps it: its signature, mode and source's number packed (with the
# digest after them when its key hashed one), or, for a signature no 64-bit field holds (a
# time past 2262), those values as they are.
Record = bytes | tuple[Signature, int, int, bytes | None]
_PACKED = struct.Struct("=QQIQqqII")  # dev, ino, st_mode, size, mtime_ns, ctime_ns, mode, source


class FileRefs(Mapping[str, FileRef]):
    """The files COPY left in the build context, by their path in the rootfs.

    A COPY of 100,000 files makes 100,000 references, kept until the image is written: a
    dict of FileRef objects, each with its own paths and tuple of numbers, took ~0.5 KB a
    file. Here a file is its name in its directory's dict and one bytes object (~85
    bytes, ~120 with a digest); what the files of a context directory share (the context,
    owner, mtime, the COPY's span) is one RefSource. A FileRef is made when one is asked
    for; the finalizer lists a directory's references with ``names``."""

    __slots__ = ("_count", "_dirs", "_sources")

    def __init__(self) -> None:
        self._dirs: dict[str, dict[str, Record]] = {}  # parent ("" for the root) -> name ->
        self._sources: list[RefSource] = []
        self._count = 0

    def source(self, source: RefSource) -> int:
        """The number of ``source``, for ``record``."""
        self._sources.append(source)
        return len(self._sources) - 1

    def record(self, source: int, seen: os.stat_result, mode: int,
               digest: bytes | None) -> Record:
        """A reference of a file of ``source`` the COPY saw as ``seen``, to ``put`` or
        ``adopt``."""
        try:
            packed = _PACKED.pack(seen.st_dev, seen.st_ino, seen.st_mode, seen.st_size,
                                  seen.st_mtime_ns, seen.st_ctime_ns, mode, source)
        except struct.error:
            return signature(seen), mode, source, digest
        return packed if digest is None else packed + digest

    def put(self, rel: str, record: Record) -> None:
        parent, _, name = rel.rpartition("/")
        files = self._dirs.setdefault(parent, {})
        self._count += name not in files
        files[name] = record

    def adopt(self, parent: str, files: dict[str, Record]) -> None:
        """``put`` each of ``files`` (name -> record) in the directory ``parent``; the dict
        is kept as the directory's when it had none."""
        known = self._dirs.get(parent)
        if known is None:
            self._dirs[parent] = files
            self._count += len(files)
            return
        for name, record in files.items():
            self._count += name not in known
            known[name] = record

    def discard(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        files = self._dirs.get(parent)
        if files is not None and files.pop(name, None) is not None:
            self._count -= 1
            if not files:
                del self._dirs[parent]

    def __delitem__(self, rel: str) -> None:
        if rel not in self:
            raise KeyError(rel)
        self.discard(rel)

    def __contains__(self, rel: object) -> bool:
        if not isinstance(rel, str):
            return False
        parent, _, name = rel.rpartition("/")
        files = self._dirs.get(parent)
        return files is not None and name in files

    def __getitem__(self, rel: str) -> FileRef:
        parent, _, name = rel.rpartition("/")
        files = self._dirs.get(parent)
        record = None if files is None else files.get(name)
        if record is None:
            raise KeyError(rel)
        return self._ref(name, record)

    def _ref(self, name: str, record: Record) -> FileRef:
        if isinstance(record, bytes):
            dev, ino, st_mode, size, mtime, ctime, mode, number = _PACKED.unpack_from(record)
            seen: Signature = (dev, ino, st_mode, size, mtime, ctime)
            digest = record[_PACKED.size:] or None
        else:
            seen, mode, number, digest = record
        source = self._sources[number]
        where = source.name or name
        return FileRef(source, f"{source.directory}/{where}" if source.directory else where,
                       seen, digest, mode)

    def __iter__(self) -> Iterator[str]:
        for parent, files in self._dirs.items():
            if parent:
                for name in files:
                    yield f"{parent}/{name}"
            else:
                yield from files

    def __len__(self) -> int:
        return self._count

    def names(self, parent: str) -> Iterable[str]:
        """The names of the references in the directory ``parent`` ("" for the root)."""
        files = self._dirs.get(parent)
        return () if files is None else files.keys()

    def sizes(self) -> Iterator[int]:
        """The size of each referenced file, as the COPY saw it."""
        for files in self._dirs.values():
            for record in files.values():
                yield _PACKED.unpack_from(record)[3] if isinstance(record, bytes) else \
                    record[0][3]


@dataclass(slots=True)
class StagedRootfs:
    """A rootfs under construction. ``root`` is the directory that becomes ``rootfs/``.

    Paths used as keys are relative POSIX paths without a leading slash ("bin/hello").
    """

    root: Path
    privileged: bool = field(default_factory=lambda: os.geteuid() == 0)
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)
    devices: dict[str, DeviceNode] = field(default_factory=dict)
    lower: LowerTree | None = None
    refs: FileRefs = field(default_factory=FileRefs)  # COPY'd files, not on disk
    # What the build's cache keys read (None: no keys, --no-cache): files the build takes
    # from the user's directories must still be those (see acbuild.fs.keyed).
    keyed: KeyedFiles | None = None
    # A lazy restore's cache entry, whose files the rootfs uses in place (see CacheFiles);
    # kept once they are made real (hardlinks of the same inodes).
    cached: CacheFiles | None = None

    def set_owner(self, rel: str, uid: int, gid: int) -> None:
        """Give ``rel`` (already created, inside root, or a device record) an owner, on disk
        when we can."""
        if self.privileged and rel not in self.devices:
            os.lchown(self.root / rel, uid, gid)
            self.owners.pop(rel, None)
        else:
            self.owners[rel] = (uid, gid)

    def add_device(self, rel: str, node: DeviceNode, uid: int, gid: int) -> None:
        """Record a device node (or a FIFO kept as a record) at ``rel`` with its owner."""
        self.devices[rel] = node
        self.owners[rel] = (uid, gid)

    def absorb_nodes(self) -> None:
        """After a program ran in the rootfs: a device it made (the kernel lets anyone make
        the 0:0 whiteout node) becomes a record and leaves the disk; a record whose path it
        filled with something else gives way to that."""
        root = os.fspath(self.root)
        for rel in [r for r in self.devices
                    if os.path.lexists(f"{root}/{r}") or not _real_dirs(root, r)]:
            del self.devices[rel]  # replaced, or its directory removed or made a symlink
            self.owners.pop(rel, None)
        for top, _dirs, files, dir_fd in os.fwalk(root):
            for name in files:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                    continue
                rel = os.path.relpath(os.path.join(top, name), root)
                kind = "chr" if stat.S_ISCHR(st.st_mode) else "blk"
                node = DeviceNode(kind=kind, major=os.major(st.st_rdev),
                                  minor=os.minor(st.st_rdev), mode=stat.S_IMODE(st.st_mode))
                self.add_device(rel, node, *self.owner(rel, st))
                os.unlink(name, dir_fd=dir_fd)

    def owner(self, rel: str, st: os.stat_result) -> tuple[int, int]:
        """The owner the image records for ``rel``: a recorded one, else the file's own,
        with the unprivileged builder's ids read as 0 (what they are inside the sandbox)."""
        recorded = self.owners.get(rel)
        if recorded is not None:
            return recorded
        if self.privileged:
            return st.st_uid, st.st_gid
        uid = 0 if st.st_uid == os.geteuid() else st.st_uid
        gid = 0 if st.st_gid == os.getegid() else st.st_gid
        return uid, gid


def _real_dirs(root: str, rel: str) -> bool:
    """Whether every parent of ``rel`` below ``root`` is a directory (not a symlink)."""
    path = root
    for part in rel.split("/")[:-1]:
        path = f"{path}/{part}"
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
    return True


def remove_tree(path: Path, *, ignore_errors: bool = False) -> None:
    """Remove a staged tree even where the image made directories read-only (0555).

    Walked through directory descriptors, each opened with O_NOFOLLOW relative to its
    parent: a symlink is only ever unlinked, never followed, and a directory swapped for a
    symlink while we work cannot lead the removal (or a chmod) out of the tree.
    """
    path = Path(path)
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        if ignore_errors or not os.path.lexists(path):
            return
        raise
    try:
        remove_at(parent, path.name, ignore_errors=ignore_errors)
    finally:
        os.close(parent)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_at(dir_fd: int, name: str, *, ignore_errors: bool = False) -> None:
    """Remove ``name`` in the directory ``dir_fd`` and, if it is a directory, all below it."""
    try:
        _remove_at(dir_fd, name)
    except OSError:
        if not ignore_errors:
            raise


def _remove_at(dir_fd: int, name: str) -> None:
    # An explicit stack, not recursion: an archive can nest directories thousands deep.
    top = _open_dir(dir_fd, name)
    if top is None:
        return
    stack = [_Level(parent=dir_fd, name=name, fd=top, subdirs=_empty_files(top))]
    try:
        while stack:
            level = stack[-1]
            if level.subdirs:
                child = level.subdirs.pop()
                opened = _open_dir(level.fd, child)
                if opened is not None:
                    stack.append(_Level(parent=level.fd, name=child, fd=opened,
                                        subdirs=_empty_files(opened)))
                continue
            try:
                _in_dir(level.parent, os.rmdir, level.name)
            except FileNotFoundError:
                pass  # removed meanwhile by someone else
            except NotADirectoryError:
                # Replaced by a symlink or file while we emptied it (through its descriptor,
                # wherever it was moved): the name is unlinked, never followed.
                _in_dir(level.parent, os.unlink, level.name)
            except OSError as e:
                if e.errno != errno.ENOTEMPTY or level.retries > 3:
                    raise
                # Something appeared meanwhile (a file swapped for a directory): again.
                level.retries += 1
                level.subdirs = _empty_files(level.fd)
                continue
            stack.pop()
            os.close(level.fd)
    finally:
        for level in stack:
            os.close(level.fd)


@dataclass(slots=True, kw_only=True)
class _Level:
    parent: int
    name: str
    fd: int
    subdirs: list[str]
    retries: int = 0


def _open_dir(dir_fd: int, name: str) -> int | None:
    """``name`` opened as a directory (made writable through its descriptor, for a 0555
    directory from an image); None when it is not one and was unlinked instead."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        _in_dir(dir_fd, os.unlink, name)  # a file or symlink: unlinked, never followed
        return None
    with contextlib.suppress(OSError):
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o700 != 0o700:
            os.fchmod(fd, 0o700)
    return fd


def _empty_files(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; the subdirectories' names."""
    subdirs = []
    with os.scandir(fd) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(entry.name)
            continue
        try:
            _in_dir(fd, os.unlink, entry.name)
        except IsADirectoryError:
            subdirs.append(entry.name)  # swapped for a directory meanwhile
        except FileNotFoundError:
            pass
    return subdirs


def _in_dir(fd: int, action: Callable[..., None], name: str) -> None:
    """``action(name, dir_fd=fd)``, making ``fd`` writable (by descriptor) when it is not."""
    try:
        action(name, dir_fd=fd)
    except PermissionError:
        os.fchmod(fd, 0o700)
        action(name, dir_fd=fd)
