"""Issue 13, class 15: RUN's process and memory limits, with a real fork bomb.

The bomb is a real exponential one, made finite (depth 10: up to 2047 shells that sleep a
few seconds) so that it cannot take a shared machine down on code without limits: there it
reaches every process it asks for, which is what the assertions catch.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import acbuild
from acbuild.acfile.instructions import Run
from acbuild.errors import Span
from acbuild.sandbox.limits import DEFAULT_PIDS, MIN_DEFAULT_MEMORY, Limits, default_memory
from acbuild.sandbox.runstep import run_limits
from acbuild.sandbox.sandbox import SandboxSpec, run_sandboxed, sandbox_available
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild as cli

REPO = Path(acbuild.__file__).resolve().parent.parent
_reason = sandbox_available() if busybox_available() else "busybox-static is not installed"
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}")
IS_ROOT = os.geteuid() == 0

# b DEPTH: forks two copies of itself one level down, then sleeps; 2^(DEPTH+1)-1 shells.
# The count uses shell builtins only: at the limit, nothing can fork.
BOMB = ("b() { if [ $1 -gt 0 ]; then b $(($1-1)) & b $(($1-1)) & fi; sleep 4; }; "
        "b 10 2>/dev/null & sleep 2.5; n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; "
        "echo $n")


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_busybox_rootfs(tmp_path / "rootfs")


def run(root: Path, script: str, **kw: object) -> tuple[int, list[str], tuple[str, ...]]:
    lines: list[str] = []
    spec = SandboxSpec(rootfs=root, argv=("/bin/sh", "-c", script), **kw)  # type: ignore[arg-type]
    result = run_sandboxed(spec, lines.append)
    return result.exit_status, lines, result.unenforced


def our_cgroups() -> list[Path]:
    """Every acbuild cgroup of any hierarchy below the ones this process is in."""
    found = []
    for mount in Path("/sys/fs/cgroup").iterdir():
        if mount.is_dir():
            found.extend(p for p in mount.rglob("acbuild-*") if p.is_dir())
    return found


def test_fork_bomb_is_bounded(rootfs: Path) -> None:
    # Only this process's: a build elsewhere on the machine makes and removes its own.
    before = [p for p in our_cgroups() if p.name.startswith(f"acbuild-{os.getpid()}-")]
    _, lines, unenforced = run(rootfs, BOMB, limits=Limits(pids=200), timeout=30)
    assert unenforced == ()
    assert int(lines[-1]) <= 200, lines  # without a limit: about 2050
    after = [p for p in our_cgroups() if p.name.startswith(f"acbuild-{os.getpid()}-")]
    assert after == before  # the step's cgroup is gone with it


@pytest.mark.skipif(not IS_ROOT, reason="memory cgroups need root here")
def test_memory_limit_kills_the_hog(rootfs: Path) -> None:
    # busybox tail -n 1 keeps the whole (newline-free) line: ~300 MiB of memory.
    _, lines, unenforced = run(rootfs, "head -c 300m /dev/zero | tail -n 1 | wc -c",
                                    limits=Limits(memory=64 << 20))
    assert unenforced == ()
    assert sorted(lines) == ["0", "Killed"], lines  # the OOM killer took tail
    _, lines, _ = run(rootfs, "head -c 30m /dev/zero | tail -n 1 | wc -c",
                           limits=Limits(memory=64 << 20))
    assert lines == [str(30 << 20)]  # below the limit all is well


def test_defaults_let_builds_run() -> None:
    where = {"span": Span(file="Acfile", line=1), "text": "RUN true"}
    limits = run_limits(Run(argv=("true",), **where))  # type: ignore[arg-type]
    assert limits.pids == DEFAULT_PIDS >= 1024
    assert limits.memory == default_memory() >= MIN_DEFAULT_MEMORY == 2 << 30
    assert run_limits(Run(argv=("true",), pids=0, memory=0, **where)) == Limits()  # type: ignore[arg-type]
    assert run_limits(Run(argv=("true",), pids=50, memory=1 << 30, **where)) == Limits(  # type: ignore[arg-type]
        pids=50, memory=1 << 30)


PARENT = """
import sys
from pathlib import Path
from acbuild.sandbox.limits import Limits
from acbuild.sandbox.sandbox import SandboxSpec, run_sandboxed
from acbuild.signals import terminate_as_exit
spec = SandboxSpec(rootfs=Path(sys.argv[1]), argv=("/bin/sh", "-c", "echo started; sleep 4248.5"),
                   limits=Limits(pids=100, memory=256 << 20))
