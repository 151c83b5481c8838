"""Long-running apps for tests: start an image's HTTP service under `acbuild-py run` or under
rkt (stage1-fly, throwaway state), ask it over 127.0.0.1, stop it and clean up."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

ORACLES = Path("/opt/oracles")
RKT = ORACLES / "bin" / "rkt"
STAGE1_FLY = ORACLES / "lib" / "rkt" / "stage1-images" / "stage1-fly.aci"


def rkt_missing() -> str | None:
    """Why rkt tests cannot run here, or None."""
    if not RKT.is_file() or not STAGE1_FLY.is_file():
        return f"rkt with stage1-fly is not installed under {ORACLES}"
    if os.geteuid() != 0:
        return "rkt run needs root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


@contextmanager
def serving(argv: Sequence[str], port: int, *, log: Path, startup: float = 120.0,
            env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run argv until the service answers on 127.0.0.1:port; yields its base URL."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{argv[0]} exited with {proc.returncode}:\n"
                                     + log.read_text(errors="replace"))
            try:
                get(url + "/healthz", timeout=2)
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"nothing answered on {url} within {startup:g}s:\n"
                                         + log.read_text(errors="replace")) from None
                time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def acbuild_run_argv(image: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "acbuild", "run", "--no-stdin", "--network=host",
            f"--set-env=PORT={port}", str(image)]


@contextmanager
def rkt_state() -> Iterator[list[str]]:
    """rkt's argv prefix with every directory in a throwaway place; gc'd and removed after."""
    top = Path(tempfile.mkdtemp(prefix="rkt-test."))
    base = [str(RKT), f"--dir={top / 'data'}", f"--local-config={top / 'local'}",
            f"--system-config={top / 'system'}", f"--user-config={top / 'user'}"]
    try:
        yield base
    finally:
        subprocess.run([*base, "gc", "--grace-period=0s"], capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)


def rkt_run_argv(base: list[str], image: Path, port: int) -> list[str]:
    # fly bind-mounts the host's /dev, /proc and /sys into the pod until gc: keep those
    # mounts in a private mount namespace.
    return ["unshare", "--mount", "--propagation", "private", *base,
            "--insecure-options=image", "run", f"--set-env=PORT={port}", str(image)]
