"""The cache directory itself: reached only through what this user or root controls, opened
once and used through that descriptor, never a directory the cache did not make, and its
tmp/ swept only of what no live build holds (red team RC-3, RC-10).

Attacks by a second user are made for real as `nobody` (tests run as root); the other PID
namespace is a real one (`unshare --pid --fork`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import acbuild.cache.cache as cache_module
from acbuild.cache.cache import CacheStore, ImageRecord, NotACache
from acbuild.fs.leftovers import owner_tag
from acbuild.fs.private import UnsafeDirectory
from tests.support.cli import acbuild
from tests.support.otheruser import NOBODY, as_nobody, need_root, shared_directory
from tests.support.repoint import acbuild_repointed

KEY = "sha256:" + "ab" * 32
HOUR_AGO = time.time() - 2 * 3600


@pytest.fixture
def shared() -> Iterator[Path]:
    yield from shared_directory()


def put_image(store: CacheStore, where: Path, data: bytes, key: str = KEY) -> ImageRecord:
    aci = where / "image.aci"
    aci.write_bytes(data)
    record = ImageRecord(key=key, image_id="sha512-x", size=len(data), uncompressed_size=1,
                         entries=1, manifest_json=b"{}")
    store.put_image(key, aci, record)
    return record


def made_cache(where: Path) -> CacheStore:
    store = CacheStore(where)
    with store.session():
        pass
    return store


# -- RC-3: what the cache directory may be ---------------------------------------------------

def test_a_symlink_another_user_owns_is_refused_even_to_our_own_cache(
        shared: Path, tmp_path: Path) -> None:
    """The link's target is ours, but its owner can re-point it at any moment after a check:
    the link is refused, not judged by its target."""
    ours = made_cache(tmp_path / "cache").root
    link = shared / "build-cache"
    as_nobody(lambda: link.symlink_to(ours))
    with pytest.raises(UnsafeDirectory) as e:
        CacheStore(link).check()
    assert e.value.message == (f"step cache {link} is a symlink that belongs to uid {NOBODY}, "
                               "not to you (uid 0) or root")
    r = acbuild("cache", "prune", "--all", "--cache-dir", link)
    assert r.code == 1 and "is a symlink that belongs to uid" in r.stderr, r.stderr


def test_a_directory_another_user_owns_on_the_path_is_refused(shared: Path) -> None:
    """`nobody` owns a directory above the cache: they can rename the cache away and put a
    directory of theirs in its place."""
    theirs = shared / "theirs"
    as_nobody(lambda: theirs.mkdir(0o755) or theirs.chmod(0o777))
    with pytest.raises(UnsafeDirectory) as e:
        CacheStore(theirs / "cache").check()
    assert f": {theirs} is a directory that belongs to uid {NOBODY}" in e.value.message
    assert not (theirs / "cache").exists()


def test_a_symlink_of_ours_or_roots_is_followed(tmp_path: Path) -> None:
    made_cache(tmp_path / "real")
    (tmp_path / "link").symlink_to("real")
    store = CacheStore(tmp_path / "link")
    record = put_image(store, tmp_path, b"image bytes")
    assert store.image(KEY) == record
    assert (tmp_path / "real" / "images" / ("ab" * 32)).is_dir()


def test_the_cache_is_used_through_the_directory_it_opened(tmp_path: Path) -> None:
    """Re-pointing the name after the cache was opened changes nothing: the entry served is
    the opened cache's, and prune deletes in it, not in what the name now leads to."""
    made_cache(tmp_path / "real")
    forged_store = made_cache(tmp_path / "forged")
    put_image(forged_store, tmp_path, b"EVIL payload")
    (tmp_path / "link").symlink_to("real")
    store = CacheStore(tmp_path / "link")
    record = put_image(store, tmp_path, b"genuine app!")
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("forged")

    assert store.copy_image(record, tmp_path / "out.aci")
    assert (tmp_path / "out.aci").read_bytes() == b"genuine app!"
    (tmp_path / "forged" / "tmp" / "old").mkdir()
    os.utime(tmp_path / "forged" / "tmp" / "old", (HOUR_AGO, HOUR_AGO))
    assert [e.kind for e in store.prune(0)] == ["image"]
    assert not list((tmp_path / "real" / "images").iterdir())
    assert (tmp_path / "forged" / "images" / ("ab" * 32) / "image.aci").read_bytes() == \
        b"EVIL payload"
    assert (tmp_path / "forged" / "tmp" / "old").exists()


