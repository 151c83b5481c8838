"""The cost curve of a cold `BEGIN <dir>` build: wall time and peak RSS against tree size.

Trees are generated on the fly in a temporary directory and removed afterwards: 2,000,
20,000 and 200,000 text files of 1 KB (100 to a directory), and trees of 1 GB and 10 GB
(ten files each; each MiB of a file holds 64 KiB of text and a hole, so the 10 GB tree takes
~0.7 GB of disk). An empty tree gives the fixed cost (start-up, the manifest, the output),
which is subtracted: linear growth means the same cost per file (per GB) at every size.

    python bench/curve.py [--runs 3] [--big-runs 1] [--skip-10g] [--work DIR]

Each size is built --runs times (the 1 GB tree --big-runs, the 10 GB tree once) and the
median taken; RSS is the maximum over the runs, from wait4 (the whole process).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finalize_bench import _corpus
from installed import as_installed
from run import Sample, acbuild, generate_small, machine, measure

MIB = 1 << 20
TEXT_PER_MIB = 64 << 10


def generate_big(root: Path, total: int, files: int = 10) -> None:
    """``files`` files making ``total`` bytes: per MiB, 64 KiB of text, the rest a hole."""
    corpus = _corpus(random.Random(total))
    root.mkdir(parents=True)
    per_file = total // files
    for i in range(files):
        fd = os.open(root / f"big{i}.dat", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for offset in range(0, per_file, MIB):
                start = (offset // MIB * 7919) % (len(corpus) - TEXT_PER_MIB)
                os.pwrite(fd, corpus[start : start + TEXT_PER_MIB], offset)
            os.ftruncate(fd, per_file)
        finally:
            os.close(fd)


def build(ctx: Path, runs: int) -> Sample:
    out = ctx / "out.aci"
    samples = [measure(acbuild(ctx / "Acfile", "-o", out, "--no-cache"), out)
               for _ in range(runs)]
    out.unlink()
    return Sample(statistics.median(s.wall for s in samples),
                  statistics.median(s.cpu for s in samples),
                  max(s.rss_mb for s in samples), samples[-1].size)


def point(work: Path, name: str, make: object, runs: int) -> Sample:
    ctx = work / name
    ctx.mkdir()
    (ctx / "Acfile").write_text("BEGIN ./tree\nNAME example.com/curve\nLABEL version=1\n")
    started = time.perf_counter()
    make(ctx / "tree")  # type: ignore[operator]
    print(f"  {name}: generated in {time.perf_counter() - started:.0f} s, building "
          f"(load {os.getloadavg()[0]:.2f})", flush=True)
    try:
        return build(ctx, runs)
    finally:
        shutil.rmtree(ctx)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big-runs", type=int, default=1)
    parser.add_argument("--skip-10g", action="store_true")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    as_installed()
    work = Path(tempfile.mkdtemp(prefix="acbuild-curve-", dir=args.work))
    load_start = os.getloadavg()
    results: list[tuple[str, str, int, Sample]] = []  # (name, unit, amount, sample)
    try:
        empty = point(work, "empty", lambda p: p.mkdir(), args.runs)
        for files in (2_000, 20_000, 200_000):
            results.append((f"{files:,} files of 1 KB", "file", files, point(
                work, f"files{files}", lambda p, n=files: generate_small(p, n), args.runs)))
        sizes = [(1, args.big_runs)] + ([] if args.skip_10g else [(10, 1)])
        for gb, runs in sizes:
            results.append((f"{gb} GB in 10 files", "GB", gb, point(
                work, f"gb{gb}", lambda p, g=gb: generate_big(p, g << 30), runs)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()
    print(f"\n{machine()}; load average {load_start[0]:.2f} at the start, "
          f"{load_end[0]:.2f} at the end")
    print(f"{'tree':<24} {'wall s':>7} {'cpu s':>7} {'RSS MB':>7} {'MB out':>7} "
          f"{'cost per unit (wall - empty)':>30}")
    print(f"{'empty':<24} {empty.wall:7.2f} {empty.cpu:7.2f} {empty.rss_mb:7.0f} "
          f"{empty.size / 1e6:7.2f}")
    per_unit: dict[str, list[float]] = {}
    for name, unit, amount, s in results:
        cost = (s.wall - empty.wall) / amount
        per_unit.setdefault(unit, []).append(cost)
        shown = f"{cost * 1e6:.1f} us/file" if unit == "file" else f"{cost:.2f} s/GB"
        print(f"{name:<24} {s.wall:7.2f} {s.cpu:7.2f} {s.rss_mb:7.0f} {s.size / 1e6:7.1f} "
              f"{shown:>30}")
    for unit, costs in per_unit.items():
        spread = max(costs) / min(costs) - 1
        print(f"per-{unit} cost varies by {spread * 100:.0f} % across sizes "
              f"({'linear within 15 %' if spread <= 0.15 else 'NOT linear within 15 %'})")
    worst = max(s.rss_mb for *_, s in results)
    print(f"peak RSS at most {worst:.0f} MB ({'<= 100 MB' if worst <= 100 else 'OVER 100 MB'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
