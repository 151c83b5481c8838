"""Benchmark of pushing: acbuild-py's push of an OCI layout against `skopeo copy oci:… docker://…`.

Starts the real distribution registry (Debian's docker-registry) on 127.0.0.1, then alternates
the two contenders (paired runs), each run pushing an OCI layout of its own with one ~100 MB
incompressible layer (new bytes every time: skopeo remembers where it has seen a blob and
mounts it instead of uploading), and prints medians and the ratio; then the re-push of an
unchanged image (HEAD checks only) by each. Run from the top of a clone:

    python bench/push_bench.py [--runs 5] [--size-mb 100] [--chunk-mb 32]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from acbuild.distribution.registry.push import push_layout
from acbuild.distribution.registry.reference import parse_reference
from acbuild.distribution.registry.transport import TransportOptions
from acbuild.distribution.registry.upload import PushSession, Repository
from tests.support.registry import start_registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def make_layout(root: Path, size: int, seed: int) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             **put(random.Random(seed).randbytes(size))}
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode())}
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": config, "layers": [layer]}).encode())
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, **manifest,
         "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return root


def ours(host: str, layout: Path, repo: str, chunk: int) -> float:
    started = time.perf_counter()
    with PushSession(host, TransportOptions(insecure_registries=(host,)), None) as session:
        push_layout(Repository(session, repo, chunk_size=chunk),
                    parse_reference(f"docker://{host}/{repo}:bench"), layout)
    return time.perf_counter() - started


def skopeo(host: str, layout: Path, repo: str) -> float:
    started = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                    f"oci:{layout}:bench", f"docker://{host}/{repo}:bench"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--chunk-mb", type=int, default=32)
    args = parser.parse_args()
    size, chunk = args.size_mb << 20, args.chunk_mb << 20
    with tempfile.TemporaryDirectory(prefix="push-bench-") as tmp, \
            start_registry(Path(tmp) / "reg", "http") as reg:
        times: dict[str, list[float]] = {"acbuild-py": [], "skopeo": []}
        for run in range(args.runs):
            mine = make_layout(Path(tmp) / f"ours-{run}", size, 2 * run)
            times["acbuild-py"].append(ours(reg.host, mine, f"ours/r{run}", chunk))
            theirs = make_layout(Path(tmp) / f"skopeo-{run}", size, 2 * run + 1)
            times["skopeo"].append(skopeo(reg.host, theirs, f"skopeo/r{run}"))
        again = {"acbuild-py": ours(reg.host, Path(tmp) / "ours-0", "ours/r0", chunk),
                 "skopeo": skopeo(reg.host, Path(tmp) / "skopeo-0", "skopeo/r0")}
    load = os.getloadavg()
    print(f"layer {args.size_mb} MiB, chunks of {args.chunk_mb} MiB above that, "
          f"{args.runs} paired runs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for name, values in times.items():
        print(f"{name:11} median {statistics.median(values):6.3f}s  "
              f"runs {' '.join(f'{v:.3f}' for v in values)}  unchanged re-push "
              f"{again[name]:.3f}s")
    ratio = statistics.median(times["acbuild-py"]) / statistics.median(times["skopeo"])
    print(f"ratio acbuild-py / skopeo: {ratio:.2f}")


if __name__ == "__main__":
    main()
