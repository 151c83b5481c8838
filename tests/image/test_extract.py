"""extract: hostile archives never touch anything outside the staging directory."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from acbuild.errors import ImageError
from acbuild.fs.staging import DeviceNode, StagedRootfs
from acbuild.image.extract import extract_tar
from acbuild.image.tarread import Limits
from acbuild.report import NullReporter
from tests.support.hostile import Tar, aci, compress, raw_header, snapshot


@dataclass
class Scene:
    """A staging dir with a rootfs, and a sentinel dir beside it that must never change."""

    base: Path
    root: Path
    sentinel: Path
    secret: Path

    def extract(self, data: bytes, *, privileged: bool = True, **kw: object) -> StagedRootfs:
        rootfs = StagedRootfs(root=self.root, privileged=privileged)
        self.extract_into(rootfs, data, **kw)
        return rootfs

    def extract_into(self, rootfs: StagedRootfs, data: bytes, **kw: object) -> None:
        extract_tar(io.BytesIO(data), rootfs, **kw)  # type: ignore[arg-type]


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    secret = sentinel / "secret"
    secret.write_bytes(b"host secret")
    (sentinel / "sub").mkdir()
    root = tmp_path / "stage" / "rootfs"
    root.mkdir(parents=True)
    before = snapshot(sentinel)
    outside = sorted(p.name for p in tmp_path.iterdir())
    s = Scene(base=tmp_path, root=root, sentinel=sentinel, secret=secret)
    yield s
    assert snapshot(sentinel) == before, "something outside the staging dir changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == outside
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["rootfs"]
    secret_ino = secret.stat().st_ino
    for p in root.rglob("*"):
        st = p.lstat()
        assert st.st_ino != secret_ino, f"{p} is the host file"
        if stat.S_ISREG(st.st_mode):
            assert p.read_bytes() != b"host secret", f"{p} holds host content"


def test_plain_tree(scene: Scene) -> None:
    t = (
        Tar()
        .dir("./")
        .dir("bin", mode=0o711)
        .file("bin/hello", b"hi", mode=0o755, uid=1, gid=2)
        .symlink("bin/sh", "/bin/busybox")
        .hardlink("bin/hi", "bin/hello")
    )
    rootfs = scene.extract(t.data(), privileged=False)
    r = scene.root
    assert (r / "bin/hello").read_bytes() == b"hi"
    assert os.readlink(r / "bin/sh") == "/bin/busybox"  # absolute symlinks are verbatim
    assert (r / "bin/hi").stat().st_ino == (r / "bin/hello").stat().st_ino
    assert stat.S_IMODE((r / "bin").stat().st_mode) == 0o711
    assert (r / "bin/hello").stat().st_mtime == 1_500_000_000
    assert rootfs.owners["bin/hello"] == (1, 2)
    assert rootfs.owners["bin/hi"] == (1, 2)


def test_acis_use_the_rootfs_prefix(scene: Scene) -> None:
    t = aci().file("rootfs/a", b"a").file("./rootfs/b", b"b").file("rootfsX", b"no")
    seen: list[str] = []
    scene.extract(t.data(), prefix="rootfs/", on_outside=lambda n, m, tar: seen.append(n))
    assert sorted(os.listdir(scene.root)) == ["a", "b"]
    assert seen == ["manifest", "rootfsX"]


def test_auto_prefix(scene: Scene) -> None:
    used = extract_tar(io.BytesIO(aci().file("rootfs/a").data()), StagedRootfs(root=scene.root),
                       prefix=None)
    assert used == "rootfs/"
    assert os.listdir(scene.root) == ["a"]


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "./../x", "rootfs/../../x"])
def test_dotdot_escape_is_rejected(scene: Scene, name: str) -> None:
    with pytest.raises(ImageError, match=r"archive entry '.*' points outside the image"):
        scene.extract(Tar().file(name, b"x").data())


def test_dotdot_inside_is_normalised(scene: Scene) -> None:
    scene.extract(Tar().file("a/../b", b"x").data())
    assert os.listdir(scene.root) == ["b"]


def test_absolute_names_are_relative_to_root(scene: Scene) -> None:
    scene.extract(Tar().file(str(scene.secret), b"evil").file("/etc/x", b"y").data())
    assert (scene.root / str(scene.secret).lstrip("/")).read_bytes() == b"evil"
    assert (scene.root / "etc/x").read_bytes() == b"y"


def test_write_through_absolute_symlink_stays_inside(scene: Scene) -> None:
    t = Tar().symlink("evil", str(scene.sentinel)).file("evil/secret", b"pwned")
    t.symlink("etc-link", "/etc").file("etc-link/passwd", b"root::0:0")
    scene.extract(t.data())
    assert (scene.root / str(scene.sentinel).lstrip("/") / "secret").read_bytes() == b"pwned"
    assert os.readlink(scene.root / "etc-link") == "/etc"
    assert (scene.root / "etc/passwd").read_bytes() == b"root::0:0"


def test_self_referencing_symlink_is_a_loop(scene: Scene) -> None:
    # inside a chroot, etc -> /etc points at itself
    t = Tar().symlink("etc", "/etc").file("etc/passwd", b"root::0:0")
    with pytest.raises(ImageError, match="too many levels of symbolic links resolving 'etc'"):
        scene.extract(t.data())


def test_write_through_relative_symlink_up(scene: Scene) -> None:
    t = Tar().symlink("up", "../../../../../..").file("up/sentinel/secret", b"pwned")
    scene.extract(t.data())
    assert (scene.root / "sentinel/secret").read_bytes() == b"pwned"


def test_file_over_symlink_replaces_the_link(scene: Scene) -> None:
    t = Tar().symlink("f", str(scene.secret)).file("f", b"new")
    scene.extract(t.data())
    assert not (scene.root / "f").is_symlink()
    assert (scene.root / "f").read_bytes() == b"new"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/etc/passwd", "which is not a regular file in the image"),
        ("../../outside", "points outside the image"),
        ("sentinel-link", "which is not a regular file in the image"),
        ("missing", "which is not a regular file in the image"),
        ("adir", "which is not a regular file in the image"),
    ],
)
def test_hardlinks_never_reach_host_files(scene: Scene, target: str, message: str) -> None:
    t = Tar().symlink("sentinel-link", str(scene.secret)).dir("adir").hardlink("h", target)
    with pytest.raises(ImageError, match=message):
        scene.extract(t.data())


def test_hardlink_through_symlinked_parent_stays_inside(scene: Scene) -> None:
    t = Tar().symlink("s", str(scene.sentinel)).hardlink("h", "s/secret")
    with pytest.raises(ImageError, match="not a regular file"):
        scene.extract(t.data())


def test_directory_replaced_by_symlink_mid_archive(scene: Scene) -> None:
    t = (
        Tar()
        .dir("d", mode=0o555)
        .file("d/f", b"x")
        .symlink("d", str(scene.sentinel))
        .file("d/secret", b"pwned")
        .file("d/sub/new", b"pwned")
    )
    scene.extract(t.data())
    assert (scene.root / "d").is_symlink()
    inside = scene.root / str(scene.sentinel).lstrip("/")
    assert (inside / "secret").read_bytes() == b"pwned"
    assert (inside / "sub/new").read_bytes() == b"pwned"


def test_symlink_replaced_by_directory(scene: Scene) -> None:
    t = Tar().symlink("d", str(scene.sentinel)).dir("d").file("d/f", b"x")
    scene.extract(t.data())
    assert (scene.root / "d").is_dir() and not (scene.root / "d").is_symlink()


def test_layer_plants_symlink_next_layer_writes_through_it(scene: Scene) -> None:
    rootfs = scene.extract(Tar().symlink("evil", str(scene.sentinel)).data())
    scene.extract_into(rootfs, Tar().file("evil/secret", b"pwned").data(), whiteouts=True)
    scene.extract_into(rootfs, Tar().hardlink("h", "evil/secret").data())
    assert (scene.root / "h").read_bytes() == b"pwned"
    assert (scene.root / str(scene.sentinel).lstrip("/") / "secret").exists()


def test_devices_as_root_and_rootless(scene: Scene) -> None:
    """Devices are records in both modes, never nodes on the host; FIFOs are made as root."""
    t = Tar().device("dev/null", "chr", 1, 3, mode=0o666).device("dev/fifo", "fifo")
    t.device("dev/sda", "blk", 8, 0, mode=0o660)
    data = t.data()
    root = scene.extract(data)
    assert not os.path.lexists(scene.root / "dev/null")
    assert not os.path.lexists(scene.root / "dev/sda")
    assert root.devices == {"dev/null": DeviceNode(kind="chr", major=1, minor=3, mode=0o666),
                            "dev/sda": DeviceNode(kind="blk", major=8, minor=0, mode=0o660)}
    if root.privileged:
        assert stat.S_ISFIFO((scene.root / "dev/fifo").lstat().st_mode)
        (scene.root / "dev/fifo").unlink()
    rootless = scene.extract(data, privileged=False)
    assert rootless.devices == {
        "dev/null": DeviceNode(kind="chr", major=1, minor=3, mode=0o666),
        "dev/fifo": DeviceNode(kind="fifo", major=0, minor=0, mode=0o600),
        "dev/sda": DeviceNode(kind="blk", major=8, minor=0, mode=0o660),
    }
    assert os.listdir(scene.root / "dev") == []


def test_impossible_device_numbers_are_refused(scene: Scene) -> None:
    for major, minor in ((1 << 12, 0), (0, 1 << 20)):
        t = tarfile.TarFile.open(fileobj=io.BytesIO(), mode="w", format=tarfile.GNU_FORMAT)
        info = tarfile.TarInfo("big")
        info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, major, minor
        t.addfile(info)
        t.close()
        data = t.fileobj.getvalue()  # type: ignore[union-attr]
        with pytest.raises(ImageError, match="impossible number"):
            scene.extract(data)


def test_directory_replacing_a_device_record(scene: Scene) -> None:
    """A later entry below a recorded node's path: the node gives way to the directory."""
    rootfs = scene.extract(Tar().device("x", "blk", 7, 0).file("x/y", b"hi").data())
    assert rootfs.devices == {}
    assert (scene.root / "x/y").read_bytes() == b"hi"