def fake_root(where: Path) -> Path:
    """A stand-in for "/": root's, 0755, with a shared tmp/ holding other users' old files."""
    where.mkdir(0o755)
    (where / "bin").mkdir()
    (where / "tmp").mkdir()
    (where / "tmp").chmod(0o1777)
    (where / "tmp" / "alice-report.txt").write_text("alice's\n")
    (where / "tmp" / "root-socket-dir").mkdir()
    for child in (where / "tmp").iterdir():
        os.utime(child, (HOUR_AGO, HOUR_AGO))
    return where


@pytest.mark.parametrize("how", ["link", "directly"])
def test_a_directory_that_is_not_a_cache_is_never_pruned_or_used(tmp_path: Path,
                                                                  how: str) -> None:
    """`--cache-dir` naming (or linking to) a directory the cache did not make, like "/":
    one clear error, nothing deleted in it, nothing made in it."""
    root = fake_root(tmp_path / "root")
    given = root
    if how == "link":
        given = tmp_path / "build-cache"
        given.symlink_to(root)
    before = sorted(p.name for p in root.rglob("*"))
    r = acbuild("cache", "prune", "--all", "--cache-dir", given)
    assert r.code == 1, r.stderr
    assert r.stderr.startswith(f"error: step cache {given} is not an acbuild-py cache (it is "
                               "not empty and has no acbuild-py CACHEDIR.TAG); refusing to use "
                               "it, or to prune anything in it\n"), r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Acfile").write_text("BEGIN scratch\nNAME example.com/n\n")
    r = acbuild("build", tmp_path / "ctx" / "Acfile", "-o", tmp_path / "x.aci",
                "--cache-dir", given)
    assert r.code == 1 and "is not an acbuild-py cache" in r.stderr, r.stderr
    assert sorted(p.name for p in root.rglob("*")) == before


