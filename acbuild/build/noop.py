"""The build's side of the warm record (acbuild.cache.warm): witness what the build reads
before it reads it, and keep the record when the build was one a stat can stand for.

A record is kept only for a build that signed nothing and warned of nothing (a hit replays
steps and the summary, not warnings), whose inputs had all settled and whose bases are
files or directories (a named base depends on the image store, not on a file's stat).
"""

from __future__ import annotations

import os
from pathlib import Path

from acbuild.acfile.instructions import Dependency
from acbuild.cache.buildcache import BuildCache
from acbuild.cache.warm import WarmResult, Witness, store
from acbuild.errors import Span
from acbuild.plan.plan import Plan
from acbuild.report import Field, Reporter, StepInfo


class WarningCounter:
    """A reporter passing everything on, counting the warnings."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.warnings = 0

    def step_started(self, step: StepInfo) -> None:
        self.inner.step_started(step)

    def step_output(self, step: StepInfo, line: str) -> None:
        self.inner.step_output(step, line)

    def step_partial(self, step: StepInfo, text: str) -> None:
        self.inner.step_partial(step, text)

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        self.inner.step_finished(step, seconds, cached=cached, source=source)

    def progress(self, what: str, done: int, total: int | None) -> None:
        self.inner.progress(what, done, total)

    def info(self, message: str) -> None:
        self.inner.info(message)

    def detail(self, message: str) -> None:
        self.inner.detail(message)

    def warning(self, message: str, span: Span | None = None) -> None:
        self.warnings += 1
        self.inner.warning(message, span)

    def summary(self, fields: tuple[Field, ...]) -> None:
        self.inner.summary(fields)


def witness_invocation(acfile: Path, context: Path | None, var_files: tuple[Path, ...],
                       allow_paths: tuple[Path, ...]) -> Witness:
    """A witness that has seen the files the Acfile is rendered from, and which directory
    the context is (a symlink retargeted makes it another one), before they are read."""
    witness = Witness()
    for path in (acfile, *var_files):
        witness.look(os.path.abspath(path), follow=True)
    for directory in (context or acfile.parent, *allow_paths):
        witness.look(os.path.abspath(directory), follow=True)
    return witness


def check_plan(witness: Witness, plan: Plan) -> None:
    """What the plan itself makes unknowable by stat."""
    for stage in plan.stages:
        for step in stage.steps:
            if isinstance(step.instruction, Dependency) and step.instruction.image_id is None:
                witness.incomplete("a DEPENDENCY is resolved by name")


def remember(*, cache_dir: Path, key: str, witness: Witness, cache: BuildCache,
             image_key: str | None, steps: tuple[StepInfo, ...], image_id: str, name: str,
             version: str | None, size: int, uncompressed_size: int, entries: int,
             output: Path) -> None:
    if image_key is None:
        return
    sha256 = cache.image_sha256(image_key)
    if sha256 is None:
        return
    store(cache_dir, key, witness,
          WarmResult(steps=steps, image_id=image_id, name=name, version=version, size=size,
                     uncompressed_size=uncompressed_size, entries=entries, output=output),
          sha256)
