"""The `build` verb: Acfile in, image out; the image ID is the only line on stdout."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from acbuild.cli.commands.common import (
    acfile_argument,
    acfile_options,
    global_options,
    resolve_acfile,
    state,
)
from acbuild.cli.commands.pushopts import (
    cache_options,
    check_targets,
    layout_to_push,
    push,
    push_fields,
    push_option,
    transport,
)
from acbuild.cli.commands.trustopts import (
    base_loader,
    make_signer,
    pull_policy_option,
    registry_options,
    signing_options,
    trust_options,
)
from acbuild.cli.console import say
from acbuild.cli.streamout import Stream, stream_for
from acbuild.report import Field, Reporter

if TYPE_CHECKING:  # the library is imported when the verb runs, so --help stays quick
    from acbuild.build.build import BuildResult
    from acbuild.cache.remote import CacheRepo
    from acbuild.distribution.registry.reference import Reference


def _docker_hint(hint: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value:
            raise click.UsageError(f"{param.opts[-1]} is docker build's; {hint}", ctx=ctx)
        return value

    return callback


def _secrets(ctx: click.Context, param: click.Parameter,
             values: tuple[str, ...]) -> dict[str, Path]:
    """--secret id=ID,src=FILE (docker build's form; source= too) to {ID: FILE}."""
    found: dict[str, Path] = {}
    if not values:  # click calls this on every build: no-ops must not import the parser
        return found
    from acbuild.acfile.runmount import SECRET_ID

    for value in values:
        fields = dict(part.partition("=")[::2] for part in value.split(","))
        secret_id, src = fields.pop("id", ""), fields.pop("src", fields.pop("source", ""))
        if fields or not secret_id or not src:
            raise click.BadParameter(f"expected id=ID,src=FILE, got {value!r}", ctx, param)
        if not SECRET_ID.fullmatch(secret_id):
            raise click.BadParameter(f"invalid secret id {secret_id!r}: letters, digits, '_', "
                                     "'.' and '-', not starting with '.' or '-'", ctx, param)
        if secret_id in found:
            raise click.BadParameter(f"secret {secret_id!r} given twice", ctx, param)
        found[secret_id] = Path(src)
    return found


@click.command("build")
@acfile_argument
@click.option("--build-arg", multiple=True, hidden=True, expose_value=False,
              callback=_docker_hint("acbuild-py takes template variables as --var KEY=VALUE"))
@click.option("-t", "--tag", multiple=True, hidden=True, expose_value=False,
              callback=_docker_hint("the image is named by the Acfile's NAME and LABEL "
                                    "version=… lines, and -o OUT names the file"))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write the image (default: NAME-VERSION.aci here); - writes it "
                   "to stdout, and the image ID to stderr. A FIFO or a device (/dev/null, "
                   "/dev/stdout) is written into, never replaced.")
