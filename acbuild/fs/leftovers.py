"""Leftovers: naming temporary files and directories after the process that made them, so a
later run can remove what a killed one (SIGKILL, power loss) could not.

Only entries made on this host by a process that no longer exists are removed: a live
build's temporary files, or another machine's on a shared directory, are never touched.
"No longer exists" is two answers: no process of that pid in the sweeper's PID namespace,
and no flock on the entry, which its maker holds from creation to removal (``hold``). The
pid alone is wrong from another PID namespace on the same host (unshare -p, a container
sharing the hostname), where every pid of this one looks dead; a flock is the kernel's,
seen the same from every namespace.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
import zlib
from collections.abc import Iterator
from pathlib import Path


def _host() -> str:
    # uname's node name is what gethostname(2) returns on Linux, without importing socket
    # (~5 ms of every start, the no-op's included)
    return f"{zlib.crc32(os.uname().nodename.encode()):08x}"


def owner_tag() -> str:
    """``<pid>-<host hash>``: who made a temporary name."""
    return f"{os.getpid()}-{_host()}"


def hold(fd: int) -> bool:
    """Mark the temporary entry open at ``fd`` (a file or directory just made) as in use
    until ``fd`` is closed. False when a sweep removed it before the lock was taken: make
    another."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    return os.fstat(fd).st_nlink > 0


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def new_held_dir(parent: int, prefix: str, suffix: str = "") -> tuple[str, int]:
    """A new directory (0700) in the directory open at ``parent``, named after this process
    (``<prefix><owner tag>.<random><suffix>``), opened and held (``hold``) until that
    descriptor is closed: what a sweep of ``prefix`` there removes once its maker is gone
    (SIGKILL), and never while it runs, from any PID namespace. Its name and descriptor."""
    while True:
        name = f"{prefix}{owner_tag()}.{os.urandom(4).hex()}{suffix}"
        os.mkdir(name, 0o700, dir_fd=parent)
        try:
            fd = os.open(name, _DIR, dir_fd=parent)
        except FileNotFoundError:
            continue  # swept before it was opened (from another PID namespace)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=parent)
            raise
        if hold(fd):
            return name, fd
        os.close(fd)  # swept before it was held: make another


@contextlib.contextmanager
def _unless_held(dir_fd: int, name: str) -> Iterator[bool]:
    """Whether no process holds ``name`` (see ``hold``); while True, an exclusive flock on
    it is kept, so its maker cannot start using it while it is being removed."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError as e:
        yield e.errno == errno.ELOOP  # a symlink: nothing holds it, it is only unlinked
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sweep(directory: Path, prefix: str, suffix: str = "") -> list[Path]:
    """Remove ``<prefix><pid>-<host>.<anything><suffix>`` entries in ``directory`` whose
    process is gone and that this user owns; returns what was removed. Errors are ignored:
    this is housekeeping.

    Another user's entry is never touched, whatever its name says: in a directory others
    may write to, a name is no proof of who made it. Entries are examined and removed
    through a descriptor of ``directory`` and never followed (see ``remove_at``).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        return [directory / name for name in sweep_at(fd, prefix, suffix)]
    finally:
        os.close(fd)


def sweep_at(dir_fd: int, prefix: str, suffix: str = "", *,
             others_after: float | None = None) -> list[str]:
    """``sweep`` in the directory open at ``dir_fd``; the names removed. With
    ``others_after``, also any other entry (not named by this host's owner tag: another
    machine's, or an older version's) that nobody holds and that is unchanged for that
    many seconds."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-([0-9a-f]{8})\..*" + re.escape(suffix) + "$")
    removed: list[str] = []
    host = _host()
    for name in os.listdir(dir_fd):
        found = pattern.match(name)
        try:
            if found is not None and found[2] == host:
                if _alive(int(found[1])):
                    continue
                st = os.lstat(name, dir_fd=dir_fd)
            elif others_after is not None and name.startswith(prefix):
                st = os.lstat(name, dir_fd=dir_fd)
                if time.time() - st.st_mtime <= others_after:
                    continue
            else:
                continue
            if st.st_uid != os.geteuid():
                continue
            # Imported only when something is left: every atomic write sweeps, and
            # almost all find nothing.
            from acbuild.fs.staging import remove_at

            with _unless_held(dir_fd, name) as free:
                if not free:
                    continue
                remove_at(dir_fd, name)
        except OSError:
            continue
        removed.append(name)
    return removed


def tag_of(name: str) -> str | None:
    """The owner tag a name made by a process on this host starts with; None for any
    other name (another machine's on a shared directory, or not one of ours)."""
    found = re.match(r"(\d+-[0-9a-f]{8})\.", name)
    if found is None or not found[1].endswith("-" + _host()):
        return None
    return found[1]