def test_setuid_and_owner_kept(scene: Scene) -> None:
    t = Tar().file("su", b"x", mode=0o4755, uid=1000, gid=1000).file("sg", b"y", mode=0o2711)
    scene.extract(t.data())
    st = (scene.root / "su").stat()
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert stat.S_IMODE((scene.root / "sg").stat().st_mode) == 0o2711


def test_readonly_directory_does_not_block_later_entries(scene: Scene) -> None:
    t = Tar().dir("ro", mode=0o555).file("ro/a", b"a").dir("ro/sub", mode=0o500).file("ro/sub/b")
    scene.extract(t.data(), privileged=False)
    assert stat.S_IMODE((scene.root / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((scene.root / "ro/sub").stat().st_mode) == 0o500
    assert (scene.root / "ro/sub").stat().st_mtime == 1_500_000_000


def test_xattrs(scene: Scene) -> None:
    pax = {"SCHILY.xattr.user.test": "v", "SCHILY.xattr.security.selinux": "x"}
    rep = NullReporter()
    try:
        os.setxattr(scene.root, "user.probe", b"1")
    except OSError:
        pytest.skip("filesystem without user xattrs")
    scene.extract(Tar().file("f", b"x", pax=pax).data(), privileged=False, reporter=rep)
    assert os.getxattr(scene.root / "f", "user.test") == b"v"
    assert rep.warnings == ["xattrs in the security.* namespace need root; not kept"]


@pytest.mark.parametrize(
    ("limits", "tar", "message"),
    [
        (Limits(max_total_bytes=10), Tar().file("a", b"x" * 6).file("b", b"x" * 6),
         "image content is larger than the limit of 10 bytes"),
        (Limits(max_entries=3), Tar().file("a").file("b").file("c").file("d"),
         "archive has more than 3 entries"),
        (Limits(max_path=20), Tar().file("a" * 21), "archive entry name is longer than 20 bytes"),
        (Limits(max_path=20), Tar().symlink("a", "b" * 21), "archive entry name is longer than 20"),
    ],
)
def test_limits(scene: Scene, limits: Limits, tar: Tar, message: str) -> None:
    with pytest.raises(ImageError, match=message) as e:
        scene.extract(tar.data(), limits=limits)
    if "larger" in message:
        assert e.value.hint == "raise the limit with --max-image-size"


def test_long_names_within_limits(scene: Scene) -> None:
    name = "/".join(["d" * 200] * 5)
    scene.extract(Tar().file(name, b"x").data())
    assert (scene.root / name).read_bytes() == b"x"


def test_duplicates_last_one_wins(scene: Scene) -> None:
    scene.extract(Tar().file("a", b"1").file("a", b"2").dir("d").file("d/x").file("d", b"f").data())
    assert (scene.root / "a").read_bytes() == b"2"
    assert (scene.root / "d").read_bytes() == b"f"


@pytest.mark.parametrize("cut", [100, 512, 1024 + 256, 1536, 2100, 2560])
def test_truncated_plain_tar(scene: Scene, cut: int) -> None:
    data = Tar().file("a", b"x" * 600).file("b", b"y" * 10).data()
    assert data[2560:] == bytes(len(data) - 2560)  # a at 0, b at 1536, end at 2560
    with pytest.raises(ImageError) as e:
        scene.extract(data[:cut])
    assert e.value.message == "archive is truncated"


def test_missing_end_blocks_is_truncation(scene: Scene) -> None:
    with pytest.raises(ImageError, match="archive is truncated"):
        scene.extract(Tar().file("a", b"x").data(end=False))


def test_garbage_header_mid_archive(scene: Scene) -> None:
    data = Tar().file("a", b"x").data(end=False) + raw_header("b", checksum=False) + bytes(1024)
    with pytest.raises(ImageError, match="archive is corrupt: invalid tar header at offset 1024"):
        scene.extract(data)


def test_empty_archive_is_fine(scene: Scene) -> None:
    scene.extract(bytes(10240))
    assert os.listdir(scene.root) == []


def test_whiteouts(scene: Scene) -> None:
    rootfs = scene.extract(Tar().file("a/keep").file("a/gone").file("o/old").dir("o/sub").data())
    layer = (
        Tar()
        .file("a/.wh.gone")
        .file("o/new", b"n")
        .file("o/.wh..wh..opq")
        .file("o/newer")
        .file("a/.wh.keep-not-there")
    )
    scene.extract_into(rootfs, layer.data(), whiteouts=True)
    assert sorted(os.listdir(scene.root / "a")) == ["keep"]
    assert sorted(os.listdir(scene.root / "o")) == ["new", "newer"]


def test_whiteout_names_are_plain_files_without_whiteouts(scene: Scene) -> None:
    scene.extract(Tar().file(".wh.x").data())
    assert os.listdir(scene.root) == [".wh.x"]


def test_whiteout_cannot_reach_outside(scene: Scene) -> None:
    rootfs = scene.extract(Tar().symlink("s", str(scene.sentinel)).data())
    layer = Tar().file("s/.wh.secret").file("s/.wh..wh..opq").file(".wh.s")
    scene.extract_into(rootfs, layer.data(), whiteouts=True)
    assert os.listdir(scene.root) == []


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz"])
def test_truncated_compressed_stream(scene: Scene, kind: str) -> None:
    from acbuild.image.compression import open_decompressed

    data = compress(Tar().file("a", os.urandom(50_000)).data(), kind)
    with pytest.raises(ImageError, match="archive is empty"):
        scene.extract_into(StagedRootfs(root=scene.root), b"", prefix="")
    with pytest.raises(ImageError, match="archive is truncated"):
        extract_tar(open_decompressed(io.BytesIO(data[: len(data) // 2])),
                    StagedRootfs(root=scene.root))


def test_bad_gzip_crc(scene: Scene) -> None:
    from acbuild.image.compression import open_decompressed

    data = bytearray(compress(Tar().file("a", b"x" * 1000).data()))
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    with pytest.raises(ImageError, match=r"^error: corrupt gzip archive: CRC check failed"):
        extract_tar(open_decompressed(io.BytesIO(bytes(data))), StagedRootfs(root=scene.root))


def test_progress_is_the_callers_to_report(scene: Scene) -> None:
    # extract_tar knows only uncompressed bytes, which have no known total: it ticks, the
    # caller (who knows the compressed size) reports.
    ticks: list[int] = []
    calls: list[tuple[str, int, int | None]] = []

    class Rep(NullReporter):
        def progress(self, what: str, done: int, total: int | None) -> None:
            calls.append((what, done, total))

    scene.extract(Tar().file("a", b"x" * 100).data(), reporter=Rep(),
                  progress=lambda: ticks.append(1))
    assert ticks and calls == []
