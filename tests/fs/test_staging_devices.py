"""StagedRootfs device records after a program ran: nodes it made become records."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from acbuild.fs.staging import DeviceNode, StagedRootfs


def staged(tmp_path: Path, privileged: bool = True) -> StagedRootfs:
    rootfs = StagedRootfs(root=tmp_path / "root", privileged=privileged)
    (rootfs.root / "d").mkdir(parents=True)
    return rootfs


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a real node needs root")
def test_nodes_on_disk_become_records_and_leave_the_disk(tmp_path: Path) -> None:
    rootfs = staged(tmp_path)
    os.mknod(rootfs.root / "d/wh", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(rootfs.root / "blk", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.chown(rootfs.root / "blk", 0, 6)
    os.chmod(rootfs.root / "blk", 0o660)  # past the umask
    os.mkfifo(rootfs.root / "fifo")
    rootfs.absorb_nodes()
    assert rootfs.devices == {"d/wh": DeviceNode(kind="chr", major=0, minor=0, mode=0o600),
                              "blk": DeviceNode(kind="blk", major=7, minor=0, mode=0o660)}
    assert rootfs.owners["blk"] == (0, 6)
    assert not os.path.lexists(rootfs.root / "blk") and not os.path.lexists(rootfs.root / "d/wh")
    assert stat.S_ISFIFO(os.lstat(rootfs.root / "fifo").st_mode)  # FIFOs are harmless


def test_records_give_way_to_what_the_program_did(tmp_path: Path) -> None:
    rootfs = staged(tmp_path, privileged=False)
    node = DeviceNode(kind="blk", major=8, minor=0, mode=0o600)
    for rel in ("replaced", "d/kept", "gone/x", "linked/x"):
        rootfs.add_device(rel, node, 0, 6)
    (rootfs.root / "replaced").write_text("a file now")
    (rootfs.root / "linked").symlink_to("/etc")
    rootfs.absorb_nodes()
    assert rootfs.devices == {"d/kept": node}
    assert set(rootfs.owners) == {"d/kept"}


def test_set_owner_of_a_record_never_touches_the_disk(tmp_path: Path) -> None:
    rootfs = staged(tmp_path, privileged=True)
    rootfs.devices["d/null"] = DeviceNode(kind="chr", major=1, minor=3, mode=0o666)
    rootfs.set_owner("d/null", 0, 5)  # nothing at that path: lchown would fail
    assert rootfs.owners["d/null"] == (0, 5)
