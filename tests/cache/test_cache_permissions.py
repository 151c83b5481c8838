"""Class 6: the step cache, image store, run cache and build logs belong to one user.

Another local user who can write where a root build keeps its cache could plant an entry
that is copied into images as if the build had made it. Each attack is made for real by a
second user (`nobody`, in a forked child) in a shared, /tmp-like directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.cache.cache import CacheStore
from acbuild.distribution.imagestore import ImageStore
from acbuild.fs.private import UnsafeDirectory, private_dir
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild
from tests.support.otheruser import NOBODY, as_nobody, shared_directory

ACFILE = "BEGIN scratch\nNAME example.com/perm\nCOPY data /data\n"


@pytest.fixture
def shared() -> Iterator[Path]:
    yield from shared_directory()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Acfile").write_text(ACFILE)
    (tmp_path / "data").write_text("mine\n")
    return tmp_path / "Acfile"


def planted(shared: Path, kind: str) -> Path:
    """A would-be cache directory another user prepared: theirs, world-writable, or a
    symlink to a directory of theirs."""
    where = shared / "cache"

    def plant() -> None:
        if kind == "theirs":
            where.mkdir(0o755)
        elif kind == "world-writable":
            where.mkdir()
            where.chmod(0o777)
        else:
            (shared / "their-dir").mkdir(0o700)
            where.symlink_to(shared / "their-dir")

    as_nobody(plant)
    return where


KINDS = ["theirs", "world-writable", "symlink-to-theirs"]


@pytest.mark.parametrize("kind", KINDS)
def test_build_refuses_a_cache_dir_another_user_controls(project: Path, shared: Path,
                                                          kind: str, tmp_path: Path) -> None:
    cache = planted(shared, kind)
    r = acbuild("build", project, "-o", tmp_path / "x.aci", "--cache-dir", cache)
    assert r.code == 1, r.stderr
    assert f"error: step cache {cache} " in r.stderr
    assert "hint: " in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.aci").exists()
    assert not os.path.exists(cache / "steps")  # nothing written into their directory


@pytest.mark.parametrize("kind", KINDS)
def test_xdg_cache_home_under_another_users_control_is_refused(
        project: Path, shared: Path, kind: str, tmp_path: Path) -> None:
    """The same through $XDG_CACHE_HOME: the directory actually used is checked, not its
    parents (parents are the user's business)."""
    top = planted(shared, kind)
    as_nobody(lambda: (top / "acbuild-py").mkdir(0o777) or (top / "acbuild-py").chmod(0o777))
    as_nobody(lambda: (top / "acbuild-py" / "build-cache").mkdir(0o777)
              or (top / "acbuild-py" / "build-cache").chmod(0o777))
    r = acbuild("build", project, "-o", tmp_path / "x.aci",
                env={"XDG_CACHE_HOME": str(top)})
    assert r.code == 1, r.stderr
    assert "error: step cache " in r.stderr and "build-cache" in r.stderr


def test_a_new_cache_is_private(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "fresh" / "cache"
    r = acbuild("build", project, "-o", tmp_path / "x.aci", "--cache-dir", cache)
    assert r.code == 0, r.stderr
    for d in (cache, cache / "steps", cache / "images", cache / "tmp"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_cache_list_refuses_a_planted_cache(shared: Path) -> None:
    cache = planted(shared, "world-writable")
    r = acbuild("cache", "list", "--cache-dir", cache)
    assert r.code == 1 and f"step cache {cache} belongs to uid {NOBODY}" in r.stderr


def test_an_existing_cache_of_ours_stays_usable(tmp_path: Path) -> None:
    """A cache made by an older version (0755) is ours and not writable by others: used."""
    (tmp_path / "old").mkdir(0o755)
    with CacheStore(tmp_path / "old").session():
        pass


@pytest.mark.parametrize("kind", KINDS)
def test_image_store_another_user_controls_is_refused(shared: Path, kind: str) -> None:
    """A planted store would hand a build an image as if it had been fetched and verified."""
    store = ImageStore(planted(shared, kind))
    with pytest.raises(UnsafeDirectory) as e, store.lock():
        pass
    assert "image store" in e.value.message and e.value.hint
    with pytest.raises(UnsafeDirectory), store.temp():
        pass
    with pytest.raises(UnsafeDirectory):
        store.entries()


def test_run_cache_another_user_controls_is_refused(shared: Path, tmp_path: Path) -> None:
    """`run` executes rendered rootfs trees from its cache: a planted one would run."""
    top = planted(shared, "world-writable")
    as_nobody(lambda: (top / "acbuild-py").mkdir(0o777) or (top / "acbuild-py").chmod(0o777))
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Acfile").write_text("BEGIN scratch\nNAME example.com/r\nEXEC /x\n")
    assert acbuild("build", "--no-cache", tmp_path / "ctx" / "Acfile",
                   "-o", tmp_path / "r.aci").code == 0
    r = acbuild("run", "--no-stdin", "--insecure-skip-verify", tmp_path / "r.aci",
                env={"XDG_CACHE_HOME": str(top)})
    assert r.code != 0
    # Refused at the first directory of theirs on the way, as the step cache is.
    assert f"run cache {top / 'acbuild-py'}: {top} is a directory that belongs to uid " \
        f"{NOBODY}" in r.stderr, r.stderr


def test_default_log_directory_and_file_are_private(project: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = acbuild("build", "--no-cache", project, "-o", tmp_path / "x.aci",
                "--log-file", tmp_path / "given.log", env={"XDG_STATE_HOME": str(state)})
    assert r.code == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "given.log").stat().st_mode) == 0o600
    logs = private_dir(state / "acbuild-py" / "logs", what="log directory")
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700


def test_default_log_directory_another_user_controls_is_refused(
        shared: Path, tmp_path: Path) -> None:
    """A build with RUN keeps its log in $XDG_STATE_HOME/acbuild-py/logs by default."""
    if not busybox_available():
        pytest.skip("busybox-static is not installed")
    make_busybox_rootfs(tmp_path / "rootfs")
    (tmp_path / "Acfile").write_text("BEGIN ./rootfs\nNAME example.com/log\nRUN /bin/true\n")
    state = planted(shared, "world-writable")
    logs = state / "acbuild-py" / "logs"
    as_nobody(lambda: logs.mkdir(0o777, parents=True) or logs.chmod(0o777))
    r = acbuild("build", "--no-cache", tmp_path / "Acfile", "-o", tmp_path / "x.aci",
                env={"XDG_STATE_HOME": str(state)})
    assert r.code == 1, r.stderr
    assert f"log directory {logs} belongs to uid {NOBODY}" in r.stderr
    assert os.listdir(logs) == []


@pytest.mark.parametrize("kind", ["symlink", "theirs"])
def test_log_file_planted_by_another_user_is_refused(project: Path, shared: Path,
                                                     kind: str, tmp_path: Path) -> None:
    """--log-file in a shared directory: a symlink planted there is not written through,
    a file someone else owns is not written to (they could read the log)."""
    log = shared / "build.log"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")

    def plant() -> None:
        if kind == "symlink":
            log.symlink_to(victim)
        else:
            log.write_text("")
            log.chmod(0o666)

    as_nobody(plant)
    r = acbuild("build", "--no-cache", project, "-o", tmp_path / "x.aci", "--log-file", log)
    assert r.code == 1, r.stderr
    assert f"log file {log}" in r.stderr
    assert victim.read_text() == "precious\n"
    assert log.lstat().st_uid == NOBODY


def test_log_file_that_is_a_hardlink_of_one_of_ours_is_not_truncated(
        project: Path, shared: Path, tmp_path: Path) -> None:
    """Planted where protected_hardlinks is off, or by someone who may write the file."""
    victim = shared / "victim"
    victim.write_text("precious\n")
    os.link(victim, shared / "build.log")
    r = acbuild("build", "--no-cache", project, "-o", tmp_path / "x.aci",
                "--log-file", shared / "build.log")
    assert r.code == 1, r.stderr
    assert "has other hard links" in r.stderr
    assert victim.read_text() == "precious\n"
