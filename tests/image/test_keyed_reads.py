"""Red-team PC-1/PC-2: a file the build reads from the user's directories after its cache
key was computed (a base directory's file the finalizer streams or the base's copy reads, a
COPY's reference) must be the file the key read, when it is opened and once it is read. An
edit in place with the mtime put back, a rename over it, a size change, all fail the build
with "changed during the build" and write no image; a FIFO swapped in never hangs it.

The keys are the real ones (statcache.path_digest records what they read); the edits are
made at fixed points: before the finalizer, or from the sink the image is written to while
a file is being streamed (after its first MiB)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import pytest

from acbuild.acfile.context import BuildContext
from acbuild.acfile.instructions import Copy
from acbuild.build.copy import copy_instruction
from acbuild.cache.statcache import StatCache, path_digest, sources_digest
from acbuild.errors import AcbuildError, Span
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import unpack_base
from acbuild.image.basedir import CopyState
from acbuild.image.extract import RootfsWriter
from acbuild.image.finalize import write_aci, write_aci_stream
from acbuild.image.tarread import Limits
from acbuild.image.unstaged import materialize
from tests.support.mapped import Mapped

MANIFEST = b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/x"}'
OLD = b"OLD-CONTENT\n"
NEW = b"NEW-CONTENT\n"
BIG = 4 << 20  # streamed from its descriptor (not read whole), over several 1 MiB chunks
EPOCH = 1_000_000_000


def _settled(path: Path) -> None:
    os.utime(path, (1_500_000_000, 1_500_000_000))


def _base(tmp_path: Path, *, keyed: bool = True) -> tuple[Path, StagedRootfs]:
    """A base directory, keyed as a build keys it, then begun without staging its files."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/conf").write_bytes(OLD)
    (src / "big").write_bytes(b"a" * BIG)
    for path in (src / "etc/conf", src / "big"):
        _settled(path)
    cache = StatCache(None)
    path_digest(src, cache, epoch=EPOCH)
    rootfs = StagedRootfs(root=tmp_path / "r", keyed=cache.keyed if keyed else None)
    rootfs.root.mkdir()
    unpack_base(src, rootfs, link=True)
    assert rootfs.lower is not None
    return src, rootfs


def _rewrite_in_place(path: Path, data: bytes, offset: int = 0) -> None:
    """Same inode, same size, the mtime put back: only the ctime tells."""
    before = path.stat()
    for _ in range(50):
        with path.open("r+b") as f:
            f.seek(offset)
            f.write(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.01)  # a filesystem with a coarse clock: the next tick changes it
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def _rename_over(path: Path, data: bytes) -> None:
    before = path.stat()
    new = path.with_name(".new")
    new.write_bytes(data)
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
    new.rename(path)


CHANGES = {
    "in place, mtime put back": lambda p: _rewrite_in_place(p, NEW),
    "renamed over": lambda p: _rename_over(p, NEW),
    "grown": lambda p: p.write_bytes(OLD + b"more\n"),
    "shrunk": lambda p: p.write_bytes(OLD[:3]),
}


def _failure(rootfs: StagedRootfs, tmp_path: Path) -> str:
    out = tmp_path / "out.aci"
    with pytest.raises(AcbuildError) as failed:
        write_aci(rootfs, MANIFEST, out, epoch=EPOCH, compression="none")
    assert not out.exists()
    return failed.value.message


def _member(aci: Path, name: str) -> bytes:
    with tarfile.open(aci) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


def test_an_unchanged_keyed_base_is_streamed(tmp_path: Path) -> None:
    _, rootfs = _base(tmp_path)
    out = tmp_path / "out.aci"
    write_aci(rootfs, MANIFEST, out, epoch=EPOCH, compression="none")
    assert _member(out, "rootfs/etc/conf") == OLD
    assert _member(out, "rootfs/big") == b"a" * BIG


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_base_file_changed_after_keying_is_not_streamed(tmp_path: Path, change: str) -> None:
    src, rootfs = _base(tmp_path)
    CHANGES[change](src / "etc/conf")
    message = _failure(rootfs, tmp_path)
    assert "changed during the build" in message and "'etc/conf'" in message
    assert "\n" not in message


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_keyed_base_made_real_is_copied_and_checked(tmp_path: Path, change: str) -> None:
    """materialize (a cache snapshot, COPY --from) of a keyed base: copies, since a
    hardlink would change the ctime the key recorded, and refuses a changed file."""
    src, rootfs = _base(tmp_path)
    before = (src / "big").stat()
    CHANGES[change](src / "etc/conf")
    with pytest.raises(AcbuildError, match="changed during the build: 'etc/conf'"):
        materialize(rootfs)
    after = (src / "big").stat()
    assert (after.st_nlink, after.st_ctime_ns) == (1, before.st_ctime_ns)


