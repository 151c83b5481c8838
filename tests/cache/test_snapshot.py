"""Lazy restores of snapshot trees: the files stay in the cache (the rootfs's lower tree),
verified by content the first time and by their recorded signature after that; and the
image's last COPY keeps no snapshot of its own when the image is cached whole."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import mmap
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from acbuild.build.build import build
from acbuild.cache import snapshot
from acbuild.cache.cache import CacheStore, CorruptTree, StepRecord
from acbuild.errors import AcbuildError
from acbuild.fs.leftovers import owner_tag
from acbuild.fs.staging import StagedRootfs, remove_tree
from acbuild.report import StepInfo
from tests.cache.test_cache import Recorder, options, run

OLD = 1_600_000_000  # an mtime long settled


def _base(root: Path) -> None:
    """A tree with what a lazy restore must keep: nested and read-only directories, an
    empty one, inner hardlinks, a symlink, a FIFO, modes and mtimes."""
    for rel, text, mode in (("etc/conf", "conf\n", 0o644), ("bin/tool", "tool\n", 0o755),
                            ("srv/deep/er/file", "deep\n", 0o600),
                            ("ro/inside", "inside\n", 0o444)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    os.link(root / "bin/tool", root / "bin/tool2")
    (root / "empty").mkdir()
    (root / "bin/sh").symlink_to("tool")
    os.mkfifo(root / "srv/pipe")
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (OLD, OLD), follow_symlinks=False)
    (root / "ro").chmod(0o555)
    os.utime(root, (OLD, OLD))


def _stored(tmp_path: Path) -> tuple[CacheStore, StepRecord]:
    store = CacheStore(tmp_path / "cache")
    with store.session():
        rootfs = StagedRootfs(root=tmp_path / "staged")
        rootfs.root.mkdir()
        _base(rootfs.root)
        store.put_step("sha256:" + "ab" * 32, b"{}", rootfs=rootfs, tree=None, link=False)
        remove_tree(rootfs.root)
    time.sleep(0.2)  # the cache's copies' ctimes settle (acbuild.cache.warm.settled)
    record = store.step("sha256:" + "ab" * 32)
    assert record is not None
    return store, record


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if stat.S_ISREG(p.lstat().st_mode))


def _no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(f: io.BufferedReader) -> bytes:
        raise AssertionError("a file with an unchanged signature was read")
    monkeypatch.setattr(snapshot, "_sha256_of", refuse)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files the lazy restores read from now on."""
    read: list[str] = []
    real = snapshot._sha256_of

    def counting(f: io.BufferedReader) -> bytes:
        read.append(os.readlink(f"/proc/self/fd/{f.fileno()}"))
        return real(f)
    monkeypatch.setattr(snapshot, "_sha256_of", counting)
    return read


def test_a_lazy_restore_leaves_the_files_in_the_cache_and_reads_them_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, record = _stored(tmp_path)
    tree = store.root / "steps" / ("ab" * 32) / "tree"
    first = store.restore(record, tmp_path / "r1", link=True, lazy=True)
    # the source is the entry's tree through the cache's descriptor (/proc/self/fd/N/...)
    assert first.lower is not None and first.lower.source.resolve() == tree.resolve()
    assert _files(tmp_path / "r1") == []  # no file linked or copied into the work tree
    assert sorted(p.name for p in (tmp_path / "r1").iterdir()) == sorted(
        p.name for p in tree.iterdir())
    assert os.readlink(tmp_path / "r1/bin/sh") == "tool"
    assert stat.S_ISFIFO((tmp_path / "r1/srv/pipe").lstat().st_mode)
    assert stat.S_IMODE((tmp_path / "r1/ro").stat().st_mode) == 0o555
    assert (tmp_path / "r1/srv").stat().st_mtime == OLD
    assert (store.root / "steps" / ("ab" * 32) / "signatures").is_file()
    # The next restore reads no file: every signature is the one recorded.
    _no_reading(monkeypatch)
    second = store.restore(record, tmp_path / "r2", link=True, lazy=True)
    assert second.lower is not None and second.lower.listings == first.lower.listings


def _staged(root: Path) -> list[tuple[str, int, int, int, str]]:
    """What a restore made in the work tree: names, modes, owners, mtimes, link targets."""
    return sorted((str(p.relative_to(root)), p.lstat().st_mode, p.lstat().st_uid,
                   p.lstat().st_mtime_ns, os.readlink(p) if p.is_symlink() else "")
                  for p in root.rglob("*"))


