"""ACI → OCI: layouts skopeo and umoci accept, reproducible digests, round trip back to ACI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from acbuild.cli.commands.export import command as export_command
from acbuild.errors import BuildError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.finalize import write_aci
from acbuild.image.manifest import App, ImageManifest, MountPoint, NameValue, Port, to_json_bytes
from acbuild.interop.convert import ConvertOptions, convert
from acbuild.interop.export import export_oci
from tests.support.ocifixtures import aci_tree, actool_validate, dir_tree, manifest_of, umoci_unpack

EPOCH = 1_600_000_000
MANIFEST = ImageManifest(
    name="example.com/hello",
    labels=(NameValue(name="version", value="2.1"), NameValue(name="os", value="linux"),
            NameValue(name="arch", value="amd64")),
    app=App(
        exec=("/bin/hello", "--loud"), user="1000", group="100", working_directory="/srv",
        environment=(NameValue(name="PATH", value="/bin"), NameValue(name="MODE", value="a b")),
        ports=(Port(name="8080-tcp", protocol="tcp", port=8080),),
        mount_points=(MountPoint(name="volume-data", path="/data"),),
    ),
    annotations=(NameValue(name="created", value="2020-09-13T12:26:40Z"),
                 NameValue(name="authors", value="me")),
)


def staged(root: Path) -> StagedRootfs:
    rootfs = StagedRootfs(root=root)
    root.mkdir()
    for d, mode in (("bin", 0o755), ("etc", 0o755), ("srv", 0o700), ("srv/sub", 0o755)):
        (root / d).mkdir()
        os.chmod(root / d, mode)
    for f, data, mode in (("bin/hello", b"#!/bin/sh\necho hi\n", 0o755),
                          ("etc/secret", b"s3cret\n", 0o600), ("srv/sub/empty", b"", 0o644)):
        (root / f).write_bytes(data)
        os.chmod(root / f, mode)
    os.symlink("hello", root / "bin/hi")
    os.symlink("/etc/secret", root / "srv/abs")
    os.link(root / "bin/hello", root / "bin/hello2")
    for p in (*root.rglob("*"), root):
        os.utime(p, (EPOCH, EPOCH), follow_symlinks=False)
    return rootfs


@pytest.fixture
def rootfs(tmp_path: Path) -> StagedRootfs:
    return staged(tmp_path / "rootfs")


def run(*argv: str | Path) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_layout_accepted_by_skopeo_and_umoci(rootfs: StagedRootfs, tmp_path: Path) -> None:
    out = tmp_path / "hello.oci"
    digest = export_oci(rootfs, MANIFEST, out, archive=False, epoch=EPOCH)
    info = json.loads(run("skopeo", "inspect", f"oci:{out}:2.1"))
    assert info["Digest"] == digest
    config = json.loads(run("skopeo", "inspect", "--config", f"oci:{out}:2.1"))
    assert config["config"] == {
        "Entrypoint": ["/bin/hello", "--loud"], "User": "1000:100", "WorkingDir": "/srv",
        "Env": ["PATH=/bin", "MODE=a b"], "ExposedPorts": {"8080/tcp": {}},
        "Volumes": {"/data": {}}, "Labels": {"authors": "me"},
    }
    assert (config["os"], config["architecture"], config["created"]) == (
        "linux", "amd64", "2020-09-13T12:26:40Z")
    unpacked = umoci_unpack(out, "2.1", tmp_path / "bundle")
    assert dir_tree(unpacked) == dir_tree(rootfs.root)
    assert os.stat(unpacked / "bin/hello").st_ino == os.stat(unpacked / "bin/hello2").st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "hello.oci", "rootfs"]


def test_reproducible_and_archive(rootfs: StagedRootfs, tmp_path: Path) -> None:
    one = export_oci(rootfs, MANIFEST, tmp_path / "a", archive=False, epoch=EPOCH)
    two = export_oci(rootfs, MANIFEST, tmp_path / "b", archive=False, epoch=EPOCH)
    assert one == two
    assert sorted(os.listdir(tmp_path / "a/blobs/sha256")) == sorted(
        os.listdir(tmp_path / "b/blobs/sha256"))
    archive = tmp_path / "hello.tar"
    assert export_oci(rootfs, MANIFEST, archive, archive=True, epoch=EPOCH) == one
    first = archive.read_bytes()
    export_oci(rootfs, MANIFEST, archive, archive=True, epoch=EPOCH)
    assert archive.read_bytes() == first
    assert json.loads(run("skopeo", "inspect", f"oci-archive:{archive}"))["Digest"] == one
    index = json.loads((tmp_path / "a/index.json").read_text())
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "2.1"}


def test_round_trip(rootfs: StagedRootfs, tmp_path: Path) -> None:
    aci = tmp_path / "hello.aci"
    write_aci(rootfs, to_json_bytes(MANIFEST), aci, epoch=EPOCH)
    result = CliRunner().invoke(export_command, [str(aci), "-o", str(tmp_path / "hello.oci")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("sha256:")
    back = tmp_path / "back.aci"
    convert(ConvertOptions(kind="oci", input=tmp_path / "hello.oci", output=back))
    actool_validate(back)
    assert aci_tree(back) == aci_tree(aci)
    original, again = manifest_of(aci), manifest_of(back)
    assert again["app"] == original["app"]
    assert again["name"] == "hello"  # the layout's name; the OCI ref carries only the tag
    assert {"name": "version", "value": "2.1"} in again["labels"]  # type: ignore[operator]
    notes = {a["name"]: a["value"] for a in again["annotations"]}  # type: ignore[attr-defined]
    assert (notes["created"], notes["authors"]) == ("2020-09-13T12:26:40Z", "me")


def test_docker_origin_split_restored(rootfs: StagedRootfs, tmp_path: Path) -> None:
    docker = (NameValue(name="appc.io/docker/entrypoint", value='["/bin/hello"]'),
              NameValue(name="appc.io/docker/cmd", value='["--loud"]'))
    manifest = ImageManifest(name="x", app=MANIFEST.app, annotations=docker)
    export_oci(rootfs, manifest, tmp_path / "x", archive=False, epoch=EPOCH)
    config = json.loads(run("skopeo", "inspect", "--config", f"oci:{tmp_path / 'x'}:latest"))
    assert (config["config"]["Entrypoint"], config["config"]["Cmd"]) == (["/bin/hello"],
                                                                         ["--loud"])
    assert "Labels" not in config["config"]


def test_replaces_a_layout_but_nothing_else(rootfs: StagedRootfs, tmp_path: Path) -> None:
    out = tmp_path / "img"
    export_oci(rootfs, MANIFEST, out, archive=False, epoch=EPOCH)
    export_oci(rootfs, MANIFEST, out, archive=False, epoch=EPOCH + 1)
    assert len(os.listdir(out / "blobs/sha256")) == 3
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError) as e:
        export_oci(rootfs, MANIFEST, other, archive=False, epoch=EPOCH)
    assert e.value.message == f"{other} exists and is not an OCI image layout; not replacing it"
    assert os.listdir(other) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "mine", "rootfs"]
