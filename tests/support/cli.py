"""Running the real CLI in a subprocess, as a user or CI would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def acbuild(*args: str | Path, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 300) -> Result:
    full_env = {**os.environ, "CI": "true", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "acbuild", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def actool_validate(path: Path) -> None:
    proc = subprocess.run(["actool", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"actool rejected {path}: {proc.stdout}{proc.stderr}"
