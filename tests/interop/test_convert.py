"""Docker/OCI → ACI: squashed layers match umoci's own unpacking; config mapped; per-layer mode."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from acbuild.cli.commands.convert import command as convert_command
from acbuild.errors import ConvertError
from acbuild.image.manifest import from_json_bytes
from acbuild.interop.convert import ConvertOptions, _user_group, ac_identifier, ac_name, convert
from acbuild.interop.oci import open_source
from acbuild.report import NullReporter
from tests.support.cli import acbuild
from tests.support.ocifixtures import (
    Config,
    aci_tree,
    actool_validate,
    busybox_docker_archive,
    dir_tree,
    directory,
    file,
    hardlink,
    hardlinks,
    make_layout,
    manifest_of,
    opaque,
    symlink,
    to_docker_archive,
    umoci_unpack,
    whiteout,
)

LOWER = [
    directory("etc"), directory("usr"), directory("usr/share"), directory("opt"),
    directory("gone-dir"), directory("bin"),
    file("etc/a", "alpha\n"), file("etc/gone", "bye\n"), file("gone-dir/x", "x"),
    file("usr/share/doc1", "1"), file("usr/share/doc2", "2"), file("opt/keep", "keep\n", 0o600),
    file("bin/tool", "#!/bin/sh\n", 0o755), symlink("etc/link", "a"),
    symlink("bin/abs", "/etc/a"), hardlink("etc/a-hard", "etc/a"),
]
UPPER = [
    whiteout("etc/gone"), whiteout("gone-dir"), opaque("usr/share"),
    file("usr/share/new", "new\n"), file("etc/a", "alpha two\n", 0o640),
    hardlink("opt/keep-link", "opt/keep"), directory("srv", 0o750),
]
CONFIG = Config(
    entrypoint=("/bin/tool",), cmd=("--serve", "x y"), env=("PATH=/bin", "LANG=C.UTF-8"),
    user="1000:50", workingdir="/srv", ports=("8080/tcp", "53/udp"),
    volumes=("/var/lib/data", "/Cache"), labels=("maintainer=Me <me@x>", "Org.Thing=1"),
)


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layered") / "app.oci"
    return make_layout(root, "1.0", [LOWER, UPPER], CONFIG)


def test_squash_matches_umoci(layered: Path, tmp_path: Path) -> None:
    out = tmp_path / "app.aci"
    (written,) = convert(ConvertOptions(kind="oci", input=layered, image="1.0", output=out))
    assert written.path == out
    actool_validate(out)
    expected = dir_tree(umoci_unpack(layered, "1.0", tmp_path / "bundle"))
    got = aci_tree(out)
    assert got == expected
    assert "etc/gone" not in got and "gone-dir" not in got
    assert sorted(k for k in got if k.startswith("usr/share/")) == ["usr/share/new"]
    # etc/a was replaced by the upper layer, so etc/a-hard keeps the old data on its own
    assert {tuple(sorted(pair)) for pair in hardlinks(out)} == {
        ("rootfs/opt/keep", "rootfs/opt/keep-link")}
    assert got["etc/a-hard"][2] == hashlib.sha256(b"alpha\n").hexdigest()


def test_config_mapping(layered: Path, tmp_path: Path) -> None:
    out = tmp_path / "app.aci"
    convert(ConvertOptions(kind="oci", input=layered, image="1.0", output=out, epoch=0))
    m = manifest_of(out)
    assert m["name"] == "app"
    assert m["labels"] == [{"name": "version", "value": "1.0"}, {"name": "os", "value": "linux"},
                           {"name": "arch", "value": "amd64"}]
    app = m["app"]
    assert app["exec"] == ["/bin/tool", "--serve", "x y"]  # type: ignore[index]
    assert (app["user"], app["group"], app["workingDirectory"]) == ("1000", "50", "/srv")  # type: ignore[index]
    assert app["environment"] == [{"name": "PATH", "value": "/bin"},  # type: ignore[index]
                                  {"name": "LANG", "value": "C.UTF-8"}]
    assert app["mountPoints"] == [{"name": "volume-cache", "path": "/Cache"},  # type: ignore[index]
                                  {"name": "volume-var-lib-data", "path": "/var/lib/data"}]
    assert [(p["name"], p["protocol"], p["port"]) for p in app["ports"]] == [  # type: ignore[index]
        ("53-udp", "udp", 53), ("8080-tcp", "tcp", 8080)]
    notes = {a["name"]: a["value"] for a in m["annotations"]}  # type: ignore[attr-defined]
    with open_source("oci", layered, "1.0") as src:
        image_id = src.image_id
    assert notes == {
        "created": "2020-09-13T12:26:40Z",
        "appc.io/docker/originalname": "app:1.0",
        "appc.io/docker/repository": "app",
        "appc.io/docker/tag": "1.0",
        "appc.io/docker/imageid": image_id,
        "appc.io/docker/source": "oci",
        "appc.io/docker/entrypoint": '["/bin/tool"]',
        "appc.io/docker/cmd": '["--serve", "x y"]',
        "maintainer": "Me <me@x>",
        "org.thing": "1",
    }


def test_mtimes_clamped_to_image_creation(layered: Path, tmp_path: Path) -> None:
    out = tmp_path / "app.aci"
    convert(ConvertOptions(kind="oci", input=layered, image="1.0", output=out))
    with tarfile.open(out) as tar:
        assert {m.mtime for m in tar if m.name == "rootfs/etc/a"} == {1_600_000_000}


def test_nosquash(layered: Path, tmp_path: Path) -> None:
    out = tmp_path / "app.aci"
    lower, top = convert(ConvertOptions(kind="oci", input=layered, image="1.0", output=out,
                                        squash=False))
    assert top.path == out and lower.path == tmp_path / "app-layer1.aci"
    actool_validate(lower.path, top.path)
    low, high = manifest_of(lower.path), manifest_of(top.path)
    assert str(low["name"]).startswith("oci-layer/sha256-") and "pathWhitelist" not in low
    assert high["dependencies"] == [{"imageName": low["name"], "imageID": lower.image_id,
                                     "labels": [{"name": "os", "value": "linux"},
                                                {"name": "arch", "value": "amd64"}]}]
    whitelist = high["pathWhitelist"]
    assert "/etc/a" in whitelist and "/usr/share/new" in whitelist  # type: ignore[operator]
    assert "/etc/gone" not in whitelist and "/usr/share/doc1" not in whitelist  # type: ignore[operator]
    assert "etc/gone" in aci_tree(lower.path) and "etc/gone" not in aci_tree(top.path)
    assert high["app"]["exec"] == ["/bin/tool", "--serve", "x y"]  # type: ignore[index]
    # a hardlink to a lower layer's file: the target travels with it (an ACI cannot link out)
    top_tree = aci_tree(top.path)
    assert top_tree["opt/keep-link"] == top_tree["opt/keep"] == aci_tree(lower.path)["opt/keep"]
    # the same lower layer from another image converts to the same ACI: it can be shared
    again = convert(ConvertOptions(kind="oci", input=layered, image="1.0",
                                   output=tmp_path / "b.aci", squash=False))
    assert again[0].image_id == lower.image_id


def test_busybox_docker_archive(tmp_path: Path) -> None:
    archive = busybox_docker_archive(tmp_path / "fx")
    out = tmp_path / "busybox.aci"
    convert(ConvertOptions(kind="docker-archive", input=archive, output=out))
    actool_validate(out)
    tree = aci_tree(out)
    digest = hashlib.sha256(Path("/usr/bin/busybox").read_bytes()).hexdigest()
    assert tree["bin/busybox"] == ("file", 0o755, digest)
    assert tree["bin/sh"] == ("symlink", 0, "busybox")
    assert manifest_of(out)["app"]["exec"] == ["/bin/sh"]  # type: ignore[index]


def test_cli_default_name_and_listing(layered: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    archive = busybox_docker_archive(tmp_path / "fx")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(convert_command, [str(archive), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "busybox-latest.aci").is_file()
    assert result.stdout.strip().startswith("sha512-")
    make_layout(layered.parent / "two.oci", "a", [LOWER])
    make_layout(layered.parent / "two.oci", "b", [LOWER])
    result = CliRunner().invoke(convert_command, [str(layered.parent / "two.oci")])
    assert result.exit_code == 1
    assert str(result.exception) == (f"error: {layered.parent / 'two.oci'} holds 2 images; "
                                     "choose one with --image: a, b")


def test_corrupt_layer_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "img", "v1", [[file("a", "A" * 4000)]])
    archive = to_docker_archive(root, "v1", tmp_path / "d.tar", "x:1")
    data = bytearray(archive.read_bytes())
    data[data.index(b"AAAA")] ^= 1
    archive.write_bytes(bytes(data))
    out = tmp_path / "x.aci"
    from acbuild.errors import ConvertError

    with pytest.raises(ConvertError, match="layer 1 is corrupt: uncompressed digest"):
        convert(ConvertOptions(kind="docker-archive", input=archive, output=out))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tar", "img"]


@pytest.mark.parametrize(("user", "passwd", "expected"), [
    ("", None, ("0", "0")),
    ("app", None, ("app", "0")),
    ("app", "app:x:1000:1001::/:/bin/sh\n", ("app", "1001")),
    ("1000", "app:x:1000:1001::/:/bin/sh\n", ("1000", "1001")),
    ("1000:5", None, ("1000", "5")),
    ("web:www", None, ("web", "www")),
])
def test_user_group(user: str, passwd: str | None, expected: tuple[str, str]) -> None:
    assert _user_group(user, passwd) == expected


def test_sanitisers() -> None:
    assert ac_identifier("Quay.io/CoreOS/etcd v3!") == "quay.io/coreos/etcd-v3"
    assert ac_identifier("--") == "image"
    assert ac_name("volume-/var/Lib__x/") == "volume-var-lib-x"


def test_architecture_and_bad_values(tmp_path: Path) -> None:
    cfg = Config(architecture="arm64", env=("1BAD=x", "GOOD=y"), ports=("http/tcp",))
    root = make_layout(tmp_path / "img", "v1", [[file("a", "A")]], cfg)
    out = tmp_path / "x.aci"
    reporter = NullReporter()
    convert(ConvertOptions(kind="oci", input=root, output=out), reporter)
    m = from_json_bytes(json.dumps(manifest_of(out)).encode())
    assert ("arch", "aarch64") in {(lb.name, lb.value) for lb in m.labels}
    assert m.app is not None and [e.name for e in m.app.environment] == ["GOOD"]
    assert reporter.warnings == [
        "environment variable '1BAD' is not a valid AppC name; dropped",
        "exposed port 'http/tcp' cannot be expressed in AppC; dropped",
    ]


def test_symlink_planted_by_one_layer_cannot_be_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    plant = [symlink("evil", str(outside)), symlink("up", "../../../../../../..")]
    through = [file("evil/pwned", "x"), file(f"up{outside}/pwned2", "y")]
    root = make_layout(tmp_path / "img", "v1", [plant, through])
    out = tmp_path / "x.aci"
    convert(ConvertOptions(kind="oci", input=root, output=out))
    assert list(outside.iterdir()) == []
    tree = aci_tree(out)
    assert tree["evil"] == ("symlink", 0, str(outside))
    assert f"{str(outside)[1:]}/pwned" in tree and f"{str(outside)[1:]}/pwned2" in tree


@pytest.mark.parametrize("squash", [True, False])
def test_an_image_appc_cannot_name_the_platform_of_is_refused_before_any_layer(
        tmp_path: Path, squash: bool) -> None:
    """Red team RR-5: a riscv64 (or windows) image converted with a warning, exit 0, into an
    ACI that validate and rkt refuse; now an error before any layer is read, nothing written."""
    for os_name, arch, says in (("linux", "riscv64", "bad arch 'riscv64' for linux"),
                                ("windows", "amd64", "'windows'")):
        layout = make_layout(tmp_path / f"{arch}.oci", "1.0", [LOWER],
                             Config(os=os_name, architecture=arch))
        out = tmp_path / "out" / "x.aci"
        out.parent.mkdir(exist_ok=True)
        with pytest.raises(ConvertError) as e:
            convert(ConvertOptions(kind="oci", input=layout, image="1.0", output=out,
                                   squash=squash))
        assert "the image cannot be an ACI: " in e.value.message and says in e.value.message
        assert list(out.parent.iterdir()) == []
        r = acbuild("convert", layout, "--image", "1.0", "-o", out)
        assert r.code == 1 and r.stderr.startswith(f"error: {layout}: the image cannot be an "
                                                   "ACI: "), r.stderr
        assert list(out.parent.iterdir()) == []


def test_an_output_that_may_not_be_replaced_is_refused_before_the_pull(tmp_path: Path) -> None:
    """Red team RO-9: convert -o DEVICE was refused after the pull and the conversion; here
    the registry is one nothing listens at, so only a check made first can answer."""
    os.mkfifo(tmp_path / "fifo")
    r = acbuild("convert", "docker://127.0.0.1:9/x:1", "--insecure-registry", "127.0.0.1:9",
                "--insecure-skip-verify", "-o", tmp_path / "fifo")
    assert r.code == 1
    assert r.stderr.startswith(f"error: cannot write {tmp_path / 'fifo'}: it is a FIFO"), r.stderr
