"""Snapshot trees (execute stage): the step cache's copies of a rootfs, and their digest.

A snapshot keeps names, kinds, modes, owners (as root), mtimes, xattrs and inner hardlinks;
device nodes are records in the StagedRootfs (the cache stores them in meta.json) and a tree
holding one on disk is refused, never copied with mknod;
files are hardlinked where nothing can write into them. The digest covers everything a
restore must reproduce, so a damaged snapshot is found before it is used.

A restore for a stage that no RUN follows need not copy or link the files at all
(``restore_lazily``): the staged tree gets the snapshot's directories, symlinks and FIFOs,
and the snapshot's own tree becomes the rootfs's lower tree, whose files the finalizer reads
where they are (see acbuild.image.basedir). Its files are still verified against the digest:
each one's content is hashed, unless its signature (device, inode, size, mtime, ctime) is
the one recorded when it was last hashed — see ``FileSignatures``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from acbuild.cache.warm import settled
from acbuild.fs.framing import frame
from acbuild.fs.keyed import Listing, listing_signature
from acbuild.fs.staging import CachedFile, remove_tree, xattr_field, xattrs_of

_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)

# (dev, ino) -> (size, mtime_ns, sha256, where) of files a linked snapshot or restore has
# read: a later snapshot of the same rootfs links them again without reading them, from
# ``where`` when the inode is shared with something outside the rootfs and the cache has its
# own copy there (b"": the inode itself; else ``where`` + NUL + the ctime the file had).
# Nothing in a stage without RUN writes into a file in place; should someone else change
# one, the stored digest no longer matches and the next restore's check discards the entry.
KnownDigests = dict[tuple[int, int], tuple[int, int, bytes, bytes]]

# rel -> (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, sha256, xattrs) of a snapshot's file,
# taken when its content was hashed and found to be what the snapshot's digest says, and only
# once that stat had settled (acbuild.cache.warm.settled). Any later change to the inode (a
# write, truncate, chmod, chown, xattr, utime, link or unlink) sets its ctime to the time of
# the change, which no unprivileged process can set back; a file put in its place is another
# inode or, if the number is reused, has a new ctime. So a file that still shows all five
# holds the content that was hashed, and is not read again. Only the cache's own tree is
# trusted this way: its directory is private to the user (acbuild.fs.private).
# The xattrs (as the digest frames them) are kept with it: a file that matches is not
# listed for them either.
FileSignatures = dict[bytes, tuple[int, int, int, int, int, bytes, bytes]]

# rel -> (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of every other entry of the tree
# (directories, the root b"" included, symlinks, FIFOs, a regular file's further names),
# taken as FileSignatures are: settled, in a walk whose digest matched.
EntrySignatures = dict[bytes, tuple[int, int, int, int, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeSignatures:
    """What a restore kept of a snapshot it verified. When every entry of the tree still
    shows the signature recorded for it, and the tree has no entry the record lacks, the
    tree is the one that was hashed — each name, kind, mode, owner, xattr, link count,
    content and symlink target unchanged (any change to one moves its inode's ctime; an
    entry added, removed or renamed moves its directory's) — so its digest is the one
    checked then and nothing is hashed (``restore_lazily``'s quick walk). ``listings``: each
    directory's listing_signature, by relative path (str), as the lower tree needs it."""

    files: FileSignatures
    entries: EntrySignatures
    listings: dict[str, Listing]

    def complete(self) -> bool:
        """Whether the record can stand for a whole tree: its root is in it, and no name is
        both a file's first link and another entry (the quick walk counts names)."""
        return b"" in self.entries and not (self.entries.keys() & self.files.keys())


NO_SIGNATURES = TreeSignatures(files={}, entries={}, listings={})


class _Changed(Exception):
    """The tree is not the one recorded: the full walk decides."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LazyTree:
    """What ``restore_lazily`` made: the staged tree's description of the snapshot as a
    lower tree (acbuild.fs.staging.LowerTree's ``dirs`` and ``listings``), the snapshot's
    digest and byte count, and the signatures of the files it verified."""

    digest: str
    size: int
    dirs: dict[str, tuple[tuple[int, int], tuple[int, int]]]
    listings: dict[str, Listing]
    signatures: TreeSignatures
    # path of every name of a regular file -> its inode, and inode -> what was verified of
    # the file (acbuild.fs.staging.CacheFiles: every later reader of the lower tree
    # compares with them)
    paths: dict[str, tuple[int, int]]
    files: dict[tuple[int, int], CachedFile]


def copy_tree_verified(src: Path, dest: Path, *, link: bool, known: KnownDigests | None = None,
                       final: Path | None = None) -> tuple[str, int]:
    """Copy the tree ``src`` to the new directory ``dest`` with modes, owners (as root),
    mtimes, xattrs and inner hardlinks; files are hardlinked when ``link``. Returns the digest
    of what was copied (names, kinds, modes, owners, xattrs, contents) and its byte count.

    Digests of linked files are added to ``known``. ``final`` (a snapshot: ``dest`` is
    renamed there once complete) makes the copy keep to the cache's own inodes: a file
    linked to something else (the user's file, hardlinked into the rootfs) is copied, unless
    ``known`` names a copy the cache has already; files in ``known`` are not read again.
    """
    copier = _TreeCopier(link, {} if known is None else known,
                         None if final is None else os.fsencode(final), os.fsencode(dest))
    st = os.lstat(src)
    os.mkdir(dest, 0o700)
    # Every directory first, then what goes in them: on ext4, filling each directory right
    # after making it costs several times more per new file.
    _make_dirs(os.fsencode(src), os.fsencode(dest))
    copier.directory(os.fsencode(src), os.fsencode(dest), b"", st)
    return "sha256:" + copier.h.hexdigest(), copier.size


def restore_lazily(src: Path, dest: Path, *, recorded: TreeSignatures, digest: str,
                   known: KnownDigests) -> LazyTree:
    """Make the new directory ``dest`` the staged tree of the snapshot ``src`` without its
    regular files (they stay in ``src``, the lower tree): directories, symlinks and FIFOs as
    copy_tree_verified makes them. The digest is that of the whole snapshot: ``digest`` (the
    one ``recorded`` was verified against) when every entry shows its recorded signature
    (see TreeSignatures), else hashed, where a file whose signature is recorded is taken
    to have the digest recorded with it and any other is read. The digests of the files
    are added to ``known`` (a later snapshot links them)."""
    st = os.lstat(src)
    if recorded.complete():
        quick = _TreeCopier(False, {}, None, os.fsencode(dest), recorded=recorded.files)
        os.mkdir(dest, 0o700)
        try:
            _make_dirs(os.fsencode(src), os.fsencode(dest))
            seen = quick.unchanged(os.fsencode(src), os.fsencode(dest), b"", st, recorded)
            if seen == len(recorded.files) + len(recorded.entries):
                known.update(quick.known)
                return LazyTree(digest=digest, size=quick.size, dirs=quick.dirs,
                                listings=quick.listings, signatures=recorded,
                                paths=quick.paths, files=quick.files)
        except _Changed:
            pass
        remove_tree(dest)
    copier = _TreeCopier(False, known, None, os.fsencode(dest), recorded=recorded.files)
    os.mkdir(dest, 0o700)
    _make_dirs(os.fsencode(src), os.fsencode(dest))
    copier.directory(os.fsencode(src), os.fsencode(dest), b"", st)
    return LazyTree(digest="sha256:" + copier.h.hexdigest(), size=copier.size,
                    dirs=copier.dirs, listings=copier.listings,
                    signatures=TreeSignatures(files=copier.signatures,
                                              entries=copier.entries,
                                              listings=copier.listings),
                    paths=copier.paths, files=copier.files)


class _TreeCopier:
    def __init__(self, link: bool, known: KnownDigests, final: bytes | None,
                 dest_root: bytes, *, recorded: FileSignatures | None = None) -> None:
        self.link = link
        # Not None: a lazy restore (regular files are left in the source, see restore_lazily)
        self.recorded = recorded
        self.signatures: FileSignatures = {}
        # a lazy restore's: each regular file's path -> its inode -> what was verified
        self.paths: dict[str, tuple[int, int]] = {}
        self.files: dict[tuple[int, int], CachedFile] = {}
        self.entries: EntrySignatures = {}
        self.dirs: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
        self.listings: dict[str, Listing] = {}
        self.started_ns = time.time_ns()
        self.known = known
        self.final = final  # None: a restore (every file is the cache's own: link it)
        self.dest_root = dest_root
        self.h = hashlib.sha256()
        self.size = 0
        self.inodes: dict[tuple[int, int], bytes] = {}
        self.root = os.geteuid() == 0

    def meta(self, kind: bytes, rel: bytes, st: os.stat_result, xattrs: bytes) -> None:
        frame(self.h, kind, rel, b"%o:%d:%d" % (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid),
              xattrs)

    def directory(self, src: bytes, dest: bytes, rel: bytes, st: os.stat_result) -> None:
        # Read once: the xattrs hashed are the ones set on the copy (a second read, after
        # the children, would take whatever was set in between).
        pairs = xattrs_of(src)
        self.meta(b"dir", rel, st, xattr_field(pairs))
        self._record(rel, st)
        with os.scandir(src) as it:
            if self.recorded is None:
                names = sorted(e.name for e in it)
            else:
                found = [(e.name, e.is_dir(follow_symlinks=False),
                          e.is_file(follow_symlinks=False)) for e in it]
                names = sorted(name for name, _, _ in found)
                made = os.lstat(dest)
                key = os.fsdecode(rel)
                self.dirs[key] = ((made.st_dev, made.st_ino), (st.st_dev, st.st_ino))
                self.listings[key] = listing_signature(
                    (os.fsdecode(n), d, f) for n, d, f in found)
        for name in names:
            child = rel + b"/" + name if rel else name
            self.entry(src + b"/" + name, dest + b"/" + name, child)
        self.finish(dest, st, pairs)

    def entry(self, src: bytes, dest: bytes, rel: bytes) -> None:
        st = os.lstat(src)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if not os.path.isdir(dest):  # made beforehand, unless new since
                os.mkdir(dest, 0o700)
            self.directory(src, dest, rel, st)
        elif stat.S_ISREG(mode):
            self.file(src, dest, rel, st)
        elif stat.S_ISLNK(mode):
            target = os.readlink(src)
            frame(self.h, b"symlink", rel, target)
            self.meta(b"symlink", rel, st, b"")
            os.symlink(target, dest)
            self.finish(dest, st, [])
            self._record(rel, st)
        elif stat.S_ISFIFO(mode):
            self._record(rel, st)
            pairs = xattrs_of(src)
            self.meta(b"node", rel, st, xattr_field(pairs))
            frame(self.h, b"%o" % stat.S_IFMT(mode), b"%d" % st.st_rdev)
            os.mkfifo(dest, stat.S_IMODE(mode))
            self.finish(dest, st, pairs)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            # Devices live as records in the StagedRootfs (see acbuild.fs.staging), never on
            # disk: one here came from elsewhere (an old cache) and is not made on the host.
            raise OSError(errno.EPERM, f"device node {os.fsdecode(rel)!r} in a snapshot tree")
        # sockets: the finalizer leaves them out, and so does the snapshot

    def file(self, src: bytes, dest: bytes, rel: bytes, st: os.stat_result) -> None:
        if st.st_nlink > 1:
            first = self.inodes.setdefault((st.st_dev, st.st_ino), rel)
            if first != rel:
                frame(self.h, b"hardlink", rel, first)
                if self.recorded is None:
                    os.link(self.dest_root + b"/" + first, dest)
                else:
                    self.paths[os.fsdecode(rel)] = (st.st_dev, st.st_ino)
                self._record(rel, st)
                return
        if self.recorded is not None:
            self._verified(src, rel, st)
            return
        pairs = xattrs_of(src)
        self.meta(b"file", rel, st, xattr_field(pairs))
        self.size += st.st_size
        if self.link:
            digest = self._linked(src, dest, st)
            if digest is not None:
                frame(self.h, digest)
                return
        h = hashlib.sha256()
        with open(src, "rb") as f, open(dest, "xb") as out:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                if len(chunk) == _CHUNK and chunk == _ZEROS:
                    out.seek(_CHUNK, os.SEEK_CUR)  # a hole (a sparse lastlog): not written
                else:
                    out.write(chunk)
            out.truncate()  # the size, when the file ends in a hole
        frame(self.h, h.digest())
        self.finish(dest, st, pairs)
        if self.link and self.final is not None:
            # The cache's own copy of a shared file: later snapshots link that instead.
            where = self.final + dest[len(self.dest_root):] + b"\0%d" % st.st_ctime_ns
            self.known[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns, h.digest(), where)

    def _record(self, rel: bytes, st: os.stat_result) -> None:
        """A lazy restore's signature of an entry other than a file's first link (taken
        before its listing or target was read: a change after moves the ctime past it)."""
        if self.recorded is not None and settled(st, self.started_ns):
            self.entries[rel] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                 st.st_ctime_ns)

    def unchanged(self, src: bytes, dest: bytes, rel: bytes, st: os.stat_result,
                  recorded: TreeSignatures) -> int:
        """The quick walk of a lazy restore below the directory ``src`` (lstat ``st``):
        every entry's signature compared with ``recorded``'s, the staged directories,
        symlinks and FIFOs made as ``directory`` makes them, nothing hashed. Raises _Changed
        at the first entry that differs or is not recorded; returns the entries seen (the
        caller compares the count with the record's, so none is missing)."""
        files, entries = recorded.files, recorded.entries
        key = os.fsdecode(rel)
        listing = recorded.listings.get(key)
        if listing is None or entries.get(rel) != (st.st_dev, st.st_ino, st.st_size,
                                                   st.st_mtime_ns, st.st_ctime_ns):
            raise _Changed
        made = os.lstat(dest)
        self.dirs[key] = ((made.st_dev, made.st_ino), (st.st_dev, st.st_ino))
        self.listings[key] = listing
        with os.scandir(src) as it:
            children = [e.name for e in it]
        seen = 1
        for name in children:
            path, child = src + b"/" + name, rel + b"/" + name if rel else name
            cst = os.lstat(path)
            sig = (cst.st_dev, cst.st_ino, cst.st_size, cst.st_mtime_ns, cst.st_ctime_ns)
            mode = cst.st_mode
            if stat.S_ISDIR(mode):
                seen += self.unchanged(path, dest + b"/" + name, child, cst, recorded)
                continue
            seen += 1
            if stat.S_ISREG(mode):
                first = files.get(child)
                if first is not None and first[:5] == sig:
                    self.size += cst.st_size
                    self.known[(cst.st_dev, cst.st_ino)] = (cst.st_size, cst.st_mtime_ns,
                                                            first[5], b"")
                    self.files[(cst.st_dev, cst.st_ino)] = _cached(cst, first[6], first[5])
                elif first is not None or entries.get(child) != sig:
                    raise _Changed
                # a further name of a file is recorded with its inode: the one linked there
                self.paths[os.fsdecode(child)] = (cst.st_dev, cst.st_ino)
            elif entries.get(child) != sig:
                raise _Changed
            else:
                if stat.S_ISLNK(mode):
                    os.symlink(os.readlink(path), dest + b"/" + name)
                elif stat.S_ISFIFO(mode):
                    os.mkfifo(dest + b"/" + name, stat.S_IMODE(mode))
                else:
                    raise _Changed  # a device node or socket: the full walk says what it is
                self.finish(dest + b"/" + name, cst, xattrs_of(path))
                if os.lstat(path).st_ctime_ns != cst.st_ctime_ns:
                    raise _Changed  # changed while its target or xattrs were read
        self.finish(dest, st, xattrs_of(src))
        if os.lstat(src).st_ctime_ns != st.st_ctime_ns:
            raise _Changed  # changed while its listing or xattrs were read
        return seen

    def _verified(self, src: bytes, rel: bytes, st: os.stat_result) -> None:
        """A file a lazy restore leaves in the snapshot, hashed into the digest as a copy
        would be: with the xattrs and digest recorded when its signature is unchanged (an
        xattr set since changed the ctime too), else read, and its signature kept once
        settled."""
        assert self.recorded is not None
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        seen = self.recorded.get(rel)
        if seen is not None and seen[:5] == sig:
            digest, xattrs = seen[5], seen[6]
            self.signatures[rel] = seen
        else:
            xattrs = _xattr_field(src)
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                digest = _sha256_of(f)
                after = os.fstat(fd)
            if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns,
                    after.st_ctime_ns) == sig and settled(st, self.started_ns):
                self.signatures[rel] = (*sig, digest, xattrs)
        self.meta(b"file", rel, st, xattrs)
        self.size += st.st_size
        frame(self.h, digest)
        self.known[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns, digest, b"")
        self.paths[os.fsdecode(rel)] = (st.st_dev, st.st_ino)
        self.files[(st.st_dev, st.st_ino)] = _cached(st, xattrs, digest)

    def _linked(self, src: bytes, dest: bytes, st: os.stat_result) -> bytes | None:
        """Link the file (or the cache's copy of it); its digest, or None to copy it."""
        seen = self.known.get((st.st_dev, st.st_ino))
        if self.final is not None and seen is not None and seen[:2] == (st.st_size,
                                                                        st.st_mtime_ns):
            where, _, ctime = seen[3].partition(b"\0")
            if ctime and int(ctime) != st.st_ctime_ns:
                return None  # the shared file was touched since: read it again
            try:
                os.link(where or src, dest)
            except OSError:
                return None  # that snapshot is gone (a failed store)
            now = os.lstat(dest)
            if (now.st_size, now.st_mtime_ns) == seen[:2]:
                return seen[2]
            os.unlink(dest)
            return None
        if self.final is not None and st.st_nlink != 1:
            return None  # shared with something outside the rootfs: the cache copies it
        try:
            os.link(src, dest)
        except OSError:
            return None
        with open(src, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").digest()
        self.known[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns, digest, b"")
        return digest

    def finish(self, dest: bytes, st: os.stat_result, pairs: Iterable[tuple[str, bytes]]) -> None:
        """Owner, xattrs (``pairs``, as read for the digest: the same bytes), mode and
        times of a created entry, in an order that keeps them."""
        is_link = stat.S_ISLNK(st.st_mode)
        if self.root:
            os.lchown(dest, st.st_uid, st.st_gid)
        if not is_link:
            for key, value in pairs:
                os.setxattr(dest, key, value, follow_symlinks=False)
            os.chmod(dest, stat.S_IMODE(st.st_mode))
        os.utime(dest, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _xattr_field(path: bytes) -> bytes:
    """The xattrs of ``path`` as the digest frames them."""
    return xattr_field(xattrs_of(path))


def _cached(st: os.stat_result, xattrs: bytes, digest: bytes) -> CachedFile:
    return st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid, xattrs, digest


def _sha256_of(f: io.BufferedReader) -> bytes:
    return hashlib.file_digest(f, "sha256").digest()


def _make_dirs(src: bytes, dest: bytes) -> None:
    """The directories of the tree ``src`` made (0700) below ``dest``; symlinks not followed."""
    with os.scandir(src) as it:
        names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    for name in names:
        os.mkdir(dest + b"/" + name, 0o700)
        _make_dirs(src + b"/" + name, dest + b"/" + name)
