"""Private directories: where one user's caches, stores, logs and temporary trees live.

Another local user who could write into one of them could plant a cache entry, an image or
a symlink for a root build to follow. So each is created 0700 and, however it was chosen
(XDG variable, flag, environment), refused on use when another user owns it or group or
others may write to it. Only the directory itself is checked, not its parents: a user's
``~/.cache`` may sit on any path they chose.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from acbuild.errors import AcbuildError
from acbuild.fs.leftovers import owner_tag
from acbuild.fs.reasons import reason

_T = TypeVar("_T")


class UnsafeDirectory(AcbuildError):
    """A directory that should be private to this user is not."""


def private_dir(path: Path, *, what: str) -> Path:
    """``path`` as a directory private to this user, made (0700, parents too) if missing.

    A symlink is judged by what it points to: the directory actually written is the one
    that must be ours. ``what`` names it in errors ("step cache", "image store").
    """
    path = Path(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise UnsafeDirectory(f"{what} {path} is not a directory") from None
    except NotADirectoryError as e:
        raise UnsafeDirectory(f"{what} {path}: {reason(e, path / '-')}") from None
    except OSError as e:
        raise UnsafeDirectory(f"cannot create {what} {path}: {e.strerror}") from None
    check_private(path, what=what)
    return path


def check_private(path: Path, *, what: str) -> os.stat_result:
    """Refuse ``path`` unless it is a directory this user owns that only they may write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise UnsafeDirectory(f"{what} {path} is not a directory") from None
    except OSError as e:
        raise UnsafeDirectory(f"cannot open {what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    _own_and_private(st, f"{what} {path}", path, hint=f"use a directory of your own for the "
                     f"{what} (mode 0700), or fix this one's owner")
    return st


def _own_and_private(st: os.stat_result, shown: str, path: Path, *, hint: str) -> None:
    """Refuse the directory ``st`` (named ``shown``) unless this user owns it and only they
    may write it."""
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(
            f"{shown} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})", hint=hint)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{shown} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod go-w {path}, or {hint}")


def user_temp_root() -> Path:
    """This user's directory for temporary build trees: ``$TMPDIR/acbuild-py-<uid>``.

    Never the shared temporary directory itself, where anyone may plant a name we would
    sweep or a symlink we would follow.
    """
    import tempfile  # not at the top: a no-op rebuild never needs it (shutil, random, lzma)

    root = Path(tempfile.gettempdir()) / f"acbuild-py-{os.geteuid()}"
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise UnsafeDirectory(f"cannot create temporary directory {root}: {e.strerror}") from None
    # Not private_dir: a symlink planted here by another user must not be followed at all.
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDirectory(
            f"temporary directory {root} is a symlink (planted by another user?)",
            hint="remove it, or point TMPDIR at a directory of your own")
    check_private(root, what="temporary directory")
    return root


def create_private_file(path: Path, *, what: str, dir_fd: int | None = None) -> int:
    """``path`` opened for writing (truncated), mode 0600; a write-only descriptor.

    Never through a symlink at ``path``, and never a file someone else owns: one planted
    in a shared directory would otherwise receive (or expose) what we write. With
    ``dir_fd`` (the directory of ``path``, from open_private_dir): ``path.name`` in it,
    so nothing on the way to the directory is looked up again.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    name = path if dir_fd is None else path.name
    # Looked at before the open: opening a device runs its driver's open (a watchdog arms,
    # a tape rewinds) even when the descriptor is refused at once (red team RO-6).
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(mode := os.lstat(name, dir_fd=dir_fd).st_mode) and \
                not stat.S_ISLNK(mode):
            raise UnsafeDirectory(f"{what} {path} is not a regular file")
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeDirectory(f"{what} {path} is a symlink; refusing to write through it",
                                  hint="remove it or choose another path") from None
        raise UnsafeDirectory(f"cannot write {what} {path}: {reason(e, path)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeDirectory(f"{what} {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise UnsafeDirectory(f"{what} {path} belongs to uid {st.st_uid}, not to you",
                                  hint="remove it or choose another path")
        if st.st_nlink > 1:
            # a hardlink of one of our files, planted in a shared directory: not truncated
            raise UnsafeDirectory(f"{what} {path} has other hard links; refusing to "
                                  "overwrite it", hint="remove it or choose another path")
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


_PATH_STEP = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The kernel's limit for symlinks met in one resolution (MAXSYMLINKS).
_MAX_LINKS = 40


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def _others_may_write(st: os.stat_result) -> bool:
    """Whether someone else may rename what is in this directory: others may write it, or
    its group may and that group is not this user's alone (a user private group, where a
    umask of 002 makes ~/.cache 0775, is as the user alone: Debian's sshd reasons so)."""
    if st.st_mode & stat.S_ISVTX or not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    if st.st_mode & stat.S_IWOTH:
        return True
    return not _group_is_yours_alone(st.st_gid)


