"""Bases from registries: ``docker://`` references pulled into the blob store and opened as
Docker/OCI images for the converter (the glue between acbuild.distribution.registry and
acbuild.interop, which do not know each other).

The signature policy is rkt's: a registry image carries no AppC signature, so it is refused
unless it is pinned by digest — the digest then verifies the manifest, and the manifest every
config and layer — or --insecure-skip-verify is given.
"""

from __future__ import annotations

import contextlib
import os
import threading  # loaded anyway: acbuild.signals
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from acbuild.distribution.imagestore import Entry, ImageStore
from acbuild.distribution.registry import credentials
from acbuild.distribution.registry.blobstore import BlobStore
from acbuild.distribution.registry.platform import Platform, parse_platform
from acbuild.distribution.registry.reference import (
    DOCKER_HUB,
    Reference,
    RegistryError,
    parse_reference,
)
from acbuild.report import HeldReporter, Reporter
from acbuild.signals import deferred

if TYPE_CHECKING:  # the HTTP client is imported when a docker:// image is pulled, not by
    # every build that imports this module; the converter when one is converted, not by
    # `pull`, whose whole run is about as long as these imports would take
    from acbuild.distribution.registry.pull import PulledImage
    from acbuild.distribution.registry.transport import Session, TransportOptions
    from acbuild.interop.oci import ImageSource


# Tags resolved at once ahead of a build's keys: waits on registries, not work for the CPUs
# that -j counts, so -j 1 has them too; few, since each may start a credential helper.
AHEAD = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryAccess:
    """How to reach registries: the options of the verbs that talk to one."""

    insecure_registries: tuple[str, ...] = ()
    ca_file: Path | None = None
    platform: str | None = None  # OS/ARCH[/VARIANT]; None: the host's
    skip_verify: bool = False
    store_dir: Path | None = None  # the image store; pulled blobs live in <store>/blobs
    environ: Mapping[str, str] | None = field(default=None, repr=False)  # for credentials
    max_bytes: int | None = None  # refuse images whose layers add up to more

    def transport(self) -> TransportOptions:
        from acbuild.distribution.registry.transport import TransportOptions

        return TransportOptions(insecure_registries=self.insecure_registries,
                                ca_file=self.ca_file)

    def target_platform(self) -> Platform:
        from acbuild.interop.hostplatform import host_platform

        if self.platform is not None:
            return parse_platform(self.platform)
        os_name, arch = host_platform()
        return Platform(os=os_name, architecture=arch)

    def blob_store(self) -> BlobStore:
        return BlobStore(ImageStore.locate(self.store_dir, self.environ).root)

    def session(self, ref: Reference, stop: threading.Event | None = None) -> Session:
        """``stop``, once set, ends the session's requests (Session)."""
        from acbuild.distribution.registry.transport import Session

        env = os.environ if self.environ is None else self.environ
        return Session(ref.registry, self.transport(), credentials.lookup(ref.registry, env),
                       api_host=ref.api_host, stop=stop)


def check_policy(ref: Reference, access: RegistryAccess, reporter: Reporter) -> None:
    """rkt's rule for images without an AppC signature: refused unless pinned by digest
    (which is verification) or --insecure-skip-verify."""
    if ref.pinned:
        reporter.info(f"{ref.url()}: pinned by digest: the manifest and every blob are "
                      "checked against it, which is its verification")
    elif access.skip_verify:
        reporter.warning(f"{ref.url()} is not verified: a registry image carries no "
                         "signature and this one is not pinned by digest "
                         "(--insecure-skip-verify)")
    else:
        raise RegistryError(
            f"{ref.url()}: a registry image carries no signature, and this reference is not "
            "pinned by digest",
            hint="pin it (docker://NAME@sha256:DIGEST, which verifies it) or accept it "
                 "unverified with --insecure-skip-verify")


def image_name(ref: Reference) -> str:
    """The repository as the ACI's name: Docker Hub's implicit parts dropped (docker2aci)."""
    if ref.registry == DOCKER_HUB:
        return ref.repository.removeprefix("library/")
    return f"{ref.registry}/{ref.repository}"


def as_source(pulled: PulledImage) -> ImageSource:
    from acbuild.interop.oci import source_from_manifest
    from acbuild.interop.ocistream import KeptBlobs

    ref = pulled.reference
    return source_from_manifest("registry", Path(str(ref)), KeptBlobs(pulled.store.root,
                                                                      holder=pulled.store),
                                pulled.manifest, repository=image_name(ref),
                                tag=ref.tag or (ref.digest or "latest").replace(":", "-"))