def test_a_keyed_base_made_real_leaves_the_base_as_it_was(tmp_path: Path) -> None:
    src, rootfs = _base(tmp_path)
    before = (src / "etc/conf").stat()
    materialize(rootfs)
    after = (src / "etc/conf").stat()
    assert (after.st_nlink, after.st_ctime_ns) == (1, before.st_ctime_ns)
    assert (rootfs.root / "etc/conf").read_bytes() == OLD
    assert (rootfs.root / "etc/conf").stat().st_ino != after.st_ino
    out = tmp_path / "out.aci"
    write_aci(rootfs, MANIFEST, out, epoch=EPOCH, compression="none")
    assert _member(out, "rootfs/etc/conf") == OLD


class _EditingSink(io.RawIOBase):
    """Where the image goes; at the first write (the tar's first MiB: the big file is being
    streamed) ``edit`` runs once."""

    def __init__(self, edit: object) -> None:
        self.edit = edit
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        n = len(data)  # type: ignore[arg-type]
        if self.size == 0:
            self.edit()  # type: ignore[operator]
        self.size += n
        return n


@pytest.mark.parametrize("keyed", [True, False])
@pytest.mark.parametrize("change", ["in place", "shrunk", "grown"])
def test_a_base_file_changed_while_it_is_streamed_fails(tmp_path: Path, keyed: bool,
                                                        change: str) -> None:
    """Opened as keyed, then rewritten under the reader: what was read is a mix; the check
    once it is read fails the build (with or without keys)."""
    src, rootfs = _base(tmp_path, keyed=keyed)
    big = src / "big"
    edits = {"in place": lambda: _rewrite_in_place(big, b"b" * (BIG // 2), offset=BIG // 2),
             "shrunk": lambda: os.truncate(big, BIG - 4096),
             "grown": lambda: _append(big, b"more")}
    sink = _EditingSink(edits[change])
    with pytest.raises(AcbuildError) as failed:
        write_aci_stream(rootfs, MANIFEST, sink, compression="none", epoch=EPOCH)  # type: ignore[arg-type]
    assert sink.size > 0
    message = failed.value.message
    assert "changed" in message and "big" in message


def test_a_base_file_swapped_for_a_fifo_fails_without_hanging(tmp_path: Path) -> None:
    src, rootfs = _base(tmp_path)
    (src / "etc/conf").unlink()
    os.mkfifo(src / "etc/conf")
    assert "changed during the build" in _failure(rootfs, tmp_path)


# -- CopyState.file (PC-2): the file opened is the file listed -----------------------------


def _copier(tmp_path: Path) -> tuple[Path, CopyState, int, int]:
    src = tmp_path / "src2"
    src.mkdir()
    (src / "conf").write_bytes(OLD)
    rootfs = StagedRootfs(root=tmp_path / "r2")
    rootfs.root.mkdir()
    state = CopyState(writer=RootfsWriter(rootfs), rootfs=rootfs, limits=Limits(),
                      src=os.fsencode(src), base=os.fspath(src))
    return src, state, os.open(src, os.O_RDONLY | os.O_DIRECTORY), os.open(
        rootfs.root, os.O_RDONLY | os.O_DIRECTORY)


def test_copy_of_a_file_swapped_for_a_fifo_does_not_hang(tmp_path: Path) -> None:
    src, state, src_fd, dest_fd = _copier(tmp_path)
    listed = os.lstat(src / "conf")
    (src / "conf").unlink()
    os.mkfifo(src / "conf")
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            state.file(src_fd, "conf", "conf", listed, dest_fd)
        except BaseException as e:  # handed to the test's thread
            errors.append(e)

    worker = threading.Thread(target=copy, daemon=True)
    worker.start()
    worker.join(10)
    hung = worker.is_alive()
    if hung:  # release the open() blocked on the FIFO
        os.close(os.open(src / "conf", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
    assert not hung, "opening a FIFO swapped in blocked the copy"
    assert errors and "changed during the build: 'conf'" in str(errors[0])


def test_copy_of_a_file_renamed_over_since_it_was_listed_is_refused(tmp_path: Path) -> None:
    src, state, src_fd, dest_fd = _copier(tmp_path)
    listed = os.lstat(src / "conf")
    _rename_over(src / "conf", NEW)
    with pytest.raises(AcbuildError, match="changed during the build: 'conf'"):
        state.file(src_fd, "conf", "conf", listed, dest_fd)
    assert not (state.rootfs.root / "conf").exists()


# -- COPY references ----------------------------------------------------------------------


def _copy(source: str, dest: str) -> Copy:
    text = f"COPY {source} {dest}"
    span = Span(file="Acfile", line=2, column=1, length=4, source_line=text)
    return Copy(span=span, text=text, sources=(source,), dest=dest)


def _keyed_refs(tmp_path: Path, change: object = None) -> tuple[Path, StagedRootfs]:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_bytes(OLD)
    (ctx / "big").write_bytes(b"a" * BIG)
    for path in (ctx / "a.txt", ctx / "big"):
        _settled(path)
    return _keyed_refs_existing(tmp_path, ctx, change)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_context_file_changed_between_its_key_and_the_copy_fails(tmp_path: Path,
                                                                   change: str) -> None:
    with pytest.raises(AcbuildError, match=r"'a\.txt' in the build context changed"):
        _keyed_refs(tmp_path, lambda: CHANGES[change](tmp_path / "ctx/a.txt"))


def test_a_reference_changed_while_it_is_streamed_fails(tmp_path: Path) -> None:
    ctx, rootfs = _keyed_refs(tmp_path)
    big = ctx / "big"
    sink = _EditingSink(lambda: _rewrite_in_place(big, b"b" * 16, offset=BIG - 16))
    with pytest.raises(AcbuildError, match="'big' in the build context changed"):
        write_aci_stream(rootfs, MANIFEST, sink, compression="none", epoch=EPOCH)  # type: ignore[arg-type]
    assert sink.size > 0


def _keyed_dir_copy(tmp_path: Path, change: object, leave_refs: bool = True) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "dir/sub").mkdir(parents=True)
    (ctx / "dir/a").write_bytes(OLD)
    (ctx / "dir/sub/b").write_bytes(OLD)
    (ctx / "dir/link").symlink_to("a")
    context = BuildContext(ctx)
    cache = StatCache(None)
    sources_digest(context, context.resolve("dir"), cache)
    change()  # type: ignore[operator]
    rootfs = StagedRootfs(root=tmp_path / "r", keyed=cache.keyed)
    rootfs.root.mkdir()
    copy_instruction(_copy("dir", "/d"), context=context, rootfs=rootfs, leave_refs=leave_refs)


DIR_CHANGES = {
    "a file removed": lambda d: (d / "sub/b").unlink(),
    "a file added": lambda d: (d / "sub/c").write_bytes(OLD),
    "a directory removed": lambda d: shutil.rmtree(d / "sub"),
    "a symlink retargeted": lambda d: (
        (d / "link").unlink(), (d / "link").symlink_to("sub/b")),
}


@pytest.mark.parametrize("leave_refs", [True, False], ids=["references", "copies"])
@pytest.mark.parametrize("change", sorted(DIR_CHANGES))
def test_a_copied_directory_changed_between_its_key_and_the_copy_fails(
        tmp_path: Path, change: str, leave_refs: bool) -> None:
    """What the key listed below a COPY source is what the COPY copies: nothing removed or
    added since (a removal would otherwise leave the image short under the old key)."""
    with pytest.raises(AcbuildError, match="in the build context changed"):
        _keyed_dir_copy(tmp_path, lambda: DIR_CHANGES[change](tmp_path / "ctx/dir"),
                        leave_refs)


@pytest.mark.parametrize("leave_refs", [True, False], ids=["references", "copies"])
def test_an_unchanged_copied_directory_is_copied(tmp_path: Path, leave_refs: bool) -> None:
    _keyed_dir_copy(tmp_path, lambda: None, leave_refs)


def test_a_keyed_base_copied_gives_the_image_a_linked_one_gives(tmp_path: Path) -> None:
    """Made real by copies (keys) or by hardlinks (none): the same image, modes, xattrs,
    inner hardlinks and mtimes (to the nanosecond the inode has) included."""
    ids = []
    for keyed in (True, False):
        where = tmp_path / str(keyed)
        where.mkdir()
        src = where / "src"
        (src / "bin").mkdir(parents=True)
        (src / "bin/tool").write_bytes(b"#!/bin/sh\n")
        (src / "bin/tool").chmod(0o755)
        (src / "bin/alias").hardlink_to(src / "bin/tool")
        (src / "data").write_bytes(b"d" * 100_000)
        os.utime(src / "data", ns=(1_500_000_000_999_999_999, 1_500_000_000_999_999_999))
        with contextlib.suppress(OSError):  # a filesystem without user xattrs
            os.setxattr(src / "data", "user.note", b"kept")
        # The other mtimes fixed too: the two trees are made at different moments, and a
        # second boundary between them would give their images different times.
        for made in (src / "bin/tool", src / "bin", src):
            os.utime(made, (1_400_000_000, 1_400_000_000))
        cache = StatCache(None)
        path_digest(src, cache, epoch=EPOCH)
        rootfs = StagedRootfs(root=where / "r", keyed=cache.keyed if keyed else None)
        rootfs.root.mkdir()
        unpack_base(src, rootfs, link=True)
        materialize(rootfs)
        assert ((rootfs.root / "data").stat().st_ino == (src / "data").stat().st_ino) != keyed
        ids.append(write_aci(rootfs, MANIFEST, where / "out.aci", epoch=2_000_000_000).image_id)
    assert ids[0] == ids[1]


# -- CI-1: a write through a shared mapping changes no time: the content is checked --------




def _mapped_base(tmp_path: Path, rel: str) -> tuple[Mapped, StagedRootfs]:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/conf").write_bytes(OLD)
    (src / "big").write_bytes(b"a" * BIG)
    mapped = Mapped(src / rel)
    cache = StatCache(None)
    path_digest(src, cache, epoch=EPOCH)
    rootfs = StagedRootfs(root=tmp_path / "r", keyed=cache.keyed)
    rootfs.root.mkdir()
    unpack_base(src, rootfs, link=True)
    return mapped, rootfs


@pytest.mark.parametrize("rel", ["etc/conf", "big"])
@pytest.mark.parametrize("reader", ["finalizer", "materialize"])
def test_a_base_file_written_through_a_mapping_after_keying_fails(tmp_path: Path, rel: str,
                                                                  reader: str) -> None:
    mapped, rootfs = _mapped_base(tmp_path, rel)
    try:
        mapped.store(NEW if rel == "etc/conf" else b"b" * 16, offset=0)
        if reader == "materialize":
            with pytest.raises(AcbuildError, match="does not hold what the cache key read"):
                materialize(rootfs)
        else:
            assert "does not hold what the cache key read" in _failure(rootfs, tmp_path)
    finally:
        mapped.close()


def test_a_base_copied_for_a_run_stage_is_checked_on_content(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf").write_bytes(OLD)
    mapped = Mapped(src / "conf")
    try:
        cache = StatCache(None)
        path_digest(src, cache, epoch=EPOCH)
        mapped.store(NEW)
        rootfs = StagedRootfs(root=tmp_path / "r", keyed=cache.keyed)
        rootfs.root.mkdir()
        with pytest.raises(AcbuildError, match="does not hold what the cache key read"):
            unpack_base(src, rootfs, link=False)
    finally:
        mapped.close()


@pytest.mark.parametrize("reader", ["finalizer small", "finalizer big", "materialize", "copy"])
def test_a_context_file_written_through_a_mapping_after_keying_fails(tmp_path: Path,
                                                                     reader: str) -> None:
    name = "big" if reader == "finalizer big" else "a.txt"
    mapped: list[Mapped] = []
    try:
        if reader == "copy":  # mapped before the key, written after it, before the COPY
            ctx = tmp_path / "ctx"
            ctx.mkdir()
            (ctx / "a.txt").write_bytes(OLD)
            m = Mapped(ctx / "a.txt")
            mapped.append(m)
            context = BuildContext(ctx)
            cache = StatCache(None)
            sources_digest(context, context.resolve("a.txt"), cache)
            m.store(NEW)
            rootfs = StagedRootfs(root=tmp_path / "r", keyed=cache.keyed)
            rootfs.root.mkdir()
            with pytest.raises(AcbuildError, match=r"'a\.txt' in the build context does not "
                               "hold what the cache key read"):
                copy_instruction(_copy("a.txt", "/a.txt"), context=context, rootfs=rootfs,
                                 leave_refs=False)
            return
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "a.txt").write_bytes(OLD)
        (ctx / "big").write_bytes(b"a" * BIG)
        m = Mapped(ctx / name)
        mapped.append(m)
        _, rootfs = _keyed_refs_existing(tmp_path, ctx)
        m.store(NEW if name == "a.txt" else b"b" * 16)
        expected = f"'{name}' in the build context does not hold what the cache key read"
        if reader == "materialize":
            with pytest.raises(AcbuildError, match=expected):
                materialize(rootfs)
        else:
            assert expected in _failure(rootfs, tmp_path)
    finally:
        for m in mapped:
            m.close()


def _keyed_refs_existing(tmp_path: Path, ctx: Path,
                         change: object = None) -> tuple[Path, StagedRootfs]:
    """Key a.txt and big of ``ctx``, run ``change``, then COPY both as references."""
    context = BuildContext(ctx)
    cache = StatCache(None)
    for source in ("a.txt", "big"):
        sources_digest(context, context.resolve(source), cache)
    if change is not None:
        change()  # type: ignore[operator]
    rootfs = StagedRootfs(root=tmp_path / "r", keyed=cache.keyed)
    rootfs.root.mkdir()
    for source in ("a.txt", "big"):
        copy_instruction(_copy(source, f"/{source}"), context=context, rootfs=rootfs,
                         leave_refs=True)
    return ctx, rootfs


def test_a_sparse_base_file_made_real_stays_sparse(tmp_path: Path) -> None:
    """Red-team CI-3 (for the keyed copy): holes are not written out."""
    src = tmp_path / "src"
    src.mkdir()
    with (src / "lastlog").open("wb") as f:
        f.write(b"x" * 4096)
        f.seek(256 << 20)
        f.write(b"y" * 4096)
    if (src / "lastlog").stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this filesystem does not keep holes")
    cache = StatCache(None)
    path_digest(src, cache, epoch=EPOCH)
    rootfs = StagedRootfs(root=tmp_path / "r", keyed=cache.keyed)
    rootfs.root.mkdir()
    unpack_base(src, rootfs, link=True)
    materialize(rootfs)
    copy = rootfs.root / "lastlog"
    assert copy.stat().st_ino != (src / "lastlog").stat().st_ino
    assert copy.stat().st_size == (256 << 20) + 4096
    assert copy.stat().st_blocks * 512 < 1 << 20
    with copy.open("rb") as f:
        assert f.read(4096) == b"x" * 4096
        f.seek(256 << 20)
        assert f.read() == b"y" * 4096


def test_a_sparse_base_file_copied_for_a_run_stage_stays_sparse(tmp_path: Path) -> None:
    """Red-team CI-3: the copy a RUN stage needs keeps the holes too (keys or not)."""
    src = tmp_path / "src"
    src.mkdir()
    with (src / "lastlog").open("wb") as f:
        f.seek(512 << 20)
        f.write(b"y")
    if (src / "lastlog").stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this filesystem does not keep holes")
    rootfs = StagedRootfs(root=tmp_path / "r")
    rootfs.root.mkdir()
    unpack_base(src, rootfs, link=False)
    copy = rootfs.root / "lastlog"
    assert copy.stat().st_size == (512 << 20) + 1
    assert copy.stat().st_blocks * 512 < 1 << 20
