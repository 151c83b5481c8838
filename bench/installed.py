"""The benches' acbuild-py children run as an installed copy would: with bytecode.

An installed package has its modules compiled (pip does it); a source tree run with
PYTHONDONTWRITEBYTECODE set (as many development and CI shells have it) compiles every
module it imports, every run: 0.3-0.5 s of a build's start that no user pays. So each bench
compiles the trees it runs and drops that variable from the environment its children get.
"""

from __future__ import annotations

import compileall
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def as_installed(*sources: Path) -> None:
    """Compile acbuild's modules in this checkout and in ``sources`` (other versions' trees
    holding an ``acbuild`` package), and let children write and use bytecode."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for top in (REPO, *sources):
        compileall.compile_dir(top / "acbuild", quiet=1)
