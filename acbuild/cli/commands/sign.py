"""The `sign` verb: write IMAGE.aci.asc, a detached armored signature, next to the image."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.commands.trustopts import check_key_specs
from acbuild.cli.console import say
from acbuild.trust.sign import read_passphrase, sign_image


@click.command("sign")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key", required=True, callback=check_key_specs,
              help="Key id, fingerprint, e-mail or user ID of the signing key.")
@click.option("--gpg-home", type=click.Path(path_type=Path, file_okay=False),
              help="GnuPG home holding the key (default: $GNUPGHOME or ~/.gnupg).")
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Read the key's passphrase from this file (else $ACBUILD_PASSPHRASE, "
                   "else gpg-agent).")
@global_options
def command(image: Path, key: str, gpg_home: Path | None, passphrase_file: Path | None) -> None:
    """Sign IMAGE with a GnuPG key: writes IMAGE.asc."""
    result = sign_image(image, key, gpg_home=gpg_home, passphrase=read_passphrase(passphrase_file),
                        reporter=state().reporter())
    say(str(result.signature))
