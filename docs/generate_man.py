"""Regenerate the man pages in man/ from the CLI's own help: python docs/generate_man.py

They are installed with the package (share/man/man1, so `man acbuild-py-build` works in an
activated venv); tests/test_packaging.py checks they match the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click_man.core import write_man_pages

from acbuild import __version__
from acbuild.cli.app import cli

OUT = Path(__file__).resolve().parent.parent / "man"
# A fixed date: the pages must not change with the day they are generated on.
DATE = "2026-12-01"


def write(target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.1"):
        old.unlink()
    # The verbs are imported lazily, so the group's own command table is empty; click-man
    # walks that table. Hand it a group with every verb loaded.
    root = click.Context(cli, info_name="acbuild-py")
    verbs = {name: cli.get_command(root, name) for name in cli.list_commands(root)}
    loaded = click.Group("acbuild-py", commands={k: v for k, v in verbs.items() if v},
                         params=cli.params, help=cli.help)
    write_man_pages("acbuild-py", loaded, version=__version__, target_dir=str(target),
                    date=DATE)
    return sorted(target.glob("*.1"))


if __name__ == "__main__":
    for page in write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(page)
