"""Opening below a directory descriptor without following symlinks: openat2 and the
per-component fallback must refuse the same things."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.fs import beneath
from acbuild.fs.beneath import ESCAPES, open_beneath, parent_beneath


@pytest.fixture(params=["openat2", "per-component"])
def root(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    if request.param == "per-component":
        monkeypatch.setattr(beneath, "_openat2", lambda *a: None)
    (tmp_path / "root" / "d" / "e").mkdir(parents=True)
    (tmp_path / "root" / "d" / "e" / "f").write_text("inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("outside")
    (tmp_path / "root" / "up").symlink_to(tmp_path / "outside")
    (tmp_path / "root" / "d" / "rel").symlink_to("e")
    (tmp_path / "root" / "d" / "flink").symlink_to("e/f")
    fd = os.open(tmp_path / "root", os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_a_plain_path_opens(root: int) -> None:
    fd = open_beneath(root, "d/e/f", os.O_RDONLY)
    with os.fdopen(fd) as f:
        assert f.read() == "inside"


@pytest.mark.parametrize("rel", ["up/f", "d/rel/f", "d/flink", "up"])
def test_no_symlink_is_followed_anywhere(root: int, rel: str) -> None:
    with pytest.raises(OSError) as e:
        os.close(open_beneath(root, rel, os.O_RDONLY))
    assert e.value.errno in ESCAPES


def test_a_file_in_the_middle_is_not_a_directory(root: int) -> None:
    with pytest.raises(OSError) as e:
        os.close(open_beneath(root, "d/e/f/g", os.O_RDONLY))
    assert e.value.errno == errno.ENOTDIR


@pytest.mark.parametrize("rel", ["../x", "d/../../x", "/etc/passwd"])
def test_climbing_paths_are_refused_before_any_open(root: int, rel: str) -> None:
    with pytest.raises(ValueError):
        open_beneath(root, rel, os.O_RDONLY)


def test_parent_beneath_gives_the_directory_and_the_name(root: int) -> None:
    parent, name = parent_beneath(root, "d/flink")
    try:
        assert name == "flink"
        assert os.readlink(name, dir_fd=parent) == "e/f"
    finally:
        os.close(parent)
