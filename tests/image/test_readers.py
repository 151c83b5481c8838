"""Readers that agree: every way of reading an image's manifest applies the same AppC rules
(acbuild.image.manifest.read_checked), refuses absolute entry names, and keeps unknown keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acbuild.errors import ImageError
from acbuild.fs.staging import StagedRootfs
from acbuild.image import aci
from acbuild.image.inspect import summarize
from acbuild.image.manifest import from_json_bytes, read_checked, to_json_bytes
from tests.support.cli import acbuild
from tests.support.hostile import MINIMAL_MANIFEST, Tar, compress

M = MINIMAL_MANIFEST


def _image(tmp_path: Path, tar: Tar) -> Path:
    path = tmp_path / "x.aci"
    path.write_bytes(compress(tar.data()))
    return path


def _stage(tmp_path: Path) -> StagedRootfs:
    (tmp_path / "stage").mkdir()
    return StagedRootfs(tmp_path / "stage")


BAD = {
    # a rule the reference enforces: the os/arch whitelist on a dependency's labels
    "bad-manifest": (
        lambda: Tar().file("manifest", json.dumps({**M, "dependencies": [{
            "imageName": "example.com/base",
            "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "arm64"}],
        }]}).encode()).dir("rootfs"),
        "dependency 'example.com/base': bad arch 'arm64' for linux",
    ),
    "absolute-manifest": (
        lambda: Tar().file("/manifest", json.dumps(M).encode()).dir("rootfs"),
        "archive entry '/manifest' is an absolute name",
    ),
    "absolute-rootfs-entry": (
        lambda: Tar().file("manifest", json.dumps(M).encode()).dir("rootfs")
        .file("/rootfs/etc/passwd", b"x"),
        "archive entry '/rootfs/etc/passwd' is an absolute name",
    ),
}

READERS: dict[str, Callable[[Path, Path], Any]] = {
    "read_manifest": lambda image, tmp: aci.read_manifest(image),
    "summarize": lambda image, tmp: summarize(image),
    "unpack_image": lambda image, tmp: aci.unpack_image(image, _stage(tmp)),
    "unpack_base": lambda image, tmp: aci.unpack_base(image, _stage(tmp)),
    "iter_entries": lambda image, tmp: list(aci.iter_entries(image)),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(BAD))
def test_every_reader_refuses(tmp_path: Path, case: str, reader: str) -> None:
    make, message = BAD[case]
    image = _image(tmp_path, make())
    if reader == "iter_entries" and case == "bad-manifest":
        pytest.skip("iter_entries lists entries; it does not read the manifest")
    if reader == "read_manifest" and case == "absolute-rootfs-entry":
        pytest.skip("read_manifest stops at the manifest, before the bad entry")
    with pytest.raises(ImageError) as e:
        READERS[reader](image, tmp_path)
    assert message in e.value.message


@pytest.mark.parametrize("verb", ["manifest", "inspect", "validate"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_every_verb_refuses(tmp_path: Path, case: str, verb: str) -> None:
    make, message = BAD[case]
    image = _image(tmp_path, make())
    if verb == "manifest" and case == "absolute-rootfs-entry":
        pytest.skip("`manifest` stops at the manifest, before the bad entry")
    r = acbuild(verb, image)
    assert r.code == 1, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_begin_from_an_invalid_base_is_an_error(tmp_path: Path) -> None:
    make, message = BAD["bad-manifest"]
    (tmp_path / "base.aci").write_bytes(compress(make().data()))
    (tmp_path / "Acfile").write_text("BEGIN ./base.aci\nNAME example.com/x\n")
    r = acbuild("build", tmp_path / "Acfile", "-o", tmp_path / "out.aci")
    assert r.code != 0 and r.code != 70, r.stderr
    assert message in r.stderr


def test_read_checked_names_every_problem() -> None:
    doc = {**M, "name": "Bad", "app": {"user": "", "group": "0"}}
    with pytest.raises(ImageError) as e:
        read_checked(json.dumps(doc).encode(), "x.aci: manifest")
    assert e.value.message == (
        "x.aci: manifest is not valid: name 'Bad' is not an ACIdentifier (lower-case letters, "
        "digits, '-', '.', '_', '~' and '/', starting and ending with a letter or digit); "
        "app user must not be empty")


UNKNOWN: dict[str, Any] = {
    **M,
    "x-top": {"a": 1},
    "labels": [{"name": "os", "value": "linux", "x-label": True}],
    "app": {
        "exec": ["/bin/a"], "user": "0", "group": "0", "x-app": [1],
        "eventHandlers": [{"name": "pre-start", "exec": ["/x"], "x-eh": 1}],
        "environment": [{"name": "A", "value": "1", "x-env": 2}],
        "isolators": [{"name": "os/linux/no-new-privileges", "value": True, "x-iso": 3}],
        "mountPoints": [{"name": "data", "path": "/data", "x-mp": "m"}],
        "ports": [{"name": "www", "protocol": "tcp", "port": 80, "count": 1, "x-port": 4}],
        "userAnnotations": {"weird!": "normal?"},
        "userLabels": {"one!": "two?"},
    },
    "dependencies": [{"imageName": "example.com/base", "x-dep": 5,
                      "labels": [{"name": "os", "value": "linux", "x-dlabel": 6}]}],
    "annotations": [{"name": "a", "value": "b", "x-anno": 7}],
}


def test_unknown_keys_survive_a_round_trip_at_every_level() -> None:
    again = json.loads(to_json_bytes(from_json_bytes(json.dumps(UNKNOWN).encode())))
    assert again == UNKNOWN


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"userAnnotations": {"a": 1}}, "field 'app.userAnnotations.a' must be a string"),
        ({"userLabels": ["a"]}, "field 'app.userLabels' must be an object"),
    ],
)
def test_user_maps_hold_strings(change: dict[str, Any], message: str) -> None:
    doc = {**M, "app": {"exec": ["/a"], "user": "0", "group": "0", **change}}
    with pytest.raises(ImageError) as e:
        from_json_bytes(json.dumps(doc).encode())
    assert message in e.value.message


def test_empty_image_id_is_kept_and_refused() -> None:
    doc = {**M, "dependencies": [{"imageName": "example.com/b", "imageID": ""}]}
    m = from_json_bytes(json.dumps(doc).encode())
    assert m.dependencies[0].image_id == ""
    with pytest.raises(ImageError, match="image ID '' is not"):
        read_checked(json.dumps(doc).encode())


def test_port_count_zero_is_refused_and_absent_count_is_one() -> None:
    port = {"name": "www", "protocol": "tcp", "port": 80}
    app = {"exec": ["/a"], "user": "0", "group": "0"}
    m = from_json_bytes(json.dumps({**M, "app": {**app, "ports": [port]}}).encode())
    assert m.app is not None and m.app.ports[0].count == 1
    zero = json.dumps({**M, "app": {**app, "ports": [{**port, "count": 0}]}}).encode()
    with pytest.raises(ImageError, match="port count 0 must be at least 1"):
        read_checked(zero)


def test_a_conflict_with_the_base_is_reported_at_the_isolator_line(tmp_path: Path) -> None:
    base = {**M, "app": {"exec": ["/a"], "user": "0", "group": "0", "isolators": [
        {"name": "os/linux/seccomp-retain-set", "value": {"set": ["read"]}}]}}
    (tmp_path / "base.aci").write_bytes(
        compress(Tar().file("manifest", json.dumps(base).encode()).dir("rootfs").data()))
    (tmp_path / "Acfile").write_text(
        'BEGIN ./base.aci\nNAME example.com/x\nISOLATOR os/linux/seccomp-remove-set '
        '{"set": ["reboot"]}\n')
    r = acbuild("build", tmp_path / "Acfile", "-o", tmp_path / "out.aci")
    assert r.code == 1, r.stderr
    assert "Acfile:3:1: error: the image manifest is not valid: isolators seccomp-retain-set " \
           "and seccomp-remove-set exclude each other" in r.stderr
