"""Walking a staged rootfs in archive order (finalize stage), its lower tree merged in.

Order: at every level, children sorted by name bytes, each directory followed by its
contents. A regular file is opened as it is listed and described from the open descriptor
(fstat, flistxattr): no separate lstat, and the data read is that of the file described.
The lower tree's files (a base directory left in place, see acbuild.image.basedir) are
opened through directory descriptors with O_NOFOLLOW, each directory checked to be the
one the base was listed from: a swap makes the build fail, never leads it elsewhere.

A file read from outside the staged tree (the base's, or a COPY's in the context) is
checked on its descriptor before it is read (against what the cache key read, when keys
were computed: acbuild.fs.keyed) and again once it is read (``close``): a file rewritten,
grown or shrunk meanwhile fails the build rather than go into the image.

A lazily restored rootfs's files are a cache entry's (its lower tree, or hardlinks of those
inodes made since: acbuild.fs.staging.CacheFiles). Each must be, at its path, the inode
the restore verified at that path, and the bytes taken from it are hashed as they are
written and compared with the sha256 verified for it: an edit since the restore, even one
through a shared mapping that moves no timestamp, fails the build and discards the entry.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from acbuild.errors import AcbuildError, BuildError, ImageError
from acbuild.fs.keyed import (
    Signature,
    by_name_bytes,
    listing_signature,
    shared_signature,
    signature,
)
from acbuild.fs.staging import DeviceNode, FileRef, StagedRootfs, xattr_field, xattrs_of
from acbuild.image.basedir import CONTENT_CHANGED, base_changed
from acbuild.image.tarwrite import TarEntry
from acbuild.image.unstaged import content_changed, open_context_root, open_ref, ref_changed

# O_NONBLOCK: if a file was swapped for a FIFO since it was listed, open must not hang.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_UPPER = -1  # a child of the staged tree (its lstat is known)
_UPPER_FILE = -2  # a regular file of the staged tree (opened, then described)
_REF = -3  # a file a COPY left in the build context (rootfs.refs)
_ENTRY_CHANGED = "does not hold the bytes the entry recorded"
_SMALL = 64 << 10  # files up to this size are read whole when loaded
# (rel, lstat or None, where: _UPPER, _UPPER_FILE or the lower directory's descriptor)
Child = tuple[str, "os.stat_result | None", int]


def clamp(st: os.stat_result, epoch: int) -> int:
    # Floor to whole seconds; before 1970 cannot be written in a ustar field, so clamp to 0.
    return max(0, min(st.st_mtime_ns // 1_000_000_000, epoch))


@dataclass(slots=True)
class _Loaded:
    """A file opened and described: its data read whole (``data``) or open (``fd``)."""

    st: os.stat_result
    xattrs: tuple[tuple[str, bytes], ...]
    data: bytes | None
    fd: int
    ref: FileRef | None = None  # a COPY's file left in the context: its reference

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(slots=True)
class _Level:
    """A directory being archived: its children and the next one."""

    children: list[Child]
    lower_fd: int
    pos: int = 0

    def discard(self) -> None:
        """After a failure: close the lower directory."""
        if self.lower_fd >= 0:
            os.close(self.lower_fd)


def _read_rest(fd: int, size: int, data: bytes) -> bytes:
    """``data``, the start of a file, with what follows it up to ``size`` bytes (fewer
    only if the file shrank: the writer reports it)."""
    while len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            break
        data += more
    return data


class RootWalker:
    """Produces the entries of one rootfs; remembers inodes to emit hardlinks.

    ``entries()`` yields ``(entry, fd, data)``: ``fd`` is an open descriptor of a regular
    file's data (the caller reads ``entry.size`` bytes, then calls ``check(fd)`` and, in
    any case, ``close(fd)``), else -1.
    """

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
        self.lower = rootfs.lower
        self.lower_bytes = 0
        self.contexts: dict[str, int] = {}  # build context -> its open descriptor
        self.lower_prefix = "" if self.lower is None else os.fspath(self.lower.source) + "/"
        # what the keys read of the lower tree's files, when they are the user's
        self.lower_keyed = self.rootfs.keyed if self.lower is not None and \
            self.lower.user_files else None
        # the lower tree is a cache entry's (its files are checked against ``cached``)
        self.lower_cached = self.lower is not None and not self.lower.user_files
        # descriptors handed out of a file from outside the staged tree -> what must hold
        # once it is read: (rel, where, its signature when opened, the digest of what is
        # read and the one the key hashed, when it hashed one)
        self.handed: dict[int, tuple[str, int, Signature, hashlib._Hash | None,
                                     bytes | None]] = {}

    def digest(self, fd: int) -> hashlib._Hash | None:
        """What to hash the data read from ``fd`` into, for ``check`` (None: nothing)."""
        handed = self.handed.get(fd)
        return None if handed is None else handed[3]

    def check(self, fd: int) -> None:
        """After the caller read ``fd`` (through ``digest(fd)``): the file did not change
        while it was read, and what was read is what the key hashed."""
        handed = self.handed.get(fd)
        if handed is not None:
            rel, where, seen, got, expected = handed
            self._unchanged(fd, rel, where, seen)
            if got is not None and got.digest() != expected:
                raise self._changed(rel, where, CONTENT_CHANGED)

    def _expected(self, rel: str, where: int, st: os.stat_result,
                  ref: FileRef | None = None) -> bytes | None:
        """The sha256 a file must hold: the one the key hashed for a file from outside the
        staged tree (``ref``'s for a reference), or the one the restore verified for a
        cache entry's inode; if any."""
        if where == _REF:
            return (ref or self.rootfs.refs[rel]).digest
        if self._from_cache(where, st):
            cached = self.rootfs.cached  # None: _cache_holds refuses the file first
            return None if cached is None else cached.expected(rel, st)
        keyed = self.lower_keyed
        return None if keyed is None or where == _UPPER_FILE else \
            keyed.digest(self.lower_prefix + rel)

    def _from_cache(self, where: int, st: os.stat_result) -> bool:
        """Whether the file is a cache entry's: in its lower tree, or a staged hardlink of
        one of its inodes (made real by materialize)."""
        if where >= 0:
            return self.lower_cached
        cached = self.rootfs.cached
        return where == _UPPER_FILE and cached is not None and cached.ours(st)

    def _hand(self, fd: int, rel: str, where: int, st: os.stat_result,
              ref: FileRef | None = None) -> None:
        expected = self._expected(rel, where, st, ref)
        self.handed[fd] = (rel, where, self._signature(where, st),
                           None if expected is None else hashlib.sha256(), expected)

    def close(self, fd: int) -> None:
        self.handed.pop(fd, None)
        os.close(fd)

    def _signature(self, where: int, st: os.stat_result) -> Signature:
        """What must not change while a file is read: its signature (acbuild.fs.keyed);
        a cache entry's file, all of it but the ctime. Another build sharing the cache
        links the entry's inodes (materialize, a snapshot), which moves the ctime (and the
        link count) and nothing the image takes; the content is hashed as it is read and
        compared with the verified digest, the rest was compared when it was opened."""
        return shared_signature(st) if self._from_cache(where, st) else signature(st)

    def _unchanged(self, fd: int, rel: str, where: int, seen: Signature) -> None:
        if self._signature(where, os.fstat(fd)) != seen:
            raise self._changed(rel, where, "changed while it was read")

    def _changed(self, rel: str, where: int, what: str) -> AcbuildError:
        if where == _UPPER_FILE or (where >= 0 and self.lower_cached):
            cached = self.rootfs.cached
            if cached is None:  # a cache lower tree without its record: nothing vouches
                assert self.lower is not None
                return base_changed(self.lower.source, rel, what)
            return cached.changed(rel, _ENTRY_CHANGED if what == CONTENT_CHANGED else what)
        if where == _REF:
            ref = self.rootfs.refs[rel]
            if what == CONTENT_CHANGED and self.rootfs.keyed is not None:
                self.rootfs.keyed.stale(os.path.join(ref.root, ref.rel))  # the next build rehashes
            return content_changed(ref.rel, ref.span) if what == CONTENT_CHANGED else \
                ref_changed(ref)
        assert self.lower is not None
        if what == CONTENT_CHANGED and self.lower_keyed is not None:
            self.lower_keyed.stale(self.lower_prefix + rel)
        return base_changed(self.lower.source, rel, what)

    def archive_name(self, rel: str) -> str:
        if not self.prefix:
            return rel
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def entries(self) -> Iterator[tuple[TarEntry, int, bytes | None]]:
        """``(entry, fd, data)``: a regular file's data is ``data`` (small files, read
        whole) or ``fd`` (open, for the caller to read ``entry.size`` bytes of and close)."""
        try:
            root_st = os.lstat(self.root)
        except OSError as e:
            raise BuildError(f"cannot read the rootfs {self.root}: {e.strerror}") from None
        lower_root = -1
        if self.lower is not None:
            try:
                lower_root = os.open(self.lower.source, _DIR_FLAGS)
            except OSError as e:
                if self.lower_cached:
                    raise self._lower_changed("", f"cannot be opened ({e.strerror})") from None
                raise BuildError(f"cannot read the base {self.lower.source}: "
                                 f"{e.strerror}") from None
        stack: list[_Level] = []
        try:
            if self.prefix:
                root = self.entry("", root_st, _UPPER)
                assert root is not None
                yield root
            lower_fd = self._lower_dir("", root_st, lower_root, "")
            stack.append(_Level(self.children("", lower_fd), lower_fd))
            entry, file_entry, devices = self.entry, self._file_entry, self.rootfs.devices
            while stack:
                level = stack[-1]
                children = level.children
                while level.pos < len(children):
                    rel, st, where = children[level.pos]
                    level.pos += 1
                    if where != _UPPER and rel not in devices:  # most entries: a file
                        yield file_entry(self.archive_name(rel), rel, where)
                        continue
                    produced = entry(rel, st, where)
                    if produced is None:
                        continue
                    yield produced
                    if produced[0].kind == "dir":
                        assert st is not None
                        lower_fd = self._lower_dir(rel, st, level.lower_fd,
                                                   rel.rpartition("/")[2])
                        stack.append(_Level(self.children(rel, lower_fd), lower_fd))
                        break
                else:
                    stack.pop()
                    if level.lower_fd >= 0:
                        os.close(level.lower_fd)
        finally:
            for level in stack:
                level.discard()
            if lower_root >= 0:
                os.close(lower_root)
            for fd in self.contexts.values():
                os.close(fd)

    def _lower_dir(self, rel: str, st: os.stat_result, parent: int, name: str) -> int:
        """The lower tree's directory merged into the staged directory ``rel`` (opened), or
        -1 when there is none: not one made from the base, or replaced since."""
        lower = self.lower
        if lower is None or parent < 0 or rel not in lower.dirs:
            return -1
        upper, source = lower.dirs[rel]
        if (st.st_dev, st.st_ino) != upper:
            return -1
        try:
            fd = os.dup(parent) if not rel else os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if self.lower_cached:
                raise self._lower_changed(rel, f"cannot be opened ({e.strerror})") from None
            raise BuildError(f"base directory {lower.source} changed during the build: "
                             f"cannot open {rel!r}: {e.strerror}") from None
        found = os.fstat(fd)
        if (found.st_dev, found.st_ino) != source:
            os.close(fd)
            raise self._lower_changed(rel, "is not the directory it was")
        return fd

    def _lower_changed(self, rel: str, what: str) -> AcbuildError:
        """A directory of the lower tree that is not the one listed."""
        assert self.lower is not None
        if self.lower_cached and self.rootfs.cached is not None:
            return self.rootfs.cached.changed(rel, what)
        return BuildError(f"base directory {self.lower.source} changed during the build: "
                          f"{rel or '.'!r} {what}")

    def children(self, rel: str, lower_fd: int) -> list[Child]:
        """The children of directory ``rel``, sorted by name bytes."""
        directory = f"{self.root}/{rel}" if rel else self.root
        found: dict[str, tuple[os.stat_result | None, int]] = {}
        try:
            with os.scandir(directory) as it:
                for item in it:
                    if item.is_file(follow_symlinks=False):
                        found[item.name] = (None, _UPPER_FILE)
                    else:
                        found[item.name] = (item.stat(follow_symlinks=False), _UPPER)
            if lower_fd >= 0:
                with os.scandir(lower_fd) as it:
                    listed = [(item.name, item.is_dir(follow_symlinks=False),
                               item.is_file(follow_symlinks=False)) for item in it]
                assert self.lower is not None
                if listing_signature(listed) != self.lower.listings.get(rel):
                    raise self._lower_changed(rel, "does not hold what it did")
                for name, _, is_file in listed:
                    if is_file and name not in found:
                        found[name] = (None, lower_fd)
        except OSError as e:
            raise BuildError(f"cannot read {self.archive_name(rel) or '.'}: {e.strerror}") from None
        for name in self.rootfs.refs.names(rel):
            found[name] = (None, _REF)  # over a base's file of that name
        for name in self.virtual.get(rel, {}):
            found.setdefault(name, (None, _UPPER))
        if not rel:
            return [(n, *found[n]) for n in by_name_bytes(found, str)]
        return [(f"{rel}/{n}", *found[n]) for n in by_name_bytes(found, str)]

    def entry(self, rel: str, st: os.stat_result | None,
              where: int) -> tuple[TarEntry, int, bytes | None] | None:
        name = self.archive_name(rel)
        node = self.rootfs.devices.get(rel)
        if node is not None:
            return self._device_entry(name, rel, node, st), -1, None
        if where != _UPPER:
            return self._file_entry(name, rel, where)
        assert st is not None
        path = f"{self.root}/{rel}" if rel else self.root
        mode = st.st_mode
        linkname, major, minor = "", 0, 0
        if stat.S_ISDIR(mode):
            kind = "dir"
        elif stat.S_ISLNK(mode):
            kind = "symlink"
            try:
                linkname = os.readlink(path)
            except OSError as e:
                raise BuildError(f"cannot read symlink {path}: {e.strerror}") from None
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = "chr" if stat.S_ISCHR(mode) else "blk"
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            kind = "fifo"
        elif stat.S_ISREG(mode):  # listed as something else, a file by now: opened below
            return self._file_entry(name, rel, _UPPER_FILE)
        else:
            return None  # sockets and anything else a tar cannot hold
        uid, gid = self.rootfs.owner(rel, st)
        return TarEntry(name=name, kind=kind, mode=stat.S_IMODE(mode), uid=uid, gid=gid,
                        mtime=clamp(st, self.epoch), linkname=linkname, devmajor=major,
                        devminor=minor, xattrs=xattrs_of(path)), -1, None

    def _load(self, rel: str, where: int) -> _Loaded:
        """Open a file to archive (checked to be a regular file, or the referenced one),
        describe it, and read it whole when it is small."""
        ref = None
        if where == _REF:
            ref = self.rootfs.refs[rel]
            context = self.contexts.get(ref.root)
            if context is None:  # opened for the first file read from it
                context = self.contexts[ref.root] = open_context_root(ref)
            fd, st = open_ref(ref, context)
            xattrs: tuple[tuple[str, bytes], ...] = ()  # a copy carries none
        elif where >= 0:
            fd, st = self._open_lower(rel, where)
            try:
                if self.lower_cached:
                    every = xattrs_of(fd)
                    self._cache_holds(rel, where, st, every)
                    xattrs = every if self.rootfs.privileged else tuple(
                        x for x in every if x[0].startswith("user."))
                else:
                    xattrs = xattrs_of(fd, user_only=not self.rootfs.privileged)
            except BaseException:
                os.close(fd)
                raise
        else:
            name = self.archive_name(rel)
            try:
                fd = os.open(f"{self.root}/{rel}", _FILE_FLAGS)
            except OSError as e:
                raise BuildError(f"cannot read {name}: {e.strerror}") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise BuildError(f"{name} changed while the image was being written")
                xattrs = xattrs_of(fd)
                if self._from_cache(where, st):  # a hardlink of a cache entry's file
                    self._cache_holds(rel, where, st, xattrs)
            except BaseException:
                os.close(fd)
                raise
        size = st.st_size
        if size > _SMALL:
            return _Loaded(st, xattrs, None, fd, ref)
        try:
            data = os.read(fd, size) if size else b""
            if len(data) < size:
                data = _read_rest(fd, size, data)
            # from outside the staged tree, or a cache entry's: unchanged while read
            if where != _UPPER_FILE or self._from_cache(where, st):
                self._unchanged(fd, rel, where, self._signature(where, st))
                expected = self._expected(rel, where, st, ref)
                if expected is not None and hashlib.sha256(data).digest() != expected:
                    raise self._changed(rel, where, CONTENT_CHANGED)
        except OSError as e:
            raise BuildError(f"cannot read {self.archive_name(rel)}: {e.strerror}") from None
        finally:
            os.close(fd)
        return _Loaded(st, xattrs, data, -1, ref)

    def _open_lower(self, rel: str, where: int) -> tuple[int, os.stat_result]:
        """A base's file, opened in its directory ``where``: a regular file still, and
        with cache keys the very one the key read (signatures: see acbuild.fs.keyed); a
        cache entry's, one of the inodes its restore verified (a file renamed over it
        since, or grown or shrunk, is not)."""
        try:
            fd = os.open(rel.rpartition("/")[2], _FILE_FLAGS, dir_fd=where)
        except OSError as e:
            raise self._changed(rel, where, f"cannot be opened ({e.strerror})") from None
        st = os.fstat(fd)
        keyed = self.lower_keyed
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._changed(rel, where, "is no longer a regular file")
        if keyed is not None and not keyed.holds(self.lower_prefix + rel, st):
            os.close(fd)
            raise self._changed(rel, where, "is not the file the cache key read")
        return fd, st

    def _cache_holds(self, rel: str, where: int, st: os.stat_result,
                     xattrs: tuple[tuple[str, bytes], ...]) -> None:
        """A cache entry's file shows what its restore verified (all but the content,
        which is compared as it is read)."""
        cached = self.rootfs.cached
        if cached is None or not cached.holds(rel, st, xattr_field(xattrs)):
            raise self._changed(rel, where, "is not the file the entry held")

    def _file_entry(self, name: str, rel: str,
                    where: int) -> tuple[TarEntry, int, bytes | None]:
        loaded = self._load(rel, where)
        st = loaded.st
        try:
            size, linkname, kind = st.st_size, "", "file"
            ref = loaded.ref
            if ref is not None:
                # What a copy would be: the COPY's mode and owner, one link, its mtime.
                if loaded.fd >= 0:
                    self._hand(loaded.fd, rel, where, st, ref)
                return TarEntry(name=name, kind="file", mode=ref.mode, uid=ref.uid,
                                gid=ref.gid, mtime=max(0, min(ref.mtime, self.epoch)),
                                size=size), loaded.fd, loaded.data
            if st.st_nlink > 1:
                first = self.links.setdefault((st.st_dev, st.st_ino), name)
                if first != name:
                    kind, size, linkname = "hardlink", 0, first
            if where >= 0 and kind == "file":
                self.lower_bytes += size
                assert self.lower is not None
                if self.lower_bytes > self.lower.max_bytes:
                    raise ImageError(f"image content is larger than the limit of "
                                     f"{self.lower.max_bytes} bytes",
                                     hint="raise the limit with --max-image-size")
            uid, gid = self.rootfs.owner(rel, st)
            entry = TarEntry(name=name, kind=kind, mode=stat.S_IMODE(st.st_mode), uid=uid,
                             gid=gid, mtime=clamp(st, self.epoch), size=size,
                             linkname=linkname,
                             xattrs=loaded.xattrs if kind == "file" else ())
        except BaseException:
            loaded.discard()
            raise
        if kind == "hardlink":
            loaded.discard()
            return entry, -1, None
        if loaded.fd >= 0 and (where != _UPPER_FILE or self._from_cache(where, st)):
            self._hand(loaded.fd, rel, where, st)
        return entry, loaded.fd, loaded.data

    def _device_entry(self, name: str, rel: str, node: DeviceNode,
                      st: os.stat_result | None) -> TarEntry:
        if st is not None:
            uid, gid = self.rootfs.owner(rel, st)
            mtime = clamp(st, self.epoch)
        else:
            uid, gid = self.rootfs.owners.get(rel, (0, 0))
            mtime = self.epoch
        return TarEntry(
            name=name, kind=node.kind, mode=node.mode & 0o7777, uid=uid, gid=gid, mtime=mtime,
            devmajor=node.major if node.kind != "fifo" else 0,
            devminor=node.minor if node.kind != "fifo" else 0,
        )
