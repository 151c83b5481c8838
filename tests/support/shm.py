"""A directory on tmpfs for tests that write through shared mappings."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def shm() -> Iterator[Path]:
    """A directory on tmpfs (/dev/shm): a page dirtied through a shared mapping there stays
    dirty and writable, as tmpfs never writes pages back. On a disk filesystem any flush (a
    sync anywhere on the machine, the flusher under other tests' dirty pages) cleans the
    page, and the next store through the map faults and sets the file's times."""
    if not any(line.split()[1:3] == ["/dev/shm", "tmpfs"]
               for line in Path("/proc/self/mounts").read_text().splitlines()):
        pytest.skip("/dev/shm is not a tmpfs")
    made = Path(tempfile.mkdtemp(prefix="acbuild-test-", dir="/dev/shm"))
    try:
        yield made
    finally:
        shutil.rmtree(made)
