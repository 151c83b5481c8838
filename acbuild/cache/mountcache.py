"""Cache mounts (execute stage): the persistent directories of ``RUN --mount=type=cache``.

``<cache dir>/mounts/<sha256(id)>/`` holds ``id`` (the id as written, for listing),
``data.N/`` (the directories a RUN sees) and ``lock.N`` (their flocks). The id is only
ever hashed into a name, so no id ('../x', '/') can reach another path. A RUN holds
``lock.0`` shared (sharing=shared) or exclusive (locked, waiting for it); sharing=private
takes the first ``lock.N`` free exclusively, making ``data.N`` if it is new, so concurrent
private users each get a directory of their own. Prune takes each lock exclusively
without waiting and skips a directory in use. Nothing here is ever part of a step key.

Everything is reached through the step cache's descriptor (``top``), never by the cache's
path again: a ``--cache-dir`` symlink re-pointed after the cache was checked cannot make a
RUN write, or prune delete, in the directory it now names. The one path handed out, the
data directory's, goes through /proc/self/fd of the entry's descriptor.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from acbuild.fs.atomic import atomic_write_at
from acbuild.fs.beneath import fd_path, open_beneath
from acbuild.fs.leftovers import owner_tag
from acbuild.fs.private import UnsafeDirectory
from acbuild.fs.staging import remove_at

Sharing = Literal["shared", "private", "locked"]
MAX_PRIVATE = 64  # concurrent private users of one id; more is a runaway, not a build


@dataclass(frozen=True, slots=True, kw_only=True)
class MountEntry:
    id: str
    name: str  # the entry's directory in mounts/ (all its data.N)
    size: int
    last_used: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """Who a new data directory belongs to, and its mode."""

    uid: int
    gid: int
    mode: int = 0o755


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class MountCache:
    def __init__(self, top: Callable[[], int], shown: Path) -> None:
        # The cache directory's descriptor, the step cache's: it checks (and tags) the
        # directory before anything is made in it. ``shown`` names it in messages.
        self._top = top
        self.shown = shown

    def _open(self, sub: str) -> int:
        """``sub`` of the cache directory (made 0700 if missing), opened with O_NOFOLLOW."""
        top = self._top()
        with contextlib.suppress(FileExistsError):
            os.mkdir(sub, 0o700, dir_fd=top)
        return os.open(sub, _DIR_FLAGS, dir_fd=top)

    @contextlib.contextmanager
    def _opened(self, sub: str) -> Iterator[int]:
        fd = self._open(sub)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _mounts(self) -> Iterator[int]:
        shown = self.shown / "mounts"
        try:
            fd = self._open("mounts")
        except OSError as e:
            raise UnsafeDirectory(f"cannot open cache mount directory {shown}: "
                                  f"{e.strerror}", hint="it must be a directory, not a "
                                  "symlink") from None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise UnsafeDirectory(
                    f"cache mount directory {shown} is not private to you (uid "
                    f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})",
                    hint=f"remove {shown}: it is made again, mode 0700")
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _entry(cache_id: str) -> str:
        return hashlib.sha256(cache_id.encode()).hexdigest()[:40]

    @contextlib.contextmanager
    def use(self, cache_id: str, sharing: Sharing, owner: Owner,
            on_wait: Callable[[], None] | None = None) -> Iterator[Path]:
        """The data directory for ``cache_id``, locked as ``sharing`` says until the end;
        ``on_wait`` is called before waiting for another user to let go of it. The path
        is through /proc/self/fd: valid in this process until the end."""
        with contextlib.ExitStack() as stack:
            mounts = stack.enter_context(self._mounts())
            name = self._entry(cache_id)
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=mounts)
            entry = os.open(name, _DIR_FLAGS, dir_fd=mounts)
            stack.callback(os.close, entry)
            if not _exists(entry, "id"):
                with atomic_write_at(entry, "id", mode=0o600) as f:
                    f.write(cache_id.encode())
            number = self._lock(entry, sharing, stack, on_wait)
            data = f"data.{number}"
            if not _is_dir(entry, data):
                os.mkdir(data, 0o700, dir_fd=entry)
                made = os.open(data, _DIR_FLAGS, dir_fd=entry)
                try:
                    if os.geteuid() == 0:
                        os.fchown(made, owner.uid, owner.gid)
                    os.fchmod(made, owner.mode)  # exact: mkdir's mode went through the umask
                finally:
                    os.close(made)
            with contextlib.suppress(OSError):
                os.utime(entry)  # prune removes the least recently used first
            yield fd_path(entry) / data

    def _lock(self, entry: int, sharing: Sharing, stack: contextlib.ExitStack,
              on_wait: Callable[[], None] | None) -> int:
        for number in range(MAX_PRIVATE if sharing == "private" else 1):
            f = os.open(f"lock.{number}", _LOCK_FLAGS | os.O_CREAT, 0o600, dir_fd=entry)
            stack.callback(os.close, f)
            mode = fcntl.LOCK_SH if sharing == "shared" else fcntl.LOCK_EX
            try:
                fcntl.flock(f, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if sharing == "private":
                    continue
                if on_wait is not None:
                    on_wait()
                fcntl.flock(f, mode)
            stack.callback(fcntl.flock, f, fcntl.LOCK_UN)
            return number
        raise OSError(f"more than {MAX_PRIVATE} concurrent private users of one cache mount")

    def entries(self) -> list[MountEntry]:
        found = []
        with self._mounts() as mounts:
            for child in os.scandir(mounts):
                if not child.is_dir(follow_symlinks=False):
                    continue
                try:
                    with open(open_beneath(mounts, f"{child.name}/id",
                                           os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                        cache_id = f.read().decode(errors="replace")
                except OSError:
                    cache_id = "?"
                found.append(MountEntry(id=cache_id, name=child.name,
                                        size=_size(mounts, child.name),
                                        last_used=child.stat(follow_symlinks=False).st_mtime))
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def remove(self, entry: MountEntry) -> bool:
        """Remove an entry's data unless a RUN is using it now; False when it is."""
        with self._mounts() as mounts, self._opened("tmp") as tmp:
            # Under this process's owner tag: the sweep removes it if we are killed.
            trash = f"{owner_tag()}.mount-{entry.name}-{time.time_ns()}"
            with contextlib.ExitStack() as stack:
                try:
                    where = os.open(entry.name, _DIR_FLAGS, dir_fd=mounts)
                except FileNotFoundError:
                    return True
                stack.callback(os.close, where)
                for lock in sorted(n for n in os.listdir(where) if n.startswith("lock.")):
                    f = os.open(lock, _LOCK_FLAGS, dir_fd=where)
                    stack.callback(os.close, f)
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        return False
                # Renamed away under the locks: a RUN starting now makes a fresh entry.
                os.rename(entry.name, trash, src_dir_fd=mounts, dst_dir_fd=tmp)
            remove_at(tmp, trash, ignore_errors=True)
        return True


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _is_dir(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _size(dir_fd: int, name: str) -> int:
    total = 0
    for _top, dirs, files, at in os.fwalk(name, dir_fd=dir_fd):
        for child in (*dirs, *files):
            with contextlib.suppress(OSError):
                total += os.lstat(child, dir_fd=at).st_blocks * 512
    return total
