"""Registries: pulling an image — manifest (through an index, for a platform), config and
layers into the blob store, each verified by its digest while it streams.

Accepted: OCI image manifests and indexes, Docker schema 2 manifests and manifest lists.
A manifest is at most 4 MiB, a config 16 MiB; a blob fetched by digest that is stored already
is not asked for again, so a second pull of an image transfers its manifest only (and nothing
at all when it is pinned by digest). Layers download in parallel, as skopeo's do.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import queue
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx

from acbuild.distribution.registry.blobstore import BlobStore
from acbuild.distribution.registry.platform import Platform, parse_platform
from acbuild.distribution.registry.reference import DIGEST, Reference, RegistryError
from acbuild.distribution.registry.transport import Session, body_chunks, read_limited
from acbuild.fs.atomic import atomic_write
from acbuild.numbers import ascii_int
from acbuild.report import Reporter
from acbuild.terminal import escape

# Platform and parse_platform live in .platform (no HTTP client); importable here as before.
__all__ = ["ACCEPT", "Descriptor", "Platform", "PulledImage", "parse_platform", "pull",
           "resolve", "resolve_manifest"]

MANIFEST_LIMIT = 4 << 20
CONFIG_LIMIT = 16 << 20
MAX_LAYERS = 1000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
})
_PROGRESS_STEP = 8 << 20
PARALLEL = 4  # layers downloaded at a time
_DRAIN = 0.1  # seconds between the main thread's looks at the downloads' progress


@dataclass(frozen=True, slots=True, kw_only=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def short(self) -> str:
        return self.digest.split(":", 1)[1][:12]


@dataclass(frozen=True, slots=True, kw_only=True)
class PulledImage:
    """An image whose manifest, config and layers are all in ``store``, verified."""

    reference: Reference
    digest: str  # of the image manifest (the platform's, when the reference names an index)
    index_digest: str | None  # of the index the reference named, if it named one
    manifest: dict[str, Any]
    config: Descriptor
    layers: tuple[Descriptor, ...]
    store: BlobStore
    transferred: int  # blobs downloaded by this pull (config and layers)


def pull(ref: Reference, *, session: Session, store: BlobStore, platform: Platform,
         reporter: Reporter, max_bytes: int | None = None,
         from_index: bool = False, verify_stored: bool = False) -> PulledImage:
    """``max_bytes``: refuse (before downloading) an image whose layers add up to more.
    ``from_index``: ``ref`` pins the image an index's entry for ``platform`` named (so its
    config must be of that platform, as when the index is read here). ``verify_stored``:
    hash the blobs already stored too (re-downloading a damaged one), not just find them;
    unpacking checks them anyway, so only a pull that unpacks nothing asks for it."""
    store.check()
    puller = _Puller(ref, session, store, reporter, verify_stored=verify_stored)
    doc, digest, index_digest = puller.image_manifest(platform)
    config, layers = _parse_manifest(doc, ref)
    total = sum(layer.size for layer in layers)
    if max_bytes is not None and total > max_bytes:
        raise RegistryError(f"{ref}: its layers are {total} bytes, more than the limit of "
                            f"{max_bytes} (--max-image-size)")
    transferred = puller.blobs(config, layers, lambda data: _check_platform(
        data, platform, ref, chosen=from_index or index_digest is not None,
        reporter=reporter))
    return PulledImage(reference=ref, digest=digest, index_digest=index_digest, manifest=doc,
                       config=config, layers=layers, store=store, transferred=transferred)


def resolve(ref: Reference, *, session: Session, store: BlobStore, platform: Platform,
            reporter: Reporter) -> str:
    """The digest of the image manifest ``ref`` names now (for this platform): what a cache
    key is made of. Downloads manifests only."""
    return resolve_manifest(ref, session=session, store=store, platform=platform,
                            reporter=reporter)[0]


def resolve_manifest(ref: Reference, *, session: Session, store: BlobStore,
                     platform: Platform, reporter: Reporter) -> tuple[str, str | None]:
    """resolve, and the digest of the index the platform's image was chosen from (or None)."""
    store.check()
    puller = _Puller(ref, session, store, reporter)
    _, digest, index_digest = puller.image_manifest(platform)
    puller.save()
    return digest, index_digest


