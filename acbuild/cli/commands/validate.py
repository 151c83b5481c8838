"""The `validate` verb: actool's checks on ACIs, and stricter ones; each problem a line."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options
from acbuild.cli.console import say
from acbuild.image.validate import validate_image


@click.command("validate")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@global_options
def command(images: tuple[Path, ...]) -> None:
    """Check that each IMAGE is a valid App Container Image. Exit 1 if any is not."""
    failed = False
    for image in images:
        problems = validate_image(image)
        for problem in problems:
            say(f"{image}: {problem}", err=True)
        if problems:
            failed = True
        else:
            say(f"{image}: valid", err=True)
    if failed:
        raise click.exceptions.Exit(1)
