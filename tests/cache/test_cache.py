"""The step cache: keys miss when an input changed and hit when nothing did; snapshots,
final images, concurrency and damaged entries."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from acbuild.acfile.context import BuildContext
from acbuild.build.build import BuildOptions, BuildResult, build, key_steps, load_plan
from acbuild.cache.buildcache import BuildCache
from acbuild.cache.cache import CacheStore, ImageRecord
from acbuild.cli.commands.trustopts import base_loader
from acbuild.fs.leftovers import owner_tag
from acbuild.report import NullReporter, StepInfo
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild

ACFILE = """\
BEGIN ./base
NAME example.com/cached
LABEL version={{ version | default("1") }}
COPY --chown={{ owner | default("0:0") }} --mode={{ mode | default("0644") }} data/ /srv/
RUN /bin/sh -c "echo {{ word | default('hello') }} > /srv/run.txt"
COPY last.txt /etc/last.txt
EXEC /bin/sh
"""

needs_busybox = pytest.mark.skipif(not busybox_available(), reason="needs busybox-static")


class Recorder(NullReporter):
    def __init__(self) -> None:
        super().__init__()
        self.finished: list[tuple[int, bool]] = []

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        self.finished.append((step.number, cached))

    def cached(self) -> list[int]:
        return [n for n, c in self.finished if c]


def make_context(where: Path, acfile: str = ACFILE) -> Path:
    make_busybox_rootfs(where / "base")
    (where / "data").mkdir(parents=True)
    (where / "data" / "a.txt").write_text("alpha\n")
    (where / "data" / "b.txt").write_text("beta\n")
    (where / "last.txt").write_text("last\n")
    (where / "Acfile").write_text(acfile)
    return where / "Acfile"


def options(acfile: Path, cache: Path | None, out: Path, *variables: str,
            epoch: str = "315532800") -> BuildOptions:
    reporter = NullReporter()
    return BuildOptions(acfile=acfile, output=out, base_loader=base_loader(reporter=reporter),
                        variables=variables, no_cache=cache is None, cache_dir=cache,
                        environ={"SOURCE_DATE_EPOCH": epoch})


def run(acfile: Path, cache: Path | None, out: Path, *variables: str) -> tuple[BuildResult,
                                                                                  Recorder]:
    reporter = Recorder()
    return build(options(acfile, cache, out, *variables), reporter), reporter


def keys(acfile: Path, cache: Path, *variables: str, epoch: str = "315532800") -> list[str]:
    opts = options(acfile, cache, acfile.parent / "x.aci", *variables, epoch=epoch)
    store = BuildCache(CacheStore(cache), NullReporter())
    with store.session():
        plan = key_steps(load_plan(opts), opts, store, BuildContext(acfile.parent),
                         315532800 if epoch == "315532800" else int(epoch), NullReporter())
    return [s.key or "" for s in plan.target.steps]


def test_canonical_keys_ignore_formatting_and_location(tmp_path: Path) -> None:
    acfile = make_context(tmp_path / "one")
    before = keys(acfile, tmp_path / "cache")
    assert len(set(before)) == len(before) and all(k.startswith("sha256:") for k in before)
    # The same file reformatted: spaces, a comment, a continuation.
    text = ACFILE.replace("NAME example.com/cached", "# a comment\nNAME   example.com/cached")
    text = text.replace("COPY last.txt", "COPY \\\n    last.txt")
    acfile.write_text(text)
    assert keys(acfile, tmp_path / "cache") == before
    # A fresh checkout elsewhere: new mtimes and inodes, same content.
    copy = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(tmp_path / "one", copy, symlinks=True, copy_function=shutil.copy)
    assert keys(copy / "Acfile", tmp_path / "cache") == before


CHANGES = {
    # name: (how, index of the first step whose key must change)
    "file content": (lambda d: (d / "data" / "b.txt").write_text("BETA\n"), 3),
    "new file": (lambda d: (d / "data" / "c.txt").write_text("c\n"), 3),
    "file mode": (lambda d: (d / "data" / "b.txt").chmod(0o755), 3),
    "acignore": (lambda d: (d / ".acignore").write_text("data/b.txt\n"), 3),
    "base image": (lambda d: (d / "base" / "etc" / "motd").write_text("hi\n"), 0),
    "last file": (lambda d: (d / "last.txt").write_text("changed\n"), 5),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_changed_input_misses_from_its_step_on(tmp_path: Path, change: str) -> None:
    acfile = make_context(tmp_path / "ctx")
    before = keys(acfile, tmp_path / "cache")
    how, first = CHANGES[change]
    how(tmp_path / "ctx")
    after = keys(acfile, tmp_path / "cache")
    assert after[:first] == before[:first]
    assert all(a != b for a, b in zip(after[first:], before[first:], strict=True))


@pytest.mark.parametrize(("variable", "first"), [
    ("owner=1000:1000", 3), ("mode=0600", 3), ("word=bye", 4), ("version=2", 2),
])
def test_changed_option_or_variable_misses(tmp_path: Path, variable: str, first: int) -> None:
    acfile = make_context(tmp_path / "ctx")
    before = keys(acfile, tmp_path / "cache")
    after = keys(acfile, tmp_path / "cache", variable)
    assert after[:first] == before[:first]
    assert after[first] != before[first]


def test_epoch_changes_run_steps_and_a_base_directory(tmp_path: Path) -> None:
    """RUN sees the epoch; the image clamps a base directory's mtimes to it (red-team RK-7:
    a cached BEGIN <dir> from another epoch carried mtimes a fresh build clamps). An
    archive base holds its own mtimes: only the RUN misses."""
    acfile = make_context(tmp_path / "ctx")
    before = keys(acfile, tmp_path / "cache")
    after = keys(acfile, tmp_path / "cache", epoch="1700000000")
    assert all(a != b for a, b in zip(after, before, strict=True))
    with tarfile.open(tmp_path / "ctx/base.tar", "w") as t:
        t.add(tmp_path / "ctx/base", ".")
    acfile.write_text(ACFILE.replace("BEGIN ./base", "BEGIN ./base.tar"))
    before = keys(acfile, tmp_path / "cache")
    after = keys(acfile, tmp_path / "cache", epoch="1700000000")
    assert after[:4] == before[:4] and after[4] != before[4]  # step 5 is the RUN


@needs_busybox
def test_rebuilds_hit_and_give_the_same_image(tmp_path: Path) -> None:
    acfile = make_context(tmp_path / "ctx")
    cache = tmp_path / "cache"
    reference, _ = run(acfile, None, tmp_path / "ref.aci", "owner=1000:1000")
    first, rep1 = run(acfile, cache, tmp_path / "1.aci", "owner=1000:1000")
    assert rep1.cached() == [] and first.image_id == reference.image_id
    _, rep2 = run(acfile, cache, tmp_path / "2.aci", "owner=1000:1000")
    assert rep2.cached() == [1, 2, 3, 4, 5, 6, 7, 8]  # the written image too
    assert (tmp_path / "2.aci").read_bytes() == (tmp_path / "ref.aci").read_bytes()
    with tarfile.open(tmp_path / "2.aci") as t:
        member = t.getmember("rootfs/srv/data/a.txt")
        assert (member.uid, member.mode) == (1000, 0o644)
    # Only the last COPY reads last.txt: every step before it is reused.
    (tmp_path / "ctx" / "last.txt").write_text("changed\n")
    third, rep3 = run(acfile, cache, tmp_path / "3.aci", "owner=1000:1000")
    assert rep3.cached() == [1, 2, 3, 4, 5]
    fresh, _ = run(acfile, None, tmp_path / "fresh.aci", "owner=1000:1000")
    assert third.image_id == fresh.image_id != first.image_id
    # A manifest-only change restores the snapshot of the step before it (owners included).
    fourth, rep4 = run(acfile, cache, tmp_path / "4.aci", "owner=1000:1000", "version=9")
    assert rep4.cached() == [1, 2]
    fresh9, _ = run(acfile, None, tmp_path / "fresh9.aci", "owner=1000:1000", "version=9")
    assert fourth.image_id == fresh9.image_id


@needs_busybox
def test_damaged_entries_are_detected_and_rebuilt(tmp_path: Path) -> None:
    acfile = make_context(tmp_path / "ctx")
    cache = tmp_path / "cache"
    good, _ = run(acfile, cache, tmp_path / "1.aci")
    # Flip a byte of the cached image: detected on copy, image rebuilt from the steps.
    image = next((cache / "images").glob("*/image.aci"))
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    again, rep = run(acfile, cache, tmp_path / "2.aci")
    assert again.image_id == good.image_id
    assert any("damaged" in w for w in rep.warnings)
    # Truncate a file in every snapshot tree: the restore fails its checksum, steps rerun.
    for f in (cache / "steps").glob("*/tree/srv/data/a.txt"):
        f.chmod(0o644)
        with open(f, "r+b") as handle:
            handle.truncate(2)
    (tmp_path / "ctx" / "last.txt").write_text("changed\n")
    third, rep3 = run(acfile, cache, tmp_path / "3.aci")
    fresh, _ = run(acfile, None, tmp_path / "fresh.aci")
    assert third.image_id == fresh.image_id
    assert sum("damaged" in w for w in rep3.warnings) == 2  # after the RUN, after the COPY
    assert rep3.cached() == [1, 2, 3]  # the COPY of data/ and everything after it ran again
    # A truncated index is a miss, never an error.
    for meta in (cache / "steps").glob("*/meta.json"):
        meta.write_bytes(meta.read_bytes()[:10])
    fourth, rep4 = run(acfile, cache, tmp_path / "4.aci", "version=3")
    assert rep4.cached() == [] and fourth.manifest.name == "example.com/cached"


def test_an_index_nested_too_deep_is_a_miss_not_a_traceback(tmp_path: Path) -> None:
    acfile = make_context(tmp_path / "ctx")
    cache = tmp_path / "cache"
    good, _ = run(acfile, cache, tmp_path / "1.aci")
    for meta in [*(cache / "steps").glob("*/meta.json"), *(cache / "images").glob("*/meta.json")]:
        meta.write_bytes(b"[" * 100_000)
    again, rep = run(acfile, cache, tmp_path / "2.aci")
    assert rep.cached() == [] and again.image_id == good.image_id


def _record(key: str, size: int) -> ImageRecord:
    return ImageRecord(key=key, image_id="sha512-" + "0" * 128, size=size,
                       uncompressed_size=size, entries=1, manifest_json=b"{}")


def test_the_image_entry_is_what_was_written_and_only_a_whole_one_is_kept(
        tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    key, data = "sha256:" + "ab" * 32, os.urandom(3 << 20)
    with store.session():
        # A write that stops half-way (the finalizer failed): no entry, nothing left over.
        with pytest.raises(RuntimeError), store.image_draft(key) as draft:
            assert draft is not None
            draft.write(data[:1000])
            raise RuntimeError("the build failed")
        assert store.image(key) is None and not list((tmp_path / "cache" / "tmp").iterdir())
        # A size other than the output's: not published as that output.
        with store.image_draft(key) as draft:
            assert draft is not None
            draft.write(data[:1000])
            draft.commit(_record(key, len(data)))
        assert store.image(key) is None
        with store.image_draft(key) as draft:
            assert draft is not None
            for i in range(0, len(data), 4096):
                draft.write(memoryview(data)[i:i + 4096])
            draft.commit(_record(key, len(data)))
        record = store.image(key)
        assert record is not None and store.image_sha256(key) == hashlib.sha256(data).hexdigest()
        with store.image_draft(key) as draft:
            assert draft is None  # cached already
        assert store.copy_image(record, tmp_path / "out.aci")
        assert (tmp_path / "out.aci").read_bytes() == data
        assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_a_build_stores_the_bytes_of_its_output(tmp_path: Path) -> None:
    acfile = make_context(tmp_path / "ctx")
    cache = tmp_path / "cache"
    first, _ = run(acfile, cache, tmp_path / "1.aci")
    stored = next((cache / "images").glob("*/image.aci"))
    assert stored.read_bytes() == (tmp_path / "1.aci").read_bytes()
    assert stored.stat().st_ino != (tmp_path / "1.aci").stat().st_ino
    # The output edited afterwards: the cache's copy is its own (a later build gets the image).
    (tmp_path / "1.aci").write_bytes(b"edited")
    second, rep = run(acfile, cache, tmp_path / "2.aci")
    assert rep.cached()[-1] == len(rep.finished) and second.image_id == first.image_id
    assert (tmp_path / "2.aci").read_bytes() == stored.read_bytes()


@needs_busybox
def test_concurrent_builds_share_one_cache(tmp_path: Path) -> None:
    acfile = make_context(tmp_path / "ctx")
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-m", "acbuild", "build", str(acfile), "-o",
                          str(tmp_path / f"{i}.aci"), "--cache-dir", str(cache)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={"CI": "true", "PATH": "/usr/bin:/bin",
                              "HOME": str(tmp_path)})
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert results[0][0] == results[1][0]
    third = acbuild("build", acfile, "-o", tmp_path / "3.aci", "--cache-dir", cache)
    assert third.code == 0 and third.stdout == results[0][0]
    assert "CACHED" in third.stderr
    assert not list((cache / "tmp").iterdir())  # no temporary entry left behind


@needs_busybox
def test_copy_from_a_cached_stage(tmp_path: Path) -> None:
    text = ("BEGIN ./base AS build\nRUN /bin/sh -c 'echo made > /out.txt'\n"
            "BEGIN scratch\nNAME example.com/two\nCOPY --from=build /out.txt /out.txt\n"
            "LABEL version={{ version | default('1') }}\n")
    acfile = make_context(tmp_path / "ctx", text)
    cache = tmp_path / "cache"
    first, _ = run(acfile, cache, tmp_path / "1.aci")
    second, rep = run(acfile, cache, tmp_path / "2.aci", "version=2")
    assert rep.cached() == [1, 2, 3, 4, 5]
    fresh, _ = run(acfile, None, tmp_path / "fresh.aci", "version=2")
    assert second.image_id == fresh.image_id != first.image_id


def test_cache_verbs_list_and_prune(hello_context: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert acbuild("build", hello_context / "Acfile", "-o", tmp_path / "h.aci",
                   "--cache-dir", cache).code == 0
    listed = acbuild("cache", "list", "--cache-dir", cache)
    assert listed.code == 0 and "image sha256:" in listed.stdout
    # Steps 1-5 and the image: the image's last COPY (and the EXEC after it) keep no
    # snapshot, the image being cached whole (tests/cache/test_snapshot.py).
    assert listed.stdout.strip().splitlines()[-1].startswith("6 entries")
    pruned = acbuild("cache", "prune", "--max-size", "0", "--cache-dir", cache)
    assert pruned.code == 0 and pruned.stdout.startswith("removed 6 entries")
    assert acbuild("cache", "list", "--cache-dir", cache).stdout.startswith("0 entries")
    bad = acbuild("cache", "prune", "--max-size", "lots", "--cache-dir", cache)
    assert bad.code == 2 and "'lots' is not a size such as 500M or 10G" in bad.stderr


def test_no_cache_leaves_the_cache_alone(hello_context: Path, tmp_path: Path) -> None:
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "h.aci", "--no-cache",
                env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert r.code == 0 and not (tmp_path / "xdg" / "acbuild-py" / "build-cache").exists()
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "h.aci",
                env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert r.code == 0 and (tmp_path / "xdg" / "acbuild-py" / "build-cache" / "images").is_dir()


SHARED = """\
BEGIN ./base
NAME example.com/shared
LABEL version={{ version | default("1") }}
COPY data/ /srv/
COPY --chown=1000:1000 data/a.txt /srv/a.txt
COPY --mode=0600 data/b.txt /srv/b.txt
COPY c.txt /etc/conf
COPY --chown=5:5 c.txt /bin/tool
"""


def _source_state(root: Path) -> dict[str, tuple[int, int, int, int, bytes]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        body = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                                            body)
    return out


def _inodes(root: Path) -> set[tuple[int, int]]:
    return {(s.st_dev, s.st_ino) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() for s in [p.lstat()]}


def test_builds_never_change_the_source_tree_and_the_cache_keeps_its_own_copies(
        tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    for rel, text, mode in (("base/etc/conf", "conf\n", 0o644),
                            ("base/bin/tool", "tool\n", 0o755),
                            ("base/home/u/.rc", "rc\n", 0o600), ("data/a.txt", "a\n", 0o644),
                            ("data/b.txt", "b\n", 0o644), ("c.txt", "c\n", 0o644)):
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
        (ctx / rel).chmod(mode)
    os.chown(ctx / "base/home/u/.rc", 1000, 1000)
    (ctx / "Acfile").write_text(SHARED)
    acfile, cache = ctx / "Acfile", tmp_path / "cache"
    before = _source_state(ctx)
    fresh, _ = run(acfile, None, tmp_path / "fresh.aci")
    first, _ = run(acfile, cache, tmp_path / "1.aci")
    again, rep = run(acfile, cache, tmp_path / "2.aci")
    assert rep.cached() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    v2, rep = run(acfile, cache, tmp_path / "3.aci", "version=2")
    assert rep.cached() == [1, 2] and fresh.image_id == first.image_id == again.image_id
    assert v2.image_id == run(acfile, None, tmp_path / "fresh2.aci", "version=2")[0].image_id
    assert _source_state(ctx) == before
    assert not _inodes(ctx) & _inodes(cache)  # editing a source file cannot reach the cache
    with tarfile.open(tmp_path / "3.aci") as t:
        def member(name: str) -> tuple[int, int, int]:
            m = t.getmember(f"rootfs/{name}")
            return m.uid, m.gid, m.mode
        assert member("srv/a.txt") == (1000, 1000, 0o644)
        assert member("srv/b.txt") == (0, 0, 0o600)
        assert member("bin/tool") == (5, 5, 0o644)
        assert member("home/u/.rc") == (1000, 1000, 0o600)
        conf = t.extractfile("rootfs/etc/conf")
        assert conf is not None and conf.read() == b"c\n"
    # The user edits a base file in place, keeping its size and mtime: never served stale.
    st = (ctx / "base/bin/tool").stat()
    with open(ctx / "base/bin/tool", "r+b") as f:
        f.write(b"TOOL")
    os.utime(ctx / "base/bin/tool", ns=(st.st_atime_ns, st.st_mtime_ns))
    text = SHARED.replace("COPY --chown=5:5 c.txt /bin/tool\n", "")
    acfile.write_text(text)
    edited, _ = run(acfile, cache, tmp_path / "4.aci")
    assert edited.image_id == run(acfile, None, tmp_path / "fresh4.aci")[0].image_id
    with tarfile.open(tmp_path / "4.aci") as t:
        tool = t.extractfile("rootfs/bin/tool")
        assert tool is not None and tool.read() == b"TOOL\n"


def test_stat_cache_remembers_a_file_whose_only_recent_change_is_its_ctime(
        tmp_path: Path) -> None:
    import time

    from acbuild.cache.statcache import StatCache, remembered

    old, fresh = tmp_path / "old", tmp_path / "fresh"
    old.write_text("old\n")
    fresh.write_text("fresh\n")
    os.utime(old, (1_000_000, 1_000_000))  # an old mtime; the ctime is now
    os.link(old, tmp_path / "link")  # what a build hardlinking a base does to it
    time.sleep(0.2)
    stats = StatCache(tmp_path / "stat.json")
    for path in (old, fresh):
        stats.file_digest(path, path.stat())
    stats.save()
    kept = remembered(tmp_path / "stat.json")
    assert str(old) in kept and str(fresh) not in kept  # fresh: mtime too recent


def test_what_a_killed_build_was_writing_is_removed_by_the_next(tmp_path: Path) -> None:
    """A build killed while it wrote a step's tree or an image (SIGKILL: no cleanup) left it
    in tmp/ until prune's age rule; the next build's session removes it, and only it."""
    store = CacheStore(tmp_path / "cache")
    with store.session():
        pass
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = owner_tag().split("-", 1)[1]
    killed = tmp_path / "cache" / "tmp" / f"{dead.pid}-{host}.0123456789ab"
    (killed / "tree").mkdir(parents=True)
    (killed / "image.aci").write_bytes(b"x" * 1000)
    alive = tmp_path / "cache" / "tmp" / f"{owner_tag()}.0123456789ab"
    alive.mkdir()
    with store.session():
        assert not killed.exists()
        assert alive.exists()
