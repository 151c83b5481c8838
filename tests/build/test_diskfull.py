"""Hardening: builds on a full disk (a 2 MiB tmpfs) as the output directory, as TMPDIR and as
the cache: one clear error line, exit 1, nothing partial left behind.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import acbuild

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "blob").write_bytes(os.urandom(6 << 20))  # does not compress: cannot fit 2 MiB
    (ctx / "Acfile").write_text("BEGIN scratch\nNAME example.com/full\nCOPY blob /blob\n")
    return ctx / "Acfile"


def clean(stderr: str) -> str:
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return stderr


def test_full_output_directory(project: Path, small_disk: Path, tmp_path: Path) -> None:
    r = acbuild("build", project, "-o", small_disk / "full.aci", "--no-cache",
                env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.code == 1
    assert clean(r.stderr).strip().splitlines()[-1] == (
        f"error: cannot write {small_disk / 'full.aci'}: No space left on device")
    assert os.listdir(small_disk) == []


def test_full_tmpdir(project: Path, small_disk: Path, tmp_path: Path) -> None:
    # The blob is only staged (in TMPDIR) when another stage copies from this one: a COPY
    # followed by no RUN leaves it in the context until the image is written.
    project.write_text("BEGIN scratch AS data\nCOPY blob /blob\nBEGIN scratch\n"
                       "NAME example.com/full\nCOPY --from=data /blob /blob\n")
    r = acbuild("build", project, "-o", tmp_path / "out.aci", "--no-cache",
                env={"TMPDIR": str(small_disk), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.code == 1
    assert "No space left on device" in clean(r.stderr)
    assert "COPY --from=" in r.stderr and "Acfile:" in r.stderr
    assert os.listdir(small_disk / f"acbuild-py-{os.geteuid()}") == []
    assert not (tmp_path / "out.aci").exists()


def test_full_cache_directory(project: Path, small_disk: Path, tmp_path: Path) -> None:
    r = acbuild("build", project, "-o", tmp_path / "out.aci", "--cache-dir", small_disk / "c")
    # a cache that cannot be filled must not fail the build, or fail it cleanly
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    if r.code == 0:
        assert (tmp_path / "out.aci").stat().st_size > 6 << 20
        again = acbuild("build", project, "-o", tmp_path / "again.aci",
                        "--cache-dir", small_disk / "c")
        assert again.code == 0 and again.stdout == r.stdout
    else:
        assert r.code == 1 and "No space left on device" in r.stderr
        assert not (tmp_path / "out.aci").exists()
    leftovers = [p for p in (small_disk).rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
