"""Convert (input): reading Docker and OCI images — OCI layouts, oci-archives, docker-archives.

Finds the image asked for (index, manifest, config), names its layers, and opens each layer
as a stream whose digests are checked as it is read (the streams and stores: ``ocistream``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from acbuild.errors import ConvertError, ImageError
from acbuild.image.compression import open_decompressed
from acbuild.image.manifest import lone_surrogate
from acbuild.interop.hostplatform import host_platform
from acbuild.interop.ociconfig import check_config
from acbuild.interop.ocistream import (
    CHUNK,
    BlobStore,
    DigestReader,
    DirStore,
    EndedTar,
    TarStore,
    drain,
    norm_name,
)

__all__ = [  # the streams and stores moved to ocistream; still importable from here
    "INDEX_TYPES", "JSON_LIMIT", "KINDS", "MANIFEST_TYPES", "REF_ANNOTATION", "BlobStore",
    "DigestReader", "DirStore", "EndedTar", "ImageSource", "Layer", "SourceKind", "TarStore",
    "blob_path", "detect_kind", "diff_ids", "drain", "host_platform", "items", "obj",
    "open_source", "read_json", "source_from_manifest",
]

# "registry": pulled from a registry into the blob store (never a local input kind)
SourceKind = Literal["docker-archive", "oci", "oci-archive", "registry"]
KINDS: tuple[SourceKind, ...] = ("docker-archive", "oci", "oci-archive")

REF_ANNOTATION = "org.opencontainers.image.ref.name"
INDEX_TYPES = frozenset({
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
})
MANIFEST_TYPES = frozenset({
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
})
# JSON documents (index, manifest, config) are small; a larger one is hostile, not an image.
JSON_LIMIT = 16 << 20
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Layer:
    """One layer: where its blob is, and the digests it must have (None: not known)."""

    index: int  # 1-based, bottom first
    location: str  # path in the layout, or member name in the archive
    digest: str | None  # of the blob as stored (OCI manifests)
    diff_id: str | None  # of the uncompressed tar (image config rootfs.diff_ids)
    size: int | None
    media_type: str = ""

    def short(self) -> str:
        d = self.digest or self.diff_id or self.location
        return d.split(":", 1)[-1][:12]


@dataclass(slots=True, kw_only=True)
class ImageSource:
    """A chosen image of a Docker or OCI input. Close it (or use ``with``) when done."""

    kind: SourceKind
    path: Path
    repository: str  # e.g. "busybox" or "quay.io/coreos/etcd"; may be a file stem
    tag: str
    config: Mapping[str, Any]
    image_id: str  # the config digest, as Docker names images
    layers: tuple[Layer, ...]
    store: BlobStore = field(repr=False)

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    @contextmanager
    def open_layer(
        self, layer: Layer, progress: Callable[[int], None] | None = None
    ) -> Iterator[BinaryIO]:
        """The layer's uncompressed tar, streamed; digests and size are checked at the end.

        If the reader fails (corrupt data, hostile entry), a wrong digest is the better
        explanation and is reported instead.
        """
        try:
            raw = self.store.open(layer.location)
        except ConvertError:
            raise
        except ImageError as e:
            raise ConvertError(f"layer {layer.index} ({layer.short()}): cannot open: {e}") from None
        except OSError as e:
            raise ConvertError(f"layer {layer.index} ({layer.short()}): cannot open "
                               f"{layer.location}: {e.strerror or e}") from None
        with raw:
            blob = DigestReader(raw, layer.digest, progress)
            try:
                try:
                    tar = DigestReader(open_decompressed(blob),  # type: ignore[arg-type]
                                       layer.diff_id)
                    yield io.BufferedReader(EndedTar(tar), CHUNK)
                    drain(tar)
                except ImageError as e:
                    _blame_digest(layer, blob)
                    raise ConvertError(f"layer {layer.index} ({layer.short()}): "
                                       f"{e.message}") from None
                drain(blob)
                _check(layer, blob, tar)
            except CorruptBlob as e:
                if self.store.discard(layer.location):
                    raise ConvertError(f"the stored copy of {e.message}",
                                       hint="it is removed from the store: run the command "
                                            "again to download it") from None
                raise


class CorruptBlob(ConvertError):
    """A layer's blob is not the bytes its digest or size names (rather than an image whose
    parts disagree): another copy of it may be good."""


def _blame_digest(layer: Layer, blob: DigestReader) -> None:
    if layer.digest is None:
        return
    with suppress(OSError, ImageError):
        drain(blob)
        if not blob.matches():
            raise CorruptBlob(
                f"layer {layer.index} is corrupt: digest {blob.digest()}, "
                f"expected {layer.digest}"
            )


def _check(layer: Layer, blob: DigestReader, tar: DigestReader) -> None:
    if not blob.matches():
        raise CorruptBlob(
            f"layer {layer.index} is corrupt: digest {blob.digest()}, expected {layer.digest}"
        )
    if layer.size is not None and blob.count != layer.size:
        raise CorruptBlob(
            f"layer {layer.index} is corrupt: {blob.count} bytes, manifest says {layer.size}"
        )
    if not tar.matches():
        raise ConvertError(
            f"layer {layer.index} is corrupt: uncompressed digest {tar.digest()}, "
            f"expected diff_id {layer.diff_id}"
        )


# ---- JSON documents ---------------------------------------------------------------------


def read_json(store: BlobStore, name: str, what: str, digest: str | None = None) -> Any:
    """A small JSON document, its digest checked when one is known."""
    try:
        with store.open(name) as f:
            data = f.read(JSON_LIMIT + 1)
    except ConvertError:
        raise
    except OSError as e:
        raise ConvertError(f"{what}: cannot read {name}: {e.strerror or e}") from None
    if len(data) > JSON_LIMIT:
        raise ConvertError(f"{what}: {name} is larger than {JSON_LIMIT >> 20} MiB")
    if digest is not None:
        alg, _, hexdigest = digest.partition(":")
        if hashlib.new(alg, data).hexdigest() != hexdigest:
            raise ConvertError(f"{what} is corrupt: its digest is not {digest}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError(f"{what}: {name} is not valid JSON: {e}") from None
    except RecursionError:
        raise ConvertError(f"{what}: {name} is nested too deeply") from None
    if (where := lone_surrogate(doc)) is not None:
        raise ConvertError(f"{what}: {name} has a lone surrogate in {where}: not Unicode text")
    return doc


def blob_path(digest: Any, what: str) -> str:
    """``blobs/<alg>/<hex>`` for a digest that has been checked to be one (not a path)."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ConvertError(f"{what}: invalid digest {digest!r}")
    alg, _, hexdigest = digest.partition(":")
    return f"blobs/{alg}/{hexdigest}"


def obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConvertError(f"{what}: expected a JSON object")
    return value


def items(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConvertError(f"{what}: expected a JSON array")
    return value


def diff_ids(config: Mapping[str, Any], count: int, what: str) -> list[str | None]:
    rootfs = obj(config.get("rootfs") or {}, f"{what}: rootfs")
    ids = items(rootfs.get("diff_ids"), f"{what}: rootfs.diff_ids")
    if len(ids) != count:
        raise ConvertError(f"{what}: {count} layers but {len(ids)} diff_ids in the config")
    for d in ids:
        blob_path(d, f"{what}: diff_id")
    return list(ids)


def open_source(kind: SourceKind, path: Path, ref: str | None) -> ImageSource:
    """The image ``ref`` (NAME[:TAG] or an OCI ref name; None: the only one) of an input."""
    path = Path(path)
    if kind == "oci":
        if not path.is_dir():
            raise ConvertError(f"{path}: not an OCI image layout directory")
        return _from_layout(kind, path, DirStore(path), ref)
    if not path.exists():
        raise ConvertError(f"{path}: no such archive")
    store = TarStore(path)  # refuses anything but a regular file, as it opens it
    try:
        if kind == "oci-archive":
            return _from_layout(kind, path, store, ref)
        if kind == "docker-archive":
            return _from_docker(path, store, ref)
    except BaseException:
        store.close()
        raise
    raise ConvertError(f"unknown input kind {kind!r}; expected one of {', '.join(KINDS)}")


def detect_kind(path: Path) -> SourceKind:
    """What an input is: a layout directory, or an archive holding index.json or manifest.json."""
    if path.is_dir():
        return "oci"
    if not path.exists():
        raise ConvertError(f"{path}: no such file or directory")
    store = TarStore(path)
    try:
        if store.has("manifest.json"):
            return "docker-archive"
        if store.has("index.json"):
            return "oci-archive"
    finally:
        store.close()
    raise ConvertError(
        f"{path}: neither a docker-archive (no manifest.json) nor an oci-archive (no index.json)"
    )


# ---- choosing the image -----------------------------------------------------------------


def _split_ref(ref: str) -> tuple[str, str]:
    """NAME[:TAG] → (name, tag); a colon inside a registry host:port is not a tag."""
    name, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:
        return ref, "latest"
    return name, tag


def _short_repo(name: str) -> str:
    """Docker's implicit parts dropped: ``docker.io/library/busybox`` → ``busybox``."""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        name = name.removeprefix(prefix)
    return name.removeprefix("library/")


def _choose(refs: dict[str, Any], ref: str | None, path: Path, noun: str) -> tuple[str, Any]:
    if ref is None:
        if len(refs) == 1:
            return next(iter(refs.items()))
        listing = ", ".join(sorted(refs)) or "(none)"
        raise ConvertError(
            f"{path} holds {len(refs)} images; choose one with --image: {listing}"
            if refs else f"{path} holds no image"
        )
    if ref in refs:
        return ref, refs[ref]
    name, tag = _split_ref(ref)
    wanted = f"{_short_repo(name)}:{tag}"
    for key, value in refs.items():
        if ":" in key and "/" not in key.rpartition(":")[2]:
            kname, ktag = _split_ref(key)
            if f"{_short_repo(kname)}:{ktag}" == wanted:
                return key, value
    listing = ", ".join(sorted(refs)) or "(none)"
    raise ConvertError(f"{path}: no {noun} {ref!r}; it holds: {listing}")


def _from_docker(path: Path, store: TarStore, ref: str | None) -> ImageSource:
    entries = items(read_json(store, "manifest.json", f"{path}: manifest.json"), "manifest.json")
    refs: dict[str, dict[str, Any]] = {}
    for n, raw in enumerate(entries):
        entry = obj(raw, f"manifest.json[{n}]")
        tags = items(entry.get("RepoTags"), f"manifest.json[{n}].RepoTags") or [f"image-{n + 1}"]
        for t in tags:
            refs[str(t)] = entry
    key, entry = _choose(refs, ref, path, "image")
    config_name = str(entry.get("Config", ""))
    config_digest = _docker_config_digest(config_name)
    config = check_config(read_json(store, config_name, f"{path}: config", config_digest),
                          f"{path}: config")
    names = [str(x) for x in items(entry.get("Layers"), "manifest.json: Layers")]
    ids = diff_ids(config, len(names), f"{path}: {config_name}")
    layers = tuple(
        Layer(index=i + 1, location=name, digest=_digest_of_blob_name(name), diff_id=diff,
              size=None)
        for i, (name, diff) in enumerate(zip(names, ids, strict=True))
    )
    repo, tag = _split_ref(key) if not key.startswith("image-") else (path.stem, "latest")
    return ImageSource(kind="docker-archive", path=path, repository=_short_repo(repo), tag=tag,
                       config=config, image_id=config_digest or config_name, layers=layers,
                       store=store)


def _docker_config_digest(name: str) -> str | None:
    """Docker names a config by its sha256 (``<hex>.json``, or a blob path in newer saves)."""
    m = re.fullmatch(r"(?:blobs/sha256/)?([a-f0-9]{64})(?:\.json)?", name)
    return f"sha256:{m.group(1)}" if m else None


def _digest_of_blob_name(name: str) -> str | None:
    m = re.fullmatch(r"blobs/(sha256)/([a-f0-9]{64})", norm_name(name))
    return f"{m.group(1)}:{m.group(2)}" if m else None


def _from_layout(kind: SourceKind, path: Path, store: BlobStore, ref: str | None) -> ImageSource:
    layout = obj(read_json(store, "oci-layout", f"{path}: oci-layout"), "oci-layout")
    if not str(layout.get("imageLayoutVersion", "")).startswith("1."):
        raise ConvertError(f"{path}: unsupported OCI layout version "
                           f"{layout.get('imageLayoutVersion')!r}")
    index = obj(read_json(store, "index.json", f"{path}: index.json"), "index.json")
    descs = [obj(d, "index.json: manifests[]") for d in items(index.get("manifests"), "index")]
    refs: dict[str, dict[str, Any]] = {}
    for n, d in enumerate(descs):
        annotations = obj(d.get("annotations") or {}, "annotations")
        refs[str(annotations.get(REF_ANNOTATION, f"@{d.get('digest', n)}"))] = d
    key, desc = _choose(refs, ref, path, "image reference")
    manifest = _image_manifest(store, desc, path)
    stem = path.stem.removesuffix(".oci")
    if key.startswith("@"):
        repo, tag = stem, "latest"  # no ref name: name it after the file
    else:
        repo, tag = _split_ref(key) if ":" in key else (stem, key)
    return source_from_manifest(kind, path, store, manifest, repository=_short_repo(repo),
                                tag=tag)


def source_from_manifest(kind: SourceKind, path: Path, store: BlobStore,
                         manifest: Mapping[str, Any], *, repository: str,
                         tag: str) -> ImageSource:
    """The image an OCI or Docker schema 2 image manifest describes, its blobs in ``store``
    under ``blobs/<alg>/<hex>`` (a layout, an archive, or the registry blob store)."""
    config_desc = obj(manifest.get("config"), "manifest: config")
    config_digest = config_desc.get("digest")
    config = check_config(read_json(store, blob_path(config_digest, "config"),
                                    f"{path}: config", config_digest), f"{path}: config")
    layer_descs = [obj(d, "manifest: layers[]") for d in items(manifest.get("layers"), "layers")]
    ids = diff_ids(config, len(layer_descs), f"{path}: config")
    layers = tuple(
        Layer(index=i + 1, location=blob_path(d.get("digest"), f"layer {i + 1}"),
              digest=d["digest"], diff_id=diff, size=_size(d), media_type=str(d.get("mediaType")))
        for i, (d, diff) in enumerate(zip(layer_descs, ids, strict=True))
    )
    return ImageSource(kind=kind, path=path, repository=repository, tag=tag,
                       config=config, image_id=str(config_digest), layers=layers, store=store)


def _size(desc: Mapping[str, Any]) -> int | None:
    size = desc.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _image_manifest(store: BlobStore, desc: dict[str, Any], path: Path) -> dict[str, Any]:
    """Follow image indexes (multi-platform) down to the manifest for this host."""
    for _ in range(4):
        digest = desc.get("digest")
        doc = obj(read_json(store, blob_path(digest, "manifest"), f"{path}: manifest", digest),
                  "manifest")
        media = str(doc.get("mediaType") or desc.get("mediaType") or "")
        if media not in INDEX_TYPES and "manifests" not in doc:
            return doc
        desc = _for_host(doc, path)
    raise ConvertError(f"{path}: image indexes nested too deep")


def _for_host(index: dict[str, Any], path: Path) -> dict[str, Any]:
    descs = [obj(d, "index: manifests[]") for d in items(index.get("manifests"), "manifests")]
    os_name, arch = host_platform()
    platforms = [obj(d.get("platform") or {}, "index: platform") for d in descs]
    found = [d for d, p in zip(descs, platforms, strict=True)
             if p.get("os", os_name) == os_name and p.get("architecture", arch) == arch]
    if len(descs) == 1:
        return descs[0]
    if not found:
        have = ", ".join(sorted(f"{p.get('os')}/{p.get('architecture')}" for p in platforms))
        raise ConvertError(f"{path}: no image for {os_name}/{arch}; it has: {have}")
    return found[0]
