"""Execute: runs a plan — materialises each stage's base, then applies its steps in order.

Manifest instructions change the manifest (pure functions), COPY and RUN change the staged
rootfs. Stages are built in a private work directory the caller owns and removes; with a
step cache, each stage resumes after its last cached step and stores the steps it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from acbuild.acfile.context import BuildContext
from acbuild.acfile.instructions import Copy, Instruction, Run, Sign
from acbuild.build import manifest_edit
from acbuild.build.copy import copy_instruction
from acbuild.cache.cache import CacheStore, CorruptTree, StepRecord
from acbuild.cache.snapshot import KnownDigests
from acbuild.errors import AcbuildError
from acbuild.fs.staging import StagedRootfs, remove_tree
from acbuild.image.manifest import ImageManifest, default_manifest, from_json_bytes, to_json_bytes
from acbuild.plan.plan import Plan, Stage, Step
from acbuild.report import Reporter, StepInfo
from acbuild.sandbox.runstep import RunContext, run_step

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
    cache: CacheStore | None = None  # None: --no-cache


@dataclass(slots=True)
class StageResult:
    rootfs: StagedRootfs
    manifest: ImageManifest = field(default_factory=default_manifest)
    # files of the rootfs the cache has read already (linked snapshots and restores)
    known: KnownDigests = field(default_factory=dict)


def step_info(step: Step, stage: Stage) -> StepInfo:
    return StepInfo(
        number=step.number, total=step.total, text=step.instruction.text, stage=stage.name
    )


def execute(plan: Plan, *, options: ExecuteOptions, reporter: Reporter) -> StageResult:
    """Build every stage of the plan; the result is the target stage's rootfs and manifest.

    With a cache, each stage starts from its last cached step; a stage that is cached to the
    end is only restored when a later COPY --from reads it.
    """
    executor = _Executor(plan, options, reporter)
    for stage in plan.stages:
        executor.run_stage(stage)
    return executor.result(plan.target.index)


class _Executor:
    def __init__(self, plan: Plan, options: ExecuteOptions, reporter: Reporter) -> None:
        self.plan = plan
        self.options = options
        self.reporter = reporter
        self.results: dict[int, StageResult] = {}
        self.warned_limits: set[str] = set()  # RUN limits reported as unenforced
        self.pending: dict[int, tuple[StepRecord, Path]] = {}  # cached to the end, not restored

    def result(self, index: int) -> StageResult:
        if index not in self.results:
            record, root = self.pending.pop(index)
            try:
                self.results[index] = self._restored(record, root, link=True)
            except CorruptTree as e:
                self.reporter.warning(f"{e.message}; building the stage again")
                remove_tree(root)
                self.run_stage(next(s for s in self.plan.stages if s.index == index),
                               cached=False)
        return self.results[index]

    def run_stage(self, stage: Stage, *, cached: bool = True) -> None:
        root = self.options.work_dir / f"stage-{stage.index}" / "rootfs"
        root.parent.mkdir(parents=True, exist_ok=True)
        start, result, tree = self._from_cache(stage, root) if cached else (0, None, None)
        if start == len(stage.steps):
            return
        if result is None:
            root.mkdir(mode=0o755)
            root.chmod(0o755)
            result = StageResult(rootfs=StagedRootfs(root=root))
        for number, step in enumerate(stage.steps[start:], start):
            with _step(step, stage, self.reporter) as info:
                if number == 0:
                    result.manifest = self.options.load_base(stage, result.rootfs, self.reporter)
                else:
                    shares = not _runs(stage.steps[number + 1 :])
                    result.manifest = self._apply(step.instruction, result, info, shares=shares)
            tree = self._store(stage, number, result, tree)
        self.results[stage.index] = result

    # -- the cache ---------------------------------------------------------------------------

    def _from_cache(self, stage: Stage,
                    root: Path) -> tuple[int, StageResult | None, str | None]:
        """(index of the first step to run, the restored state before it, the key of the
        entry holding that state's rootfs)."""
        cache = self.options.cache
        if cache is None:
            return 0, None, None
        for number in range(len(stage.steps) - 1, -1, -1):
            key = stage.steps[number].key
            record = cache.step(key) if key is not None else None
            if record is None:
                continue
            last = number == len(stage.steps) - 1
            result = None
            if last and stage.index != self.plan.target.index:
                self.pending[stage.index] = (record, root)
            else:
                rest = stage.steps[number + 1 :]
                try:
                    result = self._restored(record, root, link=not _runs(rest))
                except CorruptTree as e:
                    self.reporter.warning(f"{e.message}; building the step again")
                    remove_tree(root)
                    continue
            for step in stage.steps[: number + 1]:
                info = step_info(step, stage)
                self.reporter.step_started(info)
                self.reporter.step_finished(info, 0.0, cached=True)
            if last and result is not None:
                self.results[stage.index] = result
            return number + 1, result, record.tree
        return 0, None, None

    def _restored(self, record: StepRecord, root: Path, *, link: bool) -> StageResult:
        assert self.options.cache is not None
        known: KnownDigests = {}
        rootfs = self.options.cache.restore(record, root, link=link, known=known)
        return StageResult(rootfs=rootfs, manifest=from_json_bytes(record.manifest_json),
                           known=known)

    def _store(self, stage: Stage, number: int, result: StageResult,
               tree: str | None) -> str | None:
        """Keep the step's result; returns the key of the entry now holding the rootfs."""
        cache, key = self.options.cache, stage.steps[number].key
        if cache is None or key is None:
            return None
        changes_rootfs = number == 0 or isinstance(stage.steps[number].instruction, Copy | Run)
        if not changes_rootfs and tree is None:
            return None
        try:
            cache.put_step(key, to_json_bytes(result.manifest),
                           rootfs=result.rootfs if changes_rootfs else None,
                           tree=tree, link=not _runs(stage.steps[number + 1 :]),
                           known=result.known)
        except OSError as e:
            self.reporter.warning(f"cannot store step {number + 1} in the cache: {e}")
            return None
        return key if changes_rootfs else tree

    # -- steps -------------------------------------------------------------------------------

    def _apply(self, instruction: Instruction, result: StageResult, info: StepInfo, *,
               shares: bool) -> ImageManifest:
        """``shares``: no RUN follows, so the rootfs may share inodes with the context."""
        options = self.options
        match instruction:
            case Copy(from_stage=from_stage):
                source = None
                if from_stage is not None:
                    source = self.result(self.plan.stage_named(from_stage).index).rootfs
                copy_instruction(instruction, context=options.context, rootfs=result.rootfs,
                                 from_rootfs=source, reporter=self.reporter,
                                 link_epoch=options.epoch if shares else None)
            case Run():
                run_step(instruction, RunContext(rootfs=result.rootfs, manifest=result.manifest,
                                                 epoch=options.epoch, log=options.log,
                                                 log_path=options.log_path,
                                                 warned=self.warned_limits),
                         self.reporter, info)
            case Sign():
                pass  # signing happens once the image is written
            case _:
                return manifest_edit.apply(result.manifest, instruction)
        return result.manifest


def _runs(steps: tuple[Step, ...]) -> bool:
    """Whether a RUN is among ``steps``: a RUN may change files in place, so the rootfs must
    not share inodes with the cache (COPY and extraction always write new files)."""
    return any(isinstance(s.instruction, Run) for s in steps)


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