class _Puller:
    def __init__(self, ref: Reference, session: Session, store: BlobStore,
                 reporter: Reporter, *, verify_stored: bool = False) -> None:
        self.ref = ref
        self.session = session
        self.store = store
        self.reporter = reporter
        self.stored = store.has_intact if verify_stored else store.has
        self.scope = f"repository:{ref.repository}:pull"
        self.prefix = f"/v2/{ref.repository}"
        # Verified manifests and config not yet in the store: written (and synced) while the
        # layers stream, not before them (save).
        self._unsaved: list[tuple[str, bytes]] = []

    def image_manifest(self, platform: Platform) -> tuple[dict[str, Any], str, str | None]:
        doc, digest = self.manifest(self.ref.manifest_ref)
        index_digest = None
        for depth in range(4):  # three indexes, then the image's manifest
            if _media_type(doc) not in INDEX_TYPES:
                return doc, digest, index_digest
            if depth == 3:
                break
            index_digest = index_digest or digest
            chosen = _choose(doc, platform, self.ref)
            doc, digest = self.manifest(chosen.digest)
        raise RegistryError(f"{self.ref}: image indexes nested more than 3 deep")

    def manifest(self, wanted: str) -> tuple[dict[str, Any], str]:
        """A manifest by tag or digest; by digest it may come from the store."""
        by_digest = bool(DIGEST.fullmatch(wanted))
        if by_digest and self.store.has(wanted, None):
            path = self.store.path(wanted)
            if path.stat().st_size <= MANIFEST_LIMIT:
                data = path.read_bytes()
                if _sha256(data) == wanted:
                    return _decode_manifest(data, self.ref), wanted
        what = f"manifest {escape(wanted)}"
        with self.session.get(f"{self.prefix}/manifests/{wanted}", scope=self.scope,
                              accept=ACCEPT) as response:
            if response.status_code == 404:
                raise RegistryError(f"{self.ref}: no such image: the registry has no "
                                    f"{'manifest' if by_digest else 'tag'} {escape(wanted)!r}")
            self.session.check(response, f"{self.ref.repository}: {what}")
            data = read_limited(response, MANIFEST_LIMIT, f"{self.ref}: {what}")
            claimed = response.headers.get("docker-content-digest")
        digest = _sha256(data)
        if by_digest and digest != wanted:
            raise RegistryError(f"{self.ref}: the registry sent a manifest whose digest is "
                                f"{digest}, not {wanted}")
        if claimed and claimed != digest and not by_digest:
            raise RegistryError(f"{self.ref}: the manifest's digest is {digest}, but the "
                                f"registry says {escape(claimed[:80])}")
        doc = _decode_manifest(data, self.ref)
        self._unsaved.append((digest, data))
        return doc, digest

    def save(self) -> None:
        """Store the verified manifests and config kept in memory so far. Each is synced
        before its rename (a crash leaves it whole or absent), so a pull that returned has
        them on disk; writing them here rather than as each arrives keeps their syncs (ms
        each, tens of ms on a disk others keep busy) out of the way to the layers."""
        while self._unsaved:
            digest, data = self._unsaved.pop(0)
            if not self.store.has(digest, len(data)):
                with atomic_write(self.store.path(digest), mode=0o644) as f:
                    f.write(data)

    def blobs(self, config: Descriptor, layers: tuple[Descriptor, ...],
              check_config: Callable[[bytes | None], None]) -> int:
        """Download the config and the layers the store lacks, up to PARALLEL layers at a time
        (as skopeo does: hashing, writing and the network overlap) besides the config;
        returns how many were downloaded. The config is asked for with the layers rather
        than before them (a round trip less), but no layer's body is read until
        ``check_config`` has run on its bytes (None: unreadable) in this thread, as soon as
        they are verified: it may refuse the image, which then costs no layer's transfer
        (and stores nothing). Only this thread talks to the reporter and writes the
        manifests and the config; the first failure stops the others."""
        if config.size > CONFIG_LIMIT:
            raise RegistryError(f"{self.ref}: config is {config.size} bytes, more than "
                                f"{CONFIG_LIMIT >> 20} MiB")
        wanted = [("config", config)] + [(f"layer {n}/{len(layers)}", layer)
                                         for n, layer in enumerate(layers, 1)]
        missing = []
        for what, desc in wanted:
            if self.stored(desc.digest, desc.size):
                self.reporter.detail(f"{what} {desc.short()}: in the store")
            else:
                self.reporter.info(f"pulling {what} {desc.short()} ({desc.size} bytes)")
                missing.append((what, desc))
        fetching_config = bool(missing) and missing[0][1] is config
        checked = threading.Event()  # open: the layers' bodies may be read
        if not fetching_config:
            try:
                check_config(self.store.path(config.digest).read_bytes())
            except OSError:
                check_config(None)
            checked.set()
            self.save()
        if not missing:
            return 0
        events: queue.SimpleQueue[tuple[str, int, int | None]] = queue.SimpleQueue()
        stop = threading.Event()

        def progress(what: str, done: int, total: int | None) -> None:
            events.put((what, done, total))

        def drain() -> None:
            while not events.empty():
                self.reporter.progress(*events.get())

        # The config has a thread of its own: no layer's request waits for it to arrive.
        workers = min(PARALLEL, len(missing) - fetching_config) + fetching_config
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pull") as pool:
            futures: list[Future[Any]] = (
                [pool.submit(self.fetch_config, config, progress, stop)] if fetching_config
                else [])
            futures += [pool.submit(self.download, desc, what, progress, stop, checked)
                        for what, desc in missing if desc is not config]
            config_future = futures[0] if fetching_config else None
            pending = set(futures)
            try:
                while pending:
                    # Woken by every download that ends, not just a failed one: the layers'
                    # bodies wait for the config's check, which runs only here (waking on
                    # failures alone held every layer up to _DRAIN seconds, ~0.1 s a pull).
                    done, pending = wait(pending, timeout=_DRAIN, return_when=FIRST_COMPLETED)
                    drain()
                    if config_future in done:
                        data = config_future.result()
                        check_config(data)
                        checked.set()
                        self._unsaved.append((config.digest, data))
                        self.save()
                        config_future = None
                    for future in done:
                        future.result()
            except BaseException:
                stop.set()
                for future in pending:
                    future.cancel()
                raise
        drain()
        return len(missing)

    def fetch_config(self, desc: Descriptor,
                     progress: Callable[[str, int, int | None], None],
                     stop: threading.Event) -> bytes:
        """The config's bytes (at most CONFIG_LIMIT) through the digest check, returned rather
        than stored: the main thread checks them before any layer's body is read, then stores
        them while the layers stream."""
        body = io.BytesIO()
        self.download(desc, "config", progress, stop, into=lambda: contextlib.nullcontext(body))
        return body.getvalue()

    def download(self, desc: Descriptor, what: str,
                 progress: Callable[[str, int, int | None], None],
                 stop: threading.Event, gate: threading.Event | None = None,
                 into: Callable[[], contextlib.AbstractContextManager[BinaryIO]] | None = None,
                 ) -> None:
        """GET the blob through the digest check into the store (or ``into()``), in any
        thread; with a ``gate``, its body is read only once the gate is open (and not at all
        if ``stop`` is set first)."""
        shown = f"{self.ref}: {what} ({desc.short()})"
        with self.session.get(f"{self.prefix}/blobs/{desc.digest}", scope=self.scope,
                              cancel=stop) as response:
            if response.status_code == 404:
                raise RegistryError(f"{shown}: the registry has no such blob")
            self.session.check(response, f"{self.ref.repository}: blob {desc.short()}")
            length = ascii_int(response.headers.get("content-length", ""))
            encoded = response.headers.get("content-encoding", "identity") != "identity"
            if length is not None and length != desc.size and not encoded:
                raise RegistryError(f"{shown}: the registry sends {length} bytes, but the "
                                    f"manifest says {desc.size}")
            while gate is not None and not gate.wait(0.05):
                if stop.is_set():
                    raise RegistryError(f"{shown}: stopped")
            with (atomic_write(self.store.path(desc.digest), mode=0o644) if into is None
                  else into()) as f:
                _stream(response, f, desc, shown, lambda done: progress(f"pull {what}", done,
                                                                          desc.size), stop)


