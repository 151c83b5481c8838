"""The entry point of `acbuild-py`: answers --version at once, hands everything else to the
click app (``acbuild.cli.app``), and exits with its status."""

from __future__ import annotations

import gc
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
        # httpx's package init imports its own command-line client whenever click, rich and
        # pygments are installed, as they are here: rich's console, progress and syntax
        # modules and pygments' lexers, ~35 ms of every registry verb's start, for a client
        # this process never runs. A None entry is Python's way to make that import fail,
        # and httpx expects it to fail (it then defines a stub in its place). Set here, not
        # where httpx is imported: the process is acbuild-py's own, not a library user's.
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # typeshed omits None
        from acbuild.cli.app import run

        code = run(args)
    # The work is over, its outcome decided: a signal now would only kill the interpreter
    # while it shuts down (exit -15 for a build that succeeded).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    # The interpreter's shutdown ends with a garbage collection over every object the imports
    # made (~100,000 for a registry verb): 30-40 ms of a 0.4 s pull, to free memory the exit
    # frees anyway. Frozen objects are left out of it; everything else of the shutdown (atexit
    # handlers, flushing, joining threads) happens as usual.
    gc.freeze()
    sys.exit(code)
