"""Bases: materialising a stage's BEGIN into a staged rootfs and the manifest it starts from.

scratch is empty; local paths are ACIs, rootfs tarballs or directories; docker/OCI inputs go
through the converter (docker:// references are pulled first); names are discovered, fetched
and verified by the trust chain.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from acbuild.acfile.context import BuildContext
from acbuild.acfile.instructions import Copy, Dependency, Run
from acbuild.build import manifest_edit
from acbuild.errors import AcbuildError, BuildError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import image_id, unpack_base, unpack_image
from acbuild.image.manifest import ImageManifest, default_manifest
from acbuild.image.tarread import Limits
from acbuild.plan.baseref import (
    BaseRef,
    DockerArchive,
    ImageName,
    LocalImage,
    OciArchive,
    OciLayout,
    RegistryImage,
    Scratch,
)
from acbuild.plan.plan import Plan, Stage
from acbuild.report import Reporter

if TYPE_CHECKING:  # docker:// pulls (httpx, TLS) load only for a build that has one
    from acbuild.build.registrypull import RegistryBases

# Turns an image name (and labels) into a verified local .aci: the trust chain's resolver.
NameResolver = Callable[[str, tuple[tuple[str, str], ...], Reporter], Path]
# Checks PATH.asc next to a local image when there is one.
LocalVerifier = Callable[[Path, Reporter], None]

_CONVERTED_KINDS: dict[type, Literal["docker-archive", "oci", "oci-archive"]] = {
    DockerArchive: "docker-archive", OciLayout: "oci", OciArchive: "oci-archive"}


@dataclass(frozen=True, slots=True, kw_only=True)
class BaseLoader:
    """Knows how to turn every kind of BEGIN into a rootfs."""

    resolve_name: NameResolver
    verify_local: LocalVerifier
    limits: Limits = field(default_factory=Limits)  # what a base archive may make us do
    registry: RegistryBases | None = None  # docker:// bases; None: refused
    # Set when the build this loader serves stops (Ctrl-C, SIGTERM, a failed stage): its
    # stages stop between steps, and its registry requests (pulls, the remote cache) at once.
    # ``registry`` must have been made with it.
    stop: threading.Event = field(default_factory=threading.Event)

    def __call__(self, stage: Stage, rootfs: StagedRootfs, reporter: Reporter) -> ImageManifest:
        return self.load(stage.base, rootfs, reporter, link=shares_files(stage))

    def load(self, base: BaseRef, rootfs: StagedRootfs, reporter: Reporter, *,
             link: bool = False) -> ImageManifest:
        """``link``: a base directory's files may be hardlinked rather than copied."""
        match base:
            case Scratch():
                return default_manifest()
            case LocalImage(path=path):
                self.verify_local(path, reporter)
                found = unpack_base(path, rootfs, reporter=reporter, limits=self.limits,
                                    link=link)
                return default_manifest() if found is None else manifest_edit.inherit(found)
            case DockerArchive(path=path, ref=ref) | OciLayout(path=path, ref=ref) | OciArchive(
                path=path, ref=ref
            ):
                # The converter loads only for a build that has a Docker/OCI base.
                from acbuild.interop.convert import convert_to_rootfs, open_source

                source = open_source(_CONVERTED_KINDS[type(base)], path, ref)
                reporter.warning(f"base {path} is a Docker/OCI image and carries no signature")
                converted = convert_to_rootfs(source, rootfs, reporter=reporter)
                return manifest_edit.inherit(converted)
            case ImageName(name=name, labels=labels):
                fetched = self.resolve_name(name, labels, reporter)
                return manifest_edit.inherit(
                    unpack_image(fetched, rootfs, reporter=reporter, limits=self.limits))
            case RegistryImage(reference=text):
                from acbuild.interop.convert import convert_to_rootfs

                source = self.registries().open_source(text, reporter)
                return manifest_edit.inherit(convert_to_rootfs(source, rootfs,
                                                               reporter=reporter))

    def registries(self) -> RegistryBases:
        if self.registry is None:
            raise AcbuildError("docker:// bases cannot be pulled here")
        return self.registry

    def pin(self, dependency: Dependency, reporter: Reporter) -> Dependency:
        """A DEPENDENCY given without --image-id, resolved (discovered, fetched, verified)
        and pinned to the image ID and size it has now, so the image names exactly what it
        was built against."""
        if dependency.image_id is not None:
            return dependency
        labels = tuple((k, v) for k, v in dependency.labels)
        try:
            path = self.resolve_name(dependency.image_name, labels, reporter)
        except AcbuildError as e:
            e.span = e.span or dependency.span
            raise
        return dataclasses.replace(dependency, image_id=image_id(path),
                                   size=dependency.size or path.stat().st_size)


def shares_files(stage: Stage) -> bool:
    """Whether the stage's rootfs may share inodes with files outside it (a base directory
    hardlinked in): only when no RUN can write into a file in place. COPY and extraction
    always unlink and write new files, and never chown or chmod an existing one."""
    return not any(isinstance(step.instruction, Run) for step in stage.steps)


def pin_dependencies(plan: Plan, loader: BaseLoader, reporter: Reporter) -> Plan:
    """The plan with every unpinned DEPENDENCY pinned (before cache keys are computed, so a
    new upstream image is a cache miss)."""
    stages = []
    for stage in plan.stages:
        steps = tuple(
            dataclasses.replace(step, instruction=loader.pin(step.instruction, reporter))
            if isinstance(step.instruction, Dependency) else step
            for step in stage.steps
        )
        stages.append(dataclasses.replace(stage, steps=steps))
    target = next(s for s in stages if s.index == plan.target.index)
    return dataclasses.replace(plan, stages=tuple(stages), target=target)


def check_own_files(plan: Plan, context: BuildContext,
                    files: Sequence[tuple[str, Path]]) -> None:
    """What the build writes while it runs (the image, its log, the step cache) must not be
    inside what it reads: a base directory (all of it is read, as the image is written), or a
    directory a COPY takes from the context (unless .acignore leaves the file out). There
    every build would fail with "changed during the build", and the next build would read
    the last one's files. Said before any work, naming both paths."""
    for what, path in files:
        target = path.absolute()
        target = target.parent.resolve() / target.name
        for stage in plan.stages:
            base = stage.base
            if not isinstance(base, LocalImage) or not base.path.is_dir():
                continue
            root = base.path.resolve()
            if target == root or root in target.parents:
                raise BuildError(f"{what} {path} is inside the base directory {base.path}",
                                 span=stage.begin.span,
                                 hint="write it outside the base directory")
        if what != "the output":  # the image in the context is the next build's input
            _outside_copied(plan, context, what, path, target)


def _outside_copied(plan: Plan, context: BuildContext, what: str, path: Path,
                    target: Path) -> None:
    root = context.root.resolve()
    if root not in target.parents:
        return
    rel = target.relative_to(root).as_posix()
    if context.is_ignored(rel, is_dir=what == "the cache directory"):
        return
    for stage in plan.stages:
        for step in stage.steps:
            copy = step.instruction
            if not isinstance(copy, Copy) or copy.from_stage is not None:
                continue
            for pattern in copy.sources:
                try:
                    found = context.resolve(pattern)
                except AcbuildError:
                    continue  # the COPY itself reports it
                for source in found:
                    top = (context.root / source.rel).resolve()
                    if source.is_dir and not source.is_symlink and (
                            top == target or top in target.parents):
                        raise BuildError(
                            f"{what} {path} is inside COPY source '{pattern}', which the "
                            "build copies", span=copy.span,
                            hint="write it elsewhere, or leave it out in .acignore")
