"""Tests for image/manifest: JSON form, reading, host os/arch, and actool reading our JSON."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from acbuild.errors import ImageError
from acbuild.image import manifest as appc
from acbuild.image.manifest import (
    App,
    Dependency,
    EventHandler,
    ImageManifest,
    Isolator,
    MountPoint,
    NameValue,
    Port,
    from_json_bytes,
    to_json_bytes,
    to_json_pretty,
)
from acbuild.image.manifest_rules import problems

ID = "sha512-" + "ab" * 64


def nv(**pairs: str) -> tuple[NameValue, ...]:
    return tuple(NameValue(name=k, value=v) for k, v in pairs.items())


def full_manifest() -> ImageManifest:
    return ImageManifest(
        name="example.com/app",
        labels=(NameValue(name="version", value="1.0"), *nv(os="linux", arch="amd64")),
        app=App(
            exec=("/bin/app", "--flag"),
            user="1000",
            group="/etc/group-file",
            supplementary_gids=(10, 20),
            event_handlers=(EventHandler(name="pre-start", exec=("/bin/prep",)),),
            working_directory="/srv",
            environment=nv(PATH="/bin", LANG="C.UTF-8"),
            isolators=(Isolator(name="resource/memory", value_json='{"limit":"1G"}'),),
            mount_points=(MountPoint(name="data", path="/data", read_only=True),),
            ports=(Port(name="http", protocol="tcp", port=80, count=2, socket_activated=True),),
            extra=(("criLabels", '{"a":"b"}'),),
        ),
        dependencies=(
            Dependency(image_name="example.com/base", image_id=ID, labels=nv(version="2"), size=9),
        ),
        path_whitelist=("/bin/app",),
        annotations=(NameValue(name="created", value="2024-01-02T03:04:05Z"),),
        extra=(("aaa", '"x"'), ("zzz", "1")),
    )


def app_with(**changes: object) -> ImageManifest:
    return ImageManifest(name="a", app=replace(App(), **changes))  # type: ignore[arg-type]


# ---- JSON ---------------------------------------------------------------------------------------


def test_minimal_manifest_omits_empty_fields() -> None:
    m = ImageManifest(name="example.com/app")
    assert to_json_bytes(m) == (
        b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/app"}'
    )


def test_json_field_order_is_fixed_and_extra_sorted_last() -> None:
    doc = json.loads(to_json_bytes(full_manifest()))
    assert list(doc) == [
        "acKind", "acVersion", "name", "labels", "app", "dependencies", "pathWhitelist",
        "annotations", "aaa", "zzz",
    ]  # fmt: skip
    assert list(doc["app"]) == [
        "exec", "user", "group", "supplementaryGIDs", "eventHandlers", "workingDirectory",
        "environment", "isolators", "mountPoints", "ports", "criLabels",
    ]  # fmt: skip
    assert doc["app"]["ports"] == [
        {"name": "http", "protocol": "tcp", "port": 80, "count": 2, "socketActivated": True}
    ]
    assert doc["app"]["isolators"] == [{"name": "resource/memory", "value": {"limit": "1G"}}]
    assert doc["dependencies"] == [
        {"imageName": "example.com/base", "imageID": ID,
         "labels": [{"name": "version", "value": "2"}], "size": 9}
    ]  # fmt: skip


def test_json_is_compact_utf8_and_round_trips() -> None:
    m = replace(full_manifest(), annotations=nv(description="café ☕"))
    data = to_json_bytes(m)
    assert b" " not in data.replace("café ☕".encode(), b"")
    assert "café ☕".encode() in data
    assert from_json_bytes(data) == m
    assert to_json_bytes(from_json_bytes(data)) == data


def test_pretty_has_same_content() -> None:
    m = full_manifest()
    text = to_json_pretty(m)
    assert text.startswith('{\n  "acKind": "ImageManifest",\n  "acVersion": "0.8.11",')
    assert json.loads(text) == json.loads(to_json_bytes(m))


def test_reading_keeps_unknown_fields_and_canonicalises_isolator_values() -> None:
    data = json.dumps(
        {
            "acKind": "ImageManifest",
            "acVersion": "0.8.11",
            "name": "a",
            "future": {"b": 1, "a": 2},
            "app": {
                "user": "0",
                "group": "0",
                "exec": None,
                "userLabels": {"x": "y"},
                "isolators": [{"name": "resource/cpu", "value": {"request": "1", "limit": "2"}}],
                "ports": [{"name": "p", "protocol": "tcp", "port": 1}],
            },
        }
    ).encode()
    m = from_json_bytes(data)
    assert m.extra == (("future", '{"a":2,"b":1}'),)
    assert m.app is not None
    assert m.app.extra == (("userLabels", '{"x":"y"}'),)
    assert m.app.isolators[0].value_json == '{"limit":"2","request":"1"}'
    assert m.app.ports[0].count == 1  # a missing count means 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "image manifest is not valid JSON: Expecting property name enclosed in double"),
        (b"\xff", "image manifest is not valid JSON"),
        (b"[]", "image manifest field '(top level)' must be an object"),
        (b'{"acKind":"PodManifest"}', "image manifest has acKind 'PodManifest', not"),
        (b'{"acKind":"ImageManifest","name":1}', "image manifest field 'name' must be a string"),
        (
            b'{"acKind":"ImageManifest","name":"a","labels":[{"name":"x","value":2}]}',
            "image manifest field 'labels[0].value' must be a string",
        ),
        (
            b'{"acKind":"ImageManifest","name":"a","app":{"ports":[{"name":"p","port":true}]}}',
            "image manifest field 'app.ports[0].port' must be an integer",
        ),
        (
            b'{"acKind":"ImageManifest","name":"a","app":{"exec":"/bin/sh"}}',
            "image manifest field 'app.exec' must be a list",
        ),
        (
            b'{"acKind":"ImageManifest","name":"a","dependencies":[{"imageName":"b","size":"1"}]}',
            "image manifest field 'dependencies[0].size' must be an integer",
        ),
        (
            b'{"acKind":"ImageManifest","name":"a","app":{"mountPoints":[{"name":"m","path":"/m",'
            b'"readOnly":"yes"}]}}',
            "image manifest field 'app.mountPoints[0].readOnly' must be true or false",
        ),
    ],
)
def test_reading_rejects_wrong_types_naming_the_field(data: bytes, message: str) -> None:
    with pytest.raises(ImageError) as info:
        from_json_bytes(data)
    assert info.value.message.startswith(message)


# ---- host and defaults --------------------------------------------------------------------------


def test_default_manifest_has_no_name_and_no_labels() -> None:
    m = appc.default_manifest()
    assert (m.name, m.labels, m.app) == ("", (), None)
    assert problems(m) == ["name must not be empty"]


# ---- actool agrees ------------------------------------------------------------------------------


def write_aci(path: Path, manifest: bytes) -> Path:
    """A tiny uncompressed ACI: the manifest and an empty rootfs directory."""
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        root = tarfile.TarInfo("rootfs")
        root.type = tarfile.DIRTYPE
        root.mode = 0o755
        tar.addfile(root)
    return path


def actool_ok(path: Path) -> bool:
    return subprocess.run(["actool", "validate", str(path)], capture_output=True).returncode == 0


def test_actool_accepts_our_json(tmp_path: Path) -> None:
    for i, m in enumerate([full_manifest(), ImageManifest(name="example.com/min")]):
        assert actool_ok(write_aci(tmp_path / f"{i}.aci", to_json_bytes(m)))
