"""Options shared by the verbs that fetch or verify images (build, fetch, run, verify).

They become the trust chain's FetchOptions and the BaseLoader a build resolves BEGIN with.
The trust machinery is imported when a verb runs, not when its options are declared, so
that --help stays quick.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from acbuild.acfile.signkey import key_spec_problem
from acbuild.cli.commands.common import Size
from acbuild.report import Reporter

if TYPE_CHECKING:
    from acbuild.build.bases import BaseLoader
    from acbuild.build.registrypull import RegistryAccess
    from acbuild.build.signing import Signer
    from acbuild.distribution.fetch import FetchOptions, PullPolicy

F = TypeVar("F", bound=Callable[..., Any])

# Written out for the option declarations; a test keeps them equal to their sources
# (tarread.Limits().max_total_bytes and distribution.fetch.PULL_POLICIES).
MAX_IMAGE_SIZE = "64G"
PULL_POLICIES = ("new", "update", "never")


def check_key_specs(_ctx: click.Context, param: click.Parameter,
                    value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
    """``--sign`` / ``--key``: a key ID, fingerprint, e-mail or user ID, never an option."""
    for spec in (value,) if isinstance(value, str) else value or ():
        if (problem := key_spec_problem(spec)) is not None:
            raise click.BadParameter(problem, param=param)
    return value


def signing_options(what: str) -> Callable[[F], F]:
    """--sign, --gpg-home and --passphrase-file (build, go); ``what`` is what gets signed."""
    def decorate(f: F) -> F:
        opts = [
            click.option("--sign", "sign_keys", multiple=True, metavar="KEY",
                         callback=check_key_specs, help=f"Sign {what} with this GnuPG key."),
            click.option("--gpg-home", type=click.Path(path_type=Path, file_okay=False),
                         help="GnuPG home holding the signing key."),
            click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
                         help="File whose first line is the key's passphrase (or "
                              "$ACBUILD_PASSPHRASE)."),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def make_signer(gpg_home: Path | None, passphrase_file: Path | None,
                reporter: Reporter) -> Signer:
    """What signs an image for build and go: --gpg-home and --passphrase-file applied."""
    from acbuild.trust.sign import read_passphrase, sign_image

    passphrase = read_passphrase(passphrase_file)

    def signer(image: Path, key: str, signature: Path, shown: Path) -> None:
        sign_image(image, key, gpg_home=gpg_home, passphrase=passphrase, reporter=reporter,
                   signature=signature, shown=shown)

    return signer


def trust_options(f: F) -> F:
    opts = [
        click.option("--trust-store", type=click.Path(path_type=Path, file_okay=False),
                     help="Trusted keys directory (default: $ACBUILD_TRUST_STORE or "
                          "~/.config/acbuild-py/trustedkeys)."),
        click.option("--insecure", is_flag=True,
                     help="Allow plain HTTP for discovery and downloads."),
        click.option("--port", type=click.IntRange(1, 65535),
                     help="Send discovery requests to this port of the name's host."),
        click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="Extra CA certificate for HTTPS."),
        click.option("--insecure-skip-verify", is_flag=True,
                     help="Accept images whose signature is missing or bad (dangerous)."),
        click.option("--max-image-size", type=Size(), default=MAX_IMAGE_SIZE,
                     metavar="SIZE", help="Refuse base images whose content is larger "
                     "(a bound on tar and compression bombs).  [default: 64G]"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def check_hosts(_ctx: click.Context, param: click.Parameter,
                value: tuple[str, ...]) -> tuple[str, ...]:
    """--insecure-registry HOST[:PORT]: a host, never a URL or a path."""
    if not value:  # click calls this on every build: a no-op imports no registry code
        return value
    from acbuild.distribution.registry.reference import RegistryError, check_host

    try:
        return tuple(check_host(v, "--insecure-registry") for v in value)
    except RegistryError as e:
        raise click.BadParameter(e.message, param=param) from None


def check_platform(_ctx: click.Context, param: click.Parameter,
                   value: str | None) -> str | None:
    if value is None:  # as check_hosts: no registry code imported for nothing
        return value
    from acbuild.distribution.registry.platform import parse_platform
    from acbuild.distribution.registry.reference import RegistryError

    try:
        parse_platform(value)
    except RegistryError as e:
        raise click.BadParameter(e.message, param=param) from None
    return value


def insecure_registry_option(f: F) -> F:
    return click.option(
        "--insecure-registry", "insecure_registry", multiple=True, metavar="HOST[:PORT]",
        callback=check_hosts,
        help="Reach this registry (or token server) over plain HTTP; repeatable.")(f)


def registry_options(f: F) -> F:
    """--insecure-registry and --platform, for the verbs that pull docker:// images."""
    f = click.option("--platform", metavar="OS/ARCH[/VARIANT]", callback=check_platform,
                     help="Which image of a multi-platform docker:// image to pull "
                          "(default: the host's).")(f)
    return insecure_registry_option(f)


