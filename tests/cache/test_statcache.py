"""The stat cache against a file written through a shared mapping between two builds
(red-team CI-4): a store into an already dirty page changes no time, so the file keeps its
signature and the stat cache its digest of the old content. The next build keys with that
stale digest, reads the new bytes and fails (what it keyed is not what it read); each place
that finds the mismatch drops the stale digest, so the build after that hashes the file
afresh and builds what it holds, instead of every later build failing until the user
touches the file. Real builds: a COPY source left in place (read by the finalizer, or made
a real file for a COPY --from) or copied (a RUN follows), a local base archive, a file of a
local base directory. And base-tree keys: path_digest's walk frames each entry as _entry
does."""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from acbuild.acfile.context import scan
from acbuild.build.build import BuildOptions, build
from acbuild.cache import statcache
from acbuild.cache.statcache import StatCache, path_digest
from acbuild.cache.warm import Witness
from acbuild.cli.commands.trustopts import base_loader
from acbuild.errors import AcbuildError
from acbuild.report import NullReporter
from tests.support.busybox import make_busybox_rootfs
from tests.support.sandboxrun import needs_sandbox

pytest_plugins = ("tests.support.shm",)

OLD = b"OLD-CONTENT\n"
NEW = b"NEW-CONTENT\n"
SETTLED = 1_500_000_000
HINT = "build again once nothing writes to it: the next build reads it afresh"


def run_build(ctx: Path, acfile: str, out: Path) -> None:
    (ctx / "Acfile").write_text(acfile)
    build(BuildOptions(acfile=ctx / "Acfile", output=out,
                       base_loader=base_loader(reporter=NullReporter()),
                       cache_dir=ctx.parent / "cache",
                       environ={"SOURCE_DATE_EPOCH": "1000000"}), NullReporter())


def member(aci: Path, name: str) -> bytes:
    with tarfile.open(aci) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


def make_aci(tmp_path: Path, data: bytes, out: Path) -> None:
    where = tmp_path / f"make-{out.name}"
    where.mkdir()
    (where / "f").write_bytes(data)
    (where / "Acfile").write_text("BEGIN scratch\nNAME example.com/base\nCOPY f /f\n")
    build(BuildOptions(acfile=where / "Acfile", output=out, no_cache=True,
                       base_loader=base_loader(reporter=NullReporter()),
                       environ={"SOURCE_DATE_EPOCH": "1000000"}), NullReporter())


@dataclass(frozen=True, slots=True)
class Mapped:
    """A file mapped MAP_SHARED with its pages already dirty: later stores take no write
    fault, so they change no timestamp (until writeback cleans the pages)."""

    path: Path
    map: mmap.mmap

    def store(self, data: bytes) -> None:
        before = self.path.stat()
        self.map[: len(data)] = data
        after = self.path.stat()
        if (after.st_mtime_ns, after.st_ctime_ns) != (before.st_mtime_ns, before.st_ctime_ns):
            raise AssertionError("the store through the mapping dated the file: the test's "
                                 "premise needs a tmpfs (the shm fixture), where no "
                                 "writeback cleans the page")


@pytest.fixture
def mapped() -> Iterator[list[Mapped]]:
    made: list[Mapped] = []
    yield made
    for m in made:
        m.map.close()


def map_settled(path: Path, made: list[Mapped]) -> Mapped:
    """``path`` mapped and dirtied, then dated back and left to settle, so the stat cache
    remembers its digest (it skips a file changed in the last moments)."""
    fd = os.open(path, os.O_RDWR)
    try:
        m = mmap.mmap(fd, 0, mmap.MAP_SHARED)
    finally:
        os.close(fd)
    made.append(Mapped(path, m))
    m[:] = m[:]  # every page dirty
    os.utime(path, (SETTLED, SETTLED))
    time.sleep(0.3)  # the ctime settles (fine-grained timestamps)
    if time.time_ns() - path.stat().st_ctime_ns < 200_000_000:
        time.sleep(3.2)  # a coarse clock: whole seconds
    return made[-1]


