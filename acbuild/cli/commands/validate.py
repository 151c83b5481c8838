"""The `validate` verb: actool's checks on ACIs, and stricter ones; each problem a line."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options
from acbuild.image.validate import check_image


@click.command("validate")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@global_options
def command(images: tuple[Path, ...]) -> None:
    """Check that each IMAGE is a valid App Container Image. Exit 1 if any is not."""
    failed = False
    for image in images:
        report = check_image(image)
        problems = report.problems
        for problem in problems:
            click.echo(f"{image}: {problem}", err=True)
        for warning in report.warnings:
            click.echo(f"{image}: warning: {warning}", err=True)
        if problems:
            failed = True
        else:
            click.echo(f"{image}: valid", err=True)
    if failed:
        raise click.exceptions.Exit(1)
