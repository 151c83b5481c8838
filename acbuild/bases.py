"""Bases: materialising a stage's BEGIN into a staged rootfs and the manifest it starts from.

scratch is empty; local paths are ACIs, rootfs tarballs or directories; docker/OCI inputs go
through the converter; names are discovered, fetched and verified by the trust chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from acbuild import manifest_edit
from acbuild.aci import unpack_base, unpack_image
from acbuild.convert import convert_to_rootfs, open_source
from acbuild.manifest import ImageManifest, default_manifest
from acbuild.plan import (
    BaseRef,
    DockerArchive,
    ImageName,
    LocalImage,
    OciArchive,
    OciLayout,
    Scratch,
    Stage,
)
from acbuild.report import Reporter
from acbuild.staging import StagedRootfs

# Turns an image name (and labels) into a verified local .aci: the trust chain's resolver.
NameResolver = Callable[[str, tuple[tuple[str, str], ...], Reporter], Path]
# Checks PATH.asc next to a local image when there is one.
LocalVerifier = Callable[[Path, Reporter], None]

_CONVERTED_KINDS = {DockerArchive: "docker-archive", OciLayout: "oci", OciArchive: "oci-archive"}


@dataclass(frozen=True, slots=True, kw_only=True)
class BaseLoader:
    """Knows how to turn every kind of BEGIN into a rootfs."""

    resolve_name: NameResolver
    verify_local: LocalVerifier

    def __call__(self, stage: Stage, rootfs: StagedRootfs, reporter: Reporter) -> ImageManifest:
        return self.load(stage.base, rootfs, reporter)

    def load(self, base: BaseRef, rootfs: StagedRootfs, reporter: Reporter) -> ImageManifest:
        match base:
            case Scratch():
                return default_manifest()
            case LocalImage(path=path):
                self.verify_local(path, reporter)
                found = unpack_base(path, rootfs, reporter=reporter)
                return default_manifest() if found is None else manifest_edit.inherit(found)
            case DockerArchive(path=path, ref=ref) | OciLayout(path=path, ref=ref) | OciArchive(
                path=path, ref=ref
            ):
                source = open_source(_CONVERTED_KINDS[type(base)], path, ref)
                reporter.warning(f"base {path} is a Docker/OCI image and carries no signature")
                converted = convert_to_rootfs(source, rootfs, reporter=reporter)
                return manifest_edit.inherit(converted)
            case ImageName(name=name, labels=labels):
                fetched = self.resolve_name(name, labels, reporter)
                return manifest_edit.inherit(unpack_image(fetched, rootfs, reporter=reporter))
