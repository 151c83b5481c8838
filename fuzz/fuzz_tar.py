"""Fuzzing (atheris): the tar reader behind ACI bases and validate, on any bytes.

The input is an archive (any compression); it is validated and unpacked into a fresh
directory. Anything but ImageError is a crash; run as described in fuzz/README.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from acbuild.build.build import remove_tree
    from acbuild.errors import AcbuildError
    from acbuild.fs.staging import StagedRootfs
    from acbuild.image.aci import unpack_base
    from acbuild.image.tarread import Limits
    from acbuild.image.validate import validate_image

# Small limits, so a bomb among the inputs costs little and is still found.
LIMITS = Limits(max_total_bytes=64 << 20, max_entries=10_000)


def test_one_input(data: bytes) -> None:
    work = Path(tempfile.mkdtemp(prefix="fuzz-tar-"))
    try:
        archive = work / "input.aci"
        archive.write_bytes(data)
        validate_image(archive, limits=LIMITS)
        (work / "rootfs").mkdir()
        try:
            unpack_base(archive, StagedRootfs(root=work / "rootfs"), limits=LIMITS)
        except AcbuildError as e:
            e.render()
    finally:
        remove_tree(work)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
