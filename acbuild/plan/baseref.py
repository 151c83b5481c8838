"""Plan stage: what a BEGIN argument names (scratch, a local path, an archive, an image name,
a docker:// registry reference).

``parse_base`` is pure (no I/O): it only joins paths to the Acfile's directory; ``confine``
then holds a host path to the places the user allowed; the executor (acbuild.build.bases)
opens what the reference names.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from acbuild.acfile.parse_words import split_image_reference
from acbuild.errors import AcfileError
from acbuild.image import manifest_rules as appc

# ---- base references --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Scratch:
    """An empty rootfs and a default manifest."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalImage:
    path: Path  # an ACI, a rootfs tarball or a directory; joined to the Acfile's directory


@dataclass(frozen=True, slots=True, kw_only=True)
class DockerArchive:
    path: Path
    ref: str | None  # NAME:TAG inside a multi-image `docker save` archive


@dataclass(frozen=True, slots=True, kw_only=True)
class OciLayout:
    path: Path
    ref: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OciArchive:
    path: Path
    ref: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageName:
    name: str
    labels: tuple[tuple[str, str], ...]  # ":version" first as ("version", v), then ",k=v"


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryImage:
    reference: str  # docker://[REGISTRY/]NAME[:TAG|@DIGEST], parsed when it is pulled


BaseRef = (Scratch | LocalImage | DockerArchive | OciLayout | OciArchive | ImageName
           | RegistryImage)


# ---- BEGIN arguments --------------------------------------------------------------------------

_PREFIXED: dict[str, type[DockerArchive | OciLayout | OciArchive]] = {
    "docker-archive:": DockerArchive,
    "oci:": OciLayout,
    "oci-archive:": OciArchive,
}


def parse_base(text: str, acfile_dir: Path) -> BaseRef:
    """What a BEGIN argument names. Raises AcfileError (without a span) when it names nothing."""
    if text == "scratch":
        return Scratch()
    for prefix, kind in _PREFIXED.items():
        if text.startswith(prefix):
            # Split at the first ':' as skopeo does, so a path cannot contain ':'.
            path, _, ref = text[len(prefix) :].partition(":")
            if not path:
                raise AcfileError(f"{prefix} needs a path, as in '{prefix}./image.tar'")
            return kind(path=acfile_dir / path, ref=ref or None)
    if text in (".", "..") or text.startswith(("/", "./", "../")):
        return LocalImage(path=acfile_dir / text)
    if text.startswith("docker://"):
        if len(text) == len("docker://"):
            raise AcfileError("docker:// needs an image, as in 'docker://busybox:1.36'")
        return RegistryImage(reference=text)
    return _image_name(text)


def _image_name(text: str) -> ImageName:
    """An image name with its labels: parsed as DEPENDENCY parses one, then held to the AppC
    rules (the base is fetched by that name, so a bad one cannot wait for the manifest check)."""
    if "://" in text:
        raise AcfileError(
            f"{text!r} is not an image name: the only registry scheme is docker://",
            hint="as in BEGIN docker://busybox:1.36",
        )
    name, labels = split_image_reference(text)
    if problem := appc.ac_identifier_problem("image name", name):
        raise AcfileError(problem)
    for key, _ in labels:
        if problem := appc.label_name_problem(key):
            raise AcfileError(problem)
    return ImageName(name=name, labels=labels)


# ---- where a base may come from ---------------------------------------------------------------


def confine(base: BaseRef, text: str, allowed: Sequence[Path]) -> BaseRef:
    """``base`` with its host path resolved (symlinks included), when that path lies in
    one of ``allowed`` (the Acfile's directory, the context, each --allow-path); else an
    AcfileError (without a span). An Acfile alone can never widen ``allowed``: it is
    untrusted input, and `BEGIN /etc` would put the host's tree into the image."""
    if not isinstance(base, LocalImage | DockerArchive | OciLayout | OciArchive):
        return base
    real = Path(os.path.realpath(base.path))
    roots = [Path(os.path.realpath(root)) for root in allowed]
    if any(real == root or real.is_relative_to(root) for root in roots):
        return dataclasses.replace(base, path=real)
    named = text.split(":", 2)[1] if not isinstance(base, LocalImage) else text
    via = "" if real == Path(os.path.abspath(base.path)) else f" (it resolves to '{real}')"
    raise AcfileError(
        f"BEGIN path '{named}' is outside the Acfile's directory and the build "
        f"context{via}",
        hint=f"a host path outside them needs --allow-path on the command line, as in "
             f"--allow-path {real if real.is_dir() else real.parent}")
