"""Run stage, rendering: an image and its dependencies laid out as one rootfs, in AppC order.

Depth-first: each dependency (itself rendered with its own dependencies) is unpacked in the
order the manifest lists them, later ones over earlier ones, then the image's own rootfs on
top; an image's pathWhitelist then prunes everything its rendering produced that it does
not list. Dependencies are looked up locally only: ``<last name segment>*.aci`` beside the
image (verified when a ``.asc`` is there), else the image store by image ID, name and labels.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from acbuild.distribution.imagestore import ImageStore
from acbuild.errors import AcbuildError, ImageError
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import image_id, read_manifest, unpack_image
from acbuild.image.manifest import Dependency, ImageManifest
from acbuild.report import Reporter

# Checks PATH.asc next to a local image when there is one (the trust chain's verify_local).
LocalVerifier = Callable[[Path, Reporter], None]
MAX_DEPTH = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Renderer:
    store: ImageStore
    verify_local: LocalVerifier
    reporter: Reporter

    def render(self, path: Path, rootfs: StagedRootfs, *,
               chain: tuple[Path, ...] = ()) -> ImageManifest:
        """Lay ``path`` and its dependency tree into ``rootfs``; returns ``path``'s manifest."""
        if len(chain) >= MAX_DEPTH:
            raise ImageError(f"{path}: dependencies nested deeper than {MAX_DEPTH} levels")
        if path.resolve() in chain:
            raise ImageError(f"{path}: dependency cycle: " + " -> ".join(map(str, chain)))
        manifest = read_manifest(path)
        for dep in manifest.dependencies:
            found = self.find(dep, beside=path)
            self.reporter.info(f"dependency {dep.image_name}: {found}")
            self.render(found, rootfs, chain=(*chain, path.resolve()))
        unpack_image(path, rootfs, reporter=self.reporter)
        if manifest.path_whitelist:
            prune(rootfs.root, manifest.path_whitelist)
        return manifest

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


def _kept(rel: str, whitelist: tuple[str, ...]) -> str:
    """"keep" (listed, or below a listed directory), "parent" (on the way to one), or ""."""
    path = "/" + rel
    for item in whitelist:
        listed = item.rstrip("/") or "/"
        if path == listed or path.startswith(listed.rstrip("/") + "/"):
            return "keep"
        if listed.startswith(path + "/"):
            return "parent"
    return ""


def prune(root: Path, whitelist: tuple[str, ...]) -> None:
    """Remove from ``root`` every entry the whitelist neither lists nor leads to; a listed
    directory keeps what is below it. Symlinks are removed or kept, never followed."""
    for parent, dirs, files in os.walk(root):
        rel_parent = os.path.relpath(parent, root)
        rel_parent = "" if rel_parent == "." else rel_parent + "/"
        for name in list(dirs):
            rel = rel_parent + name
            verdict = _kept(rel, whitelist)
            full = os.path.join(parent, name)
            if verdict:
                if verdict == "keep" or os.path.islink(full):
                    dirs.remove(name)  # all below it stays; a link on the way is kept whole
                continue
            dirs.remove(name)
            if os.path.islink(full):
                os.unlink(full)
            else:
                shutil.rmtree(full)
        for name in files:
            if _kept(rel_parent + name, whitelist) != "keep":
                os.unlink(os.path.join(parent, name))
