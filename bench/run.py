"""Benchmark of whole builds: acbuild-py's CLI side by side with tar|gzip -6, tar|pigz -6,
actool build and buildah bud (vfs), cold and no-op, on three generated trees.

Trees (seeded, the same bytes every run): "mixed", the finalizer bench's ~300 MB tree of
20,004 files (20,000 text files of 1-8 KB and four 50 MB files); "small20k" and
"small100k", 20,000 and 100,000 text files of 1 KB in directories of 100. For each tree the
contenders run in *paired rounds*: every round runs each contender once, in an order
rotated from round to round, so a load change on the shared machine hits all of them; the
table gives medians and, for the ratios, the median of the per-round ratios. Wall and CPU
time and peak RSS come from wait4 on the child (the whole process, start-up included).

    python bench/run.py [--runs 5] [--quick] [--trees mixed,small20k,small100k]
                        [--buildah-runs 2] [--work DIR] [--json FILE] [--baseline DIR]

--quick: 3 rounds, the mixed and small20k trees, one buildah run (a smoke run, not for the
performance note). buildah is slow (a vfs copy of every layer), so it runs --buildah-runs
rounds (the first ones); its rows say how many.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finalize_bench import _corpus, generate  # the finalizer bench's own generator
from installed import as_installed

MANIFEST = ('{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/bench",'
            '"labels":[{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}]}')
PER_DIR = 100


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float
    cpu: float
    rss_mb: float
    size: int


@dataclass(slots=True)
class Row:
    name: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)

    @property
    def rss_mb(self) -> float:
        return max(s.rss_mb for s in self.samples)

    @property
    def size(self) -> int:
        return self.samples[-1].size


def measure(argv: list[str], output: Path | None, cwd: Path | None = None) -> Sample:
    """Run once; the child's own rusage (it and what it waited for) through wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err.decode(errors='replace')}")
    size = output.stat().st_size if output is not None and output.exists() else 0
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, size)


