"""Options of the verbs that push to a registry (export, build) and share the step cache
through one (build): --push, --cache-from, --cache-to (--insecure-registry is trustopts').

Values are checked as the command line is parsed (a bad reference is a usage error, exit 2,
before any work); the registry modules are imported only then, so --help stays quick.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from acbuild.report import Field, Reporter

if TYPE_CHECKING:
    from acbuild.cache.remote import CacheRepo
    from acbuild.distribution.registry.push import PushResult
    from acbuild.distribution.registry.reference import Reference
    from acbuild.distribution.registry.transport import TransportOptions

F = TypeVar("F", bound=Callable[..., Any])


def _push_target(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from acbuild.distribution.registry.push import check_push_reference
    from acbuild.distribution.registry.reference import RegistryError, parse_reference

    if not value.startswith("docker://"):
        raise click.BadParameter(f"{value!r}: push to docker://REGISTRY/NAME:TAG", ctx, param)
    try:
        return check_push_reference(parse_reference(value))
    except RegistryError as e:
        raise click.BadParameter(e.message, ctx, param) from None


def _cache_repo(option: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if not value:  # not given: import no registry code (httpx loads rich)
            return value
        from acbuild.cache.remote import parse_cache_ref
        from acbuild.errors import AcbuildError

        try:
            if isinstance(value, tuple):
                return tuple(parse_cache_ref(v, option) for v in value)
            return None if value is None else parse_cache_ref(value, option)
        except AcbuildError as e:
            shown = e.message.removeprefix(f"{option}: ").removeprefix(f"{option} ")
            raise click.BadParameter(shown, ctx, param) from None

    return callback


def push_option(f: F) -> F:
    return click.option(
        "--push", "push_to", metavar="docker://REGISTRY/NAME:TAG", callback=_push_target,
        help="Push the OCI image to this registry tag (blobs it has already are not sent).")(f)


def cache_options(f: F) -> F:
    f = click.option(
        "--cache-to", metavar="registry://REGISTRY/REPO", callback=_cache_repo("--cache-to"),
        help="After the build, push its step-cache entries to this repository.")(f)
    return click.option(
        "--cache-from", multiple=True, metavar="registry://REGISTRY/REPO",
        callback=_cache_repo("--cache-from"),
        help="Look up steps the local cache misses in this repository (repeatable).")(f)


def transport(insecure_registries: tuple[str, ...], ca_file: Path | None) -> TransportOptions:
    """How the registries are reached (trustopts' --insecure-registry checked the hosts)."""
    from acbuild.distribution.registry.transport import TransportOptions

    return TransportOptions(insecure_registries=insecure_registries, ca_file=ca_file)


@contextmanager
def layout_to_push(output: Path | None) -> Iterator[Path]:
    """Where to write the OCI layout that is pushed: ``output``, or a private temporary
    directory removed afterwards (also when the push fails)."""
    if output is not None:
        yield output
        return
    import tempfile  # only for a push: every build imports this module

    with tempfile.TemporaryDirectory(prefix="acbuild-push-") as tmp:
        yield Path(tmp) / "layout"


def check_targets(push_to: Reference | None, cache_to: CacheRepo | None,
                  options: TransportOptions) -> None:
    """Reach the --push and --cache-to registries before the work whose result they take."""
    from acbuild.distribution.registry.push import check_can_push
    from acbuild.distribution.registry.reference import parse_reference

    if push_to is not None:
        check_can_push(push_to, options, os.environ)
    if cache_to is not None:
        ref = parse_reference(f"{cache_to.registry}/{cache_to.repository}")
        check_can_push(ref, options, os.environ)


def push(layout: Path, reference: Reference, options: TransportOptions,
         reporter: Reporter) -> PushResult:
    from acbuild.distribution.registry.push import push_image

    reporter.info(f"pushing {reference.url()}")
    result = push_image(layout, reference, options, os.environ, reporter)
    sent = sum(1 for b in result.blobs if b.how == "sent")
    reporter.info(f"pushed {reference.url()}@{result.digest}: {sent} of {len(result.blobs)} "
                  "blobs sent")
    return result


def push_fields(result: PushResult) -> tuple[Field, ...]:
    return (Field("pushed", "pushed", f"{result.reference.url()}@{result.digest}"),
            Field("pushed_bytes", "sent", result.sent_bytes, "bytes"))
