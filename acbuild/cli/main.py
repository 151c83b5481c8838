"""CLI: the thin shell around the library — options in, one call, errors rendered, exit code out.

Each verb lives in ``acbuild/cli/commands/<verb>.py``; this module only wires them together and is
the one place where errors become text and exit statuses.
"""

from __future__ import annotations

import importlib
import io
import pkgutil
import signal
import sys
import traceback
from collections.abc import Sequence

import click

from acbuild import __version__
from acbuild.cli import commands
from acbuild.cli.commands.common import global_options
from acbuild.cli.console import progress_mode, render_error
from acbuild.cli.oserrors import from_os_error
from acbuild.errors import AcbuildError
from acbuild.signals import EXIT_SIGTERM, Terminated, install_sigterm_handler
from acbuild.terminal import escape_lines

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_SIGINT = 130

# Modules of acbuild.cli.commands that help the verbs but are not verbs themselves.
HELPER_MODULES = frozenset({"common", "trustopts"})


class VerbGroup(click.Group):
    """Verbs are the modules of acbuild.cli.commands, imported only when used: a build should
    not pay for importing gpg, OCI and formatting code (no-op rebuilds are meant to be fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(
            info.name
            for info in pkgutil.iter_modules(commands.__path__)
            if info.name not in HELPER_MODULES and not info.name.startswith("_")
        )

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.list_commands(ctx):
            return None
        module = importlib.import_module(f"{commands.__name__}.{cmd_name}")
        verb = getattr(module, "command", None)
        return verb if isinstance(verb, click.Command) else None


@click.group(cls=VerbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="acbuild-py")
@global_options
def cli() -> None:
    """Build, sign, verify and run App Container (AppC) images from an Acfile."""


def main(argv: Sequence[str] | None = None) -> None:
    code = _main(list(sys.argv[1:] if argv is None else argv))
    # The work is over, its outcome decided: a signal now would only kill the interpreter
    # while it shuts down (exit -15 for a build that succeeded).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)


def _main(args: list[str]) -> int:
    # The click context is gone by the time an error reaches us, so read argv itself.
    debug = "--debug" in args
    mode = progress_mode(args)
    install_sigterm_handler()
    try:
        # standalone_mode=False returns a verb's exit code instead of raising it.
        code = cli.main(args=args, prog_name="acbuild-py", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        # Usage errors quote option values and paths (a file name from a glob may hold ESC).
        shown = io.StringIO()
        e.show(file=shown)
        click.echo(escape_lines(shown.getvalue().rstrip("\n")), err=True)
        return EXIT_USAGE if isinstance(e, click.UsageError) else EXIT_ERROR
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_SIGINT
    except Terminated:
        click.echo("terminated", err=True)
        return EXIT_SIGTERM
    except SystemExit as e:  # verbs that end with sys.exit(status), e.g. run
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as e:  # the one place that turns every failure into a message
        if isinstance(e, OSError) and (user_error := from_os_error(e)) is not None:
            if debug:
                traceback.print_exc()
            e = user_error
        if debug and isinstance(e, AcbuildError) and e.__traceback__ is not None:
            traceback.print_exc()  # render_error adds the traceback of internal errors itself
        click.echo(render_error(e, mode, debug=debug), err=True)
        return EXIT_ERROR if isinstance(e, AcbuildError) else EXIT_INTERNAL
    return code if isinstance(code, int) else 0
