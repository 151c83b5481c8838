"""The `fetch` verb: download, verify and store an image; print its image ID."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.commands.trustopts import (
    max_pull_size_option,
    registry_access,
    registry_options,
)
from acbuild.cli.console import say
from acbuild.distribution.fetch import PULL_POLICIES, FetchOptions, PullPolicy, fetch


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
@click.option("--pull-policy", type=click.Choice(PULL_POLICIES), default="update",
              show_default=True, help="update: always ask the server; new: use a stored copy "
              "that still verifies; never: only the image store.")
@registry_options
@max_pull_size_option
@global_options
def command(image: str, output: Path | None, insecure: bool, port: int | None,
            ca_file: Path | None, trust_store: Path | None, store_dir: Path | None,
            insecure_skip_verify: bool, pull_policy: PullPolicy,
            insecure_registry: tuple[str, ...], platform: str | None,
            max_image_size: int) -> None:
    """Fetch IMAGE (NAME[:version][,label=value…], URL or PATH) into the local image store.

    A local PATH must be signed (PATH.asc) by a key trusted for its name, unless
    --insecure-skip-verify. docker://[REGISTRY/]NAME[:TAG|@DIGEST] is pulled from the
    registry and stored converted to an ACI: it must be pinned by digest (which verifies
    it) unless --insecure-skip-verify."""
    if image.startswith("docker://"):
        from acbuild.build.registrypull import fetch_to_store

        if output is not None:
            raise click.UsageError("-o is for AppC images; docker:// images are kept in the "
                                   "store only (acbuild-py convert docker://… -o FILE writes one)")
        access = registry_access(insecure_registry=insecure_registry, platform=platform,
                                 ca_file=ca_file, insecure_skip_verify=insecure_skip_verify,
                                 store_dir=store_dir, max_image_size=max_image_size)
        say(fetch_to_store(image, access, state().reporter()).id)
        return
    options = FetchOptions(insecure=insecure, port=port, trust_store=trust_store,
                           skip_verify=insecure_skip_verify, ca_file=ca_file, store_dir=store_dir,
                           pull_policy=pull_policy)
    result = fetch(image, options=options, reporter=state().reporter(), output_dir=output)
    say(result.entry.id)
