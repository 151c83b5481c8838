"""Another local user: run a function as `nobody` in a forked child (tests run as root).

For attacks by a second user on the same host: planting names in a shared directory,
owning a cache directory someone else is told to use.
"""

from __future__ import annotations

import os
import subprocess
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


# A user database of our own: no host's extra users (RHEL's operator) change what a test sees.
BASE_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
BASE_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def with_user_database(where: Path, argv: list[str], *, passwd: str = "",
                       group: str = "") -> subprocess.CompletedProcess[str]:
    """``argv`` run in a private mount namespace whose /etc/passwd and /etc/group are
    BASE_PASSWD and BASE_GROUP plus ``passwd`` and ``group`` (lines): the real NSS lookups
    then know users this host lacks, such as one whose primary group is root's. The files
    are written in ``where``."""
    need_root()
    (where / "passwd").write_text(BASE_PASSWD + passwd)
    (where / "group").write_text(BASE_GROUP + group)
    script = 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && ' \
             'exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script, "sh", str(where / "passwd"), str(where / "group"), *argv],
                          capture_output=True, text=True, timeout=120)