def max_pull_size_option(f: F) -> F:
    """--max-image-size for convert and fetch (build and plan have it from trust_options)."""
    return click.option(
        "--max-image-size", type=Size(), default=MAX_IMAGE_SIZE, metavar="SIZE",
        help="Refuse docker:// images whose layers add up to more (checked before "
             "downloading).  [default: 64G]")(f)


def registry_access(*, insecure_registry: tuple[str, ...] = (), platform: str | None = None,
                    ca_file: Path | None = None, insecure_skip_verify: bool = False,
                    store_dir: Path | None = None,
                    max_image_size: int | None = None) -> RegistryAccess:
    from acbuild.build.registrypull import RegistryAccess

    return RegistryAccess(insecure_registries=insecure_registry, ca_file=ca_file,
                          platform=platform, skip_verify=insecure_skip_verify,
                          store_dir=store_dir, max_bytes=max_image_size)


def pull_policy_option(f: F) -> F:
    """``--pull-policy`` for the verbs that resolve BEGIN and DEPENDENCY by name."""
    return click.option(
        "--pull-policy", type=click.Choice(PULL_POLICIES), default="new", show_default=True,
        help="How images named by BEGIN or DEPENDENCY are found: new: a stored copy that "
             "still verifies, else the server; update: always the server; never: only the "
             "image store.")(f)


def fetch_options(
    *,
    trust_store: Path | None = None,
    insecure: bool = False,
    port: int | None = None,
    ca_file: Path | None = None,
    insecure_skip_verify: bool = False,
    max_image_size: int | None = None,
    pull_policy: PullPolicy = "new",
) -> FetchOptions:
    """The trust options as the trust chain's FetchOptions (``max_image_size`` is a build's)."""
    from acbuild.distribution.fetch import FetchOptions

    del max_image_size
    return FetchOptions(insecure=insecure, port=port, trust_store=trust_store,
                        skip_verify=insecure_skip_verify, ca_file=ca_file,
                        pull_policy=pull_policy)


def base_loader(*, reporter: Reporter, max_image_size: int | None = None,
                insecure_registry: tuple[str, ...] = (), platform: str | None = None,
                **trust: Any) -> BaseLoader:
    from acbuild.build.bases import BaseLoader
    from acbuild.build.registrypull import RegistryBases
    from acbuild.distribution.fetch import resolve_image, verify_local
    from acbuild.image.tarread import Limits
    from acbuild.trust.truststore import TrustStore

    options = fetch_options(**trust)
    del reporter  # each call is given the reporter of its build

    def resolve(name: str, labels: tuple[tuple[str, str], ...], rep: Reporter) -> Path:
        return resolve_image(name, labels, options=options, reporter=rep)

    def verify(path: Path, rep: Reporter) -> None:
        verify_local(path, TrustStore.locate(options.trust_store), rep)

    limits = Limits() if max_image_size is None else Limits(max_total_bytes=max_image_size)
    stop = threading.Event()  # the build's: its stages and its pulls observe one event
    registry = RegistryBases(registry_access(
        insecure_registry=insecure_registry, platform=platform, ca_file=options.ca_file,
        insecure_skip_verify=options.skip_verify, max_image_size=limits.max_total_bytes),
        stop)
    return BaseLoader(resolve_name=resolve, verify_local=verify, limits=limits,
                      registry=registry, stop=stop)
