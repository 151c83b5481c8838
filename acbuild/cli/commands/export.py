"""The `export` verb: an ACI in, an OCI layout or oci-archive out (or pushed to a registry);
manifest digest on stdout."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.commands.pushopts import (
    check_targets,
    layout_to_push,
    push,
    push_fields,
    push_option,
    transport,
)
from acbuild.cli.commands.trustopts import insecure_registry_option
from acbuild.cli.console import say
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import unpack_image
from acbuild.image.finalize import build_epoch
from acbuild.image.manifest import ImageManifest
from acbuild.interop.convert import parse_created
from acbuild.interop.export import export_oci
from acbuild.report import Field

if TYPE_CHECKING:
    from acbuild.distribution.registry.reference import Reference


def export_epoch(manifest: ImageManifest) -> int:
    """SOURCE_DATE_EPOCH, else the image's ``created`` annotation, else the default epoch."""
    if "SOURCE_DATE_EPOCH" not in os.environ:
        created = next((a.value for a in manifest.annotations if a.name == "created"), None)
        if (seconds := parse_created(created)) is not None:
            return seconds
    return build_epoch(os.environ)


@click.command("export")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--format", "output_format", type=click.Choice(("oci", "oci-archive")),
              default="oci", show_default=True, help="Layout directory or tar archive.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="The layout directory (or .tar file) to write; needed unless --push.")
@push_option
@insecure_registry_option
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Extra CA certificate for the registry's HTTPS.")
@global_options
def command(image: Path, output_format: str, output: Path | None, push_to: Reference | None,
            insecure_registry: tuple[str, ...], ca_file: Path | None) -> None:
    """Export the ACI IMAGE as an OCI image (one layer): to a layout directory or archive
    with -o, to a registry with --push docker://REGISTRY/NAME:TAG, or both."""
    if output is None and push_to is None:
        raise click.UsageError("give -o OUTPUT, --push docker://REGISTRY/NAME:TAG, or both")
    if push_to is not None and output_format != "oci":
        raise click.UsageError("--push sends an OCI image; it cannot be used with "
                               "--format oci-archive")
    options = transport(insecure_registry, ca_file) if push_to is not None else None
    if options is not None:
        check_targets(push_to, None, options)
    reporter = state().reporter()
    with tempfile.TemporaryDirectory(prefix="acbuild-export-") as tmp, \
            layout_to_push(output) as layout:
        rootfs = StagedRootfs(root=Path(tmp) / "rootfs")
        rootfs.root.mkdir()
        manifest = unpack_image(image, rootfs, reporter=reporter)
        digest = export_oci(rootfs, manifest, layout, archive=output_format == "oci-archive",
                            epoch=export_epoch(manifest), reporter=reporter)
        pushed = () if push_to is None or options is None else \
            push_fields(push(layout, push_to, options, reporter))
    fields = [Field("manifest_digest", "manifest digest", digest), *pushed]
    if output is not None:
        fields.append(Field("output", "output", str(output)))
    reporter.summary(tuple(fields))
    say(digest)
