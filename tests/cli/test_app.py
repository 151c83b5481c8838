"""The click app: --help lists every verb from a table, so that it imports none of them;
the table must say what each verb's own help says."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from acbuild.cli.app import SUMMARIES, cli
from acbuild.cli.commands.common import COMPRESSIONS, parse_size
from acbuild.cli.commands.trustopts import MAX_IMAGE_SIZE, PULL_POLICIES
from acbuild.distribution import fetch
from acbuild.image import compression
from acbuild.image.tarread import Limits


def test_the_help_table_matches_every_verb() -> None:
    ctx = click.Context(cli, info_name="acbuild-py")
    names = cli.list_commands(ctx)
    assert sorted(SUMMARIES) == names
    for name in names:
        verb = cli.get_command(ctx, name)
        assert verb is not None
        for limit in (40, 60, 200):
            table = click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)
            assert table == verb.get_short_help_str(limit), name


def test_constants_written_out_for_speed_equal_their_sources() -> None:
    assert COMPRESSIONS == compression.COMPRESSIONS
    assert parse_size(MAX_IMAGE_SIZE) == Limits().max_total_bytes
    assert PULL_POLICIES == fetch.PULL_POLICIES


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["build", "--help"],
                                  ["login", "--help"], ["logout", "--help"]])
def test_help_and_version_load_no_library(args: list[str]) -> None:
    probe = ("import sys; from acbuild.cli.main import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('jinja2', 'lark', 'gnupg', 'rich', 'zstandard', 'zlib_ng',"
             " 'isal', 'httpx') if m in sys.modules]\nprint('LOADED', heavy)")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "LOADED []"
