"""Snapshot trees (execute stage): the step cache's copies of a rootfs, and their digest.

A snapshot keeps names, kinds, modes, owners (as root), mtimes, xattrs and inner hardlinks;
device nodes are records in the StagedRootfs (the cache stores them in meta.json) and a tree
holding one on disk is refused, never copied with mknod;
files are hardlinked where nothing can write into them. The digest covers everything a
restore must reproduce, so a damaged snapshot is found before it is used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from pathlib import Path

from acbuild.cache.statcache import frame

_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
# Host policy, not content (the finalizer skips it too); the cache's filesystem may add it.
_SKIPPED_XATTRS = frozenset({"security.selinux"})

# (dev, ino) -> (size, mtime_ns, sha256, where) of files a linked snapshot or restore has
# read: a later snapshot of the same rootfs links them again without reading them, from
# ``where`` when the inode is shared with something outside the rootfs and the cache has its
# own copy there (b"": the inode itself; else ``where`` + NUL + the ctime the file had).
# Nothing in a stage without RUN writes into a file in place; should someone else change
# one, the stored digest no longer matches and the next restore's check discards the entry.
KnownDigests = dict[tuple[int, int], tuple[int, int, bytes, bytes]]


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


class _TreeCopier:
    def __init__(self, link: bool, known: KnownDigests, final: bytes | None,
                 dest_root: bytes) -> None:
        self.link = link
        self.known = known
        self.final = final  # None: a restore (every file is the cache's own: link it)
        self.dest_root = dest_root
        self.h = hashlib.sha256()
        self.size = 0
        self.inodes: dict[tuple[int, int], bytes] = {}
        self.root = os.geteuid() == 0

    def meta(self, kind: bytes, rel: bytes, src: bytes, st: os.stat_result) -> None:
        xattrs = b"".join(
            os.fsencode(k) + b"=" + v + b"\0" for k, v in _xattrs(src)
        ) if kind != b"symlink" else b""
        frame(self.h, kind, rel, b"%o:%d:%d" % (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid),
              xattrs)

    def directory(self, src: bytes, dest: bytes, rel: bytes, st: os.stat_result) -> None:
        self.meta(b"dir", rel, src, st)
        with os.scandir(src) as it:
            names = sorted(e.name for e in it)
        for name in names:
            child = rel + b"/" + name if rel else name
            self.entry(src + b"/" + name, dest + b"/" + name, child)
        self.finish(src, dest, st)

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
            self.meta(b"symlink", rel, src, st)
            os.symlink(target, dest)
            self.finish(src, dest, st)
        elif stat.S_ISFIFO(mode):
            self.meta(b"node", rel, src, st)
            frame(self.h, b"%o" % stat.S_IFMT(mode), b"%d" % st.st_rdev)
            os.mkfifo(dest, stat.S_IMODE(mode))
            self.finish(src, dest, st)
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
                os.link(self.dest_root + b"/" + first, dest)
                return
        self.meta(b"file", rel, src, st)
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
        self.finish(src, dest, st)
        if self.link and self.final is not None:
            # The cache's own copy of a shared file: later snapshots link that instead.
            where = self.final + dest[len(self.dest_root):] + b"\0%d" % st.st_ctime_ns
            self.known[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns, h.digest(), where)

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

    def finish(self, src: bytes, dest: bytes, st: os.stat_result) -> None:
        """Owner, xattrs, mode and times of a created entry, in an order that keeps them."""
        is_link = stat.S_ISLNK(st.st_mode)
        if self.root:
            os.lchown(dest, st.st_uid, st.st_gid)
        if not is_link:
            for key, value in _xattrs(src):
                os.setxattr(dest, key, value, follow_symlinks=False)
            os.chmod(dest, stat.S_IMODE(st.st_mode))
        os.utime(dest, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _make_dirs(src: bytes, dest: bytes) -> None:
    """The directories of the tree ``src`` made (0700) below ``dest``; symlinks not followed."""
    with os.scandir(src) as it:
        names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    for name in names:
        os.mkdir(dest + b"/" + name, 0o700)
        _make_dirs(src + b"/" + name, dest + b"/" + name)


def _xattrs(path: bytes) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        if name not in _SKIPPED_XATTRS:
            with contextlib.suppress(OSError):
                found.append((name, os.getxattr(path, name, follow_symlinks=False)))
    return found