@click.option("--iidfile", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the image ID to this file.")
@acfile_options
@click.option("--format", "output_format", type=click.Choice(["aci", "oci", "oci-archive"]),
              default="aci", show_default=True, help="Image format to write.")
@signing_options("the image (as a SIGN line would)")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Keep the full output of RUN steps here.")
@click.option("--no-cache", is_flag=True, help="Run every step; neither read nor fill the cache.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), metavar="N",
              help="Build at most N independent stages at once (default: one a CPU).")
@click.option("--secret", "secrets", multiple=True, metavar="id=ID,src=FILE", callback=_secrets,
              help="A file RUN --mount=type=secret,id=ID sees at /run/secrets/ID; never in "
                   "the image, the cache or the log.")
@click.option("--check-repro", is_flag=True,
              help="Build twice without cache and fail (exit 1) if the images differ.")
@push_option
@cache_options
@trust_options
@registry_options
@pull_policy_option
@global_options
def command(
    path: Path | None,
    acfile_file: Path | None,
    output: Path | None,
    iidfile: Path | None,
    context: Path | None,
    allow_paths: tuple[Path, ...],
    variables: tuple[str, ...],
    var_files: tuple[Path, ...],
    target: str | None,
    compression: str,
    output_format: str,
    sign_keys: tuple[str, ...],
    gpg_home: Path | None,
    passphrase_file: Path | None,
    log_file: Path | None,
    no_cache: bool,
    cache_dir: Path | None,
    jobs: int | None,
    check_repro: bool,
    push_to: Reference | None,
    cache_from: tuple[CacheRepo, ...],
    cache_to: CacheRepo | None,
    secrets: dict[str, Path],
    **trust: Any,
) -> None:
    """Build the image an Acfile describes: PATH/Acfile, ./Acfile with no PATH, PATH itself
    when it is a file, or -f ACFILE (PATH is then the context directory)."""
    import time

    from acbuild.cache import warm

    started = time.monotonic()
    acfile, context = resolve_acfile(path, acfile_file, context)
    if push_to is not None and output_format != "oci":
        raise click.UsageError("--push sends an OCI image: use it with --format oci")
    if no_cache and (cache_from or cache_to is not None):
        raise click.UsageError("--cache-from and --cache-to share the step cache, which "
                               "--no-cache turns off")
    registries = None
    if push_to is not None or cache_from or cache_to is not None:
        registries = transport(trust.get("insecure_registry", ()), trust.get("ca_file"))
        check_targets(push_to, cache_to, registries)
    stream = stream_for(output)
    to_stdout = stream is not None and stream.is_stdout
    iid_stream = stream_for(iidfile, "--iidfile", binary=False)
    if iid_stream is not None and iid_stream.is_stdout and to_stdout:
        raise click.UsageError(f"--iidfile {iidfile} is stdout, where -o {output} sends the "
                               "image: name another file")
    if iidfile is not None and iid_stream is None:
        from acbuild.fs.atomic import check_writable  # not at the top: no-ops need none

        check_writable(iidfile)
    warm_key = None
    # A hit would skip a --cache-to export; a --secret file is no input a record stats.
    if not (no_cache or check_repro or stream or sign_keys or log_file
            or output_format != "aci" or cache_from or cache_to is not None or secrets):
        # Everything that can change the image; any difference is only a miss.
        warm_key = warm.invocation_key([
            ("acfile", os.path.abspath(acfile)), ("output", output),
            ("context", context and os.path.abspath(context)),
            ("allow", [os.path.abspath(p) for p in allow_paths]), ("vars", variables),
            ("var_files", [os.path.abspath(p) for p in var_files]), ("target", target),
            ("compression", compression), ("trust", sorted(trust.items())),
            ("gpg_home", gpg_home), ("passphrase_file", passphrase_file),
            ("epoch", os.environ.get("SOURCE_DATE_EPOCH"))])
        hit = warm.check(cache_dir or warm.default_cache_dir(os.environ), warm_key)
        if hit is not None:
            reporter = state().reporter()
            reporter.detail(f"{hit.output} is up to date: nothing this build reads changed "
                            "since it was written")
            warm.replay(hit, reporter)
            reporter.summary(warm.summary(
                name=hit.name, version=hit.version, image_id=hit.image_id, size=hit.size,
                uncompressed=hit.uncompressed_size, entries=hit.entries, signatures=(),
                output=hit.output, seconds=time.monotonic() - started))
            _finish(hit.image_id, iidfile, iid_stream, to_stdout)
            return
    import tempfile

    from acbuild.build.build import BuildOptions, build
    from acbuild.build.repro import check_reproducible
    from acbuild.trust.sign import remove_stale_signature

    reporter = state().reporter()
    signer = make_signer(gpg_home, passphrase_file, reporter)

    pushed: tuple[Field, ...] = ()
    kept = output is not None  # pushed without -o: the layout is a temporary one
    with contextlib.ExitStack() as stack:
        if push_to is not None and output is None:
            output = stack.enter_context(layout_to_push(None))
        if stream is not None:
            # The image is written whole (and its ID known) before a byte reaches the stream.
            output = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="acbuild-stdout-"))) / "image.aci"
        options = BuildOptions(
            acfile=acfile,
            output=output,
            base_loader=base_loader(reporter=reporter, **trust),
            context=context,
            allow_paths=allow_paths,
            variables=variables,
            var_files=var_files,
            target=target,
            compression=compression,
            output_format=output_format,  # type: ignore[arg-type]  # click.Choice checked it
            sign_keys=sign_keys,
            signer=signer,
            gpg_home=gpg_home,
            remove_stale_signature=remove_stale_signature,
            log_file=log_file,
            no_cache=no_cache,
            cache_dir=cache_dir,
            cache_from=cache_from,
            cache_to=cache_to,
            transport=registries,
            secrets=secrets,
            refuse_signing=f"-o {stream.shown} streams the image, and a signature needs a "
                           "file beside it: use -o FILE" if stream is not None else None,
            warm_key=warm_key,
            jobs=jobs,
        )
        result = (check_reproducible(options, reporter) if check_repro
                  else build(options, reporter))
        if stream is not None:
            stream.copy_from(result.output)
        if push_to is not None and registries is not None:
            pushed = push_fields(push(result.output, push_to, registries, reporter))
    summarise(result, reporter, pushed, kept=kept or push_to is None)
    _finish(result.image_id, iidfile, iid_stream, to_stdout)


def _finish(image_id: str, iidfile: Path | None, iid_stream: Stream | None,
            to_stdout: bool) -> None:
    if iid_stream is not None:
        if not iid_stream.is_stdout:  # else the ID is stdout's line anyway
            iid_stream.write(image_id.encode())
    elif iidfile is not None:
        from acbuild.fs.atomic import atomic_write  # only then: a no-op ends here

        with atomic_write(iidfile) as f:
            f.write(image_id.encode())
    say(image_id, err=to_stdout)


def summarise(result: BuildResult, reporter: Reporter, pushed: tuple[Field, ...] = (), *,
              kept: bool = True) -> None:
    from acbuild.cache.warm import summary

    version = next((lb.value for lb in result.manifest.labels if lb.name == "version"), None)
    reporter.summary(summary(
        name=result.manifest.name, version=version, image_id=result.image_id,
        size=result.size, uncompressed=result.uncompressed_size, entries=result.entries,
        signatures=tuple(str(s) for s in result.signatures),
        output=result.output if kept else None, pushed=pushed, seconds=result.seconds))
