"""RUN --mount=type=bind of the build context (execute stage): a listing, not the directory.

A bind of the context directory itself would be a live view: whatever appears in it while
the step runs would show, a file the ignore rules exclude (an editor's ``.env.tmp``, a
credential helper's short-lived file) as much as one the step key never hashed. So the
source is listed once, when the step is prepared (what ``.acignore`` excludes left out, as
the step key leaves it out), and the sandbox builds the mount from that listing only
(sandbox.ViewEntry): its directories are the sandbox's own, so it cannot gain an entry.

Each file is the context's own inode bound read-only, not a copy and not a hard link: no
data is copied, and the context's files are not touched (a link changes a file's ctime and
link count, so every stat cache, ours and git's index, would read every file again). A
write into a listed file while the step runs would show through, so each listed file's
signature is compared once the step ran, and a change fails the step: ctime cannot be set
back. A write through a shared mapping into an already dirty page changes no timestamp at
all, so for a step the cache will keep, every listed file's content is also hashed again
after it and compared with what the key hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from acbuild.acfile.context import IGNORE_FILE, BuildContext, ContextSource, special_kind
from acbuild.cache.statcache import StatCache, listing_digest
from acbuild.errors import BuildError
from acbuild.sandbox.sandbox import TreeMount, ViewEntry

# Mounts the namespace starts with (a copy of the host's) and the sandbox's own, beside
# the one mount per listed file: what fs.mount-max must leave room for.
_MOUNT_HEADROOM = 200

Signature = tuple[int, int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    """What the stat cache keys a digest by: an edit changes ctime, which no one sets back."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextView:
    """One bind of a context path: the listing the step sees, and its mount."""

    source: str  # as the instruction names it
    found: ContextSource
    top: os.stat_result  # the source itself
    entries: tuple[tuple[str, os.stat_result], ...]  # below it, as BuildContext.walk lists
    mount: TreeMount

    @property
    def files(self) -> int:
        return sum(1 for _, st in self.entries if stat.S_ISREG(st.st_mode)) + \
            (0 if self.found.is_dir else 1)

    def file_digests(self, context: BuildContext, stat_cache: StatCache) -> dict[str, str]:
        """sha256 of each listed file (through the stat cache), by the absolute path the
        stat cache knows it by: what ``digest`` is made of, and what ``check_content``
        compares the files with once the step ran."""
        return {path: stat_cache.file_digest(path, st, opener=_opener(context, where, st))
                for path, where, st in self._files(context)}

    def digest(self, context: BuildContext, digests: dict[str, str]) -> str:
        """The content digest the step key takes of this source, over this listing, made
        of ``digests`` (file_digests): exactly the contents the check compares with."""
        return listing_digest(context, self.found, self.top, self.entries, _Pinned(digests))

    def _files(self, context: BuildContext) -> list[tuple[str, str, os.stat_result]]:
        """(absolute path as the stat cache keys it, path in the context, listed stat) of
        each listed file, in listing order (statcache._source builds the same paths)."""
        here = os.fspath(context.root) + ("" if self.found.rel == "." else "/" + self.found.rel)
        if not self.found.is_dir:
            return [(here, self.found.rel, self.top)]
        return [(f"{here}/{rel}", self._where(rel), st) for rel, st in self.entries
                if stat.S_ISREG(st.st_mode)]

    def check_unchanged(self, context: BuildContext, digests: dict[str, str] | None = None,
                        stat_cache: StatCache | None = None) -> None:
        """Once the step ran: every listed file is still the inode listed, unmodified (so
        the step read what the listing, and the digest over it, says). Only the listed
        names are looked at: what was made meanwhile was never shown, so it does not count.

        With ``digests`` (file_digests: a step the cache will keep), each file's content
        too: a store through a shared mapping (a database's -shm file, a tool's mmap) into
        a page already dirty changes neither mtime nor ctime, so the signature cannot tell;
        the content can (a change undone before this check stays unseen). A file found so
        loses its digest in ``stat_cache``: the key may have taken a stale one, remembered
        by a build before the change, and would again next time."""
        here = os.fspath(context.root) + ("" if self.found.rel == "." else "/" + self.found.rel)
        if not self.found.is_dir:
            try:
                holder, name = context.open_parent(self.found.rel)
            except (BuildError, OSError):
                raise self._changed(self.found.rel, "was removed or replaced") from None
            try:
                self._check_file(holder, name, self.found.rel, here, self.top, digests,
                                 stat_cache)
            finally:
                os.close(holder)
            return
        try:
            top = context.open_directory(self.found.rel)
        except (BuildError, OSError):
            raise self._changed(".", "was removed or replaced") from None
        # Depth-first, as listed: the open directories are the chain to the current entry.
        chain: list[tuple[str, int]] = [("", top)]
        try:
            for rel, was in self.entries:
                parent, _, name = rel.rpartition("/")
                while chain[-1][0] != parent:
                    _close(chain.pop()[1])
                if stat.S_ISDIR(was.st_mode):
                    chain.append((rel, self._open_listed_dir(chain[-1][1], name, was)))
                elif stat.S_ISREG(was.st_mode):
                    self._check_file(chain[-1][1], name, self._where(rel), f"{here}/{rel}",
                                     was, digests, stat_cache)
        finally:
            for _, fd in chain:
                _close(fd)

    def _check_file(self, parent: int, name: str, where: str, path: str, was: os.stat_result,
                    digests: dict[str, str] | None, stat_cache: StatCache | None) -> None:
        fd = -1
        if parent >= 0:
            with contextlib.suppress(OSError):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                             | os.O_CLOEXEC, dir_fd=parent)
        if fd < 0:
            self._compare(where, was, None)
            return
        with open(fd, "rb") as f:
            self._compare(where, was, os.fstat(fd))  # a FIFO swapped in fails here
            if digests is None:
                return
            try:
                now = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError:
                now = ""
        if now != digests[path]:
            if stat_cache is not None:
                stat_cache.forget(path)
                stat_cache.save()
            raise BuildError(f"'{where}', which RUN --mount source '{self.source}' showed, "
                             "holds other content than the step's key hashed, though its "
                             "timestamps did not change (written through a shared mapping, "
                             "while the step ran or since a build read it)",
                             hint="build again once nothing writes to it: the next build "
                             "reads it afresh")

    @staticmethod
    def _open_listed_dir(parent: int, name: str, was: os.stat_result) -> int:
        """The directory listed as ``was``, or -1 when it is not there any more (which only
        counts for the files listed below it: a directory itself is the sandbox's own)."""
        if parent < 0:
            return -1
        try:
            fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
        except OSError:
            return -1
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (was.st_dev, was.st_ino):
            os.close(fd)
            return -1
        return fd

    def _where(self, rel: str) -> str:
        return rel if self.found.rel == "." else posixpath.join(self.found.rel, rel)

    def _compare(self, where: str, was: os.stat_result, now: os.stat_result | None) -> None:
        if now is not None and signature(now) == signature(was):
            return
        how = "was modified" if now is not None and (now.st_dev, now.st_ino) == \
            (was.st_dev, was.st_ino) else "was removed or replaced"
        raise self._changed(where, how)

    def _changed(self, where: str, how: str) -> BuildError:
        return BuildError(f"the build context changed while the step ran: '{where}', which "
                          f"RUN --mount source '{self.source}' showed, {how}",
                          hint="do not change the context during a build")


