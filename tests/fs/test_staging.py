"""StagedRootfs ownership records and removing staged trees."""

from __future__ import annotations

import os
from pathlib import Path

from acbuild.fs.staging import StagedRootfs, remove_tree


def test_remove_tree_with_read_only_dirs_and_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    outside.chmod(0o555)
    tree = tmp_path / "tree"
    (tree / "ro" / "deep").mkdir(parents=True)
    (tree / "ro" / "deep" / "f").write_text("data")
    (tree / "dirlink").symlink_to(outside)
    (tree / "ro" / "deep").chmod(0o555)
    (tree / "ro").chmod(0o500)
    remove_tree(tree)
    assert not tree.exists()
    # The symlink's target is left as it was: neither removed nor made writable.
    assert (outside / "keep").read_text() == "x"
    assert outside.stat().st_mode & 0o777 == 0o555
    outside.chmod(0o755)


def test_remove_tree_of_nothing(tmp_path: Path) -> None:
    remove_tree(tmp_path / "missing")


def test_unprivileged_owner_records(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "f").write_text("x")
    rootfs = StagedRootfs(root=root, privileged=False)
    st = os.lstat(root / "f")
    assert rootfs.owner("f", st) == (0, 0)  # the builder's own ids read as 0
    rootfs.set_owner("f", 1000, 1001)
    assert rootfs.owner("f", st) == (1000, 1001)
    assert os.lstat(root / "f").st_uid == st.st_uid  # recorded, not applied
