"""Run stage, rendering: an image and its dependencies laid out as one rootfs, as rkt does.

rkt (appc/spec's acirenderer, used by ``rkt run`` and ``rkt image render``) is the reference:
the image and its dependency tree are ordered image first, each image's dependencies after
it with the last listed first; walking that list, an entry is taken from the first image
that has it, and only if no earlier image put a non-directory at one of its parents.
pathWhitelist, exactly as acirenderer applies it:
- an image's own whitelist keeps its directories and only the non-directories it lists
  by their exact path (``/bin`` keeps the directory /bin, not the files in it);
- the whitelist of the topmost ancestor that has one applies to everything below it, entry
  by entry, directories included: a dependency's entry stays only if it is listed. Parent
  directories of a kept entry that are not kept themselves are created 0755, root-owned.
Dependencies are looked up locally only: ``<last name segment>*.aci`` beside the image
(verified when a ``.asc`` is there), else the image store by image ID, name and labels.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from acbuild.distribution.imagestore import ImageStore
from acbuild.errors import AcbuildError, ImageError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import image_id, iter_entries, read_manifest, unpack_image
from acbuild.image.manifest import Dependency, ImageManifest
from acbuild.image.tarread import strip_prefix
from acbuild.report import Reporter

# Checks PATH.asc next to a local image when there is one (the trust chain's verify_local).
LocalVerifier = Callable[[Path, Reporter], None]
MAX_DEPTH = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Renderer:
    store: ImageStore
    verify_local: LocalVerifier
    reporter: Reporter

    def render(self, path: Path, rootfs: StagedRootfs) -> ImageManifest:
        """Lay ``path`` and its dependency tree into ``rootfs``; returns ``path``'s manifest."""
        images = self.ordered(path)
        chosen = choose_entries(images)
        # The chosen sets are disjoint, so extraction order only decides who creates a
        # missing parent first: lowest first, as later ones were layered over earlier ones.
        for image, keep in reversed(list(zip(images, chosen, strict=True))):
            unpack_image(image.path, rootfs, reporter=self.reporter, keep=keep.__contains__)
        return images[0].manifest

    def ordered(self, path: Path) -> list[Image]:
        """The image and its dependency tree in acirenderer's order (``createDepList``)."""
        images = [Image(path=path, manifest=read_manifest(path), level=0, chain=())]
        i = 0
        while i < len(images):
            parent = images[i]
            chain = (*parent.chain, parent.path.resolve())
            if len(chain) > MAX_DEPTH:
                raise ImageError(f"{path}: dependencies nested deeper than {MAX_DEPTH} levels")
            for dep in parent.manifest.dependencies:
                found = self.find(dep, beside=parent.path)
                if found.resolve() in chain:
                    raise ImageError(f"{path}: dependency cycle: "
                                     + " -> ".join(map(str, (*chain, found))))
                self.reporter.info(f"dependency {dep.image_name}: {found}")
                # Each one right after its parent: the last listed ends up first.
                images.insert(i + 1, Image(path=found, manifest=read_manifest(found),
                                           level=parent.level + 1, chain=chain))
            i += 1
        return images

    def find(self, dep: Dependency, *, beside: Path) -> Path:
        """The ACI that satisfies ``dep``: beside the image first, then the image store."""
        last = dep.image_name.rsplit("/", 1)[-1]
        for candidate in sorted(beside.parent.glob(f"{last}*.aci")):
            if candidate.resolve() != beside.resolve() and self._matches(candidate, dep):
                self.verify_local(candidate, self.reporter)
                return candidate
        if dep.image_id and self.store.aci_path(dep.image_id).is_file():
            return self.store.aci_path(dep.image_id)
        labels = tuple((lb.name, lb.value) for lb in dep.labels)
        entry = self.store.find(dep.image_name, labels)
        if entry is not None and (dep.image_id in (None, entry.id)):
            return self.store.aci_path(entry.id)
        wanted = dep.image_name + "".join(f",{k}={v}" for k, v in labels)
        raise ImageError(
            f"dependency {wanted} of {beside} is not available locally",
            hint=f"put it beside the image as {last}*.aci, or fetch it with "
                 f"`acbuild-py fetch {dep.image_name}`",
        )

    def _matches(self, candidate: Path, dep: Dependency) -> bool:
        try:
            found = read_manifest(candidate)
        except AcbuildError:
            return False  # not an ACI, or a broken one: not the dependency
        if found.name != dep.image_name:
            return False
        have = {lb.name: lb.value for lb in found.labels}
        if any(have.get(lb.name) != lb.value for lb in dep.labels):
            return False
        return dep.image_id is None or image_id(candidate) == dep.image_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    path: Path
    manifest: ImageManifest
    level: int  # 0: the image run; its dependencies 1, theirs 2...
    chain: tuple[Path, ...]  # the images that led to this one, for cycle detection


def _whitelist(paths: tuple[str, ...]) -> set[str] | None:
    """Whitelisted paths as rootfs-relative names (``/bin/`` -> ``bin``); None when empty."""
    if not paths:
        return None
    return {posixpath.normpath("/" + p).lstrip("/") for p in paths}


def _upper_whitelist(images: list[Image], pos: int) -> set[str] | None:
    """acirenderer's ``getUpperPWLM``, quirks included: walking back from ``pos``, the last
    image found one level up with a whitelist (in practice the topmost ancestor) decides."""
    found: set[str] | None = None
    level = images[pos].level
    for image in reversed(images[: pos + 1]):
        if image.level < level and image.manifest.path_whitelist:
            found = _whitelist(image.manifest.path_whitelist)
        level = image.level
    return found


def choose_entries(images: list[Image]) -> list[set[str]]:
    """For each image, the rootfs entries (relative names) the rendering takes from it."""
    taken: dict[str, bool] = {}  # name -> whether it is a directory
    chosen: list[set[str]] = []
    for pos, image in enumerate(images):
        own = _whitelist(image.manifest.path_whitelist)
        upper = _upper_whitelist(images, pos)
        keep: set[str] = set()
        for entry in iter_entries(image.path):
            rel = strip_prefix(entry.name, "rootfs/")
            if not rel:
                continue  # the manifest, or the rootfs directory itself
            is_dir = entry.kind == "dir"
            if own is not None and not is_dir and rel not in own:
                continue
            if upper is not None and rel not in upper:
                continue
            if rel in taken or _under_non_directory(rel, taken):
                continue
            keep.add(rel)
            taken[rel] = is_dir
        chosen.append(keep)
    return chosen


def _under_non_directory(rel: str, taken: dict[str, bool]) -> bool:
    parent = posixpath.dirname(rel)
    while parent:
        if taken.get(parent) is False:
            return True
        parent = posixpath.dirname(parent)
    return False