def test_a_new_or_empty_directory_becomes_a_tagged_cache(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir(0o700)
    for where in (tmp_path / "new" / "cache", tmp_path / "empty"):
        made_cache(where)
        assert (where / "CACHEDIR.TAG").read_bytes().startswith(
            b"Signature: 8a477f597d28d172789f06886806bc55")
        made_cache(where)  # and stays usable
    for text in ("not a tag\n", "Signature: 8a477f597d28d172789f06886806bc55\n"
                 "# This file is a cache directory tag created by cargo.\n"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "CACHEDIR.TAG").write_text(text)
        with pytest.raises(NotACache):  # not ours: another tool's cache is not emptied
            CacheStore(tmp_path / "other").check()
        shutil.rmtree(tmp_path / "other")


def test_subdirectories_are_never_followed(tmp_path: Path) -> None:
    store = made_cache(tmp_path / "cache")
    shutil.rmtree(tmp_path / "cache" / "tmp")
    fake_root(tmp_path / "elsewhere")
    (tmp_path / "cache" / "tmp").symlink_to(tmp_path / "elsewhere" / "tmp")
    with pytest.raises(UnsafeDirectory) as e:
        store.prune(0)
    assert e.value.message.startswith(f"step cache {tmp_path / 'cache'}: tmp/ cannot be opened")
    assert len(list((tmp_path / "elsewhere" / "tmp").iterdir())) == 2


def test_entries_are_private_to_their_owner(tmp_path: Path) -> None:
    """0700: the cache root is, but another user should not need its mode to be kept out."""
    store = made_cache(tmp_path / "cache")
    put_image(store, tmp_path, b"image")
    with store.image_draft("sha256:" + "cd" * 32) as draft:
        assert draft is not None
        drafts = list((tmp_path / "cache" / "tmp").iterdir())
        assert [stat.S_IMODE(d.stat().st_mode) for d in drafts] == [0o700]
    for d in (tmp_path / "cache" / "images" / ("ab" * 32), tmp_path / "cache" / "locks"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


# -- RK-4: after the open, nothing by path ------------------------------------------------

def not_a_cache(where: Path) -> Path:
    """Another program's directory (no CACHEDIR.TAG) that happens to have what a cache has."""
    (where / "mounts" / "db").mkdir(parents=True)
    (where / "mounts" / "db" / "data").write_text("precious\n")
    for sub in ("tmp", "stat", "steps", "images"):
        (where / sub).mkdir()
    return where


def test_prune_repointed_after_the_open_deletes_only_in_the_cache(tmp_path: Path) -> None:
    """`cache prune --all` with the --cache-dir symlink re-pointed the instant after the
    cache was opened: the cache mounts it removes are the opened cache's."""
    from acbuild.cache.mountcache import Owner

    with made_cache(tmp_path / "real").mounts.use("c1", "shared", Owner(
            uid=os.geteuid(), gid=os.getegid())) as data:
        (data / "x").write_text("hi\n")
    other = not_a_cache(tmp_path / "other")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    r = acbuild_repointed(tmp_path / "link", other, "cache", "prune", "--all",
                          "--cache-dir", tmp_path / "link")
    assert r.code == 0, r.stderr
    assert os.readlink(tmp_path / "link") == str(other)  # the race was won
    assert (other / "mounts" / "db" / "data").read_text() == "precious\n"
    assert sorted(p.name for p in other.rglob("*")) == [
        "data", "db", "images", "mounts", "stat", "steps", "tmp"]
    assert list((tmp_path / "real" / "mounts").iterdir()) == []
    assert list((tmp_path / "real" / "tmp").iterdir()) == []


def test_a_build_repointed_after_the_open_takes_and_leaves_nothing_elsewhere(
        tmp_path: Path) -> None:
    """A build with the link re-pointed the instant after the open, to a copy of the cache
    whose step entry was altered and resealed (the seal is a plain SHA-256, the tree digest
    the cache's own function): the image holds the opened cache's files, and what the build
    stores goes into the opened cache, none of it into the other directory."""
    from acbuild.cache.snapshot import copy_tree_verified

    (tmp_path / "ctx" / "base").mkdir(parents=True)
    (tmp_path / "ctx" / "base" / "f1").write_text("genuine\n")
    (tmp_path / "ctx" / "Acfile").write_text("BEGIN ./base\nNAME example.com/rk4\n"
                                             "LABEL v={{ v }}\n")
    for made in (tmp_path / "ctx" / "base" / "f1", tmp_path / "ctx" / "base",
                 tmp_path / "ctx" / "Acfile", tmp_path / "ctx"):
        os.utime(made, (HOUR_AGO, HOUR_AGO))  # settled: the build keeps a warm record too
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    build = ["build", tmp_path / "ctx" / "Acfile", "--cache-dir", tmp_path / "link",
             "--compression", "none"]
    r = acbuild(*build, "--var", "v=1", "-o", tmp_path / "one.aci")
    assert r.code == 0, r.stderr
    planted = tmp_path / "planted"
    (tmp_path / "scratch").mkdir()
    shutil.copytree(tmp_path / "real", planted, symlinks=True)
    shutil.rmtree(planted / "images")
    (planted / "images").mkdir()
    for entry in (planted / "steps").iterdir():
        body = json.loads((entry / "meta.json").read_bytes())["body"]
        if (entry / "tree").is_dir():
            (entry / "tree" / "f1").write_text("PLANTED\n")
            (entry / "signatures").unlink(missing_ok=True)
            body["digest"], body["bytes"] = copy_tree_verified(
                entry / "tree", tmp_path / "scratch" / entry.name, link=False)
        (entry / "meta.json").write_bytes(cache_module._seal(body))
    time.sleep(1.1)  # as the red team did (rk9_planted_entry.sh): the planted files settle
    before = sorted(str(p.relative_to(planted)) for p in planted.rglob("*"))
    r = acbuild_repointed(tmp_path / "link", planted, *build, "--var", "v=2",
                          "-o", tmp_path / "two.aci")
    assert r.code == 0, r.stderr
    assert os.readlink(tmp_path / "link") == str(planted)
    with tarfile.open(tmp_path / "two.aci") as aci:
        f1 = aci.extractfile("rootfs/f1")
        assert f1 is not None and f1.read() == b"genuine\n"
    assert sorted(str(p.relative_to(planted)) for p in planted.rglob("*")
                  if not p.is_relative_to(planted / "locks")) == \
        [p for p in before if not p.startswith("locks")]
    assert len(list((tmp_path / "real" / "images").iterdir())) == 2
    assert len(list((tmp_path / "real" / "warm").iterdir())) == 2


def test_the_stat_cache_is_private_like_the_entries(tmp_path: Path) -> None:
    """stat/ (what a build remembers of the context's files) is 0700, its files 0600."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "data").write_text("x\n")
    (tmp_path / "ctx" / "Acfile").write_text("BEGIN scratch\nNAME example.com/s\n"
                                             "COPY data /data\n")
    os.utime(tmp_path / "ctx" / "data", (HOUR_AGO, HOUR_AGO))
    time.sleep(0.2)  # a file changed within the last moments is not remembered
    r = acbuild("build", tmp_path / "ctx" / "Acfile", "-o", tmp_path / "x.aci",
                "--cache-dir", tmp_path / "cache")
    assert r.code == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "cache" / "stat").stat().st_mode) == 0o700
    files = list((tmp_path / "cache" / "stat").iterdir())
    assert files and {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


# -- RC-10: the tmp/ sweep goes by the owner's lock, not its pid ------------------------------

_SESSION = """
import sys
from pathlib import Path
from acbuild.cache.cache import CacheStore
with CacheStore(Path(sys.argv[1])).session():
    pass
"""


def test_a_build_in_another_pid_namespace_leaves_a_live_builds_entries(tmp_path: Path) -> None:
    """Seen from another PID namespace on this host every pid of this one is dead: the
    owner lock, which the kernel shares across namespaces, is what keeps them."""
    need_root()
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    store = made_cache(tmp_path / "cache")
    with store.session(), store.image_draft(KEY) as draft:
        assert draft is not None
        live = list((tmp_path / "cache" / "tmp").iterdir())
        assert len(live) == 1
        r = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", _SESSION,
                            tmp_path / "cache"], capture_output=True, text=True,
                           cwd=Path(__file__).parents[2], check=False)
        assert r.returncode == 0, r.stderr
        assert list((tmp_path / "cache" / "tmp").iterdir()) == live


def _killed_while(tmp_path: Path, work: str) -> None:
    """A child (its own pid, so its own owner tag) dies mid-``work``, no cleanup run."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            store = CacheStore(tmp_path / "cache")
            if work == "discard":
                cache_module.remove_at = lambda *a, **k: os._exit(0)  # type: ignore[assignment]
                store.discard("images", KEY)
            elif work == "import":
                from acbuild.cache.remote import RemoteCache
                from acbuild.report import NullReporter

                with RemoteCache(store, NullReporter())._temp():
                    os._exit(0)
            else:
                with store.image_draft("sha256:" + "ef" * 32):
                    os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("work", ["draft", "discard", "import"])
def test_what_a_killed_build_left_is_swept_by_the_next_session(tmp_path: Path,
                                                               work: str) -> None:
    """An image draft, the trash of a discard (tmp/<tag>.bad-*), a --cache-from import's
    tree (tmp/<tag>.remote-*): each under its owner's tag, gone once its lock is free."""
    store = made_cache(tmp_path / "cache")
    put_image(store, tmp_path, b"image")
    _killed_while(tmp_path, work)
    left = [p.name for p in (tmp_path / "cache" / "tmp").iterdir()]
    assert len(left) == 1, left
    with store.session():
        assert not list((tmp_path / "cache" / "tmp").iterdir())
    assert [p.name for p in (tmp_path / "cache" / "locks").iterdir()] == \
        [f"{owner_tag()}.lock"]  # the dead owner's lock file is swept too


def test_prune_keeps_a_live_builds_entries_whatever_their_age(tmp_path: Path) -> None:
    store = made_cache(tmp_path / "cache")
    with store.image_draft(KEY) as draft:
        assert draft is not None
        (live,) = (tmp_path / "cache" / "tmp").iterdir()
        os.utime(live, (HOUR_AGO, HOUR_AGO))
        untagged = tmp_path / "cache" / "tmp" / "from-elsewhere"
        untagged.mkdir()
        os.utime(untagged, (HOUR_AGO, HOUR_AGO))
        CacheStore(tmp_path / "cache").prune(0)
        assert list((tmp_path / "cache" / "tmp").iterdir()) == [live]


def test_a_cache_mount_used_first_makes_a_tagged_cache(tmp_path: Path) -> None:
    """A RUN --mount=type=cache (also in a --no-cache build) may be the first to use the
    directory: it is made a cache then, so a later cached build does not refuse it."""
    from acbuild.cache.mountcache import Owner

    with CacheStore(tmp_path / "cache").mounts.use("id", "shared",
                                                   Owner(uid=os.geteuid(), gid=os.getegid())):
        pass
    assert (tmp_path / "cache" / "CACHEDIR.TAG").is_file()
    made_cache(tmp_path / "cache")


def test_another_user_keeps_a_cache_of_their_own_in_a_shared_directory(shared: Path) -> None:
    """The rules are the same for a user who is not root: theirs, through root's sticky
    directory, is usable (and made private and tagged)."""
    def use() -> None:
        store = made_cache(shared / "mine" / "cache")
        with store.image_draft(KEY) as draft:
            assert draft is not None
        assert (shared / "mine" / "cache" / "CACHEDIR.TAG").is_file()

    as_nobody(use)
    assert os.stat(shared / "mine" / "cache").st_uid == NOBODY