def _no_full_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("the tree was walked and hashed")
    monkeypatch.setattr(snapshot._TreeCopier, "directory", refuse)


def test_an_unchanged_tree_is_restored_by_its_signatures_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, record = _stored(tmp_path)
    first = store.restore(record, tmp_path / "r1", link=True, lazy=True)  # hashed, recorded
    known: snapshot.KnownDigests = {}
    with monkeypatch.context() as m:
        _no_full_walk(m)
        second = store.restore(record, tmp_path / "r2", link=True, lazy=True, known=known)
    assert first.lower is not None and second.lower is not None
    assert second.lower.listings == first.lower.listings
    assert second.lower.max_bytes == first.lower.max_bytes
    assert sorted(second.lower.dirs) == sorted(first.lower.dirs)
    assert _staged(tmp_path / "r2") == _staged(tmp_path / "r1")
    tree = store.root / "steps" / ("ab" * 32) / "tree"
    tool = (tree / "bin/tool").stat()
    assert known[(tool.st_dev, tool.st_ino)][2] == hashlib.sha256(b"tool\n").digest()


def _add_file(tree: Path) -> None:
    (tree / "srv/new").write_text("new\n")


def _remove_file(tree: Path) -> None:
    (tree / "srv/deep/er/file").unlink()


def _rename_file(tree: Path) -> None:
    os.rename(tree / "etc/conf", tree / "etc/conf2")


def _retarget_symlink(tree: Path) -> None:
    (tree / "bin/sh").unlink()
    (tree / "bin/sh").symlink_to("tool2")
    os.utime(tree / "bin/sh", (OLD, OLD), follow_symlinks=False)


def _chmod_fifo(tree: Path) -> None:
    (tree / "srv/pipe").chmod(0o600)


def _chmod_directory(tree: Path) -> None:
    (tree / "srv/deep").chmod(0o700)


def _unlink_second_name(tree: Path) -> None:
    (tree / "bin/tool2").unlink()


@pytest.mark.parametrize("edit", [_add_file, _remove_file, _rename_file, _retarget_symlink,
                                  _chmod_fifo, _chmod_directory, _unlink_second_name],
                         ids=["add", "remove", "rename", "symlink", "fifo-mode", "dir-mode",
                              "hardlink"])
def test_a_tree_changed_in_the_cache_is_hashed_again_and_refused(
        tmp_path: Path, edit: Callable[[Path], None]) -> None:
    store, record = _stored(tmp_path)
    store.restore(record, tmp_path / "r1", link=True, lazy=True)
    tree = store.root / "steps" / ("ab" * 32) / "tree"
    edit(tree)
    with pytest.raises(CorruptTree):
        store.restore(record, tmp_path / "r2", link=True, lazy=True)
    assert store.step("sha256:" + "ab" * 32) is None


