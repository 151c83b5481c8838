"""inspect: one pass gives the image ID, sizes, counts and the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from acbuild.errors import ImageError
from acbuild.image.aci import image_id
from acbuild.image.inspect import file_tree, summarize
from tests.support.hostile import Tar, aci, compress


def test_summarize(tmp_path: Path) -> None:
    t = aci().dir("rootfs/bin").file("rootfs/bin/a", b"x" * 100)
    tar = t.hardlink("rootfs/bin/b", "rootfs/bin/a").symlink("rootfs/sh", "/bin/a").data()
    image = tmp_path / "x.aci"
    image.write_bytes(compress(tar))
    s = summarize(image)
    assert s.image_id == "sha512-" + hashlib.sha512(tar).hexdigest() == image_id(image)
    assert s.compressed_size == image.stat().st_size
    assert s.uncompressed_size == len(tar)
    assert (s.entry_count, s.file_count) == (4, 1)
    assert s.manifest.name == "example.com/test"
    assert s.entries == ()
    assert file_tree(image) == (("/bin/", 0), ("/bin/a", 100), ("/bin/b", 0), ("/sh", 0))


def test_summarize_errors(tmp_path: Path) -> None:
    image = tmp_path / "x.aci"
    image.write_bytes(compress(Tar().dir("rootfs").data()))
    with pytest.raises(ImageError, match="not an ACI: it has no manifest"):
        summarize(image)
    data = compress(aci().file("rootfs/a", bytes(range(256)) * 100).data())
    image.write_bytes(data[:-30])
    with pytest.raises(ImageError, match="archive is truncated"):
        summarize(image)
