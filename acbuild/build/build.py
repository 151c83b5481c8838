"""Build: the whole job, render -> parse -> plan -> execute -> finalize -> sign.

Reads as the list of steps it is; each stage module does the work and raises AcbuildError
with the place in the Acfile when something is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from acbuild.acfile.context import BuildContext
from acbuild.acfile.instructions import Isolator, Run, Sign
from acbuild.acfile.parse import parse_partly
from acbuild.acfile.render import load_variables, render, unused_variables
from acbuild.build import manifest_edit
from acbuild.build.bases import BaseLoader, check_own_files, pin_dependencies
from acbuild.build.execute import ExecuteOptions, execute, reported_step, step_info
from acbuild.build.noop import WarningCounter, check_plan, remember, witness_invocation
from acbuild.build.rktcompat import rkt_warnings
from acbuild.build.schedule import default_jobs
from acbuild.build.signing import Signer, UnsignedImage
from acbuild.cache.buildcache import BuildCache, StageState
from acbuild.cache.cache import CacheStore, ImageRecord
from acbuild.cache.mountcache import MountCache
from acbuild.cache.warm import Witness, default_cache_dir
from acbuild.errors import AcfileError, BuildError, Span, TrustError, raise_all
from acbuild.fs.atomic import check_writable
from acbuild.fs.leftovers import hold, owner_tag, sweep
from acbuild.fs.private import create_private_file, open_private_dir, user_temp_root
from acbuild.fs.regular import read_regular
from acbuild.fs.staging import remove_tree
from acbuild.image.finalize import Tee, build_epoch, write_aci
from acbuild.image.manifest import ImageManifest, from_json_bytes, to_json_bytes
from acbuild.image.manifest_rules import problems
from acbuild.plan.baseref import RegistryImage
from acbuild.plan.plan import Plan, check_instructions, make_plan
from acbuild.report import Reporter, StepInfo
from acbuild.signals import owned

if TYPE_CHECKING:  # httpx and the registry code load only for a build that uses a registry
    from acbuild.cache.remote import CacheRepo
    from acbuild.distribution.registry.transport import TransportOptions

OutputFormat = Literal["aci", "oci", "oci-archive"]
# Removes IMAGE.asc before IMAGE is replaced, so no stale signature survives a rebuild.
StaleSignatureRemover = Callable[[Path], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOptions:
    acfile: Path
    output: Path | None  # None: <last name segment>[-<version>].aci in the working directory
    base_loader: BaseLoader
    context: Path | None = None
    variables: tuple[str, ...] = ()  # --var KEY=VALUE
    var_files: tuple[Path, ...] = ()
    target: str | None = None
    compression: str = "gzip"
    output_format: OutputFormat = "aci"
    sign_keys: tuple[str, ...] = ()  # --sign, on top of the Acfile's SIGN
    signer: Signer | None = None
    remove_stale_signature: StaleSignatureRemover | None = None
    log_file: Path | None = None
    # --allow-path: host directories a BEGIN may read besides the Acfile's and the context
    allow_paths: tuple[Path, ...] = ()
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    no_cache: bool = False
    cache_dir: Path | None = None  # None: $XDG_CACHE_HOME/acbuild-py/build-cache
    sign: bool = True  # False: leave SIGN for later (--check-repro signs once it compared)
    refuse_signing: str | None = None  # why signing cannot be done (e.g. -o -), said at SIGN
    gpg_home: Path | None = None  # where the SIGN keys are; None: gpg's default
    cache_from: tuple[CacheRepo, ...] = ()  # --cache-from registry://…: looked up on a miss
    cache_to: CacheRepo | None = None  # --cache-to registry://…: every step pushed after
    transport: TransportOptions | None = None  # how registries are reached (None: defaults)
    # The invocation's key (acbuild.cache.warm): keep a warm record under it when the build
    # is one that a later identical invocation can answer by stat. None: keep none.
    warm_key: str | None = None
    jobs: int | None = None  # stages built at once; None: one a CPU
    # --secret id=ID,src=FILE: what RUN --mount=type=secret,id=ID reads (never kept)
    secrets: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildResult:
    image_id: str
    output: Path
    manifest: ImageManifest
    size: int
    uncompressed_size: int
    entries: int
    signatures: tuple[Path, ...]
    seconds: float


def read_acfile(path: Path) -> str:
    try:
        data = read_regular(path)
    except FileNotFoundError:
        raise AcfileError(f"Acfile not found: {path}") from None
    except OSError as e:
        raise AcfileError(f"cannot read Acfile {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise AcfileError(f"{path}:{line}: Acfile is not valid UTF-8") from None


def load_plan(options: BuildOptions, reporter: Reporter | None = None) -> Plan:
    """Render, parse and plan the Acfile: everything a build does before touching files.
    ``reporter`` hears of --var values the Acfile never uses."""
    text = read_acfile(options.acfile)
    variables = load_variables(options.variables, options.var_files)
    if reporter is not None:
        given = [arg.partition("=")[0] for arg in options.variables]
        for name in unused_variables(text, given):
            reporter.warning(f"--var {name} is not used by {options.acfile}")
    rendered = render(text, file=str(options.acfile), variables=variables)
    instructions, errors = parse_partly(rendered)
    if errors:
        # The lines that did parse may be wrong too: say so in the same run.
        raise_all([*errors, *check_instructions(instructions)])
    return make_plan(
        instructions,
        acfile_dir=options.acfile.parent,
        allowed=(options.context or options.acfile.parent, *options.allow_paths),
        target=options.target,
        extra_sign_keys=options.sign_keys,
    )


def build(options: BuildOptions, reporter: Reporter) -> BuildResult:
    started = time.monotonic()
    witness: Witness | None = None
    counter = WarningCounter(reporter)
    if options.warm_key is not None and not options.no_cache:
        reporter = counter
        witness = witness_invocation(options.acfile, options.context, options.var_files,
                                     options.allow_paths)
    plan = load_plan(options, reporter)
    if witness is not None:
        check_plan(witness, plan)
    if plan.sign_keys and (options.signer is None or options.output_format != "aci"):
        # Said before any work: an unsigned image where a signed one was asked for is a
        # failure, however complete.
        raise BuildError("SIGN is only supported for ACI output", span=_sign_span(plan))
    if plan.sign_keys and options.refuse_signing:
        raise BuildError(options.refuse_signing, span=_sign_span(plan))
    check_sign_keys(plan, options.gpg_home)
    plan = pin_dependencies(plan, options.base_loader, reporter)
    signing = bool(plan.sign_keys and options.sign and options.signer is not None)
    # Writing the image, and signing it, are steps of their own after the last instruction.
    plan = _with_total(plan, plan.total_steps + 1 + signing)
    context = build_context(options)
    check_own_files(plan, context, _own_files(plan, options))
    if options.output is not None and options.output_format != "oci":
        check_writable(options.output)  # before step 1, not after the work
    epoch = build_epoch(options.environ)
    with _log_directory(plan, options) as logs, \
            owned(UnsignedImage, UnsignedImage.discard) as unsigned:
        cache = open_cache(options, reporter)
        signed = unsigned if signing else None
        with _stopping(options.base_loader.stop), _session(cache), work_directory() as work, \
                _remote(cache, options, reporter):
            if cache is not None:
                plan = key_steps(plan, options, cache, context, epoch, reporter, witness)
            written = _cached_image(plan, options, cache, epoch, reporter, signed)
            if written is None:
                written = _build_image(plan, options, cache, context, epoch, work, logs,
                                       reporter, signed)
            if cache is not None:
                cache.export_remote(plan)
        for warning in rkt_warnings(written.manifest):
            reporter.warning(warning, plan.target.begin.span)
        signatures: tuple[Path, ...] = ()
        if signed is not None:
            assert options.signer is not None
            info = StepInfo(number=plan.total_steps, total=plan.total_steps,
                            text=f"SIGN {written.output}")
            with reported_step(info, reporter, _sign_span(plan)):
                # A signed image was asked for: until its signature is there it stays
                # hidden, and a failure leaves the previous image and signature as they were.
                signatures = tuple(signed.publish(options.signer, key)
                                   for key in plan.sign_keys)
        elif witness is not None and cache is not None and not counter.warnings:
            _remember(plan, options, witness, cache, epoch, written)
    return dataclasses.replace(written, signatures=signatures,
                               seconds=time.monotonic() - started)


def _own_files(plan: Plan, options: BuildOptions) -> list[tuple[str, Path]]:
    """What the build writes while it runs; without -o, the image goes to the current
    directory (its name is known only from the final manifest)."""
    files = [("the output", options.output or Path.cwd())]
    has_run = any(isinstance(s.instruction, Run) for st in plan.stages for s in st.steps)
    if options.log_file is not None or has_run:
        files.append(("the log file", options.log_file or default_log_path(options.environ)))
    if not options.no_cache:
        files.append(("the cache directory",
                      options.cache_dir or default_cache_dir(options.environ)))
    return files


def _remember(plan: Plan, options: BuildOptions, witness: Witness, cache: BuildCache,
              epoch: int, written: BuildResult) -> None:
    assert options.warm_key is not None
    if plan.sign_keys:
        return
    steps = tuple(step_info(step, stage) for stage in plan.stages for step in stage.steps)
    version = next((lb.value for lb in written.manifest.labels if lb.name == "version"), None)
    # Through the descriptor of the cache that was checked, not by its path again.
    remember(cache_dir=cache.store.opened_path(),
             key=options.warm_key, witness=witness, cache=cache,
             image_key=final_image_key(plan, options, epoch),
             steps=(*steps, _write_step(plan, written.output)), image_id=written.image_id,
             name=written.manifest.name, version=version, size=written.size,
             uncompressed_size=written.uncompressed_size, entries=written.entries,
             output=written.output)


def _with_total(plan: Plan, total: int) -> Plan:
    stages = tuple(dataclasses.replace(stage, steps=tuple(
        dataclasses.replace(step, total=total) for step in stage.steps)) for stage in plan.stages)
    target = next(s for s in stages if s.index == plan.target.index)
    return dataclasses.replace(plan, stages=stages, target=target, total_steps=total)


def _write_step(plan: Plan, output: Path) -> StepInfo:
    number = max(s.number for s in plan.target.steps) + 1
    return StepInfo(number=number, total=plan.total_steps, text=f"WRITE {output}")


def _sign_span(plan: Plan) -> Span | None:
    """The first SIGN line of the target stage; None when only --sign asked for signing."""
    return next((s.instruction.span for s in plan.target.steps
                 if isinstance(s.instruction, Sign)), None)


def build_context(options: BuildOptions) -> BuildContext:
    return BuildContext((options.context or options.acfile.parent).resolve())


def check_sign_keys(plan: Plan, gpg_home: Path | None) -> None:
    """Every signing key exists, can sign and is one rkt can verify: found out at the SIGN
    line before any step runs, not after a long build."""
    spans = {step.instruction.key: step.instruction.span for step in plan.target.steps
             if isinstance(step.instruction, Sign)}
    if not plan.sign_keys:
        return
    # gnupg loads only for a build that signs.
    from acbuild.trust.rktkeys import check_signing_key

    for key in plan.sign_keys:
        try:
            check_signing_key(key, gpg_home)
        except TrustError as e:
            where = "" if key in spans else f"--sign {key}: "
            raise BuildError(where + e.message, span=spans.get(key), hint=e.hint) from None


def open_cache(options: BuildOptions, reporter: Reporter) -> BuildCache | None:
    if options.no_cache:
        return None
    return BuildCache(CacheStore(options.cache_dir or default_cache_dir(options.environ)),
                      reporter)


@contextmanager
def _remote(cache: BuildCache | None, options: BuildOptions,
            reporter: Reporter) -> Iterator[None]:
    """The --cache-from/--cache-to registries, open while the build runs (the cache reads
    and fills them through ``cache.remote``)."""
    if cache is None or (not options.cache_from and options.cache_to is None):
        yield
        return
    from acbuild.cache.remote import open_remote
    from acbuild.distribution.registry.transport import TransportOptions

    with open_remote(cache.store, reporter, sources=options.cache_from,
                     destination=options.cache_to,
                     transport=options.transport or TransportOptions(),
                     environ=options.environ, limits=options.base_loader.limits,
                     stop=options.base_loader.stop) as remote:
        cache.remote = remote
        try:
            yield
        finally:
            cache.remote = None


@contextmanager
def _stopping(stop: threading.Event) -> Iterator[None]:
    """``stop`` set when the build fails or is interrupted in this thread: whatever another
    thread still does for it (a stage, a registry request) ends too, before the cleanup."""
    try:
        yield
    except BaseException:
        stop.set()
        raise


@contextmanager
def _session(cache: BuildCache | None) -> Iterator[None]:
    if cache is None:
        yield
        return
    with cache.session():
        yield


def key_steps(plan: Plan, options: BuildOptions, cache: BuildCache, context: BuildContext,
              epoch: int, reporter: Reporter, witness: Witness | None = None) -> Plan:
    """The plan with the cache key of every step (reads the context, runs nothing)."""
    loader = options.base_loader

    def resolve(name: str, labels: tuple[tuple[str, str], ...]) -> Path:
        return loader.resolve_name(name, labels, reporter)

    def resolve_registry(text: str) -> str:
        return loader.registries().identity(text, reporter)

    if loader.registry is not None:
        loader.registry.resolve_ahead(
            [s.base.reference for s in plan.stages if isinstance(s.base, RegistryImage)])
    return cache.key(plan, context=context, epoch=epoch, resolve=resolve,
                     resolve_registry=resolve_registry, witness=witness)


def final_image_key(plan: Plan, options: BuildOptions, epoch: int) -> str | None:
    return BuildCache.image_key(plan, compression=options.compression,
                                output_format=options.output_format, epoch=epoch)


def _cached_image(plan: Plan, options: BuildOptions, cache: BuildCache | None, epoch: int,
                  reporter: Reporter, signed: UnsignedImage | None) -> BuildResult | None:
    """The whole image from the cache, copied (and verified) to the output; None on a miss."""
    record = cache.image(final_image_key(plan, options, epoch)) if cache is not None else None
    if cache is None or record is None:
        return None
    manifest = from_json_bytes(record.manifest_json)
    output = options.output or default_output(manifest, options.output_format)
    if not cache.copy_image(record, _written_to(output, options, signed)):
        return None
    for stage in plan.stages:
        for step in stage.steps:
            reporter.step_started(step_info(step, stage))
            reporter.step_finished(step_info(step, stage), 0.0, cached=True)
    reporter.step_started(_write_step(plan, output))
    reporter.step_finished(_write_step(plan, output), 0.0, cached=True)
    return BuildResult(image_id=record.image_id, output=output, manifest=manifest,
                       size=record.size, uncompressed_size=record.uncompressed_size,
                       entries=record.entries, signatures=(), seconds=0.0)


def _build_image(plan: Plan, options: BuildOptions, cache: BuildCache | None,
                 context: BuildContext, epoch: int, work: Path, logs: LogPlace | None,
                 reporter: Reporter, signed: UnsignedImage | None) -> BuildResult:
    with _run_log(logs) as (log, log_path):
        stage = execute(
            plan,
            options=ExecuteOptions(context=context, work_dir=work, epoch=epoch,
                                   load_base=options.base_loader, log=log, log_path=log_path,
                                   cache=cache, jobs=options.jobs or default_jobs(),
                                   secrets=options.secrets, cancel=options.base_loader.stop,
                                   image_cached=cache is not None and final_image_key(
                                       plan, options, epoch) is not None,
                                   mount_cache=_mount_cache(cache, options)),
            reporter=reporter,
        )
        manifest = _final_manifest(stage, plan)
        output = options.output or default_output(manifest, options.output_format)
        target = _written_to(output, options, signed) if options.output_format == "aci" \
            else output
        key = final_image_key(plan, options, epoch) if cache is not None else None
        # An .aci goes into the cache as it is written: one pass, never read back.
        teed = cache is not None and options.output_format == "aci"
        with cache.image_draft(key) if cache is not None and teed else \
                contextlib.nullcontext(None) as draft:
            with reported_step(_write_step(plan, output), reporter):
                image_id, size, uncompressed, entries = _write(
                    stage, manifest, target, options, epoch, reporter,
                    tee=None if draft is None else draft.write)
            record = None if key is None else ImageRecord(
                key=key, image_id=image_id, size=size, uncompressed_size=uncompressed,
                entries=entries, manifest_json=to_json_bytes(manifest))
            if cache is not None and record is not None:
                if draft is not None:
                    cache.commit_image(draft, record)
                elif not teed:
                    cache.store_image(target, record)
    return BuildResult(image_id=image_id, output=output, manifest=manifest, size=size,
                       uncompressed_size=uncompressed, entries=entries, signatures=(),
                       seconds=0.0)


def _final_manifest(stage: StageState, plan: Plan) -> ImageManifest:
    manifest = manifest_edit.finish(stage.manifest)
    found = problems(manifest)
    if found:
        # The plan checks what the Acfile says; this catches what the base brought in. An
        # isolator the base conflicts with is pointed at the ISOLATOR line, not at BEGIN.
        span = plan.target.begin.span
        for step in plan.target.steps:
            i = step.instruction
            if isinstance(i, Isolator) and any(i.name.split("/")[-1] in p for p in found):
                span = i.span
        raise BuildError("the image manifest is not valid: " + "; ".join(found), span=span)
    return manifest


def _written_to(output: Path, options: BuildOptions, signed: UnsignedImage | None) -> Path:
    """Where the .aci for ``output`` is written: a signing build's to a hidden name until its
    signature is there; any other's in place, after the signature of the image it replaces
    is removed (no signature outlives the bytes it signed)."""
    if signed is not None:
        return signed.path_for(output)
    if options.remove_stale_signature is not None:
        options.remove_stale_signature(output)
    return output


def default_output(manifest: ImageManifest, output_format: OutputFormat) -> Path:
    stem = manifest.name.rsplit("/", 1)[-1]
    version = next((label.value for label in manifest.labels if label.name == "version"), None)
    if version:
        stem = f"{stem}-{version}"
    suffix = {"aci": ".aci", "oci": "", "oci-archive": ".oci.tar"}[output_format]
    return Path(stem + suffix)


def _write(
    stage: StageState, manifest: ImageManifest, output: Path, options: BuildOptions,
    epoch: int, reporter: Reporter, *, tee: Tee | None = None,
) -> tuple[str, int, int, int]:
    """Write the image; an .aci's compressed bytes are also given to ``tee``."""
    if options.output_format == "aci":
        written = write_aci(stage.rootfs, to_json_bytes(manifest), output,
                            compression=options.compression, epoch=epoch, reporter=reporter,
                            tee=tee)
        return written.image_id, written.size, written.uncompressed_size, written.entries
    from acbuild.interop.export import export_oci

    digest = export_oci(stage.rootfs, manifest, output,
                        archive=options.output_format == "oci-archive", epoch=epoch,
                        reporter=reporter)
    return digest, 0, 0, 0


