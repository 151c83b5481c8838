"""Test helper: writes through a shared mapping that move no file time (CI-1, RT-3)."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest


class Mapped:
    """``path`` mapped shared and one byte stored (the page is dirty, the times updated);
    ``store`` then writes through the map without a fault: no time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, 0, mmap.MAP_SHARED)
        self.map[0:1] = self.map[0:1]

    def store(self, data: bytes, offset: int = 0) -> None:
        before = os.stat(self.path)
        self.map[offset:offset + len(data)] = data
        after = os.stat(self.path)
        if (after.st_mtime_ns, after.st_ctime_ns) != (before.st_mtime_ns, before.st_ctime_ns):
            pytest.skip("the page was written back meanwhile: the times changed")

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)
