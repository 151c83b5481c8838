"""Hardening: builds killed at random points (SIGKILL), interrupted (SIGINT) and terminated
(SIGTERM), through the real CLI: the output is the previous image or nothing, never half.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support import gpghelp
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild, actool_validate

REPO = Path(__file__).resolve().parents[2]
KILLS = 15

pytestmark = pytest.mark.skipif(not busybox_available(), reason="needs busybox-static")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, gpgkeys: gpghelp.Keys) -> Path:
    """A build that extracts a base, copies 16 MiB, runs a command, compresses and signs."""
    where = tmp_path_factory.mktemp("crash")
    rootfs = make_busybox_rootfs(where / "rootfs")
    with tarfile.open(where / "base.tar.gz", "w:gz") as t:
        t.add(rootfs, arcname=".")
    ctx = where / "ctx"
    ctx.mkdir()
    (ctx / "blob").write_bytes(random.Random(1).randbytes(16 << 20))
    (ctx / "Acfile").write_text(
        "BEGIN ../base.tar.gz\nNAME example.com/crash\nLABEL version=1\nCOPY blob /blob\n"
        "RUN /bin/sh -c 'echo built > /etc/motd'\nEXEC /bin/sh\n"
        f"SIGN {gpgkeys.fpr['alice']}\n"
    )
    return where


def environment(where: Path, gpgkeys: gpghelp.Keys) -> dict[str, str]:
    tmp = where / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "CI": "true", "TMPDIR": str(tmp),
            "XDG_STATE_HOME": str(where / "state"), "XDG_CACHE_HOME": str(where / "cache"),
            "GNUPGHOME": str(gpgkeys.home), "SOURCE_DATE_EPOCH": "1600000000"}


def start_build(project: Path, out: Path, env: Mapping[str, str],
                *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "acbuild", "build", str(project / "ctx" / "Acfile"), "-o",
         str(out), "--gpg-home", env["GNUPGHOME"], "--allow-path", str(project), *extra],
        env=env, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )


def sandbox_processes(builder: subprocess.Popen[bytes], grace: float = 5.0) -> list[str]:
    """The sandbox helpers of ``builder``'s build still alive after ``grace`` seconds (a
    helper notices its parent's death on its control pipe, a moment after the kill)."""
    deadline = time.monotonic() + grace
    while (found := _sandbox_processes(builder.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


MINE = os.fsencode(Path(__file__).resolve().parents[2] / "acbuild" / "sandbox" / "sandbox_init")


def _sandbox_processes(builder: int) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        # Only this checkout's helpers, and only those of this build: a helper's last
        # argument is its builder's pid (the helpers it forks keep the command line), and
        # other tests running meanwhile (pytest -n) or another test run have their own.
        args = cmdline.rstrip(b"\0").split(b"\0")
        if MINE in cmdline and args[-1] == str(builder).encode():
            found.append(f"{pid}: {cmdline!r}")
    return found


def mounts_below(path: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if str(path) in line]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.endswith(".tmp"))


def image_id(r_stdout: str) -> str:
    return r_stdout.strip().splitlines()[-1]


def build_seconds(project: Path, out: Path, env: Mapping[str, str], *extra: str) -> float:
    started = time.monotonic()
    proc = start_build(project, out, env, *extra)
    proc.communicate()
    assert proc.returncode == 0
    return time.monotonic() - started


def test_sigkill_at_random_points_never_leaves_a_partial_image(
    project: Path, gpgkeys: gpghelp.Keys, tmp_path: Path
) -> None:
    env = environment(tmp_path, gpgkeys)
    out = tmp_path / "out" / "crash-1.aci"
    out.parent.mkdir()
    clean = acbuild("build", project / "ctx" / "Acfile", "-o", out, "--allow-path", project,
                    "--gpg-home",
                    env["GNUPGHOME"], cwd=project, env=env)
    assert clean.code == 0, clean.stderr
    good_bytes = out.read_bytes()
    duration = build_seconds(project, out, env, "--no-cache")
    rng = random.Random(20240508)
    for i in range(KILLS):
        # a third of the kills hit a build that fills the shared step cache, the rest work
        # without it (extraction, COPY, RUN, compression, signing)
        extra = ("--no-cache",) if i % 3 else ()
        if not extra:
            shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        delay = rng.uniform(0.05, duration)
        proc = start_build(project, out, env, *extra)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        # the old image or nothing, and never without its signature
        if out.exists():
            assert out.read_bytes() == good_bytes, f"kill {i} at {delay:.2f}s: image changed"
            assert_signed(out, gpgkeys, f"kill {i} at {delay:.2f}s")
        assert not sandbox_processes(proc), f"kill {i}: sandbox left running"
        assert not mounts_below(tmp_path), f"kill {i}: mounts left"
    r = acbuild("build", project / "ctx" / "Acfile", "-o", out, "--allow-path", project,
                "--gpg-home", env["GNUPGHOME"],
                cwd=project, env=env)
    assert r.code == 0, r.stderr
    assert image_id(r.stdout) == image_id(clean.stdout)
    assert out.read_bytes() == good_bytes
    actool_validate(out)
    # What a SIGKILL leaves are hidden names that no reader takes for the image.
    assert all(n.startswith((f".{out.name}.", f"..{out.name}.")) for n in leftovers(out))


def assert_signed(out: Path, gpgkeys: gpghelp.Keys, when: str) -> None:
    sig = out.parent / (out.name + ".asc")
    assert sig.exists(), f"{when}: an image without its signature"
    gpghelp.gpg(gpgkeys.home, "--verify", str(sig), str(out))  # raises if stale


def test_a_signing_build_killed_as_its_image_appears_leaves_it_signed(
    project: Path, gpgkeys: gpghelp.Keys, tmp_path: Path
) -> None:
    """The image appears at the output only with its signature beside it: a SIGKILL the
    instant it appears (a CI timeout's kill -9) cannot leave it unsigned."""
    env = environment(tmp_path, gpgkeys)
    out = tmp_path / "out" / "signed.aci"
    out.parent.mkdir()
    for _ in range(3):
        out.unlink(missing_ok=True)
        proc = start_build(project, out, env, "--no-cache")
        while not out.exists() and proc.poll() is None:
            pass  # a busy wait: the kill must come within microseconds of the rename
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert out.exists(), "the build ended before the image appeared"
        assert_signed(out, gpgkeys, "killed as the image appeared")
        assert not sandbox_processes(proc)


def interrupted(project: Path, tmp_path: Path, gpgkeys: gpghelp.Keys, sig: int,
                fractions: tuple[float, ...]) -> list[tuple[float, int, str, list[str], list[str]]]:
    """Send ``sig`` to a build after each delay: (delay, status, stderr, temp files in the
    output directory, work directories left in TMPDIR)."""
    env = environment(tmp_path, gpgkeys)
    out = tmp_path / "out" / "x.aci"
    out.parent.mkdir(exist_ok=True)
    duration = build_seconds(project, tmp_path / "timing.aci", env, "--no-cache")
    results = []
    for delay in (f * duration for f in fractions):
        proc = start_build(project, out, env, "--no-cache")
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        results.append((delay, proc.returncode, err.decode(), leftovers(out),
                        sorted(os.listdir(Path(env["TMPDIR"]) / f"acbuild-py-{os.geteuid()}"))))
        assert not sandbox_processes(proc)
    return results


DELAYS = (0.4, 0.55, 0.7, 0.8, 0.9)  # fractions of a whole build's time


@pytest.mark.parametrize(("sig", "status", "last_words"), [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "terminated"),
], ids=["sigint", "sigterm"])
def test_interrupt_exits_cleanly_and_removes_temporary_files(
    project: Path, gpgkeys: gpghelp.Keys, tmp_path: Path, sig: signal.Signals, status: int,
    last_words: str,
) -> None:
    results = interrupted(project, tmp_path, gpgkeys, sig, DELAYS)
    assert any(code != 0 for _d, code, *_ in results)
    for delay, code, err, temps, work in results:
        if code == 0:
            continue  # the build won the race
        assert code == status, (delay, err)
        assert "Traceback" not in err
        assert err.rstrip().endswith(last_words), err
        assert temps == [] and work == [], (delay, temps, work)
