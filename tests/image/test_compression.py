"""Tests for compression: sniffing, the parallel gzip writer, and streaming readers."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from acbuild.errors import ImageError
from acbuild.image.compression import (
    COMPRESSIONS,
    GZIP_BLOCK,
    open_compressor,
    open_decompressed,
    sniff,
)


def _text(size: int, seed: int = 7) -> bytes:
    """Compressible, non-repetitive text, like source files."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(3000)]
    out = bytearray()
    while len(out) < size:
        out += " ".join(rng.choices(vocab, k=500)).encode() + b"\n"
    return bytes(out[:size])


def _compress(kind: str, data: bytes, *, threads: int | None = None, step: int = 0) -> bytes:
    out = io.BytesIO()
    writer = (open_compressor(kind, out, threads=threads) if kind == "gzip"
              else open_compressor(kind, out))
    if step:
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
    else:
        writer.write(data)
    writer.close()
    assert not out.closed  # close() finishes the stream, not the caller's file
    return out.getvalue()


def _tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"world"))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x1f\x8b\x08rest", "gzip"),
        (b"BZh91AY", "bzip2"),
        (b"\xfd7zXZ\x00\x00", "xz"),
        (b"\x28\xb5\x2f\xfd\x00", "zstd"),
        (_tar_bytes()[:512], "tar"),
        (b"PK\x03\x04", "unknown"),
        (b"", "unknown"),
    ],
)
def test_sniff(head: bytes, kind: str) -> None:
    assert sniff(head) == kind


def test_gzip_header_is_fixed_and_stream_is_valid(tmp_path: Path) -> None:
    data = _text(3 * GZIP_BLOCK + 12345)
    raw = _compress("gzip", data, threads=2)
    # magic, deflate, no flags (no name), mtime 0, xfl 0, OS 255
    assert raw[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert struct.unpack("<II", raw[-8:]) == (zlib.crc32(data), len(data))
    assert gzip.decompress(raw) == data
    path = tmp_path / "x.gz"
    path.write_bytes(raw)
    subprocess.run(["gzip", "-t", str(path)], check=True)
    pigz = subprocess.run(["pigz", "-dc", str(path)], check=True, capture_output=True)
    assert pigz.stdout == data


def test_gzip_bytes_do_not_depend_on_threads_or_write_sizes() -> None:
    data = _text(2 * GZIP_BLOCK + 777, seed=3)
    one = _compress("gzip", data, threads=1)
    assert _compress("gzip", data, threads=3) == one
    assert _compress("gzip", data, threads=2, step=65_537) == one
    assert _compress("gzip", data, threads=4, step=GZIP_BLOCK) == one


def test_gzip_ratio_close_to_gzip_6() -> None:
    data = _text(4 * GZIP_BLOCK, seed=11)
    ours = len(_compress("gzip", data))
    reference = len(gzip.compress(data, compresslevel=6, mtime=0))
    assert ours <= reference * 1.05


def test_empty_gzip_stream() -> None:
    raw = _compress("gzip", b"")
    assert gzip.decompress(raw) == b""


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_round_trip_through_open_decompressed(kind: str) -> None:
    data = _tar_bytes() + _text(200_000)
    raw = _compress(kind, data)
    assert sniff(raw[:512]) == ("tar" if kind == "none" else kind)
    with open_decompressed(io.BytesIO(raw)) as f:
        assert f.read() == data


def test_other_compressors_are_standard() -> None:
    data = _text(100_000)
    assert lzma.decompress(_compress("xz", data)) == data
    assert bz2.decompress(_compress("bzip2", data)) == data
    assert _compress("none", data) == data


def test_reads_from_a_pipe_and_multi_member_gzip() -> None:
    data = _tar_bytes()
    raw = gzip.compress(data[:700]) + gzip.compress(data[700:])
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as w:
        w.write(raw)
    with os.fdopen(read_fd, "rb") as r, open_decompressed(r) as f:
        assert f.read() == data


def test_gzip_crc_error_is_an_image_error() -> None:
    raw = bytearray(gzip.compress(_tar_bytes()))
    raw[-8] ^= 0xFF  # damage the stored CRC
    with pytest.raises(ImageError) as info, open_decompressed(io.BytesIO(bytes(raw))) as f:
        f.read()
    assert info.value.message.startswith("corrupt gzip archive: CRC check failed")


def test_truncated_xz_is_an_image_error() -> None:
    raw = lzma.compress(_text(100_000))[:-40]
    with pytest.raises(ImageError) as info, open_decompressed(io.BytesIO(raw)) as f:
        f.read()
    assert info.value.message == (
        "corrupt xz archive: Compressed file ended before the end-of-stream marker was reached"
    )


def test_unknown_and_empty_inputs() -> None:
    with pytest.raises(ImageError) as info:
        open_decompressed(io.BytesIO(b"PK\x03\x04" + b"\0" * 600))
    assert info.value.message == "not a tar archive, nor gzip, bzip2 or xz compressed"
    with pytest.raises(ImageError) as info:
        open_decompressed(io.BytesIO(b""))
    assert info.value.message == "archive is empty"


def test_zstd_needs_the_optional_package() -> None:
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        with pytest.raises(ImageError) as info:
            open_decompressed(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 20))
        assert info.value.message == "archive is zstd-compressed, which AppC does not allow"
        return
    raw = zstandard.ZstdCompressor().compress(_tar_bytes())
    with open_decompressed(io.BytesIO(raw)) as f:
        assert f.read() == _tar_bytes()


def test_unknown_compression_name() -> None:
    with pytest.raises(ValueError, match="unknown compression 'lz4'"):
        open_compressor("lz4", io.BytesIO())
