"""Execute: runs a plan — materialises each stage's base, then applies its steps in order.

Manifest instructions change the manifest (pure functions), COPY and RUN change the staged
rootfs. Stages are built in a private work directory the caller owns and removes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from acbuild import manifest_edit
from acbuild.context import BuildContext
from acbuild.copy import copy_instruction
from acbuild.errors import AcbuildError
from acbuild.instructions import Copy, Instruction, Run, Sign
from acbuild.manifest import ImageManifest, default_manifest
from acbuild.plan import Plan, Stage, Step
from acbuild.report import Reporter, StepInfo
from acbuild.runstep import RunContext, run_step
from acbuild.staging import StagedRootfs

# Materialises a stage's base into the rootfs and returns the manifest it starts from.
BaseLoader = Callable[[Stage, StagedRootfs, Reporter], ImageManifest]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecuteOptions:
    context: BuildContext
    work_dir: Path
    epoch: int
    load_base: BaseLoader
    log: TextIO | None = None  # full output of every RUN step
    log_path: Path | None = None


@dataclass(slots=True)
class StageResult:
    rootfs: StagedRootfs
    manifest: ImageManifest = field(default_factory=default_manifest)


def step_info(step: Step, stage: Stage) -> StepInfo:
    return StepInfo(
        number=step.number, total=step.total, text=step.instruction.text, stage=stage.name
    )


def execute(plan: Plan, *, options: ExecuteOptions, reporter: Reporter) -> StageResult:
    """Build every stage of the plan; the result is the target stage's rootfs and manifest."""
    results: dict[int, StageResult] = {}
    names: dict[str, int] = {}
    for stage in plan.stages:
        results[stage.index] = _run_stage(stage, results, names, options, reporter)
        if stage.name is not None:
            names[stage.name] = stage.index
    return results[plan.target.index]


def _run_stage(
    stage: Stage,
    results: dict[int, StageResult],
    names: dict[str, int],
    options: ExecuteOptions,
    reporter: Reporter,
) -> StageResult:
    root = options.work_dir / f"stage-{stage.index}" / "rootfs"
    root.mkdir(parents=True, mode=0o755)
    root.chmod(0o755)
    result = StageResult(rootfs=StagedRootfs(root=root))
    begin, *rest = stage.steps
    with _step(begin, stage, reporter):
        result.manifest = options.load_base(stage, result.rootfs, reporter)
    for step in rest:
        with _step(step, stage, reporter) as info:
            result.manifest = _apply(step.instruction, result, results, names, options,
                                     reporter, info)
    return result


class _step:
    """Reports a step's start and end, and places errors without a span at its instruction."""

    def __init__(self, step: Step, stage: Stage, reporter: Reporter):
        self.info = step_info(step, stage)
        self.step = step
        self.reporter = reporter

    def __enter__(self) -> StepInfo:
        self.started = time.monotonic()
        self.reporter.step_started(self.info)
        return self.info

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        if error is None:
            self.reporter.step_finished(self.info, time.monotonic() - self.started)
        elif isinstance(error, AcbuildError) and error.span is None:
            error.span = self.step.instruction.span


def _apply(
    instruction: Instruction,
    result: StageResult,
    results: dict[int, StageResult],
    names: dict[str, int],
    options: ExecuteOptions,
    reporter: Reporter,
    info: StepInfo,
) -> ImageManifest:
    match instruction:
        case Copy(from_stage=from_stage):
            source = results[names[from_stage]].rootfs if from_stage is not None else None
            copy_instruction(instruction, context=options.context, rootfs=result.rootfs,
                             from_rootfs=source, reporter=reporter)
        case Run():
            run_step(instruction, RunContext(rootfs=result.rootfs, manifest=result.manifest,
                                             epoch=options.epoch, log=options.log,
                                             log_path=options.log_path), reporter, info)
        case Sign():
            pass  # signing happens once the image is written
        case _:
            return manifest_edit.apply(result.manifest, instruction)
    return result.manifest
