"""Run stage, rendering: an image and its dependencies laid out as one rootfs, as rkt does.

Two passes. ``resolve`` finds every dependency through the trust chain builds use and
validates every manifest: a dependency pinned by image ID is any local copy whose bytes hash
to that ID (beside the image as ``<last name segment>*.aci``, or in the image store); an
unpinned one must be signed by a key trusted for the dependency's name (beside the image) or
be a stored copy that still verifies — ``--insecure-skip-verify`` alone accepts less.

``render`` then lays the tree out as rkt does (appc/spec's acirenderer, used by ``rkt run``
and ``rkt image render``, is the reference): the image and its dependency tree are ordered
image first, each image's dependencies after it with the last listed first; walking that
list, an entry is taken from the first image that has it, and only if no earlier image put
a non-directory at one of its parents. pathWhitelist, exactly as acirenderer applies it:
- an image's own whitelist keeps its directories and only the non-directories it lists
  by their exact path (``/bin`` keeps the directory /bin, not the files in it);
- the whitelist of the topmost ancestor that has one applies to everything below it, entry
  by entry, directories included: a dependency's entry stays only if it is listed. Parent
  directories of a kept entry that are not kept themselves are created 0755, root-owned.
Every archive is re-hashed while it is unpacked, so the bytes used are the bytes checked.
The rendered tree is cached under a key made of every resolved image ID.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, replace
from pathlib import Path

from acbuild.distribution.discovery import ImageRef
from acbuild.distribution.fetch import FetchOptions, fetch_ref
from acbuild.distribution.imagestore import ImageStore
from acbuild.errors import AcbuildError, FetchError, ImageError, TrustError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import iter_entries, scan, unpack_image
from acbuild.image.manifest import Dependency, ImageManifest
from acbuild.image.manifest_rules import problems
from acbuild.image.tarread import strip_prefix
from acbuild.report import Reporter
from acbuild.trust.sign import signature_path
from acbuild.trust.truststore import TrustStore
from acbuild.trust.verify import verify_image

MAX_DEPTH = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """One resolved image: where its bytes are, their ID, its manifest, its dependencies."""

    path: Path
    image_id: str
    manifest: ImageManifest
    deps: tuple[Node, ...] = ()

    def ids(self) -> tuple[str, ...]:
        """Every image ID in rendering order (dependencies first, depth-first)."""
        return (*(i for d in self.deps for i in d.ids()), self.image_id)

    def cache_key(self) -> str:
        """The rendered tree's cache key: all IDs with their nesting, hashed."""
        return "render-" + hashlib.sha256(self._shape().encode()).hexdigest()

    def _shape(self) -> str:
        return f"{self.image_id}(" + ",".join(d._shape() for d in self.deps) + ")"


def checked_manifest(path: Path, manifest: ImageManifest) -> ImageManifest:
    """``manifest`` when it follows every AppC rule; what `run` uses must (mount point names
    become directories, names choose keys)."""
    found = problems(manifest)
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise ImageError(f"{path}: invalid manifest: {'; '.join(found[:3])}{more}",
                         hint=f"see every problem with `acbuild-py validate {path}`")
    return manifest


