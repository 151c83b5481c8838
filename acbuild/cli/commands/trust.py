"""The `trust` verb: add, list and remove keys in the trust store (rkt's layout).

Keys are shown (fingerprint and user id) and confirmed before they are trusted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.console import json_event, say
from acbuild.distribution.discovery import parse_ref
from acbuild.distribution.fetch import FetchOptions, fetch_keys
from acbuild.errors import TrustError
from acbuild.fs.regular import read_regular
from acbuild.trust.gpg import scan_keys
from acbuild.trust.rktkeys import rkt_problems
from acbuild.trust.truststore import TrustStore, check_prefix


@click.command("trust")
@click.argument("keyfiles", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--prefix", help="Trust the keys for images named PREFIX or PREFIX/….")
@click.option("--root", is_flag=True, help="Trust the keys for every image.")
@click.option("--list", "list_", is_flag=True, help="List trusted keys.")
@click.option("--remove", metavar="FINGERPRINT", help="Remove a key from every scope.")
@click.option("--yes", is_flag=True, help="Trust without asking.")
@click.option("--trust-store", type=click.Path(path_type=Path, file_okay=False),
              help="Trusted keys directory (default: $ACBUILD_TRUST_STORE or "
                   "~/.config/acbuild-py/trustedkeys).")
@click.option("--insecure", is_flag=True, help="Discover keys over plain HTTP.")
@click.option("--port", type=click.IntRange(1, 65535), help="Discovery port of the name's host.")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False))
@global_options
def command(keyfiles: tuple[Path, ...], prefix: str | None, root: bool, list_: bool,
            remove: str | None, yes: bool, trust_store: Path | None, insecure: bool,
            port: int | None, ca_file: Path | None) -> None:
    """Trust KEYFILEs for --prefix NAME or as --root keys; --prefix without KEYFILE fetches
    the keys NAME's discovery page offers (trust on first use, confirmed)."""
    store = TrustStore.locate(trust_store)
    if list_:
        for key in store.all_keys():
            say(f"{key.fingerprint}  {key.scope}")
        return
    if remove:
        for key in store.remove(remove):
            say(f"removed {key.fingerprint} ({key.scope})")
        return
    if root == (prefix is not None):
        raise click.UsageError("give exactly one of --prefix NAME and --root")
    if prefix is not None:
        prefix = check_prefix(prefix)
    blobs = _key_data(keyfiles, prefix, FetchOptions(insecure=insecure, port=port,
                                                     ca_file=ca_file))
    scope = "every image (root)" if root else f"images under {prefix}"
    for data in blobs:
        for info in scan_keys(data):
            # What the question is about, so shown even with -q (an event in JSON logs).
            shown = f"key {info.fingerprint}  {info.uid}"
            if state().resolved_progress() == "json":
                click.echo(json_event("info", message=shown), err=True)
            else:
                say(shown, err=True)
        for fingerprint, problem in rkt_problems(data):
            # acbuild-py verifies with gpg and accepts it; images signed with it fail in rkt.
            state().reporter().warning(f"rkt cannot use key {fingerprint}: {problem}")
        if not _confirm(f"Trust these keys for {scope}?", yes):
            raise TrustError("not trusted: the user declined")
        for key in store.add(data, prefix=prefix):
            say(f"trusted {key.fingerprint} for {key.scope}: {key.path}")


def _key_data(keyfiles: tuple[Path, ...], prefix: str | None,
              options: FetchOptions) -> tuple[bytes, ...]:
    if keyfiles:
        try:
            return tuple(read_regular(p) for p in keyfiles)
        except OSError as e:
            raise TrustError(f"cannot read key file {e.filename}: {e.strerror}") from None
    if prefix is None:
        raise click.UsageError("--root needs KEYFILEs")
    return fetch_keys(parse_ref(prefix), options, state().reporter())


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise TrustError("refusing to trust keys without confirmation: stdin is not a terminal",
                         hint="review the fingerprints above and pass --yes")
    return click.confirm(question, default=False, err=True)
