"""Red-team RT-10/RT-3: a lazily restored rootfs leaves its files in the cache entry's tree
(its lower tree), and the finalizer streams them from there. Whatever the entry's owner
does to such a file after the restore verified it (an edit in place, a write through a
shared mapping that moves no timestamp, a rename over it, a chmod, a directory swapped for
a symlink) must fail the image with one error naming the entry and the file, write no
image, and discard the entry, so that the next build rebuilds the step.

The entry is a real one (CacheStore.put_step, then a lazy restore); the changes are made by
this process as another build or a tool would, at fixed points: after the restore, before
the finalizer, or from the sink the image goes to while the big file is being streamed."""

from __future__ import annotations

import io
import os
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from acbuild.cache.cache import CacheStore, StepRecord
from acbuild.errors import AcbuildError
from acbuild.fs.staging import StagedRootfs, remove_tree
from acbuild.image.finalize import write_aci, write_aci_stream
from acbuild.image.unstaged import materialize
from acbuild.interop.export import write_layer
from tests.support.crcforge import forge
from tests.support.mapped import Mapped

MANIFEST = b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/x"}'
KEY = "sha256:" + "cd" * 32
OLD = b"OLD-CONTENT\n"
NEW = b"NEW-CONTENT\n"  # same size
BIG = 4 << 20  # streamed from its descriptor over several 1 MiB chunks, not read whole
EPOCH = 1_000_000_000


def _entry(tmp_path: Path) -> tuple[CacheStore, StepRecord, Path]:
    """A cache entry holding etc/conf, big and a hardlink; its tree's path."""
    store = CacheStore(tmp_path / "cache")
    rootfs = StagedRootfs(root=tmp_path / "staged")
    (rootfs.root / "etc").mkdir(parents=True)
    (rootfs.root / "etc/conf").write_bytes(OLD)
    (rootfs.root / "big").write_bytes(b"a" * BIG)
    os.link(rootfs.root / "etc/conf", rootfs.root / "etc/conf2")
    return store, _stored(store, rootfs), store.root / "steps" / ("cd" * 32) / "tree"


def _stored(store: CacheStore, staged: StagedRootfs) -> StepRecord:
    """``staged`` put in ``store`` as step KEY and removed: only the entry holds it now."""
    with store.session():
        store.put_step(KEY, b"{}", rootfs=staged, tree=None, link=False)
    remove_tree(staged.root)
    record = store.step(KEY)
    assert record is not None
    return record


def _restored(tmp_path: Path, name: str = "r") -> tuple[CacheStore, StagedRootfs, Path]:
    store, record, tree = _entry(tmp_path)
    with store.session():
        rootfs = store.restore(record, tmp_path / name, link=True, lazy=True)
    assert rootfs.lower is not None  # the files stay in the entry
    return store, rootfs, tree


def _fails(rootfs: StagedRootfs, tmp_path: Path, store: CacheStore, rel: str) -> str:
    out = tmp_path / "out.aci"
    with pytest.raises(AcbuildError) as failed:
        write_aci(rootfs, MANIFEST, out, epoch=EPOCH, compression="none")
    message = failed.value.message
    assert "\n" not in message
    assert f"cache entry {KEY}" in message and repr(rel) in message
    assert not out.exists()
    assert store.step(KEY) is None  # discarded: the next build rebuilds the step
    return message


def test_an_unchanged_entry_is_streamed(tmp_path: Path) -> None:
    store, rootfs, _ = _restored(tmp_path)
    out = tmp_path / "out.aci"
    write_aci(rootfs, MANIFEST, out, epoch=EPOCH, compression="none")
    with tarfile.open(out) as t:
        conf = t.extractfile("rootfs/etc/conf")
        assert conf is not None and conf.read() == OLD
        assert t.getmember("rootfs/etc/conf2").islnk()
    assert store.step(KEY) is not None


