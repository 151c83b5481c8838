"""The `run` verb: an ACI's app started in the sandbox; its output on stdout, its exit status ours.

Everything after IMAGE (or after ``--``) is appended to the app's exec.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.commands.trustopts import fetch_options, trust_options
from acbuild.run.runimage import RunOptions, parse_set_env, parse_volume, run_image
from acbuild.signals import terminate_as_exit


@click.command("run", context_settings={"allow_interspersed_args": False,
                                        "ignore_unknown_options": True})
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--volume", "volumes", multiple=True, metavar="NAME:/HOST/PATH[:ro]",
              help="Back the image's mount point NAME with a host path (repeatable).")
@click.option("--network", type=click.Choice(["none", "host"]), default="none",
              show_default=True, help="none: loopback only; host: the host's network.")
@click.option("--set-env", "set_env", multiple=True, metavar="NAME=VALUE",
              help="Set an environment variable of the app, over the image's (repeatable).")
@click.option("--no-stdin", is_flag=True, help="Give the app /dev/null as stdin.")
@trust_options
@global_options
def command(image: Path, args: tuple[str, ...], volumes: tuple[str, ...], network: str,
            set_env: tuple[str, ...], no_stdin: bool, **trust: Any) -> None:
    """Run the app of IMAGE (a local .aci) with ARGS appended to its exec.

    Options go before IMAGE; everything after it is the app's.
    """
    reporter = state().reporter()
    if args[:1] == ("--",):
        args = args[1:]  # click keeps the separator once IMAGE has ended option parsing
    options = RunOptions(
        image=image,
        args=args,
        volumes=tuple(parse_volume(v) for v in volumes),
        network=network,  # type: ignore[arg-type]  # click.Choice checked it
        stdin=not no_stdin,
        fetch=fetch_options(**trust),
        set_env=tuple(parse_set_env(e) for e in set_env),
    )
    with terminate_as_exit():
        status = run_image(options, reporter, click.echo)
    # Not click's Exit: the CLI runs click with standalone_mode=False, which swallows its code.
    sys.exit(status)
