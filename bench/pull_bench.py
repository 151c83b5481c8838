"""Benchmark of pulling from a registry: acbuild-py's user-facing verbs against skopeo and
docker2aci.

Starts Debian's docker-registry on 127.0.0.1 (plain HTTP, tests/support/registry.py), pushes
a generated ~100 MB image (four gzip layers of seeded, mostly incompressible data, plus a
little text), then times cold runs in rounds — each contender into an empty destination, the
order rotated every round, so all see the same machine load — and prints the medians:

- ``acbuild-py pull docker://… --store DEST``: manifest, config and layers into an empty blob
  store, every blob digest-checked as it streams; nothing converted. The same work as
  ``skopeo copy docker://… oci:DEST``, its peer. The whole process is timed, start-up included.
- ``acbuild-py fetch docker://… --store DEST``: pull, then convert to an ACI (unpack the
  layers, write and gzip the ACI) and store it — against ``docker2aci docker://…``
  (/opt/oracles/bin), which does the same conversion (it squashes the layers into one gzip
  ACI), and against skopeo for scale.

Besides the medians of wall time, each contender's median CPU time (user + system, its
children's included) and its paired ratio to skopeo: the median of the per-round ratios,
which a busy moment weighs on less than the ratio of medians, since both runs of a round
see about the same load. ``--only pull`` times skopeo and ``pull`` alone (quicker rounds).

acbuild-py runs as a user has it after the README's ``pip install .``: a regular install of
this checkout into a venv of the bench's own (its dependencies from the same index pip uses),
bytecode compiled, and the children run without PYTHONDONTWRITEBYTECODE. The development
venv's editable install would add its import finder (~8 ms), and a tree without bytecode
~40 ms of compiling on every run; neither is what an installed acbuild-py pays. With
--editable the venv running the bench is used instead (quicker to start, for a smoke run).

    python bench/pull_bench.py [--runs 5] [--mb 100] [--editable] [--only pull]
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import hashlib
import io
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.registry import registry_missing, start_registry  # noqa: E402

LAYERS = 4
NAME = "bench/big:1"


def _layer(rng: random.Random, size: int, n: int) -> bytes:
    """A tar of files: 90 % random bytes (what compressed binaries look like), 10 % text."""
    buf = io.BytesIO()
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(2000)]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        left, i = size, 0
        while left > 0:
            chunk = min(left, rng.randint(256 << 10, 4 << 20))
            if i % 10 == 9:
                data = b" ".join(rng.choices(words, k=chunk // 5))[:chunk]
            else:
                data = rng.randbytes(chunk)
            info = tarfile.TarInfo(f"layer{n}/file{i:04}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
            left -= chunk
            i += 1
    return buf.getvalue()


def make_image(layout: Path, total_mb: int) -> int:
    """An OCI layout holding image ``1``; returns its size in bytes (blobs)."""
    rng = random.Random(20261202)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers, diff_ids = [], []
    for n in range(LAYERS):
        tar = _layer(rng, (total_mb << 20) // LAYERS, n)
        diff_ids.append(f"sha256:{hashlib.sha256(tar).hexdigest()}")
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       **put(gzip.compress(tar, compresslevel=1, mtime=0))})
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())},
                "layers": layers}
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            **put(json.dumps(manifest).encode()),
            "annotations": {"org.opencontainers.image.ref.name": "1"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return sum(p.stat().st_size for p in blobs.iterdir())


DOCKER2ACI = Path("/opt/oracles/bin/docker2aci")


def installed(venv: Path, env: dict[str, str]) -> str:
    """A regular (not editable) install of this checkout in a new venv: its acbuild-py."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(REPO)], check=True, env=env, capture_output=True)
    return str(venv / "bin" / "acbuild-py")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None
          ) -> tuple[float, float]:
    """(wall, CPU) seconds of one run: CPU of the waited-for child and its children."""
    cpu, start = _cpu(), time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=cwd, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.strip()}")
    return elapsed, _cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100, help="uncompressed image size")
    parser.add_argument("--editable", action="store_true",
                        help="run the bench's own venv's acbuild-py, not a regular install")
    parser.add_argument("--only", choices=["pull"], help="time skopeo and pull alone")
    args = parser.parse_args()
    if (reason := registry_missing()) is not None:
        raise SystemExit(reason)
    env = {k: v for k, v in os.environ.items()
           if "proxy" not in k.lower() and k != "PYTHONDONTWRITEBYTECODE"}
    names = ["skopeo", "pull"] if args.only else (
        ["skopeo", "pull", "fetch"] + (["docker2aci"] if DOCKER2ACI.exists() else []))
    results: dict[str, list[float]] = {k: [] for k in names}
    cpus: dict[str, list[float]] = {k: [] for k in names}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="pull-bench-") as tmp:
        work = Path(tmp)
        if args.editable:
            acbuild = str(Path(sys.executable).parent / "acbuild-py")
            compileall.compile_dir(REPO / "acbuild", quiet=1)
        else:
            acbuild = installed(work / "venv", env)
        size = make_image(work / "image", args.mb)
        with start_registry(work / "registry", "http") as reg:
            reg.push(f"oci:{work / 'image'}:1", NAME)
            ref = f"docker://{reg.host}/{NAME}"
            for run in range(args.runs):
                for what in names[run % len(names):] + names[:run % len(names)]:
                    dest = work / f"{what}-{run}"
                    cwd = None
                    if what == "skopeo":
                        argv = ["skopeo", "copy", "-q", "--src-tls-verify=false", ref,
                                f"oci:{dest}:1"]
                    elif what == "pull":
                        argv = [acbuild, "-q", "pull", ref, "--insecure-registry", reg.host,
                                "--store", str(dest)]
                    elif what == "fetch":
                        argv = [acbuild, "-q", "fetch", ref, "--insecure-registry", reg.host,
                                "--insecure-skip-verify", "--store", str(dest)]
                    else:  # docker2aci writes its ACI into the working directory
                        dest.mkdir()
                        argv, cwd = [str(DOCKER2ACI), "-insecure-allow-http", ref], dest
                    wall, cpu = timed(argv, env, cwd)
                    results[what].append(wall)
                    cpus[what].append(cpu)
                    shutil.rmtree(dest, ignore_errors=True)
                load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"image: {LAYERS} gzip layers, {size / 1e6:.1f} MB of blobs; {args.runs} rounds; "
          f"1-min load average {min(load):.2f}-{max(load):.2f} "
          f"(median {statistics.median(load):.2f})")
    print(f"{'contender':<46}{'median wall':>12}{'vs skopeo':>11}{'paired':>8}{'CPU':>8}"
          f"{'vs docker2aci':>15}")
    rows = (("skopeo copy docker:// oci:", "skopeo"),
            ("acbuild-py pull (blob store, verified)", "pull"),
            ("docker2aci docker:// (pull + convert)", "docker2aci"),
            ("acbuild-py fetch (pull + convert + store)", "fetch"))
    for label, key in rows:
        if key not in med:
            continue
        d2a = f"{med[key] / med['docker2aci']:>14.2f}x" if "docker2aci" in med else ""
        paired = statistics.median(t / s for t, s in zip(results[key], results["skopeo"],
                                                         strict=True))
        print(f"{label:<46}{med[key]:>11.2f}s{med[key] / med['skopeo']:>10.2f}x"
              f"{paired:>7.2f}x{statistics.median(cpus[key]):>7.2f}s{d2a}")
    print("all runs (s): " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v)
                                       for k, v in results.items()))


if __name__ == "__main__":
    main()
