"""Cache mounts (execute stage): the persistent directories of ``RUN --mount=type=cache``.

``<cache dir>/mounts/<sha256(id)>/`` holds ``id`` (the id as written, for listing),
``data.N/`` (the directories a RUN sees) and ``lock.N`` (their flocks). The id is only
ever hashed into a name, so no id ('../x', '/') can reach another path. A RUN holds
``lock.0`` shared (sharing=shared) or exclusive (locked, waiting for it); sharing=private
takes the first ``lock.N`` free exclusively, making ``data.N`` if it is new, so concurrent
private users each get a directory of their own. Prune takes each lock exclusively
without waiting and skips a directory in use. Nothing here is ever part of a step key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from acbuild.fs.atomic import atomic_write
from acbuild.fs.private import private_dir
from acbuild.fs.staging import remove_tree

Sharing = Literal["shared", "private", "locked"]
MAX_PRIVATE = 64  # concurrent private users of one id; more is a runaway, not a build


@dataclass(frozen=True, slots=True, kw_only=True)
class MountEntry:
    id: str
    path: Path  # the entry's directory (all its data.N)
    size: int
    last_used: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """Who a new data directory belongs to, and its mode."""

    uid: int
    gid: int
    mode: int = 0o755


class MountCache:
    def __init__(self, root: Path, prepare: Callable[[], None] | None = None) -> None:
        self.root = root
        # Run before mounts/ is made: the step cache checks (and tags) the directory it is in.
        self._prepare = prepare

    def _entry(self, cache_id: str) -> Path:
        return self.root / hashlib.sha256(cache_id.encode()).hexdigest()[:40]

    @contextlib.contextmanager
    def use(self, cache_id: str, sharing: Sharing, owner: Owner,
            on_wait: Callable[[], None] | None = None) -> Iterator[Path]:
        """The data directory for ``cache_id``, locked as ``sharing`` says until the end;
        ``on_wait`` is called before waiting for another user to let go of it."""
        if self._prepare is not None:
            self._prepare()
        private_dir(self.root, what="cache mount directory")
        entry = self._entry(cache_id)
        entry.mkdir(mode=0o700, exist_ok=True)
        if not (entry / "id").exists():
            with atomic_write(entry / "id") as f:
                f.write(cache_id.encode())
        with contextlib.ExitStack() as stack:
            number = self._lock(entry, sharing, stack, on_wait)
            data = entry / f"data.{number}"
            if not data.is_dir():
                data.mkdir(mode=0o700)
                if os.geteuid() == 0:
                    os.chown(data, owner.uid, owner.gid)
                os.chmod(data, owner.mode)  # exact: mkdir's mode went through the umask
            with contextlib.suppress(OSError):
                os.utime(entry)  # prune removes the least recently used first
            yield data

    def _lock(self, entry: Path, sharing: Sharing, stack: contextlib.ExitStack,
              on_wait: Callable[[], None] | None) -> int:
        for number in range(MAX_PRIVATE if sharing == "private" else 1):
            f = stack.enter_context(open(entry / f"lock.{number}", "a"))  # noqa: SIM115
            mode = fcntl.LOCK_SH if sharing == "shared" else fcntl.LOCK_EX
            try:
                fcntl.flock(f, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if sharing == "private":
                    continue
                if on_wait is not None:
                    on_wait()
                fcntl.flock(f, mode)
            stack.callback(fcntl.flock, f, fcntl.LOCK_UN)
            return number
        raise OSError(f"more than {MAX_PRIVATE} concurrent private users of one cache mount")

    def entries(self) -> list[MountEntry]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for child in os.scandir(self.root):
                if not child.is_dir(follow_symlinks=False):
                    continue
                path = Path(child.path)
                try:
                    cache_id = (path / "id").read_text(errors="replace")
                except OSError:
                    cache_id = "?"
                found.append(MountEntry(id=cache_id, path=path, size=_size(path),
                                        last_used=child.stat(follow_symlinks=False).st_mtime))
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def remove(self, entry: MountEntry) -> bool:
        """Remove an entry's data unless a RUN is using it now; False when it is."""
        with contextlib.ExitStack() as stack:
            for lock in sorted(entry.path.glob("lock.*")):
                f = stack.enter_context(open(lock, "a"))
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
            # Renamed away under the locks: a RUN starting now makes a fresh entry.
            trash = self.root.parent / "tmp" / f"mount-{entry.path.name}-{time.time_ns()}"
            trash.parent.mkdir(mode=0o700, exist_ok=True)
            os.rename(entry.path, trash)
        remove_tree(trash, ignore_errors=True)
        return True


def _size(path: Path) -> int:
    total = 0
    for top, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total