def show(line):
    print(line, flush=True)
try:
    with terminate_as_exit():
        run_sandboxed(spec, show)
except (KeyboardInterrupt, SystemExit):
    print("interrupted", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cgroups_are_removed_when_interrupted(rootfs: Path, signum: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(rootfs)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    mine = [p for p in our_cgroups() if p.name.startswith(f"acbuild-{proc.pid}-")]
    assert mine or not IS_ROOT  # as root the step runs in cgroups of its own
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=15)
    assert out == "interrupted\n"
    assert not [p for p in mine if p.exists()]


def test_run_flags_through_the_cli(tmp_path: Path) -> None:
    base = make_busybox_rootfs(tmp_path / "base")
    (tmp_path / "Acfile").write_text(
        f"BEGIN {base}\nNAME example.com/limits\n"
        f"RUN --pids=150 --timeout=60 /bin/sh -c \"{BOMB}\"\n"
        "RUN --pids=max --memory=max /bin/true\n")
    r = cli("build", "--no-cache", tmp_path / "Acfile", "-o", tmp_path / "x.aci")
    assert r.code == 0, r.stderr
    counts = [line.rsplit("| ", 1)[1] for line in r.stderr.splitlines() if "[3/5] | " in line]
    assert counts and int(counts[-1]) <= 150, r.stderr


@pytest.mark.parametrize(("option", "message"), [
    ("--pids=0", "invalid --pids '0'"), ("--pids=lots", "invalid --pids 'lots'"),
    ("--memory=2X", "invalid --memory '2X'"), ("--memory=1k", "at least 32M"),
])
def test_bad_limits_are_one_line_errors(tmp_path: Path, option: str, message: str) -> None:
    (tmp_path / "Acfile").write_text(f"BEGIN scratch\nNAME example.com/x\nRUN {option} /bin/true\n")
    r = cli("plan", tmp_path / "Acfile")
    assert r.code != 0 and r.code != 70
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "Acfile:3:" in r.stderr


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
ROOTLESS = """
import json, sys
from pathlib import Path
from acbuild.sandbox.limits import Limits
from acbuild.sandbox.sandbox import SandboxSpec, run_sandboxed
lines = []
r = run_sandboxed(SandboxSpec(rootfs=Path(sys.argv[1]), argv=("/bin/sh", "-c", sys.argv[2]),
                              limits=Limits(pids=100, memory=1 << 30), timeout=30), lines.append)
print(json.dumps({"lines": lines, "unenforced": r.unenforced}))
"""


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None,
                    reason="switching to nobody needs root and setpriv")
def test_rootless_fork_bomb_is_bounded_by_rlimit_nproc() -> None:
    import json

    import pyseccomp

    top = Path(tempfile.mkdtemp(prefix="acbuild-limits-"))
    try:
        shutil.copy2(pyseccomp.__file__, top / "pyseccomp.py")
        root = make_busybox_rootfs(top / "rootfs")
        for path in (top, *top.rglob("*")):
            os.lchown(path, 65534, 65534)
        top.chmod(0o755)
        (top / "pyseccomp.py").chmod(0o644)
        env = {"PYTHONPATH": f"{REPO}:{top}", "PATH": os.environ["PATH"]}
        for python in (sys.executable, "/usr/bin/python3"):
            proc = subprocess.run([*NOBODY, python, "-c", ROOTLESS, str(root), BOMB], env=env,
                                  cwd="/", capture_output=True, text=True)
            if proc.returncode == 0:
                break
        else:
            pytest.skip(f"no Python nobody can run acbuild with: {proc.stderr[-300:]}")
        report = json.loads(proc.stdout)
        assert int(report["lines"][-1]) <= 100, report
        assert report["unenforced"] == ["memory"]  # said so, and warned about by RUN
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                shutil.rmtree(top)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.mark.skipif(not IS_ROOT, reason="cgroups need root here")
def test_cgroup_of_a_killed_builder_is_swept(rootfs: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(rootfs)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert parent.stdout is not None and parent.stdout.readline() == "started\n"
    left = [p for p in our_cgroups() if p.name.startswith(f"acbuild-{parent.pid}-")]
    parent.kill()  # SIGKILL: no cleanup; its sandbox dies with it (PR_SET_PDEATHSIG)
    parent.communicate()
    assert left and all(p.exists() for p in left)
    run(rootfs, "true", limits=Limits(pids=10))
    assert not [p for p in left if p.exists()]
