"""The `images` verbs: list and remove the images in the local store (rkt's image list/rm)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from acbuild.cli.commands.common import global_options
from acbuild.cli.console import say
from acbuild.cli.text import human_size
from acbuild.distribution.imagestore import Entry, ImageStore

_store_dir = click.option("--store", "store_dir", type=click.Path(path_type=Path, file_okay=False),
                          help="Image store (default: $XDG_CACHE_HOME/acbuild-py/images).")
_SHORT = len("sha512-") + 12


_full = click.option("--full", is_flag=True, help="Print whole image IDs.")


@click.group("images", invoke_without_command=True)
@_full
@_store_dir
@global_options
@click.pass_context
def command(ctx: click.Context, full: bool, store_dir: Path | None) -> None:
    """List (the default) and remove the images in the local image store: what fetch and
    BEGIN NAME keep."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_images, full=full, store_dir=store_dir)


@command.command("list")
@_full
@_store_dir
@global_options
def list_images(full: bool, store_dir: Path | None) -> None:
    """One image a line, newest first: ID, name, version, size, signed, when it was stored."""
    entries = sorted(ImageStore.locate(store_dir).entries(), key=lambda e: e.added, reverse=True)
    width = max([len("NAME"), *(len(e.name) for e in entries)])
    click.echo(f"{'ID':<{_SHORT if not full else 135}}  {'NAME':<{width}}  {'VERSION':<10}"
               f"  {'SIZE':>10}  SIGNED  STORED")
    for e in entries:
        image_id = e.id if full else e.id[:_SHORT]
        stored = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.added))
        say(f"{image_id}  {e.name:<{width}}  {_version(e):<10}  {human_size(e.size):>10}"
                   f"  {'yes' if e.signed else 'no ':<6}  {stored}")


@command.command("rm")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@_store_dir
@global_options
def remove(images: tuple[str, ...], store_dir: Path | None) -> None:
    """Remove images given by image ID (or a unique prefix of one, at least sha512- and 12
    hex digits) or by NAME[:VERSION] (every stored image that matches)."""
    store = ImageStore.locate(store_dir)
    entries = store.entries()
    chosen = {e.id: e for ref in images for e in _matching(ref, entries)}
    for entry in store.remove(sorted(chosen)):
        say(f"removed {entry.id} ({entry.name}:{_version(entry)})")


def _matching(ref: str, entries: tuple[Entry, ...]) -> list[Entry]:
    if ref.startswith("sha512-"):
        if len(ref) < _SHORT:
            raise click.UsageError(f"{ref!r}: give at least 12 hex digits of the image ID")
        found = [e for e in entries if e.id.startswith(ref)]
        if len(found) > 1:
            raise click.UsageError(f"{ref!r} is the start of {len(found)} image IDs; give more")
    else:
        name, _, version = ref.partition(":")
        found = [e for e in entries if e.name == name
                 and (not version or dict(e.labels).get("version") == version)]
    if not found:
        raise click.UsageError(f"no image {ref!r} in the store (see 'acbuild-py images list')")
    return found


def _version(entry: Entry) -> str:
    return dict(entry.labels).get("version", "-")
