"""Issue 13, class 1: a hostile image's device node never reaches a host device.

The "host disk" is a real loop device over a temporary file. Base images (ACI, OCI layer,
COPY --from, the step cache, `acbuild-py run`) carry a block device node with that loop
device's major:minor; RUN steps and the app try to write through it. On the landed code
(c78843e) the node was made with mknod on the host and the write reached the loop device.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from acbuild.sandbox.sandbox import sandbox_available
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild
from tests.support.hostile import MINIMAL_MANIFEST

_reason = sandbox_available() if busybox_available() else "busybox-static is not installed"
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}")
PATTERN = b"HOSTDISK" * 512  # 4 KiB, repeated over the disk
# Writes through each node that exists (creating a file where none does would replace it).
ATTACK = ("/bin/sh -c 'for d in /disk /disk2 /dev/disk; do if [ -e $d ]; then "
          "echo PWNED > $d && echo WROTE $d || echo REFUSED $d; else echo ABSENT $d; fi; "
          "done; true'")


@dataclass(frozen=True)
class LoopDisk:
    device: Path
    backing: Path
    major: int
    minor: int

    def untouched(self) -> bool:
        with open(self.device, "rb") as f:
            through_device = f.read(len(PATTERN) * 4)
        return through_device == PATTERN * 4 and self.backing.read_bytes()[:4096] == PATTERN[:4096]


@pytest.fixture
def host_disk(tmp_path: Path) -> Iterator[LoopDisk]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("a loop device needs root and losetup")
    backing = tmp_path / "disk.img"
    backing.write_bytes(PATTERN * 256)  # 1 MiB
    made = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    rdev = device.stat().st_rdev
    try:
        yield LoopDisk(device, backing, os.major(rdev), os.minor(rdev))
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


def _busybox_tar(tmp_path: Path, prefix: str, devices: list[tarfile.TarInfo],
                 manifest: bool) -> bytes:
    root = make_busybox_rootfs(tmp_path / f"bb-{prefix or 'layer'}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        if manifest:
            body = json.dumps({**MINIMAL_MANIFEST, "name": "example.com/evil"}).encode()
            info = tarfile.TarInfo("manifest")
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
        t.add(root, arcname=prefix or ".")
        for info in devices:
            t.addfile(info)
    return buf.getvalue()


def _node(name: str, kind: bytes, major: int, minor: int, mode: int = 0o666) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.devmajor, info.devminor = major, minor
    return info


def _hostile_nodes(prefix: str, disk: LoopDisk, *, hardlink: bool = False
                   ) -> list[tarfile.TarInfo]:
    p = f"{prefix}/" if prefix else ""
    nodes = [_node(f"{p}disk", tarfile.BLKTYPE, disk.major, disk.minor),
             _node(f"{p}dev/disk", tarfile.BLKTYPE, disk.major, disk.minor),
             _node(f"{p}rnd", tarfile.CHRTYPE, 1, 9)]
    if hardlink:
        hard = tarfile.TarInfo(f"{p}disk2")  # a hardlink to the device node
        hard.type, hard.linkname = tarfile.LNKTYPE, f"{p}disk"
        nodes.append(hard)
    return nodes


def evil_aci(tmp_path: Path, disk: LoopDisk, *, hardlink: bool = False) -> Path:
    path = tmp_path / "evil.aci"
    nodes = _hostile_nodes("rootfs", disk, hardlink=hardlink)
    path.write_bytes(_busybox_tar(tmp_path, "rootfs", nodes, True))
    return path


def build(tmp_path: Path, body: str, *extra: str) -> tuple[int, str, Path]:
    out = tmp_path / "out.aci"
    (tmp_path / "Acfile").write_text(body)
    r = acbuild("build", *extra, tmp_path / "Acfile", "-o", out)
    return r.code, r.stdout + r.stderr, out


def entries(aci: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(aci) as t:
        return {m.name: m for m in t.getmembers()}


def read(aci: Path, name: str) -> bytes:
    with tarfile.open(aci) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


def assert_nodes_kept(out: Path, disk: LoopDisk, *names: str) -> None:
    """The image still carries the nodes: records are written into the tar."""
    m = entries(out)
    for name in names or ("rootfs/disk", "rootfs/dev/disk"):
        assert m[name].isblk() and (m[name].devmajor, m[name].devminor) == (disk.major,
                                                                           disk.minor)


def test_run_cannot_write_a_base_images_block_device(tmp_path: Path, host_disk: LoopDisk) -> None:
    base = evil_aci(tmp_path, host_disk)
    code, log, out = build(tmp_path, (
        f"BEGIN {base}\nNAME example.com/x\nRUN {ATTACK}\n"
        "RUN /bin/sh -c 'head -c 16 /rnd > /random; true'\n"), "--no-cache")
    assert code == 0, log
    assert "| WROTE" not in log, log
    assert host_disk.untouched()
    assert_nodes_kept(out, host_disk)
    assert read(out, "rootfs/random") == b""  # the character device opened nothing either


def test_device_under_a_hardlink(tmp_path: Path, host_disk: LoopDisk) -> None:
    """A hardlink to a device node is another record of the same node (refused before)."""
    base = evil_aci(tmp_path, host_disk, hardlink=True)
    code, log, out = build(tmp_path, f"BEGIN {base}\nNAME example.com/x\nRUN {ATTACK}\n",
                           "--no-cache")
    assert code == 0, log
    assert "| WROTE" not in log, log
    assert host_disk.untouched()
    assert_nodes_kept(out, host_disk, "rootfs/disk", "rootfs/disk2")


def test_copy_from_a_stage_with_a_device(tmp_path: Path, host_disk: LoopDisk) -> None:
    base = evil_aci(tmp_path, host_disk)
    plain = make_busybox_rootfs(tmp_path / "plain")
    code, log, out = build(tmp_path, (
        f"BEGIN {base} AS evil\nBEGIN {plain}\nNAME example.com/x\n"
        "COPY --from=evil /disk /rnd /\nRUN " + ATTACK + "\n"), "--no-cache")
    assert code == 0, log
    assert "| WROTE" not in log, log
    assert host_disk.untouched()
    assert_nodes_kept(out, host_disk, "rootfs/disk")
    assert entries(out)["rootfs/rnd"].ischr()


def test_step_cache_restores_no_device(tmp_path: Path, host_disk: LoopDisk) -> None:
    base = evil_aci(tmp_path, host_disk)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    code, log, _ = build(tmp_path, f"BEGIN {base}\nNAME example.com/x\nRUN /bin/true\n", *cache)
    assert code == 0, log
    for root, _dirs, files in os.walk(tmp_path / "cache"):
        for name in files:
            mode = os.lstat(os.path.join(root, name)).st_mode
            assert not (stat.S_ISBLK(mode) or stat.S_ISCHR(mode)), f"device in cache: {name}"
    code, log, out = build(tmp_path, (
        f"BEGIN {base}\nNAME example.com/x\nRUN /bin/true\nRUN {ATTACK}\n"), *cache)
    assert code == 0, log
    assert "| WROTE" not in log, log
    assert host_disk.untouched()
    assert_nodes_kept(out, host_disk)


@pytest.mark.skipif(shutil.which("umoci") is None, reason="needs umoci")
def test_oci_layer_with_a_device(tmp_path: Path, host_disk: LoopDisk) -> None:
    layer = tmp_path / "layer.tar"
    nodes = _hostile_nodes("", host_disk)
    layer.write_bytes(_busybox_tar(tmp_path, "", nodes, False))
    layout = tmp_path / "layout"
    for argv in (["init", "--layout", layout], ["new", "--image", f"{layout}:t"],
                 ["raw", "add-layer", "--no-history", "--image", f"{layout}:t", layer]):
        subprocess.run(["umoci", *map(str, argv)], check=True, capture_output=True)
    code, log, out = build(tmp_path, f"BEGIN oci:{layout}:t\nNAME example.com/x\nRUN {ATTACK}\n",
                           "--no-cache")
    assert code == 0, log
    assert "| WROTE" not in log, log
    assert host_disk.untouched()
    assert_nodes_kept(out, host_disk)


def test_run_verb_gives_the_app_no_host_device(tmp_path: Path, host_disk: LoopDisk) -> None:
    base = evil_aci(tmp_path, host_disk)
    code, log, out = build(tmp_path, (
        f"BEGIN {base}\nNAME example.com/x\nEXEC /bin/sh -c "
        "'[ -e /disk ] && echo PWNED > /disk && echo WROTE; echo DONE'\n"), "--no-cache")
    assert code == 0, log
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    r = acbuild("run", "--no-stdin", out, env=env)
    assert "WROTE" not in r.stdout + r.stderr and "DONE" in r.stdout, r.stdout + r.stderr
    assert host_disk.untouched()


def test_root_run_making_device_nodes(tmp_path: Path, host_disk: LoopDisk) -> None:
    """mknod in a root RUN: real devices are refused by the kernel, the 0:0 whiteout node
    it allows becomes a record; neither is left as a node in the staging tree or cache."""
    plain = make_busybox_rootfs(tmp_path / "plain")
    code, log, out = build(tmp_path, (
        f"BEGIN {plain}\nNAME example.com/x\n"
        f"RUN /bin/sh -c 'mknod /made b {host_disk.major} {host_disk.minor} || echo NOMKNOD; "
        "mknod /wh c 0 0; echo PWNED > /made; true'\n"
        "RUN /bin/sh -c 'ls -l /wh; cat /wh; true'\n"), "--cache-dir", str(tmp_path / "c"))
    assert code == 0, log
    assert host_disk.untouched()
    m = entries(out)
    if "rootfs/wh" in m:  # kernels before 5.8 refuse whiteouts in a user namespace too
        assert m["rootfs/wh"].ischr() and (m["rootfs/wh"].devmajor, m["rootfs/wh"].devminor) == (
            0, 0)
    assert not (m.get("rootfs/made") and m["rootfs/made"].isblk())
