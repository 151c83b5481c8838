"""CLI: the thin shell around the library — options in, one call, errors rendered, exit code out.

Each verb lives in ``acbuild/commands/<verb>.py``; this module only wires them together and is
the one place where errors become text and exit statuses.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from collections.abc import Sequence

import click

from acbuild import __version__, commands
from acbuild.commands.common import global_options
from acbuild.errors import AcbuildError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="acbuild-py")
@global_options
def cli() -> None:
    """Build, sign, verify and run App Container (AppC) images from an Acfile."""


def _register_verbs(group: click.Group) -> None:
    """Every module in acbuild.commands that exports a click command named ``command`` is a
    verb, so adding one needs no edit here."""
    for info in pkgutil.iter_modules(commands.__path__):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        verb = getattr(module, "command", None)
        if isinstance(verb, click.Command):
            group.add_command(verb)


_register_verbs(cli)


def _debug_requested(argv: Sequence[str]) -> bool:
    # The click context is gone by the time an exception reaches us, so look at argv itself.
    return "--debug" in argv


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    try:
        cli.main(args=args, prog_name="acbuild-py", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else EXIT_ERROR)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_SIGINT)
    except AcbuildError as e:
        if debug:
            traceback.print_exc()
        click.echo(e.render(), err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_SIGINT)
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except Exception as e:  # the one place that turns bugs into a message
        if debug:
            traceback.print_exc()
        click.echo(
            f"acbuild-py: internal error: {type(e).__name__}: {e}\n"
            "    hint: run again with --debug for a traceback, and please report it",
            err=True,
        )
        sys.exit(EXIT_INTERNAL)
