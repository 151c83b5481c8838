"""The sandbox helper itself (sandbox_init run by sandbox.py): the code a build's helpers run
stays the same while the installation is rewritten."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import acbuild
from tests.support.busybox import make_busybox_rootfs
from tests.support.sandboxrun import needs_sandbox

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
