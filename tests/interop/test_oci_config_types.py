"""OCI and Docker configs with wrong JSON types anywhere are ConvertErrors naming the field,
through the CLI too; never a TypeError or AttributeError (exit 70)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from acbuild.errors import ConvertError
from acbuild.fs.staging import StagedRootfs
from acbuild.interop.convert import convert_to_rootfs
from acbuild.interop.oci import open_source
from tests.support.cli import acbuild
from tests.support.ocifixtures import raw_layout

BAD_CONFIGS = {
    "labels-list": ({"config": {"Labels": ["a", "b"]}}, "'config.Labels' must be an object"),
    "labels-number": ({"config": {"Labels": {"a": 1}}}, "'config.Labels' must be an object"),
    "env-dict": ({"config": {"Env": {"A": "1"}}}, "'config.Env' must be a list of strings"),
    "env-numbers": ({"config": {"Env": [1, 2]}}, "'config.Env' must be a list of strings"),
    "cmd-number": ({"config": {"Cmd": 5}}, "'config.Cmd' must be a list of strings"),
    "entrypoint-nested": ({"config": {"Entrypoint": [["sh"]]}},
                          "'config.Entrypoint' must be a list of strings"),
    "user-number": ({"config": {"User": 0}}, "'config.User' must be a string"),
    "workdir-list": ({"config": {"WorkingDir": ["/"]}}, "'config.WorkingDir' must be a string"),
    "ports-list": ({"config": {"ExposedPorts": ["80/tcp", 1]}},
                   "'config.ExposedPorts' must be an object"),
    "volumes-string": ({"config": {"Volumes": "/data"}}, "'config.Volumes' must be an object"),
    "os-number": ({"os": 7}, "'os' must be a string"),
    "arch-object": ({"architecture": {}}, "'architecture' must be a string"),
    "created-number": ({"created": 1}, "'created' must be a string"),
    "config-list": ({"config": []}, "'config' must be an object"),
    "rootfs-string": ({"rootfs": "layers"}, "'rootfs' must be an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_wrong_types_in_a_config_name_the_field(tmp_path: Path, case: str) -> None:
    config, message = BAD_CONFIGS[case]
    root = raw_layout(tmp_path / "img", [], config=config)
    with pytest.raises(ConvertError) as e:
        source = open_source("oci", root, None)
        rootfs = StagedRootfs(root=tmp_path / "rootfs")
        rootfs.root.mkdir()
        convert_to_rootfs(source, rootfs)
    assert message in e.value.message


def test_lone_surrogate_in_a_config_is_refused(tmp_path: Path) -> None:
    root = raw_layout(tmp_path / "img", [], config={"config": {"User": "\ud800"}})
    with pytest.raises(ConvertError, match="lone surrogate"):
        open_source("oci", root, None)


def _index_with_platform(tmp_path: Path, platform: object) -> Path:
    root = raw_layout(tmp_path / "img", [])
    index = json.loads((root / "index.json").read_text())
    desc = index["manifests"][0]
    nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [{**desc, "platform": platform}, {**desc, "platform": platform}]}
    data = json.dumps(nested).encode()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    index["manifests"] = [{"mediaType": nested["mediaType"], "digest": f"sha256:{digest}",
                           "size": len(data)}]
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_a_null_platform_in_an_index_matches_any_host(tmp_path: Path) -> None:
    with open_source("oci", _index_with_platform(tmp_path, None), None) as src:
        assert src.layers == ()


@pytest.mark.parametrize("platform", ["linux/amd64", 7, ["linux"]])
def test_a_platform_that_is_not_an_object_is_a_convert_error(tmp_path: Path,
                                                             platform: object) -> None:
    with pytest.raises(ConvertError, match="platform: expected a JSON object"):
        open_source("oci", _index_with_platform(tmp_path, platform), None)


def test_wrong_types_through_the_cli_are_one_line_errors(tmp_path: Path) -> None:
    root = raw_layout(tmp_path / "img", [], config={"config": {"Labels": ["x"]}})
    r = acbuild("convert", root, "-o", tmp_path / "x.aci")
    assert r.code == 1, r.stderr
    assert r.stderr.count("\n") <= 2 and "internal error" not in r.stderr
    assert "'config.Labels' must be an object of strings" in r.stderr
