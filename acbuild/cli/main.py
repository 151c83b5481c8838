"""The entry point of `acbuild-py`: answers --version at once, hands everything else to the
click app (``acbuild.cli.app``), and exits with its status."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from acbuild import __version__


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        # As click's version option says it, without importing click and the verbs.
        print(f"acbuild-py, version {__version__}")
        code = 0
    else:
        from acbuild.cli.app import run

        code = run(args)
    # The work is over, its outcome decided: a signal now would only kill the interpreter
    # while it shuts down (exit -15 for a build that succeeded).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)
