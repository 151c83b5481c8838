"""Docker/OCI through the CLI end to end: a busybox docker-archive made by skopeo is
converted and run, used as a BEGIN with RUN steps, and exported back to OCI for umoci."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.cli import acbuild, actool_validate
from tests.support.ocifixtures import aci_tree, busybox_docker_archive, umoci_unpack


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return busybox_docker_archive(tmp_path / "fx")


def test_converted_busybox_validates_and_runs(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "busybox.aci"
    r = acbuild("convert", archive, "-o", out)
    assert r.code == 0, r.stderr
    actool_validate(out)
    r = acbuild("run", "--no-stdin", out, "--", "-c", "echo converted; exit 4")
    assert (r.code, r.stdout) == (4, "converted\n"), r.stderr


def test_begin_docker_archive_with_run_then_export_to_oci(archive: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Acfile").write_text(
        f"BEGIN docker-archive:{archive}\n"
        "NAME example.com/from-docker\n"
        "LABEL version=2.1.0\n"
        "RUN /bin/sh -c 'echo built from docker > /etc/motd'\n"
        "EXEC /bin/cat /etc/motd\n"
    )
    image = tmp_path / "app.aci"
    r = acbuild("build", ctx / "Acfile", "-o", image, "--allow-path", archive.parent)
    assert r.code == 0, r.stderr
    assert "carries no signature" in r.stderr  # a Docker base is unsigned, and the log says so
    actool_validate(image)
    r = acbuild("run", "--no-stdin", image)
    assert (r.code, r.stdout) == (0, "built from docker\n"), r.stderr

    layout = tmp_path / "app.oci"
    r = acbuild("export", image, "--format", "oci", "-o", layout)
    assert r.code == 0, r.stderr
    unpacked = umoci_unpack(layout, "2.1.0", tmp_path / "bundle")
    tree = aci_tree(image)
    assert (unpacked / "etc" / "motd").read_text() == "built from docker\n"
    busybox = hashlib.sha256((unpacked / "bin" / "busybox").read_bytes()).hexdigest()
    assert tree["bin/busybox"][2] == busybox
    on_disk = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*")}
    assert on_disk == set(tree)
