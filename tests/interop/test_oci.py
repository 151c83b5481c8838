"""Reading Docker/OCI inputs: choosing the image, digests, sloppy and broken layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from acbuild.errors import ConvertError, ImageError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.extract import extract_tar
from acbuild.interop.convert import convert_to_rootfs
from acbuild.interop.oci import detect_kind, open_source
from acbuild.interop.ocistream import EndedTar, drain
from tests.support.ocifixtures import (
    Config,
    directory,
    file,
    make_layout,
    merge_docker_archives,
    raw_layout,
    tar_bytes,
    to_docker_archive,
    to_oci_archive,
)

TAR = "application/vnd.oci.image.layer.v1.tar"
HELLO = [directory("etc"), file("etc/hello", "hello\n")]
ONE = ["etc", "etc/hello"]
TWO = [ONE, ["etc/two"]]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oci") / "img"
    make_layout(root, "v1", [HELLO], Config(cmd=("/bin/true",)))
    make_layout(root, "v2", [HELLO, [file("etc/two", "2")]])
    return root


def read_all(kind: str, path: Path, ref: str | None) -> list[list[str]]:
    """The member names of each layer, read through the digest-checking stream."""
    with open_source(kind, path, ref) as src:  # type: ignore[arg-type]
        names = []
        for layer in src.layers:
            with src.open_layer(layer) as f, tarfile.open(fileobj=f, mode="r|") as tar:
                names.append([m.name for m in tar])
        return names


def test_layout_ref_and_listing(layout: Path) -> None:
    with open_source("oci", layout, "v2") as src:
        assert (src.repository, src.tag, len(src.layers)) == ("img", "v2", 2)
        assert src.layers[0].digest and src.layers[0].diff_id
    with pytest.raises(ConvertError) as e:
        open_source("oci", layout, None)
    assert e.value.message == f"{layout} holds 2 images; choose one with --image: v1, v2"
    with pytest.raises(ConvertError) as e:
        open_source("oci", layout, "v3")
    assert e.value.message == f"{layout}: no image reference 'v3'; it holds: v1, v2"


def test_docker_archive_several_images(layout: Path, tmp_path: Path) -> None:
    one = to_docker_archive(layout, "v1", tmp_path / "1.tar", "busybox:latest")
    two = to_docker_archive(layout, "v2", tmp_path / "2.tar", "quay.io/me/app:2.0")
    both = merge_docker_archives(tmp_path / "both.tar", one, two)
    assert detect_kind(both) == "docker-archive"
    with pytest.raises(ConvertError) as e:
        open_source("docker-archive", both, None)
    assert e.value.message == (f"{both} holds 2 images; choose one with --image: "
                               "docker.io/library/busybox:latest, quay.io/me/app:2.0")
    with open_source("docker-archive", both, "busybox") as src:
        assert (src.repository, src.tag, len(src.layers)) == ("busybox", "latest", 1)
        assert src.config["config"]["Cmd"] == ["/bin/true"]
    with open_source("docker-archive", both, "quay.io/me/app:2.0") as src:
        assert (src.repository, src.tag, len(src.layers)) == ("quay.io/me/app", "2.0", 2)
    assert read_all("docker-archive", both, "quay.io/me/app:2.0") == TWO


def test_oci_archive(layout: Path, tmp_path: Path) -> None:
    archive = to_oci_archive(layout, "v2", tmp_path / "a.tar")
    assert detect_kind(archive) == "oci-archive"
    assert read_all("oci-archive", archive, None) == TWO


def test_gzipped_docker_archive(layout: Path, tmp_path: Path) -> None:
    plain = to_docker_archive(layout, "v1", tmp_path / "1.tar", "busybox:latest")
    packed = tmp_path / "1.tar.gz"
    with plain.open("rb") as src, gzip.open(packed, "wb") as dst:
        dst.write(src.read())
    assert read_all("docker-archive", packed, None) == [ONE]


def corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_layer_in_layout(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "img", "v1", [HELLO])
    with open_source("oci", root, None) as src:
        layer = src.layers[0]
    corrupt(root / layer.location, layer.size // 2)  # type: ignore[operator]
    with pytest.raises(ConvertError) as e:
        read_all("oci", root, None)
    assert e.value.message.startswith("layer 1 is corrupt: digest sha256:")
    assert e.value.message.endswith(f"expected {layer.digest}")
    assert (root / layer.location).exists()  # the user's layout is never changed


def test_corrupt_layer_in_docker_archive(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "img", "v1", [HELLO])
    archive = to_docker_archive(root, "v1", tmp_path / "d.tar", "x:1")
    data = archive.read_bytes()
    at = data.index(b"hello\n")
    corrupt(archive, at)
    with pytest.raises(ConvertError) as e:
        read_all("docker-archive", archive, None)
    assert "layer 1 is corrupt: uncompressed digest sha256:" in e.value.message


def squash(path: Path, tmp: Path) -> Path:
    rootfs = StagedRootfs(root=tmp / "rootfs")
    rootfs.root.mkdir()
    convert_to_rootfs(open_source("oci", path, None), rootfs)
    return rootfs.root


def test_sloppy_layers_accepted(tmp_path: Path) -> None:
    body = tar_bytes([file("a", "A")])
    no_end = body[: 512 * 2]  # header + data block, no end-of-archive blocks
    lead = tar_bytes([file("/b", "B")])
    root = raw_layout(tmp_path / "img", [(no_end, no_end, TAR), (lead, lead, TAR)])
    assert read_all("oci", root, None) == [["a"], ["/b"]]
    rootfs = squash(root, tmp_path)
    assert sorted(p.name for p in rootfs.iterdir()) == ["a", "b"]


def test_truncated_layer_rejected(tmp_path: Path) -> None:
    body = tar_bytes([file("a", "A" * 5000)])[:2048]  # data cut short, digest vouches for it
    root = raw_layout(tmp_path / "img", [(body, body, TAR)])
    with pytest.raises(ConvertError) as e:
        squash(root, tmp_path)
    assert e.value.message.startswith("layer 1 (")


def test_only_cuts_between_entries_are_completed(tmp_path: Path) -> None:
    long_name = "d/" + "n" * 150  # a PAX header first, then the entry
    body = tar_bytes([file("a", "A" * 700), file(long_name, "B" * 600), directory("d2")])
    complete = {i * 512 for i in (3, 8, 9)}  # ends of entries (before the end blocks)
    assert body[9 * 512 : 11 * 512] == bytes(1024)
    for cut in sorted({*range(1, 9 * 512, 97), *range(512, 9 * 512 + 1, 512)}):
        rootfs = StagedRootfs(root=tmp_path / f"r{cut}")
        rootfs.root.mkdir()
        stream = io.BufferedReader(EndedTar(io.BytesIO(body[:cut])))  # type: ignore[arg-type]
        if cut in complete:
            extract_tar(stream, rootfs)  # type: ignore[arg-type]
        else:
            with pytest.raises(ImageError):
                extract_tar(stream, rootfs)  # type: ignore[arg-type]


def test_zstd_and_gzip_layers(tmp_path: Path) -> None:
    one, two = tar_bytes([file("a", "A")]), tar_bytes([file("b", "B")])
    root = raw_layout(tmp_path / "img", [
        (zstandard.ZstdCompressor().compress(one), one, TAR + "+zstd"),
        (gzip.compress(two), two, TAR + "+gzip"),
    ])
    assert read_all("oci", root, None) == [["a"], ["b"]]


def test_wrong_diff_id(tmp_path: Path) -> None:
    one = tar_bytes([file("a", "A")])
    root = raw_layout(tmp_path / "img", [(one, one, TAR)],
                      config={"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}})
    with (open_source("oci", root, None) as src, pytest.raises(ConvertError) as e,
          src.open_layer(src.layers[0]) as f):
        drain(f)
    assert e.value.message == (
        f"layer 1 is corrupt: uncompressed digest sha256:{hashlib.sha256(one).hexdigest()}, "
        f"expected diff_id sha256:{'0' * 64}"
    )


def test_hostile_digest_is_not_a_path(tmp_path: Path) -> None:
    root = raw_layout(tmp_path / "img", [])
    index = json.loads((root / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../etc/passwd"
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(ConvertError) as e:
        open_source("oci", root, None)
    assert e.value.message == "manifest: invalid digest 'sha256:../../../etc/passwd'"


def test_multi_platform_index_picks_host(tmp_path: Path) -> None:
    from acbuild.interop.oci import host_platform

    root = raw_layout(tmp_path / "img", [])
    index = json.loads((root / "index.json").read_text())
    desc = index["manifests"][0]
    os_name, arch = host_platform()
    nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [{**desc, "platform": {"os": os_name, "architecture": "mips"}},
                            {**desc, "platform": {"os": os_name, "architecture": arch}}]}
    data = json.dumps(nested).encode()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    index["manifests"] = [{"mediaType": nested["mediaType"], "digest": f"sha256:{digest}",
                           "size": len(data)}]
    (root / "index.json").write_text(json.dumps(index))
    with open_source("oci", root, None) as src:
        assert src.layers == ()


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    with tarfile.open(junk, "w") as tar:
        tar.add(__file__, "x")
    with pytest.raises(ConvertError) as e:
        detect_kind(junk)
    assert "neither a docker-archive" in e.value.message
