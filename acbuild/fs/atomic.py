"""Finalize: atomic output files, written to a temporary name and renamed into place.

A reader never sees half an image, and a failed or interrupted build leaves any previous
output untouched and no temporary file behind.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from acbuild.errors import AcbuildError
from acbuild.fs.leftovers import hold, owner_tag, sweep
from acbuild.fs.reasons import reason
from acbuild.signals import owned

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def kind_of(mode: int) -> str:
    """What a file of ``mode`` is, in words: "a character device", "a FIFO"…"""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _through_descriptor(path: Path) -> bool:
    """Whether the links ``path`` starts lead through procfs (a /proc/self/fd/N magic link,
    as /dev/stdout and /dev/fd/N are): what such a link names is an open file of some
    process, not a name a rename may replace. Each hop's directory is resolved by the
    kernel (opened), never by collapsing the text: ``d/../stdout`` with d a link to
    /dev/pts is /dev/pts/../stdout to the kernel, /dev/stdout (red team RO-4)."""
    try:
        proc = os.stat("/proc/self").st_dev
    except OSError:
        return False
    current = os.fspath(path)
    for _ in range(40):  # the kernel's limit on links followed
        parent, name = os.path.split(current)
        try:
            fd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_dev == proc:
                return True
            if name in ("", ".", ".."):
                return False
            try:
                if not stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                    return False
                target = os.readlink(name, dir_fd=fd)
            except OSError:
                return False
        finally:
            os.close(fd)
        current = target if target.startswith("/") else os.path.join(parent or ".", target)
    return True


def replace_refusal(path: Path) -> str | None:
    """Why a file renamed to ``path`` would destroy what is there, or None when it may.

    A rename replaces the name, whatever it names: for root, ``-o /dev/null`` would make the
    machine's /dev/null a regular file, and ``-o /dev/stdout`` the /dev/stdout link one (every
    program's ``> /dev/null`` then writes to disk). So only a regular file, a missing name,
    and a link to a regular file or to nothing (the link is replaced, never followed: a
    planted link cannot aim the write elsewhere) are replaced."""
    try:
        st = os.lstat(path)
    except OSError:
        return None  # missing, or unreachable: writing the temporary file says why
    if stat.S_ISREG(st.st_mode):
        return None
    if not stat.S_ISLNK(st.st_mode):
        return f"it is {kind_of(st.st_mode)}"
    if _through_descriptor(path):
        return "it is a link to an open file of a process (as /dev/stdout is)"
    try:
        target = os.stat(path)
    except OSError:
        return None
    return None if stat.S_ISREG(target.st_mode) else f"it is a link to {kind_of(target.st_mode)}"


def _refuse_to_replace(path: Path) -> None:
    if (why := replace_refusal(path)) is not None:
        raise AcbuildError(f"cannot write {path}: {why}, which is never replaced",
                           hint="name a regular file")


def refuse_to_replace(path: Path) -> None:
    """Raise the error of an output ``path`` names that no rename may replace (see
    ``replace_refusal``): for renames done by hand, as a signing build's publish is."""
    _refuse_to_replace(Path(path))


