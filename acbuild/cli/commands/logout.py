"""The `logout` verb: forget the credentials kept for a registry."""

from __future__ import annotations

import click

from acbuild.cli.commands.common import global_options, state


@click.command("logout")
@click.argument("registry", metavar="REGISTRY")
@global_options
def command(registry: str) -> None:
    """Forget the credentials saved for REGISTRY (HOST[:PORT]) in ~/.docker/config.json,
    $XDG_RUNTIME_DIR/containers/auth.json and the credential helpers they name."""
    from acbuild.distribution.registry import credentials
    from acbuild.distribution.registry.reference import check_host

    host = check_host(registry)
    changed = credentials.remove(host)
    reporter = state().reporter()
    if changed:
        reporter.info(f"logged out of {host}: removed from {', '.join(changed)}")
    else:
        reporter.info(f"not logged in to {host}")
