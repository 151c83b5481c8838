"""Peak RSS of builds *with* a step cache, on the 100,000-file tree of bench/run.py (1 KB
text files, 100 to a directory), this checkout against another version (--baseline) in
paired rounds, the order alternating from round to round:

  - `BEGIN ./tree` into an empty cache (cold);
  - a rebuild of it after small.txt (read only by the last COPY) changed: the base's step
    is cached, its key is taken again (the stat cache, or the base memo), the last COPY
    and the final write run;
  - `COPY tree/ /srv/` into an empty cache.

Each version has its own copy of the tree and its own cache: a cold build of one must not
change the ctimes the other's stat cache and memos were taken over. Wall, CPU (user +
system) and peak RSS come from wait4 on the child (the whole process, start-up included);
the table gives the medians of wall and CPU and the maximum RSS over the rounds.

    python bench/cache_rss_bench.py [--runs 2] [--files 100000] [--work DIR] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from installed import as_installed
from run import Sample, acbuild, generate_small, machine, measure

JOBS = ("BEGIN ./tree, empty cache", "rebuild after small.txt changed",
        "COPY tree/ /srv/, empty cache")


def prepare(where: Path, files: int) -> Path:
    ctx = where / "ctx"
    if not (ctx / "tree").exists():
        generate_small(ctx / "tree", files)
    (ctx / "small.txt").write_text("small 0\n")
    tail = "LABEL version=1\nCOPY small.txt /etc/small.txt\n"
    (ctx / "Acfile.begin").write_text("BEGIN ./tree\nNAME example.com/bench\n" + tail)
    (ctx / "Acfile.copy").write_text("BEGIN scratch\nNAME example.com/bench\n"
                                     "COPY tree/ /srv/\n" + tail)
    old = time.time() - 60  # settled: what the stat cache and the memo keep
    for path in [ctx, *ctx.rglob("*")]:
        os.utime(path, (old, old), follow_symlinks=False)
    return ctx


def one_round(ctx: Path, source: Path | None) -> list[Sample]:
    cache, out = ctx.parent / "cache", ctx.parent / "out.aci"
    samples = []
    shutil.rmtree(cache, ignore_errors=True)
    build = acbuild(ctx / "Acfile.begin", "-o", out, "--cache-dir", cache, source=source)
    samples.append(measure(build, out))
    time.sleep(0.3)  # the hardlinked files' ctimes settle
    measure(build, out)  # keeps the stat cache (and memo) of the settled tree
    (ctx / "small.txt").write_text(f"small {time.time_ns()}\n")
    samples.append(measure(build, out))
    shutil.rmtree(cache, ignore_errors=True)
    samples.append(measure(acbuild(ctx / "Acfile.copy", "-o", out, "--cache-dir", cache,
                                   source=source), out))
    shutil.rmtree(cache, ignore_errors=True)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--work", type=Path, help="work directory to use and keep")
    parser.add_argument("--baseline", type=Path,
                        help="a directory holding another version's acbuild package")
    args = parser.parse_args()
    as_installed(*([args.baseline] if args.baseline else []))
    work = args.work or Path(tempfile.mkdtemp(prefix="acbuild-cache-rss-bench-"))
    versions: dict[str, Path | None] = {"after": None}
    if args.baseline is not None:
        versions = {"before": args.baseline, **versions}
    print(machine(), flush=True)
    try:
        contexts = {who: prepare(work / who, args.files) for who in versions}
        time.sleep(0.3)
        samples: dict[tuple[str, str], list[Sample]] = {}
        for r in range(args.runs):
            order = list(versions) if r % 2 == 0 else list(reversed(versions))
            for who in order:
                for job, sample in zip(JOBS, one_round(contexts[who], versions[who]),
                                       strict=True):
                    samples.setdefault((job, who), []).append(sample)
            print(f"  round {r + 1}/{args.runs} done at {time.strftime('%H:%M:%S')} UTC, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'job':<36} {'version':<7} {'RSS MB (each)':>22} {'wall s':>7} {'cpu s':>7}")
    for job in JOBS:
        for who in versions:
            got = samples[job, who]
            rss = ", ".join(f"{s.rss_mb:.1f}" for s in got)
            print(f"{job:<36} {who:<7} {rss:>22} "
                  f"{statistics.median(s.wall for s in got):7.2f} "
                  f"{statistics.median(s.cpu for s in got):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