def default_log_path(environ: Mapping[str, str]) -> Path:
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(state) / "acbuild-py" / "logs" / f"build-{stamp}-{os.getpid()}.log"


def _mount_cache(cache: BuildCache | None, options: BuildOptions) -> MountCache:
    """The cache mounts: in the step cache the build opened (one directory, checked once),
    else (--no-cache) in the one it would use."""
    if cache is not None:
        return cache.store.mounts
    return CacheStore(options.cache_dir or default_cache_dir(options.environ)).mounts


@dataclass(frozen=True, slots=True, kw_only=True)
class LogPlace:
    """Where the log file goes: its directory, opened (and checked) before the build does
    any work, and the path that names the file in messages."""

    dir_fd: int
    path: Path


@contextmanager
def _log_directory(plan: Plan, options: BuildOptions) -> Iterator[LogPlace | None]:
    """The log file's directory, reached one component at a time (open_private_dir):
    a symlink or directory of another user on the way, as a planted ``$SHARED/logs ->
    /etc``, is refused, never followed to truncate a file outside what was named. A
    --log-file may be in a directory shared with others (root's sticky /tmp); the default
    one is made, and must be, private."""
    has_run = any(isinstance(s.instruction, Run) for st in plan.stages for s in st.steps)
    if not has_run and options.log_file is None:
        yield None
        return
    path = options.log_file or default_log_path(options.environ)
    what = "log file directory" if options.log_file is not None else "log directory"
    given = options.log_file is not None
    fd = open_private_dir(path.parent, what=what, create=not given, shared=given)
    try:
        yield LogPlace(dir_fd=fd, path=path)
    finally:
        os.close(fd)


@contextmanager
def _run_log(logs: LogPlace | None) -> Iterator[tuple[TextIO | None, Path | None]]:
    """The full output of RUN steps, kept in a file whose path a failure message names."""
    if logs is None:
        yield None, None
        return
    fd = create_private_file(logs.path, what="log file", dir_fd=logs.dir_fd)
    with open(fd, "w", encoding="utf-8", errors="replace") as log:
        yield log, logs.path


@contextmanager
def work_directory() -> Iterator[Path]:
    """A private directory for the stages' rootfs trees, removed however the build ends.

    It lives in this user's own temporary root, where no one else can plant an entry for
    the sweep of what killed builds left behind.
    """
    top = user_temp_root()
    sweep(top, "acbuild-")

    def make() -> tuple[Path, int]:
        while True:
            path = Path(tempfile.mkdtemp(prefix=f"acbuild-{owner_tag()}.", dir=top))
            try:
                held = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # swept before it was held (from another PID namespace)
            if hold(held):  # in use: never swept, from any PID namespace, while this runs
                return path, held
            os.close(held)

    def remove(made: tuple[Path, int]) -> None:
        remove_tree(made[0])
        os.close(made[1])

    with owned(make, remove) as (path, _held):
        yield path