def test_signatures_of_files_alone_mean_one_full_walk_and_then_the_quick_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signatures file without the other entries' (as an older version wrote it): its
    files are not read again, the walk hashes the tree, and records the rest."""
    store, record = _stored(tmp_path)
    store.restore(record, tmp_path / "r1", link=True, lazy=True)
    where = store.root / "steps" / ("ab" * 32)
    _, _, payload = (where / "signatures").read_bytes().partition(b"\n")
    doc = json.loads(payload)
    del doc["entries"], doc["listings"]
    payload = json.dumps(doc).encode()
    (where / "signatures").write_bytes(hashlib.sha256(payload).hexdigest().encode() + b"\n"
                                       + payload)
    _no_reading(monkeypatch)
    store.restore(record, tmp_path / "r2", link=True, lazy=True)
    _no_full_walk(monkeypatch)
    store.restore(record, tmp_path / "r3", link=True, lazy=True)


def _edit_content(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"CONF")  # same size


def _edit_xattr(path: Path) -> None:
    try:
        os.setxattr(path, "user.added", b"1")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")


def _edit_mode(path: Path) -> None:
    path.chmod(0o755)


@pytest.mark.parametrize("edit", [_edit_content, _edit_xattr, _edit_mode],
                         ids=["content", "xattr", "mode"])
def test_a_file_changed_in_the_cache_is_detected_though_its_size_and_mtime_are_kept(
        tmp_path: Path, edit: Callable[[Path], None]) -> None:
    store, record = _stored(tmp_path)
    store.restore(record, tmp_path / "r1", link=True, lazy=True)  # signatures recorded
    victim = store.root / "steps" / ("ab" * 32) / "tree/etc/conf"
    before = victim.stat()
    edit(victim)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime: ctime moved
    with pytest.raises(CorruptTree):
        store.restore(record, tmp_path / "r2", link=True, lazy=True)
    assert store.step("sha256:" + "ab" * 32) is None  # discarded, never used


def test_a_file_replaced_with_the_same_content_is_read_and_accepted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, record = _stored(tmp_path)
    store.restore(record, tmp_path / "r1", link=True, lazy=True)
    victim = store.root / "steps" / ("ab" * 32) / "tree/etc/conf"
    copy = victim.with_name("conf.new")
    copy.write_bytes(victim.read_bytes())
    copy.chmod(0o644)
    os.utime(copy, (OLD, OLD))
    os.replace(copy, victim)  # another inode: its signature is not the recorded one
    read = _counting(monkeypatch)
    store.restore(record, tmp_path / "r2", link=True, lazy=True)
    assert read == [str(victim)]  # only the replaced file was read again


def test_a_damaged_signatures_file_only_means_reading_the_tree_again(
        tmp_path: Path) -> None:
    store, record = _stored(tmp_path)
    store.restore(record, tmp_path / "r1", link=True, lazy=True)
    signatures = store.root / "steps" / ("ab" * 32) / "signatures"
    data = bytearray(signatures.read_bytes())
    data[-5] ^= 0x01
    signatures.write_bytes(bytes(data))
    store.restore(record, tmp_path / "r2", link=True, lazy=True)  # read whole, no error
    assert signatures.read_bytes() != bytes(data)  # and written again


ONE_COPY = """\
BEGIN ./base
NAME example.com/lazy
LABEL version=1
COPY --mode=0600 small.txt /etc/conf
EXEC {{ exec | default("/bin/tool") }}
"""
TWO_COPIES = ONE_COPY.replace("COPY --mode", "COPY small.txt /etc/small.txt\nCOPY --mode")


@pytest.mark.parametrize("acfile_text", [ONE_COPY, TWO_COPIES], ids=["one-copy", "two-copies"])
def test_incremental_rebuilds_from_the_cache_give_the_cold_build_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acfile_text: str) -> None:
    ctx = tmp_path / "ctx"
    _base(ctx / "base")
    (ctx / "Acfile").write_text(acfile_text)
    acfile, cache = ctx / "Acfile", tmp_path / "cache"
    read: list[str] = []
    for number, exe in enumerate(["/bin/tool", "/bin/tool", "/bin/sh"]):
        (ctx / "small.txt").write_text(f"small {number}\n")
        built, rep = run(acfile, cache, tmp_path / f"{number}.aci", f"exec={exe}")
        cold, _ = run(acfile, None, tmp_path / f"cold{number}.aci", f"exec={exe}")
        assert built.image_id == cold.image_id
        assert (tmp_path / f"{number}.aci").read_bytes() == \
            (tmp_path / f"cold{number}.aci").read_bytes()
        if number:
            assert rep.cached() == [1, 2, 3]  # the COPYs ran, from a lazy restore
        if number == 0:
            time.sleep(0.2)  # the cache's copies settle: the next restore keeps signatures
        if number == 1:
            # The image's last COPY keeps no snapshot; a COPY before it does (one a build).
            trees = list((cache / "steps").glob("*/tree"))
            assert len(trees) == (1 if acfile_text == ONE_COPY else 3)
            read = _counting(monkeypatch)  # from now on the signatures answer for the tree
    if acfile_text == ONE_COPY:
        # Only the file the COPY overwrote was read: staged over, its inode was touched.
        assert [Path(p).relative_to(cache / "steps").parts[1:] for p in read] == [
            ("tree", "etc", "conf")]
    with tarfile.open(tmp_path / "2.aci") as t:
        conf = t.extractfile("rootfs/etc/conf")
        assert conf is not None and conf.read() == b"small 2\n"
        assert t.getmember("rootfs/etc/conf").mode == 0o600
        assert t.getmember("rootfs/bin/tool2").islnk()
        assert t.getmember("rootfs/srv/deep/er/file").mode == 0o600
        assert t.getmember("rootfs/ro").mode == 0o555


def test_signatures_expire_and_the_tree_is_read_whole_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from acbuild.cache import cache as cache_module

    store, record = _stored(tmp_path)
    store.restore(record, tmp_path / "r1", link=True, lazy=True)
    victim = store.root / "steps" / ("ab" * 32) / "tree/etc/conf"
    os.utime(victim, (OLD, OLD))  # its ctime moves: read again, the others are not
    time.sleep(1.0)
    read = _counting(monkeypatch)
    store.restore(record, tmp_path / "r2", link=True, lazy=True)
    assert read == [str(victim)]
    # Past the trusted age, counted from the last whole read (over 1 s ago), not from the
    # partial one just now, every file is read: damage below the filesystem moves no ctime.
    monkeypatch.setattr(cache_module, "_SIGNATURES_TRUSTED_S", 0.9)
    read.clear()
    store.restore(record, tmp_path / "r3", link=True, lazy=True)
    assert len(read) == 4  # bin/tool (and its second name), etc/conf, ro/inside, srv/…/file


def test_what_an_interrupted_or_killed_save_of_the_signatures_left_is_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RK-3: the signatures file was written aside under a name no sweep knew and removed
    only on OSError, so a Ctrl-C, SIGTERM or SIGKILL during it left it in the entry."""
    store, record = _stored(tmp_path)
    entry = store.root / "steps" / ("ab" * 32)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = owner_tag().split("-")[1]
    killed = entry / f".signatures.{dead.pid}-{host}.0123456789ab.tmp"  # a SIGKILL's
    killed.write_bytes(b"half")
    real = fcntl.flock

    def interrupted(fd: int, op: int) -> None:  # SIGINT the moment the temp file is held
        real(fd, op)
        if op == fcntl.LOCK_SH:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(fcntl, "flock", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.restore(record, tmp_path / "r1", link=True, lazy=True)
    monkeypatch.setattr(fcntl, "flock", real)
    assert not killed.exists()
    assert [p.name for p in entry.iterdir() if p.name.startswith(".signatures.")] == []


class _Attacker(Recorder):
    """Another process with write access to the cache (a tool, another build of the same
    user): when the build starts the step ``at`` (the lazy restore is done, the finalizer
    not yet begun), it rewrites the cached ``bin/tool`` in place, same size."""

    def __init__(self, cache: Path, at: int) -> None:
        super().__init__()
        self.cache, self.at = cache, at
        self.edited: list[Path] = []

    def step_started(self, step: StepInfo) -> None:
        if step.number != self.at:
            return
        for path in sorted(self.cache.glob("steps/*/tree/bin/tool")):
            subprocess.run([sys.executable, "-c",
                            "import sys; open(sys.argv[1], 'r+b').write(b'EVIL\\n')",
                            str(path)], check=True)
            self.edited.append(path)


LAST_COPY = """\
BEGIN ./base
NAME example.com/lazy
COPY small.txt /etc/small.txt
COPY last.txt /etc/last.txt
EXEC /bin/tool
"""


THEN_TWO = LAST_COPY.replace("COPY last.txt", "COPY small.txt /etc/again.txt\nCOPY last.txt")


def _lazy_context(tmp_path: Path, acfile_text: str) -> tuple[Path, Path, Path]:
    """A context at tmp_path/ctx building ``acfile_text`` on the base tree, with small.txt
    and last.txt; (its Acfile, a cache dir, an output path)."""
    ctx = tmp_path / "ctx"
    _base(ctx / "base")
    (ctx / "Acfile").write_text(acfile_text)
    (ctx / "small.txt").write_text("small\n")
    (ctx / "last.txt").write_text("last 1\n")
    return ctx / "Acfile", tmp_path / "cache", tmp_path / "out.aci"


@pytest.mark.parametrize("acfile_text", [LAST_COPY, THEN_TWO], ids=["one-copy", "two-copies"])
def test_a_cache_entry_edited_after_its_lazy_restore_fails_the_build_and_is_rebuilt(
        tmp_path: Path, acfile_text: str) -> None:
    """With two COPYs after the restore, the first is stored (a snapshot linking the entry's
    files, made real first) before the edit: it goes with the entry."""
    ctx = tmp_path / "ctx"
    acfile, cache, out = _lazy_context(tmp_path, acfile_text)
    run(acfile, cache, tmp_path / "first.aci")
    (ctx / "small.txt").write_text("small 2\n")  # steps 1-2 are restored, the COPYs run
    last = 4 if acfile_text == LAST_COPY else 5
    attacker = _Attacker(cache, at=last)
    before = set(cache.glob("steps/*"))
    with pytest.raises(AcbuildError) as failed:
        build(options(acfile, cache, out), attacker)
    assert attacker.edited and attacker.cached() == [1, 2]
    message = failed.value.message
    assert "\n" not in message and "cache entry sha256:" in message
    assert "'bin/tool'" in message and "discarded" in message
    assert not out.exists()
    # No entry this build stored holds the edited file (a snapshot stored after the restore
    # links its inode). Older ones may (the cache links inodes across entries): their next
    # restore finds it, as the rebuild below shows.
    assert [p for p in cache.glob("steps/*/tree/bin/tool")
            if p.parents[2] not in before and p.read_bytes() != b"tool\n"] == []
    # Nothing of it stays cached: the next build rebuilds from the base, as a cold one does.
    _, rep = run(acfile, cache, out)
    run(acfile, None, tmp_path / "cold.aci")
    assert rep.cached() == []
    assert out.read_bytes() == (tmp_path / "cold.aci").read_bytes()
    with tarfile.open(out) as t:
        tool = t.extractfile("rootfs/bin/tool")
        assert tool is not None and tool.read() == b"tool\n"



FROM_STAGE = """\
BEGIN ./base AS build
COPY small.txt /etc/small.txt
COPY last.txt /etc/last.txt
BEGIN scratch
NAME example.com/two
COPY --from=build /bin/tool /tool
"""


class _MappingAttacker(Recorder):
    """Holds the cached ``bin/tool`` mapped shared and dirty (from before the build: the
    restore reads it and finds it intact); when the build starts step ``at`` (after the
    lazy restore), stores through the map: no timestamp moves."""

    def __init__(self, path: Path, at: int) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, 0, mmap.MAP_SHARED)
        self.map[0:1] = self.map[0:1]
        self.at, self.path, self.stored = at, path, False

    def step_started(self, step: StepInfo) -> None:
        if step.number == self.at:
            before = os.stat(self.path)
            self.map[0:4] = b"EVIL"
            self.stored = os.stat(self.path).st_ctime_ns == before.st_ctime_ns

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def test_a_cache_entry_written_through_a_mapping_before_a_copy_from_fails_the_build(
        tmp_path: Path) -> None:
    """COPY --from of a stage restored lazily copies the entry's files (made real as
    hardlinks of its inodes, which its snapshot links again without reading them): what
    it copies must be what the restore verified."""
    ctx = tmp_path / "ctx"
    acfile, cache, out = _lazy_context(tmp_path, FROM_STAGE)
    run(acfile, cache, tmp_path / "first.aci")
    (ctx / "last.txt").write_text("last 2\n")  # stage build restores step 2, runs step 3
    attacker = _MappingAttacker(sorted(cache.glob("steps/*/tree/bin/tool"))[0], at=3)
    try:
        with pytest.raises(AcbuildError) as failed:
            build(options(acfile, cache, out), attacker)
        if not attacker.stored:
            pytest.skip("the page was written back meanwhile: the times changed")
    finally:
        attacker.close()
    assert 3 not in attacker.cached()  # stage build: step 2 restored, step 3 ran
    assert "cache entry sha256:" in failed.value.message
    assert "'bin/tool'" in failed.value.message
    assert not out.exists()


