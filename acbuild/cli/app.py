"""CLI: the thin shell around the library — options in, one call, errors rendered, exit code out.

``acbuild.cli.main`` starts it (and answers ``--version`` without loading it).

Each verb lives in ``acbuild/cli/commands/<verb>.py``; this module only wires them together and is
the one place where errors become text and exit statuses.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import sys

import click

from acbuild import __version__
from acbuild.cli import commands
from acbuild.cli.charset import ascii_terminals
from acbuild.cli.commands.common import global_options
from acbuild.cli.console import json_event, progress_mode, render_error
from acbuild.cli.oserrors import from_os_error
from acbuild.errors import AcbuildError
from acbuild.signals import EXIT_SIGTERM, Terminated, install_sigterm_handler
from acbuild.terminal import escape_lines

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_SIGINT = 130

# Modules of acbuild.cli.commands that help the verbs but are not verbs themselves.
HELPER_MODULES = frozenset({"common", "pushopts", "trustopts"})


# What `acbuild-py --help` lists, so that it need not import every verb (each pulls in its
# part of the library); tests/cli/test_app.py keeps every entry equal to the verb's own help.
SUMMARIES = {
    "build": (
        'Build the image an Acfile describes: PATH/Acfile, ./Acfile with no PATH, PATH '
        'itself when it is a file, or -f ACFILE (PATH is then the context directory).'
    ),
    "cache": 'Inspect and prune the build step cache.',
    "completion": 'Print the completion script for SHELL.',
    "convert": (
        'Convert a docker-archive (`docker save`), OCI layout or oci-archive INPUT to an '
        'ACI.'
    ),
    "diff": (
        'Show how image NEW differs from image OLD: their image IDs, manifest fields, and'
        ' entries added, removed or changed (type, content, mode, owner, owner names, '
        'mtime, xattrs, link target, device), their order, and any other difference of '
        "the archives' bytes."
    ),
    "discover": (
        'Discover NAME[:version][,label=value…]: where its image, signature and keys '
        'live.'
    ),
    "export": (
        'Export the ACI IMAGE as an OCI image (one layer): to a layout directory or archive '
        'with -o, to a registry with --push docker://REGISTRY/NAME:TAG, or both.'
    ),
    "fetch": (
        'Fetch IMAGE (NAME[:version][,label=value…], URL or PATH) into the local image '
        'store.'
    ),
    "fmt": (
        'Format each ACFILE: upper-case keywords, single spaces, options in a fixed '
        'order, continuation lines indented four spaces.'
    ),
    "gc": 'Remove images from the local image store.',
    "go": 'Compile Go main packages statically and package each as an image.',
    "images": (
        'List (the default) and remove the images in the local image store: what fetch '
        'and BEGIN NAME keep.'
    ),
    "inspect": 'Show what IMAGE is: its ID, sizes, app and files.',
    "lint": (
        'Warn about likely mistakes in each Acfile (a PATH that is a directory means its '
        'Acfile; no PATH, ./Acfile).'
    ),
    "login": (
        'Log in to REGISTRY (HOST[:PORT]): check the credentials with it, then save them '
        'for pulls in ~/.docker/config.json (mode 0600), or through the credential helper '
        'it names.'
    ),
    "logout": (
        'Forget the credentials saved for REGISTRY (HOST[:PORT]) in ~/.docker/config.json, '
        '$XDG_RUNTIME_DIR/containers/auth.json and the credential helpers they name.'
    ),
    "manifest": 'Print the manifest of IMAGE.',
    "plan": (
        'Print the steps of the Acfile (found as build finds it) with their cache keys, '
        'HIT or MISS; run nothing.'
    ),
    "pull": (
        'Pull IMAGE (docker://[REGISTRY/]NAME[:TAG|@DIGEST]) into the image store\'s blobs '
        'and print the digest of its image manifest.'
    ),
    "publish": 'Publish IMAGE and IMAGE.asc under --repo with an ac-discovery page.',
    "run": 'Run the app of IMAGE (a local .aci) with ARGS appended to its exec.',
    "sign": 'Sign IMAGE with a GnuPG key: writes IMAGE.asc.',
    "trust": (
        'Trust KEYFILEs for --prefix NAME or as --root keys; --prefix without KEYFILE '
        "fetches the keys NAME's discovery page offers (trust on first use, confirmed)."
    ),
    "validate": 'Check that each IMAGE is a valid App Container Image.',
    "verify": "Verify IMAGE's signature; exit 1 with the reason when it is not trusted.",
}


class VerbGroup(click.Group):
    """Verbs are the modules of acbuild.cli.commands, imported only when used: a build should
    not pay for importing gpg, OCI and formatting code (no-op rebuilds are meant to be fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        import pkgutil  # only for help and typos: a verb is found by name

        return sorted(
            info.name
            for info in pkgutil.iter_modules(commands.__path__)
            if info.name not in HELPER_MODULES and not info.name.startswith("_")
        )

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit))
                for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if args and self.get_command(ctx, name) is None and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            ctx.fail(f"No such command '{name}'.{hint}")
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUMMARIES:  # the verb modules' names (a test holds them equal)
            return None
        module = importlib.import_module(f"{commands.__name__}.{cmd_name}")
        verb = getattr(module, "command", None)
        return verb if isinstance(verb, click.Command) else None


