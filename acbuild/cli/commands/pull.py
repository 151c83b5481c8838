"""The `pull` verb: a docker:// image's blobs into the image store; print its digest."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.commands.trustopts import (
    max_pull_size_option,
    registry_access,
    registry_options,
)
from acbuild.cli.console import say


@click.command("pull")
@click.argument("image")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Extra CA certificate for HTTPS.")
@click.option("--store", "store_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Image store (default: $XDG_CACHE_HOME/acbuild-py/images).")
@registry_options
@max_pull_size_option
@global_options
def command(image: str, ca_file: Path | None, store_dir: Path | None,
            insecure_registry: tuple[str, ...], platform: str | None,
            max_image_size: int) -> None:
    """Pull IMAGE (docker://[REGISTRY/]NAME[:TAG|@DIGEST]) into the image store's blobs and
    print the digest of its image manifest.

    The manifest, config and layers are each checked against their digest as they stream in;
    nothing is converted. A later BEGIN, convert or fetch of the image transfers no layer,
    and the digest printed pins it (docker://NAME@DIGEST). Pulling needs no
    --insecure-skip-verify: what uses the image applies the signature rule."""
    if not image.startswith("docker://"):
        raise click.UsageError(f"{image!r}: pull takes a docker:// image "
                               "(fetch stores AppC images)")
    from acbuild.build.registrypull import pull_to_store

    access = registry_access(insecure_registry=insecure_registry, platform=platform,
                             ca_file=ca_file, store_dir=store_dir,
                             max_image_size=max_image_size)
    say(pull_to_store(image, access, state().reporter()).digest)
