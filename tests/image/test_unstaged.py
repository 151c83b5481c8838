"""Tests for files left out of the staged tree: a base directory's files (rootfs.lower) and
COPY references (rootfs.refs). Each is read when the image is written, so each must be the
file that was listed: a swap for a symlink, or a directory swapped on the way, fails the
build and never leads the read out of the tree. A file in the way of a path is the same
error it is in a staged rootfs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from acbuild.acfile.context import BuildContext
from acbuild.acfile.instructions import Copy
from acbuild.build.copy import copy_instruction
from acbuild.build.execute import make_workdir
from acbuild.errors import AcbuildError, BuildError, Span
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import unpack_base
from acbuild.image.finalize import write_aci
from acbuild.image.tarread import Limits
from acbuild.image.unstaged import materialize

MANIFEST = json.dumps({"acKind": "ImageManifest", "acVersion": "0.8.11",
                       "name": "example.com/x"}).encode()
SECRET = "host secret\n"


def _copy(source: str, dest: str) -> Copy:
    text = f"COPY {source} {dest}"
    span = Span(file="Acfile", line=2, column=1, length=4, source_line=text)
    return Copy(span=span, text=text, sources=(source,), dest=dest)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "conf").write_text(SECRET)
    (outside / "etc/conf").write_text(SECRET)
    return outside


def _base(tmp_path: Path, *, link: bool, name: str = "r",
          limits: Limits = Limits()) -> tuple[Path, StagedRootfs]:  # noqa: B008
    src = tmp_path / "src"
    if not src.exists():
        (src / "etc").mkdir(parents=True)
        (src / "etc/conf").write_text("x=1\n")
        (src / "bin").write_text("a file where a directory could be\n")
    rootfs = StagedRootfs(root=tmp_path / name)
    rootfs.root.mkdir()
    unpack_base(src, rootfs, link=link, limits=limits)
    return src, rootfs


def _written(rootfs: StagedRootfs, tmp_path: Path) -> str:
    out = tmp_path / "out.aci"
    try:
        write_aci(rootfs, MANIFEST, out, epoch=1_000_000_000)
    except AcbuildError as e:
        assert not out.exists()
        return e.message
    raise AssertionError("the image was written")


def test_base_file_swapped_for_a_symlink_fails_the_build(tmp_path: Path, secret: Path) -> None:
    src, rootfs = _base(tmp_path, link=True)
    (src / "etc/conf").unlink()
    (src / "etc/conf").symlink_to(secret / "conf")
    message = _written(rootfs, tmp_path)
    assert "changed during the build" in message and SECRET.strip() not in message


def test_base_directory_swapped_for_a_symlink_fails_the_build(tmp_path: Path,
                                                              secret: Path) -> None:
    src, rootfs = _base(tmp_path, link=True)
    (src / "etc").rename(tmp_path / "old-etc")
    (src / "etc").symlink_to(secret / "etc")
    assert "changed during the build" in _written(rootfs, tmp_path)
    with pytest.raises(AcbuildError, match="changed during the build"):
        materialize(rootfs)
    assert not (rootfs.root / "etc/conf").exists()


def test_base_bytes_are_limited_when_read(tmp_path: Path) -> None:
    _, rootfs = _base(tmp_path, link=True, limits=Limits(max_total_bytes=10))
    assert "larger than the limit" in _written(rootfs, tmp_path)


def _refs(tmp_path: Path) -> tuple[Path, StagedRootfs]:
    ctx = tmp_path / "ctx"
    (ctx / "dir").mkdir(parents=True)
    (ctx / "a.txt").write_text("alpha\n")
    (ctx / "dir/x").write_text("x\n")
    rootfs = StagedRootfs(root=tmp_path / "r")
    rootfs.root.mkdir()
    context = BuildContext(ctx)
    for source, dest in (("a.txt", "/a"), ("dir", "/d")):
        copy_instruction(_copy(source, dest), context=context, rootfs=rootfs, leave_refs=True)
    assert set(rootfs.refs) == {"a", "d/x"}
    return ctx, rootfs


def test_reference_swapped_for_a_symlink_fails_the_build(tmp_path: Path, secret: Path) -> None:
    ctx, rootfs = _refs(tmp_path)
    (ctx / "a.txt").unlink()
    (ctx / "a.txt").symlink_to(secret / "conf")
    assert "'a.txt' in the build context changed while the build read it" in _written(
        rootfs, tmp_path)
    with pytest.raises(BuildError, match="in the build context changed"):
        materialize(rootfs)


def test_reference_below_a_swapped_directory_fails_the_build(tmp_path: Path,
                                                             secret: Path) -> None:
    ctx, rootfs = _refs(tmp_path)
    (ctx / "dir").rename(tmp_path / "old-dir")
    (ctx / "dir").symlink_to(secret / "etc")
    (secret / "etc/x").write_text(SECRET)
    assert "'dir/x' in the build context changed" in _written(rootfs, tmp_path)


def test_reference_rewritten_fails_the_build(tmp_path: Path) -> None:
    ctx, rootfs = _refs(tmp_path)
    (ctx / "a.txt").write_text("a different size\n")
    assert "in the build context changed" in _written(rootfs, tmp_path)


def test_reference_edited_in_place_with_its_mtime_put_back_fails_the_build(
        tmp_path: Path) -> None:
    # Red-team PC-1: same size, same inode, mtime restored; only the ctime tells, and the
    # image (and the cache entry stored under the old key) must not get the new bytes.
    ctx, rootfs = _refs(tmp_path)
    before = (ctx / "a.txt").stat()
    time.sleep(0.01)  # the ctime clock is coarse
    with (ctx / "a.txt").open("r+b") as f:
        f.write(b"ALPHA\n")
    os.utime(ctx / "a.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "in the build context changed" in _written(rootfs, tmp_path)


@pytest.mark.parametrize("link", [False, True])
def test_a_base_file_in_the_way_is_the_staged_error(tmp_path: Path, link: bool) -> None:
    _, rootfs = _base(tmp_path, link=link)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a\n")
    with pytest.raises(BuildError, match="non-directory is in the way"):
        copy_instruction(_copy("a.txt", "/bin/a.txt"), context=BuildContext(ctx),
                         rootfs=rootfs, leave_refs=link)
    with pytest.raises(AcbuildError, match="non-directory"):
        make_workdir(rootfs, "/bin/sub")
    # Over the base's file itself: replaced, as in a staged rootfs.
    copy_instruction(_copy("a.txt", "/etc/conf"), context=BuildContext(ctx), rootfs=rootfs,
                     leave_refs=link)
    materialize(rootfs)
    assert (rootfs.root / "etc/conf").read_text() == "a\n"


@pytest.mark.parametrize("leave", [False, True])
def test_a_copied_file_in_the_way_is_the_staged_error(tmp_path: Path, leave: bool) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a\n")
    rootfs = StagedRootfs(root=tmp_path / "r")
    rootfs.root.mkdir()
    context = BuildContext(ctx)
    copy_instruction(_copy("a.txt", "/x"), context=context, rootfs=rootfs, leave_refs=leave)
    with pytest.raises(BuildError, match="non-directory is in the way"):
        copy_instruction(_copy("a.txt", "/x/y"), context=context, rootfs=rootfs,
                         leave_refs=leave)
    assert (rootfs.root / "x").read_text() == "a\n"  # made real to be in the way


def test_unstaged_image_is_the_staged_image(tmp_path: Path) -> None:
    """BEGIN <dir> plus COPY over and beside the base's files: left in place, made real,
    or staged throughout, the same image."""
    ctx = tmp_path / "ctx"
    (ctx / "etc").mkdir(parents=True)
    (ctx / "etc/conf").write_text("replaced\n")
    (ctx / "etc/new").write_text("new\n")
    ids = []
    for link in (False, True):
        _, rootfs = _base(tmp_path, link=link, name=f"r-{link}")
        copy_instruction(_copy("etc", "/etc"), context=BuildContext(ctx), rootfs=rootfs,
                         leave_refs=link)
        out = tmp_path / f"{link}.aci"
        ids.append(write_aci(rootfs, MANIFEST, out, epoch=1_000_000_000).image_id)
        if link:
            materialize(rootfs)
            assert (rootfs.root / "etc/conf").read_text() == "replaced\n"
            ids.append(write_aci(rootfs, MANIFEST, out, epoch=1_000_000_000).image_id)
    assert len(set(ids)) == 1, ids
    assert os.listdir(tmp_path / "src/etc") == ["conf"]


def test_a_failure_mid_way_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """Files opened ahead of the writer (big ones stay open) are closed when it fails."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    for i in range(150):
        (src / f"f{i:03}").write_bytes(b"x" * (70 << 10))  # above what is read whole
    rootfs = StagedRootfs(root=tmp_path / "r")
    rootfs.root.mkdir()
    unpack_base(src, rootfs, link=True, limits=Limits(max_total_bytes=20 * (70 << 10)))
    before = len(os.listdir("/proc/self/fd"))
    assert "larger than the limit" in _written(rootfs, tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before
