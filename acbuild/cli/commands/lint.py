"""The `lint` verb: warnings about Acfiles, one ``file:line:column: warning[ACnnn]`` a line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from acbuild.acfile.render import load_variables
from acbuild.cli.commands.common import global_options
from acbuild.cli.console import say
from acbuild.plan.lint import RULES, lint_file


@click.command("lint", epilog="\b\nRules:\n" + "\n".join(f"  {r}  {t}" for r, t in RULES.items()))
@click.argument("acfiles", nargs=-1, required=True,
                type=click.Path(path_type=Path, dir_okay=False))
@click.option("--context", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Directory COPY sources are relative to (default: each Acfile's).")
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE",
              help="Template variable for the Acfile (repeatable).")
@click.option("--var-file", "var_files", multiple=True, metavar="FILE.toml",
              type=click.Path(path_type=Path, dir_okay=False), help="TOML file of variables.")
@global_options
def command(acfiles: tuple[Path, ...], context: Path | None, variables: tuple[str, ...],
            var_files: tuple[Path, ...]) -> None:
    """Warn about likely mistakes in each ACFILE. Exit 1 if anything is reported.

    Silence a rule for one instruction with '# acbuild: ignore=AC004' on the line before it.
    """
    values = load_variables(variables, var_files)
    count = 0
    for acfile in acfiles:
        for finding in lint_file(acfile, context=context, variables=values):
            say(finding.render())
            count += 1
    if count:
        # Not click's Exit: cli.main runs click with standalone_mode=False, which returns
        # an Exit's code instead of exiting with it.
        sys.exit(1)
