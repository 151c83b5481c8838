"""StagedRootfs ownership records, removing staged trees, how xattrs are framed, and how
COPY references are kept."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from acbuild.fs.staging import CacheFiles, StagedRootfs, remove_tree, xattr_field
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


# Red-team RK-8: as name=value NUL frames, these two sets were one field.
ONE = (("user.a", b"v\0user.b=w"),)
TWO = (("user.a", b"v"), ("user.b", b"w"))


@pytest.mark.parametrize(("left", "right"), [
    (ONE, TWO),
    ((("user.a", b"v=w"),), (("user.a=v", b"w"),)),  # the separator moved into the name
    ((("user.a", b""),), ()),  # an empty value is still an xattr
    ((("user.a", b"\0"),), (("user.a", b""), ("user.\0", b""))),
])
def test_different_xattr_sets_are_different_fields(
        left: tuple[tuple[str, bytes], ...], right: tuple[tuple[str, bytes], ...]) -> None:
    assert xattr_field(left) != xattr_field(right)


def test_an_xattr_field_is_the_sorted_set() -> None:
    pairs = [("user.b", b"2"), ("security.capability", b"\1\0\0\2"), ("user.a", b"1")]
    assert xattr_field(pairs) == xattr_field(reversed(pairs)) == xattr_field(sorted(pairs))
    assert xattr_field(()) == b""


def test_a_cache_entry_file_with_the_other_xattr_set_is_not_the_one_verified(
        tmp_path: Path) -> None:
    """CacheFiles.holds compares the framed xattrs: RK-8's swap of one set for the other
    (nothing else about the file changes but its ctime, which is not compared) is refused."""
    path = tmp_path / "f"
    path.write_bytes(b"data")
    st = path.stat()
    inode = (st.st_dev, st.st_ino)
    verified = (st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid,
                xattr_field(ONE), b"")
    files = CacheFiles(entry="k", paths={"f": inode}, files={inode: verified},
                       discard=lambda key: None)
    assert files.holds("f", st, xattr_field(ONE))
    assert not files.holds("f", st, xattr_field(TWO))


def test_file_refs_keep_each_reference_as_it_was_recorded(tmp_path: Path) -> None:
    """FileRefs packs a reference (signature, mode, source) into one bytes object, and
    gives back the FileRef it stands for: by its path in the rootfs, with the context path
    of its source's directory (or the source's own name), its digest when it had one."""
    from acbuild.fs.keyed import signature
    from acbuild.fs.staging import FileRef, FileRefs, RefSource

    files = {name: tmp_path / name for name in ("a", "b", "far")}
    for path in files.values():
        path.write_text("x")
    os.utime(files["far"], ns=(10**19, 10**19))  # past 2262: more than 64 signed bits
    refs = FileRefs()
    tree = RefSource(root=str(tmp_path), root_id=(1, 2), directory="tree/sub", name=None,
                     uid=5, gid=6, mtime=7)
    single = RefSource(root=str(tmp_path), root_id=(1, 2), directory="", name="a.txt",
                       uid=0, gid=0, mtime=8)
    t, s = refs.source(tree), refs.source(single)
    digest = bytes(range(32))
    refs.put("srv/a", refs.record(t, files["a"].lstat(), 0o644, None))
    refs.adopt("srv", {"b": refs.record(t, files["b"].lstat(), 0o755, digest),
                       "far": refs.record(t, files["far"].lstat(), 0o600, digest)})
    refs.put("x", refs.record(s, files["a"].lstat(), 0o644, None))
    assert len(refs) == 4 and set(refs) == {"srv/a", "srv/b", "srv/far", "x"}
    assert refs["srv/a"] == FileRef(tree, "tree/sub/a", signature(files["a"].lstat()), None,
                                    0o644)
    assert refs["srv/b"].digest == digest and refs["srv/b"].mode == 0o755
    assert refs["srv/far"].seen == signature(files["far"].lstat())
    assert refs["srv/far"].seen[4] == 10**19 and refs["srv/far"].digest == digest
    assert refs["x"].rel == "a.txt" and refs["x"].mtime == 8 and refs["srv/a"].uid == 5
    assert sorted(refs.names("srv")) == ["a", "b", "far"] and list(refs.names("nope")) == []
    assert sorted(refs.sizes()) == [1, 1, 1, 1]
    refs.put("srv/a", refs.record(s, files["b"].lstat(), 0o600, None))  # replaced
    assert len(refs) == 4 and refs["srv/a"].rel == "a.txt"
    assert "srv/b" in refs and "srv" not in refs and 3 not in refs
    del refs["srv/b"]
    refs.discard("srv/a")
    refs.discard("srv/never")
    with pytest.raises(KeyError):
        del refs["srv/a"]
    with pytest.raises(KeyError):
        refs["srv/a"]
    assert set(refs) == {"srv/far", "x"} and len(refs) == 2
    refs.discard("srv/far")
    refs.discard("x")
    assert refs == {} and len(refs) == 0 and list(refs.names("srv")) == []
