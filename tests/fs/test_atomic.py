"""Tests for atomic output: rename on success, nothing changed on failure, umask modes."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.errors import AcbuildError
from acbuild.fs import atomic
from acbuild.fs.atomic import atomic_write, atomic_write_at, check_writable


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


def _signal_while_held(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    """SIGINT arrives the moment the temporary entry is locked as in use: after it exists,
    before any ``try`` of the writer's could own it, were it not made with signals held."""
    real = getattr(module, name)

    def interrupted(*args: object) -> object:
        result = real(*args)
        os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(module, name, interrupted)


def test_an_interrupt_while_the_temporary_file_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _signal_while_held(monkeypatch, atomic, "hold")
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "out.aci") as f:
        f.write(b"never")
    with pytest.raises(KeyboardInterrupt):
        check_writable(tmp_path / "out.aci")
    assert os.listdir(tmp_path) == []


def test_an_interrupt_while_the_temporary_file_is_made_at_a_directory_fd_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _signal_while_held(monkeypatch, fcntl, "flock")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(KeyboardInterrupt), atomic_write_at(fd, "stats") as f:
            f.write(b"never")
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []
