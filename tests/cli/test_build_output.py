"""build's output: checked before step 1, streamed with -o -, the ID in --iidfile."""

from __future__ import annotations

import hashlib
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.support.cli import acbuild

ACFILE = "BEGIN scratch\nNAME example.com/out\nLABEL version=1\n"


def _acfile(tmp_path: Path, text: str = ACFILE) -> Path:
    path = tmp_path / "ctx" / "Acfile"
    path.parent.mkdir()
    path.write_text(text)
    return path


def test_an_output_that_cannot_be_written_fails_before_any_step(tmp_path: Path) -> None:
    acfile = _acfile(tmp_path)
    for output, message in (
        (tmp_path / "missing" / "x.aci", f"{tmp_path / 'missing'} does not exist"),
        (tmp_path, "it is a directory"),
        (Path("/sys/x.aci"), "cannot write /sys/x.aci: Permission denied"),
    ):
        r = acbuild("build", "--progress=plain", acfile, "-o", output)
        assert r.code == 1, r.stderr
        assert message in r.stderr, r.stderr
        assert "[1/" not in r.stderr  # no step ran
    r = acbuild("build", acfile, "-o", tmp_path / "missing" / "x.aci")
    assert "hint: create the directory first (mkdir -p" in r.stderr


def test_dash_streams_the_image_and_puts_the_id_on_stderr_and_in_iidfile(tmp_path: Path) -> None:
    acfile = _acfile(tmp_path)
    file_build = acbuild("build", "-q", acfile, "-o", tmp_path / "file.aci")
    proc = subprocess.run([sys.executable, "-m", "acbuild", "build", "-q", str(acfile), "-o",
                           "-", "--iidfile", str(tmp_path / "iid")], capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (tmp_path / "file.aci").read_bytes()
    assert proc.stderr.decode().strip() == file_build.stdout.strip()
    assert (tmp_path / "iid").read_text() == file_build.stdout.strip()
    assert not (tmp_path / "ctx" / "-").exists() and not Path("-").exists()
    assert hashlib.sha512(proc.stdout).digest()  # bytes, not text


def test_dash_refuses_a_terminal_and_signing(tmp_path: Path) -> None:
    acfile = _acfile(tmp_path, ACFILE + "SIGN nobody@example.com\n")
    r = acbuild("build", acfile, "-o", "-")
    assert r.code == 1
    assert "Acfile:4:1: error: -o - streams the image, and a signature needs a file" in r.stderr

    leader, follower = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "acbuild", "build", str(acfile), "-o", "-"],
                          stdout=follower, stderr=subprocess.PIPE, timeout=60)
    os.close(follower)
    os.close(leader)
    assert proc.returncode == 2
    assert b"would write the image to the terminal" in proc.stderr