def _group_is_yours_alone(gid: int) -> bool:
    """Whether the group ``gid`` is one this user has and, as far as the user databases
    tell, nobody else: no other user has it as primary gid, and no group entry of that gid
    lists anyone else. The kernel grants a group's access by a process's gids, and a user
    whose primary group it is is never listed in gr_mem (RHEL's ``operator`` has gid 0), so
    gr_mem alone would hand the directory to them."""
    me = os.geteuid()
    users = pwd.getpwall()
    names = {u.pw_name for u in users if u.pw_uid == me}
    if any(u.pw_gid == gid and u.pw_uid != me for u in users):
        return False
    listed = {m for g in grp.getgrall() if g.gr_gid == gid for m in g.gr_mem}
    ours = any(u.pw_gid == gid for u in users if u.pw_uid == me) or bool(listed & names)
    return ours and listed <= names


def open_private_dir(path: Path, *, what: str, create: bool = True,
                     shared: bool = False) -> int:
    """A descriptor (O_RDONLY) of ``path`` as a directory private to this user, made (0700,
    parents too) if missing and ``create``; for a directory then used only through it.
    ``shared`` (where a --log-file goes, /tmp say): the directory reached may be root's,
    and others may write it if it is sticky; the walk to it is the same.

    Resolved one component at a time from ``/``, nothing followed by the kernel, as ssh's
    StrictModes reasons: every symlink and directory met must belong to this user or root
    (anyone else could re-point or rename it), and a directory on the way that others may
    write must be sticky (then they cannot rename what is in it). The directory reached is
    opened with O_NOFOLLOW and checked through that descriptor: ours, no one else may write
    it. What the path names later no longer matters to whoever holds the descriptor.
    """
    shown = Path(os.path.abspath(path))  # for messages only
    prefix = f"{what} {path}"
    hint = f"use a directory of your own for the {what} (mode 0700), or fix this one's owner"
    # Not abspath's: it drops ``link/..`` as text, where the kernel goes to the parent of
    # the link's target (RT4-3); the walk must meet every component the kernel would.
    raw = os.path.join(os.getcwd(), os.fspath(path))
    todo = [p for p in reversed(raw.split("/")) if p not in ("", ".")]
    fd = os.open("/", _PATH_STEP & ~os.O_NOFOLLOW)
    here = Path("/")
    links = 0
    try:
        while todo:
            part = todo.pop()
            if part == "..":
                up = os.open("..", _PATH_STEP, dir_fd=fd)
                os.close(fd)
                fd, here = up, here.parent
                continue
            at = here / part
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise UnsafeDirectory(f"{prefix}: {at} does not exist") from None
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile: judged like any other
                except OSError as e:
                    raise UnsafeDirectory(f"cannot create {prefix}: {reason(e, at)}") from None
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if not _trusted(st):
                link = stat.S_ISLNK(st.st_mode)
                kind = "a symlink" if link else "a directory"
                where = (" is a symlink that" if link else "") if at == shown else \
                    f": {at} is {kind} that"
                raise UnsafeDirectory(
                    f"{prefix}{where} belongs to uid {st.st_uid}, not to you "
                    f"(uid {os.geteuid()}) or root", hint=hint)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise UnsafeDirectory(f"{prefix}: too many levels of symbolic links")
                target = os.readlink(part, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd, here = os.open("/", _PATH_STEP & ~os.O_NOFOLLOW), Path("/")
                todo += [p for p in reversed(target.split("/")) if p not in ("", ".")]
                continue
            if not stat.S_ISDIR(st.st_mode):
                # quoted, as every message names the file in the way (acbuild.errors)
                raise UnsafeDirectory(f"{what} {str(at)!r} is not a directory" if at == shown
                                      else f"{prefix}: {str(at)!r} is not a directory")
            step = os.open(part, _PATH_STEP, dir_fd=fd)
            os.close(fd)
            fd, here = step, at
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                raise UnsafeDirectory(f"{prefix}: {at} was replaced while it was opened")
            if todo and _others_may_write(st):
                raise UnsafeDirectory(
                    f"{prefix}: {at} is writable by other users (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}), who could replace what is in it",
                    hint=hint)
        final = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    except UnsafeDirectory:
        os.close(fd)
        raise
    except OSError as e:
        os.close(fd)
        raise UnsafeDirectory(f"cannot open {prefix}: {e.strerror}") from None
    os.close(fd)
    try:
        st = os.fstat(final)
        if not shared:
            _own_and_private(st, prefix, Path(path), hint=hint)
        elif _others_may_write(st):
            raise UnsafeDirectory(f"{prefix} is writable by other users (mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}) and not sticky, who "
                                  "could replace what is in it", hint=hint)
    except BaseException:
        os.close(final)
        raise
    return final


_SUBDIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_private_subdir(dir_fd: int, name: str, *, what: str, shown: Path) -> int:
    """A descriptor (O_RDONLY) of the directory ``name`` in the private directory ``dir_fd``,
    made 0700 if missing; refused as find_private_subdir refuses it."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass
    except OSError as e:
        raise UnsafeDirectory(f"cannot create {what} {shown}: {e.strerror}") from None
    fd = find_private_subdir(dir_fd, name, what=what, shown=shown)
    if fd is None:
        raise UnsafeDirectory(f"{what} {shown} vanished while it was opened")
    return fd


def find_private_subdir(dir_fd: int, name: str, *, what: str, shown: Path) -> int | None:
    """A descriptor (O_RDONLY) of the directory ``name`` in the private directory ``dir_fd``;
    None when there is none.

    Never through a symlink, and refused unless it is this user's and only they may write
    it, as its parent was: what is found there was made by this user (or root), not planted.
    ``shown`` is its path in errors.
    """
    hint = f"remove {shown}; it is made again"
    try:
        fd = os.open(name, _SUBDIR, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeDirectory(f"{what} {shown} is not a directory (a symlink?)",
                                  hint=hint) from None
        raise UnsafeDirectory(f"cannot open {what} {shown}: {e.strerror}") from None
    try:
        _own_and_private(os.fstat(fd), f"{what} {shown}", shown, hint=hint)
    except BaseException:
        os.close(fd)
        raise
    return fd


# https://bford.info/cachedir/: backup tools skip a directory carrying this file.
CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
_TAG_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _tag_at(fd: int) -> bytes:
    tag = os.open(CACHEDIR_TAG, _TAG_READ, dir_fd=fd)
    with open(tag, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IsADirectoryError(CACHEDIR_TAG)
        return f.read(4096)


def claim_tagged(fd: int, *, ours: bytes, text: bytes) -> bool:
    """Whether the directory open at ``fd`` is ours: its CACHEDIR.TAG starts with ``ours``,
    or it was empty and now carries ``text`` (which starts with ``ours``). Whatever deletes
    what it finds in a cache or store (prune, gc, a sweep) must never be let loose in a
    directory with anything else in it (``/``, a home, another program's)."""
    for _ in range(50):
        try:
            # someone else's file of that name is not ours
            return _tag_at(fd).startswith(ours)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        others = [n for n in os.listdir(fd) if not n.startswith(f".{CACHEDIR_TAG}.")]
        if CACHEDIR_TAG in others:
            continue  # a concurrent process tagged it since the read (and then filled it)
        if others:
            return False
        # Written aside and linked into place: a concurrent process never reads half a tag.
        temp = f".{CACHEDIR_TAG}.{owner_tag()}.{os.urandom(4).hex()}"
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=fd)
        try:
            os.write(out, text)
        finally:
            os.close(out)
        try:
            os.link(temp, CACHEDIR_TAG, src_dir_fd=fd, dst_dir_fd=fd)
        except FileExistsError:
            pass  # a concurrent process tagged it: read again
        finally:
            os.unlink(temp, dir_fd=fd)
        time.sleep(0.01)
    return False


def open_claimed_dir(path: Path, *, what: str, ours: bytes, text: bytes,
                     refused: Callable[[], AcbuildError],
                     then: Callable[[int], _T]) -> tuple[int, _T]:
    """``path`` opened as ``open_private_dir`` does, claimed as ours (``claim_tagged``: else
    ``refused()`` is raised) and prepared by ``then(fd)``: the descriptor, for the caller to
    keep, and what ``then`` gave. Closed again if any of it fails; an OSError is an
    UnsafeDirectory naming ``what``."""
    fd = open_private_dir(path, what=what)
    try:
        if not claim_tagged(fd, ours=ours, text=text):
            raise refused()
        return fd, then(fd)
    except OSError as e:
        os.close(fd)
        raise UnsafeDirectory(f"cannot use {what} {path}: {e.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
