"""The `discover` verb: AppC meta discovery, printing ACI, signature and key URLs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from acbuild.cli.commands.common import global_options
from acbuild.cli.console import say
from acbuild.distribution.discovery import HttpOptions, discover, parse_ref


@click.command("discover")
@click.argument("name")
@click.option("--insecure", is_flag=True, help="Use plain HTTP.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port of the name's host.")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@global_options
def command(name: str, insecure: bool, port: int | None, ca_file: Path | None,
            as_json: bool) -> None:
    """Discover NAME[:version][,label=value…]: where its image, signature and keys live."""
    found = discover(parse_ref(name), HttpOptions(insecure=insecure, port=port, ca_file=ca_file))
    if as_json:
        click.echo(json.dumps(found.as_json(), indent=2, sort_keys=True))
        return
    for e in found.endpoints:
        say(f"ACI: {e.aci}, ASC: {e.asc}")
    if found.keys:
        say(f"Keys: {', '.join(found.keys)}")
