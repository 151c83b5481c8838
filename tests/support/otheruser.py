"""Another local user: run a function as `nobody` in a forked child (tests run as root).

For attacks by a second user on the same host: planting names in a shared directory,
owning a cache directory someone else is told to use.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from acbuild.fs.staging import remove_tree

NOBODY = 65534


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("acting as a second user needs root")


def as_nobody(action: Callable[[], None]) -> None:
    """``action()`` run as uid/gid 65534 in a forked child; its exception fails the test."""
    need_root()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        report = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report


def shared_directory() -> Iterator[Path]:
    """A fresh directory like /tmp (world-writable, sticky) that `nobody` can reach (pytest's
    tmp_path sits below a root-only directory); removed afterwards. For a fixture."""
    need_root()
    top = Path(tempfile.mkdtemp(prefix="acbuild-shared-", dir="/tmp"))
    top.chmod(0o1777)
    try:
        yield top
    finally:
        remove_tree(top, ignore_errors=True)
