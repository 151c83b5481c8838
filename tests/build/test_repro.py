"""Reproducibility: same inputs give the same bytes; --check-repro names what differs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from acbuild.build.repro import EntryFacts, differences
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild, actool_validate

needs_busybox = pytest.mark.skipif(not busybox_available(), reason="needs busybox-static")

ACFILE = """\
BEGIN ./base
NAME example.com/repro
COPY app/ /opt/app/
RUN /bin/sh -c "mkdir -p /var/made && echo built > /var/made/out && chmod 0750 /var/made"
EXEC /bin/sh
"""


def checkout(where: Path, umask: int, mtime: int, acfile: str = ACFILE) -> Path:
    # The base is an image tree whose modes are its content (kept exactly), so it is made
    # the same way in both checkouts; the COPY sources follow the checkout's umask.
    make_busybox_rootfs(where / "base")
    old = os.umask(umask)
    try:
        (where / "app" / "sub").mkdir(parents=True)
        (where / "app" / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (where / "app" / "run.sh").chmod(0o700 if umask == 0o077 else 0o755)
        (where / "app" / "sub" / "data.txt").write_text("data\n")
        (where / "Acfile").write_text(acfile)
    finally:
        os.umask(old)
    for parent, dirs, files in os.walk(where / "app"):
        for name in dirs + files:
            os.utime(os.path.join(parent, name), (mtime, mtime))
    return where / "Acfile"


@needs_busybox
def test_two_checkouts_with_other_mtimes_and_umasks_give_the_same_bytes(tmp_path: Path) -> None:
    ids = []
    for i, (umask, mtime) in enumerate(((0o022, 1_000_000), (0o077, 1_600_000_000))):
        acfile = checkout(tmp_path / f"c{i}" / ("deeper/" * i) / "ctx", umask, mtime)
        r = acbuild("build", acfile, "-o", tmp_path / f"{i}.aci", "--no-cache")
        assert r.code == 0, r.stderr
        ids.append(r.stdout)
    assert ids[0] == ids[1]
    assert (tmp_path / "0.aci").read_bytes() == (tmp_path / "1.aci").read_bytes()
    actool_validate(tmp_path / "0.aci")


@needs_busybox
def test_check_repro_passes_for_a_reproducible_build(tmp_path: Path) -> None:
    acfile = checkout(tmp_path / "ctx", 0o022, 1_000_000)
    r = acbuild("build", acfile, "-o", tmp_path / "out.aci", "--check-repro")
    assert r.code == 0, r.stderr
    assert "the build is reproducible" in r.stderr
    assert r.stdout.startswith("sha512-")
    actool_validate(tmp_path / "out.aci")


@needs_busybox
def test_check_repro_names_the_differing_file(tmp_path: Path) -> None:
    acfile = checkout(tmp_path / "ctx", 0o022, 1_000_000, ACFILE.replace(
        "EXEC", "RUN /bin/sh -c 'cat /proc/sys/kernel/random/uuid > /stamp'\nEXEC"))
    r = acbuild("build", acfile, "-o", tmp_path / "out.aci", "--check-repro")
    assert r.code == 1, r.stderr
    assert "the build is not reproducible: 1 difference between two builds" in r.stderr
    assert "rootfs/stamp: content" in r.stderr
    assert "Traceback" not in r.stderr


def test_differences_name_each_kind() -> None:
    base = EntryFacts(kind=b"0", mode=0o644, owner=(0, 0), mtime=1.0, content="aa", link="",
                      xattrs=())
    other = EntryFacts(kind=b"0", mode=0o600, owner=(0, 1), mtime=2.0, content="bb", link="",
                       xattrs=(("user.x", "1"),))
    found = differences({"a": base, "b": base, "same": base}, {"a": other, "c": base,
                                                               "same": base})
    assert found == [
        "a: content, mode (420 vs 384), owner ((0, 0) vs (0, 1)), mtime (1.0 vs 2.0), "
        "xattr (() vs (('user.x', '1'),))",
        "b: only in the first build",
        "c: only in the second build",
    ]


def test_check_repro_hello(hello_context: Path, tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "h.aci", "--check-repro")
    assert r.code == 0, r.stderr
