"""The throwaway GnuPG home (trust.gpg.temporary_keyring): in this user's own temporary
directory, removed when done, and what a killed process (SIGKILL) left is removed by the
next one, never a live one's."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.fs.private import user_temp_root
from acbuild.trust.gpg import temporary_keyring

_HOLD = """
import sys, time
from acbuild.trust.gpg import temporary_keyring
with temporary_keyring() as gpg:
    print(gpg.gnupghome, flush=True)
    time.sleep(120)
"""


@pytest.fixture
def tmpdir_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    yield tmp_path
    tempfile.tempdir = None


def _holding() -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2])
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def test_a_killed_process_s_home_is_removed_by_the_next_and_a_live_one_s_kept(
        tmpdir_of_its_own: Path) -> None:
    live, live_home = _holding()
    try:
        killed, killed_home = _holding()
        _end(killed)
        assert killed_home.is_dir()  # the premise: SIGKILL left it
        assert killed_home.parent == user_temp_root()
        with temporary_keyring() as gpg:
            home = Path(gpg.gnupghome)
            assert home.is_dir() and home.stat().st_mode & 0o777 == 0o700
        assert not home.exists()
        assert not killed_home.exists()
        assert live_home.is_dir()
    finally:
        _end(live)
