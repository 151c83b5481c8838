"""Benchmark of warm builds and parallel stages, through the real CLI.

Prints medians of --runs runs (wall time of the whole process, start-up included) for:
  - the floors: `python -c pass` and `acbuild-py --version`;
  - a no-op rebuild of examples/Acfiles/hello and of the 20,000-file / 300 MB tree of
    bench/run.py (`BEGIN ./tree` + `COPY small.txt`), answered by the warm record (with
    --baseline, another version's no-op of the tree in the same rounds); and the
    same no-op within 3 s of the image being written (the output is then hashed, not
    trusted by stat);
  - a rebuild after changing small.txt, read only by the last COPY, next to the time of
    that build's final write (the WRITE step, from --progress=json, which includes writing
    the cache's copy of the image) and the rest (the median of each run's wall less its
    final write); with --baseline, the same rebuilds of another version's code (its own
    cache) in the same rounds, alternating which goes first;
  - two independent stages with a 3 s RUN each and a last stage copying from both, with
    the default --jobs and with -j 1.

    python bench/noop_bench.py [--runs 5] [--work DIR] [--skip-tree] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finalize_bench import generate  # the finalizer bench's own generator
from installed import as_installed

REPO = Path(__file__).resolve().parents[1]
SETTLE = 3.2  # the warm record trusts an output's stat once it is this old (seconds)


CPU: dict[str, list[float]] = {}  # job -> CPU seconds (user + system) of each run


def wall(argv: list[str], env: dict[str, str] | None = None,
         name: str | None = None) -> tuple[float, str]:
    """Wall seconds and stderr of one run; its CPU time (wait4) kept under ``name``."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err}")
    if name is not None:
        CPU.setdefault(name, []).append(usage.ru_utime + usage.ru_stime)
    return took, err


def cli(*args: str | Path, source: Path | None = None) -> list[str]:
    """The CLI; ``source``: a directory holding another version's acbuild package."""
    if source is None:
        return [sys.executable, "-m", "acbuild", *map(str, args)]
    run = (f"import sys; sys.path.insert(0, {str(source)!r}); import acbuild; "
           f"assert acbuild.__file__.startswith({str(source)!r}); "
           "from acbuild.cli.main import main; sys.argv[0] = 'acbuild'; sys.exit(main())")
    return [sys.executable, "-c", run, *map(str, args)]


def median_of(runs: int, argv: list[str], name: str) -> float:
    return statistics.median(wall(argv, name=name)[0] for _ in range(runs))


def warm_up(build: list[str], warmups: int = 3) -> None:
    for _ in range(warmups):  # the first build hardlinks files: their ctimes settle later
        wall(build)
        time.sleep(0.2)


def fresh_noop(runs: int, build: list[str], name: str) -> float:
    """Median no-op within 3 s of the image being written (its SHA-256 is checked)."""
    output = Path(build[build.index("-o") + 1])
    times = []
    for _ in range(runs):
        output.unlink()
        wall(build)  # copies the image from the cache: the output is new
        times.append(wall(build, name=name)[0])
    return statistics.median(times)


