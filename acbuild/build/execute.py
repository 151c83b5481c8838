"""Execute: runs a plan — materialises each stage's base, then applies its steps in order.

Manifest instructions change the manifest (pure functions), COPY and RUN change the staged
rootfs. Stages are built in a private work directory the caller owns and removes; with a
step cache, each stage resumes after its last cached step and stores the steps it runs.
Independent stages are built side by side (acbuild.build.schedule); each stage's rootfs is
its own, and a COPY --from runs only once the stage it reads is done, so the image is the
same whatever the order the stages happened to finish in.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from acbuild.acfile.context import BuildContext
from acbuild.acfile.instructions import Copy, Instruction, Run, Sign, Workdir
from acbuild.build import manifest_edit
from acbuild.build.copy import copy_instruction
from acbuild.build.runmounts import KeyCheck, MountInputs, prepared
from acbuild.build.schedule import Cancelled, LockedReporter, run_stages, stage_needs
from acbuild.cache.buildcache import BuildCache, Resume, StageState, runs_after
from acbuild.cache.cache import CorruptTree, StepRecord
from acbuild.cache.mountcache import MountCache
from acbuild.cache.statcache import run_inputs, step_key
from acbuild.errors import AcbuildError, BuildError, Span
from acbuild.fs.securepath import ensure_dirs
from acbuild.fs.staging import StagedRootfs, remove_tree
from acbuild.image.manifest import ImageManifest, default_manifest
from acbuild.image.unstaged import materialize, prepare_path
from acbuild.plan.baseref import ImageName
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
    cache: BuildCache | None = None  # None: --no-cache
    jobs: int = 1  # stages built at once
    mount_cache: MountCache | None = None  # RUN --mount=type=cache (used with --no-cache too)
    secrets: Mapping[str, Path] = field(default_factory=dict)  # --secret id=ID,src=FILE
    # The target stage becomes an image the cache keeps whole: its last COPY or WORKDIR
    # needs no snapshot (BuildCache.needs_snapshot).
    image_cached: bool = False
    # Set on Ctrl-C, SIGTERM or a failed stage: the other stages stop (the build's stop,
    # which its registry sessions observe too: BaseLoader.stop).
    cancel: threading.Event = field(default_factory=threading.Event)


def step_info(step: Step, stage: Stage) -> StepInfo:
    return StepInfo(
        number=step.number, total=step.total, text=step.instruction.text, stage=stage.name
    )


def execute(plan: Plan, *, options: ExecuteOptions, reporter: Reporter) -> StageState:
    """Build every stage of the plan; the result is the target stage's rootfs and manifest.

    With a cache, each stage starts from its last cached step; a stage that is cached to the
    end is only restored when a later COPY --from reads it.
    """
    executor = _Executor(plan, options, LockedReporter(reporter))
    run_stages(plan.stages, stage_needs(plan), executor.run_stage, jobs=options.jobs,
               cancel=executor.cancel)
    return executor.result(plan.target.index)


class _Executor:
    def __init__(self, plan: Plan, options: ExecuteOptions, reporter: Reporter) -> None:
        self.plan = plan
        self.options = options
        self.reporter = reporter
        self.results: dict[int, StageState] = {}
        self.deferred: dict[int, tuple[StepRecord, Path]] = {}  # cached to the end, not restored
        self.warned_limits: set[str] = set()  # RUN limits reported as unenforced
        self.cancel = options.cancel
        # A stage cached to its end is restored by the first stage that reads it.
        self.restoring = {stage.index: threading.Lock() for stage in plan.stages}
        self.fetching = threading.Lock()  # one name resolved at a time: one image store
        read = {index for needs in stage_needs(plan).values() for index in needs}
        # Only the image itself: a stage another one reads may be restored for that.
        self.image_stage = plan.target.index if options.image_cached and \
            plan.target.index not in read else None

    def result(self, index: int) -> StageState:
        with self.restoring[index]:
            return self._result(index)

    def staged(self, name: str) -> StageState:
        """A finished stage that another reads by path (COPY --from, RUN --mount from=):
        its unstaged files made real first, once, under its lock, since stages that read
        it may run at the same time."""
        index = self.plan.stage_named(name).index
        with self.restoring[index]:
            result = self._result(index)
            try:
                materialize(result.rootfs)
            except OSError as e:
                raise BuildError(f"stage '{name}': cannot stage its files: {e.strerror}") from None
            return result

    def _result(self, index: int) -> StageState:
        if index not in self.results:
            record, root = self.deferred.pop(index)
            assert self.options.cache is not None
            try:
                self.results[index] = self.options.cache.restore(record, root, link=True)
            except CorruptTree as e:
                self.reporter.warning(f"{e.message}; building the stage again")
                remove_tree(root)
                self.run_stage(next(s for s in self.plan.stages if s.index == index),
                               cached=False)
        return self.results[index]

    def run_stage(self, stage: Stage, *, cached: bool = True) -> None:
        root = self.options.work_dir / f"stage-{stage.index}" / "rootfs"
        root.parent.mkdir(parents=True, exist_ok=True)
        cache = self.options.cache
        resume = Resume()
        if cached and cache is not None:
            resume = cache.resume(stage, root, needed_now=stage.index == self.plan.target.index)
        for step in stage.steps[: resume.cached]:
            info = step_info(step, stage)
            self.reporter.step_started(info)
            self.reporter.step_finished(info, 0.0, cached=True, source=resume.source)
        if resume.deferred is not None:
            self.deferred[stage.index] = (resume.deferred, root)
            return
        state, tree = resume.state, resume.tree
        if state is None:
            root.mkdir(mode=0o755)
            root.chmod(0o755)
            state = StageState(rootfs=StagedRootfs(root=root), manifest=default_manifest(),
                               known={})
        for number, step in enumerate(stage.steps[resume.cached :], resume.cached):
            if self.cancel.is_set():
                raise Cancelled("stopped: another stage failed")
            # What a keyed step takes from the user's directories must be what its key read
            # (acbuild.fs.keyed); a step without a key (nor any after it) is not cached.
            state.rootfs.keyed = self.plan.keyed if step.key is not None else None
            with reported_step(step_info(step, stage), self.reporter,
                               step.instruction.span) as info:
                if number == 0:
                    with self.fetching if isinstance(stage.base, ImageName) else _NO_LOCK:
                        state.manifest = self.options.load_base(stage, state.rootfs,
                                                                self.reporter)
                else:
                    shares = not runs_after(stage.steps[number + 1 :])
                    state.manifest = self._apply(step.instruction, state, info, shares=shares,
                                                 key_check=self._key_check(stage, number))
            if cache is not None:
                tree = cache.store_step(stage, number, state, tree,
                                        image_cached=stage.index == self.image_stage)
        self.results[stage.index] = state

    # -- steps -------------------------------------------------------------------------------

    def _apply(self, instruction: Instruction, result: StageState, info: StepInfo, *,
               shares: bool, key_check: KeyCheck | None = None) -> ImageManifest:
        """``shares``: no RUN follows, so the rootfs may share inodes with the context."""
        options = self.options
        match instruction:
            case Copy(from_stage=from_stage):
                source = None
                if from_stage is not None:
                    source = self.staged(from_stage).rootfs
                copy_instruction(instruction, context=options.context, rootfs=result.rootfs,
                                 from_rootfs=source, reporter=self.reporter,
                                 leave_refs=shares)
            case Run():
                ctx = RunContext(rootfs=result.rootfs, manifest=result.manifest,
                                 epoch=options.epoch, log=options.log,
                                 log_path=options.log_path, warned=self.warned_limits)
                with prepared(instruction, ctx, self._mount_inputs(key_check)) as ctx:
                    run_step(instruction, ctx, self.reporter, info)
            case Sign():
                pass  # signing happens once the image is written
            case Workdir(path=path):
                # As Docker's WORKDIR: rkt refuses to start an app whose working directory
                # the image lacks, so the image must have it (existing ones are kept as is).
                make_workdir(result.rootfs, path)
                return manifest_edit.apply(result.manifest, instruction)
            case _:
                return manifest_edit.apply(result.manifest, instruction)
        return result.manifest

    def _mount_inputs(self, key_check: KeyCheck | None) -> MountInputs:
        return MountInputs(
            context=self.options.context, cache=self.options.mount_cache,
            secrets=self.options.secrets, notice=self.reporter.info,
            stage_root=lambda name: self.staged(name).rootfs.root, key_check=key_check,
            written=tuple(p for p in (self.options.log_path, None if self.options.mount_cache
                                      is None else self.options.mount_cache.shown)
                          if p is not None))

    def _key_check(self, stage: Stage, number: int) -> KeyCheck | None:
        """For a cached RUN: its key, recomputed over what its context binds show, must be
        the one it was planned with, or storing the step under that key would hand what
        it made to the next build of content it never saw."""
        step, cache = stage.steps[number], self.options.cache
        run = step.instruction
        parent = stage.steps[number - 1].key if number else None
        if cache is None or step.key is None or parent is None or not isinstance(run, Run):
            return None
        stat_cache = cache.store.stat_cache(self.options.context.root)

        def holds(shown: Mapping[int, str]) -> bool:
            inputs = run_inputs(run, context=self.options.context, epoch=self.options.epoch,
                                stat_cache=stat_cache, shown=shown,
                                stage_key=lambda name: self.plan.stage_named(name).steps[-1].key)
            return inputs is not None and step_key(parent, run, inputs) == step.key

        return KeyCheck(stat_cache=stat_cache, holds=holds)


_NO_LOCK = contextlib.nullcontext()


def make_workdir(rootfs: StagedRootfs, path: str) -> None:
    """``mkdir -p`` of the working directory in the rootfs: new directories 0755, root's."""
    prepare_path(rootfs, path.lstrip("/"))  # a base's file in the way is an error, as staged
    ensure_dirs(rootfs.root, path.lstrip("/"), mode=0o755,
                on_create=lambda rel: rootfs.set_owner(rel, 0, 0))


class reported_step:
    """Reports a step's start and end, and places errors without a span at ``span`` (the
    step's instruction)."""

    def __init__(self, info: StepInfo, reporter: Reporter, span: Span | None = None):
        self.info = info
        self.span = span
        self.reporter = reporter

    def __enter__(self) -> StepInfo:
        self.started = time.monotonic()
        self.reporter.step_started(self.info)
        return self.info

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        if error is None:
            self.reporter.step_finished(self.info, time.monotonic() - self.started)
        elif isinstance(error, AcbuildError) and error.span is None:
            error.span = self.span


