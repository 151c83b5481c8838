"""The sandbox helper itself (sandbox_init run by sandbox.py): the code a build's helpers run
stays the same while the installation is rewritten, and no way the helper ends is silent."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import acbuild
from acbuild.errors import SandboxError
from tests.support.busybox import make_busybox_rootfs
from tests.support.sandboxrun import needs_sandbox, run

REPO = Path(acbuild.__file__).resolve().parent.parent
pytestmark = needs_sandbox

# Runs sandboxes with the acbuild of PYTHONPATH, doing to its sandbox_init.py what argv[2]
# says before each run after the first; prints each run's exit status or error.
RUNS = """
import sys
from pathlib import Path
from acbuild.errors import SandboxError
from acbuild.sandbox import sandbox_init
from acbuild.sandbox.sandbox import SandboxSpec, run_sandboxed

root, damage = Path(sys.argv[1]), sys.argv[2]
helper = Path(sandbox_init.__file__)
if not helper.is_relative_to(sys.argv[5]):  # never the checkout's own file
    sys.exit(f"not the copy: {helper}")
whole = helper.read_text()
for i in range(int(sys.argv[3])):
    if i >= int(sys.argv[4]):
        helper.write_text("" if damage == "empty" else whole[: len(whole) // 2])
    try:
        lines = []
        result = run_sandboxed(SandboxSpec(rootfs=root, argv=("/bin/sh", "-c", "echo ran; exit 7")),
                               lines.append)
        print(lines, result.exit_status, flush=True)
    except SandboxError as e:
        print("error:", e.message, flush=True)
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_busybox_rootfs(tmp_path / "rootfs")


def copy_of_acbuild(tmp_path: Path) -> Path:
    """A private copy of the package: the tests rewrite its sandbox_init.py."""
    top = tmp_path / "copy"
    shutil.copytree(REPO / "acbuild", top / "acbuild",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return top


def runs(tmp_path: Path, rootfs: Path, damage: str, count: int, first_damaged: int) -> list[str]:
    top = copy_of_acbuild(tmp_path)
    # -P and cwd: -c would put the working directory (the checkout) first on sys.path.
    proc = subprocess.run([sys.executable, "-P", "-c", RUNS, str(rootfs), damage, str(count),
                           str(first_damaged), str(top)],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(top)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize("damage", ["empty", "half"])
def test_a_helper_rewritten_during_a_build_does_not_change_what_runs(
        tmp_path: Path, rootfs: Path, damage: str) -> None:
    # An editor saving the file (truncate, then write), a checkout or an upgrade: a helper
    # started then read an empty file, ran nothing and exited 0, and the step failed with
    # "the sandbox helper failed (status 0)". Every run of a process runs what it read first.
    assert runs(tmp_path, rootfs, damage, 3, 1) == ["['ran'] 7"] * 3


@pytest.mark.parametrize("damage", ["empty", "half"])
def test_a_helper_caught_mid_write_is_named_not_run(tmp_path: Path, rootfs: Path,
                                                    damage: str) -> None:
    [line] = runs(tmp_path, rootfs, damage, 1, 0)
    assert line.startswith("error: the sandbox helper "), line
    assert line.endswith("sandbox_init.py is incomplete (it does not end with its __main__ "
                         "block)"), line


def test_a_caller_that_ignores_sigchld_still_gets_the_status(rootfs: Path) -> None:
    # An ignored SIGCHLD survives exec: the kernel reaped the program before PID 1 could
    # wait for it, and the step failed with no status at all.
    script = ("import signal, sys\nfrom pathlib import Path\n"
              "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
              "from tests.support.sandboxrun import run\n"
              "result, lines = run(Path(sys.argv[1]), 'echo ran; exit 7')\n"
              "print(lines, result.exit_status)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(rootfs)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['ran'] 7"


def helper_children() -> list[int]:
    """PID 1 of each sandbox this process runs: the child of each helper it started."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            if ppid == os.getpid() and b"sandbox_init.py" in cmdline:
                found += map(int, Path(f"/proc/{name}/task/{name}/children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_pid_1_killed_is_named_with_how_it_ended(rootfs: Path) -> None:
    outcome: list[object] = []

    def sandbox() -> None:
        try:
            outcome.append(run(rootfs, "sleep 30"))
        except SandboxError as e:
            outcome.append(e.message)

    thread = threading.Thread(target=sandbox)
    thread.start()
    deadline = time.monotonic() + 20
    while not (pids := helper_children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids) == 1
    time.sleep(0.3)  # past the setup: the program runs
    os.kill(pids[0], signal.SIGKILL)
    thread.join(20)
    assert outcome == ["PID 1 of the sandbox was killed by signal 9 without reporting the "
                       "program's status"]
