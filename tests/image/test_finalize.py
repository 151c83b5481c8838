"""Tests for the finalizer: layout, determinism, image ID, owners, special files, output."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.errors import AcbuildError
from acbuild.fs.staging import DeviceNode, StagedRootfs
from acbuild.image.compression import COMPRESSIONS, open_decompressed
from acbuild.image.finalize import (
    DEFAULT_EPOCH,
    build_epoch,
    iter_rootfs_entries,
    write_aci,
    write_aci_stream,
)
from acbuild.report import NullReporter

EPOCH = 1_600_000_000
MANIFEST = json.dumps(
    {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": "example.com/test",
        "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
    }
).encode()


def _tree(root: Path) -> Path:
    """A small rootfs whose sorted order differs from plain byte order ("a/" vs "a.txt")."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c").write_bytes(b"c")
    (root / "a.txt").write_bytes(b"text")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    (root / "bin" / "tool").chmod(0o4755)
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    (root / "link").symlink_to("../../outside/dangling")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (EPOCH - 100, EPOCH - 100), follow_symlinks=False)
    return root


def _rootfs(tmp_path: Path, **kw: object) -> StagedRootfs:
    return StagedRootfs(root=_tree(tmp_path / "rootfs"), **kw)  # type: ignore[arg-type]


def _members(aci: Path) -> list[tarfile.TarInfo]:
    with open(aci, "rb") as raw, open_decompressed(raw) as f, tarfile.open(
        fileobj=f, mode="r|"
    ) as tar:
        return list(tar)


def _write(rootfs: StagedRootfs, out: Path, **kw: object) -> Path:
    write_aci(rootfs, MANIFEST, out, epoch=kw.pop("epoch", EPOCH), **kw)  # type: ignore[arg-type]
    return out


# --- SOURCE_DATE_EPOCH ---------------------------------------------------------------


def test_build_epoch_default_and_env() -> None:
    assert build_epoch({}) == DEFAULT_EPOCH == 315532800
    assert build_epoch({"SOURCE_DATE_EPOCH": "1700000000"}) == 1_700_000_000
    assert build_epoch({"SOURCE_DATE_EPOCH": "0"}) == 0


# The last two would write mtimes the image's own reader refuses (tarread.MAX_MTIME).
@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "١٢", "8589934592", "9" * 5000])
def test_build_epoch_rejects_bad_values(value: str) -> None:
    with pytest.raises(AcbuildError) as info:
        build_epoch({"SOURCE_DATE_EPOCH": value})
    assert info.value.message == (
        "SOURCE_DATE_EPOCH must be a non-negative integer (seconds since 1970) below "
        f"8589934592, got {value!r}"
    )


# --- layout --------------------------------------------------------------------------


