"""The `fmt` verb: rewrite Acfiles in the canonical style; --check says which would change."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from acbuild.acfile.fmt import format_text
from acbuild.cli.commands.common import global_options, state
from acbuild.errors import AcfileError
from acbuild.fs.atomic import atomic_write
from acbuild.fs.regular import read_regular


@click.command("fmt")
@click.argument("acfiles", nargs=-1, required=True,
                type=click.Path(path_type=Path, dir_okay=False))
@click.option("--check", is_flag=True,
              help="Change nothing; list the files that are not formatted and exit 1 if any.")
@global_options
def command(acfiles: tuple[Path, ...], check: bool) -> None:
    """Format each ACFILE: upper-case keywords, single spaces, options in a fixed order,
    continuation lines indented four spaces. Template ({{ }}, {% %}) lines are kept as written.
    """
    reporter = state().reporter()
    unformatted = 0
    for acfile in acfiles:
        text = _read(acfile)
        formatted = format_text(text)
        if formatted == text:
            continue
        unformatted += 1
        if check:
            click.echo(str(acfile))
            continue
        mode = acfile.stat().st_mode & 0o7777
        with atomic_write(acfile, mode=mode) as f:
            f.write(formatted.encode("utf-8"))
        reporter.info(f"formatted {acfile}")
    if check and unformatted:
        sys.exit(1)  # not click's Exit: cli.main does not turn its code into the exit status


def _read(path: Path) -> str:
    try:
        return read_regular(path).decode("utf-8")
    except OSError as e:
        raise AcfileError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise AcfileError(f"{path} is not UTF-8 text") from None
