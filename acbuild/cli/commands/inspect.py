"""The `inspect` verb: image ID, sizes, a manifest summary and the file tree."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from acbuild.cli.commands.common import global_options
from acbuild.cli.text import human_size
from acbuild.image.inspect import ImageSummary, manifest_facts, summarize
from acbuild.terminal import escape as safe


@click.command("inspect")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--no-files", is_flag=True, help="Leave out the file tree.")
@global_options
def command(image: Path, no_files: bool) -> None:
    """Show what IMAGE is: its ID, sizes, app and files."""
    summary = summarize(image, entries=not no_files)
    console = Console(highlight=False, soft_wrap=True, emoji=False)
    facts = _facts(summary)
    width = max(len(safe(key)) for key, _ in facts) + 2
    for key, value in facts:
        console.print(f"[bold]{escape(safe(key).ljust(width))}[/]{escape(safe(value))}")
    if not no_files:
        console.print(_tree(summary))


def _facts(summary: ImageSummary) -> list[tuple[str, str]]:
    facts = [
        ("name", summary.manifest.name),
        ("image ID", summary.image_id),
        ("size", f"{human_size(summary.compressed_size)} "
                 f"({human_size(summary.uncompressed_size)} uncompressed)"),
        ("files", f"{summary.file_count} regular, {summary.entry_count} entries in all"),
    ]
    return facts + manifest_facts(summary.manifest)


def _tree(summary: ImageSummary) -> Tree:
    root = Tree("[bold]/[/]")
    nodes: dict[str, Tree] = {"": root}
    for entry in summary.entries:
        name = entry.name.removeprefix("rootfs").strip("/")
        if not name:
            continue
        parts = name.split("/")
        parent = nodes.get("/".join(parts[:-1]), root)
        size = "" if entry.kind == "dir" else f" [dim]{human_size(entry.size)}[/]"
        link = f" -> {escape(safe(entry.linkname))}" if entry.linkname else ""
        label = escape(safe(parts[-1])) + ("/" if entry.kind == "dir" else "") + link + size
        nodes["/".join(parts)] = parent.add(label)
    return root
