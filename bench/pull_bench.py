"""Benchmark of pulling from a registry: acbuild-py against `skopeo copy docker://… oci:…`.

Starts Debian's docker-registry on 127.0.0.1 (plain HTTP, tests/support/registry.py), pushes
a generated ~100 MB image (four gzip layers of seeded, mostly incompressible data, plus a
little text), then times cold pulls in pairs — each contender into an empty destination,
alternating, so both see the same machine load — and prints the medians side by side:

- ``pull``: acbuild-py's pull alone (manifest, config, layers into an empty blob store, every
  blob digest-checked), started as its own process like the CLI, vs ``skopeo copy``, which
  does the same work into an OCI layout;
- ``fetch``: ``acbuild-py fetch docker://…`` — pull, then convert to an ACI (unpack the layers,
  write and gzip the ACI) and store it — vs the same ``skopeo copy``.

    python bench/pull_bench.py [--runs 5] [--mb 100]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
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


_PULL_CHILD = """
import sys
from pathlib import Path
from acbuild.distribution.registry.blobstore import BlobStore
from acbuild.distribution.registry.platform import Platform
from acbuild.distribution.registry.pull import pull
from acbuild.distribution.registry.reference import parse_reference
from acbuild.distribution.registry.transport import Session, TransportOptions
from acbuild.report import NullReporter
host, name, store = sys.argv[1:4]
ref = parse_reference(f"docker://{host}/{name}")
with Session(ref.registry, TransportOptions(insecure_registries=(host,)), None) as s:
    pull(ref, session=s, store=BlobStore(Path(store)), reporter=NullReporter(),
         platform=Platform(os="linux", architecture="amd64"))
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100, help="uncompressed image size")
    args = parser.parse_args()
    if (reason := registry_missing()) is not None:
        raise SystemExit(reason)
    acbuild = shutil.which("acbuild-py") or str(Path(sys.executable).parent / "acbuild-py")
    with tempfile.TemporaryDirectory(prefix="pull-bench-") as tmp:
        work = Path(tmp)
        size = make_image(work / "image", args.mb)
        with start_registry(work / "registry", "http") as reg:
            reg.push(f"oci:{work / 'image'}:1", NAME)
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            results: dict[str, list[float]] = {"pull": [], "fetch": [], "skopeo": []}
            for run in range(args.runs):
                for what in (("skopeo", "pull", "fetch") if run % 2 else
                             ("pull", "fetch", "skopeo")):
                    dest = work / f"{what}-{run}"
                    if what == "skopeo":
                        argv = ["skopeo", "copy", "-q", "--src-tls-verify=false",
                                f"docker://{reg.host}/{NAME}", f"oci:{dest}:1"]
                    elif what == "pull":
                        argv = [sys.executable, "-c", _PULL_CHILD, reg.host, NAME, str(dest)]
                    else:
                        argv = [acbuild, "-q", "fetch", f"docker://{reg.host}/{NAME}",
                                "--insecure-registry", reg.host, "--insecure-skip-verify",
                                "--store", str(dest)]
                    results[what].append(timed(argv, env))
                    shutil.rmtree(dest, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"image: {LAYERS} gzip layers, {size / 1e6:.1f} MB of blobs; {args.runs} paired runs"
          f"; load average {os.getloadavg()[0]:.2f}")
    print(f"{'contender':<44}{'median wall':>12}{'vs skopeo':>11}")
    rows = (("skopeo copy docker:// oci:", "skopeo"),
            ("acbuild-py pull (blob store, verified)", "pull"),
            ("acbuild-py fetch (pull + convert + store)", "fetch"))
    for label, key in rows:
        print(f"{label:<44}{med[key]:>11.2f}s{med[key] / med['skopeo']:>10.2f}x")
    print("all runs (s): " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v)
                                       for k, v in results.items()))


if __name__ == "__main__":
    main()
