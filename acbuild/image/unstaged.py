"""Unstaged files (execute stage): parts of a rootfs that are not in its staged tree.

In a stage where nothing writes into a file in place (no RUN after the step), two kinds of
regular files are left where they are and read only when the image is written: the files
of a base directory (``rootfs.lower``, see acbuild.image.basedir) and files a COPY took
from the build context (``rootfs.refs``). Whatever needs them as real entries of the
staged tree makes them so first: ``prepare_path`` for a path a COPY or WORKDIR resolves
(so a file in the way of a directory is there, as in a staged copy), ``materialize`` for
all of them (a cache snapshot, a COPY --from reading the stage, an OCI export).

A reference is opened beneath the context through descriptors (no symlink followed) and
must still be the file the COPY saw, which the COPY checked to be the one its cache key
read: the same signature (inode, mode, size, mtime and ctime: see acbuild.fs.keyed) when
opened and again once read, else the build fails.
"""

from __future__ import annotations

import errno
import os
import stat

from acbuild.errors import AcbuildError, BuildError, Span
from acbuild.fs.beneath import ESCAPES, open_beneath
from acbuild.fs.keyed import Signature, content_digest, signature
from acbuild.fs.securepath import relpath_in, safe_join
from acbuild.fs.staging import FileRef, StagedRootfs
from acbuild.image.basedir import CONTENT_HINT, filling

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 8 << 20


def materialize(rootfs: StagedRootfs) -> None:
    """Make every unstaged file a real entry of the staged tree; afterwards there are none.
    References first: a base's file under a referenced path is hidden by it."""
    for rel in sorted(rootfs.refs):
        _materialize_ref(rootfs, rel)
    lower = rootfs.lower
    if lower is not None:
        with filling(rootfs, lower) as (state, src, dest):
            state.fill(src, "", dest, only=None)
        rootfs.lower = None


def prepare_path(rootfs: StagedRootfs, unsafe: str) -> None:
    """Make the unstaged files on the way to ``unsafe`` (resolved as securepath does, its
    final symlink followed) real, so that resolving it sees what a staged rootfs has."""
    lower = rootfs.lower
    if lower is None and not rootfs.refs:
        return
    for _ in range(len(unsafe.split("/")) + 1):
        try:
            found = relpath_in(rootfs.root, safe_join(rootfs.root, unsafe, follow_final=True))
        except AcbuildError:
            return  # a loop: the caller's own resolution reports it
        parts = found.split("/") if found else []
        root = os.fspath(rootfs.root)
        missing = next((i for i in range(len(parts))
                        if not os.path.lexists("/".join([root, *parts[: i + 1]]))), None)
        if missing is None:
            return  # every component is there
        rel = "/".join(parts[: missing + 1])
        if rel in rootfs.refs:
            _materialize_ref(rootfs, rel)
            continue
        parent, name = "/".join(parts[:missing]), parts[missing]
        if lower is None or parent not in lower.dirs:
            return  # below something the lower tree does not reach
        with filling(rootfs, lower) as (state, src, dest):
            src_dir = open_beneath(src, parent, os.O_RDONLY | os.O_DIRECTORY) if parent else src
            try:
                dest_dir = (open_beneath(dest, parent, os.O_RDONLY | os.O_DIRECTORY)
                            if parent else dest)
                try:
                    if not state.fill(src_dir, parent, dest_dir, only=name):
                        return  # not a file of the lower tree either
                finally:
                    if parent:
                        os.close(dest_dir)
            finally:
                if parent:
                    os.close(src_dir)


def open_context_root(ref: FileRef) -> int:
    """The build context of ``ref``, opened and checked to be the directory it was."""
    try:
        fd = os.open(ref.root, _DIR_FLAGS)
    except OSError as e:
        raise BuildError(f"cannot read the build context {ref.root}: {e.strerror}") from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != ref.root_id:
        os.close(fd)
        raise BuildError(f"the build context {ref.root} changed during the build")
    return fd