def _stream(response: httpx.Response, f: BinaryIO, desc: Descriptor, shown: str,
            progress: Callable[[int], None], stop: threading.Event) -> None:
    h = hashlib.sha256()
    done = reported = 0
    try:
        # Decoded (a Content-Encoding the server adds is the transfer's, not the blob's); the
        # byte count stops a decompression bomb at the manifest's size.
        for chunk in body_chunks(response, shown):
            done += len(chunk)
            if done > desc.size:
                raise RegistryError(f"{shown}: the registry sent more than the "
                                    f"{desc.size} bytes the manifest says")
            if stop.is_set():  # every chunk: a trickling server must not hold up Ctrl-C
                raise RegistryError(f"{shown}: stopped")
            h.update(chunk)
            f.write(chunk)
            if done - reported >= _PROGRESS_STEP:
                progress(done)
                reported = done
    except httpx.HTTPError:
        raise RegistryError(f"{shown}: the transfer broke off after {done} of "
                            f"{desc.size} bytes") from None
    if done != desc.size:
        raise RegistryError(f"{shown}: truncated: {done} of {desc.size} bytes")
    got = f"sha256:{h.hexdigest()}"
    if got != desc.digest:
        raise RegistryError(f"{shown}: digest mismatch: the registry sent data whose "
                            f"digest is {got}, not {desc.digest}")
    progress(done)


