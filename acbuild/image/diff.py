"""Diff (inspection): what differs between two images, manifest fields and rootfs entries.

Both archives are streamed once; file contents are compared by a SHA-256 taken while
reading, so only per-entry metadata is ever held in memory.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acbuild.errors import ImageError
from acbuild.image.aci import EntryInfo, ManifestReader, entry_info, open_tar
from acbuild.image.tarread import CHUNK, Limits, TarSource, archive_errors, members

MANIFEST = "manifest"


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    info: EntryInfo
    sha256: str | None  # regular files only


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestChange:
    path: str  # e.g. "labels.version", "app.exec"
    old: Any  # decoded JSON value; None when added
    new: Any  # None when removed

    @property
    def change(self) -> str:
        return "added" if self.old is None else "removed" if self.new is None else "changed"


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryChange:
    path: str
    old: Entry | None
    new: Entry | None
    what: tuple[str, ...]  # for changed entries: type, content, mode, owner, link target

    @property
    def change(self) -> str:
        return "added" if self.old is None else "removed" if self.new is None else "changed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageDiff:
    manifest: tuple[ManifestChange, ...]
    entries: tuple[EntryChange, ...]

    @property
    def same(self) -> bool:
        return not self.manifest and not self.entries


def diff_images(old: Path, new: Path, *, limits: Limits = Limits()) -> ImageDiff:  # noqa: B008
    old_manifest, old_entries = _read(old, limits)
    new_manifest, new_entries = _read(new, limits)
    return ImageDiff(manifest=tuple(_diff_manifest(old_manifest, new_manifest)),
                     entries=tuple(_diff_entries(old_entries, new_entries)))


def _read(path: Path, limits: Limits) -> tuple[dict[str, Any], dict[str, Entry]]:
    reader = ManifestReader(path, limits)
    entries: dict[str, Entry] = {}
    with open_tar(path) as stream:
        for member, tar in members(TarSource(stream), limits):
            info = entry_info(member)
            if reader.offer(info.name, member, tar):
                continue
            digest = _sha256(tar, member) if member.isreg() else None
            entries[info.name] = Entry(info=info, sha256=digest)
    return _manifest(path, reader.raw()), entries


def _manifest(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ImageError(f"{path}: manifest is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{path}: manifest is not a JSON object")
    return doc


def _sha256(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    digest = hashlib.sha256()
    with archive_errors():
        data = tar.extractfile(member)
        assert data is not None
        while chunk := data.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---- manifest ---------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Leaves of a manifest by dotted path; name/value lists (labels, environment,
    annotations) keyed by name so one changed label is one change."""
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _flatten(value[key], f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list) and value and all(
        isinstance(v, dict) and set(v) == {"name", "value"} for v in value
    ):
        for item in value:
            yield f"{prefix}.{item['name']}", item["value"]
    else:
        yield prefix, value


def _diff_manifest(old: dict[str, Any], new: dict[str, Any]) -> Iterator[ManifestChange]:
    a, b = dict(_flatten(old, "")), dict(_flatten(new, ""))
    for path in sorted(a.keys() | b.keys()):
        if a.get(path) != b.get(path) or (path in a) != (path in b):
            yield ManifestChange(path=path, old=a.get(path), new=b.get(path))


# ---- entries ----------------------------------------------------------------------------------


def _diff_entries(old: dict[str, Entry], new: dict[str, Entry]) -> Iterator[EntryChange]:
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a is None or b is None:
            yield EntryChange(path=path, old=a, new=b, what=())
        elif what := _what_changed(a, b):
            yield EntryChange(path=path, old=a, new=b, what=what)


def _what_changed(a: Entry, b: Entry) -> tuple[str, ...]:
    what = []
    if a.info.kind != b.info.kind:
        what.append("type")
    elif a.sha256 != b.sha256:
        what.append("content")
    if a.info.mode != b.info.mode:
        what.append("mode")
    if (a.info.uid, a.info.gid) != (b.info.uid, b.info.gid):
        what.append("owner")
    if a.info.linkname != b.info.linkname:
        what.append("link target")
    return tuple(what)
