"""Inspect (``acbuild-py inspect`` and ``manifest``): what an ACI holds, in one pass.

The image ID is hashed from the same decompressed bytes tarfile reads, so an image is
read once; the CLI renders the result.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from acbuild.image.aci import EntryInfo, ManifestReader, entry_info, open_tar
from acbuild.image.manifest import ImageManifest
from acbuild.image.tarread import Limits, TarSource, clean_name, members, strip_prefix


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSummary:
    image_id: str  # sha512-<128 hex>
    compressed_size: int  # the file's size on disk
    uncompressed_size: int  # the tar's size
    entry_count: int  # entries below rootfs/, the rootfs itself excluded
    file_count: int  # regular files (hardlinks excluded) below rootfs/
    manifest: ImageManifest
    entries: tuple[EntryInfo, ...] = ()  # filled by summarize(..., entries=True)


def summarize(path: Path, *, entries: bool = False, limits: Limits = Limits()) -> ImageSummary:  # noqa: B008
    """The facts of the ACI at ``path``; with ``entries`` also every entry below rootfs/."""
    digest = hashlib.sha512()
    reader = ManifestReader(path, limits)
    found: list[EntryInfo] = []
    entry_count = file_count = 0
    with open_tar(path) as stream:
        source = TarSource(stream, hasher=digest)
        for member, tar in members(source, limits):
            name = clean_name(member.name)
            rel = strip_prefix(name, "rootfs/")
            reader.offer(name, member, tar)
            if not rel:
                continue
            entry_count += 1
            file_count += member.isreg()
            if entries:
                found.append(entry_info(member))
        total = source.total
    return ImageSummary(
        image_id="sha512-" + digest.hexdigest(),
        compressed_size=os.stat(path).st_size,
        uncompressed_size=total,
        entry_count=entry_count,
        file_count=file_count,
        manifest=reader.manifest(),
        entries=tuple(found),
    )


def file_tree(path: Path) -> tuple[tuple[str, int], ...]:
    """(path inside the image, size) for every entry below rootfs/, in archive order.

    Paths are absolute as the app sees them ("/bin/sh"); directories end with "/".
    """
    out: list[tuple[str, int]] = []
    for e in summarize(path, entries=True).entries:
        rel = e.name[len("rootfs/") :]
        out.append((f"/{rel}/" if e.kind == "dir" else f"/{rel}", e.size))
    return tuple(out)
