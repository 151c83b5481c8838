"""Tar numbers out of range (PAX and GNU base-256 fields hold any value) are refused with a
one-line ImageError by every reader, through the CLI too, instead of overflowing later."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from acbuild.errors import ImageError
from acbuild.image.tarwrite import TarEntry, encode_headers
from tests.support.cli import acbuild
from tests.support.hostile import MINIMAL_MANIFEST, Tar, aci, compress, write


def pax_image(path: Path, **pax: str) -> Path:
    return write(path, compress(aci().file("rootfs/a", b"x", pax=pax).data()))


def gnu_device_image(path: Path, major: int, minor: int) -> Path:
    t = Tar(fmt=tarfile.GNU_FORMAT)
    t.file("manifest", json.dumps(MINIMAL_MANIFEST).encode()).dir("rootfs")
    return write(path, compress(t.device("rootfs/dev", "chr", major, minor).data()))


CASES = {
    "uid-huge": {"uid": str(10**30)},
    "uid-negative": {"uid": "-5"},
    "gid-2**64": {"gid": str(2**64)},
    "mtime-nan": {"mtime": "nan"},
    "mtime-inf": {"mtime": "inf"},
    "mtime-1e300": {"mtime": "1e300"},
    "mtime-very-negative": {"mtime": str(-10**20)},
    "size-huge": {"size": str(10**30)},
}


# Every case through inspect; every reader through one case (a CLI call costs a second).
@pytest.mark.parametrize(("verb", "case"), [*(("inspect", c) for c in sorted(CASES)),
                                            ("validate", "uid-huge"), ("diff", "mtime-inf")])
def test_out_of_range_pax_numbers_are_one_line_errors(tmp_path: Path, verb: str,
                                                      case: str) -> None:
    image = pax_image(tmp_path / "x.aci", **CASES[case])
    args = [verb, image, image] if verb == "diff" else [verb, image]
    r = acbuild(*args, timeout=60)
    assert r.code in (1, 2), r.stderr  # diff says trouble with 2
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    field = case.split("-")[0]
    assert f"has an out-of-range {field}" in r.stderr


def test_device_numbers_beyond_a_tar_header_are_refused(tmp_path: Path) -> None:
    image = gnu_device_image(tmp_path / "x.aci", 2**40, 1)
    r = acbuild("inspect", image)
    assert r.code == 1
    assert r.stderr == "error: archive entry 'rootfs/dev' has an out-of-range device major: " \
                       f"{2**40}\n"


def test_an_image_with_such_numbers_cannot_be_a_base(tmp_path: Path) -> None:
    pax_image(tmp_path / "base.aci", mtime="nan")
    acfile = tmp_path / "Acfile"
    acfile.write_text("BEGIN ./base.aci\nNAME example.com/x\n")
    r = acbuild("build", acfile, "-o", tmp_path / "x.aci")
    assert r.code == 1, r.stderr
    assert "out-of-range mtime: nan" in r.stderr and "internal error" not in r.stderr


def test_the_largest_valid_numbers_still_read(tmp_path: Path) -> None:
    image = pax_image(tmp_path / "x.aci", uid=str(2**32 - 2), gid="0", mtime="-1.5")
    r = acbuild("inspect", image)
    assert r.code == 0, r.stderr


def test_writing_a_device_number_that_does_not_fit_is_an_image_error() -> None:
    entry = TarEntry(name="dev", kind="chr", mode=0o600, uid=0, gid=0, size=0, mtime=0,
                     devmajor=2**22, devminor=0)
    with pytest.raises(ImageError, match="does not fit in a tar header"):
        encode_headers(entry)
