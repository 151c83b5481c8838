"""The `diff` verb: manifest and file differences between two images; exit 1 when they differ."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.console import render_error, say
from acbuild.cli.text import human_size
from acbuild.errors import AcbuildError
from acbuild.image.diff import Entry, EntryChange, ImageDiff, ManifestChange, diff_images
from acbuild.terminal import json_dumps

EXIT_TROUBLE = 2  # as diff(1): 0 same, 1 different, 2 trouble


@click.command("diff")
@click.argument("old", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("new", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as one JSON object.")
@global_options
def command(old: Path, new: Path, as_json: bool) -> None:
    """Show how image NEW differs from image OLD: their image IDs, manifest fields, and
    entries added, removed or changed (type, content, mode, owner, owner names, mtime, xattrs,
    link target, device), their order, and any other difference of the archives' bytes. Exit
    0 when the image IDs are the same, 1 when they differ, 2 on trouble."""
    try:
        result = diff_images(old, new)
    except AcbuildError as e:
        click.echo(render_error(e, state().resolved_progress()), err=True)
        sys.exit(EXIT_TROUBLE)
    if as_json:
        click.echo(json_dumps(as_object(result), sort_keys=True))
    else:
        for line in as_lines(result):
            say(line)
    sys.exit(0 if result.same else 1)  # cli.main does not turn click's Exit into the status


def as_lines(result: ImageDiff) -> list[str]:
    if result.same:
        return []
    lines = [f"- image {result.old_id}", f"+ image {result.new_id}"]
    lines += [_manifest_line(c) for c in result.manifest]
    lines += [_entry_line(c) for c in result.entries]
    lines += [f"~ archive: {sentence}" for sentence in result.archive]
    return lines


_MARK = {"added": "+", "removed": "-", "changed": "~"}


def _manifest_line(c: ManifestChange) -> str:
    def show(v: Any) -> str:
        return json_dumps(v)

    if c.change == "changed":
        return f"~ manifest {c.path}: {show(c.old)} -> {show(c.new)}"
    return f"{_MARK[c.change]} manifest {c.path}: {show(c.new if c.old is None else c.old)}"


def _describe(e: Entry) -> str:
    if e.info.kind == "file":
        return f"file, {human_size(e.info.size)}"
    if e.info.linkname:
        return f"{e.info.kind} -> {e.info.linkname}"
    return e.info.kind


def _entry_line(c: EntryChange) -> str:
    if c.old is None or c.new is None:
        entry = c.new or c.old
        assert entry is not None
        return f"{_MARK[c.change]} {c.path} ({_describe(entry)})"
    a, b = c.old.info, c.new.info
    details = []
    for what in c.what:
        match what:
            case "type":
                details.append(f"type {a.kind} -> {b.kind}")
            case "content":
                details.append(f"content {human_size(a.size)} -> {human_size(b.size)}")
            case "mode":
                details.append(f"mode {a.mode:04o} -> {b.mode:04o}")
            case "owner":
                details.append(f"owner {a.uid}:{a.gid} -> {b.uid}:{b.gid}")
            case "owner names":
                details.append(f"owner names {_names(c.old)} -> {_names(c.new)}")
            case "mtime":
                details.append(f"mtime {_time(a.mtime)} -> {_time(b.mtime)}")
            case "xattrs":
                details.append(f"xattrs {_xattrs(c.old)} -> {_xattrs(c.new)}")
            case "link target":
                details.append(f"link target {a.linkname} -> {b.linkname}")
            case "device":
                details.append(f"device {_device(c.old)} -> {_device(c.new)}")
    return f"~ {c.path}: {', '.join(details)}"


def _names(e: Entry) -> str:
    return f"{e.names[0] or '-'}:{e.names[1] or '-'}"


def _time(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _xattrs(e: Entry) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in e.xattrs) + "}"


def _device(e: Entry) -> str:
    return f"{e.device[0]}:{e.device[1]}"


def _entry_object(e: Entry | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {"type": e.info.kind, "size": e.info.size, "mode": f"{e.info.mode:04o}",
            "uid": e.info.uid, "gid": e.info.gid, "uname": e.names[0], "gname": e.names[1],
            "mtime": e.info.mtime, "xattrs": dict(e.xattrs), "link": e.info.linkname or None,
            "device": list(e.device) if e.info.kind in ("chr", "blk") else None,
            "sha256": e.sha256}


def as_object(result: ImageDiff) -> dict[str, Any]:
    return {
        "same": result.same,
        "old_id": result.old_id,
        "new_id": result.new_id,
        "archive": list(result.archive),
        "manifest": [{"path": c.path, "change": c.change, "old": c.old, "new": c.new}
                     for c in result.manifest],
        "files": [{"path": c.path, "change": c.change, "what": list(c.what),
                   "old": _entry_object(c.old), "new": _entry_object(c.new)}
                  for c in result.entries],
    }