@dataclass(frozen=True, slots=True, kw_only=True)
class Renderer:
    fetch: FetchOptions
    reporter: Reporter

    def resolve(self, path: Path, *, chain: tuple[str, ...] = (),
                image_id: str | None = None, manifest: ImageManifest | None = None) -> Node:
        """``path`` and its dependency tree, every manifest valid, every dependency trusted."""
        if len(chain) >= MAX_DEPTH:
            raise ImageError(f"{path}: dependencies nested deeper than {MAX_DEPTH} levels")
        if manifest is None or image_id is None:
            manifest, image_id = scan(path)
        if image_id in chain:
            raise ImageError(f"{path}: dependency cycle through {manifest.name}")
        checked_manifest(path, manifest)
        deps = []
        for dep in manifest.dependencies:
            found, dep_id, dep_manifest = self.find(dep, beside=path)
            self.reporter.info(f"dependency {dep.image_name}: {found}")
            deps.append(self.resolve(found, chain=(*chain, image_id), image_id=dep_id,
                                     manifest=dep_manifest))
        return Node(path=path, image_id=image_id, manifest=manifest, deps=tuple(deps))

    def render(self, node: Node, rootfs: StagedRootfs) -> None:
        """Lay the resolved tree into ``rootfs`` as rkt does; an archive that changed since
        it was resolved is an error."""
        images = ordered(node)
        chosen = choose_entries(images)
        # The chosen sets are disjoint, so extraction order only decides who creates a
        # missing parent first: lowest first, as later ones were layered over earlier ones.
        for image, keep in reversed(list(zip(images, chosen, strict=True))):
            unpack_image(image.node.path, rootfs, reporter=self.reporter,
                         keep=keep.__contains__, expect_id=image.node.image_id)

    def find(self, dep: Dependency, *, beside: Path) -> tuple[Path, str, ImageManifest]:
        """The local ACI that satisfies ``dep``, its ID and manifest."""
        last = dep.image_name.rsplit("/", 1)[-1]
        refused: list[str] = []
        for candidate in sorted(beside.parent.glob(f"{last}*.aci")):
            if candidate.resolve() == beside.resolve():
                continue
            found = self._candidate(candidate, dep, refused)
            if found is not None:
                return candidate, *found
        found_in_store = self._from_store(dep, refused)
        if found_in_store is not None:
            return found_in_store
        wanted = dep.image_name + "".join(f",{lb.name}={lb.value}" for lb in dep.labels)
        why = f" ({'; '.join(refused)})" if refused else ""
        raise ImageError(
            f"dependency {wanted} of {beside} is not available locally{why}",
            hint=f"put it beside the image as {last}*.aci (signed, or pinned by "
                 f"--image-id), or fetch it: `acbuild-py fetch {dep.image_name}`",
        )

    def _candidate(self, candidate: Path, dep: Dependency,
                   refused: list[str]) -> tuple[str, ImageManifest] | None:
        try:
            manifest, image_id = scan(candidate)
        except AcbuildError:
            return None  # not an ACI, or a broken one: not the dependency
        if not _satisfies(manifest, dep):
            return None
        if dep.image_id is not None:
            if image_id.startswith(dep.image_id):
                return image_id, manifest
            refused.append(f"{candidate.name} has image ID {image_id[:19]}…, not the pinned "
                           f"{dep.image_id[:19]}…")
            return None
        if not signature_path(candidate).exists():
            if self.fetch.skip_verify:
                self.reporter.warning(f"{candidate} is NOT VERIFIED: dependency used without "
                                      "a signature (--insecure-skip-verify)")
                return image_id, manifest
            refused.append(f"{candidate.name} is not signed and not pinned by image ID")
            return None
        try:
            verify_image(candidate, TrustStore.locate(self.fetch.trust_store),
                         name=dep.image_name)
        except TrustError as e:
            if not self.fetch.skip_verify:
                raise
            self.reporter.warning(f"SIGNATURE CHECK FAILED for {candidate}, using it anyway "
                                  f"(--insecure-skip-verify): {e.message}")
        return image_id, manifest

    def _from_store(self, dep: Dependency,
                    refused: list[str]) -> tuple[Path, str, ImageManifest] | None:
        store = ImageStore.locate(self.fetch.store_dir)
        if dep.image_id is not None:
            entry = store.find_id(dep.image_id)
            if entry is None:
                return None
            path = store.aci_path(entry.id)
            manifest, image_id = scan(path)  # re-hashed: the store's file name proves nothing
            if image_id.startswith(dep.image_id) and _satisfies(manifest, dep):
                return path, image_id, manifest
            refused.append(f"the stored {entry.id[:19]}… does not hash to its name")
            return None
        ref = ImageRef(name=dep.image_name, labels=tuple((lb.name, lb.value)
                                                          for lb in dep.labels))
        try:
            # "never": the run renders what is here; a stored copy must still verify.
            got = fetch_ref(ref, options=_store_only(self.fetch), reporter=self.reporter)
        except FetchError:
            return None
        manifest, image_id = scan(got.path)
        return got.path, image_id, manifest


def _store_only(options: FetchOptions) -> FetchOptions:
    return replace(options, pull_policy="never")


def _satisfies(manifest: ImageManifest, dep: Dependency) -> bool:
    if manifest.name != dep.image_name:
        return False
    have = {lb.name: lb.value for lb in manifest.labels}
    return all(have.get(lb.name) == lb.value for lb in dep.labels)


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    node: Node
    level: int  # 0: the image run; its dependencies 1, theirs 2...

    @property
    def manifest(self) -> ImageManifest:
        return self.node.manifest


def ordered(root: Node) -> list[Image]:
    """The image and its dependency tree in acirenderer's order (``createDepList``)."""
    images = [Image(node=root, level=0)]
    i = 0
    while i < len(images):
        parent = images[i]
        for dep in parent.node.deps:
            # Each one right after its parent: the last listed ends up first.
            images.insert(i + 1, Image(node=dep, level=parent.level + 1))
        i += 1
    return images


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
        for entry in iter_entries(image.node.path):
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
