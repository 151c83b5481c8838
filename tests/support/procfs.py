"""Test helpers (sandbox and RUN steps): what /proc shows is still running after a run.

Shared by the sandbox's own tests and the RUN-step tests that interrupt a build.
"""

from __future__ import annotations

from pathlib import Path


def processes_with(marker: bytes) -> list[int]:
    """PIDs whose command line contains ``marker`` (a process may vanish while we look)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
