"""The `cache` verbs: list the step cache's entries, prune it to a size (LRU)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from acbuild.cache.cache import CacheStore
from acbuild.cache.warm import default_cache_dir
from acbuild.cli.commands.common import Size, global_options
from acbuild.cli.console import say
from acbuild.cli.text import human_size
from acbuild.errors import AcbuildError
from acbuild.terminal import escape


def _store(cache_dir: Path | None) -> CacheStore:
    return CacheStore(cache_dir or default_cache_dir(os.environ))


_cache_dir = click.option(
    "--cache-dir", type=click.Path(path_type=Path, file_okay=False),
    help="Step cache directory (default: $XDG_CACHE_HOME/acbuild-py/build-cache).")


@click.group("cache")
@global_options
def command() -> None:
    """Inspect and prune the build step cache."""


@command.command("list")
@_cache_dir
@global_options
def list_entries(cache_dir: Path | None) -> None:
    """Entries, most recently used first: kind, key, size, last use.

    A step imported from a --cache-from registry is followed by where it came from, and
    an entry a build stored after it used such a step by the registry of that import."""
    entries = _store(cache_dir).entries()
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.last_used))
        origin = f"  imported from {escape(e.imported_from)}" if e.imported_from else \
            f"  built on an import from {escape(e.built_on)}" if e.built_on else ""
        say(f"{e.kind:<5} {e.key}  {human_size(e.size):>10}  {used}{origin}")
    total = sum(e.size for e in entries)
    say(f"{len(entries)} entries, {human_size(total)}")


@command.command("prune")
@click.option("--max-size", type=Size(), metavar="SIZE",
              help="Keep the most recently used entries that fit in SIZE (e.g. 10G).")
@click.option("--all", "everything", is_flag=True, help="Remove every entry, without asking.")
@click.option("--imported", is_flag=True,
              help="Remove what --cache-from registries gave (and entries built on it) alone.")
@_cache_dir
@global_options
def prune(max_size: int | None, everything: bool, imported: bool,
          cache_dir: Path | None) -> None:
    """Remove the least recently used entries until the cache fits in --max-size; with
    neither --max-size nor --all, ask before removing everything. --imported removes
    what --cache-from registries gave instead (a cache no longer trusted)."""
    if imported and (max_size is not None or everything):
        raise click.UsageError("--imported is not combined with --max-size or --all")
    if imported:
        max_size = 0
    elif max_size is None:
        if not everything:
            if not sys.stdin.isatty():
                raise click.UsageError("this would remove the whole cache: pass --all to do "
                                       "that, or --max-size SIZE to keep the newest entries")
            if not click.confirm("Remove every entry of the step cache?", err=True):
                raise AcbuildError("nothing removed: the user declined")
        max_size = 0
    removed = _store(cache_dir).prune(max_size, imported=imported)
    say(f"removed {len(removed)} entries, {human_size(sum(e.size for e in removed))}")
