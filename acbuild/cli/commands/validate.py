"""The `validate` verb: actool's checks on ACIs, and stricter ones; each problem a line."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.console import json_event, say
from acbuild.image.validate import check_image


@click.command("validate")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@global_options
def command(images: tuple[Path, ...]) -> None:
    """Check that each IMAGE is a valid App Container Image. Exit 1 if any is not."""
    as_json = state().resolved_progress() == "json"
    failed = False
    for image in images:
        report = check_image(image)
        problems = report.problems
        failed = failed or bool(problems)
        if as_json:
            click.echo(json_event("validated", image=str(image), valid=not problems,
                                  problems=list(problems), warnings=list(report.warnings)),
                       err=True)
            continue
        for problem in problems:
            say(f"{image}: {problem}", err=True)
        for warning in report.warnings:
            say(f"{image}: warning: {warning}", err=True)
        if not problems:
            say(f"{image}: valid", err=True)
    if failed:
        raise click.exceptions.Exit(1)
