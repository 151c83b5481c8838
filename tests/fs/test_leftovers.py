"""Leftovers of killed runs are removed by the next run; live or foreign ones never are."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from acbuild.fs.atomic import atomic_write
from acbuild.fs.leftovers import owner_tag, sweep


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
