"""Issue 18: what a RUN step does to /tmp (and any path) stays in the image, as in Docker.

The sandbox used to mount a tmpfs on /tmp for RUN steps and remove an empty /tmp it had
made: `mkdir -p /tmp && chmod 1777 /tmp` left no /tmp in the image.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from acbuild.sandbox.sandbox import sandbox_available
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild

_reason = sandbox_available() if busybox_available() else "busybox-static is not installed"
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}")


def build(tmp_path: Path, body: str, base: Path) -> dict[str, tarfile.TarInfo]:
    (tmp_path / "Acfile").write_text(f"BEGIN {base}\nNAME example.com/paths\n{body}")
    out = tmp_path / "x.aci"
    r = acbuild("build", "--no-cache", tmp_path / "Acfile", "-o", out)
    assert r.code == 0, r.stderr
    with tarfile.open(out) as t:
        return {m.name: m for m in t.getmembers()}


def test_run_that_creates_tmp_keeps_it(tmp_path: Path) -> None:
    base = make_busybox_rootfs(tmp_path / "base")  # no /tmp, /proc or /dev
    m = build(tmp_path, "RUN /bin/sh -c 'mkdir -p /tmp && chmod 1777 /tmp && echo x > /tmp/f'\n",
              base)
    assert m["rootfs/tmp"].isdir() and m["rootfs/tmp"].mode == 0o1777
    assert m["rootfs/tmp/f"].isfile()
    # The sandbox's own mount points the image lacked are not left behind.
    assert "rootfs/proc" not in m and "rootfs/dev" not in m


def test_run_changes_to_an_existing_tmp_are_kept(tmp_path: Path) -> None:
    base = make_busybox_rootfs(tmp_path / "base")
    (base / "tmp").mkdir(mode=0o755)
    m = build(tmp_path, "RUN /bin/sh -c 'chmod 1777 /tmp; echo y > /tmp/kept'\n", base)
    assert m["rootfs/tmp"].mode == 0o1777 and m["rootfs/tmp/kept"].isfile()


def test_image_without_tmp_gets_none_from_the_sandbox(tmp_path: Path) -> None:
    base = make_busybox_rootfs(tmp_path / "base")
    m = build(tmp_path, "RUN /bin/sh -c 'test -d /tmp && echo HAS-TMP; true'\n", base)
    assert "rootfs/tmp" not in m  # as in Docker: the sandbox adds no /tmp of its own
