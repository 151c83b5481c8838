"""Registries: the content-addressed store of pulled blobs (layers, configs, manifests).

``<image store>/blobs/sha256/<hex>``: a blob is written to a temporary file, checked against
its digest as it streams in, and renamed into place only when it matches, so a reader never
sees a partial or wrong blob and concurrent pulls of one blob each rename a whole, identical
file. A blob's mtime is refreshed on every use: ``gc --blobs --older-than DAYS`` keys on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from pathlib import Path

from acbuild.distribution.registry.reference import DIGEST, RegistryError
from acbuild.distribution.storedir import StoreDir
from acbuild.fs.staging import remove_at

_HEX = re.compile(r"[a-f0-9]{64}")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root  # an OCI-layout-like directory: blobs live under root/blobs/sha256
        # The image store's directory, checked and tagged as it is (a planted blob would be
        # trusted, and gc --blobs deletes what it finds there).
        self._dir = StoreDir(root, what="blob store")

    def check(self) -> Path:
        """The blob directory, made private to this user."""
        with self._dir.opened("blobs", "sha256"):
            pass
        return self.root / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        if not DIGEST.fullmatch(digest):
            raise RegistryError(f"{digest[:80]!r} is not a sha256 digest")
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    @staticmethod
    def location(digest: str) -> str:
        """The blob's name relative to ``root``, as an OCI layout names it."""
        return f"blobs/sha256/{digest.split(':', 1)[1]}"

    def has(self, digest: str, size: int | None) -> bool:
        """Whether the blob is stored (with that size); marks it used."""
        path = self.path(digest)
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
            return False
        with contextlib.suppress(OSError):
            os.utime(path)
        return True

    def has_intact(self, digest: str, size: int | None) -> bool:
        """``has``, and its bytes still hash to ``digest``; a copy that does not (a disk
        error, an edit) is removed, so that it is downloaded again."""
        if not self.has(digest, size):
            return False
        h = hashlib.sha256()
        path = self.path(digest)
        try:
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError:
            return False
        if "sha256:" + h.hexdigest() == digest:
            return True
        path.unlink(missing_ok=True)
        return False

    def gc(self, *, older_than_days: float | None = None, now: float | None = None
           ) -> tuple[int, int]:
        """Remove blobs (all, or those unused for DAYS); returns (count, bytes) removed.
        Through the store's descriptor: nothing outside it is looked at or removed."""
        now = time.time() if now is None else now
        count = size = 0
        try:
            with self._dir.opened("blobs", "sha256", create=False) as directory:
                for name in os.listdir(directory):
                    if not _HEX.fullmatch(name):
                        continue
                    try:
                        st = os.lstat(name, dir_fd=directory)
                        if older_than_days is not None and \
                                st.st_mtime >= now - older_than_days * 86400:
                            continue
                        os.unlink(name, dir_fd=directory)
                    except OSError:
                        continue
                    count += 1
                    size += st.st_size
        except FileNotFoundError:
            pass
        if older_than_days is None:
            remove_at(self._dir.fd(), "blobs", ignore_errors=True)
        return count, size
