"""The remote step cache's layout: how one step-cache entry is an OCI artifact in a registry.

Pure encoding and decoding; the transfers are in ``remote``. One entry is one OCI image
manifest, tagged ``step-<hex of the step key>`` in the cache repository:

- config: a small JSON document (media type ``CONFIG_TYPE``) with the step key, the ACI
  manifest after the step and the diff_id of the tree layer;
- one layer: the rootfs after the step as a deterministic tar+gzip (owners, modes, mtimes,
  xattrs, hardlinks, device nodes as tar entries), content-addressed, so steps that share a
  tree (manifest-only steps point at the last rootfs step) share the blob.

A tag a step, rather than one index listing every key: a lookup is one manifest GET, and
runners pushing different steps at once never overwrite each other's entries (a registry
has no compare-and-swap for a shared index, so a read-modify-write would lose some).
What comes back is hostile until checked: every field is validated here, and the blobs are
verified by digest as they stream (``remote``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from acbuild.errors import AcbuildError
from acbuild.interop.export import MANIFEST_TYPE, Descriptor, canonical

ARTIFACT_TYPE = "application/vnd.acbuild-py.step.v1"
CONFIG_TYPE = "application/vnd.acbuild-py.step.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
KEY_ANNOTATION = "dev.acbuild-py.step-key"
FORMAT = "acbuild-py remote step cache 1"
TAG_PREFIX = "step-"
# An entry's manifest and config are a few KiB (the config holds an ACI manifest); anything
# much larger is not one of ours.
DOCUMENT_LIMIT = 4 << 20

# fullmatch only: "$" would also match before a trailing newline, which would reach a URL
_KEY = re.compile(r"sha256:[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class RemoteEntryError(AcbuildError):
    """A remote cache entry that is not what it must be: the step is a miss, not a failure."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryConfig:
    key: str
    manifest_json: bytes  # the ACI manifest after the step
    diff_id: str  # sha256 of the uncompressed tree tar


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryManifest:
    config: Descriptor
    layer: Descriptor


def step_tag(key: str) -> str:
    """The tag of a step's entry; step keys are sha256 digests, so 69 characters of
    ``[a-z0-9-]`` (a tag may have 128)."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"not a step key: {key!r}")
    return TAG_PREFIX + key.split(":", 1)[1]


def encode_config(config: EntryConfig) -> bytes:
    return canonical({"format": FORMAT, "key": config.key,
                      "manifest": config.manifest_json.decode("utf-8"),
                      "diff_id": config.diff_id})


def encode_manifest(key: str, entry: EntryManifest) -> bytes:
    return canonical({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": ARTIFACT_TYPE,
        "config": entry.config.to_json(), "layers": [entry.layer.to_json()],
        "annotations": {KEY_ANNOTATION: key},
    })


def _document(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > DOCUMENT_LIMIT:
        raise RemoteEntryError(f"{what} is larger than {DOCUMENT_LIMIT} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RemoteEntryError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise RemoteEntryError(f"{what} is not a JSON object")
    return doc


def _descriptor(value: Any, media_type: str, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise RemoteEntryError(f"{what} is not a descriptor")
    digest, size = value.get("digest"), value.get("size")
    if value.get("mediaType") != media_type:
        raise RemoteEntryError(f"{what} has media type {value.get('mediaType')!r}, "
                               f"expected {media_type}")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise RemoteEntryError(f"{what} has no valid sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RemoteEntryError(f"{what} has no valid size")
    return Descriptor(media_type=media_type, digest=digest, size=size)


def decode_manifest(raw: bytes, key: str) -> EntryManifest:
    """The entry manifest of step ``key``; RemoteEntryError when it is anything else."""
    doc = _document(raw, "cache entry manifest")
    if doc.get("mediaType") != MANIFEST_TYPE or doc.get("schemaVersion") != 2:
        raise RemoteEntryError("cache entry manifest is not an OCI image manifest")
    if doc.get("artifactType") != ARTIFACT_TYPE:
        raise RemoteEntryError("cache entry manifest is not an acbuild-py step entry")
    annotations = doc.get("annotations")
    if not isinstance(annotations, dict) or annotations.get(KEY_ANNOTATION) != key:
        raise RemoteEntryError("cache entry manifest is for another step key")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) != 1:
        raise RemoteEntryError("cache entry manifest must have exactly one layer")
    return EntryManifest(config=_descriptor(doc.get("config"), CONFIG_TYPE, "its config"),
                         layer=_descriptor(layers[0], LAYER_TYPE, "its layer"))


def decode_config(raw: bytes, key: str) -> EntryConfig:
    """The config of step ``key``'s entry (already verified by digest)."""
    doc = _document(raw, "cache entry config")
    if doc.get("format") != FORMAT:
        raise RemoteEntryError(f"cache entry config has format {doc.get('format')!r}, "
                               f"expected {FORMAT!r}")
    if doc.get("key") != key:
        raise RemoteEntryError("cache entry config is for another step key")
    manifest, diff_id = doc.get("manifest"), doc.get("diff_id")
    if not isinstance(manifest, str):
        raise RemoteEntryError("cache entry config has no manifest")
    if not isinstance(diff_id, str) or not _DIGEST.fullmatch(diff_id):
        raise RemoteEntryError("cache entry config has no valid diff_id")
    try:
        manifest_json = manifest.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, written as a \u escape
        raise RemoteEntryError("cache entry config has a manifest that is not UTF-8") from None
    return EntryConfig(key=key, manifest_json=manifest_json, diff_id=diff_id)
