"""Tests for atomic output: rename on success, nothing changed on failure, umask modes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.errors import AcbuildError
from acbuild.fs.atomic import atomic_write


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_success_renames_into_place_with_the_umask_mode(tmp_path: Path, umask_027: None) -> None:
    target = tmp_path / "out.aci"
    with atomic_write(target) as f:
        f.write(b"image")
        # While writing, the target does not exist yet; only a hidden temp file does.
        assert not target.exists()
        assert len(list(tmp_path.iterdir())) == 1
    assert target.read_bytes() == b"image"
    assert _mode(target) == 0o640  # 0666 & ~027, as open() would give, not mkstemp's 0600
    assert list(tmp_path.iterdir()) == [target]


def test_explicit_mode(tmp_path: Path, umask_027: None) -> None:
    target = tmp_path / "out.asc"
    with atomic_write(target, mode=0o644) as f:
        f.write(b"sig")
    assert _mode(target) == 0o644


def test_a_private_mode_holds_from_the_creation_of_the_temporary_file(tmp_path: Path) -> None:
    """A secret (registry credentials) is never readable by others, not even before the
    commit: another user who opens the temporary file while it is written gets nothing."""
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "config.json", mode=0o600) as f:
            assert stat.S_IMODE(os.fstat(f.fileno()).st_mode) == 0o600
            (temp,) = tmp_path.iterdir()
            assert _mode(temp) == 0o600
            f.write(b"secret")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "config.json") == 0o600


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.aci"
    target.write_bytes(b"old")
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_keeps_previous_output_and_leaves_no_temp(
    tmp_path: Path, exc: BaseException
) -> None:
    target = tmp_path / "out.aci"
    target.write_bytes(b"previous")
    with pytest.raises(type(exc)), atomic_write(target) as f:
        f.write(b"partial" * 1000)
        raise exc
    assert target.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [target]


def test_failure_without_previous_output_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="disk on fire"), atomic_write(tmp_path / "x") as f:
        f.write(b"partial")
        raise OSError("disk on fire")  # the body's own errors pass through unchanged
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "out.aci"
    with pytest.raises(AcbuildError) as info, atomic_write(target):
        pass
    assert info.value.message == f"cannot write {target}: No such file or directory"
