"""Build: the whole job, render -> parse -> plan -> execute -> finalize -> sign.

Reads as the list of steps it is; each stage module does the work and raises AcbuildError
with the place in the Acfile when something is wrong.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from acbuild import manifest_edit
from acbuild.bases import BaseLoader
from acbuild.context import BuildContext
from acbuild.errors import AcfileError, BuildError
from acbuild.execute import ExecuteOptions, StageResult, execute
from acbuild.finalize import build_epoch, write_aci
from acbuild.instructions import Run
from acbuild.manifest import ImageManifest, problems, to_json_bytes
from acbuild.parse import parse
from acbuild.plan import Plan, make_plan
from acbuild.render import load_variables, render
from acbuild.report import Reporter

OutputFormat = Literal["aci", "oci", "oci-archive"]
# Signs the image at the path with the key; returns the signature's path.
Signer = Callable[[Path, str], Path]
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
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


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
        data = path.read_bytes()
    except FileNotFoundError:
        raise AcfileError(f"Acfile not found: {path}") from None
    except OSError as e:
        raise AcfileError(f"cannot read Acfile {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise AcfileError(f"{path}:{line}: Acfile is not valid UTF-8") from None


def load_plan(options: BuildOptions) -> Plan:
    """Render, parse and plan the Acfile: everything a build does before touching files."""
    text = read_acfile(options.acfile)
    variables = load_variables(options.variables, options.var_files)
    rendered = render(text, file=str(options.acfile), variables=variables)
    return make_plan(
        parse(rendered),
        acfile_dir=options.acfile.parent,
        target=options.target,
        extra_sign_keys=options.sign_keys,
    )


def build(options: BuildOptions, reporter: Reporter) -> BuildResult:
    started = time.monotonic()
    plan = load_plan(options)
    epoch = build_epoch(options.environ)
    context = BuildContext((options.context or options.acfile.parent).resolve())
    with work_directory() as work, _run_log(plan, options) as (log, log_path):
        stage = execute(
            plan,
            options=ExecuteOptions(context=context, work_dir=work, epoch=epoch,
                                   load_base=options.base_loader, log=log, log_path=log_path),
            reporter=reporter,
        )
        manifest = _final_manifest(stage, plan)
        output = options.output or default_output(manifest, options.output_format)
        image_id, size, uncompressed, entries = _write(
            stage, manifest, output, options, epoch, reporter
        )
    signatures = _sign(plan, output, options)
    return BuildResult(
        image_id=image_id,
        output=output,
        manifest=manifest,
        size=size,
        uncompressed_size=uncompressed,
        entries=entries,
        signatures=signatures,
        seconds=time.monotonic() - started,
    )


def _final_manifest(stage: StageResult, plan: Plan) -> ImageManifest:
    manifest = manifest_edit.finish(stage.manifest)
    found = problems(manifest)
    if found:
        # The plan checks what the Acfile says; this catches what the base brought in.
        raise BuildError(
            "the image manifest is not valid: " + "; ".join(found), span=plan.target.begin.span
        )
    return manifest


def default_output(manifest: ImageManifest, output_format: OutputFormat) -> Path:
    stem = manifest.name.rsplit("/", 1)[-1]
    version = next((label.value for label in manifest.labels if label.name == "version"), None)
    if version:
        stem = f"{stem}-{version}"
    suffix = {"aci": ".aci", "oci": "", "oci-archive": ".oci.tar"}[output_format]
    return Path(stem + suffix)


def _write(
    stage: StageResult, manifest: ImageManifest, output: Path, options: BuildOptions,
    epoch: int, reporter: Reporter,
) -> tuple[str, int, int, int]:
    if options.output_format == "aci":
        if options.remove_stale_signature is not None:
            options.remove_stale_signature(output)
        written = write_aci(stage.rootfs, to_json_bytes(manifest), output,
                            compression=options.compression, epoch=epoch, reporter=reporter)
        return written.image_id, written.size, written.uncompressed_size, written.entries
    from acbuild.export import export_oci

    digest = export_oci(stage.rootfs, manifest, output,
                        archive=options.output_format == "oci-archive", epoch=epoch,
                        reporter=reporter)
    return digest, 0, 0, 0


def _sign(plan: Plan, output: Path, options: BuildOptions) -> tuple[Path, ...]:
    if not plan.sign_keys:
        return ()
    if options.signer is None or options.output_format != "aci":
        raise BuildError("SIGN is only supported for ACI output", span=plan.target.begin.span)
    return tuple(options.signer(output, key) for key in plan.sign_keys)


def default_log_path(environ: Mapping[str, str]) -> Path:
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(state) / "acbuild-py" / "logs" / f"build-{stamp}-{os.getpid()}.log"


@contextmanager
def _run_log(plan: Plan, options: BuildOptions) -> Iterator[tuple[TextIO | None, Path | None]]:
    """The full output of RUN steps, kept in a file whose path a failure message names."""
    has_run = any(isinstance(s.instruction, Run) for st in plan.stages for s in st.steps)
    if not has_run and options.log_file is None:
        yield None, None
        return
    path = options.log_file or default_log_path(options.environ)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", errors="replace") as log:
        yield log, path


@contextmanager
def work_directory() -> Iterator[Path]:
    """A private directory for the stages' rootfs trees, removed however the build ends."""
    path = Path(tempfile.mkdtemp(prefix="acbuild-"))
    try:
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """Remove a staged tree even where the image made directories read-only (0555)."""
    if path.is_dir() and not path.is_symlink():
        path.chmod(0o700)
    for parent, dirs, _files in os.walk(path):
        for name in dirs:
            child = os.path.join(parent, name)
            if not os.path.islink(child):
                os.chmod(child, 0o700)
    shutil.rmtree(path, ignore_errors=False)
