"""The `gc` verb: trim the local image store."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options
from acbuild.cli.console import say
from acbuild.distribution.imagestore import ImageStore


@click.command("gc")
@click.option("--keep", type=click.IntRange(0), help="Keep the N newest images of each name.")
@click.option("--older-than", type=click.FloatRange(0), metavar="DAYS",
              help="Remove images stored more than DAYS ago.")
@click.option("--store", "store_dir", type=click.Path(path_type=Path, file_okay=False))
@global_options
def command(keep: int | None, older_than: float | None, store_dir: Path | None) -> None:
    """Remove images from the local image store."""
    if keep is None and older_than is None:
        raise click.UsageError("give --keep N or --older-than DAYS")
    for entry in ImageStore.locate(store_dir).gc(keep=keep, older_than_days=older_than):
        say(f"removed {entry.id} ({entry.name})")
