"""The `publish` verb: lay out a signed image in a static AppC repository directory."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.console import say
from acbuild.distribution.publish import publish


@click.command("publish")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--repo", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Document root of the image name's host.")
@click.option("--url-base", required=True, help="The URL --repo is served at.")
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False),
              help="The signer's public key to publish.")
@click.option("--gpg-home", type=click.Path(path_type=Path, file_okay=False),
              help="GnuPG home to export the signer's public key from.")
@global_options
def command(image: Path, repo: Path, url_base: str, key_file: Path | None,
            gpg_home: Path | None) -> None:
    """Publish IMAGE and IMAGE.asc under --repo with an ac-discovery page."""
    result = publish(image, repo=repo, url_base=url_base, key_file=key_file, gpg_home=gpg_home,
                     reporter=state().reporter())
    say(str(result.image))
