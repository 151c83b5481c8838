"""validate: actool's checks (compared with the real actool) and the stricter ones."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from acbuild.image.validate import validate_image
from tests.support.hostile import MINIMAL_MANIFEST, Tar, aci, compress

M = MINIMAL_MANIFEST

# name -> (archive, our problems, actool agrees it is invalid / valid)
CASES: dict[str, tuple[bytes, list[str], bool]] = {
    "ok": (aci().file("rootfs/a", b"x").dir("rootfs/d").symlink("rootfs/l", "/etc").data(),
           [], True),
    "dot-prefixed": (Tar().file("./manifest", json.dumps(M).encode()).dir("./rootfs")
                     .file("./rootfs/a").data(), [], True),
    "unknown-field": (aci({**M, "zzz": 1}).data(), [], True),
    "no-rootfs-entry": (aci(rootfs=False).file("rootfs/a").data(),
                        ["image has no rootfs directory entry"], True),
    "no-manifest": (Tar().dir("rootfs").data(), ["image has no manifest"], True),
    "other-top": (aci().file("other").data(), ["entry 'other' is outside rootfs/"], True),
    "dotdot": (aci().file("rootfs/../x").data(), ["entry 'rootfs/../x' is outside rootfs/"], True),
    "duplicate": (aci().file("rootfs/a").file("rootfs/a").data(),
                  ["duplicate entry 'rootfs/a'"], True),
    "manifest-dir": (Tar().dir("manifest").dir("rootfs").data(),
                     ["manifest is not a regular file"], True),
    "rootfs-file": (Tar().file("manifest", json.dumps(M).encode()).file("rootfs").data(),
                    ["rootfs is not a directory"], True),
    "zero-version": (aci({**M, "acVersion": "0.0.0"}).data(),
                     ["manifest: acVersion must not be 0.0.0"], True),
    "bad-json": (aci(b"[1").data(), ["image manifest is not valid JSON: Expecting ',' delimiter: "
                                     "line 1 column 3 (char 2)"], True),
    "absolute-names": (Tar().file("/manifest", json.dumps(M).encode()).dir("rootfs")
                       .file("/rootfs/a").data(),
                       ["archive entry '/manifest' is an absolute name (an ACI's entries are "
                        "'manifest' and 'rootfs/...')",
                        "archive entry '/rootfs/a' is an absolute name (an ACI's entries are "
                        "'manifest' and 'rootfs/...')",
                        "image has no manifest"], True),
    "absolute-hardlink": (aci().file("rootfs/a").hardlink("rootfs/h", "/rootfs/a").data(),
                          ["archive hardlink target '/rootfs/a' is an absolute name (an ACI's "
                           "entries are 'manifest' and 'rootfs/...')"], False),
    # stricter than actool, which lets these through
    "rootfsX": (aci().file("rootfsX").data(), ["entry 'rootfsX' is outside rootfs/"], False),
    "dangling-hardlink": (aci().hardlink("rootfs/h", "rootfs/none").data(),
                          ["hardlink 'rootfs/h' points to 'rootfs/none', which is not an earlier "
                           "file in rootfs/"], False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cases(tmp_path: Path, case: str) -> None:
    data, expected, actool_agrees = CASES[case]
    image = tmp_path / "x.aci"
    image.write_bytes(compress(data))
    assert validate_image(image) == expected
    if shutil.which("actool"):
        ok = subprocess.run(["actool", "validate", "--type=appimage", str(image)],
                            capture_output=True).returncode == 0
        assert ok == (not expected) if actool_agrees else ok


def test_bad_manifest_values(tmp_path: Path) -> None:
    bad = {**M, "name": "Bad Name", "dependencies": [{"imageName": "x", "imageID": "sha256-00"}]}
    image = tmp_path / "x.aci"
    image.write_bytes(compress(aci(bad).data()))
    problems = validate_image(image)
    assert problems[0].startswith("manifest: name 'Bad Name' is not an ACIdentifier")
    assert len(problems) == 2 and "sha256-00" in problems[1]


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "none"])
def test_every_compression(tmp_path: Path, kind: str) -> None:
    image = tmp_path / "x.aci"
    image.write_bytes(compress(aci().data(), kind))
    assert validate_image(image) == []


def test_truncated_and_corrupt(tmp_path: Path) -> None:
    data = compress(aci().file("rootfs/big", bytes(range(256)) * 400).data())
    image = tmp_path / "x.aci"
    image.write_bytes(data[: len(data) // 2])
    assert validate_image(image) == ["archive is truncated"]
    broken = bytearray(data)
    broken[-8] ^= 1  # the gzip CRC, only seen when the stream is read to its end
    image.write_bytes(bytes(broken))
    assert validate_image(image)[-1].startswith("corrupt gzip archive: CRC check failed")


def test_not_images(tmp_path: Path) -> None:
    bare = tmp_path / "manifest.json"
    bare.write_text(json.dumps(M))
    assert validate_image(bare) == ["not a tar archive, nor gzip, bzip2 or xz compressed"]
    # the CLI puts the image's name before each problem: not the message again
    assert validate_image(tmp_path / "missing.aci")[0] == "no such image"
    assert validate_image(tmp_path) == ["cannot read: Is a directory"]


def test_many_problems_are_summarised(tmp_path: Path) -> None:
    t = aci()
    for i in range(25):
        t.file(f"x{i}")
    image = tmp_path / "x.aci"
    image.write_bytes(t.data())
    problems = validate_image(image)
    assert len(problems) == 21
    assert problems[-1] == "... and 5 more entries outside rootfs/"
