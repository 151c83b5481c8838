"""The `export` verb: an ACI in, an OCI layout or oci-archive out; manifest digest on stdout."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.console import say
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import unpack_image
from acbuild.image.finalize import build_epoch
from acbuild.image.manifest import ImageManifest
from acbuild.interop.convert import parse_created
from acbuild.interop.export import export_oci
from acbuild.report import Field


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
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The layout directory (or .tar file) to write.")
@global_options
def command(image: Path, output_format: str, output: Path) -> None:
    """Export the ACI IMAGE as an OCI image (one layer)."""
    reporter = state().reporter()
    with tempfile.TemporaryDirectory(prefix="acbuild-export-") as tmp:
        rootfs = StagedRootfs(root=Path(tmp) / "rootfs")
        rootfs.root.mkdir()
        manifest = unpack_image(image, rootfs, reporter=reporter)
        digest = export_oci(rootfs, manifest, output, archive=output_format == "oci-archive",
                            epoch=export_epoch(manifest), reporter=reporter)
    reporter.summary((Field("manifest_digest", "manifest digest", digest),
                      Field("output", "output", str(output))))
    say(digest)
