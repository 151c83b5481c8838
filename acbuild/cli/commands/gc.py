"""The `gc` verb: trim the local image store (and the blobs pulled from registries)."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.console import say
from acbuild.distribution.imagestore import ImageStore


@click.command("gc")
@click.option("--keep", type=click.IntRange(0), help="Keep the N newest images of each name.")
@click.option("--older-than", type=click.FloatRange(0), metavar="DAYS",
              help="Remove images stored more than DAYS ago.")
@click.option("--blobs", is_flag=True,
              help="Also remove the layers and manifests pulled from docker:// registries "
                   "(with --older-than: those unused for DAYS).")
@click.option("--store", "store_dir", type=click.Path(path_type=Path, file_okay=False))
@global_options
def command(keep: int | None, older_than: float | None, blobs: bool,
            store_dir: Path | None) -> None:
    """Remove images from the local image store."""
    if keep is None and older_than is None and not blobs:
        raise click.UsageError("give --keep N, --older-than DAYS or --blobs")
    store = ImageStore.locate(store_dir)
    if keep is not None or older_than is not None:
        for entry in store.gc(keep=keep, older_than_days=older_than):
            say(f"removed {entry.id} ({entry.name})")
    if blobs:
        from acbuild.distribution.registry.blobstore import BlobStore

        reporter = state().reporter()
        count, size = BlobStore(store.root).gc(
            older_than_days=older_than,
            waiting=lambda: reporter.info("waiting for the pulls and builds using the blob "
                                          "store to end"))
        reporter.info(f"removed {count} pulled blobs ({size} bytes)")