@pytest.mark.parametrize(("lazy", "rel"), [(True, "srv"), (False, "srv"), (False, "etc/conf")])
def test_an_xattr_set_after_the_restore_read_them_is_not_on_the_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lazy: bool, rel: str) -> None:
    """Red-team RC-6: the restore hashed an entry's xattrs, then (after a directory's
    children, or a file's content) read them again to set them on the copy: an xattr set
    in between was in the staged tree (and the image) under the digest of the old ones.
    Read once, the copy carries the xattrs that were hashed."""
    store, record = _stored(tmp_path)
    target = os.fsencode(store.root / "steps" / ("ab" * 32) / "tree" / rel)
    read = snapshot.xattrs_of
    seen = []

    def then_set(path: bytes) -> tuple[tuple[str, bytes], ...]:
        found = read(path)
        # the restore reads through the cache's descriptor (/proc/self/fd/N/...)
        if os.path.realpath(path) == target and not seen:
            seen.append(path)
            try:
                os.setxattr(path, "user.evil", b"injected")
            except OSError:
                pytest.skip("no user xattrs on this filesystem")
        return found

    monkeypatch.setattr(snapshot, "xattrs_of", then_set)
    rootfs = store.restore(record, tmp_path / "r", link=False, lazy=lazy)
    assert seen
    assert "user.evil" not in os.listxattr(rootfs.root / rel)


