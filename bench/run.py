"""Benchmark of whole builds: acbuild-py's CLI against tar|gzip, tar|pigz and actool build.

Generates the finalizer bench's deterministic ~300 MB / ~20,000-file tree, then measures (the
median of --runs runs each): cold builds (--no-cache) of a `BEGIN <dir>` and a `COPY` Acfile,
`tar | gzip -6`, `tar | pigz -6`, `actool build`, a no-op rebuild with a warm cache, a
rebuild after changing one small file only the last COPY reads, and the peak memory of a
build holding one 2 GB file. Wall and CPU time, peak RSS (wait4) and output size.

    python bench/run.py [--runs 3] [--work DIR] [--skip-big]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finalize_bench import _corpus, generate  # the finalizer bench's own generator

MANIFEST = ('{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/bench",'
            '"labels":[{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}]}')
BIG_FILE = 2 << 30


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float
    cpu: float
    rss_mb: float
    size: int


def measure(argv: list[str], output: Path | None, env: dict[str, str] | None = None) -> Sample:
    """Run once; the child's own rusage (it and what it waited for) through wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err.decode(errors='replace')}")
    size = output.stat().st_size if output is not None and output.exists() else 0
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, size)


def median(samples: list[Sample]) -> Sample:
    return Sample(statistics.median(s.wall for s in samples),
                  statistics.median(s.cpu for s in samples),
                  max(s.rss_mb for s in samples), samples[-1].size)


def acbuild(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "acbuild", "-q", "build", *map(str, args)]


def prepare(work: Path) -> Path:
    """ctx/tree (the generated tree), ctx/small.txt and the two Acfiles."""
    ctx = work / "ctx"
    if not (ctx / "tree").exists():
        files, size = generate(ctx / "tree")
        print(f"generated {files} files, {size / 1e6:.0f} MB", flush=True)
    (ctx / "small.txt").write_text("small 0\n")
    (ctx / "Acfile.begin").write_text("BEGIN ./tree\nNAME example.com/bench\n"
                                      "LABEL version=1\nCOPY small.txt /etc/small.txt\n")
    (ctx / "Acfile.copy").write_text("BEGIN scratch\nNAME example.com/bench\n"
                                     "COPY tree/ /srv/\nLABEL version=1\n"
                                     "COPY small.txt /etc/small.txt\n")
    # --mode gives the files a mode they do not have: every one is copied, none hardlinked.
    (ctx / "Acfile.copymode").write_text("BEGIN scratch\nNAME example.com/bench\n"
                                         "COPY --mode=0600 tree/ /srv/\nLABEL version=1\n"
                                         "COPY small.txt /etc/small.txt\n")
    return ctx


def actool_layout(work: Path, tree: Path) -> Path:
    layout = work / "layout"
    if not layout.exists():
        layout.mkdir()
        (layout / "manifest").write_text(MANIFEST)
        # A copy, not hardlinks: the tree's files keep one link each, as in a checkout.
        subprocess.run(["cp", "-a", str(tree), str(layout / "rootfs")], check=True)
    return layout


