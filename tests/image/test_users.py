"""Class 10: an image's /etc/passwd and /etc/group are hostile input.

A FIFO there hung every build that looked a name up (open() of a FIFO blocks until a
writer comes); a symlink must resolve inside the rootfs, never to the host's files; a huge
or sparse file must not be read whole.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from acbuild.errors import AcbuildError
from acbuild.image.users import MAX_DB_BYTES, resolve_group, resolve_user
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "rootfs" / "etc").mkdir(parents=True)
    return tmp_path / "rootfs"


def within(seconds: float, action: Callable[[], object], unblock: Path) -> object:
    """``action()``'s result or exception; fails (and frees the blocked thread by opening
    the FIFO for writing) if it takes longer than ``seconds``."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(action())
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fd = os.open(unblock, os.O_WRONLY | os.O_NONBLOCK)  # lets the blocked open return
        os.close(fd)
        thread.join(10)
        pytest.fail(f"blocked for more than {seconds}s reading {unblock}")
    return outcome[0]


@pytest.mark.parametrize("name", ["passwd", "group"])
def test_a_fifo_as_the_user_database_is_refused_at_once(root: Path, name: str) -> None:
    os.mkfifo(root / "etc" / name)
    if name == "passwd":
        result = within(5, lambda: resolve_user(root, "app"), root / "etc" / name)
    else:
        (root / "etc" / "passwd").write_text(PASSWD)
        result = within(5, lambda: resolve_group(root, "staff"), root / "etc" / name)
    assert isinstance(result, AcbuildError)
    assert result.message == f"the image's /etc/{name} is not a regular file"


def test_a_symlink_to_etc_shadow_resolves_inside_the_rootfs(root: Path) -> None:
    """Absolute targets are the image's, not the host's: the host's /etc/shadow (which
    names root) is never read."""
    (root / "etc" / "passwd").symlink_to("/etc/shadow")
    with pytest.raises(AcbuildError, match="user 'root' not found in the image's /etc/passwd"):
        resolve_user(root, "root")
    (root / "etc" / "shadow").write_text("root:x:0:0:image root:/image-root:/bin/sh\n")
    assert resolve_user(root, "root").home == "/image-root"


def test_a_symlinked_etc_climbing_out_stays_inside(root: Path, tmp_path: Path) -> None:
    (tmp_path / "host-etc").mkdir()
    (tmp_path / "host-etc" / "passwd").write_text("host:x:7:7::/host:/bin/sh\n")
    (root / "etc").rmdir()
    (root / "etc").symlink_to("../../../../../../../" + str(tmp_path / "host-etc"))
    with pytest.raises(AcbuildError, match="user 'host' not found"):
        resolve_user(root, "host")


def test_a_huge_sparse_user_database_is_refused_without_reading_it(root: Path) -> None:
    with open(root / "etc" / "passwd", "wb") as f:
        f.truncate(10 << 30)  # 10 GiB, sparse
    with pytest.raises(AcbuildError) as e:
        resolve_user(root, "app")
    assert e.value.message == (
        f"the image's /etc/passwd is larger than {MAX_DB_BYTES >> 20} MiB")


def test_a_directory_or_a_device_as_the_user_database_is_refused(root: Path) -> None:
    (root / "etc" / "passwd").mkdir()
    with pytest.raises(AcbuildError, match="is not a regular file"):
        resolve_user(root, "app")
    (root / "etc" / "passwd").rmdir()
    (root / "etc" / "passwd").symlink_to("/dev/zero")  # inside the rootfs: not there
    with pytest.raises(AcbuildError, match="user 'app' not found"):
        resolve_user(root, "app")


def test_an_ordinary_database_still_resolves(root: Path) -> None:
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text("staff:x:50:\n")
    ident = resolve_user(root, "app", "staff")
    assert (ident.uid, ident.gid, ident.home) == (1000, 50, "/home/app")
    assert resolve_user(root, "0").home == "/root"


@pytest.mark.skipif(not busybox_available(), reason="busybox-static is not installed")
def test_a_run_step_that_leaves_a_fifo_does_not_hang_the_next_copy(tmp_path: Path) -> None:
    """The attack through the CLI: a RUN step (the image's own code) replaces /etc/passwd
    with a FIFO; the COPY --chown after it looks a name up."""
    make_busybox_rootfs(tmp_path / "rootfs")
    (tmp_path / "f").write_text("x\n")
    (tmp_path / "Acfile").write_text(
        "BEGIN ./rootfs\nNAME example.com/fifo\n"
        "RUN /bin/sh -c 'rm /etc/passwd && mkfifo /etc/passwd'\n"
        "COPY --chown=app f /f\n")
    r = acbuild("build", "--no-cache", tmp_path / "Acfile", "-o", tmp_path / "x.aci",
                timeout=60)
    assert r.code == 1, r.stderr
    assert "COPY --chown: the image's /etc/passwd is not a regular file" in r.stderr