# Red-team RK-8: two xattr sets that name=value NUL frames made one.
_ONE = {"user.a": b"v\0user.b=w"}
_TWO = {"user.a": b"v", "user.b": b"w"}
_SWAP = """
import os, sys
import acbuild.cache.cache as cache
from acbuild.cli.main import main
real = cache.CacheStore.restore
def restore(self, record, root, *, link, known=None, lazy=False):
    rootfs = real(self, record, root, link=link, known=known, lazy=lazy)
    if lazy:  # verified, not yet read for the image: another process of the user swaps
        path = str(self._dir("steps", record.tree) / "tree/f")
        os.removexattr(path, "user.a")
        os.setxattr(path, "user.a", b"v")
        os.setxattr(path, "user.b", b"w")
    return rootfs
cache.CacheStore.restore = restore
sys.argv = ["acbuild-py", *sys.argv[1:]]
sys.exit(main())
"""


def _framing_context(where: Path) -> Path:
    (where / "base").mkdir(parents=True)
    (where / "base/f").write_bytes(b"data\n")
    try:
        for name, value in _ONE.items():
            os.setxattr(where / "base/f", name, value)
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    (where / "Acfile").write_text("BEGIN ./base\nNAME example.com/rk8\nLABEL v={{ v }}\n")
    return where / "Acfile"


