"""Benchmark of what a person waits for that is not the build: drawing the live log, and
starting the program.

1. Drawing cost: a RUN printing 50,000 short lines, built with --no-cache in each log style,
   stderr on a real pseudo-terminal (drained as fast as a terminal would) for `tty` and on a
   pipe for `plain` and `json`. CPU time (user + system) of the whole process tree, from
   wait4; the figure that matters is tty's CPU over plain's (target: at most 1.5x).
2. Start-up: CPU time of `acbuild-py --version`, `--help` and `build --help` (targets: 50 ms,
   120 ms and 120 ms).

    python bench/ui_bench.py [--runs 5] [--lines 50000]

Needs Debian's busybox-static (/bin/busybox). Medians of --runs runs, printed as a table.
"""

from __future__ import annotations

import argparse
import os
import pty
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from installed import as_installed

ACBUILD = [sys.executable, "-m", "acbuild"]


def _cpu_of(argv: list[str], *, env: dict[str, str], tty: bool, cwd: Path | None = None) -> float:
    """User + system CPU seconds of ``argv`` and everything it started."""
    if tty:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)

        def drain() -> None:
            while True:
                try:
                    if not os.read(leader, 1 << 16):
                        break
                except OSError:
                    break

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
    else:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        reader = threading.Thread(target=proc.stderr.read, daemon=True)
        reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=10)
    if tty:
        os.close(leader)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed with {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def drawing(runs: int, lines: int, work: Path) -> dict[str, float]:
    ctx = work / "ctx"
    ctx.mkdir()
    shutil.copy2("/bin/busybox", ctx / "busybox")
    (ctx / "Acfile").write_text(
        "BEGIN scratch\nNAME example.com/noisy\nCOPY --mode=0755 busybox /bin/busybox\n"
        f'RUN ["/bin/busybox", "seq", "1", "{lines}"]\n')
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(TERM="xterm-256color", COLUMNS="100", XDG_CACHE_HOME=str(work / "cache"),
               XDG_STATE_HOME=str(work / "state"))
    cpu: dict[str, list[float]] = {"plain": [], "tty": [], "json": []}
    for _ in range(runs):
        for mode in cpu:  # interleaved, so load changes hit every style alike
            argv = [*ACBUILD, "build", "--no-cache", f"--progress={mode}", str(ctx / "Acfile"),
                    "-o", str(work / "out.aci")]
            cpu[mode].append(_cpu_of(argv, env=env, tty=mode == "tty"))
    return {mode: statistics.median(values) for mode, values in cpu.items()}


def startup(runs: int) -> dict[str, float]:
    env = {**os.environ, "CI": "true"}
    found: dict[str, list[float]] = {"--version": [], "--help": [], "build --help": []}
    for _ in range(runs):
        for args in found:
            found[args].append(_cpu_of([*ACBUILD, *args.split()], env=env, tty=False))
    return {args: statistics.median(values) for args, values in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lines", type=int, default=50_000)
    args = parser.parse_args()
    as_installed()
    with tempfile.TemporaryDirectory(prefix="acbuild-ui-bench-") as tmp:
        draw = drawing(args.runs, args.lines, Path(tmp))
    print(f"drawing: a RUN printing {args.lines} lines, CPU seconds (median of {args.runs})")
    for mode, seconds in draw.items():
        print(f"  {mode:<6} {seconds:7.2f} s  {seconds / draw['plain']:5.2f}x plain")
    print(f"start-up: CPU milliseconds (median of {args.runs})")
    for what, seconds in startup(args.runs).items():
        print(f"  acbuild-py {what:<13} {seconds * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