def paired(runs: int, jobs: dict[str, list[str]]) -> dict[str, float]:
    """Medians of runs taken in rounds, one of each job a round (the machine is shared:
    a busy moment then weighs on every job alike)."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(runs):
        for name, argv in jobs.items():
            times[name].append(wall(argv, name=name)[0])
    return {name: statistics.median(t) for name, t in times.items()}


def hello(work: Path) -> list[str]:
    ctx = work / "hello"
    if not ctx.exists():
        shutil.copytree(REPO / "examples" / "Acfiles" / "hello", ctx)
        subprocess.run(["gcc", "-static", "-O2", "-o", str(ctx / "hello"),
                        str(ctx / "hello.c")], check=True)
    return cli("-q", "build", ctx / "Acfile", "-o", work / "hello.aci",
               "--cache-dir", work / "cache")


def tree(work: Path, source: Path | None = None, who: str = "") -> tuple[Path, list[str]]:
    ctx = work / "ctx"
    if not (ctx / "tree").exists():
        files, size = generate(ctx / "tree")
        print(f"generated {files} files, {size / 1e6:.0f} MB", flush=True)
    (ctx / "small.txt").write_text("small 0\n")
    (ctx / "Acfile").write_text("BEGIN ./tree\nNAME example.com/bench\nLABEL version=1\n"
                                "COPY small.txt /etc/small.txt\n")
    return ctx, cli("-q", "build", ctx / "Acfile", "-o", work / f"tree{who}.aci",
                    "--cache-dir", work / f"cache{who}", source=source)


ONE_CHANGED = "one file changed, 20,000 files"


def one_changed(runs: int, ctx: Path,
                builds: dict[str, list[str]]) -> dict[str, tuple[float, float, float]]:
    """Per build (a prefix for its rows: "" or "baseline: "), the medians of the wall, the
    final write and the rest (each run's wall less its final write) of rebuilds after
    small.txt changed; one of each build a round, the order alternating."""
    walls: dict[str, list[float]] = {who: [] for who in builds}
    writes: dict[str, list[float]] = {who: [] for who in builds}
    for r in range(runs):
        for who in list(builds) if r % 2 == 0 else list(reversed(builds)):
            logged = [a for a in builds[who] if a != "-q"]
            logged[logged.index("build"):logged.index("build")] = ["--progress", "json"]
            # Never seen before, so never in the cache: the last COPY and the write run.
            (ctx / "small.txt").write_text(f"small {time.time_ns()}\n")
            took, log = wall(logged, name=who + ONE_CHANGED)
            events = [json.loads(line) for line in log.splitlines()]
            write_step = next(e["step"] for e in events if e["event"] == "step-started"
                              and e["text"].startswith("WRITE "))
            writes[who].append(next(e["seconds"] for e in events
                                    if e["event"] == "step-finished"
                                    and e["step"] == write_step))
            walls[who].append(took)
    return {who: (statistics.median(walls[who]), statistics.median(writes[who]),
                  statistics.median(w - x for w, x in zip(walls[who], writes[who], strict=True)))
            for who in builds}


def stages(work: Path) -> Path:
    ctx = work / "stages"
    base = ctx / "base" / "bin"
    if not base.exists():
        base.mkdir(parents=True)
        shutil.copy2("/usr/bin/busybox", base / "busybox")
        (base / "sh").symlink_to("busybox")
        (base / "sleep").symlink_to("busybox")
    (ctx / "Acfile").write_text(
        "BEGIN ./base AS a\n"
        'RUN /bin/sh -c "sleep 3; echo a > /a.txt"\n'
        "BEGIN ./base AS b\n"
        'RUN /bin/sh -c "sleep 3; echo b > /b.txt"\n'
        "BEGIN scratch\n"
        "NAME example.com/parallel\n"
        "COPY --from=a /a.txt /a.txt\n"
        "COPY --from=b /b.txt /b.txt\n")
    return ctx / "Acfile"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path, help="work directory to use and keep")
    parser.add_argument("--skip-tree", action="store_true", help="skip the 20,000-file tree")
    parser.add_argument("--baseline", type=Path,
                        help="a directory holding an older acbuild package: its rebuilds "
                             "after one changed file run in the same rounds")
    args = parser.parse_args()
    as_installed(*([args.baseline] if args.baseline else []))
    work = args.work or Path(tempfile.mkdtemp(prefix="acbuild-noop-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = args.runs
    rows: list[tuple[str, float]] = []
    print(f"load average at the start: {load()}; cores: {len(os.sched_getaffinity(0))}")
    try:
        jobs = {"floor: python -c pass": [sys.executable, "-c", "pass"],
                 "floor: acbuild-py --version": cli("--version"), "no-op, hello": hello(work)}
        if not args.skip_tree:
            ctx, build = tree(work)
            jobs["no-op, 20,000 files"] = build
            if args.baseline is not None:  # its no-op in the same rounds too
                jobs["baseline: no-op, 20,000 files"] = tree(work, args.baseline,
                                                             "-baseline")[1]
        # Twice: one version's first build hardlinks the tree's files (their ctimes move),
        # which the other's warm record then sees as changed.
        for _ in range(2):
            for argv in list(jobs.values())[2:]:
                warm_up(argv)
        time.sleep(SETTLE)
        rows += list(paired(runs, jobs).items())
        name = "no-op, hello, output < 3 s old"
        rows.append((name, fresh_noop(runs, hello(work), name)))
        if not args.skip_tree:
            name = "no-op, 20,000 files, output < 3 s old"
            rows.append((name, fresh_noop(runs, build, name)))
            builds = {"": build}
            if args.baseline is not None:
                builds["baseline: "] = jobs["baseline: no-op, 20,000 files"]
            for who, (took, write, rest) in one_changed(runs, ctx, builds).items():
                rows += [(who + ONE_CHANGED, took),
                         (who + "  of which the final write", write),
                         (who + "  the rest (target: <= 0.2 s)", rest)]
        acfile = stages(work)
        name = "two 3 s stages, default --jobs"
        rows.append((name, median_of(runs, cli("-q", "build", acfile, "-o", work / "p.aci",
                                               "--no-cache"), name)))
        name = "two 3 s stages, -j 1"
        rows.append((name, median_of(max(runs // 2, 1), cli(
            "-q", "build", acfile, "-o", work / "p.aci", "--no-cache", "-j", "1"), name)))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    print(f"{'median of ' + str(runs) + ' runs'.ljust(width - 10)}  {'wall s':>7}  {'cpu s':>6}")
    for name, seconds in rows:
        cpu = f"{statistics.median(CPU[name]):6.3f}" if name in CPU else ""
        print(f"{name.ljust(width)}  {seconds:7.3f}  {cpu}")
    print(f"load average at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