def _xattrs(aci: Path) -> dict[str, str]:
    with tarfile.open(aci) as t:
        return {k: v for k, v in t.getmember("rootfs/f").pax_headers.items() if "xattr" in k}


def _cli(*args: str | Path, script: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "acbuild"] if script is None else \
        [sys.executable, "-c", script]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1000000000"}, timeout=300)


def test_an_entry_file_given_the_other_xattr_set_after_its_restore_fails_the_build(
        tmp_path: Path) -> None:
    acfile = _framing_context(tmp_path / "ctx")
    common = ("-q", "build", acfile, "--cache-dir", tmp_path / "cache", "--compression",
              "none")
    assert _cli(*common, "--var", "v=1", "-o", tmp_path / "one.aci").returncode == 0
    time.sleep(1)
    done = _cli(*common, "--var", "v=2", "-o", tmp_path / "two.aci", script=_SWAP)
    assert done.returncode != 0, _xattrs(tmp_path / "two.aci")
    assert "changed during the build: 'f' is not the file the entry held" in done.stderr
    assert not (tmp_path / "two.aci").exists()


def test_an_entry_file_given_the_other_xattr_set_is_not_what_its_digest_says(
        tmp_path: Path) -> None:
    """Between builds: the ctime moved, so the restore walks the entry; its digest frames
    the xattrs, so the entry is found damaged and the step rebuilt from the base."""
    acfile = _framing_context(tmp_path / "ctx")
    common = ("-q", "build", acfile, "--cache-dir", tmp_path / "cache", "--compression",
              "none")
    assert _cli(*common, "--var", "v=1", "-o", tmp_path / "one.aci").returncode == 0
    entries = list((tmp_path / "cache").glob("**/steps/*/tree/f"))
    assert entries
    for entry in entries:
        os.removexattr(entry, "user.a")
        for name, value in _TWO.items():
            os.setxattr(entry, name, value)
    done = _cli(*common, "--var", "v=2", "-o", tmp_path / "two.aci")
    assert done.returncode == 0, done.stderr
    assert _xattrs(tmp_path / "two.aci") == _xattrs(tmp_path / "one.aci") == {
        "SCHILY.xattr.user.a": "v\0user.b=w"}
