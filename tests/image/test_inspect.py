"""inspect: one pass gives the image ID, sizes, counts and the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from acbuild.errors import ImageError
from acbuild.image.aci import image_id
from acbuild.image.inspect import file_tree, summarize
from tests.support.hostile import Tar, aci, compress


def test_summarize(tmp_path: Path) -> None:
    t = aci().dir("rootfs/bin").file("rootfs/bin/a", b"x" * 100)
    tar = t.hardlink("rootfs/bin/b", "rootfs/bin/a").symlink("rootfs/sh", "/bin/a").data()
    image = tmp_path / "x.aci"
    image.write_bytes(compress(tar))
    s = summarize(image)
    assert s.image_id == "sha512-" + hashlib.sha512(tar).hexdigest() == image_id(image)
    assert s.compressed_size == image.stat().st_size
    assert s.uncompressed_size == len(tar)
    assert (s.entry_count, s.file_count) == (4, 1)
    assert s.manifest.name == "example.com/test"
    assert s.entries == ()
    assert file_tree(image) == (("/bin/", 0), ("/bin/a", 100), ("/bin/b", 0), ("/sh", 0))


def test_summarize_errors(tmp_path: Path) -> None:
    image = tmp_path / "x.aci"
    image.write_bytes(compress(Tar().dir("rootfs").data()))
    with pytest.raises(ImageError, match="not an ACI: it has no manifest"):
        summarize(image)
    data = compress(aci().file("rootfs/a", bytes(range(256)) * 100).data())
    image.write_bytes(data[:-30])
    with pytest.raises(ImageError, match="archive is truncated"):
        summarize(image)


def test_manifest_facts_show_every_field() -> None:
    from acbuild.image.inspect import manifest_facts
    from acbuild.image.manifest import from_json_bytes
    from tests.image.test_readers import UNKNOWN

    doc = json.loads(json.dumps(UNKNOWN))
    doc["app"].update(supplementaryGIDs=[10, 20], workingDirectory="/srv")
    doc["app"]["mountPoints"][0]["readOnly"] = True
    doc["app"]["ports"][0].update(count=3, socketActivated=True)
    doc["dependencies"][0].update(imageID="sha512-" + "a" * 32, size=1024)
    doc["pathWhitelist"] = ["/bin/sh", "/etc"]
    facts = manifest_facts(from_json_bytes(json.dumps(doc).encode()))
    assert facts == [
        ("acVersion", "0.8.11"),
        ("label os", 'linux {"x-label": true}'),
        ("exec", "/bin/a"),
        ("user:group", "0:0"),
        ("supplementary GIDs", "10 20"),
        ("working directory", "/srv"),
        ("env A", '1 {"x-env": 2}'),
        ("event pre-start", '/x {"x-eh": 1}'),
        ("isolator os/linux/no-new-privileges", 'true {"x-iso": 3}'),
        ("mount data", '/data (read-only) {"x-mp": "m"}'),
        ("port www", 'tcp/80-82 (count 3) socket-activated {"x-port": 4}'),
        ("app userAnnotations", '{"weird!":"normal?"}'),
        ("app userLabels", '{"one!":"two?"}'),
        ("app x-app", "[1]"),
        ("dependency 0", "example.com/base, os=linux, imageID sha512-" + "a" * 32
         + ', size 1024 {"x-dep": 5}'),
        ("path whitelist", "/bin/sh"),
        ("path whitelist", "/etc"),
        ("annotation a", 'b {"x-anno": 7}'),
        ("x-top", '{"a":1}'),
    ]


def test_inspect_cli_escapes_control_characters(tmp_path: Path) -> None:
    from tests.support.cli import acbuild
    from tests.support.hostile import MINIMAL_MANIFEST

    doc = {**MINIMAL_MANIFEST, "annotations": [{"name": "a", "value": "x\x1b[31my"}]}
    image = tmp_path / "x.aci"
    image.write_bytes(compress(aci(doc).data()))
    r = acbuild("inspect", "--no-files", image)
    assert r.code == 0, r.stderr
    assert "\x1b" not in r.stdout and "x\\x1b[31my" in r.stdout
