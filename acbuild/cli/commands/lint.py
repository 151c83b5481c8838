"""The `lint` verb: warnings about Acfiles, one ``file:line:column: warning[ACnnn]`` a line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from acbuild.acfile.render import load_variables
from acbuild.cli.commands.common import (
    allow_path_option,
    global_options,
    resolve_acfile,
    state,
    variable_options,
)
from acbuild.cli.console import json_event, say
from acbuild.plan.lint import RULES, lint_file


@click.command("lint", epilog="\b\nRules:\n" + "\n".join(f"  {r}  {t}" for r, t in RULES.items()))
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--context", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Directory COPY sources are relative to (default: each Acfile's).")
@allow_path_option
@variable_options()[0]
@variable_options()[1]
@global_options
def command(paths: tuple[Path, ...], context: Path | None, allow_paths: tuple[Path, ...],
            variables: tuple[str, ...], var_files: tuple[Path, ...]) -> None:
    """Warn about likely mistakes in each Acfile (a PATH that is a directory means its Acfile;
    no PATH, ./Acfile). Exit 1 if anything is reported.

    Silence a rule for one instruction with '# acbuild: ignore=AC004' on the line before it.
    """
    acfiles = [resolve_acfile(p, None, None)[0] for p in paths or (None,)]
    values = load_variables(variables, var_files)
    as_json = state().resolved_progress() == "json"
    count = 0
    for acfile in acfiles:
        for finding in lint_file(acfile, context=context, variables=values,
                                 allow_paths=allow_paths):
            if as_json:
                click.echo(json_event("finding", rule=finding.rule, message=finding.message,
                                      file=finding.span.file, line=finding.span.line,
                                      column=finding.span.column))
            else:
                say(finding.render())
            count += 1
    if count:
        # Not click's Exit: cli.main runs click with standalone_mode=False, which returns
        # an Exit's code instead of exiting with it.
        sys.exit(1)
