"""Regenerate docs/commands.md from the CLI's own help: python docs/generate_commands.py

tests/test_docs.py checks the file matches, so the reference cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
INTRO = """\
# Command reference

Generated from the CLI's own help by `python docs/generate_commands.py` (`acbuild-py VERB
--help` says the same); a test fails when it is out of date. Global options (`--debug`,
`-q/--quiet`, `-v/--verbose`, `--progress auto|tty|plain|json`) are accepted before and
after every verb; see [logs](logs.md). Exit status: 0 success, 1 failure (for `diff`,
`lint`, `fmt --check`, `verify`, `validate`: 1 means "found something"), 2 usage error,
70 internal error, 130 interrupted, 143 terminated. The same text is installed as man pages
(`man acbuild-py-build`, in a shell where the venv's `bin` is on PATH).
"""


def _help(command: click.Command, name: str,
          parent: click.Context | None) -> tuple[str, click.Context]:
    ctx = click.Context(command, info_name=name, parent=parent, terminal_width=80,
                        max_content_width=80)
    return command.get_help(ctx), ctx


def generate() -> str:
    from acbuild.cli.app import cli

    text, root = _help(cli, "acbuild-py", None)
    parts = [INTRO, f"```text\n{text}\n```\n"]
    for verb in cli.list_commands(root):
        command = cli.get_command(root, verb)
        assert command is not None
        help_text, _ = _help(command, verb, root)
        parts.append(f"## {verb}\n\n```text\n{help_text}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    (HERE / "commands.md").write_text(generate())
