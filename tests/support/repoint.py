"""The real CLI with a race won at the exact instant: the step cache's path is re-pointed
just after the cache was opened, checked and claimed by descriptor (in ``open_claimed_dir``),
as a racing ``ln -sfn`` would, so what the command then does by path, not through that
descriptor, happens in the other directory. As the red team's repoint_after_open.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.cli import Result


def acbuild_repointed(link: Path, target: Path, *args: str | Path,
                      env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    """``acbuild-py ARGS`` with the symlink ``link`` re-pointed to ``target`` the moment
    after the step cache was opened."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.repoint", str(link), str(target),
         *map(str, args)],
        cwd=Path(__file__).parents[2], env={**os.environ, "CI": "true", **(env or {})},
        capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _main() -> int:  # pragma: no cover - runs in the subprocess
    link, target, *args = sys.argv[1:]
    import acbuild.cache.cache as cache
    from acbuild.cli.main import main

    real = cache.open_claimed_dir  # type: ignore[attr-defined]

    def opened(*a: Any, then: Callable[[int], Any], **kw: Any) -> Any:
        def repointed(fd: int) -> Any:  # opened and claimed: the race is won here
            os.symlink(target, link + ".new")
            os.replace(link + ".new", link)
            return then(fd)

        return real(*a, then=repointed, **kw)

    cache.open_claimed_dir = opened  # type: ignore[attr-defined]
    main(args)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
