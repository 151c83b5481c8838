"""The remote step cache's artifact layout: what is written decodes to itself, and anything
else a registry could serve instead is refused with a RemoteEntryError (a miss)."""

from __future__ import annotations

import json

import pytest

from acbuild.cache.remotelayout import (
    ARTIFACT_TYPE,
    CONFIG_TYPE,
    DOCUMENT_LIMIT,
    LAYER_TYPE,
    EntryConfig,
    EntryManifest,
    RemoteEntryError,
    decode_config,
    decode_manifest,
    encode_config,
    encode_manifest,
    step_tag,
)
from acbuild.interop.export import Descriptor

KEY = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
ENTRY = EntryManifest(
    config=Descriptor(media_type=CONFIG_TYPE, digest="sha256:" + "01" * 32, size=120),
    layer=Descriptor(media_type=LAYER_TYPE, digest="sha256:" + "02" * 32, size=4096),
)
CONFIG = EntryConfig(key=KEY, manifest_json=b'{"acKind":"ImageManifest","name":"a.com/\xc3\xa9"}',
                     diff_id="sha256:" + "03" * 32)


def test_tag_is_the_key_hex_and_a_valid_tag() -> None:
    tag = step_tag(KEY)
    assert tag == "step-" + "ab" * 32
    assert len(tag) <= 128
    with pytest.raises(ValueError):
        step_tag("sha256:../../etc")
    with pytest.raises(ValueError):
        step_tag(KEY + "\n")


def test_manifest_and_config_round_trip() -> None:
    raw = encode_manifest(KEY, ENTRY)
    doc = json.loads(raw)
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert decode_manifest(raw, KEY) == ENTRY
    assert decode_config(encode_config(CONFIG), KEY) == CONFIG


def test_encoding_is_canonical() -> None:
    assert encode_manifest(KEY, ENTRY) == encode_manifest(KEY, ENTRY)
    assert b" " not in encode_manifest(KEY, ENTRY)


def test_an_entry_for_another_key_is_refused() -> None:
    with pytest.raises(RemoteEntryError, match="another step key"):
        decode_manifest(encode_manifest(OTHER, ENTRY), KEY)
    with pytest.raises(RemoteEntryError, match="another step key"):
        decode_config(encode_config(CONFIG), OTHER)


def _manifest(**changes: object) -> bytes:
    doc = json.loads(encode_manifest(KEY, ENTRY))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("raw", "message"), [
    (b"\xff", "not valid JSON"),
    (b"[1]", "not a JSON object"),
    (b"[" * 100000, "not valid JSON"),
    (b" " * (DOCUMENT_LIMIT + 1), "larger than"),
    (_manifest(mediaType="application/vnd.docker.distribution.manifest.v2+json"),
     "not an OCI image manifest"),
    (_manifest(artifactType="application/vnd.example"), "not an acbuild-py step entry"),
    (_manifest(layers=[]), "exactly one layer"),
    (_manifest(layers=[ENTRY.layer.to_json()] * 2), "exactly one layer"),
    (_manifest(config={**ENTRY.config.to_json(), "digest": "sha256:../x"}), "digest"),
    (_manifest(config={**ENTRY.config.to_json(), "size": -1}), "size"),
    (_manifest(config={**ENTRY.config.to_json(), "size": True}), "size"),
    (_manifest(config="x"), "not a descriptor"),
    # "$" of a regex would accept the newline, and it would reach the blob's URL
    (_manifest(config={**ENTRY.config.to_json(), "digest": "sha256:" + "a" * 64 + "\n"}),
     "digest"),
    (_manifest(layers=[{**ENTRY.layer.to_json(), "mediaType": "text/plain"}]), "media type"),
    (_manifest(annotations=None), "another step key"),
])
def test_hostile_manifests_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(RemoteEntryError, match=message):
        decode_manifest(raw, KEY)


def _config(**changes: object) -> bytes:
    doc = json.loads(encode_config(CONFIG))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("raw", "message"), [
    (_config(format="acbuild-py remote step cache 0"), "format"),
    (_config(manifest=None), "no manifest"),
    (_config(manifest="\ud800"), "not UTF-8"),
    (_config(diff_id="md5:00"), "diff_id"),
    (_config(diff_id="sha256:" + "0" * 64 + "\n"), "diff_id"),
])
def test_hostile_configs_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(RemoteEntryError, match=message):
        decode_config(raw, KEY)
