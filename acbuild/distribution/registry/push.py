"""Registries: pushing an OCI image layout (what ``export`` writes) to ``docker://…:TAG``.

Blobs first (each one HEAD-checked, mounted or uploaded by ``upload``), the manifest last,
so the tag never names an image whose blobs are not all there yet. The layout is one this
process has just written, but it is read as carefully as any: digests are checked as the
blobs are hashed on the way, sizes against the descriptors.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acbuild.distribution.registry.credentials import lookup
from acbuild.distribution.registry.pushmemory import PushMemory, memory_path
from acbuild.distribution.registry.reference import Reference, RegistryError
from acbuild.distribution.registry.transport import TransportOptions
from acbuild.distribution.registry.upload import BlobPush, PushSession, Repository
from acbuild.report import Reporter

_MANIFEST_TYPES = frozenset({"application/vnd.oci.image.manifest.v1+json",
                             "application/vnd.docker.distribution.manifest.v2+json"})
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_JSON_LIMIT = 4 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class PushResult:
    reference: Reference
    digest: str  # of the manifest
    blobs: tuple[BlobPush, ...]

    @property
    def sent_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.how == "sent")


def _json_file(path: Path, what: str) -> Any:
    try:
        with path.open("rb") as f:
            data = f.read(_JSON_LIMIT + 1)  # a hostile layout's file may be huge
    except OSError as e:
        raise RegistryError(f"cannot read {what}: {e.strerror or e}") from None
    if len(data) > _JSON_LIMIT:
        raise RegistryError(f"{what} is larger than {_JSON_LIMIT} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RegistryError(f"{what} is not valid JSON") from None


def _blob(layout: Path, desc: Any, what: str) -> tuple[Path, str, int]:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str) or \
            not _DIGEST.fullmatch(desc["digest"]) or not isinstance(desc.get("size"), int):
        raise RegistryError(f"the layout's {what} has no valid sha256 digest and size")
    path = layout / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]
    return path, desc["digest"], desc["size"]


def _check_blob(path: Path, digest: str, size: int, what: str) -> None:
    h = hashlib.sha256()
    count = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                count += len(chunk)
    except OSError as e:
        raise RegistryError(f"cannot read the {what} blob: {e.strerror or e}") from None
    if "sha256:" + h.hexdigest() != digest or count != size:
        raise RegistryError(f"the {what} blob {digest[:19]} in the layout is damaged")


def image_manifest(layout: Path) -> tuple[bytes, str]:
    """The one image manifest of ``layout`` (bytes as stored, checked; media type)."""
    index = _json_file(layout / "index.json", "the layout's index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or len(manifests) != 1:
        raise RegistryError("the layout must hold exactly one image to push")
    path, digest, size = _blob(layout, manifests[0], "manifest")
    media_type = manifests[0].get("mediaType")
    if media_type not in _MANIFEST_TYPES:
        raise RegistryError(f"the layout's manifest has media type {media_type!r}; "
                            "only image manifests are pushed")
    _check_blob(path, digest, size, "manifest")
    return path.read_bytes(), media_type


def check_push_reference(reference: Reference) -> Reference:
    """A push names a tag; the digest is what the push makes, not something to ask for."""
    if reference.digest is not None:
        raise RegistryError(f"{reference.url()}: a push names a tag, not a digest",
                            hint="as in docker://REGISTRY/NAME:TAG; the pushed manifest's "
                                 "digest is printed")
    return reference


def push_layout(repository: Repository, reference: Reference, layout: Path, *,
                memory: PushMemory | None = None,
                reporter: Reporter | None = None) -> PushResult:
    """Push the image of ``layout`` as ``reference`` (its tag); returns what was pushed.
    The registry checks every blob's digest as it arrives (PUT ?digest=); a blob ``memory``
    says was pushed to another repository of the registry is mounted from there."""
    body, media_type = image_manifest(layout)
    manifest = json.loads(body)
    descriptors = [("config", manifest.get("config"))]
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise RegistryError("the layout's manifest has no layers list")
    descriptors += [(f"layer {n}", layer) for n, layer in enumerate(layers, 1)]
    pushed = []
    for what, desc in descriptors:
        path, digest, size = _blob(layout, desc, what)
        mount_from = () if memory is None else \
            memory.sources(reference.registry, digest, reference.repository)
        result = repository.push_blob(path, digest, size, mount_from=mount_from)
        if reporter is not None:
            reporter.detail(f"{what} {digest[7:19]}: {result.how}")
            reporter.progress(f"push {what}", size, size)
        pushed.append(result)
    assert reference.tag is not None  # check_push_reference refused digests
    digest = repository.put_manifest(reference.tag, body, media_type)
    if memory is not None:
        memory.remember(reference.registry, reference.repository, (b.digest for b in pushed))
    return PushResult(reference=reference, digest=digest, blobs=tuple(pushed))


def open_push(reference: Reference, options: TransportOptions,
              environ: Mapping[str, str]) -> PushSession:
    """A session to ``reference``'s registry with the user's stored credentials for it."""
    return PushSession(reference.registry, options, lookup(reference.registry, environ),
                       api_host=reference.api_host)


def check_can_push(reference: Reference, options: TransportOptions,
                   environ: Mapping[str, str]) -> None:
    """Fail now (one line) if ``reference``'s repository cannot be reached for a push."""
    session = open_push(reference, options, environ)
    with session:
        Repository(session, reference.repository).preflight()


def push_image(layout: Path, reference: Reference, options: TransportOptions,
               environ: Mapping[str, str], reporter: Reporter | None = None) -> PushResult:
    """Push ``layout`` as ``reference`` with the user's stored credentials for its registry."""
    memory = PushMemory.load(memory_path(environ))
    session = open_push(reference, options, environ)
    with session:
        result = push_layout(Repository(session, reference.repository), reference, layout,
                             memory=memory, reporter=reporter)
    memory.save()
    return result
