"""StagedRootfs ownership records and removing staged trees."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from acbuild.fs.staging import StagedRootfs, remove_tree
from tests.support import fanotify


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


def test_a_directory_swapped_for_a_symlink_mid_removal_is_not_followed(tmp_path: Path) -> None:
    """Whoever can write in the tree (a RUN step's files, another user) replaces a directory
    with a symlink to a host directory just after the remover listed it: the remover is
    held in the kernel by a fanotify permission event on that listing, so the swap lands
    there on every run. Neither a chmod nor a removal may reach what the symlink points at
    (a remover working by path re-resolves 'tree/a/b' through the new symlink)."""
    if why := fanotify.available():
        pytest.skip(why)
    host = tmp_path / "host"
    (host / "b" / "sub").mkdir(parents=True)
    (host / "b" / "sub" / "precious").write_text("keep")
    for d in (host, host / "b", host / "b" / "sub"):
        d.chmod(0o755)
    tree = tmp_path / "tree"
    (tree / "a" / "b" / "sub").mkdir(parents=True)
    (tree / "a" / "b" / "sub" / "f").write_text("mine")
    (tree / "a" / "file").write_text("mine")

    def swap(event: int) -> bool:
        if event == 0:  # the first getdents: the names are being read
            return False
        # the second: the listing is complete and nothing in it acted on yet
        (tree / "a").rename(tmp_path / "moved")
        (tree / "a").symlink_to(host)
        return True

    with fanotify.hold(tree / "a", fanotify.FAN_ACCESS_PERM | fanotify.FAN_ONDIR,
                       swap) as seen:
        remove_tree(tree)
    assert len(seen) == 2, "the swap never happened"
    assert not tree.exists()
    modes = {d.name: d.stat().st_mode & 0o777 for d in (host, host / "b", host / "b" / "sub")}
    assert modes == {"host": 0o755, "b": 0o755, "sub": 0o755}
    assert (host / "b" / "sub" / "precious").read_text() == "keep"


def test_remove_tree_never_chmods_through_a_symlink_to_a_file(tmp_path: Path) -> None:
    outside = tmp_path / "outside-file"
    outside.write_text("x")
    outside.chmod(0o444)
    tree = tmp_path / "tree"
    (tree / "ro").mkdir(parents=True)
    (tree / "ro" / "link").symlink_to(outside)
    (tree / "ro").chmod(0o555)
    remove_tree(tree)
    assert not tree.exists()
    assert outside.stat().st_mode & 0o777 == 0o444


def test_remove_tree_of_a_very_deep_tree(tmp_path: Path) -> None:
    """No recursion limit: an archive can nest directories thousands deep."""
    tree = tmp_path / "tree"
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("tree", dir_fd=fd)
    current = os.open("tree", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    for _ in range(1500):
        os.mkdir("d", dir_fd=current)
        nxt = os.open("d", os.O_RDONLY, dir_fd=current)
        os.close(current)
        current = nxt
    os.close(current)
    try:
        remove_tree(tree)
        assert not tree.exists()
    finally:
        # pytest's own cleanup (shutil.rmtree) cannot remove such a tree: never leave one
        subprocess.run(["rm", "-rf", "--", str(tree)], check=True)