def _rewrite(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:  # in place: the same inode, the same size
        f.write(data)


def _rename_over(path: Path, data: bytes) -> None:
    path.with_name(".new").write_bytes(data)
    os.utime(path.with_name(".new"), ns=(path.stat().st_mtime_ns,) * 2)
    os.rename(path.with_name(".new"), path)


@pytest.mark.parametrize("change", ["in place", "renamed over", "chmod"])
@pytest.mark.parametrize("rel", ["etc/conf", "big"])
def test_an_entry_file_changed_after_the_restore_fails_and_discards_the_entry(
        tmp_path: Path, change: str, rel: str) -> None:
    store, rootfs, tree = _restored(tmp_path)
    data = NEW if rel == "etc/conf" else b"b" * BIG
    if change == "in place":
        _rewrite(tree / rel, data)
    elif change == "renamed over":
        _rename_over(tree / rel, data)
    else:
        (tree / rel).chmod(0o4755)
    _fails(rootfs, tmp_path, store, rel)




@pytest.mark.parametrize("rel", ["etc/conf", "big"])
def test_an_entry_file_written_through_a_mapping_after_the_restore_fails(
        tmp_path: Path, rel: str) -> None:
    store, record, tree = _entry(tmp_path)
    # Mapped (and dirtied) before the restore: the restore reads it whole and finds it
    # intact; the store after it moves neither the mtime nor the ctime.
    mapped = Mapped(tree / rel)
    try:
        with store.session():
            rootfs = store.restore(record, tmp_path / "r", link=True, lazy=True)
        before = os.stat(tree / rel)
        mapped.store(NEW if rel == "etc/conf" else b"b" * 16)
        assert os.stat(tree / rel).st_ctime_ns == before.st_ctime_ns
        assert "does not hold the bytes the entry recorded" in _fails(rootfs, tmp_path,
                                                                      store, rel)
    finally:
        mapped.close()


def test_a_directory_of_the_entry_swapped_for_a_symlink_fails(tmp_path: Path) -> None:
    store, rootfs, tree = _restored(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "conf").write_bytes(NEW)
    (elsewhere / "conf2").write_bytes(NEW)
    os.rename(tree / "etc", tmp_path / "etc-aside")
    os.symlink(elsewhere, tree / "etc")
    _fails(rootfs, tmp_path, store, ".")  # the entry's root no longer lists a directory


def test_a_directory_of_the_entry_swapped_for_another_fails(tmp_path: Path) -> None:
    store, rootfs, tree = _restored(tmp_path)
    os.rename(tree / "etc", tmp_path / "etc-aside")
    (tree / "etc").mkdir()
    (tree / "etc/conf").write_bytes(NEW)
    os.link(tree / "etc/conf", tree / "etc/conf2")
    _fails(rootfs, tmp_path, store, "etc")


class _EditingSink(io.RawIOBase):
    """Where the image goes; at the first write (the tar's first MiB: the big file is being
    streamed) ``edit`` runs once."""

    def __init__(self, edit: Callable[[], None]) -> None:
        self.edit = edit
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        n = len(data)  # type: ignore[arg-type]
        if self.size == 0:
            self.edit()
        self.size += n
        return n


def test_an_entry_file_written_through_a_mapping_while_it_is_streamed_fails(
        tmp_path: Path) -> None:
    store, rootfs, tree = _restored(tmp_path)
    mapped = Mapped(tree / "big")  # the ctime moves now, after the restore, before the open
    time.sleep(0.01)
    try:
        # The file is open and being read: its signature when opened is this one; the
        # store at the end of it (not yet read) moves no timestamp.
        sink = _EditingSink(lambda: mapped.map.__setitem__(slice(BIG - 4, BIG), b"EVIL"))
        with pytest.raises(AcbuildError) as failed:
            write_aci_stream(rootfs, MANIFEST, sink, compression="none", epoch=EPOCH)
        assert f"cache entry {KEY}" in failed.value.message
        assert store.step(KEY) is None
    finally:
        mapped.close()


@pytest.mark.parametrize("change", ["in place", "renamed over"])
def test_an_entry_file_made_real_by_materialize_is_still_checked(tmp_path: Path,
                                                                 change: str) -> None:
    """A later step's snapshot (or a COPY --from) makes the lower files real first, as
    hardlinks of the entry's inodes: a change before or after that is still found."""
    store, rootfs, tree = _restored(tmp_path)
    if change == "renamed over":  # before: the link would be of the new file
        _rename_over(tree / "etc/conf", NEW)
        with pytest.raises(AcbuildError, match=f"cache entry {KEY} changed"):
            materialize(rootfs)
        assert store.step(KEY) is None
        return
    materialize(rootfs)
    assert rootfs.lower is None and (rootfs.root / "etc/conf").stat().st_nlink > 1
    _rewrite(tree / "etc/conf", NEW)  # the staged link is the same inode
    _fails(rootfs, tmp_path, store, "etc/conf")


@pytest.mark.parametrize("rel", ["etc/conf", "big"])
def test_an_oci_layer_of_an_entry_written_through_a_mapping_fails(tmp_path: Path,
                                                                  rel: str) -> None:
    """The OCI export writes its layer from the same walk (it made the lower files real and
    read the big ones again by path: unchecked)."""
    store, record, tree = _entry(tmp_path)
    mapped = Mapped(tree / rel)
    try:
        with store.session():
            rootfs = store.restore(record, tmp_path / "r", link=True, lazy=True)
        mapped.store(NEW if rel == "etc/conf" else b"b" * 16)
        blobs = tmp_path / "blobs"
        blobs.mkdir()
        with pytest.raises(AcbuildError, match=f"cache entry {KEY} changed .*{rel}"):
            write_layer(rootfs, blobs, EPOCH, None)
        assert store.step(KEY) is None
    finally:
        mapped.close()


# ---- red-team RC-1, RC-4, RC-9: what is verified is each path, not each inode --------


def _twins(tmp_path: Path) -> tuple[CacheStore, StagedRootfs, Path]:
    """A lazily restored entry whose files look alike: equal size, mode, owner and mtime,
    different bytes (bin/good, bin/evil; srv/f, opt/f), and bin/a = bin/b one inode beside
    bin/c."""
    store = CacheStore(tmp_path / "cache")
    staged = StagedRootfs(root=tmp_path / "staged")
    for rel, data in (("bin/good", b"GOOD\n"), ("bin/evil", b"EVIL\n"), ("srv/f", b"SRV1\n"),
                      ("opt/f", b"OPT1\n"), ("bin/a", b"AAAA\n"), ("bin/c", b"CCCC\n")):
        (staged.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged.root / rel).write_bytes(data)
        os.utime(staged.root / rel, ns=(EPOCH * 10**9,) * 2)
    os.link(staged.root / "bin/a", staged.root / "bin/b")
    record = _stored(store, staged)
    with store.session():
        rootfs = store.restore(record, tmp_path / "r", link=True, lazy=True)
    return store, rootfs, store.root / "steps" / ("cd" * 32) / "tree"


def _swap(a: Path, b: Path) -> None:
    os.rename(a, a.with_name(".t"))
    os.rename(b, a)
    os.rename(a.with_name(".t"), b)


def _relink(source: Path, name: Path) -> None:
    os.link(source, name.with_name(".t"))
    os.rename(name.with_name(".t"), name)


_MOVES: dict[str, tuple[Callable[[Path], None], str]] = {
    "swap two alike files": (lambda t: _swap(t / "bin/good", t / "bin/evil"), "bin/evil"),
    "swap across directories": (lambda t: _swap(t / "opt/f", t / "srv/f"), "opt/f"),
    "a hardlink re-pointed": (lambda t: _relink(t / "bin/c", t / "bin/b"), "bin/b"),
    "a hardlink made": (lambda t: _relink(t / "bin/evil", t / "bin/good"), "bin/good"),
}


@pytest.mark.parametrize("move", sorted(_MOVES))
def test_an_entry_file_moved_to_another_path_fails(tmp_path: Path, move: str) -> None:
    """Each inode is still one the restore verified, with its verified metadata and bytes,
    but not the one that was at that path: the image would hold the wrong bytes there."""
    store, rootfs, tree = _twins(tmp_path)
    edit, rel = _MOVES[move]
    edit(tree)
    assert "is not the file the entry held" in _fails(rootfs, tmp_path, store, rel)


@pytest.mark.parametrize("move", sorted(_MOVES))
def test_an_entry_file_moved_is_found_by_materialize(tmp_path: Path, move: str) -> None:
    """A later step's snapshot, or a COPY --from, makes the lower files real first: the
    links it makes are checked by path too (else the swap went into a new entry)."""
    store, rootfs, tree = _twins(tmp_path)
    edit, rel = _MOVES[move]
    edit(tree)
    with pytest.raises(AcbuildError, match=f"cache entry {KEY} changed during the build: "
                                           f"'{rel}' is not the file the entry held"):
        materialize(rootfs)
    assert store.step(KEY) is None


def test_an_entry_file_renamed_to_a_name_of_the_same_crc32_fails(tmp_path: Path) -> None:
    """Red-team RC-4: the listing check was a CRC, matched by a name forged for it."""
    store, rootfs, tree = _twins(tmp_path)
    forged = forge(b"01", b"evil-", zlib.crc32(b"01good")).decode()
    os.rename(tree / "bin/good", tree / "bin" / forged)
    assert "does not hold what it did" in _fails(rootfs, tmp_path, store, "bin")


def test_another_build_linking_an_entry_file_while_it_is_streamed_is_no_change(
        tmp_path: Path) -> None:
    """Red-team RC-9: builds sharing the cache link its inodes (materialize, snapshots),
    which moves their ctime and link count, and nothing the image takes: the image is
    written and the entry kept."""
    store, rootfs, tree = _restored(tmp_path)
    before = os.stat(tree / "big")
    time.sleep(0.01)
    sink = _EditingSink(lambda: os.link(tree / "big", tmp_path / "linked-elsewhere"))
    write_aci_stream(rootfs, MANIFEST, sink, compression="none", epoch=EPOCH)
    after = os.stat(tree / "big")
    assert after.st_ctime_ns != before.st_ctime_ns and after.st_nlink == before.st_nlink + 1
    assert store.step(KEY) is not None
