"""Tests for the tar writer: headers read back by Python's tarfile and GNU tar."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acbuild.errors import ImageError
from acbuild.image.tarwrite import CHUNK, TarEntry, TarWriter, _split_name, encode_headers


def _write(*items: tuple[TarEntry, bytes | None]) -> bytes:
    out = io.BytesIO()
    writer = TarWriter(out)
    for entry, data in items:
        writer.add(entry, None if data is None else io.BytesIO(data))
    writer.close()
    assert writer.offset == len(out.getvalue())
    return out.getvalue()


def _members(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return tar.getmembers()


def _entry(name: str, kind: str = "file", **kw: object) -> TarEntry:
    fields: dict[str, object] = {"mode": 0o644, "uid": 0, "gid": 0, "mtime": 1000}
    fields.update(kw)
    return TarEntry(name=name, kind=kind, **fields)  # type: ignore[arg-type]


def test_every_kind_reads_back_with_its_fields() -> None:
    raw = _write(
        (_entry("d", "dir", mode=0o1755, uid=12, gid=34, mtime=99), None),
        (_entry("d/f", size=5, mode=0o4755), b"hello"),
        (_entry("d/l", "symlink", linkname="../etc/x", mode=0o777), None),
        (_entry("d/h", "hardlink", linkname="d/f"), None),
        (_entry("d/c", "chr", devmajor=1, devminor=3, mode=0o666), None),
        (_entry("d/b", "blk", devmajor=8, devminor=1, mode=0o660), None),
        (_entry("d/p", "fifo", mode=0o600), None),
    )
    assert len(raw) % 512 == 0
    assert raw.endswith(b"\0" * 1024)
    m = {t.name: t for t in _members(raw)}
    assert list(m) == ["d", "d/f", "d/l", "d/h", "d/c", "d/b", "d/p"]
    assert m["d"].isdir() and m["d"].mode == 0o1755 and (m["d"].uid, m["d"].gid) == (12, 34)
    assert m["d"].mtime == 99 and m["d"].uname == "" and m["d"].gname == ""
    assert m["d/f"].isfile() and m["d/f"].size == 5 and m["d/f"].mode == 0o4755
    assert m["d/l"].issym() and m["d/l"].linkname == "../etc/x"
    assert m["d/h"].islnk() and m["d/h"].linkname == "d/f"
    assert m["d/c"].ischr() and (m["d/c"].devmajor, m["d/c"].devminor) == (1, 3)
    assert m["d/b"].isblk() and (m["d/b"].devmajor, m["d/b"].devminor) == (8, 1)
    assert m["d/p"].isfifo()
    assert raw[:2] == b"d/"  # directories carry the conventional trailing slash


def test_names_up_to_255_bytes_use_the_ustar_prefix_not_pax() -> None:
    name = "a" * 70 + "/" + "b" * 80 + "/" + "c" * 99  # 251 bytes: prefix 151, name 99
    raw = _write((_entry(name, size=1), b"z"))
    assert raw[156:157] == b"0"  # the first header is the file, no PAX header before it
    assert [t.name for t in _members(raw)] == [name]


def test_long_names_and_link_targets_use_pax_and_read_back(tmp_path: Path) -> None:
    long_name = "/".join(["segment-" + "n" * 50] * 6)  # > 255 bytes
    single = "f" * 180  # no slash to split at
    target = "/" + "/".join(["t" * 40] * 8)  # > 255 bytes
    raw = _write(
        (_entry(long_name, size=3), b"abc"),
        (_entry(single, size=0), b""),
        (_entry("ln", "symlink", linkname=target), None),
        (_entry("hl", "hardlink", linkname=long_name), None),
    )
    m = _members(raw)
    assert [t.name for t in m] == [long_name, single, "ln", "hl"]
    assert m[2].linkname == target and m[3].linkname == long_name
    archive = tmp_path / "a.tar"
    archive.write_bytes(raw)
    listing = subprocess.run(
        ["tar", "-tf", str(archive)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert listing == [long_name, single, "ln", "hl"]
    verbose = subprocess.run(
        ["tar", "-tvf", str(archive)], check=True, capture_output=True, text=True
    ).stdout
    assert f"ln -> {target}" in verbose


def test_pax_header_is_reproducible() -> None:
    entry = _entry("p" * 300, size=0)
    headers = encode_headers(entry)
    assert headers == encode_headers(entry)
    assert headers.startswith(b"././@PaxHeader\0")
    assert b"path=" + b"p" * 300 + b"\n" in headers


def test_big_ids_go_to_pax() -> None:
    raw = _write((_entry("f", uid=3_000_000, gid=4_000_000), b""))
    (member,) = _members(raw)
    assert (member.uid, member.gid) == (3_000_000, 4_000_000)
    assert member.pax_headers["uid"] == "3000000"


def test_xattrs_are_sorted_pax_records() -> None:
    entry = _entry("f", xattrs=(("user.b", b"2"), ("security.capability", b"\x01\x00\xff"),
                                ("user.a", b"one")))
    headers = encode_headers(entry)
    assert headers.index(b"SCHILY.xattr.security") < headers.index(b"SCHILY.xattr.user.a")
    assert headers.index(b"SCHILY.xattr.user.a") < headers.index(b"SCHILY.xattr.user.b")
    (member,) = _members(_write((entry, b"")))
    assert member.pax_headers["SCHILY.xattr.user.a"] == "one"
    assert member.pax_headers["SCHILY.xattr.user.b"] == "2"


def test_non_utf8_name_kept_byte_for_byte() -> None:
    name = (b"rootfs/" + b"\xff" * 120).decode("utf-8", "surrogateescape")
    headers = encode_headers(_entry(name))
    assert b"hdrcharset=BINARY" in headers
    assert b"path=rootfs/" + b"\xff" * 120 + b"\n" in headers


def test_data_larger_than_a_chunk_streams_across_blocks() -> None:
    data = bytes(range(256)) * ((CHUNK * 2 + 1000) // 256)
    blocks: list[int] = []

    class Sink:
        def __init__(self) -> None:
            self.buf = bytearray()

        def write(self, b: bytes | bytearray | memoryview) -> int:
            blocks.append(len(b))
            self.buf += b
            return len(b)

    sink = Sink()
    writer = TarWriter(sink)
    writer.add(_entry("big", size=len(data)), io.BytesIO(data))
    writer.close()
    assert blocks[:2] == [CHUNK, CHUNK]  # handed on in whole chunks
    with tarfile.open(fileobj=io.BytesIO(bytes(sink.buf)), mode="r:") as tar:
        member = tar.getmember("big")
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == data


def test_small_files_given_whole_are_the_stream_add_writes() -> None:
    """add_bytes puts a file's header and data straight into the buffer and leaves the
    padding to the buffer's zeros; across chunk boundaries, after a file that was streamed
    and with sizes on and off a block, the bytes are those of add()."""
    items = [(_entry(f"d/f{i:05}", size=size), bytes([i % 251 + 1]) * size)
             for i, size in enumerate([0, 1, 511, 512, 513, 1024, 3000] * 400)]
    items.insert(700, (_entry("big", size=CHUNK + 7), b"\x07" * (CHUNK + 7)))
    out = io.BytesIO()
    writer = TarWriter(out)
    for entry, data in items:
        writer.add_bytes(entry, data)
    writer.close()
    assert len(out.getvalue()) > 2 * CHUNK
    assert out.getvalue() == _write(*items)


def test_short_data_is_an_error() -> None:
    writer = TarWriter(io.BytesIO())
    with pytest.raises(ImageError) as info:
        writer.add(_entry("f", size=10), io.BytesIO(b"abc"))
    assert info.value.message == (
        "f: data ended after 3 of 10 bytes (file changed while archiving?)"
    )


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown tar entry kind 'socket'"):
        encode_headers(_entry("s", "socket"))


@given(st.lists(st.text("ab/", min_size=1, max_size=40), min_size=1, max_size=12))
def test_split_name_respects_ustar_limits(parts: list[str]) -> None:
    name = "/".join(parts).encode()
    split = _split_name(name)
    if split is None:
        return
    prefix, rest = split
    assert len(prefix) <= 155 and 0 < len(rest) <= 100
    assert (prefix + b"/" + rest if prefix else rest) == name


_KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}


@given(name=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="/"),
                    min_size=1, max_size=30),
       kind=st.sampled_from(sorted(_KINDS)), mode=st.integers(0, 0o7777),
       ids=st.integers(0, 0o7777777), size=st.integers(0, 0o77777777777),
       mtime=st.integers(0, 0o77777777777), dev=st.integers(0, 0o7777777))
def test_plain_header_is_the_ustar_header_tarfile_writes(
        name: str, kind: str, mode: int, ids: int, size: int, mtime: int, dev: int) -> None:
    """The one-header fast path gives byte for byte what a reference ustar encoder does."""
    entry = TarEntry(name=f"rootfs/{name}", kind=kind, mode=mode, uid=ids, gid=ids,
                     mtime=mtime, size=size if kind == "file" else 0,
                     linkname="t/" + name if kind in ("symlink", "hardlink") else "",
                     devmajor=dev if kind == "chr" else 0, devminor=dev if kind == "chr" else 0)
    info = tarfile.TarInfo(entry.name)
    info.type, info.mode, info.uid, info.gid = _KINDS[kind], mode, ids, ids
    info.size, info.mtime, info.linkname = entry.size, mtime, entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    info.uname = info.gname = ""
    reference = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    if len(reference) != 512:
        return  # tarfile split a long UTF-8 name into its prefix field: not this path
    ours = encode_headers(entry)
    # tarfile leaves the device fields of some kinds empty where we write zeros; with
    # those fields as ours, the checksum is recomputed as POSIX defines it.
    expected = bytearray(reference)
    expected[329:345] = b"%07o\0%07o\0" % (entry.devmajor, entry.devminor)
    expected[148:156] = b" " * 8
    expected[148:156] = b"%06o\0 " % sum(expected)
    assert ours == bytes(expected)
