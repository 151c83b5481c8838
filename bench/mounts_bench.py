"""Benchmark of RUN --mount=type=cache: a package manager's download cache.

A RUN "installs" 2,000 packages: for each one missing from the cache-mounted directory it
downloads it (busybox wget over --network=host from an HTTP server this script runs on
127.0.0.1, serving 2,000 files of 4 KiB, each answered after --latency ms: a near mirror;
0 makes the download a loopback copy) and verifies it (sha256sum), then copies them all
into the rootfs.
The build runs twice, the second time with an earlier step changed (an ENV), so the RUN
runs again, now with the cache full: it only copies. Each pair uses a fresh cache
directory; the medians of the pairs are printed, with the machine's load average.

    python bench/mounts_bench.py [--pairs 3] [--packages 2000] [--latency 5]

With --context-files N it measures RUN --mount=type=bind of the whole build context
instead: a context of N files (100 B to 8 KiB, 100 a directory), a build with a step
cache whose RUN lists the bind (`find /ctx -type f | wc -l`) and then a plain RUN
(`true`), the sandbox's own cost; an earlier ENV changes every build, so both run each
time. It prints the two steps' times as the build reports them, their difference (what
the bind costs a RUN) and the whole build, medians of --pairs builds:

    python bench/mounts_bench.py --context-files 20000 [--pairs 5] [--no-cache]

Needs /usr/bin/busybox (Debian busybox-static) and a sandbox (user namespaces).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from installed import as_installed

BUSYBOX = Path("/usr/bin/busybox")
INSTALL = (
    "/bin/sh -c 'mkdir -p /opt/pkgs; i=0; while [ $i -lt {n} ]; do "
    "p=/var/cache/pkgs/pkg-$i; if [ ! -f $p ]; then "
    "wget -q -O $p.part http://127.0.0.1:{port}/pkg-$i && "
    "sha256sum $p.part > /dev/null && mv $p.part $p; fi; i=$((i+1)); done; "
    "cp -a /var/cache/pkgs/. /opt/pkgs/; ls /opt/pkgs | wc -l'"
)


def rootfs(path: Path) -> None:
    (path / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, path / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    for rel in applets:
        link = path / rel
        if link.name != "busybox" and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")


def acfile(ctx: Path, version: int, packages: int, port: int) -> Path:
    (ctx / "Acfile").write_text(
        f"BEGIN ../rootfs\nNAME example.com/bench-mounts\nENV APP_VERSION={version}\n"
        f"RUN --network=host --mount=type=cache,target=/var/cache/pkgs,sharing=locked "
        f"{INSTALL.format(n=packages, port=port)}\nEXEC /bin/sh\n")
    return ctx / "Acfile"


def serve(directory: Path, packages: int, latency: float) -> ThreadingHTTPServer:
    """The package mirror: ``packages`` files of 4 KiB of random bytes, on 127.0.0.1."""
    directory.mkdir()
    for i in range(packages):
        (directory / f"pkg-{i}").write_bytes(os.urandom(4096))

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, directory=str(directory), **kw)

        def do_GET(self) -> None:
            time.sleep(latency)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def build(top: Path, acfile_path: Path, cache: Path) -> float:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "XDG_STATE_HOME": str(top / "state"),
           "CI": "true"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "acbuild", "-q", "build", "--allow-path",
                           str(top), str(acfile_path), "-o", str(top / "out.aci")],
                          env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"build failed:\n{proc.stderr}")
    return seconds


def context(ctx: Path, files: int) -> None:
    rnd = random.Random(1)
    for i in range(files):
        d = ctx / f"d{i // 100}"
        if i % 100 == 0:
            d.mkdir()
        (d / f"f{i % 100}").write_bytes(rnd.randbytes(rnd.randint(100, 8000)))


BIND_ACFILE = ("BEGIN ../rootfs\nNAME example.com/bench-bind\nENV V={version}\n"
               "RUN --mount=type=bind,target=/ctx /bin/sh -c 'find /ctx -type f | wc -l'\n"
               "RUN /bin/sh -c true\nEXEC /bin/sh\n")
_DONE = re.compile(r"^\[(\d+)/\d+\] DONE ([\d.]+)s$", re.M)


def bind_build(top: Path, ctx: Path, version: int,
               extra: tuple[str, ...] = ()) -> tuple[float, float, float]:
    """(bind RUN step, plain RUN step, whole build) in seconds."""
    (ctx / "Acfile").write_text(BIND_ACFILE.format(version=version))
    env = {**os.environ, "XDG_CACHE_HOME": str(top / "cache"),
           "XDG_STATE_HOME": str(top / "state"), "CI": "true"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "acbuild", "build", "--progress", "plain",
                           "--allow-path", str(top), str(ctx / "Acfile"), "-o",
                           str(top / "out.aci"), *extra], env=env, capture_output=True,
                          text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"build failed:\n{proc.stderr}")
    steps = {int(n): float(t) for n, t in _DONE.findall(proc.stderr)}
    return steps[4], steps[5], seconds


def bind_main(files: int, pairs: int, extra: tuple[str, ...]) -> None:
    binds, plains, totals = [], [], []
    with tempfile.TemporaryDirectory(prefix="acbuild-bind-bench-") as tmp:
        top = Path(tmp)
        rootfs(top / "rootfs")
        ctx = top / "ctx"
        ctx.mkdir()
        context(ctx, files)
        bind_build(top, ctx, 0, extra)  # warms the stat cache and the page cache
        for run in range(pairs):
            bind, plain, total = bind_build(top, ctx, run + 1, extra)
            binds.append(bind)
            plains.append(plain)
            totals.append(total)
            print(f"build {run + 1}: bind RUN {bind:.2f} s, plain RUN {plain:.2f} s, "
                  f"build {total:.2f} s", flush=True)
    bind, plain = statistics.median(binds), statistics.median(plains)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n{files} context files, median of {pairs} builds (load average {load}):")
    print(f"  RUN with the context bound: {bind:6.2f} s")
    print(f"  plain RUN:                  {plain:6.2f} s")
    print(f"  the bind's cost:            {bind - plain:6.2f} s")
    print(f"  whole build:                {statistics.median(totals):6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=5.0, help="ms per download")
    parser.add_argument("--context-files", type=int, default=0,
                        help="measure a bind of a context of this many files instead")
    parser.add_argument("--no-cache", action="store_true",
                        help="with --context-files: build without the step cache")
    args = parser.parse_args()
    as_installed()
    if args.context_files:
        bind_main(args.context_files, args.pairs, ("--no-cache",) if args.no_cache else ())
        return
    firsts, seconds = [], []
    with tempfile.TemporaryDirectory(prefix="acbuild-mounts-bench-") as tmp:
        top = Path(tmp)
        rootfs(top / "rootfs")
        ctx = top / "ctx"
        ctx.mkdir()
        server = serve(top / "mirror", args.packages, args.latency / 1000)
        port = server.server_address[1]
        for pair in range(args.pairs):
            cache = top / f"cache-{pair}"
            first = build(top, acfile(ctx, 2 * pair, args.packages, port), cache)
            second = build(top, acfile(ctx, 2 * pair + 1, args.packages, port), cache)
            firsts.append(first)
            seconds.append(second)
            print(f"pair {pair + 1}: empty cache {first:.2f} s, full cache {second:.2f} s, "
                  f"{first / second:.1f}x", flush=True)
        server.shutdown()
    first, second = statistics.median(firsts), statistics.median(seconds)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n{args.packages} packages, {args.latency:g} ms a download, median of "
          f"{args.pairs} pairs (load average {load}):")
    print(f"  first build (empty cache mount):           {first:6.2f} s")
    print(f"  second build (earlier step changed, cache): {second:6.2f} s")
    print(f"  speed-up: {first / second:.1f}x (target: at least 5x)")


if __name__ == "__main__":
    main()
