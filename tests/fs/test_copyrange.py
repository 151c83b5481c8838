"""copy_range: in the kernel or through a buffer, never more than asked, each piece told."""

from __future__ import annotations

import os
from pathlib import Path

from acbuild.fs.copyrange import copy_range


def _copy(src_path: Path, dst_path: Path, size: int) -> list[int]:
    pieces: list[int] = []
    src = os.open(src_path, os.O_RDONLY)
    dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copy_range(src, dst, size, pieces.append)
    finally:
        os.close(src)
        os.close(dst)
    return pieces


def test_copies_no_more_than_asked(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "src").write_bytes(data)
    pieces = _copy(tmp_path / "src", tmp_path / "dst", (2 << 20) + 5)
    assert (tmp_path / "dst").read_bytes() == data[:(2 << 20) + 5]
    assert sum(pieces) == (2 << 20) + 5


def test_stops_where_the_source_ends(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"short")
    assert sum(_copy(tmp_path / "src", tmp_path / "dst", 1 << 20)) == 5
    assert (tmp_path / "dst").read_bytes() == b"short"


def test_a_pipe_is_copied_through_the_buffer(tmp_path: Path) -> None:
    # copy_file_range refuses a pipe (EINVAL): the buffered path copies it
    r, w = os.pipe()
    os.write(w, b"x" * 5000)
    os.close(w)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o644)
    pieces: list[int] = []
    try:
        copy_range(r, dst, 4096, pieces.append)
    finally:
        os.close(r)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == b"x" * 4096 and sum(pieces) == 4096
