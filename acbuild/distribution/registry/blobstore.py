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
import shutil
import stat
import time
from pathlib import Path

from acbuild.distribution.registry.reference import DIGEST, RegistryError
from acbuild.fs.private import private_dir

_HEX = re.compile(r"[a-f0-9]{64}")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root  # an OCI-layout-like directory: blobs live under root/blobs/sha256

    def check(self) -> Path:
        """The blob directory, made private to this user (a planted blob would be trusted)."""
        private_dir(self.root, what="blob store")
        directory = self.root / "blobs" / "sha256"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory

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

    def blobs(self) -> list[Path]:
        directory = self.root / "blobs" / "sha256"
        try:
            return [directory / n for n in os.listdir(directory) if _HEX.fullmatch(n)]
        except FileNotFoundError:
            return []

    def gc(self, *, older_than_days: float | None = None, now: float | None = None
           ) -> tuple[int, int]:
        """Remove blobs (all, or those unused for DAYS); returns (count, bytes) removed."""
        now = time.time() if now is None else now
        count = size = 0
        for path in self.blobs():
            try:
                st = os.lstat(path)
                if older_than_days is not None and st.st_mtime >= now - older_than_days * 86400:
                    continue
                os.unlink(path)
            except OSError:
                continue
            count += 1
            size += st.st_size
        if older_than_days is None:
            shutil.rmtree(self.root / "blobs", ignore_errors=True)
        return count, size
