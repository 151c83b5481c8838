"""Running the real CLI in a subprocess, as a user or CI would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
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


def interrupted(proc: subprocess.Popen[str], sig: int, started: Callable[[], bool], *,
                settle: float = 0.3, within: float = 1.5) -> str:
    """Send ``sig`` ``settle`` seconds after ``started()`` (into the blocked operation); the
    process must end within ``within`` seconds, as interrupted (130) or terminated (143),
    with no traceback. Its stderr."""
    deadline = time.monotonic() + 30
    while not started() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle)
    proc.send_signal(sig)
    sent = time.monotonic()
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    assert took < within, (took, err)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert err.rstrip().endswith("interrupted" if sig == signal.SIGINT else "terminated"), err
    assert "Traceback" not in err
    return err


def no_partial_blobs() -> None:
    """The image store (under this test's XDG_CACHE_HOME) holds no partial blob."""
    blobs = Path(os.environ["XDG_CACHE_HOME"]) / "acbuild-py" / "images" / "blobs" / "sha256"
    if blobs.exists():
        assert [p.name for p in blobs.iterdir() if p.name.startswith(".")] == []