class RegistryBases:
    """Resolves and pulls docker:// bases for one build: the digest a reference is keyed by
    is the one pulled, even if the tag moves in between. ``stop``: the build's (BaseLoader.stop),
    which ends every request of its pulls, in any thread, once set."""

    def __init__(self, access: RegistryAccess, stop: threading.Event | None = None) -> None:
        self.access = access
        self._stop = stop
        self._digests: dict[str, Reference] = {}
        # A resolution that failed while keying fails the same way when the step runs: asked
        # again, a refusing registry or a hanging credential helper would cost its time twice.
        self._failed: dict[str, RegistryError] = {}
        self._from_index: set[str] = set()  # references whose image an index chose
        self._held: dict[str, HeldReporter] = {}  # what a resolution ahead said, untold

    def resolve_ahead(self, texts: Sequence[str]) -> None:
        """Resolve ``texts`` (docker:// references), AHEAD at a time: the keys need every
        base's digest before any stage starts, and one after another each resolution
        waited for the one before (a registry that withholds its answer: 60 s each, RR-6).
        What each says, and how it failed, is held until ``identity`` or ``pull`` asks for
        it: the output, and the error a stage reports, are as if it were resolved then.
        Without a stop (nothing could end the threads on Ctrl-C), nothing is done ahead."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._digests and
                t not in self._failed and t not in self._held]
        if self._stop is None or len(todo) <= 1:
            return
        pool = ThreadPoolExecutor(max_workers=min(AHEAD, len(todo)),
                                  thread_name_prefix="acbuild-resolve")
        try:
            wait([pool.submit(self._ahead, text) for text in todo])
        except BaseException:
            # Ctrl-C or SIGTERM in this thread: end the requests before the stack unwinds
            # (a second signal waits until they have ended).
            self._stop.set()
            with deferred():
                pool.shutdown(wait=True)
            raise
        pool.shutdown(wait=True)

    def _ahead(self, text: str) -> None:
        """Another error than a RegistryError is not kept: asked again, it is raised then
        (and what was said before it, said again)."""
        held = HeldReporter()
        with contextlib.suppress(RegistryError):  # kept in _failed, raised when asked
            self._pinned(text, held)
        self._held[text] = held

    def _pinned(self, text: str, reporter: Reporter) -> Reference:
        from acbuild.distribution.registry.pull import resolve_manifest

        if (held := self._held.pop(text, None)) is not None:
            held.tell(reporter)
        if text in self._digests:
            return self._digests[text]
        if text in self._failed:
            raise self._failed[text]
        try:
            ref = parse_reference(text)
            check_policy(ref, self.access, reporter)
            with self.access.session(ref, self._stop) as session:
                digest, index = resolve_manifest(ref, session=session,
                                                 store=self.access.blob_store(),
                                                 platform=self.access.target_platform(),
                                                 reporter=reporter)
        except RegistryError as e:
            self._failed[text] = e
            raise
        if index is not None:
            self._from_index.add(text)
        pinned = Reference(registry=ref.registry, repository=ref.repository, tag=ref.tag,
                           digest=digest)
        self._digests[text] = pinned
        return pinned

    def identity(self, text: str, reporter: Reporter) -> str:
        """What a cache key names this base by: its image manifest's digest, and when an
        index chose it, the platform it was chosen for. An index is trusted only as far as
        the image's own config agrees with the entry, which the pull checks: without the
        platform, a step built from the image for the platform it really is would answer a
        build for another platform whose index lies about it, and skip that check."""
        digest = self._pinned(text, reporter).digest or ""
        if text in self._from_index:
            return f"{digest}@{self.access.target_platform()}"
        return digest

    def pull(self, text: str, reporter: Reporter) -> PulledImage:
        from acbuild.distribution.registry.pull import PulledImage, pull

        ref = self._pinned(text, reporter)
        with self.access.session(ref, self._stop) as session:
            pulled = pull(ref, session=session, store=self.access.blob_store(),
                          platform=self.access.target_platform(), reporter=reporter,
                          max_bytes=self.access.max_bytes, from_index=text in self._from_index)
        # The user's reference (its tag) names the image, not the pin added here.
        original = parse_reference(text)
        return PulledImage(reference=original if original.digest else
                           Reference(registry=ref.registry, repository=ref.repository,
                                     tag=ref.tag, digest=None),
                           digest=pulled.digest, index_digest=pulled.index_digest,
                           manifest=pulled.manifest, config=pulled.config,
                           layers=pulled.layers, store=pulled.store,
                           transferred=pulled.transferred)

    def open_source(self, text: str, reporter: Reporter) -> ImageSource:
        pulled = self.pull(text, reporter)
        reporter.info(f"{pulled.reference.url()}: image {pulled.digest} "
                      f"({len(pulled.layers)} layers, {pulled.transferred} blobs pulled)")
        return as_source(pulled)


def fetch_to_store(text: str, access: RegistryAccess, reporter: Reporter) -> Entry:
    """``fetch docker://…``: pull, convert (squashed, docker2aci's mapping) and keep the ACI
    in the image store, unsigned."""
    from acbuild.interop.convert import convert_squashed

    store = ImageStore.locate(access.store_dir, access.environ)
    source = RegistryBases(access).open_source(text, reporter)
    with store.temp() as tmp:
        # The finalizer's image ID and the manifest it was given: reading the ACI back
        # (aci.scan: decompress and hash it all again) cost ~0.3 s a 100 MB image.
        written, manifest = convert_squashed(source, Path(tmp) / "image.aci",
                                             reporter=reporter)
        return store.add(written.path, None, image_id=written.image_id, name=manifest.name,
                         labels=tuple((lbl.name, lbl.value) for lbl in manifest.labels))


def pull_to_store(text: str, access: RegistryAccess, reporter: Reporter) -> PulledImage:
    """``pull docker://…``: the image's manifest, config and layers into the blob store, each
    checked against its digest, nothing converted (a later BEGIN, convert or fetch of it
    transfers no layer). No signature rule here: nothing is used yet, and each use applies
    it; a tag is looked up in the registry again by every use."""
    from acbuild.distribution.registry.pull import pull

    ref = parse_reference(text)
    with access.session(ref) as session:
        pulled = pull(ref, session=session, store=access.blob_store(),
                      platform=access.target_platform(), reporter=reporter,
                      max_bytes=access.max_bytes, verify_stored=True)
    reporter.info(f"{ref.url()}: image {pulled.digest} ({len(pulled.layers)} layers, "
                  f"{pulled.transferred} blobs pulled)")
    return pulled
