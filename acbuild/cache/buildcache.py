"""The step cache's whole story for one build: key, lookup, restore, store.

The executor and the build ask this module what is cached and hand it what they produced; the
store (``cache.py``), the trees (``snapshot.py``) and the keys (``statcache.py``) stay below it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from acbuild.acfile.context import BuildContext
from acbuild.acfile.instructions import Copy, Run, Workdir
from acbuild.cache.cache import (
    CacheStore,
    CorruptTree,
    ImageDraft,
    ImageRecord,
    StepRecord,
)
from acbuild.cache.snapshot import KnownDigests
from acbuild.cache.statcache import base_identity, image_key, key_plan
from acbuild.cache.warm import Witness
from acbuild.fs.staging import StagedRootfs, remove_tree
from acbuild.image.manifest import ImageManifest, from_json_bytes, to_json_bytes
from acbuild.plan.baseref import BaseRef
from acbuild.plan.plan import Plan, Stage, Step
from acbuild.report import Reporter

if TYPE_CHECKING:  # the remote cache (httpx) loads only for a build that uses one
    from acbuild.cache.remote import RemoteCache

# Resolves a discovered base image name (with its labels) to the local file it fetched.
NameResolver = Callable[[str, tuple[tuple[str, str], ...]], Path]


@dataclass(slots=True)
class StageState:
    """A stage's rootfs and manifest after some step, and the files the cache has read."""

    rootfs: StagedRootfs
    manifest: ImageManifest
    known: KnownDigests


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Where a stage picks up: the number of steps the cache answers for, and the state after
    them — None when nothing is cached, or when a stage cached to its end is only restored
    once something reads it (``deferred``)."""

    cached: int = 0
    state: StageState | None = None
    tree: str | None = None  # key of the entry holding the rootfs after the cached steps
    deferred: StepRecord | None = None
    source: str | None = None  # registry://… when the entry came from a --cache-from


def runs_after(steps: tuple[Step, ...]) -> bool:
    """Whether a RUN is among ``steps``: a RUN may change files in place, so the rootfs must
    not share inodes with the cache (COPY and extraction always write new files)."""
    return any(isinstance(s.instruction, Run) for s in steps)


class BuildCache:
    def __init__(self, store: CacheStore, reporter: Reporter,
                 remote: RemoteCache | None = None) -> None:
        self.store = store
        self.reporter = reporter
        self.remote = remote
        # registry://… of an import this build used (from its --cache-from, or a local
        # entry that came from one or was built on one): what it stores after that may
        # hold its content, and is marked so (``cache prune --imported`` takes it too).
        self.built_on: str | None = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with self.store.session():
            yield

    # -- keys --------------------------------------------------------------------------------

    def key(self, plan: Plan, *, context: BuildContext, epoch: int,
            resolve: NameResolver,
            resolve_registry: Callable[[str], str] | None = None,
            witness: Witness | None = None) -> Plan:
        """The plan with the cache key of every step (reads the context, runs nothing).
        ``resolve_registry``: a docker:// reference → its image manifest's digest;
        ``witness`` is told every file, directory and symlink the keys read."""
        stat_cache = self.store.stat_cache(context.root, witness)

        def identity(base: BaseRef) -> str:
            return base_identity(base, stat_cache, resolve, resolve_registry, epoch=epoch)

        keyed = key_plan(plan, context=context, epoch=epoch, identity=identity,
                         stat_cache=stat_cache)
        stat_cache.save()
        return keyed

    @staticmethod
    def image_key(plan: Plan, *, compression: str, output_format: str,
                  epoch: int) -> str | None:
        if output_format != "aci":
            return None  # OCI output is cached step by step only
        return image_key(plan, compression=compression, output_format="aci", epoch=epoch)

    def hit(self, step: Step) -> bool:
        return step.key is not None and self.store.step(step.key) is not None

    # -- steps -------------------------------------------------------------------------------

    def resume(self, stage: Stage, root: Path, *, needed_now: bool) -> Resume:
        """The longest cached prefix of ``stage``'s steps, restored at ``root`` unless the
        whole stage is cached and not ``needed_now`` (it is then ``deferred``)."""
        for number in range(len(stage.steps) - 1, -1, -1):
            key = stage.steps[number].key
            record = self.store.step(key) if key is not None else None
            source = None
            if record is None and key is not None and self.remote is not None:
                # Imported into the local store, then used as a local entry is.
                source = self.remote.fetch(key, f"step {stage.steps[number].number}")
                record = self.store.step(key) if source is not None else None
            if record is None:
                continue
            if (origin := source or record.import_origin) is not None:
                self.built_on = self.built_on or origin
            if number == len(stage.steps) - 1 and not needed_now:
                return Resume(cached=number + 1, tree=record.tree, deferred=record,
                              source=source)
            try:
                state = self.restore(record, root,
                                     link=not runs_after(stage.steps[number + 1 :]))
            except CorruptTree as e:
                self.reporter.warning(f"{e.message}; building the step again")
                remove_tree(root)
                continue
            return Resume(cached=number + 1, state=state, tree=record.tree, source=source)
        return Resume()

    def restore(self, record: StepRecord, root: Path, *, link: bool) -> StageState:
        """Raises CorruptTree (the entry is discarded) when the snapshot is damaged. ``link``
        (no RUN follows): the snapshot's files stay in the cache, the rootfs's lower tree."""
        known: KnownDigests = {}
        rootfs = self.store.restore(record, root, link=link, known=known, lazy=link)
        return StageState(rootfs=rootfs, manifest=from_json_bytes(record.manifest_json),
                          known=known)

    def store_step(self, stage: Stage, number: int, state: StageState,
                   tree: str | None, *, image_cached: bool = False) -> str | None:
        """Keep what step ``number`` produced; returns the key of the entry now holding the
        rootfs (manifest-only steps point at the tree before them). ``image_cached``: the
        stage is the image, which the cache will hold whole (see ``needs_snapshot``)."""
        key = stage.steps[number].key
        if key is None:
            return None
        changes_rootfs = number == 0 or isinstance(stage.steps[number].instruction,
                                                   Copy | Run | Workdir)
        if not changes_rootfs and tree is None:
            return None
        if changes_rootfs and image_cached and not self.needs_snapshot(stage, number):
            return None
        try:
            self.store.put_step(key, to_json_bytes(state.manifest),
                                rootfs=state.rootfs if changes_rootfs else None,
                                tree=tree, link=not runs_after(stage.steps[number + 1 :]),
                                known=state.known, built_on=self.built_on)
        except OSError as e:
            self.reporter.warning(f"cannot store step {number + 1} in the cache: {e}")
            return None
        cached = state.rootfs.cached
        if cached is not None and changes_rootfs:
            # Its snapshot may link the restored entry's inodes, not yet read for the
            # image: should one prove changed, this entry goes with the restored one.
            cached.stored.append(key)
        return key if changes_rootfs else tree

    def needs_snapshot(self, stage: Stage, number: int) -> bool:
        """Whether step ``number`` of a stage that becomes the image the cache holds needs a
        snapshot of its own. Not the image's last COPY or WORKDIR: a rebuild of the same
        Acfile takes the image itself, and one that changes a later manifest line redoes
        that step from the snapshot before it, which costs about what storing this one
        would (a link or copy of every file) or less. A RUN,
        a BEGIN and a COPY --from are always kept (they may be costly to redo: a COPY
        --from restores the stage it reads), and every step is kept when a --cache-to
        registry is to receive them."""
        step = stage.steps[number]
        if number == 0 or isinstance(step.instruction, Run) or (
                isinstance(step.instruction, Copy) and step.instruction.from_stage is not None
        ) or (self.remote is not None and self.remote.destination is not None):
            return True
        return any(isinstance(later.instruction, Copy | Run | Workdir)
                   for later in stage.steps[number + 1 :])

    def export_remote(self, plan: Plan) -> None:
        """Push every step of ``plan`` the local cache holds to the --cache-to registry."""
        if self.remote is None or self.remote.destination is None:
            return
        keys = [step.key for stage in plan.stages for step in stage.steps
                if step.key is not None]
        pushed, present = self.remote.export(keys)
        self.reporter.info(f"cache exported to {self.remote.destination[0].url()}: "
                           f"steps pushed {pushed}, there already {present}")

    # -- final images ------------------------------------------------------------------------

    def image(self, key: str | None) -> ImageRecord | None:
        return self.store.image(key) if key is not None else None

    def image_sha256(self, key: str) -> str | None:
        """The SHA-256 of the stored image file (what a copy of it at the output has)."""
        return self.store.image_sha256(key)

    def copy_image(self, record: ImageRecord, output: Path) -> bool:
        """Copy a cached image to ``output``, verified; False (warned) when it is damaged."""
        if self.store.copy_image(record, output):
            return True
        self.reporter.warning(f"cache entry {record.key} is damaged; building the image again")
        return False

    @contextlib.contextmanager
    def image_draft(self, key: str | None) -> Iterator[ImageDraft | None]:
        """Where the finalizer also writes the image for the cache (None: it is cached
        already, or cannot be, warned); see ``commit_image``."""
        if key is None:
            yield None
            return
        with contextlib.ExitStack() as stack:
            try:
                draft = stack.enter_context(self.store.image_draft(key))
            except OSError as e:
                self.reporter.warning(f"cannot store the image in the cache: {e}")
                draft = None
            yield draft

    def commit_image(self, draft: ImageDraft, record: ImageRecord) -> None:
        try:
            draft.commit(replace(record, built_on=self.built_on))
        except OSError as e:
            self.reporter.warning(f"cannot store the image in the cache: {e}")

    def store_image(self, image: Path, record: ImageRecord) -> None:
        try:
            self.store.put_image(record.key, image,
                                 replace(record, built_on=self.built_on))
        except OSError as e:
            self.reporter.warning(f"cannot store the image in the cache: {e}")
