"""The `login` verb: check a registry accepts USER's password, then keep it for pulls."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from acbuild.cli.commands.common import global_options, state
from acbuild.cli.commands.trustopts import insecure_registry_option

_PASSWORD_LIMIT = 64 << 10


@click.command("login")
@click.argument("registry", metavar="REGISTRY")
@click.option("-u", "--username", help="The user to log in as (asked for when not given).")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from stdin (its first line), not from the terminal.")
@insecure_registry_option
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Extra CA certificate for the registry's HTTPS.")
@global_options
def command(registry: str, username: str | None, password_stdin: bool,
            insecure_registry: tuple[str, ...], ca_file: Path | None) -> None:
    """Log in to REGISTRY (HOST[:PORT]): check the credentials with it, then save them for
    pulls in ~/.docker/config.json (mode 0600), or through the credential helper it names."""
    from acbuild.distribution.registry import credentials
    from acbuild.distribution.registry.credentials import Credential
    from acbuild.distribution.registry.reference import DOCKER_HUB, DOCKER_HUB_API, check_host
    from acbuild.distribution.registry.transport import Session, TransportOptions

    host = check_host(registry)
    if password_stdin:
        if not username:
            raise click.UsageError("--password-stdin needs --username")
        password = sys.stdin.read(_PASSWORD_LIMIT + 1)
        if len(password) > _PASSWORD_LIMIT:
            raise click.UsageError("the password on stdin is longer than 64 KiB")
        password = password.split("\n", 1)[0].removesuffix("\r")
    else:
        if not sys.stdin.isatty():
            raise click.UsageError("stdin is not a terminal to ask for the password: "
                                   "use --password-stdin")
        username = username or click.prompt("Username")
        password = click.prompt("Password", hide_input=True)
    if not username or not password:
        raise click.UsageError("the username and the password may not be empty")
    credential = Credential(username=username, password=password)
    options = TransportOptions(insecure_registries=insecure_registry, ca_file=ca_file)
    api = DOCKER_HUB_API if host == DOCKER_HUB else host
    with Session(host, options, credential, api_host=api) as session:
        session.ping()
    where = credentials.store(host, credential)
    state().reporter().info(f"logged in to {host} as {username}; credentials saved in {where}")
