"""acbuild.image.basedir: a base directory's entries counted against the limit, whether its
files are left in the source (a stage without RUN: the second pass no longer lists them)
or copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acbuild.errors import ImageError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.basedir import copy_tree
from acbuild.image.tarread import Limits


def _base(tmp_path: Path) -> Path:
    """9 entries: a, a/f1, a/f2, a/b, a/b/f3, a/l (symlink), c, c/f4, top."""
    base = tmp_path / "base"
    (base / "a/b").mkdir(parents=True)
    (base / "c").mkdir()
    for rel in ("a/f1", "a/f2", "a/b/f3", "c/f4", "top"):
        (base / rel).write_text(rel)
    os.symlink("f1", base / "a/l")
    return base


@pytest.mark.parametrize("link", [True, False])
def test_every_entry_counts_against_the_limit(tmp_path: Path, link: bool) -> None:
    base = _base(tmp_path)
    fits = StagedRootfs(root=tmp_path / "fits")
    fits.root.mkdir()
    copy_tree(base, fits, limits=Limits(max_entries=9), link=link)
    assert (fits.lower is not None) == link
    assert os.readlink(fits.root / "a/l") == "f1"
    assert (fits.root / "a/b").is_dir() and (fits.root / "c").is_dir()
    assert (fits.root / "a/f1").exists() != link  # left in the base, or copied
    over = StagedRootfs(root=tmp_path / "over")
    over.root.mkdir()
    with pytest.raises(ImageError) as failed:
        copy_tree(base, over, limits=Limits(max_entries=8), link=link)
    assert failed.value.message == "base directory has more than 8 entries"
