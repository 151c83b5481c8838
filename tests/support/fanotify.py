"""Deterministic races: fanotify permission events stop a process inside open() or
getdents() until the test has changed the tree, then let it go on.

inotify only reports an event after the fact, so a swap made on it races the process it
attacks; a permission event holds that process in the kernel while the test acts, so the
interleaving is the same on every run. Needs CAP_SYS_ADMIN (the tests run as root).
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
FAN_CLASS_CONTENT = 0x04
FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_MARK_ADD = 0x01
FAN_ACCESS_PERM = 0x00020000
FAN_OPEN_PERM = 0x00010000
FAN_ONDIR = 0x40000000
FAN_ALLOW = 0x01
_AT_FDCWD = -100
_EVENT = struct.Struct("IBBHQiI")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("iI")


def available() -> str | None:
    """None when permission events work here, else why not."""
    if os.geteuid() != 0:
        return "fanotify permission events need root"
    fd = _LIBC.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, os.O_RDONLY)
    if fd < 0:
        return f"fanotify_init: {os.strerror(ctypes.get_errno())}"
    os.close(fd)
    return None


@contextmanager
def hold(path: Path, mask: int, act: Callable[[int], bool]) -> Iterator[list[int]]:
    """While inside, every ``mask`` event on ``path`` by another process (or thread) stops
    it until ``act(n)`` (n counts events from 0) returned; ``act`` returning True ends the
    watch after that event. Yields the pids seen."""
    group = _LIBC.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY)
    if group < 0:
        raise OSError(ctypes.get_errno(), "fanotify_init")
    if _LIBC.fanotify_mark(group, FAN_MARK_ADD, mask, _AT_FDCWD, os.fsencode(path)) < 0:
        err = ctypes.get_errno()
        os.close(group)
        raise OSError(err, f"fanotify_mark {path}")
    stop_r, stop_w = os.pipe()
    pids: list[int] = []
    failure: list[BaseException] = []

    def serve() -> None:
        done = False
        while True:
            ready, _, _ = select.select([group, stop_r], [], [])
            if group not in ready:
                return
            try:
                data = os.read(group, 4096)
            except BlockingIOError:
                continue
            at = 0
            while at + _EVENT.size <= len(data):
                length, _v, _r, _m, _mask, fd, pid = _EVENT.unpack_from(data, at)
                at += length
                try:
                    if not done:
                        pids.append(pid)
                        try:
                            done = act(len(pids) - 1)
                        except BaseException as e:  # reported by the main thread
                            failure.append(e)
                            done = True
                finally:
                    os.write(group, _RESPONSE.pack(fd, FAN_ALLOW))
                    os.close(fd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield pids
    finally:
        os.write(stop_w, b"x")
        thread.join(10)
        for fd in (group, stop_r, stop_w):
            os.close(fd)
    if failure:
        raise failure[0]