def run_all(work: Path, runs: int, skip_big: bool) -> dict[str, Sample]:
    ctx = prepare(work)
    out = work / "out"
    out.mkdir(exist_ok=True)
    cache = work / "cache"
    layout = actool_layout(work, ctx / "tree")
    sh = ["sh", "-c"]
    jobs: dict[str, tuple[list[str], Path]] = {
        "acbuild cold BEGIN dir": (acbuild(ctx / "Acfile.begin", "-o", out / "b.aci",
                                           "--no-cache"), out / "b.aci"),
        "acbuild cold COPY": (acbuild(ctx / "Acfile.copy", "-o", out / "c.aci", "--no-cache"),
                              out / "c.aci"),
        "acbuild cold COPY --mode (copied)": (
            acbuild(ctx / "Acfile.copymode", "-o", out / "m.aci", "--no-cache"), out / "m.aci"),
        "tar | gzip -6": ([*sh, f"tar -C {ctx}/tree -cf - . | gzip -6 > {out}/g.tgz"],
                          out / "g.tgz"),
        "tar | pigz -6": ([*sh, f"tar -C {ctx}/tree -cf - . | pigz -6 > {out}/p.tgz"],
                          out / "p.tgz"),
        "actool build": (["actool", "build", "--overwrite", str(layout), str(out / "a.aci")],
                         out / "a.aci"),
    }
    results: dict[str, Sample] = {}
    for name, (argv, output) in jobs.items():
        subprocess.run(["sync"], check=True)
        results[name] = median([measure(argv, output) for _ in range(runs)])
        print(f"  {name}: {results[name].wall:.2f}s", flush=True)
    warm = acbuild(ctx / "Acfile.begin", "-o", out / "w.aci", "--cache-dir", cache)
    results["acbuild first build, cache on"] = measure(warm, out / "w.aci")
    results["acbuild no-op rebuild"] = median([measure(warm, out / "w.aci")
                                               for _ in range(runs)])
    changed = []
    for i in range(runs):
        (ctx / "small.txt").write_text(f"small {i + 1}\n")
        changed.append(measure(warm, out / "w.aci"))
    results["acbuild one file changed"] = median(changed)
    copy_warm = acbuild(ctx / "Acfile.copy", "-o", out / "cw.aci", "--cache-dir", cache)
    measure(copy_warm, out / "cw.aci")
    changed = []
    for i in range(runs):
        (ctx / "small.txt").write_text(f"small copy {i + 1}\n")
        changed.append(measure(copy_warm, out / "cw.aci"))
    results["acbuild one file changed (COPY)"] = median(changed)
    shutil.rmtree(cache)
    if not skip_big:
        results["acbuild cold, one 2 GB file"] = big_file_build(work)
    return results


def big_file_build(work: Path) -> Sample:
    ctx = work / "big"
    ctx.mkdir(exist_ok=True)
    corpus = _corpus(random.Random(7))
    with open(ctx / "big.dat", "wb") as f:
        written = 0
        while written < BIG_FILE:
            chunk = corpus[: min(len(corpus), BIG_FILE - written)]
            f.write(chunk)
            written += len(chunk)
    (ctx / "Acfile").write_text("BEGIN scratch\nNAME example.com/big\nCOPY big.dat /big.dat\n")
    try:
        return measure(acbuild(ctx / "Acfile", "-o", work / "big.aci", "--no-cache"),
                       work / "big.aci")
    finally:
        shutil.rmtree(ctx)
        (work / "big.aci").unlink(missing_ok=True)


def table(results: dict[str, Sample]) -> str:
    pigz = results["tar | pigz -6"].wall
    actool = results["actool build"].wall
    gzip_size = results["tar | gzip -6"].size
    lines = [f"{'contender':<34} {'wall s':>7} {'cpu s':>7} {'RSS MB':>7} {'MB out':>7} "
             f"{'/pigz':>6} {'/actool':>7} {'size/gzip':>9}"]
    for name, s in results.items():
        ratio = f"{s.size / gzip_size:9.3f}" if s.size and "2 GB" not in name else f"{'':9}"
        lines.append(f"{name:<34} {s.wall:7.2f} {s.cpu:7.2f} {s.rss_mb:7.0f} "
                     f"{s.size / 1e6:7.1f} {s.wall / pigz:6.2f} {s.wall / actool:7.2f} {ratio}")
    return "\n".join(lines)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    return f"cores: {len(os.sched_getaffinity(0))} (nproc), CPU: {model}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, help="work directory to use and keep")
    parser.add_argument("--skip-big", action="store_true", help="skip the 2 GB file build")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="acbuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = run_all(work, args.runs, args.skip_big)
        print(machine())
        print(table(results))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
