"""Diff (inspection): what differs between two images, manifest fields and rootfs entries.

Both archives are streamed once; file contents are compared by a SHA-256 taken while
reading, so only per-entry metadata is ever held in memory. The image IDs are hashed in the
same pass: two images whose IDs differ are never reported the same — what the fields below
do not explain (header encoding, padding) is reported as a difference of the archives' bytes.
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
    index: int  # position in the archive
    names: tuple[str, str]  # owner names (uname, gname) as the header has them
    device: tuple[int, int]  # (major, minor) of character and block devices
    xattrs: tuple[tuple[str, str], ...]  # extended attributes from PAX records, sorted


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
    old_id: str
    new_id: str
    manifest: tuple[ManifestChange, ...]
    entries: tuple[EntryChange, ...]
    # Differences the image ID sees beyond the fields above, as sentences: the order of the
    # entries, the manifest's JSON text, the archives' bytes.
    archive: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        return self.old_id == self.new_id


@dataclass(frozen=True, slots=True, kw_only=True)
class _Image:
    image_id: str
    manifest: dict[str, Any]
    manifest_bytes: bytes
    entries: dict[str, Entry]


def diff_images(old: Path, new: Path, *, limits: Limits = Limits()) -> ImageDiff:  # noqa: B008
    a, b = _read(old, limits), _read(new, limits)
    manifest = tuple(_diff_manifest(a.manifest, b.manifest))
    entries = tuple(_diff_entries(a.entries, b.entries))
    archive = []
    if not manifest and a.manifest_bytes != b.manifest_bytes:
        archive.append("the manifest's JSON text differs (same fields, other spelling or order)")
    if moved := _first_reordered(a.entries, b.entries):
        archive.append(f"the entries are in another order, from {moved}")
    if a.image_id != b.image_id and not (manifest or entries or archive):
        archive.append("the archives' bytes differ (tar header encoding or padding), "
                       "though every entry and field is the same")
    return ImageDiff(old_id=a.image_id, new_id=b.image_id, manifest=manifest, entries=entries,
                     archive=tuple(archive))


def _read(path: Path, limits: Limits) -> _Image:
    reader = ManifestReader(path, limits)
    entries: dict[str, Entry] = {}
    digest = hashlib.sha512()
    with open_tar(path) as stream:
        source = TarSource(stream, hasher=digest)
        for index, (member, tar) in enumerate(members(source, limits)):
            info = entry_info(member)
            content = None
            # The manifest's fields are compared as JSON; its header like any entry's.
            if not reader.offer(info.name, member, tar) and member.isreg():
                content = _sha256(tar, member)
            entries[info.name] = Entry(
                info=info, sha256=content,
                index=index, names=(member.uname, member.gname),
                device=(member.devmajor, member.devminor) if member.isdev() else (0, 0),
                xattrs=_xattrs(member),
            )
        with archive_errors():
            while source.read(CHUNK):  # the image ID covers the end blocks too
                pass
    raw = reader.raw()
    return _Image(image_id="sha512-" + digest.hexdigest(), manifest=_manifest(path, raw),
                  manifest_bytes=raw, entries=entries)


def _xattrs(member: tarfile.TarInfo) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k.split(".xattr.", 1)[1], v) for k, v in member.pax_headers.items()
                        if ".xattr." in k))


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
    if a.names != b.names:
        what.append("owner names")
    if a.info.mtime != b.info.mtime:
        what.append("mtime")
    if a.xattrs != b.xattrs:
        what.append("xattrs")
    if a.info.linkname != b.info.linkname:
        what.append("link target")
    if a.device != b.device:
        what.append("device")
    return tuple(what)


def _first_reordered(old: dict[str, Entry], new: dict[str, Entry]) -> str | None:
    """The first entry (in the old order) from which the shared entries' order differs."""
    shared = [p for p in sorted(old, key=lambda p: old[p].index) if p in new]
    in_new = sorted(shared, key=lambda p: new[p].index)
    return next((a for a, b in zip(shared, in_new, strict=True) if a != b), None)
