"""The image store's directory: opened once, through nothing another user can steer, used
by fd, tagged; and its tmp/ downloads held by their maker (RK-1, RK-5).

Through the real CLI, with a second local user (`nobody`) planting for real and real
concurrent processes: a fetch held mid-download by a paced server while gc runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import acbuild
from tests.support.gpghelp import make_aci
from tests.support.httpserver import Server
from tests.support.otheruser import NOBODY, as_nobody, need_root, shared_directory

pytest_plugins = ("tests.support.fetchhelp",)  # http_server


@pytest.fixture
def shared() -> Iterator[Path]:
    yield from shared_directory()


def victim(tmp_path: Path) -> Path:
    """A root-owned 0755 directory standing for /var: its tmp/ and blobs/ hold files."""
    where = tmp_path / "var"
    where.mkdir(0o755)
    for sub in ("tmp", "blobs/sha256"):
        (where / sub).mkdir(parents=True)
        (where / sub / ("a" * 64 if "blobs" in sub else "precious")).write_text("keep\n")
    return where


def untouched(where: Path) -> list[str]:
    return sorted(str(p.relative_to(where)) for p in where.rglob("*"))


GC_ARGS = [["--keep", "1"], ["--blobs"], ["--older-than", "0", "--blobs"]]


@pytest.mark.parametrize("args", GC_ARGS)
def test_gc_refuses_a_store_that_is_another_users_symlink(
        shared: Path, tmp_path: Path, args: list[str]) -> None:
    var = victim(tmp_path)
    before = untouched(var)
    as_nobody(lambda: (shared / "store").symlink_to(var))
    r = acbuild("gc", "--store", shared / "store", *args)
    assert r.code == 1, r
    first, *rest = r.stderr.splitlines()
    what = "blob store" if args == ["--blobs"] else "image store"
    assert first == (f"error: {what} {shared / 'store'} is a symlink that belongs to "
                     f"uid {NOBODY}, not to you (uid 0) or root"), r.stderr
    assert rest and rest[0].lstrip().startswith("hint: ") and len(rest) == 1, r.stderr
    assert untouched(var) == before  # nothing deleted, no index.json, no .lock


def test_default_store_below_another_users_directory_is_refused(
        shared: Path, tmp_path: Path) -> None:
    """$XDG_CACHE_HOME on a shared path: a directory of theirs on the way could be re-pointed
    at any time, whatever the store it leads to looks like now."""
    var = victim(tmp_path)
    (var / "images").mkdir(0o700)
    (var / "images" / "tmp").mkdir()
    (var / "images" / "tmp" / "precious").write_text("keep\n")
    before = untouched(var)

    def plant() -> None:
        (shared / "ci").mkdir(0o755)
        (shared / "ci" / "acbuild-py").symlink_to(var)

    as_nobody(plant)
    r = acbuild("gc", "--keep", "1", env={"XDG_CACHE_HOME": str(shared / "ci")})
    assert r.code == 1
    assert f"{shared / 'ci'} is a directory that belongs to uid {NOBODY}" in r.stderr, r.stderr
    assert untouched(var) == before


@pytest.mark.parametrize("args", GC_ARGS)
def test_gc_refuses_a_directory_that_is_not_a_store(tmp_path: Path, args: list[str]) -> None:
    """Yours, private, but not a store (a home, another program's): never emptied."""
    var = victim(tmp_path)
    before = untouched(var)
    r = acbuild("gc", "--store", var, *args)
    assert r.code == 1
    what = "blob store" if args == ["--blobs"] else "image store"
    assert f"{what} {var} is not an acbuild-py image store" in r.stderr.splitlines()[0]
    assert untouched(var) == before


def test_a_new_store_is_tagged_and_then_used(tmp_path: Path) -> None:
    image = make_aci(tmp_path / "x.aci", "example.com/x")
    store = tmp_path / "store"
    r = acbuild("fetch", "--store", store, "--insecure-skip-verify", image)
    assert r.code == 0, r.stderr
    assert (store / "CACHEDIR.TAG").read_bytes().startswith(
        b"Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag "
        b"created by acbuild-py for its image store.\n")
    assert acbuild("gc", "--store", store, "--keep", "0", "--blobs").code == 0
    assert sorted(p.name for p in store.iterdir()) == [".lock", "CACHEDIR.TAG", "blobs.lock",
                                                       "index.json", "tmp"]


def test_run_cache_that_is_another_users_symlink_is_refused(
        shared: Path, tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir(0o755)
    as_nobody(lambda: (shared / "acbuild-py").symlink_to(var))
    image = make_aci(tmp_path / "r.aci", "example.com/r")
    r = acbuild("run", "--no-stdin", "--insecure-skip-verify", image,
                env={"XDG_CACHE_HOME": str(shared)})
    assert r.code == 1
    assert f"run cache {shared / 'acbuild-py'} is a symlink that belongs to uid {NOBODY}" \
        in r.stderr, r.stderr
    assert list(var.iterdir()) == []  # no rootfs/ nor run/ written there


# -- tmp/: liveness -------------------------------------------------------------------------

def _slow_image(server: Server) -> str:
    """An image the server sends in ~3 s (64 KiB every 0.1 s): a fetch stays in tmp/."""
    make_aci(server.root / "big.aci", "127.0.0.1/big", payload=os.urandom(2 << 20))
    server.behaviour.paced["/big.aci"] = 0.1
    return f"{server.url}/big.aci"


def _start_fetch(url: str, store: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "acbuild", "fetch", "--insecure", "--insecure-skip-verify",
         "--store", str(store), url],
        env={**os.environ, "CI": "true"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def _tmp(store: Path) -> list[str]:
    return sorted(os.listdir(store / "tmp")) if (store / "tmp").is_dir() else []


def _downloading(store: Path, fetch: subprocess.Popen[str]) -> list[str]:
    """The entries in tmp/ once the fetch is writing its download there."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        entries = _tmp(store)
        if entries and any((store / "tmp" / e / "image.aci").exists() for e in entries):
            return entries
        assert fetch.poll() is None, fetch.communicate()
        time.sleep(0.02)
    raise AssertionError("the fetch never started its download")


GC_FROM = {
    "same-pid-namespace": [],
    # where every pid of the fetch's namespace looks dead: only the flock says it is live
    "other-pid-namespace": ["unshare", "--pid", "--fork", "--kill-child"],
}


@pytest.mark.parametrize("where", GC_FROM)
def test_gc_leaves_a_live_fetchs_download(
        http_server: Server, tmp_path: Path, where: str) -> None:
    if where != "same-pid-namespace":
        need_root()
    store = tmp_path / "store"
    fetch = _start_fetch(_slow_image(http_server), store)
    try:
        held = _downloading(store, fetch)
        gc = subprocess.run([*GC_FROM[where], sys.executable, "-m", "acbuild", "gc",
                             "--store", str(store), "--keep", "5"],
                            capture_output=True, text=True, timeout=60)
        assert gc.returncode == 0, gc.stderr
        assert _tmp(store) == held  # still there, still being written
        _out, err = fetch.communicate(timeout=60)
    finally:
        fetch.kill()
        fetch.wait()
    assert fetch.returncode == 0, err
    assert "stored 127.0.0.1/big as sha512-" in err
    assert _tmp(store) == []  # removed by its maker once stored


def test_a_killed_fetchs_download_is_removed_by_gc_and_by_the_next_fetch(
        http_server: Server, tmp_path: Path) -> None:
    url = _slow_image(http_server)
    store = tmp_path / "store"
    for cleaner in ("fetch", "gc"):
        fetch = _start_fetch(url, store)
        left = _downloading(store, fetch)
        fetch.send_signal(signal.SIGKILL)
        fetch.communicate()
        assert _tmp(store) == left  # SIGKILL: nothing could clean up
        if cleaner == "gc":
            r = acbuild("gc", "--store", store, "--keep", "5")
        else:
            r = acbuild("fetch", "--store", store, "--insecure-skip-verify",
                        make_aci(tmp_path / "small.aci", "example.com/small"))
        assert r.code == 0, r.stderr
        assert _tmp(store) == [], cleaner
