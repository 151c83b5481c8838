"""Test helper: a tiny real rootfs made from the host's static busybox (Debian busybox-static).

Every applet is a symlink to /bin/busybox, as ``busybox --install -s`` would make inside the
image; the links are written here because ``--install`` run on the host would point them at
the host's path of the binary.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/usr/bin/busybox")

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def busybox_available() -> bool:
    return BUSYBOX.is_file()


@functools.cache
def _applets() -> tuple[str, ...]:
    return tuple(subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True,
                                text=True).stdout.split())


def make_busybox_rootfs(root: Path, *, etc: bool = True) -> Path:
    """Fill ``root`` (created if missing) with bin/busybox, its applet links and, with
    ``etc``, a minimal etc/passwd and etc/group. No dev, proc or tmp directories."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    # Hundreds of tests make one: each directory is made once and each link without a
    # stat first (per link, pathlib's checks cost four times the link itself).
    links = [rel for rel in _applets() if os.path.basename(rel) != "busybox"]
    for parent in sorted({os.path.dirname(rel) for rel in links}):
        os.makedirs(root / parent, exist_ok=True)
    for rel in links:
        with contextlib.suppress(FileExistsError):  # a file or link already there stays
            os.symlink("/bin/busybox", root / rel)
    if etc:
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc" / "passwd").write_text(PASSWD)
        (root / "etc" / "group").write_text(GROUP)
    return root
