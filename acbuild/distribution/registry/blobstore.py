"""Registries: the content-addressed store of pulled blobs (layers, configs, manifests).

``<image store>/blobs/sha256/<hex>``: a blob is written to a temporary file, checked against
its digest as it streams in, and renamed into place only when it matches, so a reader never
sees a partial or wrong blob and concurrent pulls of one blob each rename a whole, identical
file. A blob's mtime is refreshed on every use: ``gc --blobs --older-than DAYS`` keys on it.

A process that uses the store (a pull, a build reading its pulled base, a conversion) holds
a shared flock on ``blobs.lock`` while it does, and ``gc --blobs`` an exclusive one: gc waits
for them, and never removes a blob a running pull stored and is yet to read, nor a download
in progress (RT4-1).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from acbuild.distribution.registry.reference import DIGEST, RegistryError
from acbuild.distribution.storedir import StoreDir
from acbuild.fs.leftovers import sweep_at

_HEX = re.compile(r"[a-f0-9]{64}")
# what atomic_write names a blob while it is written: .<hex>.<owner tag>.<random>.tmp
_WRITING = re.compile(r"\.([a-f0-9]{64})\..*\.tmp")
_LOCK = "blobs.lock"


class BlobStoreBusy(RegistryError):
    """gc --blobs found the store in use and was not to wait."""


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root  # an OCI-layout-like directory: blobs live under root/blobs/sha256
        # The image store's directory, checked and tagged as it is (a planted blob would be
        # trusted, and gc --blobs deletes what it finds there).
        self._dir = StoreDir(root, what="blob store")
        self._using: int | None = None

    def _use(self) -> None:
        """Hold the store's shared lock from the first use until this object is gone."""
        if self._using is None:
            fd = self._lock_fd()
            fcntl.flock(fd, fcntl.LOCK_SH)
            weakref.finalize(self, os.close, fd)
            self._using = fd

    def _lock_fd(self) -> int:
        return os.open(_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                       dir_fd=self._dir.fd())

    def check(self) -> Path:
        """The blob directory, made private to this user."""
        with self._dir.opened("blobs", "sha256"):
            pass
        return self.root / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        """Where the blob is; every use of a blob asks for this, so it is where this
        process's use of the store begins (``_use``)."""
        if not DIGEST.fullmatch(digest):
            raise RegistryError(f"{digest[:80]!r} is not a sha256 digest")
        self._use()
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

    def gc(self, *, older_than_days: float | None = None, now: float | None = None,
           waiting: Callable[[], None] | None = None) -> tuple[int, int]:
        """Remove blobs (all, or those unused for DAYS) and what killed pulls left; returns
        (count, bytes) removed. Under the store's exclusive lock: when others use the store,
        ``waiting()`` is told and the lock waited for (None: BlobStoreBusy at once).
        Through the store's descriptor: nothing outside it is looked at or removed."""
        if self._using is not None:
            raise BlobStoreBusy("this process uses the blob store: it cannot gc it")
        lock = self._lock_fd()
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is None:
                    raise BlobStoreBusy(
                        f"blob store {self.root} is in use by a running pull or build",
                        hint="run gc --blobs again when it has ended") from None
                waiting()
                fcntl.flock(lock, fcntl.LOCK_EX)
            return self._remove(older_than_days, time.time() if now is None else now)
        finally:
            os.close(lock)

    def _remove(self, older_than_days: float | None, now: float) -> tuple[int, int]:
        count = size = 0
        try:
            with self._dir.opened("blobs", "sha256", create=False) as directory:
                writing: set[str] = set()
                for name in os.listdir(directory):
                    if (found := _WRITING.fullmatch(name)) is not None:
                        writing.add(found[1])
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
                for hexed in writing:  # a killed pull's half-written blob, nobody holds
                    sweep_at(directory, f".{hexed}.", ".tmp")
        except FileNotFoundError:
            pass
        return count, size