class _Pinned(StatCache):
    """A stat cache that answers only with digests taken before, by path."""

    def __init__(self, digests: dict[str, str]) -> None:
        super().__init__(None)
        self.digests = digests

    def file_digest(self, path: Path | str, st: os.stat_result,
                    opener: Callable[[], int] | None = None) -> str:
        return self.digests[os.fspath(path)]


def _opener(context: BuildContext, where: str, st: os.stat_result) -> Callable[[], int]:
    return lambda: context.open_file(where, st)


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def context_view(context: BuildContext, found: ContextSource, source: str,
                 target: str) -> ContextView:
    """The listing of ``found`` (a resolved, non-symlink context path) and its mount."""
    top = context.lstat(found.rel)
    root_rel = "" if found.rel == "." else found.rel
    identity = (top.st_dev, top.st_ino)
    if not found.is_dir:
        return ContextView(source=source, found=found, top=top, entries=(),
                           mount=TreeMount(root=context.root, rel=root_rel, identity=identity,
                                           is_dir=False, target=target))
    entries = tuple(context.walk(found))
    view = []
    for rel, st in entries:
        if kind := special_kind(st.st_mode):
            raise BuildError(f"RUN --mount source '{source}' holds '{rel}', a {kind}; only "
                             "files, directories and symlinks can be mounted",
                             hint=f"remove it, or exclude it in {IGNORE_FILE}")
        if stat.S_ISLNK(st.st_mode):
            where = posixpath.join(root_rel, rel) if root_rel else rel
            view.append(ViewEntry(rel=rel, kind="symlink", link=context.readlink(where, st)))
        else:
            view.append(ViewEntry(rel=rel, kind="dir" if stat.S_ISDIR(st.st_mode) else "file",
                                  identity=(st.st_dev, st.st_ino)))
    return ContextView(source=source, found=found, top=top, entries=entries,
                       mount=TreeMount(root=context.root, rel=root_rel, identity=identity,
                                       is_dir=True, target=target, view=tuple(view)))


def check_budget(views: Sequence[ContextView]) -> None:
    """One mount per listed file: refuse a listing the kernel's fs.mount-max would cut off
    half-way, with a message rather than a failing sandbox."""
    total = sum(v.files for v in views)
    budget = mount_budget()
    if total > budget:
        raise BuildError(f"RUN --mount source '{views[-1].source}': the bind mounts of this "
                         f"RUN show {total} files, and this system allows at most {budget} "
                         "(fs.mount-max)",
                         hint=f"mount a narrower source, or exclude more in {IGNORE_FILE}")


def mount_budget() -> int:
    try:
        with open("/proc/sys/fs/mount-max") as f:
            limit = int(f.read())
        with open("/proc/self/mounts", "rb") as f:
            have = sum(1 for _ in f)
    except (OSError, ValueError):
        return 100_000 - _MOUNT_HEADROOM  # the kernel's default
    return limit - have - _MOUNT_HEADROOM
