"""Tests for cache/mountcache: sharing modes with real flocks across processes, ids that
cannot name a path, ownership of new directories, and prune skipping one in use."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from acbuild.cache.cache import CacheStore
from acbuild.cache.mountcache import MountCache, Owner, Sharing

ROOT = Owner(uid=os.geteuid(), gid=os.getegid())


def mounts(path: Path) -> MountCache:
    """The cache mounts of the step cache at ``path`` (as a build reaches them)."""
    return CacheStore(path).mounts


def hold(root: Path, cache_id: str, sharing: Sharing, ready: object, release: object) -> None:
    """In another process: use the mount, say which directory, wait to be released."""
    with mounts(root).use(cache_id, sharing, ROOT) as data:
        ready.put(data.name)  # type: ignore[attr-defined]
        release.wait(30)  # type: ignore[attr-defined]


@pytest.fixture
def holder(tmp_path: Path):  # type: ignore[no-untyped-def]
    ctx = multiprocessing.get_context("fork")
    started = []

    def start(cache_id: str, sharing: Sharing) -> str:
        ready, release = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=hold, args=(tmp_path / "c", cache_id, sharing, ready,
                                              release))
        proc.start()
        started.append((proc, release))
        return str(ready.get(timeout=30))

    yield start
    for proc, release in started:
        release.set()
        proc.join(30)


def test_shared_users_share_one_directory(tmp_path: Path, holder) -> None:  # type: ignore[no-untyped-def]
    assert holder("c", "shared") == "data.0"
    with mounts(tmp_path / "c").use("c", "shared", ROOT) as data:
        assert data.name == "data.0"


def test_private_users_get_a_directory_each(tmp_path: Path, holder) -> None:  # type: ignore[no-untyped-def]
    assert holder("c", "private") == "data.0"
    assert holder("c", "private") == "data.1"
    with mounts(tmp_path / "c").use("c", "private", ROOT) as data:
        assert data.name == "data.2"
    with mounts(tmp_path / "c").use("c", "private", ROOT) as data:
        assert data.name == "data.2"  # free again: reused, not a new one each time


def test_locked_waits_for_the_holder(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=hold, args=(tmp_path / "c", "c", "shared", ready, release))
    proc.start()
    ready.get(timeout=30)
    told: list[bool] = []

    def on_wait() -> None:  # the holder lets go only once we said we wait
        told.append(release.is_set())
        threading.Timer(0.3, release.set).start()

    try:
        with mounts(tmp_path / "c").use("c", "locked", ROOT, on_wait=on_wait) as data:
            assert release.is_set()  # got it only after the shared user was told to leave
    finally:
        release.set()
        proc.join(30)
    assert data.name == "data.0"
    assert told == [False]  # said so once, before waiting, while it was held
    with mounts(tmp_path / "c").use("c", "locked", ROOT, on_wait=lambda: told.append(True)):
        pass
    assert told == [False]  # free: no waiting, nothing said


@pytest.mark.parametrize("cache_id", ["../../x", "/etc", "a/../../b", ".", "\u00e9"])
def test_an_id_is_only_ever_a_hashed_name(tmp_path: Path, cache_id: str) -> None:
    cache = mounts(tmp_path / "c")
    with cache.use(cache_id, "shared", ROOT) as data:
        assert Path(os.path.realpath(data)).parent.parent == tmp_path / "c" / "mounts"
    (entry,) = cache.entries()
    assert entry.id == cache_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_new_directory_mode_is_exact(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with mounts(tmp_path / "c").use("c", "shared", Owner(uid=os.geteuid(),
                                            gid=os.getegid(), mode=0o775)) as data:
            assert data.stat().st_mode & 0o7777 == 0o775
    finally:
        os.umask(old)
    assert (tmp_path / "c" / "mounts").stat().st_mode & 0o777 == 0o700


def test_prune_skips_a_directory_in_use(tmp_path: Path, holder) -> None:  # type: ignore[no-untyped-def]
    holder("busy", "shared")
    cache = mounts(tmp_path / "c")
    with cache.use("idle", "shared", ROOT) as data:
        (data / "f").write_bytes(b"x" * 10000)
    entries = {e.id: e for e in cache.entries()}
    assert entries["idle"].size >= 10000
    assert not cache.remove(entries["busy"])
    assert cache.remove(entries["idle"])
    assert [e.id for e in cache.entries()] == ["busy"]


def test_a_planted_mount_directory_is_refused(tmp_path: Path) -> None:
    CacheStore(tmp_path / "c").check()
    (tmp_path / "c" / "mounts").mkdir(mode=0o777)
    (tmp_path / "c" / "mounts").chmod(0o777)
    with pytest.raises(Exception, match="cache mount directory"), \
            mounts(tmp_path / "c").use("c", "shared", ROOT):
        pass
