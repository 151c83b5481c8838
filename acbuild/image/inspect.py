"""Inspect (``acbuild-py inspect`` and ``manifest``): what an ACI holds, in one pass.

The image ID is hashed from the same decompressed bytes tarfile reads, so an image is
read once; the CLI renders the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from acbuild.image.aci import EntryInfo, ManifestReader, entry_info, open_tar
from acbuild.image.manifest import App, ImageManifest
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


# ---- the manifest as (key, value) lines for people: every field, unknown keys included ------


def manifest_facts(m: ImageManifest) -> list[tuple[str, str]]:
    """Every field of ``m`` as (key, text) lines, in manifest order; keys the model does not
    know are shown as JSON, so nothing an image says is hidden."""
    facts = [("acVersion", m.ac_version)]
    facts += [(f"label {lb.name}", _with_extra(lb.value, lb.extra)) for lb in m.labels]
    if m.app is not None:
        facts += _app_facts(m.app)
    for n, d in enumerate(m.dependencies):
        parts = [d.image_name]
        parts += [f"{lb.name}={lb.value}" for lb in d.labels]
        if d.image_id is not None:
            parts.append(f"imageID {d.image_id}")
        if d.size is not None:
            parts.append(f"size {d.size}")
        facts.append((f"dependency {n}", _with_extra(", ".join(parts), d.extra)))
    facts += [("path whitelist", path) for path in m.path_whitelist]
    facts += [(f"annotation {a.name}", _with_extra(a.value, a.extra)) for a in m.annotations]
    facts += [(key, text) for key, text in m.extra]
    return facts


def _app_facts(app: App) -> list[tuple[str, str]]:
    facts = [("exec", shlex.join(app.exec) if app.exec else "-"),
             ("user:group", f"{app.user}:{app.group}")]
    if app.supplementary_gids:
        facts.append(("supplementary GIDs", " ".join(map(str, app.supplementary_gids))))
    if app.working_directory:
        facts.append(("working directory", app.working_directory))
    facts += [(f"env {e.name}", _with_extra(e.value, e.extra)) for e in app.environment]
    facts += [(f"event {e.name}", _with_extra(shlex.join(e.exec) or "-", e.extra))
              for e in app.event_handlers]
    facts += [(f"isolator {i.name}", _with_extra(i.value_json, i.extra)) for i in app.isolators]
    for mp in app.mount_points:
        text = mp.path + (" (read-only)" if mp.read_only else "")
        facts.append((f"mount {mp.name}", _with_extra(text, mp.extra)))
    for p in app.ports:
        text = f"{p.protocol}/{p.port}"
        if p.count != 1:
            text += f"-{p.port + p.count - 1} (count {p.count})"
        if p.socket_activated:
            text += " socket-activated"
        facts.append((f"port {p.name}", _with_extra(text, p.extra)))
    facts += [(f"app {key}", text) for key, text in app.extra]
    return facts


def _with_extra(text: str, extra: tuple[tuple[str, str], ...]) -> str:
    if not extra:
        return text
    return f"{text} {json.dumps(dict((k, json.loads(v)) for k, v in extra), sort_keys=True)}"