# name: (the file mapped, the first Acfile, the second (its reading step not a hit), member)
CASES = {
    "COPY source left in place": (
        "zzz.txt", "BEGIN scratch\nNAME example.com/s\nCOPY zzz.txt /zzz\n",
        "BEGIN scratch\nNAME example.com/t\nCOPY zzz.txt /zzz\n", "rootfs/zzz"),
    "COPY source another stage copies from": (
        "zzz.txt", "BEGIN scratch AS s\nCOPY zzz.txt /zzz\n"
                   "BEGIN scratch\nNAME example.com/s\nCOPY --from=s /zzz /zzz\n",
        "BEGIN scratch AS s\nENV X=1\nCOPY zzz.txt /zzz\n"
        "BEGIN scratch\nNAME example.com/s\nCOPY --from=s /zzz /zzz\n", "rootfs/zzz"),
    "local base archive": (
        "base.aci", "BEGIN ./base.aci\nNAME example.com/s\n",
        "BEGIN ./base.aci AS again\nNAME example.com/s\n", "rootfs/f"),
    "local base directory": (
        "base/etc/conf", "BEGIN ./base\nNAME example.com/s\n",
        "BEGIN ./base AS again\nNAME example.com/s\n", "rootfs/etc/conf"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_mapping_write_between_builds_fails_one_build_not_every_one(
        shm: Path, mapped: list[Mapped], case: str) -> None:
    rel, first, second, name = CASES[case]
    ctx = shm / "ctx"
    (ctx / "base/etc").mkdir(parents=True)
    (ctx / "base/etc/conf").write_bytes(OLD)
    (ctx / "zzz.txt").write_bytes(OLD)
    make_aci(shm, OLD, ctx / "base.aci")
    make_aci(shm, NEW, shm / "new.aci")
    new = NEW if rel != "base.aci" else (shm / "new.aci").read_bytes()
    if len(new) != (ctx / rel).stat().st_size:
        pytest.skip("the two archives differ in size")
    target = map_settled(ctx / rel, mapped)
    out = shm / "out.aci"
    run_build(ctx, first, out)
    assert member(out, name) == OLD
    target.store(new)
    out.unlink()
    with pytest.raises(AcbuildError) as e:
        run_build(ctx, second, out)
    assert "does not hold what the cache key read, although its times did not change" in \
        e.value.message, e.value.message
    assert e.value.hint == HINT  # no touch needed: true now
    assert not out.exists()
    run_build(ctx, second, out)  # hashed afresh: no touch needed
    assert member(out, name) == NEW


@needs_sandbox
def test_a_copied_source_written_through_a_mapping_between_builds(
        shm: Path, mapped: list[Mapped]) -> None:
    """A RUN after the COPY: the file is copied into the rootfs (acbuild.build.copy), and the
    copy is what is compared."""
    ctx = shm / "ctx"
    make_busybox_rootfs(ctx / "bb")
    (ctx / "zzz.txt").write_bytes(OLD)
    target = map_settled(ctx / "zzz.txt", mapped)
    out = shm / "out.aci"
    acfile = "BEGIN ./bb\nNAME example.com/s\nCOPY zzz.txt /{}\nRUN /bin/cp /{} /copied\n"
    run_build(ctx, acfile.format("a", "a"), out)
    assert member(out, "rootfs/copied") == OLD
    target.store(NEW)
    out.unlink()
    with pytest.raises(AcbuildError) as e:
        run_build(ctx, acfile.format("b", "b"), out)
    assert "'zzz.txt' in the build context does not hold what the cache key read" in \
        e.value.message, e.value.message
    assert e.value.hint == HINT
    run_build(ctx, acfile.format("b", "b"), out)
    assert member(out, "rootfs/copied") == NEW


def _tree(root: Path) -> None:
    for rel, mode in (("a", 0o644), ("b", 0o755), ("d/c", 0o600), ("d/e/f", 0o4755),
                      ("d/é\udcff", 0o640)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode("utf-8", "surrogateescape") * 3)
        path.chmod(mode)
    if os.geteuid() == 0:
        os.chown(root / "d/c", 1000, 1000)
    os.link(root / "a", root / "d/a2")
    (root / "d/link").symlink_to("../a")
    os.mkfifo(root / "d/pipe")
    os.setxattr(root / "b", "user.x", b"1\0y")  # a base file's and directory's xattrs,
    os.setxattr(root / "d/e", "user.y", b"2")  # and an mtime the image keeps (the epoch's
    os.utime(root / "d/c", (500, 500))  # below it)


EPOCH = 1_000_000_000


def _reference(path: Path, cache: StatCache) -> str:
    """Every entry through _entry, as the walk did before its file case was inlined, then
    the hardlinks."""
    h = hashlib.sha256()
    root = os.fsdecode(os.path.abspath(path))
    statcache._entry(h, cache, ".", root, os.stat(path), epoch=EPOCH, follow=True)
    inodes: dict[tuple[int, int], list[str]] = {}
    for rel, child in scan(path, ""):
        statcache._entry(h, cache, rel, f"{root}/{rel}", child, epoch=EPOCH)
        if stat.S_ISREG(child.st_mode):
            inodes.setdefault((child.st_dev, child.st_ino), []).append(rel)
    statcache.hardlinks(h, inodes)
    return "sha256:" + h.hexdigest()


def test_a_base_tree_is_keyed_entry_by_entry_as_entry_frames_it(tmp_path: Path) -> None:
    _tree(tmp_path / "base")
    walked = StatCache(None, Witness())
    expected = StatCache(None, Witness())
    base = tmp_path / "base"
    assert path_digest(base, walked, epoch=EPOCH) == _reference(base, expected)
    # The same records of what the key read: the warm record's and the integrity checks'.
    assert walked.witness is not None and expected.witness is not None
    assert walked.witness.inputs() == expected.witness.inputs()
    for p in (tmp_path / "base").rglob("*"):
        st = p.lstat()
        assert walked.keyed.holds(str(p), st)
        if stat.S_ISREG(st.st_mode):
            assert walked.keyed.digest(str(p)) == expected.keyed.digest(str(p)) is not None
    # A mode or an owner is in the key.
    before = path_digest(tmp_path / "base", StatCache(None), epoch=EPOCH)
    (tmp_path / "base/d/c").chmod(0o640)
    assert path_digest(tmp_path / "base", StatCache(None), epoch=EPOCH) != before


@pytest.fixture
def all_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file counts as settled (these tests are about saving, not racy files)."""
    monkeypatch.setattr(statcache, "settled", lambda st, now: True)


def _file(path: Path, data: bytes) -> os.stat_result:
    path.write_bytes(data)
    return path.stat()


def _remembered(where: Path) -> set[str]:
    return set(statcache.remembered(where))


@pytest.mark.usefixtures("all_settled")
def test_two_builds_saving_one_stat_cache_keep_each_others_digests(tmp_path: Path) -> None:
    """RT-6: two builds sharing the cache load the file, each hashes its own files and
    saves: neither loses what the other remembered."""
    where = tmp_path / "stat" / "ctx.json"
    a_file, b_file = tmp_path / "a", tmp_path / "b"
    a_st, b_st = _file(a_file, b"a\n"), _file(b_file, b"b\n")
    first, second = StatCache(where), StatCache(where)
    first.file_digest(str(a_file), a_st)
    second.file_digest(str(b_file), b_st)
    first.save()
    second.save()
    assert _remembered(where) == {str(a_file), str(b_file)}


@pytest.mark.usefixtures("all_settled")
def test_a_digest_one_build_forgot_as_stale_is_not_put_back_by_another(tmp_path: Path) -> None:
    """A digest forgotten as stale (the file was written through a shared mapping: its
    signature still matches) must stay forgotten when a build that loaded it earlier saves:
    put back, it would key the next build on content the file no longer holds — and an
    image cached under that key would be taken for the new content without a read."""
    where = tmp_path / "stat" / "ctx.json"
    x_file, y_file = tmp_path / "x", tmp_path / "y"
    x_st, y_st = _file(x_file, b"x\n"), _file(y_file, b"y\n")
    earlier = StatCache(where)
    earlier.file_digest(str(x_file), x_st)
    earlier.save()
    forgetting, other = StatCache(where), StatCache(where)  # both load x's digest
    forgetting.forget(str(x_file))
    forgetting.save()
    other.file_digest(str(y_file), y_st)
    other.save()
    assert _remembered(where) == {str(y_file)}


def _tombstones(where: Path) -> list[list[object]]:
    return [list(t) for t in statcache.tombstones_of(where)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _found_stale(where: Path, path: Path, st: os.stat_result, now: bytes) -> None:
    """A build keys ``path`` (as ``st``) from the stat cache, and its reader finds ``now``."""
    build = StatCache(where)
    build.keyed.record(str(path), st)
    build.keyed.record_digest(str(path), build.file_digest(str(path), st))
    assert not build.keyed.content_is(str(path), bytes.fromhex(_sha(now)))


@pytest.mark.usefixtures("all_settled")
def test_a_digest_found_stale_is_not_put_back_by_a_build_that_hashed_the_file_before(
        tmp_path: Path) -> None:
    """RC-2: build B' hashes p (ONE) and saves late; meanwhile p is written through a shared
    mapping (TWO, same signature) and build A finds the digest stale. B' saving after A
    must not put ONE back under that signature, or the next build keys p as ONE (and takes
    an image cached for ONE) while p holds TWO. Whatever the order of hashes and saves."""
    where = tmp_path / "stat" / "ctx.json"
    p = tmp_path / "p"
    st = _file(p, b"ONE\n")
    late = StatCache(where)
    assert late.file_digest(str(p), st) == _sha(b"ONE\n")  # B' keys p, saves later
    first = StatCache(where)
    first.file_digest(str(p), st)
    first.save()  # B
    p.write_bytes(b"TWO\n")  # stands for the mapping's store: ``st`` is still its signature
    _found_stale(where, p, st, b"TWO\n")  # A: forgets and saves at once
    late.save()
    assert str(p) not in _remembered(where)
    assert StatCache(where).file_digest(str(p), st) == _sha(b"TWO\n")


@pytest.mark.usefixtures("all_settled")
def test_a_signature_found_holding_two_contents_is_never_remembered_again(
        tmp_path: Path) -> None:
    where = tmp_path / "stat" / "ctx.json"
    p = tmp_path / "p"
    st = _file(p, b"ONE\n")
    _found_stale(where, p, st, b"TWO\n")  # remembered under ``st``, found stale
    again = StatCache(where)
    assert again.file_digest(str(p), st) == _sha(b"ONE\n")  # hashed, not remembered
    again.save()
    assert str(p) not in _remembered(where)
    assert _tombstones(where) == [[str(p), st.st_dev, st.st_ino, st.st_size,
                                   st.st_mtime_ns, st.st_ctime_ns]]


def test_a_digest_hashed_afresh_and_found_stale_buries_the_signature_the_key_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Too recent to be remembered when the key hashed it, the file is still buried under
    the signature the key read: once settled, that signature's digest is not trusted."""
    where = tmp_path / "stat" / "ctx.json"
    p = tmp_path / "p"
    st = _file(p, b"ONE\n")
    monkeypatch.setattr(statcache, "settled", lambda st, now: False)
    build = StatCache(where)
    build.keyed.record(str(p), st)
    build.keyed.record_digest(str(p), build.file_digest(str(p), st))
    assert not build.keyed.content_is(str(p), bytes.fromhex(_sha(b"TWO\n")))
    monkeypatch.setattr(statcache, "settled", lambda st, now: True)
    later = StatCache(where)
    later.file_digest(str(p), p.stat())
    later.save()
    assert str(p) not in _remembered(where)


@pytest.mark.usefixtures("all_settled")
def test_a_tombstone_ends_when_its_file_changes_and_only_the_newest_are_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    where = tmp_path / "stat" / "ctx.json"
    p = tmp_path / "p"
    st = _file(p, b"ONE\n")
    _found_stale(where, p, st, b"TWO\n")
    time.sleep(0.01)
    changed = _file(p, b"THREE\n")  # a plain write: the same inode, a later ctime
    assert changed.st_ino == st.st_ino and changed.st_ctime_ns > st.st_ctime_ns
    build = StatCache(where)
    build.file_digest(str(p), changed)
    build.save()
    assert _remembered(where) == {str(p)}
    assert _tombstones(where) == []
    monkeypatch.setattr(statcache, "_TOMBSTONES", 3)
    for i in range(5):
        q = tmp_path / f"q{i}"
        _found_stale(where, q, _file(q, b"ONE\n"), b"TWO\n")
    assert [t[0] for t in _tombstones(where)] == [str(tmp_path / f"q{i}") for i in (2, 3, 4)]


def test_a_concurrent_build_does_not_put_back_a_digest_a_build_found_stale(
        shm: Path, mapped: list[Mapped]) -> None:
    """RC-2 with real builds: B' (the stat cache of a build keying the same context) hashed
    p.txt before the mapping's store and saves after build A found its digest stale; the
    next build copies what p.txt holds, not the image cached for the old content."""
    ctx = shm / "ctx"
    ctx.mkdir()
    p = ctx / "p.txt"
    p.write_bytes(OLD)
    target = map_settled(p, mapped)
    acfile = "BEGIN scratch\nNAME example.com/s\nCOPY p.txt /p\n"
    out = shm / "out.aci"
    run_build(ctx, acfile, shm / "first.aci")  # makes the cache: its stat file known
    [stat_file] = (shm / "cache" / "stat").glob("*.json")
    stat_file.unlink()
    late = StatCache(stat_file)
    late.file_digest(p.resolve(), p.stat())  # B' loads nothing, hashes p.txt now (OLD)
    run_build(ctx, acfile, out)  # B: p.txt's digest remembered (the image cached before)
    target.store(NEW)
    out.unlink()
    with pytest.raises(AcbuildError):  # A: another image, its finalizer reads p.txt
        run_build(ctx, acfile.replace("example.com/s", "example.com/a"), out)
    late.save()
    run_build(ctx, acfile, out)
    assert member(out, "rootfs/p") == NEW


def _many(root: Path, count: int) -> list[tuple[str, os.stat_result]]:
    """``count`` small files, 100 to a directory: (absolute path, lstat) of each."""
    files = []
    for i in range(count):
        path = root / f"d{i // 100:03}" / f"f{i:05}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d\n" % i)
        files.append((str(path), path.lstat()))
    return files


def _saved(where: Path, root: Path, count: int) -> list[tuple[str, os.stat_result]]:
    """``_many`` files, each keyed once by a stat cache at ``where`` that is then saved."""
    files = _many(root, count)
    cache = StatCache(where)
    for path, st in files:
        cache.file_digest(path, st)
    cache.save()
    return files


def _no_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count what the stat cache reads (a digest it remembers is never read)."""
    read: list[str] = []
    real = statcache.open_regular

    def counted(target: str | int) -> object:
        read.append(str(target))
        return real(target)

    monkeypatch.setattr(statcache, "open_regular", counted)
    return read


@pytest.mark.usefixtures("all_settled")
def test_a_stat_cache_of_many_files_is_looked_up_in_little_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build of 100,000 files held the stat cache as JSON lists, ~530 bytes a file (and
    twice that while saving). A directory's entries now stay packed (names and records)
    until a look-up unpacks them, a few directories at a time: every file is found, with
    its digest and xattrs, in under 400 bytes a file at the peak (the file being parsed),
    ~155 after."""
    import tracemalloc

    where = tmp_path / "stat" / "ctx.json"
    files = _many(tmp_path / "tree", 5000)
    first = StatCache(where)
    expected = hashlib.sha256()
    for path, st in files:
        expected.update("".join(first.base_file(path, st)).encode())
    first.save()
    read = _no_reads(monkeypatch)
    found = hashlib.sha256()
    tracemalloc.start()
    try:
        cache = StatCache(where)
        for path, st in files:
            found.update("".join(cache.base_file(path, st)).encode())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read == [] and found.digest() == expected.digest()
    # The file read and parsed (its bytes, then its strings) is the peak: ~2 x 155 bytes.
    assert peak < 400 * len(files), f"{peak / len(files):.0f} bytes a file"
    assert len(cache._unpacked) <= statcache._UNPACKED


@pytest.mark.usefixtures("all_settled")
def test_a_damaged_directory_of_the_stat_cache_is_only_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of the wrong length (a truncated or edited file): that directory's files are
    hashed again, the others' digests still trusted; the next save writes it whole."""
    where = tmp_path / "stat" / "ctx.json"
    files = _saved(where, tmp_path / "tree", 300)
    damaged = os.path.dirname(files[0][0])
    data = where.read_bytes()
    line = next(x for x in data.split(b"\n") if f'"{damaged}"'.encode() in x)
    where.write_bytes(data.replace(line, line.replace(b'="]', b'"]').replace(b'=="]', b'"]')
                                   .replace(b'A', b'', 4)))
    read = _no_reads(monkeypatch)
    again = StatCache(where)
    for path, st in files:
        again.file_digest(path, st)
    assert sorted(read) == sorted(p for p, _ in files if p.startswith(damaged + "/"))
    again.save()
    assert _remembered(where) == {p for p, _ in files}


@pytest.mark.usefixtures("all_settled")
def test_what_a_build_remembered_is_still_known_after_it_saved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save (a build saves after keying, and at once on finding a stale digest) leaves
    the cache answering from what it wrote, another build's digests merged in too: read
    from the file again at the first look-up after it, not held through the build."""
    where = tmp_path / "stat" / "ctx.json"
    (a, a_st), (b, b_st) = _many(tmp_path / "tree", 2)
    mine, other = StatCache(where), StatCache(where)
    mine.file_digest(a, a_st)
    other.file_digest(b, b_st)
    other.save()
    mine.save()
    assert mine._loaded is None  # not held after the save: read again at a look-up
    read = _no_reads(monkeypatch)
    assert mine.file_digest(a, a_st) == _sha(b"0\n")
    assert mine.file_digest(b, b_st) == _sha(b"1\n")
    assert read == []


@pytest.mark.usefixtures("all_settled")
def test_a_forgotten_digest_stays_forgotten_in_the_build_that_forgot_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    where = tmp_path / "stat" / "ctx.json"
    (a, a_st), = _many(tmp_path / "tree", 1)
    first = StatCache(where)
    first.file_digest(a, a_st)
    first.save()
    build = StatCache(where)
    build.forget(a)
    read = _no_reads(monkeypatch)
    build.file_digest(a, a_st)  # buried under a_st: hashed, and not remembered
    assert read == [a]
    build.save()
    assert _remembered(where) == set()


# What a stat cache file may hold instead of one this version wrote: each a miss (the files
# hashed again), never a traceback, and the next save writes a whole file of this format.
DAMAGED = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "not an object": lambda good: b"[1, 2]",
    "nested too deep": lambda good: b"[" * 100_000,
    "format 3 (before packing)": lambda good: (
        b'{"version":3,"entries":{"/x":[1,2,3,4,5,"' + b"0" * 64 + b'",null]},'
        b'"tombstones":[]}'),
    "a directory not two strings": lambda good: (
        b'{"version":4,"tombstones":[],"directories":{"/x":[1,2]}}'),
    "a tombstone not six fields": lambda good: good.replace(
        b'"tombstones":[]', b'"tombstones":[["/x",1]]'),
    "records not base64": lambda good: good.replace(b'","', b'","!', 1),
}


@pytest.mark.usefixtures("all_settled")
@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_a_damaged_or_older_stat_cache_is_a_miss_and_written_anew(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    where = tmp_path / "stat" / "ctx.json"
    files = _saved(where, tmp_path / "tree", 3)
    where.write_bytes(DAMAGED[damage](where.read_bytes()))
    read = _no_reads(monkeypatch)
    again = StatCache(where)
    for i, (path, st) in enumerate(files):
        assert again.file_digest(path, st) == _sha(b"%d\n" % i)
    assert sorted(read) == sorted(p for p, _ in files)  # nothing trusted from it
    again.save()
    assert _remembered(where) == {p for p, _ in files}
