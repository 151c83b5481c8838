"""Command helpers shared by every verb: global options and the reporter they choose.

Global options are accepted before the verb and after it; both land in one CliState.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from acbuild.report import Reporter

F = TypeVar("F", bound=Callable[..., Any])

PROGRESS_MODES = ("auto", "tty", "plain", "json")
# image.compression.COMPRESSIONS, written out so that option parsing and --help do not load
# the compressors (a test keeps the two equal).
COMPRESSIONS = ("gzip", "xz", "bzip2", "none")

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'0', '512M', '10G', '1.5GiB' -> bytes."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise click.BadParameter(f"{text!r} is not a size such as 500M or 10G")
    size = float(found.group(1)) * _UNITS[found.group(2).lower()]
    if not size < 1 << 62:  # also inf, from a number longer than a float holds
        raise click.BadParameter(f"{text!r} is larger than any disk")
    return int(size)


class Size(click.ParamType[int]):
    """A byte count written as 500M, 10G or 1.5GiB."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        return value if isinstance(value, int) else parse_size(str(value))


@dataclass(slots=True)
class CliState:
    debug: bool = False
    quiet: bool = False
    verbose: bool = False
    progress: str = "auto"
    made: Reporter | None = None

    def reporter(self) -> Reporter:
        """The command's one reporter. It is closed (a live display stopped) when the click
        context ends, also on errors and ^C, so the error message is not drawn over."""
        if self.made is None:
            from acbuild.cli.console import close_reporter, make_reporter

            self.made = make_reporter(self.resolved_progress(), quiet=self.quiet,
                                      verbose=self.verbose)
            ctx = click.get_current_context(silent=True)
            if ctx is not None:
                made = self.made
                ctx.find_root().call_on_close(lambda: close_reporter(made))
        return self.made

    def resolved_progress(self) -> str:
        """--progress, else $ACBUILD_PROGRESS, else tty on a terminal that can draw one."""
        chosen = self.progress
        if chosen == "auto" and os.environ.get("ACBUILD_PROGRESS") in PROGRESS_MODES:
            chosen = os.environ["ACBUILD_PROGRESS"]
        if chosen != "auto":
            return chosen
        if (os.environ.get("CI") or not sys.stderr.isatty()
                or os.environ.get("TERM", "dumb") == "dumb"):
            return "plain"
        return "tty"


def state(ctx: click.Context | None = None) -> CliState:
    root = (ctx or click.get_current_context()).find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        # Only an option actually given overrides what was said before the verb. click tells
        # a callback neither where a value came from nor, since 8.3, the default (a sentinel):
        # compare with CliState's own default, which each option's default equals.
        if value != getattr(CliState(), name):
            setattr(state(ctx), name, value)
        return value

    return callback


def global_options(f: F) -> F:
    """--debug, -q, -v and --progress, for the group and for every verb."""
    opts = [
        click.option("--debug", is_flag=True, expose_value=False, callback=_store("debug"),
                     help="Show tracebacks for internal errors."),
        click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_store("quiet"),
                     help="Print only the result (e.g. the image ID)."),
        click.option("-v", "--verbose", is_flag=True, expose_value=False,
                     callback=_store("verbose"), help="Show debug details in the log."),
        click.option("--progress", type=click.Choice(PROGRESS_MODES), default="auto",
                     expose_value=False, callback=_store("progress"),
                     help="Log style: tty (live), plain (CI), json; auto picks."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def variable_options() -> list[Callable[[F], F]]:
    """--var and --var-file (build, plan, lint)."""
    return [
        click.option("--var", "variables", multiple=True, metavar="KEY=VALUE",
                     callback=_var_pair, help="Template variable for the Acfile (repeatable)."),
        click.option("--var-file", "var_files", multiple=True, metavar="FILE.toml",
                     type=click.Path(path_type=Path, dir_okay=False),
                     help="TOML file of variables."),
    ]


def _var_pair(ctx: click.Context, param: click.Parameter,
              value: tuple[str, ...]) -> tuple[str, ...]:
    """Each --var checked as the build will read it: a bad one is a usage error (exit 2)."""
    if not value:
        return value
    from acbuild.acfile.variables import parse_var
    from acbuild.errors import AcfileError

    for arg in value:
        if "=" not in arg:
            raise click.BadParameter(f"{arg!r} is not KEY=VALUE", ctx=ctx, param=param)
        try:
            parse_var(arg)
        except AcfileError as e:
            raise click.BadParameter(e.message.removeprefix(f"--var {arg!r}: "), ctx=ctx,
                                     param=param) from None
    return value


def acfile_argument(f: F) -> F:
    """``[PATH]`` and ``-f/--file``, as docker build takes them: no PATH means ./Acfile, a
    directory means its Acfile, and with -f the PATH is the context directory."""
    f = click.option("-f", "--file", "acfile_file", metavar="ACFILE",
                     type=click.Path(path_type=Path, dir_okay=False),
                     help="The Acfile to read (default: PATH/Acfile, or ./Acfile).")(f)
    return click.argument("path", required=False, type=click.Path(path_type=Path))(f)


def resolve_acfile(path: Path | None, acfile_file: Path | None,
                   context: Path | None) -> tuple[Path, Path | None]:
    """(the Acfile, the context directory or None for the Acfile's own)."""
    if acfile_file is not None:
        if path is not None:
            if context is not None:
                raise click.UsageError("give the context once: as PATH or as --context")
            if not path.is_dir():
                raise click.UsageError(f"with -f, PATH is the context directory; "
                                       f"{str(path)!r} is not a directory")
            context = path
        return acfile_file, context
    where = path or Path(".")
    if where.is_dir():
        found = where / "Acfile"
        if not found.is_file():
            raise click.UsageError(f"no Acfile in {str(where)!r} (name one with -f FILE)")
        return found, context
    return where, context


allow_path_option = click.option(
    "--allow-path", "allow_paths", multiple=True, metavar="DIR",
    type=click.Path(path_type=Path, file_okay=False),
    help="Let BEGIN read a host path below DIR, outside the Acfile's directory and the "
         "context (repeatable).")


def acfile_options(f: F) -> F:
    """What selects and feeds an Acfile (build and plan): context, host paths BEGIN may
    read, variables, target stage, compression (part of the image's cache key) and the
    cache directory."""
    opts = [
        click.option("--context", type=click.Path(path_type=Path, file_okay=False, exists=True),
                     help="Directory COPY sources are relative to (default: the Acfile's)."),
        allow_path_option,
        *variable_options(),
        click.option("--target", metavar="STAGE", help="Use this stage instead of the last one."),
        click.option("--compression", type=click.Choice(COMPRESSIONS), default="gzip",
                     show_default=True),
        click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
                     help="Step cache directory "
                          "(default: $XDG_CACHE_HOME/acbuild-py/build-cache)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f
