"""The `verify` verb: check an image's signature against the keys trusted for its name."""

from __future__ import annotations

from pathlib import Path

import click

from acbuild.cli.commands.common import global_options
from acbuild.cli.console import say
from acbuild.trust.truststore import TrustStore
from acbuild.trust.verify import verify_image


@click.command("verify")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--signature", type=click.Path(path_type=Path, dir_okay=False),
              help="The detached signature (default: IMAGE.asc).")
@click.option("--trust-store", type=click.Path(path_type=Path, file_okay=False),
              help="Trusted keys directory (default: $ACBUILD_TRUST_STORE or "
                   "~/.config/acbuild-py/trustedkeys).")
@global_options
def command(image: Path, signature: Path | None, trust_store: Path | None) -> None:
    """Verify IMAGE's signature; exit 1 with the reason when it is not trusted."""
    result = verify_image(image, TrustStore.locate(trust_store), signature=signature)
    say(f"{image}: good signature for {result.name} by {result.signer} "
               f"({result.fingerprint}), trusted as {result.trusted_as}")
