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
    assert f"log directory {logs}: {state} is a directory that belongs to uid {NOBODY}" \
        in r.stderr
    assert os.listdir(logs) == []


def victim_directory(where: Path) -> Path:
    """A directory of root's that the user never named (it stands for /etc): 0755, with a
    root file of the log's name in it."""
    where.mkdir(0o755)
    (where / "build.log").write_text("root data that must survive\n")
    return where


def test_log_file_through_a_directory_symlink_another_user_planted_is_refused(
        project: Path, shared: Path, tmp_path: Path) -> None:
    """RK-2: `--log-file $SHARED/logs/build.log` where `nobody` made `$SHARED/logs` a
    symlink to a directory of root's: the file there is neither truncated nor chmod-ed,
    and the build stops before any work, saying why."""
    victim = victim_directory(tmp_path / "victim")
    as_nobody(lambda: (shared / "logs").symlink_to(victim))
    r = acbuild("build", "--no-cache", project, "-o", tmp_path / "x.aci",
                "--log-file", shared / "logs" / "build.log")
    assert r.code == 1, r.stderr
    assert r.stderr.startswith(
        f"error: log file directory {shared / 'logs'} is a symlink that belongs to uid "
        f"{NOBODY}, not to you (uid 0) or root\n    hint: "), r.stderr
    assert len(r.stderr.splitlines()) == 2 and "Traceback" not in r.stderr
    assert (victim / "build.log").read_text() == "root data that must survive\n"
    assert stat.S_IMODE((victim / "build.log").stat().st_mode) == 0o644
    assert not (tmp_path / "x.aci").exists()


def test_log_file_below_a_directory_another_user_may_write_is_refused(
        project: Path, shared: Path, tmp_path: Path) -> None:
    """`nobody` could rename `$SHARED/theirs/logs` away and put a symlink in its place
    between any check and the open: the walk refuses their directory on the way."""
    theirs = shared / "theirs"
    as_nobody(lambda: theirs.mkdir(0o755) or (theirs / "logs").mkdir(0o777))
    r = acbuild("build", "--no-cache", project, "-o", tmp_path / "x.aci",
                "--log-file", theirs / "logs" / "build.log")
    assert r.code == 1, r.stderr
    assert f"log file directory {theirs / 'logs'}: {theirs} is a directory that belongs " \
        f"to uid {NOBODY}" in r.stderr, r.stderr
    assert os.listdir(theirs / "logs") == []


def test_log_file_in_a_shared_sticky_directory_is_written(
        project: Path, shared: Path, tmp_path: Path) -> None:
    """A sticky directory of root's (/tmp) is where a --log-file may well go: no one else
    can rename what is ours in it."""
    r = acbuild("build", "--no-cache", project, "-o", tmp_path / "x.aci",
                "--log-file", shared / "build.log")
    assert r.code == 0, r.stderr
    assert stat.S_IMODE((shared / "build.log").stat().st_mode) == 0o600


def test_default_log_directory_through_a_symlink_another_user_planted_is_refused(
        shared: Path, tmp_path: Path) -> None:
    """$XDG_STATE_HOME shared (root's, sticky), `nobody` plants its `acbuild-py` as a
    symlink to a directory of root's: the default logs/ is not made in it, nor a log."""
    if not busybox_available():
        pytest.skip("busybox-static is not installed")
    make_busybox_rootfs(tmp_path / "rootfs")
    (tmp_path / "Acfile").write_text("BEGIN ./rootfs\nNAME example.com/log\nRUN /bin/true\n")
    victim = victim_directory(tmp_path / "victim")
    as_nobody(lambda: (shared / "acbuild-py").symlink_to(victim))
    r = acbuild("build", "--no-cache", tmp_path / "Acfile", "-o", tmp_path / "x.aci",
                env={"XDG_STATE_HOME": str(shared)})
    assert r.code == 1, r.stderr
    assert f": {shared / 'acbuild-py'} is a symlink that belongs to uid {NOBODY}" in r.stderr
    assert sorted(os.listdir(victim)) == ["build.log"]
    assert not (tmp_path / "x.aci").exists()


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
