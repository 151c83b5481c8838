"""The `manifest` verb: print an image's manifest as pretty JSON (actool cat-manifest)."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options
from acbuild.image.aci import read_manifest
from acbuild.image.manifest import to_json_pretty


@click.command("manifest")
@click.argument("image", type=click.Path(path_type=Path))
@global_options
def command(image: Path) -> None:
    """Print the manifest of IMAGE."""
    click.echo(to_json_pretty(read_manifest(image)))
