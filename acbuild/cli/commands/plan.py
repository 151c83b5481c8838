"""The `plan` verb: the steps a build would run, with their cache keys and hit or miss.

Reads the Acfile and the context (COPY keys hash the files) but runs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from acbuild.acfile.context import BuildContext
from acbuild.build.build import BuildOptions, final_image_key, key_steps, load_plan, open_cache
from acbuild.cli.commands.common import acfile_options, global_options, state
from acbuild.cli.commands.trustopts import base_loader, pull_policy_option, trust_options
from acbuild.image.finalize import build_epoch


@click.command("plan")
@click.argument("acfile", type=click.Path(path_type=Path, dir_okay=False))
@acfile_options
@trust_options
@pull_policy_option
@global_options
def command(acfile: Path, context: Path | None, variables: tuple[str, ...],
            var_files: tuple[Path, ...], target: str | None, compression: str,
            cache_dir: Path | None, **trust: Any) -> None:
    """Print the steps of ACFILE with their cache keys, HIT or MISS; run nothing."""
    reporter = state().reporter()
    options = BuildOptions(acfile=acfile, output=None, base_loader=base_loader(
        reporter=reporter, **trust), context=context, variables=variables,
        var_files=var_files, target=target, compression=compression, cache_dir=cache_dir)
    cache = open_cache(options)
    assert cache is not None
    plan = load_plan(options)
    epoch = build_epoch(options.environ)
    ctx = BuildContext((context or acfile.parent).resolve())
    with cache.session():
        plan = key_steps(plan, options, cache, ctx, epoch, reporter)
        for stage in plan.stages:
            for step in stage.steps:
                hit = step.key is not None and cache.step(step.key) is not None
                key = step.key or "-" * 71
                where = f" ({stage.name})" if stage.name else ""
                click.echo(f"[{step.number}/{step.total}] {'HIT ' if hit else 'MISS'} "
                           f"{key}{where}  {step.instruction.text}")
        image = final_image_key(plan, options, epoch)
        hit = image is not None and cache.image(image) is not None
        click.echo(f"image {'HIT ' if hit else 'MISS'} {image or '-'}")
