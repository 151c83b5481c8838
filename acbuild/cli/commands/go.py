"""The `go` verb: Go main packages in, one image each out; each image's ID a line on stdout."""

from __future__ import annotations

import os
from pathlib import Path

import click

from acbuild.build.build import BuildOptions
from acbuild.build.goaci import GoOptions, build_go, plan_images
from acbuild.cli.commands.build import summarise
from acbuild.cli.commands.common import global_options, state
from acbuild.cli.commands.trustopts import base_loader, make_signer, signing_options
from acbuild.image.compression import COMPRESSIONS
from acbuild.trust.sign import remove_stale_signature


@click.command("go")
@click.argument("targets", nargs=-1, metavar="[DIR|PACKAGE]...")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write the image; a directory when there are several "
                   "(default: NAME-VERSION.aci here).")
@click.option("--name", help="Image name (default: the module path, plus /BIN when the "
                             "module has several main packages).")
@click.option("--version", "version", help="version label (default: git describe --tags "
                                           "--always).")
@click.option("--bin", "binary", metavar="NAME",
              help="Build only the main package whose binary is NAME.")
@click.option("--print-acfile", is_flag=True,
              help="Print the Acfile(s) it would build from, and build nothing.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="gzip",
              show_default=True)
@signing_options("each image")
@click.option("--no-cache", is_flag=True, help="Neither read nor fill the step cache.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Step cache directory (default: $XDG_CACHE_HOME/acbuild-py/build-cache).")
@global_options
def command(
    targets: tuple[str, ...],
    output: Path | None,
    name: str | None,
    version: str | None,
    binary: str | None,
    print_acfile: bool,
    compression: str,
    sign_keys: tuple[str, ...],
    gpg_home: Path | None,
    passphrase_file: Path | None,
    no_cache: bool,
    cache_dir: Path | None,
) -> None:
    """Compile Go main packages statically and package each as an image.

    Each DIR (default: .) gives every main package below it; a PACKAGE is a `go build`
    package pattern. The host's `go` builds with CGO_ENABLED=0, -trimpath, an empty build ID
    and the module's vendor/ when present (GOOS, GOARCH and GOFLAGS are honoured; the image
    is labelled with GOOS/GOARCH). SOURCE_DATE_EPOCH defaults to the git commit's time.
    """
    reporter = state().reporter()
    options = GoOptions(targets=targets or (".",), output=output, name=name, version=version,
                        bin=binary, environ=dict(os.environ), cwd=Path.cwd())
    images = plan_images(options, reporter)
    if print_acfile:
        click.echo("\n".join(image.acfile() for image in images), nl=False)
        return
    signer = make_signer(gpg_home, passphrase_file, reporter)

    template = BuildOptions(
        acfile=Path("Acfile"),  # each image's own replaces it
        output=None,
        base_loader=base_loader(reporter=reporter),
        compression=compression,
        sign_keys=sign_keys,
        signer=signer,
        gpg_home=gpg_home,
        remove_stale_signature=remove_stale_signature,
        no_cache=no_cache,
        cache_dir=cache_dir,
    )
    for result in build_go(images, options, template, reporter):
        summarise(result, reporter)
        click.echo(result.image_id)
