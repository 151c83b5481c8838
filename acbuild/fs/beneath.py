"""Beneath: opening a path below a directory descriptor without following any symlink.

For trees someone else may change while we read them (the build context): a check by name
and a later open by name can see two different files. Here every component is opened
relative to the one before it and none may be a symlink, so a directory swapped for a
symlink mid-build makes the open fail instead of leading it out of the tree. openat2(2)
with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS does it in one call where the kernel has it
(Linux 5.6); elsewhere each component is opened with O_NOFOLLOW.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

_SYS_OPENAT2 = 437  # the same number on every architecture (new syscalls are unified)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
_DIR_STEP = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The errors an escape or a swap gives: a symlink met (ELOOP), a non-directory where a
# directory was (ENOTDIR), a path leading out (EXDEV, openat2 only).
ESCAPES = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EXDEV})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def components(rel: str) -> list[str]:
    """The components of a relative path below a tree; "." and "" name the tree itself."""
    if rel.startswith("/"):
        raise ValueError(f"{rel!r} is not relative")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{rel!r} climbs out of its tree")
    return parts


def open_beneath(dir_fd: int, rel: str, flags: int, mode: int = 0o600) -> int:
    """``rel`` below ``dir_fd`` opened with ``flags``, no component (the last included)
    followed if it is a symlink. OSError with an errno in ESCAPES when something on the
    way is a symlink or not a directory."""
    parts = components(rel)
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW
    if not parts:
        return os.open(".", flags & ~os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    fd = _openat2(dir_fd, "/".join(parts), flags, mode)
    if fd is not None:
        return fd
    current = dir_fd
    try:
        for part in parts[:-1]:
            step = os.open(part, _DIR_STEP, dir_fd=current)
            if current != dir_fd:
                os.close(current)
            current = step
        return os.open(parts[-1], flags, mode, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


def _openat2(dir_fd: int, rel: str, flags: int, mode: int) -> int | None:
    """The descriptor, or None when this kernel (or a seccomp filter) has no openat2."""
    creates = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
    how = _OpenHow(flags=flags, mode=mode if creates else 0,
                   resolve=_RESOLVE)
    while True:
        fd = int(_LIBC.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how),
                               ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.EINTR:
            continue
        if err in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter that lacks it
            return None
        raise OSError(err, os.strerror(err), rel)


def parent_beneath(dir_fd: int, rel: str) -> tuple[int, str]:
    """(descriptor of the directory holding ``rel``, its last component), the directory
    opened beneath ``dir_fd`` without following symlinks; the caller closes it."""
    parts = components(rel)
    if not parts:
        raise ValueError("the tree itself has no parent in it")
    parent = open_beneath(dir_fd, "/".join(parts[:-1]), os.O_PATH | os.O_DIRECTORY)
    return parent, parts[-1]


def fd_path(fd: int) -> Path:
    """A path that names the directory ``fd`` holds, whatever its own path names now: for
    a function that takes a path (or hands one to the kernel) where an ``*at`` call cannot
    serve. Valid in this process while ``fd`` stays open."""
    return Path(f"/proc/self/fd/{fd}")