def remove_output(path: Path) -> None:
    """Remove the output ``path`` (a stale signature, an image about to be replaced) if it is
    there; what a rename may not replace may not be removed either: it is an error."""
    path = Path(path)
    _refuse_to_replace(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise AcbuildError(f"cannot remove {path}: {reason(e, path)}") from None


def _create_temp(path: Path, mode: int | None = None) -> tuple[int, Path]:
    """``mode``: the file's final permission bits, given at creation (through the umask) so a
    secret written into it is never readable by others, not even before the commit."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    _refuse_to_replace(path)
    # What a killed writer of the same file left behind goes first.
    sweep(path.parent, f".{path.name}.", ".tmp")
    for _ in range(100):
        temp = path.with_name(f".{path.name}.{owner_tag()}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 through the kernel's umask: the mode a plain open() would give
            # (mkstemp would give 0600).
            fd = os.open(temp, flags, 0o666 if mode is None else mode & 0o777)
        except FileExistsError:
            continue
        except OSError as e:
            raise AcbuildError(f"cannot write {path}: {reason(e, path)}") from None
        if hold(fd):
            return fd, temp
        os.close(fd)  # swept before it was held (from another PID namespace): another
    raise AcbuildError(f"cannot write {path}: no free temporary name")  # pragma: no cover


def check_writable(path: Path) -> None:
    """Fail before the work when ``path`` cannot be written: its directory is missing, it
    is a directory, or no file can be created beside it (probed with a real temporary file,
    since permission bits do not tell root, read-only mounts or full quotas)."""
    path = Path(path)
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise AcbuildError(f"cannot write {path}: {str(parent)!r} is not a directory")
    if not parent.is_dir():
        raise AcbuildError(f"cannot write {path}: {parent} does not exist",
                           hint=f"create the directory first (mkdir -p {parent})")
    if path.is_dir():
        raise AcbuildError(f"cannot write {path}: it is a directory",
                           hint=f"name the file, e.g. -o {path / 'image.aci'}")
    with _temporary(path, None):
        pass


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory itself is synced.
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_write(path: Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a file in ``path``'s directory; on success fsync it and rename it to ``path``.

    ``mode`` (permission bits) overrides the default ``0o666 & ~umask``. On any exception,
    KeyboardInterrupt included, the temporary file is removed and the exception re-raised.
    """
    path = Path(path)
    with _temporary(path, mode) as (f, temp):
        yield f
        _commit(f, temp, path, mode)
    _fsync_dir(path.parent)


def _temporary(path: Path, mode: int | None) -> AbstractContextManager[tuple[BinaryIO, Path]]:
    """A new temporary file beside ``path``, removed when the block ends unless it was
    renamed into place by then, whenever an interrupt comes."""
    def make() -> tuple[BinaryIO, Path]:
        fd, temp = _create_temp(path, mode)
        return os.fdopen(fd, "wb", buffering=1 << 20), temp

    return owned(make, _discard)


def _discard(made: tuple[BinaryIO, Path]) -> None:
    f, temp = made
    with suppress(OSError):  # a failed write's buffer may not flush: the file goes anyway
        f.close()
    with suppress(FileNotFoundError):  # renamed into place
        os.unlink(temp)


def _commit(f: BinaryIO, temp: Path, path: Path, mode: int | None) -> None:
    """Make the data durable, then rename; errors here are about writing ``path``."""
    try:
        f.flush()
        if mode is not None:
            os.fchmod(f.fileno(), mode)
        os.fsync(f.fileno())
        _refuse_to_replace(path)  # made one while the file was written: it stays
        os.replace(temp, path)
    except OSError as e:
        raise AcbuildError(f"cannot write {path}: {reason(e, path)}") from None


@contextmanager
def atomic_write_at(dir_fd: int, name: str, *, mode: int = 0o644,
                    shown: str | None = None) -> Iterator[BinaryIO]:
    """atomic_write into the open directory ``dir_fd``: ``name`` is one component, the
    temporary file is made with O_NOFOLLOW|O_EXCL there, and the rename replaces whatever
    ``name`` was (a symlink included) without following it. ``shown`` names it in errors."""
    shown = shown or name
    if "/" in name or name in ("", ".", ".."):
        raise AcbuildError(f"cannot write {shown}: not a plain file name")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    temp = f".{name}.{owner_tag()}.{secrets.token_hex(6)}.tmp"

    def refuse() -> None:
        # a link is replaced, as said; a device, FIFO or socket never (red team RO-8)
        try:
            mode = os.lstat(name, dir_fd=dir_fd).st_mode
        except OSError:
            return
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise AcbuildError(f"cannot write {shown}: it is {kind_of(mode)}, which is never "
                               "replaced", hint="name a regular file")

    def make() -> BinaryIO:
        refuse()
        try:
            fd = os.open(temp, flags, mode, dir_fd=dir_fd)
        except OSError as e:
            raise AcbuildError(f"cannot write {shown}: {reason(e, shown)}") from None
        fcntl.flock(fd, fcntl.LOCK_SH)  # in use (acbuild.fs.leftovers.hold)
        return os.fdopen(fd, "wb", buffering=1 << 20)

    def discard(f: BinaryIO) -> None:
        with suppress(OSError):
            f.close()
        with suppress(FileNotFoundError):  # renamed into place
            os.unlink(temp, dir_fd=dir_fd)

    with owned(make, discard) as f:
        yield f
        try:
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            refuse()
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as e:
            raise AcbuildError(f"cannot write {shown}: {e.strerror or e}") from None
    with suppress(OSError):
        os.fsync(dir_fd)
