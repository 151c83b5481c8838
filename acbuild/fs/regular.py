"""Opening a file that is only to be read, refusing anything but a regular file.

A plain open() of a path someone else names (an Acfile, a var file, a context file, a blob
of an OCI layout) blocks for ever on a FIFO with no writer, reads for ever from /dev/zero,
takes /dev/tty as the controlling terminal, and on some devices acts just by opening
(/dev/watchdog arms the machine's reboot timer). So the path is opened with O_PATH first,
which opens nothing (no FIFO wait, no device's open handler), and checked with fstat; only a
regular file is then opened for reading, through /proc/self/fd, so the file read is the
inode checked even if the name is swapped in between. Where /proc is not mounted the path
is opened with O_NONBLOCK | O_NOCTTY (a FIFO's open does not wait), checked again, and
O_NONBLOCK cleared.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat

# Words for what a path is instead: "not a regular file (a FIFO)".
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink"))
NOT_REGULAR = "not a regular file"
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY

StrPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]


class NotRegularFile(OSError):
    """EINVAL "not a regular file (a FIFO)": the user's error, not a bug of ours, wherever it
    surfaces (the CLI's last edge, cli.oserrors, says so in one line)."""


def not_regular(mode: int, name: object = None) -> OSError:
    """The error for a file of ``mode`` that is not regular: EISDIR "Is a directory" for a
    directory (what open() says of one), else NotRegularFile."""
    if stat.S_ISDIR(mode):
        return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), *_named(name))
    kind = next((f" ({word})" for test, word in _KINDS if test(mode)), "")
    return NotRegularFile(errno.EINVAL, NOT_REGULAR + kind, *_named(name))


def _named(name: object) -> tuple[object, ...]:
    return () if name is None else (name,)


def open_regular(file: StrPath | int, *, dir_fd: int | None = None,
                 follow_symlinks: bool = True, buffering: int = -1) -> io.BufferedReader:
    """``file`` opened for reading, buffered; OSError (see ``not_regular``) when it is not a
    regular file, and whatever os.open raises when it cannot be opened.

    ``file`` a path: relative to ``dir_fd`` when given; ``follow_symlinks=False`` refuses a
    symlink as the last component with ELOOP, as O_NOFOLLOW does.
    ``file`` a descriptor (from an openat beneath a directory, say; opened O_PATH, or
    O_RDONLY with O_NONBLOCK so that a FIFO's open did not wait): checked the same way and
    owned from here on: the reader closes it, and so does a refusal."""
    if isinstance(file, int):
        return _reader(_readable(file, None), buffering)
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(file, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):  # O_PATH | O_NOFOLLOW opens the link itself
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fsdecode(file))
    except BaseException:
        os.close(fd)
        raise
    return _reader(_readable(fd, file, dir_fd=dir_fd, st=st), buffering)


def read_regular(file: StrPath | int, *, dir_fd: int | None = None,
                 follow_symlinks: bool = True, limit: int | None = None) -> bytes:
    """The whole content of ``file`` (as ``open_regular`` opens it); at most ``limit`` + 1
    bytes when given, so a caller can tell a file longer than ``limit``."""
    with open_regular(file, dir_fd=dir_fd, follow_symlinks=follow_symlinks) as f:
        return f.read() if limit is None else f.read(limit + 1)


def _reader(fd: int, buffering: int) -> io.BufferedReader:
    try:
        raw = io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(raw, buffering if buffering > 0 else io.DEFAULT_BUFFER_SIZE)


def _readable(fd: int, file: StrPath | None, *, dir_fd: int | None = None,
              st: os.stat_result | None = None) -> int:
    """A descriptor open for reading on the regular file ``fd`` holds, ``fd`` consumed."""
    try:
        if st is None:
            st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(st.st_mode, None if file is None else os.fsdecode(file))
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags & os.O_PATH:
            if flags & os.O_NONBLOCK:  # no use on a regular file; not to leak to a reader
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
            return fd
        try:
            readable = os.open(f"/proc/self/fd/{fd}", _READ)
        except FileNotFoundError:
            if file is None or os.path.isdir("/proc/self"):
                raise
            readable = _reopen_without_proc(file, dir_fd, st)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return readable


def _reopen_without_proc(file: StrPath, dir_fd: int | None, st: os.stat_result) -> int:
    """``file`` opened again by name where /proc is missing: non-blocking, so a FIFO swapped
    in since the check cannot hang it, and refused unless it is the inode checked."""
    fd = os.open(file, _READ | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise not_regular(now.st_mode, os.fsdecode(file)) if not stat.S_ISREG(
                now.st_mode) else OSError(errno.EAGAIN, "replaced while being opened",
                                          os.fsdecode(file))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd
