"""Staging: the directory a stage's rootfs is built in, and the ownership it cannot store.

As root, owners are applied to the files themselves. Without root (a user namespace maps
only the caller's uid to 0), chown to other ids is impossible, so the owner is recorded here
and the finalizer reads it back: root and rootless builds give the same image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceNode:
    """A device node or FIFO that could not be created without root; kept for the tar."""

    kind: str  # "chr", "blk" or "fifo"
    major: int
    minor: int
    mode: int  # permission bits


@dataclass(slots=True)
class StagedRootfs:
    """A rootfs under construction. ``root`` is the directory that becomes ``rootfs/``.

    Paths used as keys are relative POSIX paths without a leading slash ("bin/hello").
    """

    root: Path
    privileged: bool = field(default_factory=lambda: os.geteuid() == 0)
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)
    devices: dict[str, DeviceNode] = field(default_factory=dict)

    def set_owner(self, rel: str, uid: int, gid: int) -> None:
        """Give ``rel`` (already created, inside root) an owner, on disk when we can."""
        if self.privileged:
            os.lchown(self.root / rel, uid, gid)
            self.owners.pop(rel, None)
        else:
            self.owners[rel] = (uid, gid)

    def owner(self, rel: str, st: os.stat_result) -> tuple[int, int]:
        """The owner the image records for ``rel``: a recorded one, else the file's own,
        with the unprivileged builder's ids read as 0 (what they are inside the sandbox)."""
        recorded = self.owners.get(rel)
        if recorded is not None:
            return recorded
        if self.privileged:
            return st.st_uid, st.st_gid
        uid = 0 if st.st_uid == os.geteuid() else st.st_uid
        gid = 0 if st.st_gid == os.getegid() else st.st_gid
        return uid, gid


def remove_tree(path: Path, *, ignore_errors: bool = False) -> None:
    """Remove a staged tree even where the image made directories read-only (0555).

    Only real directories are made writable: a symlink in the tree may point anywhere, and
    Linux cannot chmod a symlink itself.
    """
    if not os.path.lexists(path):
        return
    for parent, dirs, _files in os.walk(path):
        for name in dirs:
            child = os.path.join(parent, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=ignore_errors)
