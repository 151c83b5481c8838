"""The `fetch` verb: download, verify and store an image; print its image ID."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.console import say
from acbuild.distribution.fetch import FetchOptions, fetch


@click.command("fetch")
@click.argument("image")
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False),
              help="Also write the verified .aci and .asc into this directory.")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port of the name's host.")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--trust-store", type=click.Path(path_type=Path, file_okay=False))
@click.option("--store", "store_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Image store (default: $XDG_CACHE_HOME/acbuild-py/images).")
@click.option("--insecure-skip-verify", is_flag=True,
              help="Accept a missing or bad signature (dangerous).")
@global_options
def command(image: str, output: Path | None, insecure: bool, port: int | None,
            ca_file: Path | None, trust_store: Path | None, store_dir: Path | None,
            insecure_skip_verify: bool) -> None:
    """Fetch IMAGE (NAME[:version][,label=value…], URL or PATH) into the local image store."""
    options = FetchOptions(insecure=insecure, port=port, trust_store=trust_store,
                           skip_verify=insecure_skip_verify, ca_file=ca_file, store_dir=store_dir)
    result = fetch(image, options=options, reporter=state().reporter(), output_dir=output)
    say(result.entry.id)
