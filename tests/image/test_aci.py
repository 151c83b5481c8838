"""aci: reading ACIs, and unpacking base images (ACI, rootfs tarball, directory) safely."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from acbuild.errors import ImageError
from acbuild.fs.staging import DeviceNode, StagedRootfs
from acbuild.image.aci import image_id, iter_entries, read_manifest, unpack_base, unpack_image
from acbuild.image.tarread import Limits
from acbuild.report import NullReporter
from tests.support.hostile import MINIMAL_MANIFEST, Tar, aci, compress, snapshot


def _write(tmp_path: Path, data: bytes, kind: str = "gzip", name: str = "x.aci") -> Path:
    p = tmp_path / name
    p.write_bytes(compress(data, kind))
    return p


@pytest.fixture
def rootfs(tmp_path: Path) -> StagedRootfs:
    root = tmp_path / "stage"
    root.mkdir()
    return StagedRootfs(root=root)


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "none"])
def test_read_manifest_and_image_id(tmp_path: Path, kind: str) -> None:
    tar = aci().file("rootfs/a", b"x").data()
    image = _write(tmp_path, tar, kind)
    assert read_manifest(image).name == "example.com/test"
    assert image_id(image) == "sha512-" + hashlib.sha512(tar).hexdigest()


def test_manifest_last_and_too_big(tmp_path: Path) -> None:
    t = Tar().dir("rootfs").file("rootfs/a").file("manifest", json.dumps(MINIMAL_MANIFEST).encode())
    assert read_manifest(_write(tmp_path, t.data())).name == "example.com/test"
    big = aci(b" " * 2000 + json.dumps(MINIMAL_MANIFEST).encode()).data()
    with pytest.raises(ImageError, match="manifest is larger than 1000 bytes"):
        read_manifest(_write(tmp_path, big), limits=Limits(max_manifest=1000))


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such image"):
        read_manifest(tmp_path / "nope.aci")
    with pytest.raises(ImageError, match="not an ACI: it has no manifest"):
        read_manifest(_write(tmp_path, Tar().dir("rootfs").data()))
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(ImageError, match="not a tar archive"):
        read_manifest(tmp_path / "m.json")


def test_iter_entries(tmp_path: Path) -> None:
    t = aci().file("./rootfs/a", b"xy", mode=0o4755, uid=5).symlink("rootfs/l", "/a")
    names = [(e.name, e.kind, e.size, e.mode, e.uid, e.linkname)
             for e in iter_entries(_write(tmp_path, t.data()))]
    assert names == [
        ("manifest", "file", len(json.dumps(MINIMAL_MANIFEST)), 0o644, 0, ""),
        ("rootfs", "dir", 0, 0o755, 0, ""),
        ("rootfs/a", "file", 2, 0o4755, 5, ""),
        ("rootfs/l", "symlink", 0, 0o777, 0, "/a"),
    ]


def test_unpack_image(tmp_path: Path, rootfs: StagedRootfs) -> None:
    t = aci().dir("rootfs/bin").file("rootfs/bin/sh", b"#!", mode=0o755).file("stray", b"s")
    m = unpack_image(_write(tmp_path, t.data()), rootfs)
    assert m.name == "example.com/test"
    assert (rootfs.root / "bin/sh").read_bytes() == b"#!"
    assert sorted(os.listdir(rootfs.root)) == ["bin"]


@pytest.mark.parametrize("kind", ["gzip", "none"])
def test_unpack_reports_progress_against_the_file_size(tmp_path: Path, rootfs: StagedRootfs,
                                                        kind: str) -> None:
    calls: list[tuple[str, int, int | None]] = []

    class Rep(NullReporter):
        def progress(self, what: str, done: int, total: int | None) -> None:
            calls.append((what, done, total))

    t = aci().file("rootfs/big", os.urandom(3 << 20)).file("rootfs/small", b"s")
    path = _write(tmp_path, t.data(), kind)
    unpack_image(path, rootfs, reporter=Rep())
    size = path.stat().st_size
    assert calls and all(what == "extract" and total == size for what, _, total in calls)
    assert calls[-1][1] == size  # ends at 100 %, so the bar can go
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)


def test_unpack_image_without_manifest(tmp_path: Path, rootfs: StagedRootfs) -> None:
    with pytest.raises(ImageError, match="not an ACI: it has no manifest"):
        unpack_image(_write(tmp_path, Tar().dir("rootfs").data()), rootfs)


def test_unpack_base_kinds(tmp_path: Path, rootfs: StagedRootfs) -> None:
    assert unpack_base(_write(tmp_path, aci().file("rootfs/a").data()), rootfs) is not None
    plain = Tar().dir("./").file("./etc/os-release", b"ID=x").data()
    other = StagedRootfs(root=tmp_path / "plain")
    other.root.mkdir()
    assert unpack_base(_write(tmp_path, plain, "xz", "p.tar.xz"), other) is None
    assert (other.root / "etc/os-release").read_bytes() == b"ID=x"
    with pytest.raises(ImageError, match="looks like an ACI"):
        unpack_base(_write(tmp_path, Tar().dir("rootfs").data(), name="r.tar"), rootfs)
    with pytest.raises(ImageError, match="no such image or directory"):
        unpack_base(tmp_path / "missing", rootfs)


def test_unpack_base_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin/prog").write_bytes(b"elf")
    os.chown(src / "bin/prog", 1000, 1001)  # before chmod: chown clears setuid
    os.chmod(src / "bin/prog", 0o4711)
    os.link(src / "bin/prog", src / "bin/prog2")
    os.symlink("/etc/shadow", src / "bin/shadow")  # a host file: must stay a link
    os.symlink("../../..", src / "up")
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(src / "null", 0o666)
    os.setxattr(src / "bin/prog", "user.k", b"v")
    before = snapshot(src)
    for privileged in (True, False):
        rootfs = StagedRootfs(root=tmp_path / f"stage-{privileged}", privileged=privileged)
        rootfs.root.mkdir()
        assert unpack_base(src, rootfs) is None
        r = rootfs.root
        assert (r / "bin/prog").read_bytes() == b"elf"
        assert stat.S_IMODE((r / "bin/prog").stat().st_mode) == 0o4711
        assert (r / "bin/prog").stat().st_ino == (r / "bin/prog2").stat().st_ino
        assert os.readlink(r / "bin/shadow") == "/etc/shadow"
        assert os.readlink(r / "up") == "../../.."
        assert os.getxattr(r / "bin/prog", "user.k") == b"v"
        assert not os.path.lexists(r / "null")  # a device is never made on the host
        assert rootfs.devices["null"] == DeviceNode(kind="chr", major=1, minor=3, mode=0o666)
        if privileged:
            assert (r / "bin/prog").stat().st_uid == 1000
        else:
            assert rootfs.owners["bin/prog"] == (1000, 1001)
            assert rootfs.devices["null"] == DeviceNode(kind="chr", major=1, minor=3, mode=0o666)
            assert rootfs.devices["fifo"].kind == "fifo"
    assert snapshot(src) == before


def _full_snapshot(path: Path) -> dict[str, tuple[int, int, int, int, int, bytes]]:
    """Mode, owner, size, mtime and content (or link target) of everything below ``path``."""
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        body = os.fsencode(os.readlink(p)) if p.is_symlink() else (
            p.read_bytes() if p.is_file() else b"")
        out[str(p.relative_to(path))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                         st.st_mtime_ns, body)
    return out


def test_linked_base_directory_gives_the_same_image_as_a_copy(tmp_path: Path) -> None:
    """A base directory in a stage without RUN (``link``) is left in place: the image read
    through the lower tree, and after it is made real (hardlinks), is the copy's image."""
    from acbuild.image.finalize import write_aci
    from acbuild.image.unstaged import materialize

    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin/prog").write_bytes(b"elf")
    os.chown(src / "bin/prog", 1000, 1001)
    os.chmod(src / "bin/prog", 0o4711)
    os.link(src / "bin/prog", src / "bin/prog2")
    (src / "etc").mkdir()
    (src / "etc/conf").write_text("x=1\n")
    os.setxattr(src / "etc/conf", "user.k", b"v")
    (src / "etc/caps").write_text("caps\n")
    os.setxattr(src / "etc/caps", "trusted.k", b"v")  # kept only by a privileged build
    os.symlink("conf", src / "etc/link")
    os.utime(src / "etc", (1_500_000_000, 1_500_000_000))  # before the epoch: kept
    before = _full_snapshot(src)
    manifest = json.dumps(MINIMAL_MANIFEST).encode()
    for privileged in (True, False):
        ids = []
        for link in (False, True):
            rootfs = StagedRootfs(root=tmp_path / f"s-{privileged}-{link}", privileged=privileged)
            rootfs.root.mkdir()
            assert unpack_base(src, rootfs, link=link) is None
            def same(rel: str, root: Path = rootfs.root) -> bool:
                return (root / rel).stat().st_ino == (src / rel).stat().st_ino

            out = tmp_path / f"{privileged}-{link}.aci"
            if link:
                assert rootfs.lower is not None
                assert not (rootfs.root / "etc/conf").exists()  # not staged at all
                assert (rootfs.root / "etc/link").is_symlink()  # symlinks are
                ids.append(write_aci(rootfs, manifest, out, epoch=2_000_000_000).image_id)
                materialize(rootfs)
                assert rootfs.lower is None
            assert same("etc/conf") == link
            # Without root a copy drops trusted.*: such a file is copied, not linked.
            assert same("etc/caps") == (link and privileged)
            ids.append(write_aci(rootfs, manifest, out, epoch=2_000_000_000).image_id)
        assert len(set(ids)) == 1, ids
    assert _full_snapshot(src) == before


def test_unpack_through_earlier_layer_symlink(tmp_path: Path, rootfs: StagedRootfs) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    unpack_image(_write(tmp_path, aci().symlink("rootfs/evil", str(outside)).data()), rootfs)
    unpack_image(_write(tmp_path, aci().file("rootfs/evil/x", b"pwned").data(), name="2.aci"),
                 rootfs)
    assert os.listdir(outside) == []
    assert (rootfs.root / str(outside).lstrip("/") / "x").read_bytes() == b"pwned"


def test_unpack_actool_built_image(tmp_path: Path, rootfs: StagedRootfs) -> None:
    layout = tmp_path / "layout"
    (layout / "rootfs/etc").mkdir(parents=True)
    (layout / "rootfs/etc/hello").write_text("hi")
    (layout / "manifest").write_text(json.dumps(MINIMAL_MANIFEST))
    out = tmp_path / "built.aci"
    subprocess.run(["actool", "build", str(layout), str(out)], check=True, capture_output=True)
    assert unpack_base(out, rootfs) is not None
    assert (rootfs.root / "etc/hello").read_text() == "hi"
