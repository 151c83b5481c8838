"""The `plan` verb: the steps a build would run, with their cache keys and hit or miss.

Reads the Acfile and the context (COPY keys hash the files) but runs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from acbuild.build.build import (
    BuildOptions,
    build_context,
    final_image_key,
    key_steps,
    load_plan,
    open_cache,
)
from acbuild.cli.commands.common import (
    acfile_argument,
    acfile_options,
    global_options,
    resolve_acfile,
    state,
)
from acbuild.cli.commands.trustopts import (
    base_loader,
    pull_policy_option,
    registry_options,
    trust_options,
)
from acbuild.cli.console import say
from acbuild.errors import AcbuildError
from acbuild.image.finalize import build_epoch
from acbuild.plan.baseref import RegistryImage
from acbuild.plan.plan import Plan
from acbuild.report import Reporter


@click.command("plan")
@acfile_argument
@acfile_options
@trust_options
@registry_options
@pull_policy_option
@global_options
def command(path: Path | None, acfile_file: Path | None, context: Path | None,
            allow_paths: tuple[Path, ...], variables: tuple[str, ...],
            var_files: tuple[Path, ...], target: str | None, compression: str,
            cache_dir: Path | None, **trust: Any) -> None:
    """Print the steps of the Acfile (found as build finds it) with their cache keys, HIT or
    MISS; run nothing."""
    acfile, context = resolve_acfile(path, acfile_file, context)
    reporter = state().reporter()
    options = BuildOptions(acfile=acfile, output=None, base_loader=base_loader(
        reporter=reporter, **trust), context=context, allow_paths=allow_paths,
        variables=variables, var_files=var_files, target=target, compression=compression,
        cache_dir=cache_dir)
    cache = open_cache(options, reporter)
    assert cache is not None
    plan = load_plan(options, reporter)
    epoch = build_epoch(options.environ)
    with cache.session():
        plan = key_steps(plan, options, cache, build_context(options), epoch, reporter)
        _explain_unkeyed_registry_bases(plan, options, reporter)
        for stage in plan.stages:
            for step in stage.steps:
                hit = cache.hit(step)
                key = step.key or "-" * 71
                where = f" ({stage.name})" if stage.name else ""
                say(f"[{step.number}/{step.total}] {'HIT ' if hit else 'MISS'} "
                           f"{key}{where}  {step.instruction.text}")
        image = final_image_key(plan, options, epoch)
        hit = cache.image(image) is not None
        say(f"image {'HIT ' if hit else 'MISS'} {image or '-'}")


def _explain_unkeyed_registry_bases(plan: Plan, options: BuildOptions,
                                    reporter: Reporter) -> None:
    """A docker:// BEGIN that cannot be resolved leaves its stage without keys; say why
    (a build stops there with the error itself)."""
    for stage in plan.stages:
        if isinstance(stage.base, RegistryImage) and stage.steps and stage.steps[0].key is None:
            try:
                options.base_loader.registries().identity(stage.base.reference, reporter)
            except AcbuildError as e:
                reporter.warning(f"{e.message}: the steps of its stage have no key",
                                 span=stage.steps[0].instruction.span)
