"""Issue 13, class 1 in the sandbox: nodev rootfs, read-only host device binds.

Real kernel, real host /dev/null, a real loop device as the "host disk".
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.busybox import make_busybox_rootfs
from tests.support.sandboxrun import IS_ROOT, needs_sandbox, run

pytestmark = needs_sandbox


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_busybox_rootfs(tmp_path / "rootfs")


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    if not IS_ROOT or shutil.which("losetup") is None:
        pytest.skip("a loop device needs root and losetup")
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"\0" * (1 << 20))
    made = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


@pytest.mark.skipif(not IS_ROOT, reason="the host's /dev/null belongs to root")
def test_root_cannot_chmod_the_hosts_dev_null(rootfs: Path) -> None:
    before = os.stat("/dev/null")
    _, lines = run(rootfs, "chmod 000 /dev/null && echo CHANGED; chown 1:1 /dev/null "
                                "&& echo CHOWNED; echo ok > /dev/null && echo WRITABLE")
    after = os.stat("/dev/null")
    try:
        assert (after.st_mode, after.st_uid, after.st_gid) == (
            before.st_mode, before.st_uid, before.st_gid)
    finally:  # on a broken sandbox, give the machine its /dev/null back
        os.chmod("/dev/null", stat.S_IMODE(before.st_mode))
        os.chown("/dev/null", before.st_uid, before.st_gid)
    assert "CHANGED" not in lines and "CHOWNED" not in lines
    assert "WRITABLE" in lines  # writing to the device itself still works


def test_rootfs_and_dev_are_mounted_nodev(rootfs: Path) -> None:
    result, lines = run(rootfs, "cat /proc/self/mountinfo")
    assert result.exit_status == 0
    options = {line.split()[4]: line.split()[5].split(",") for line in lines}
    for point in ("/", "/dev", "/tmp"):
        assert "nodev" in options[point], (point, options[point])
    assert "ro" in options["/dev/null"]


def test_a_device_node_in_the_rootfs_opens_nothing(rootfs: Path,
                                                    loop_device: tuple[Path, Path]) -> None:
    """Even a node that got into the rootfs some other way (an old cache) is dead inside."""
    device, backing = loop_device
    rdev = device.stat().st_rdev
    os.mknod(rootfs / "disk", 0o666 | stat.S_IFBLK, rdev)
    _, lines = run(rootfs, "echo PWNED > /disk && echo WROTE; head -c 4 /disk "
                                "&& echo READ; true")
    assert "WROTE" not in lines and "READ" not in lines, lines
    with open(device, "rb") as f:
        assert f.read(4096) == b"\0" * 4096
    assert backing.read_bytes()[:4096] == b"\0" * 4096


@pytest.mark.skipif(not IS_ROOT or shutil.which("unshare") is None,
                    reason="a mount namespace to damage /dev/null in needs root and unshare")
def test_a_host_dev_null_that_is_no_device_fails_the_step_naming_the_repair(
        rootfs: Path, tmp_path: Path) -> None:
    """A /dev/null a root program renamed a file over: bound into the sandbox, every
    `> /dev/null` of a step failed with "Read-only file system", and nothing said why. (The
    damage is done in a mount namespace of the test's own: the machine's stays whole.)"""
    (tmp_path / "Acfile").write_text("BEGIN ./rootfs\nNAME example.com/dev\n"
                                     "RUN /bin/sh -c 'echo x > /dev/null'\n")
    (tmp_path / "plain-file").write_bytes(b"")
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" /dev/null && shift && exec "$@"', "sh", str(tmp_path / "plain-file"),
         sys.executable, "-m", "acbuild", "build", "--no-cache", str(tmp_path / "Acfile"), "-o",
         str(tmp_path / "out.aci")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert proc.returncode == 1, proc.stderr
    assert "/dev/null: not a character device on the host; repair the host (as root: " \
           "rm /dev/null && mknod -m 666 /dev/null c 1 3)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.aci").exists()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