def generate_small(root: Path, files: int) -> tuple[int, int]:
    """``files`` text files of exactly 1 KB, PER_DIR to a directory (like node_modules)."""
    rng = random.Random(files)
    corpus = _corpus(rng)
    for d in range((files + PER_DIR - 1) // PER_DIR):
        (root / f"d{d:04}").mkdir(parents=True)
    for i in range(files):
        start = rng.randrange(len(corpus) - 1024)
        (root / f"d{i // PER_DIR:04}" / f"f{i:06}.txt").write_bytes(corpus[start : start + 1024])
    return files, files * 1024


def acbuild(*args: str | Path, source: Path | None = None) -> list[str]:
    """The CLI's build; ``source``: a directory holding another version's acbuild package."""
    if source is None:
        return [sys.executable, "-m", "acbuild", "-q", "build", *map(str, args)]
    run = (f"import sys; sys.path.insert(0, {str(source)!r}); import acbuild; "
           f"assert acbuild.__file__.startswith({str(source)!r}); "
           "from acbuild.cli.main import main; sys.argv[0] = 'acbuild'; sys.exit(main())")
    return [sys.executable, "-c", run, "-q", "build", *map(str, args)]


def buildah(store: Path, *args: str) -> list[str]:
    return ["buildah", "--storage-driver", "vfs", "--root", str(store / "root"),
            "--runroot", str(store / "run"), *args]


def prepare(work: Path, tree_name: str) -> Path:
    """work/<tree>/ctx: the tree, small.txt, the Acfiles and Containerfiles."""
    ctx = work / tree_name / "ctx"
    if not (ctx / "tree").exists():
        if tree_name == "mixed":
            files, size = generate(ctx / "tree")
        else:
            files, size = generate_small(ctx / "tree", int(tree_name.removeprefix("small")
                                                           .replace("k", "000")))
        print(f"[{tree_name}] generated {files} files, {size / 1e6:.0f} MB", flush=True)
    (ctx / "small.txt").write_text("small 0\n")
    tail = "LABEL version=1\nCOPY small.txt /etc/small.txt\n"
    (ctx / "Acfile.begin").write_text("BEGIN ./tree\nNAME example.com/bench\n" + tail)
    (ctx / "Acfile.copy").write_text("BEGIN scratch\nNAME example.com/bench\n"
                                     "COPY tree/ /srv/\n" + tail)
    # --mode gives the files a mode they do not have; with no RUN after it, they stay
    # references like the plain COPY's (the entry carries the mode), none is copied.
    (ctx / "Acfile.copymode").write_text("BEGIN scratch\nNAME example.com/bench\n"
                                         "COPY --mode=0600 tree/ /srv/\n" + tail)
    # The Containerfile doing what Acfile.begin does (a rootfs from the tree, one file more).
    (ctx / "Containerfile").write_text("FROM scratch\nCOPY tree/ /\nLABEL version=1\n"
                                       "COPY small.txt /etc/small.txt\n")
    return ctx


def actool_layout(ctx: Path) -> Path:
    layout = ctx.parent / "layout"
    if not layout.exists():
        layout.mkdir()
        (layout / "manifest").write_text(MANIFEST)
        # A copy, not hardlinks: the tree's files keep one link each, as in a checkout.
        subprocess.run(["cp", "-a", str(ctx / "tree"), str(layout / "rootfs")], check=True)
    return layout


Job = tuple[list[str], Path | None, Callable[[], None] | None]  # argv, output, untimed reset


def paired(rows: dict[str, Row], jobs: dict[str, Job], runs: int,
           limited: dict[str, int]) -> None:
    """``runs`` rounds of every job, the order rotated each round."""
    names = list(jobs)
    for r in range(runs):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if r >= limited.get(name, runs):
                continue
            argv, output, reset = jobs[name]
            if reset is not None:
                reset()
            rows.setdefault(name, Row(name)).samples.append(measure(argv, output))
        print(f"  round {r + 1}/{runs} done, load {os.getloadavg()[0]:.2f}", flush=True)


def bench_tree(work: Path, tree_name: str, runs: int, buildah_runs: int,
               baseline: Path | None) -> dict[str, Row]:
    ctx = prepare(work, tree_name)
    out = work / tree_name / "out"
    out.mkdir(exist_ok=True)
    layout = actool_layout(ctx)
    store = work / tree_name / "buildah"

    def buildah_clean() -> None:
        shutil.rmtree(store, ignore_errors=True)  # cold: nothing stored, no layer cache

    sh = ["sh", "-c"]
    tree = ctx / "tree"
    cold: dict[str, Job] = {
        "acbuild BEGIN dir": (acbuild(ctx / "Acfile.begin", "-o", out / "b.aci", "--no-cache"),
                              out / "b.aci", None),
        "acbuild COPY": (acbuild(ctx / "Acfile.copy", "-o", out / "c.aci", "--no-cache"),
                         out / "c.aci", None),
    }
    if tree_name == "mixed":
        cold["acbuild COPY --mode"] = (
            acbuild(ctx / "Acfile.copymode", "-o", out / "m.aci", "--no-cache"), out / "m.aci",
            None)
    if baseline is not None:
        cold["baseline BEGIN dir"] = (acbuild(ctx / "Acfile.begin", "-o", out / "x.aci",
                                              "--no-cache", source=baseline),
                                      out / "x.aci", None)
        cold["baseline COPY"] = (acbuild(ctx / "Acfile.copy", "-o", out / "y.aci",
                                         "--no-cache", source=baseline), out / "y.aci", None)
        if tree_name == "mixed":
            cold["baseline COPY --mode"] = (
                acbuild(ctx / "Acfile.copymode", "-o", out / "z.aci", "--no-cache",
                        source=baseline), out / "z.aci", None)
        # Cold with a cache (an empty one each round): keys, snapshots, the image stored.
        for who, source in (("acbuild", None), ("baseline", baseline)):
            fresh = work / tree_name / f"cold-cache-{who}"

            def empty(fresh: Path = fresh) -> None:
                shutil.rmtree(fresh, ignore_errors=True)

            cold[f"{who} BEGIN, cache"] = (
                acbuild(ctx / "Acfile.begin", "-o", out / f"k-{who}.aci", "--cache-dir", fresh,
                        source=source), out / f"k-{who}.aci", empty)
    cold.update({
        "tar | gzip -6": ([*sh, f"tar -C {tree} -cf - . | gzip -6 > {out}/g.tgz"],
                          out / "g.tgz", None),
        "tar | pigz -6": ([*sh, f"tar -C {tree} -cf - . | pigz -6 > {out}/p.tgz"],
                          out / "p.tgz", None),
        "actool build": (["actool", "build", "--overwrite", str(layout), str(out / "a.aci")],
                         out / "a.aci", None),
        "buildah bud (vfs)": (buildah(store, "bud", "--no-cache", "-q", "-f",
                                      str(ctx / "Containerfile"), "-t", "bench", str(ctx)),
                              None, buildah_clean),
    })
    rows: dict[str, Row] = {}
    subprocess.run(["sync"], check=True)
    print(f"[{tree_name}] cold builds, {runs} paired rounds", flush=True)
    paired(rows, cold, runs, {"buildah bud (vfs)": buildah_runs})
    buildah_clean()
    # No-op: a warm cache (acbuild's step cache; buildah's layer cache), nothing changed.
    cache = work / tree_name / "cache"
    warm = acbuild(ctx / "Acfile.begin", "-o", out / "w.aci", "--cache-dir", cache)
    warm_buildah = buildah(store, "bud", "--layers", "-q", "-f", str(ctx / "Containerfile"),
                           "-t", "bench", str(ctx))
    measure(warm, out / "w.aci")
    measure(warm_buildah, None)
    print(f"[{tree_name}] no-op builds", flush=True)
    paired(rows, {"acbuild no-op": (warm, out / "w.aci", None),
                  "buildah bud no-op": (warm_buildah, None, None)}, runs,
           {"buildah bud no-op": buildah_runs})
    buildah_clean()
    shutil.rmtree(cache, ignore_errors=True)
    return rows


def ratio(rows: dict[str, Row], name: str, peer: str) -> float:
    """Median of the per-round wall-time ratios (the rounds both ran)."""
    pairs = list(zip(rows[name].samples, rows[peer].samples, strict=False))
    return statistics.median(a.wall / b.wall for a, b in pairs)


def table(tree_name: str, rows: dict[str, Row]) -> str:
    gzip_size = rows["tar | gzip -6"].size
    lines = [f"tree {tree_name}",
             f"{'contender':<22} {'n':>2} {'wall s':>7} {'cpu s':>7} {'RSS MB':>7} "
             f"{'MB out':>7} {'/pigz':>6} {'/actool':>7} {'size/gzip':>9}"]
    for name, row in rows.items():
        size = f"{row.size / 1e6:7.1f}" if row.size else f"{'':7}"
        vs_size = f"{row.size / gzip_size:9.3f}" if row.size and "no-op" not in name else ""
        vs = ("", "")
        if "no-op" not in name:
            vs = (f"{ratio(rows, name, 'tar | pigz -6'):6.2f}",
                  f"{ratio(rows, name, 'actool build'):7.2f}")
        lines.append(f"{name:<22} {len(row.samples):>2} {row.wall:7.2f} {row.cpu:7.2f} "
                     f"{row.rss_mb:7.0f} {size} {vs[0]:>6} {vs[1]:>7} {vs_size:>9}")
    return "\n".join(lines)


TARGETS = [
    # (tree, contender, peer, limit, what)
    ("mixed", "acbuild BEGIN dir", "tar | pigz -6", 0.85, "cold BEGIN dir <= 0.85x pigz"),
    ("mixed", "acbuild COPY", "tar | pigz -6", 0.85, "cold COPY <= 0.85x pigz"),
    ("mixed", "acbuild COPY --mode", "tar | pigz -6", 1.0, "cold COPY --mode <= 1.0x pigz"),
    ("mixed", "acbuild BEGIN dir", "actool build", 0.5, "cold BEGIN dir <= 0.5x actool"),
    ("mixed", "acbuild COPY", "actool build", 0.5, "cold COPY <= 0.5x actool"),
    ("small20k", "acbuild BEGIN dir", "tar | pigz -6", 1.5, "20k x 1 KB <= 1.5x pigz"),
    ("small20k", "acbuild BEGIN dir", "actool build", 0.7, "20k x 1 KB <= 0.7x actool"),
    ("small100k", "acbuild BEGIN dir", "tar | pigz -6", 1.5, "100k x 1 KB <= 1.5x pigz"),
    ("small100k", "acbuild BEGIN dir", "actool build", 0.7, "100k x 1 KB <= 0.7x actool"),
]


def targets(results: dict[str, dict[str, Row]]) -> str:
    lines = ["targets"]
    for tree_name, name, peer, limit, what in TARGETS:
        if tree_name not in results:
            continue
        got = ratio(results[tree_name], name, peer)
        lines.append(f"  {what:<32} {got:5.2f}  {'met' if got <= limit else 'NOT met'}")
    for tree_name, rows in results.items():
        for name in ("BEGIN dir", "COPY", "COPY --mode", "BEGIN, cache"):
            if f"baseline {name}" in rows:
                got = ratio(rows, f"acbuild {name}", f"baseline {name}")
                cpu = statistics.median(
                    a.cpu / b.cpu for a, b in zip(rows[f"acbuild {name}"].samples,
                                                  rows[f"baseline {name}"].samples,
                                                  strict=False))
                lines.append(f"  {f'{name} / baseline ({tree_name})':<32} {got:5.3f}  "
                             f"(CPU {cpu:5.3f})")
    for tree_name, rows in results.items():
        got = rows["acbuild BEGIN dir"].size / rows["tar | gzip -6"].size
        lines.append(f"  {f'output <= 1.05x gzip -6 ({tree_name})':<32} {got:5.3f}  "
                     f"{'met' if got <= 1.05 else 'NOT met'}")
    return "\n".join(lines)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    return f"cores: {len(os.sched_getaffinity(0))} (nproc), CPU: {model}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--buildah-runs", type=int, default=2)
    parser.add_argument("--trees", default="mixed,small20k,small100k")
    parser.add_argument("--quick", action="store_true", help="3 rounds, two trees")
    parser.add_argument("--work", type=Path, help="work directory to use and keep")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    parser.add_argument("--baseline", type=Path,
                        help="a directory holding an older acbuild package: its cold "
                             "BEGIN dir build runs in the same rounds")
    args = parser.parse_args()
    as_installed(*([args.baseline] if args.baseline else []))
    runs, buildah_runs, trees = args.runs, args.buildah_runs, args.trees.split(",")
    if args.quick:
        runs, buildah_runs, trees = 3, 1, ["mixed", "small20k"]
    work = args.work or Path(tempfile.mkdtemp(prefix="acbuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        results = {t: bench_tree(work, t, runs, buildah_runs, args.baseline) for t in trees}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()
    print(f"\n{machine()}; started {started}; load average (1, 5, 15 min) "
          f"{' '.join(f'{x:.2f}' for x in load_start)} at the start, "
          f"{' '.join(f'{x:.2f}' for x in load_end)} at the end; {runs} paired rounds")
    for tree_name, rows in results.items():
        print()
        print(table(tree_name, rows))
    print()
    print(targets(results))
    if args.json is not None:
        args.json.write_text(json.dumps(
            {"machine": machine(), "started": started, "load": [load_start, load_end],
             "results": {t: {n: [asdict(s) for s in r.samples] for n, r in rows.items()}
                         for t, rows in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
