"""The `build` verb: Acfile in, image out; the image ID is the only line on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from acbuild.build.build import BuildOptions, BuildResult, build
from acbuild.build.repro import check_reproducible
from acbuild.cli.commands.common import acfile_options, global_options, state
from acbuild.cli.commands.trustopts import base_loader, trust_options
from acbuild.cli.console import human_size
from acbuild.report import Reporter
from acbuild.trust.sign import read_passphrase, remove_stale_signature, sign_image


@click.command("build")
@click.argument("acfile", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write the image (default: NAME-VERSION.aci here).")
@acfile_options
@click.option("--format", "output_format", type=click.Choice(["aci", "oci", "oci-archive"]),
              default="aci", show_default=True, help="Image format to write.")
@click.option("--sign", "sign_keys", multiple=True, metavar="KEY",
              help="Sign the image with this GnuPG key (as a SIGN line would).")
@click.option("--gpg-home", type=click.Path(path_type=Path, file_okay=False),
              help="GnuPG home holding the signing key.")
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
              help="File whose first line is the key's passphrase (or $ACBUILD_PASSPHRASE).")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Keep the full output of RUN steps here.")
@click.option("--no-cache", is_flag=True, help="Run every step; neither read nor fill the cache.")
@click.option("--check-repro", is_flag=True,
              help="Build twice without cache and fail (exit 1) if the images differ.")
@trust_options
@global_options
def command(
    acfile: Path,
    output: Path | None,
    context: Path | None,
    variables: tuple[str, ...],
    var_files: tuple[Path, ...],
    target: str | None,
    compression: str,
    output_format: str,
    sign_keys: tuple[str, ...],
    gpg_home: Path | None,
    passphrase_file: Path | None,
    log_file: Path | None,
    no_cache: bool,
    cache_dir: Path | None,
    check_repro: bool,
    **trust: Any,
) -> None:
    """Build the image an ACFILE describes."""
    reporter = state().reporter()
    passphrase = read_passphrase(passphrase_file)

    def signer(image: Path, key: str) -> Path:
        return sign_image(image, key, gpg_home=gpg_home, passphrase=passphrase,
                          reporter=reporter).signature

    options = BuildOptions(
        acfile=acfile,
        output=output,
        base_loader=base_loader(reporter=reporter, **trust),
        context=context,
        variables=variables,
        var_files=var_files,
        target=target,
        compression=compression,
        output_format=output_format,  # type: ignore[arg-type]  # click.Choice checked it
        sign_keys=sign_keys,
        signer=signer,
        remove_stale_signature=remove_stale_signature,
        log_file=log_file,
        no_cache=no_cache,
        cache_dir=cache_dir,
    )
    result = check_reproducible(options, reporter) if check_repro else build(options, reporter)
    summarise(result, reporter)
    click.echo(result.image_id)


def summarise(result: BuildResult, reporter: Reporter) -> None:
    version = next((lb.value for lb in result.manifest.labels if lb.name == "version"), "-")
    rows = [
        ("name", result.manifest.name),
        ("version", version),
        ("image ID", result.image_id),
        ("compressed size", human_size(result.size)),
        ("uncompressed size", human_size(result.uncompressed_size)),
        ("files", f"{result.entries} entries"),
        ("signature", ", ".join(str(s) for s in result.signatures) or "none"),
        ("output", str(result.output)),
        ("time", f"{result.seconds:.1f}s"),
    ]
    reporter.summary(tuple(rows))
