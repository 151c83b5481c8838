"""Leftovers of killed runs are removed by the next run; live or foreign ones never are."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.build import build
from acbuild.build.build import work_directory
from acbuild.fs import leftovers
from acbuild.fs.atomic import atomic_write
from acbuild.fs.leftovers import owner_tag, sweep
from acbuild.fs.private import UnsafeDirectory, user_temp_root
from tests.support.otheruser import as_nobody, shared_directory


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_dead_processes_entries_from_this_host(tmp_path: Path) -> None:
    host = owner_tag().split("-")[1]
    dead = tmp_path / f".x.aci.{dead_pid()}-{host}.abc.tmp"
    live = tmp_path / f".x.aci.{os.getpid()}-{host}.abc.tmp"
    foreign = tmp_path / f".x.aci.{dead_pid()}-00000000.abc.tmp"
    other = tmp_path / f".y.aci.{dead_pid()}-{host}.abc.tmp"
    work = tmp_path / f"acbuild-{dead_pid()}-{host}.xyz"
    for path in (dead, live, foreign, other):
        path.write_bytes(b"partial")
    (work / "rootfs" / "ro").mkdir(parents=True)
    (work / "rootfs" / "ro").chmod(0o555)
    assert sweep(tmp_path, ".x.aci.", ".tmp") == [dead]
    assert sweep(tmp_path, "acbuild-") == [work]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, foreign, other))


def test_atomic_write_sweeps_what_a_killed_writer_left(tmp_path: Path) -> None:
    host = owner_tag().split("-")[1]
    stale = tmp_path / f".img.aci.{dead_pid()}-{host}.abc.tmp"
    stale.write_bytes(b"half an image")
    with atomic_write(tmp_path / "img.aci") as f:
        f.write(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.aci"]


# -- another local user ----------------------------------------------------------------------


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory like /tmp: world-writable and sticky, reachable by `nobody`."""
    yield from shared_directory()


def test_sweep_leaves_entries_another_user_planted(shared: Path) -> None:
    """A second user names entries as a dead build of ours would: nothing of theirs goes,
    and a symlink they plant is not followed into what it points at."""
    host = owner_tag().split("-")[1]
    victim = shared / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "precious").write_text("keep")
    pid = dead_pid()

    def plant() -> None:
        (shared / f"acbuild-{pid}-{host}.dir" / "deep").mkdir(parents=True)
        (shared / f"acbuild-{pid}-{host}.file").write_text("theirs")
        (shared / f"acbuild-{pid}-{host}.link").symlink_to(victim)

    as_nobody(plant)
    assert sweep(shared, "acbuild-") == []
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        [*(f"acbuild-{pid}-{host}.{k}" for k in ("dir", "file", "link")), "victim"])
    assert (victim / "sub" / "precious").read_text() == "keep"
    assert victim.stat().st_mode & 0o777 == 0o755


def test_build_work_trees_live_in_a_private_per_user_directory(
        shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep of killed builds' trees runs in $TMPDIR/acbuild-py-<uid> (0700), never in
    the shared root, where another user's planted entry would be removed as root."""
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    host = owner_tag().split("-")[1]
    planted = shared / f"acbuild-{dead_pid()}-{host}.planted"
    as_nobody(lambda: planted.mkdir())
    with work_directory() as work:
        mine = shared / f"acbuild-py-{os.geteuid()}"
        assert work.parent == mine
        assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    assert planted.is_dir()
    assert list(mine.iterdir()) == []


@pytest.mark.parametrize("kind", ["dir", "symlink", "open-dir"])
def test_a_per_user_temporary_root_planted_by_another_user_is_refused(
        shared: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    mine = shared / f"acbuild-py-{os.geteuid()}"
    theirs = shared / "theirs"
    theirs.mkdir()
    theirs.chmod(0o777)

    def plant() -> None:
        if kind == "dir":
            mine.mkdir(0o700)
        elif kind == "symlink":
            mine.symlink_to(theirs)
        else:
            mine.mkdir()
            mine.chmod(0o777)

    as_nobody(plant)
    with pytest.raises(UnsafeDirectory) as e:
        user_temp_root()
    assert str(mine) in e.value.message
    assert e.value.hint


_SWEEP_ELSEWHERE = """
import sys
from pathlib import Path
from acbuild.fs.leftovers import sweep
print(len(sweep(Path(sys.argv[1]), "acbuild-")), len(sweep(Path(sys.argv[2]), ".o.aci.", ".tmp")))
"""


def test_a_sweep_from_another_pid_namespace_leaves_live_entries(tmp_path: Path) -> None:
    """There every pid of this namespace looks dead (red team RC-10): the entry's flock,
    held by its maker, is what keeps a live build's work directory and temporary output."""
    if os.geteuid() != 0:
        pytest.skip("unshare --pid needs root")
    elsewhere = ["unshare", "--pid", "--fork", sys.executable, "-c", _SWEEP_ELSEWHERE]
    with work_directory() as work, atomic_write(tmp_path / "o.aci") as f:
        f.write(b"half")
        r = subprocess.run([*elsewhere, work.parent, tmp_path], capture_output=True,
                           text=True, cwd=Path(__file__).parents[2], check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["0", "0"]
        assert work.is_dir() and len(list(tmp_path.iterdir())) == 1


def test_an_interrupt_while_the_work_directory_is_made_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real = leftovers.hold

    def interrupted(fd: int) -> bool:
        held = real(fd)
        os.kill(os.getpid(), signal.SIGINT)  # after the directory exists and is held
        return held

    monkeypatch.setattr(build, "hold", interrupted)
    with pytest.raises(KeyboardInterrupt), work_directory():
        pytest.fail("the block runs only when no signal is pending")
    assert list((tmp_path / f"acbuild-py-{os.geteuid()}").iterdir()) == []
