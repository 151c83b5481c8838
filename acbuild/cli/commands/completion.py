"""The `completion` verb: print click's shell completion script for bash, zsh or fish."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from acbuild.cli.commands.common import global_options

PROG = "acbuild-py"
COMPLETE_VAR = "_ACBUILD_PY_COMPLETE"  # what click's main() looks for, from the prog name


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@global_options
def command(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash:  eval "$(acbuild-py completion bash)"   (e.g. in ~/.bashrc)
    zsh:   eval "$(acbuild-py completion zsh)"    (e.g. in ~/.zshrc)
    fish:  acbuild-py completion fish > ~/.config/fish/completions/acbuild-py.fish
    """
    root = click.get_current_context().find_root().command
    cls = get_completion_class(shell)
    assert cls is not None  # click.Choice allows only shells click supports
    click.echo(cls(root, {}, PROG, COMPLETE_VAR).source())
