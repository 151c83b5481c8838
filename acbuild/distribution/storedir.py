"""The image store's directory (shared with the blob store), opened once and used by fd.

Its path is resolved as the step cache's is (acbuild.fs.private.open_private_dir: no
symlink or directory of another user on the way), and what writes or deletes in it (the
index, the lock, storing and removing images, gc of blobs and of ``tmp/``) goes through
that descriptor. It must carry the store's own CACHEDIR.TAG, written when the store is
made in a new or empty directory: any other directory is refused before anything is
created or deleted in it, so no ``--store`` can make gc empty a directory it did not make.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

from acbuild.fs.private import (
    CACHEDIR_SIGNATURE,
    CACHEDIR_TAG,
    UnsafeDirectory,
    open_claimed_dir,
)

# Not the step cache's tag: the store's gc and the cache's prune each trust what they find
# in their own kind of directory, and neither is to be let loose in the other's.
_OURS = CACHEDIR_SIGNATURE + b"\n# This file is a cache directory tag created by acbuild-py " \
    b"for its image store.\n"
_TEXT = _OURS + (b"# For information about cache directory tags, see:\n"
                 b"#\thttps://bford.info/cachedir/\n")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StoreDir:
    """``root`` opened (made if missing) on first use; ``what`` names it in errors."""

    def __init__(self, root: Path, *, what: str) -> None:
        self.root = root
        self.what = what
        self._fd: int | None = None

    def fd(self) -> int:
        if self._fd is not None:
            return self._fd
        fd, _ = open_claimed_dir(self.root, what=self.what, ours=_OURS, text=_TEXT,
                                 refused=self._refused, then=lambda fd: None)
        weakref.finalize(self, os.close, fd)
        self._fd = fd
        return fd

    def _refused(self) -> UnsafeDirectory:
        return UnsafeDirectory(
            f"{self.what} {self.root} is not an acbuild-py image store (it is not empty and "
            f"has no acbuild-py {CACHEDIR_TAG}); refusing to use it, or to remove anything "
            "in it",
            hint="choose a new or empty directory for --store (or $XDG_CACHE_HOME); a store "
                 "made before acbuild-py tagged its stores is to be removed by hand (its "
                 "images are fetched again)")

    @contextlib.contextmanager
    def opened(self, *parts: str, create: bool = True) -> Iterator[int]:
        """A descriptor of ``root/<parts>``, each opened below the last without following a
        symlink (made 0700 when missing and ``create``); FileNotFoundError otherwise."""
        fd = os.dup(self.fd())
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                try:
                    below = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    raise
                except OSError as e:
                    raise UnsafeDirectory(
                        f"{self.what} {self.root}: {part}/ cannot be opened ({e.strerror})",
                        hint="it must be a directory, not a symlink") from None
                os.close(fd)
                fd = below
            yield fd
        finally:
            os.close(fd)
