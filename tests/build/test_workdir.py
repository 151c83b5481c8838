"""WORKDIR makes its directory in the image, as Docker's does: rkt refuses to start an app
whose working directory is missing, and `acbuild-py run` no longer hides that by making it."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from acbuild.sandbox.sandbox import sandbox_available
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild
from tests.support.hostile import aci, write

_reason = sandbox_available() if busybox_available() else "busybox-static is not installed"


def _members(image: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(image) as tar:
        return {m.name: m for m in tar}


def test_workdir_directory_is_in_the_image_deterministically(hello_context: Path,
                                                               tmp_path: Path) -> None:
    (hello_context / "Acfile").write_text(
        "BEGIN scratch\nNAME example.com/wd\nCOPY hello /bin/hello\nWORKDIR /srv/app/data\n"
        "WORKDIR /bin\nEXEC /bin/hello\n")
    out = tmp_path / "wd.aci"
    r = acbuild("build", hello_context / "Acfile", "-o", out)
    assert r.code == 0, r.stderr
    found = _members(out)
    for name in ("rootfs/srv", "rootfs/srv/app", "rootfs/srv/app/data"):
        m = found[name]
        assert (m.isdir(), m.mode & 0o7777, m.uid, m.gid) == (True, 0o755, 0, 0), name
    # An existing directory is left as it is (COPY made /bin; still one entry).
    assert found["rootfs/bin"].isdir()
    again = tmp_path / "again.aci"
    assert acbuild("build", "--no-cache", hello_context / "Acfile", "-o", again).code == 0
    assert out.read_bytes() == again.read_bytes()
    # The cache replays it: a cached build gives the same bytes.
    assert acbuild("build", hello_context / "Acfile", "-o", tmp_path / "c.aci").code == 0
    assert (tmp_path / "c.aci").read_bytes() == out.read_bytes()


def test_workdir_through_a_file_is_an_error_at_the_line(hello_context: Path,
                                                         tmp_path: Path) -> None:
    (hello_context / "Acfile").write_text(
        "BEGIN scratch\nNAME example.com/wd\nCOPY hello /bin/hello\nWORKDIR /bin/hello/x\n")
    r = acbuild("build", hello_context / "Acfile", "-o", tmp_path / "x.aci")
    assert r.code != 0 and "Traceback" not in r.stderr
    assert ":4:1: error:" in r.stderr, r.stderr


@pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}")
def test_run_refuses_a_missing_working_directory(tmp_path: Path) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    (tmp_path / "Acfile").write_text(f"BEGIN {rootfs}\nNAME example.com/bb\nEXEC /bin/sh\n")
    base = tmp_path / "bb.aci"
    assert acbuild("build", "--no-cache", tmp_path / "Acfile", "-o", base).code == 0
    # An image made elsewhere, naming a working directory it does not have.
    with tarfile.open(base) as tar:
        manifest = json.load(tar.extractfile("manifest"))  # type: ignore[arg-type]
        manifest["app"] = {"exec": ["/bin/pwd"], "user": "0", "group": "0",
                           "workingDirectory": "/nowhere"}
        t = aci(manifest, rootfs=False)
        for m in tar:
            if m.name != "manifest":
                t._tar.addfile(m, tar.extractfile(m) if m.isreg() else None)
    image = write(tmp_path / "bad.aci", t.data())
    r = acbuild("run", "--no-stdin", image, env={"XDG_CACHE_HOME": str(tmp_path / "c")})
    assert r.code != 0 and "Traceback" not in r.stderr
    assert "working directory '/nowhere' does not exist in the image" in r.stderr