@click.group(cls=VerbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="acbuild-py")
@global_options
def cli() -> None:
    """Build, sign, verify and run App Container (AppC) images from an Acfile."""


_ERROR = re.compile(r"^(\S*?)(error|warning|Error):", re.M)  # click's usage errors: Error:


def _coloured(text: str, mode: str) -> str:
    """Errors in red on a colour terminal (the text is escaped already: no ESC of its own)."""
    colour = (mode in ("auto", "tty") and sys.stderr.isatty() and "NO_COLOR" not in os.environ
              and os.environ.get("TERM", "dumb") != "dumb")
    return _ERROR.sub(lambda m: f"{m[1]}\x1b[1;31m{m[2]}:\x1b[0m", text) if colour else text


def _stopped(how: str, mode: str) -> str:
    return json_event("error", message=how, hint=None) if mode == "json" else how


def run(args: list[str]) -> int:
    """Run the verb ``args`` name; returns the exit status."""
    # The click context is gone by the time an error reaches us, so read argv itself.
    debug = "--debug" in args
    mode = progress_mode(args)
    ascii_terminals()
    install_sigterm_handler()
    try:
        # standalone_mode=False returns a verb's exit code instead of raising it.
        code = cli.main(args=args, prog_name="acbuild-py", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        usage = isinstance(e, click.UsageError)
        if mode == "json":
            click.echo(json_event("error", message=e.format_message(), hint=None,
                                  **({"usage": True} if usage else {})), err=True)
        else:
            # Usage errors quote option values and paths (a file name from a glob may hold ESC).
            shown = io.StringIO()
            e.show(file=shown)
            click.echo(_coloured(escape_lines(shown.getvalue().rstrip("\n")), mode), err=True)
        return EXIT_USAGE if usage else EXIT_ERROR
    except (click.Abort, KeyboardInterrupt):
        click.echo(_stopped("interrupted", mode), err=True)
        return EXIT_SIGINT
    except Terminated:
        click.echo(_stopped("terminated", mode), err=True)
        return EXIT_SIGTERM
    except SystemExit as e:  # verbs that end with sys.exit(status), e.g. run
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as e:  # the one place that turns every failure into a message
        import traceback

        if isinstance(e, OSError) and (user_error := from_os_error(e)) is not None:
            if debug:
                traceback.print_exc()
            e = user_error
        if debug and isinstance(e, AcbuildError) and e.__traceback__ is not None:
            traceback.print_exc()  # render_error adds the traceback of internal errors itself
        click.echo(_coloured(render_error(e, mode, debug=debug), mode), err=True)
        return EXIT_ERROR if isinstance(e, AcbuildError) else EXIT_INTERNAL
    return code if isinstance(code, int) else 0
