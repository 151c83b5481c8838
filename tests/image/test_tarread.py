"""Tests for image/tarread: names below the root, prefixes, limits, the end-of-archive check."""

from __future__ import annotations

import io
import tarfile

import pytest

from acbuild.errors import ImageError
from acbuild.image.tarread import Limits, TarSource, clean_name, members, strip_prefix


@pytest.mark.parametrize(
    ("unsafe", "expected"),
    [("/etc//passwd", "etc/passwd"), ("./a/./b/", "a/b"), ("a/../b", "b"), ("/", ""), (".", "")],
)
def test_clean_name(unsafe: str, expected: str) -> None:
    assert clean_name(unsafe) == expected


def test_clean_name_rejects_climbing_out() -> None:
    with pytest.raises(ImageError) as info:
        clean_name("a/../../etc")
    assert info.value.message == "archive entry 'a/../../etc' points outside the image"


@pytest.mark.parametrize(
    ("name", "prefix", "expected"),
    [
        ("rootfs/a", "rootfs/", "a"),
        ("rootfs", "rootfs/", ""),
        ("rootfsx", "rootfs/", None),
        ("manifest", "rootfs/", None),
        ("a", "", "a"),
    ],
)
def test_strip_prefix(name: str, prefix: str, expected: str | None) -> None:
    assert strip_prefix(name, prefix) == expected


def _tar(*names: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in names:
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    return out.getvalue()


def test_members_in_order_and_counted() -> None:
    source = TarSource(io.BytesIO(_tar("a", "b")))
    assert [m.name for m, _ in members(source, Limits())] == ["a", "b"]
    assert source.total == len(_tar("a", "b"))


def test_members_enforce_the_entry_limit() -> None:
    with pytest.raises(ImageError) as info:
        list(members(TarSource(io.BytesIO(_tar("a", "b"))), Limits(max_entries=1)))
    assert info.value.message == "archive has more than 1 entries"


def test_members_see_a_cut_archive() -> None:
    with pytest.raises(ImageError) as info:
        list(members(TarSource(io.BytesIO(_tar("a")[:512])), Limits()))
    assert info.value.message == "archive is truncated"