def test_layout_manifest_first_rootfs_second_then_sorted(tmp_path: Path) -> None:
    members = _members(_write(_rootfs(tmp_path), tmp_path / "out.aci"))
    assert [m.name for m in members] == [
        "manifest",
        "rootfs",
        "rootfs/a",
        "rootfs/a/b",
        "rootfs/a/b/c",
        "rootfs/a.txt",
        "rootfs/bin",
        "rootfs/bin/tool",
        "rootfs/link",
        "rootfs/tmp",
    ]
    manifest, root = members[0], members[1]
    assert (manifest.mode, manifest.uid, manifest.gid, manifest.mtime) == (0o644, 0, 0, EPOCH)
    assert manifest.size == len(MANIFEST)
    assert root.isdir() and root.mode == stat.S_IMODE((tmp_path / "rootfs").stat().st_mode)
    by_name = {m.name: m for m in members}
    assert by_name["rootfs/bin/tool"].mode == 0o4755
    assert by_name["rootfs/tmp"].mode == 0o1777
    assert by_name["rootfs/link"].linkname == "../../outside/dangling"
    assert all(m.uname == "" and m.gname == "" for m in members)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_actool_validates_every_compression(tmp_path: Path, compression: str) -> None:
    out = _write(_rootfs(tmp_path), tmp_path / "out.aci", compression=compression)
    result = subprocess.run(["actool", "validate", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_image_id_is_sha512_of_the_uncompressed_tar(tmp_path: Path) -> None:
    out = tmp_path / "out.aci"
    written = write_aci(_rootfs(tmp_path), MANIFEST, out, epoch=EPOCH)
    tar = gzip.decompress(out.read_bytes())
    assert written.image_id == "sha512-" + hashlib.sha512(tar).hexdigest()
    assert written.uncompressed_size == len(tar)
    assert written.size == out.stat().st_size
    assert written.entries == 10
    assert written.compression == "gzip" and written.path == out


def test_stream_variant_returns_the_same_id(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    written = write_aci(rootfs, MANIFEST, tmp_path / "out.aci", epoch=EPOCH)
    buf = io.BytesIO()
    image_id, size, entries = write_aci_stream(
        rootfs, MANIFEST, buf, compression="none", epoch=EPOCH
    )
    assert (image_id, size, entries) == (written.image_id, written.uncompressed_size, 10)
    assert hashlib.sha512(buf.getvalue()).hexdigest() == image_id.removeprefix("sha512-")


# --- determinism ---------------------------------------------------------------------


def test_same_inputs_same_bytes_whatever_the_threads(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    (rootfs.root / "big").write_bytes(os.urandom(1 << 16) * 40)  # several gzip blocks
    one = _write(rootfs, tmp_path / "one.aci", threads=1).read_bytes()
    assert _write(rootfs, tmp_path / "two.aci", threads=2).read_bytes() == one
    assert _write(rootfs, tmp_path / "four.aci", threads=4).read_bytes() == one


def test_mtimes_clamped_to_epoch(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    os.utime(rootfs.root / "a.txt", (EPOCH + 1, EPOCH + 1))
    before = _write(rootfs, tmp_path / "before.aci").read_bytes()
    # Touching files after the epoch must not change the image ...
    os.utime(rootfs.root / "a.txt", (EPOCH + 5000, EPOCH + 5000.7))
    assert _write(rootfs, tmp_path / "after.aci").read_bytes() == before
    # ... while older mtimes are kept, floored to whole seconds.
    os.utime(rootfs.root / "a.txt", (1000.9, 1000.9))
    members = {m.name: m for m in _members(_write(rootfs, tmp_path / "old.aci"))}
    assert members["rootfs/a.txt"].mtime == 1000
    assert members["rootfs/bin"].mtime == EPOCH - 100
    members = {m.name: m for m in _members(_write(rootfs, tmp_path / "e.aci", epoch=500))}
    assert {m.mtime for m in members.values()} == {500}


# --- owners --------------------------------------------------------------------------


def test_owners_come_from_the_staged_rootfs(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path, privileged=False)
    rootfs.owners["bin/tool"] = (1000, 2000)
    rootfs.owners["a"] = (5, 6)
    members = {m.name: m for m in _members(_write(rootfs, tmp_path / "out.aci"))}
    assert (members["rootfs/bin/tool"].uid, members["rootfs/bin/tool"].gid) == (1000, 2000)
    assert (members["rootfs/a"].uid, members["rootfs/a"].gid) == (5, 6)
    # Files the (unprivileged) builder owns are root's inside the image.
    assert (members["rootfs/a.txt"].uid, members["rootfs/a.txt"].gid) == (0, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_privileged_owners_are_read_from_disk(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path, privileged=True)
    rootfs.set_owner("a.txt", 33, 44)
    members = {m.name: m for m in _members(_write(rootfs, tmp_path / "out.aci"))}
    assert (members["rootfs/a.txt"].uid, members["rootfs/a.txt"].gid) == (33, 44)


# --- special files -------------------------------------------------------------------


def test_hardlinks_first_sorted_path_is_the_file(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    os.link(rootfs.root / "a.txt", rootfs.root / "bin" / "z-link")
    os.link(rootfs.root / "a.txt", rootfs.root / "a" / "first")
    out = _write(rootfs, tmp_path / "out.aci")
    members = {m.name: m for m in _members(out)}
    assert members["rootfs/a/first"].isfile() and members["rootfs/a/first"].size == 4
    for name in ("rootfs/a.txt", "rootfs/bin/z-link"):
        assert members[name].islnk() and members[name].linkname == "rootfs/a/first"
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(out), "-C", str(dest)], check=True)
    assert os.path.samefile(dest / "rootfs/a.txt", dest / "rootfs/a/first")


def test_fifo_and_socket(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    os.mkfifo(rootfs.root / "pipe", 0o600)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(rootfs.root / "sock"))
        members = {m.name: m for m in _members(_write(rootfs, tmp_path / "out.aci"))}
    assert members["rootfs/pipe"].isfifo() and members["rootfs/pipe"].mode == 0o600
    assert "rootfs/sock" not in members  # sockets cannot be archived


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_nodes_on_disk(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    os.mknod(rootfs.root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(rootfs.root / "sda", 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    out = _write(rootfs, tmp_path / "out.aci")
    members = {m.name: m for m in _members(out)}
    assert members["rootfs/null"].ischr()
    assert (members["rootfs/null"].devmajor, members["rootfs/null"].devminor) == (1, 3)
    assert members["rootfs/sda"].isblk() and members["rootfs/sda"].devmajor == 8
    assert subprocess.run(["actool", "validate", str(out)]).returncode == 0


def test_recorded_devices_become_entries(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path, privileged=False)
    (rootfs.root / "dev").mkdir()
    (rootfs.root / "dev" / "console").write_bytes(b"")  # a placeholder from extraction
    rootfs.devices["dev/console"] = DeviceNode(kind="chr", major=5, minor=1, mode=0o600)
    rootfs.devices["dev/null"] = DeviceNode(kind="chr", major=1, minor=3, mode=0o666)
    rootfs.devices["dev/initctl"] = DeviceNode(kind="fifo", major=0, minor=0, mode=0o600)
    rootfs.devices["gone/dir/tty"] = DeviceNode(kind="chr", major=5, minor=0, mode=0o666)
    rootfs.owners["dev/null"] = (0, 5)
    names = [entry.name for entry, _ in iter_rootfs_entries(rootfs, EPOCH)]
    assert names[names.index("rootfs/dev") :][:4] == [
        "rootfs/dev",
        "rootfs/dev/console",
        "rootfs/dev/initctl",
        "rootfs/dev/null",
    ]
    assert not any("gone" in n for n in names)  # its directory was removed by a later step
    members = {m.name: m for m in _members(_write(rootfs, tmp_path / "out.aci"))}
    console, null = members["rootfs/dev/console"], members["rootfs/dev/null"]
    assert console.ischr() and (console.devmajor, console.devminor, console.mode) == (5, 1, 0o600)
    assert null.ischr() and (null.uid, null.gid, null.mode) == (0, 5, 0o666)
    assert members["rootfs/dev/initctl"].isfifo()


def _xattrs_supported(path: Path) -> bool:
    probe = path / ".probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


@pytest.fixture
def xattr_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory supporting user.* xattrs: tmp_path, else one on tmpfs (/dev/shm)."""
    if _xattrs_supported(tmp_path):
        yield tmp_path
        return
    if not (Path("/dev/shm").is_dir() and _xattrs_supported(Path("/dev/shm"))):
        pytest.skip("no filesystem here supports user.* xattrs")
    made = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        yield made
    finally:
        shutil.rmtree(made)


def test_xattrs_are_recorded_sorted(tmp_path: Path, xattr_dir: Path) -> None:
    root = xattr_dir / "rootfs"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    os.setxattr(root / "f", "user.zeta", b"last")
    os.setxattr(root / "f", "user.alpha", b"\x00\xffbinary")
    out = _write(StagedRootfs(root=root), tmp_path / "out.aci")
    (member,) = [m for m in _members(out) if m.name == "rootfs/f"]
    assert member.pax_headers["SCHILY.xattr.user.zeta"] == "last"
    assert "SCHILY.xattr.user.alpha" in member.pax_headers
    keys = [k for k in member.pax_headers if k.startswith("SCHILY")]
    assert keys == sorted(keys)
    listing = subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "-tvvzf", str(out)],
        check=True, capture_output=True, text=True,
    ).stdout
    assert "user.zeta" in listing


def test_long_paths_and_targets_through_the_finalizer(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    deep = rootfs.root.joinpath(*["directory-" + "d" * 40] * 6)
    deep.mkdir(parents=True)
    (deep / "file").write_bytes(b"deep")
    target = "/" + "/".join(["t" * 50] * 6)
    (rootfs.root / "longlink").symlink_to(target)
    out = _write(rootfs, tmp_path / "out.aci")
    members = {m.name: m for m in _members(out)}
    rel = "rootfs/" + str((deep / "file").relative_to(rootfs.root))
    assert len(rel) > 255 and members[rel].size == 4
    assert members["rootfs/longlink"].linkname == target
    gnu = subprocess.run(["tar", "-tzf", str(out)], check=True, capture_output=True, text=True)
    assert rel in gnu.stdout.splitlines()
    assert subprocess.run(["actool", "validate", str(out)]).returncode == 0


# --- output and progress -------------------------------------------------------------


class _InterruptingReporter(NullReporter):
    def progress(self, what: str, done: int, total: int | None) -> None:
        raise KeyboardInterrupt


def test_interrupt_keeps_previous_output(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    (rootfs.root / "zeros").write_bytes(bytes(9 << 20))  # past the first progress report
    out = tmp_path / "out" / "image.aci"
    out.parent.mkdir()
    out.write_bytes(b"previous image")
    with pytest.raises(KeyboardInterrupt):
        write_aci(rootfs, MANIFEST, out, epoch=EPOCH, reporter=_InterruptingReporter())
    assert out.read_bytes() == b"previous image"
    assert list(out.parent.iterdir()) == [out]


def test_progress_reports_compress(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int | None]] = []

    class Recorder(NullReporter):
        def progress(self, what: str, done: int, total: int | None) -> None:
            calls.append((what, done, total))

    written = write_aci(_rootfs(tmp_path), MANIFEST, tmp_path / "o.aci", epoch=EPOCH,
                        reporter=Recorder())
    assert calls[-1] == ("compress", written.uncompressed_size, written.uncompressed_size)


def test_unknown_compression_and_missing_rootfs(tmp_path: Path) -> None:
    with pytest.raises(AcbuildError) as info:
        write_aci(_rootfs(tmp_path), MANIFEST, tmp_path / "o.aci", epoch=0, compression="zip")
    assert info.value.message == (
        "unknown compression 'zip'; expected one of gzip, xz, bzip2, none"
    )
    missing = StagedRootfs(root=tmp_path / "nope")
    with pytest.raises(AcbuildError) as info:
        write_aci(missing, MANIFEST, tmp_path / "o.aci", epoch=0)
    assert info.value.message == f"cannot read the rootfs {tmp_path / 'nope'}: " \
        "No such file or directory"
    assert not (tmp_path / "o.aci").exists()
