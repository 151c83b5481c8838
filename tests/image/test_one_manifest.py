"""Class 12 of the security issue: an ACI with more than one ``manifest`` entry is refused
by every reader (before, `manifest`/`run` read the first and `inspect`/builds the last, so
what was shown was not what ran)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acbuild.errors import ImageError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import read_manifest, unpack_base, unpack_image
from acbuild.image.diff import diff_images
from acbuild.image.inspect import summarize
from acbuild.image.validate import validate_image
from tests.support.cli import acbuild
from tests.support.hostile import MINIMAL_MANIFEST, Tar, write

EVIL = {**MINIMAL_MANIFEST, "name": "example.com/evil",
        "app": {"exec": ["/bin/sh", "-c", "echo evil"], "user": "0", "group": "0"}}
SPELLINGS = ["manifest", "./manifest", "rootfs/../manifest", "/manifest", "dir"]


def two_manifests(tmp_path: Path, second: str, *, evil_first: bool = False) -> Path:
    first, other = (EVIL, MINIMAL_MANIFEST) if evil_first else (MINIMAL_MANIFEST, EVIL)
    t = Tar().file("manifest", json.dumps(first).encode()).dir("rootfs")
    t.file("rootfs/hello", b"hi\n")
    if second == "dir":
        t.dir("manifest")
    else:
        t.file(second, json.dumps(other).encode())
    return write(tmp_path / "two.aci", t.data())


READERS: dict[str, Callable[[Path, Path], Any]] = {
    "read_manifest": lambda p, _t: read_manifest(p),
    "summarize": lambda p, _t: summarize(p),
    "diff": lambda p, t: diff_images(p, p),
    "unpack_image": lambda p, t: unpack_image(p, StagedRootfs(root=_root(t))),
    "unpack_base": lambda p, t: unpack_base(p, StagedRootfs(root=_root(t))),
}


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize("second", SPELLINGS)
@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_refuses_a_second_manifest(tmp_path: Path, reader: str,
                                                second: str) -> None:
    image = two_manifests(tmp_path, second)
    # An absolute second spelling is refused one rule earlier: no ACI entry is absolute.
    refusal = "is an absolute name" if second.startswith("/") else "more than one manifest entry"
    with pytest.raises(ImageError, match=refusal):
        READERS[reader](image, tmp_path)


def test_validate_reports_it(tmp_path: Path) -> None:
    problems = validate_image(two_manifests(tmp_path, "./manifest"))
    assert "the image has more than one manifest entry" in problems


@pytest.mark.parametrize("verb", ["manifest", "inspect", "validate", "verify", "fetch"])
def test_cli_verbs_refuse_it(tmp_path: Path, verb: str) -> None:
    image = two_manifests(tmp_path, "manifest", evil_first=verb == "inspect")
    args: list[str | Path] = [verb, image]
    if verb == "verify":
        image.with_name(image.name + ".asc").write_text("not a signature")
    if verb == "fetch":
        args += ["--store", tmp_path / "store", "--insecure-skip-verify"]
    r = acbuild(*args, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.code == 1, (r.stdout, r.stderr)
    assert "more than one manifest entry" in r.stderr
    assert "evil" not in r.stdout and "Traceback" not in r.stderr


def test_build_refuses_such_a_base(tmp_path: Path) -> None:
    image = two_manifests(tmp_path, "rootfs/../manifest")
    (tmp_path / "Acfile").write_text("BEGIN ./two.aci\nNAME example.com/app\n")
    r = acbuild("build", "--no-cache", tmp_path / "Acfile", "-o", tmp_path / "out.aci",
                cwd=tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.code == 1, r.stderr
    assert f"{image.name}: the image has more than one manifest entry" in r.stderr
    assert not (tmp_path / "out.aci").exists()