def open_ref(ref: FileRef, root_fd: int) -> tuple[int, os.stat_result]:
    """The referenced file opened beneath its context, checked to be the one the COPY saw."""
    try:
        fd = open_beneath(root_fd, ref.rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        if e.errno in ESCAPES or e.errno == errno.ENOENT:
            raise ref_changed(ref) from None
        raise BuildError(f"cannot read '{ref.rel}' in the build context: {e.strerror}",
                         span=ref.span) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or signature(st) != ref.seen:
        os.close(fd)
        raise ref_changed(ref)
    return fd, st


def ref_changed(ref: FileRef) -> BuildError:
    return context_changed(ref.rel, ref.span)


def context_changed(rel: str, span: Span | None) -> BuildError:
    # The words a COPY reading the file itself would use (acbuild.acfile.context).
    return BuildError(f"'{rel}' in the build context changed while the build read it "
                      "(rewritten, or replaced by a symlink or another file)", span=span,
                      hint="do not change the context during a build")


def content_changed(rel: str, span: Span | None) -> BuildError:
    """A context file whose bytes are not those its key hashed, its signature the same."""
    return BuildError(f"'{rel}' in the build context does not hold what the cache key read, "
                      "although its times did not change (written through a shared mapping?)",
                      span=span, hint=CONTENT_HINT)


def _unchanged(fd: int, seen: Signature, ref: FileRef) -> None:
    """Once ``fd`` is read: it is still the file it was (no write while it was read)."""
    if signature(os.fstat(fd)) != seen:
        raise ref_changed(ref)


def _materialize_ref(rootfs: StagedRootfs, rel: str) -> None:
    """Copy the referenced file to ``rel`` in the staged tree, with the mode, owner and
    mtime the entry has; its parent (which the COPY made or entered) has no symlink."""
    ref = rootfs.refs[rel]
    root_fd = open_context_root(ref)
    try:
        src, st = open_ref(ref, root_fd)
    finally:
        os.close(root_fd)
    try:
        os.set_blocking(src, True)
        top = os.open(rootfs.root, _DIR_FLAGS)
        try:
            parent, _, name = rel.rpartition("/")
            where = open_beneath(top, parent, os.O_RDONLY | os.O_DIRECTORY) if parent else top
            try:
                dst = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600, dir_fd=where)
            finally:
                if parent:
                    os.close(where)
        finally:
            os.close(top)
        try:
            _copy_data(src, dst, st.st_size)
            _unchanged(src, ref.seen, ref)
            # The copy, our own inode, holds what the key hashed (a write through a shared
            # mapping of the file changes no time the signature could show).
            if ref.digest is not None and content_digest(dst) != ref.digest:
                if rootfs.keyed is not None:  # the next build hashes it afresh
                    rootfs.keyed.stale(os.path.join(ref.root, ref.rel))
                raise content_changed(ref.rel, ref.span)
            # Owner before mode: chown clears setuid and setgid bits.
            if rootfs.privileged:
                os.fchown(dst, ref.uid, ref.gid)
            os.fchmod(dst, ref.mode)
            os.utime(dst, (ref.mtime, ref.mtime))
        finally:
            os.close(dst)
    finally:
        os.close(src)
    del rootfs.refs[rel]
    if rootfs.privileged:
        rootfs.owners.pop(rel, None)
    else:
        rootfs.owners[rel] = (ref.uid, ref.gid)


def _copy_data(src: int, dst: int, size: int) -> None:
    kernel = True
    while size > 0:
        n = 0
        if kernel:
            try:
                n = os.copy_file_range(src, dst, min(size, _CHUNK))
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                   errno.EPERM):
                    raise
                kernel = False
        if not kernel:
            data = memoryview(os.read(src, min(size, 1 << 20)))
            n = len(data)
            while data:
                data = data[os.write(dst, data):]
        if n == 0:
            raise BuildError("a COPY source shrank during the build")
        size -= n
