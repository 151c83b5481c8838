"""Benchmark of the finalizer: write_aci against `tar | gzip -6` and `tar | pigz -6`.

Generates a deterministic ~300 MB / ~20,000-file tree in a temporary directory (mostly
1-8 KB text files in ~100 directories, plus four 50 MB compressible files), then prints the
median of three runs of each contender: wall time, CPU time, output size and ratios.

    python bench/finalize_bench.py [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from acbuild.fs.staging import StagedRootfs
from acbuild.image.finalize import write_aci

SMALL_FILES = 20_000
DIRS = 100
BIG_FILES = 4
BIG_SIZE = 50 << 20
MANIFEST = json.dumps(
    {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": "example.com/bench",
        "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
    }
).encode()


def _corpus(rng: random.Random) -> bytes:
    """About 4 MB of word salad: compresses like source text (~3x), never repeats nearby."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(8000)]
    lines = []
    for _ in range(80_000):
        lines.append(" ".join(rng.choices(vocab, k=rng.randint(3, 12))))
    return "\n".join(lines).encode()


def generate(root: Path) -> tuple[int, int]:
    """Fill ``root``; returns (files, bytes). Same bytes on every run (seeded)."""
    rng = random.Random(20240601)
    corpus = _corpus(rng)
    total = 0
    for d in range(DIRS):
        (root / f"d{d:03}").mkdir(parents=True)
    for i in range(SMALL_FILES):
        size = rng.randint(1024, 8192)
        start = rng.randrange(len(corpus) - size)
        (root / f"d{i % DIRS:03}" / f"f{i:05}.txt").write_bytes(corpus[start : start + size])
        total += size
    for b in range(BIG_FILES):
        with open(root / f"big{b}.dat", "wb") as f:
            written = 0
            while written < BIG_SIZE:
                size = min(rng.randint(4096, 65536), BIG_SIZE - written)
                start = rng.randrange(len(corpus) - size)
                f.write(corpus[start : start + size])
                written += size
        total += BIG_SIZE
    return SMALL_FILES + BIG_FILES, total


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    cpu, wall = _cpu(), time.perf_counter()
    run()
    return time.perf_counter() - wall, _cpu() - cpu


def _pipeline(src: Path, out: Path, compressor: str) -> Callable[[], None]:
    def run() -> None:
        cmd = f"tar -C {src} -cf - . | {compressor} -6 > {out}"
        subprocess.run(["sh", "-c", cmd], check=True)

    return run


def _acbuild(src: Path, out: Path) -> Callable[[], None]:
    def run() -> None:
        write_aci(StagedRootfs(root=src), MANIFEST, out, epoch=315532800)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="reuse/keep the generated tree here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="finalize-bench-"))
    tree = args.keep or work / "tree"
    try:
        if not tree.exists():
            files, size = generate(tree)
            print(f"generated {files} files, {size / 1e6:.0f} MB in {tree}")
        contenders = {
            "acbuild write_aci": _acbuild(tree, work / "a.aci"),
            "tar | gzip -6": _pipeline(tree, work / "g.tgz", "gzip"),
            "tar | pigz -6": _pipeline(tree, work / "p.tgz", "pigz"),
        }
        outputs = {"acbuild write_aci": "a.aci", "tar | gzip -6": "g.tgz", "tar | pigz -6": "p.tgz"}
        results: dict[str, tuple[float, float, int]] = {}
        for name, run in contenders.items():
            subprocess.run(["sync"], check=True)
            times = [_timed(run) for _ in range(args.runs)]
            wall = statistics.median(t[0] for t in times)
            cpu = statistics.median(t[1] for t in times)
            results[name] = (wall, cpu, (work / outputs[name]).stat().st_size)
        _table(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _table(results: dict[str, tuple[float, float, int]]) -> None:
    pigz_wall = results["tar | pigz -6"][0]
    gzip_size = results["tar | gzip -6"][2]
    print(f"cores: {len(os.sched_getaffinity(0))}")
    header = ("contender", "wall s", "cpu s", "MB out", "wall/pigz", "size/gzip")
    print(f"{header[0]:<20} {header[1]:>7} {header[2]:>7} {header[3]:>8} "
          f"{header[4]:>10} {header[5]:>10}")
    for name, (wall, cpu, size) in results.items():
        print(
            f"{name:<20} {wall:7.2f} {cpu:7.2f} {size / 1e6:8.1f} "
            f"{wall / pigz_wall:10.2f} {size / gzip_size:10.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
