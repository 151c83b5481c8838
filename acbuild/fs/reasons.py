"""Why a path could not be used, in words that point at the fix: the regular file a path
runs through is named, not just "Not a directory"."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def not_a_directory(path: str | Path) -> str | None:
    """The deepest existing component of ``path`` when it is something other than a
    directory (the regular file a path runs through), else None."""
    for candidate in (Path(path), *Path(path).parents):
        try:
            mode = os.stat(candidate).st_mode
        except OSError:
            continue
        return None if stat.S_ISDIR(mode) else str(candidate)
    return None


def reason(error: OSError, path: str | Path) -> str:
    """``error.strerror``, or for ENOTDIR which component of ``path`` is in the way."""
    if error.errno == errno.ENOTDIR and (blocker := not_a_directory(Path(path).parent)):
        return f"{blocker!r} is not a directory"
    text = error.strerror or os.strerror(error.errno or 0)
    return text