def _check_platform(data: bytes | None, platform: Platform, ref: Reference, *,
                    chosen: bool, reporter: Reporter) -> None:
    """The image's own config (``data``; None: unreadable) must be the platform an index
    entry said it was (an index that lies is refused); an image named directly may be of
    another platform: a warning, since a RUN on it would fail far from the cause."""
    if data is None:
        return  # the converter reads the config again and says what is wrong with it
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return  # as above
    if not isinstance(doc, dict):
        return
    have = Platform(os=str(doc.get("os") or "?"), architecture=str(doc.get("architecture")
                                                                    or "?"),
                    variant=str(doc["variant"]) if doc.get("variant") else None)
    if (have.os, have.architecture) == (platform.os, platform.architecture) and (
            platform.variant is None or have.variant in (None, platform.variant)):
        return
    if chosen:
        raise RegistryError(f"{ref}: the index's entry for {platform} is an image for "
                            f"{escape(str(have))}")
    reporter.warning(f"{ref} is an image for {escape(str(have))}, not {platform}: its programs "
                     "may not run here")


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _decode_manifest(data: bytes, ref: Reference) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RegistryError(f"{ref}: the manifest is not valid JSON") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{ref}: the manifest is not a JSON object")
    if doc.get("schemaVersion") == 1:
        raise RegistryError(f"{ref}: Docker schema 1 manifests are not supported "
                            "(deprecated since 2017; push the image again with a newer tool)")
    if doc.get("schemaVersion") != 2:
        raise RegistryError(f"{ref}: unknown manifest schemaVersion "
                            f"{escape(repr(doc.get('schemaVersion'))[:40])}")
    return doc


def _media_type(doc: dict[str, Any]) -> str:
    media = doc.get("mediaType")
    if isinstance(media, str) and media:
        return media
    return OCI_INDEX if "manifests" in doc and "layers" not in doc else OCI_MANIFEST


def _descriptor(value: Any, where: str, ref: Reference) -> Descriptor:
    if not isinstance(value, dict):
        raise RegistryError(f"{ref}: manifest: {where} is not an object")
    digest, size, media = value.get("digest"), value.get("size"), value.get("mediaType", "")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise RegistryError(f"{ref}: manifest: {where} has no sha256 digest "
                            f"({escape(repr(digest)[:80])})")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{ref}: manifest: {where} has no valid size")
    if not isinstance(media, str):
        raise RegistryError(f"{ref}: manifest: {where} has a mediaType that is not a string")
    return Descriptor(media_type=media, digest=digest, size=size)


def _parse_manifest(doc: dict[str, Any], ref: Reference) -> tuple[Descriptor,
                                                                   tuple[Descriptor, ...]]:
    media = _media_type(doc)
    if media not in MANIFEST_TYPES:
        raise RegistryError(f"{ref}: {escape(media[:100])!r} is not an image manifest")
    config = _descriptor(doc.get("config"), "config", ref)
    raw = doc.get("layers")
    if not isinstance(raw, list):
        raise RegistryError(f"{ref}: manifest: layers is not a list")
    if len(raw) > MAX_LAYERS:
        raise RegistryError(f"{ref}: manifest: {len(raw)} layers, more than {MAX_LAYERS}")
    layers = tuple(_descriptor(d, f"layer {n}", ref) for n, d in enumerate(raw, 1))
    for n, layer in enumerate(layers, 1):
        if layer.media_type not in LAYER_TYPES:
            kind = "foreign (non-distributable)" if "foreign" in layer.media_type or \
                "nondistributable" in layer.media_type else "unsupported"
            raise RegistryError(f"{ref}: layer {n} has the {kind} media type "
                                f"{escape(layer.media_type[:100])!r}")
    return config, layers


def _choose(index: dict[str, Any], platform: Platform, ref: Reference) -> Descriptor:
    raw = index.get("manifests")
    if not isinstance(raw, list) or not raw:
        raise RegistryError(f"{ref}: the image index lists no manifests")
    found: list[tuple[Descriptor, dict[str, Any]]] = []
    for n, entry in enumerate(raw[:MAX_LAYERS], 1):
        desc = _descriptor(entry, f"index entry {n}", ref)
        plat = entry.get("platform") if isinstance(entry, dict) else None
        found.append((desc, plat if isinstance(plat, dict) else {}))
    matches = [(d, p) for d, p in found
               if p.get("os") == platform.os and p.get("architecture") == platform.architecture]
    if platform.variant is not None:
        matches = [(d, p) for d, p in matches if p.get("variant") == platform.variant]
    if not matches:
        have = ", ".join(sorted({"/".join(str(p.get(k)) for k in ("os", "architecture", "variant")
                                          if p.get(k)) or "?" for _, p in found}))
        raise RegistryError(f"{ref}: no image for {platform}; the index has: {escape(have)}",
                            hint="choose one with --platform OS/ARCH[/VARIANT]")
    return matches[0][0]
