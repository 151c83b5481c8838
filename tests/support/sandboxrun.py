"""Test helper: running a shell script in the real sandbox, and the skip mark for machines
where it cannot run (no user namespaces, no busybox-static)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acbuild.sandbox.sandbox import SandboxResult, SandboxSpec, run_sandboxed, sandbox_available
from tests.support.busybox import busybox_available

_reason = sandbox_available() if busybox_available() else "busybox-static is not installed"
needs_sandbox = pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}")
IS_ROOT = os.geteuid() == 0


def run(root: Path, script: str, **kw: object) -> tuple[SandboxResult, list[str]]:
    """``/bin/sh -c script`` in a sandbox over ``root``: its result and its output lines."""
    lines: list[str] = []
    spec = SandboxSpec(rootfs=root, argv=("/bin/sh", "-c", script), **kw)  # type: ignore[arg-type]
    return run_sandboxed(spec, lines.append), lines
