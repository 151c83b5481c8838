"""The `convert` verb: a Docker/OCI image in, ACI(s) out; image IDs on stdout, top image last."""

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
from acbuild.image.compression import COMPRESSIONS
from acbuild.interop.convert import ConvertOptions, convert
from acbuild.interop.oci import KINDS, detect_kind
from acbuild.report import Field


@click.command("convert")
@click.argument("source", metavar="INPUT")
@click.option("--image", metavar="NAME[:TAG]",
              help="Which image of INPUT to convert (a docker tag or an OCI ref name).")
@click.option("--nosquash", is_flag=True,
              help="One ACI per layer, linked by dependencies, instead of one squashed ACI.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the ACI (default: REPO-TAG.aci here).")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="gzip",
              show_default=True)
@click.option("--input-format", type=click.Choice(("auto", *KINDS)), default="auto",
              show_default=True, help="What INPUT is; auto tells them apart.")
@registry_options
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Extra CA certificate for a docker:// registry's HTTPS.")
@click.option("--insecure-skip-verify", is_flag=True,
              help="Accept a docker:// image that is not pinned by digest (unverified).")
@max_pull_size_option
@global_options
def command(
    source: str, image: str | None, nosquash: bool, output: Path | None, compression: str,
    input_format: str, insecure_registry: tuple[str, ...], platform: str | None,
    ca_file: Path | None, insecure_skip_verify: bool, max_image_size: int,
) -> None:
    """Convert a docker-archive (`docker save`), OCI layout or oci-archive INPUT to an ACI.

    INPUT may also be docker://[REGISTRY/]NAME[:TAG|@DIGEST]: the image is pulled from the
    registry (layers are kept in the image store) and converted."""
    from acbuild.fs.atomic import check_writable

    reporter = state().reporter()
    if output is not None:
        check_writable(output)  # before the pull and the conversion, not after (RO-9)
    opened = None
    if source.startswith("docker://"):
        from acbuild.build.registrypull import RegistryBases

        access = registry_access(insecure_registry=insecure_registry, platform=platform,
                                 ca_file=ca_file, insecure_skip_verify=insecure_skip_verify,
                                 max_image_size=max_image_size)
        opened = RegistryBases(access).open_source(source, reporter)
        options = ConvertOptions(kind="registry", input=opened.path, image=image,
                                 output=output, squash=not nosquash, compression=compression)
    else:
        path = Path(source)
        kind = detect_kind(path) if input_format == "auto" else input_format
        options = ConvertOptions(kind=kind, input=path, image=image, output=output,  # type: ignore[arg-type]
                                 squash=not nosquash, compression=compression)
    written = convert(options, reporter, source=opened)
    top = written[-1]
    reporter.summary((Field("image_id", "image ID", top.image_id),
                      Field("output", "output", str(top.path)),
                      Field("images", "images written", len(written))))
    for w in written:
        say(w.image_id)
