"""Fetch: the local image store — verified images by image ID, with an index of names and labels.

``<store>/sha512-<hex>.aci`` (+ ``.asc``) and ``index.json``; every change is made under an
fcntl lock on ``<store>/.lock`` and written atomically, so concurrent fetches store an image once.
The directory is opened once (acbuild.distribution.storedir) and what writes or deletes in it
goes through that descriptor. Downloads are made in ``tmp/<owner tag>.<random>/``, which
their maker holds a flock on (acbuild.fs.leftovers.hold) until it is stored or removed: gc
and later downloads remove only what nobody holds (a killed fetch's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from acbuild.distribution.storedir import DIR_FLAGS, StoreDir
from acbuild.errors import FetchError
from acbuild.fs.leftovers import hold, owner_tag, sweep_at
from acbuild.fs.staging import remove_at
from acbuild.signals import owned

# The name rules (acbuild.image.manifest_rules, acbuild.trust.names) are imported by the
# methods that check names: `pull` only locates the store, and its whole run is short.

INDEX = "index.json"
_INDEX_VERSION = 1
_FULL_ID = re.compile(r"sha512-[0-9a-f]{128}")
_ID_PREFIX = re.compile(r"sha512-[0-9a-f]{32,128}")  # a dependency may give a truncated ID
_LOCK = ".lock"
# tmp/ entries of no owner tag of this host (an older version's, another machine's on a
# shared store) are removed by gc once nobody holds them and they are this old.
_STALE_TMP = 3600.0


def check_image_id(image_id: str, *, truncated: bool = False) -> str:
    """An image ID as the store files it (``sha512-`` + 128 hex; with ``truncated`` at least
    32); nothing else becomes a path in the store."""
    if not (_ID_PREFIX if truncated else _FULL_ID).fullmatch(image_id):
        raise FetchError(f"{image_id!r} is not an image ID (sha512- and hex digits)")
    return image_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    id: str  # sha512-<128 hex>
    name: str
    labels: tuple[tuple[str, str], ...]
    size: int
    added: float  # seconds since the epoch
    signed: bool  # stored with a verified signature

    def matches(self, name: str, labels: tuple[tuple[str, str], ...]) -> bool:
        mine = dict(self.labels)
        return self.name == name and all(mine.get(k) == v for k, v in labels)


def default_location(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "acbuild-py" / "images"


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._dir = StoreDir(root, what="image store")

    @classmethod
    def locate(cls, explicit: Path | None = None,
               env: Mapping[str, str] | None = None) -> ImageStore:
        return cls(explicit if explicit is not None else default_location(env))

    def check(self) -> None:
        """Make the store, or refuse one another user could write into or steer: an image
        planted there would be used as if it had been fetched and verified, and gc would
        delete in whatever directory a planted symlink named."""
        self._dir.fd()

    def aci_path(self, image_id: str) -> Path:
        return self.root / f"{check_image_id(image_id)}.aci"

    def asc_path(self, image_id: str) -> Path:
        return self.root / f"{check_image_id(image_id)}.aci.asc"

    def _is_file(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(name, dir_fd=self._dir.fd(), follow_symlinks=False).st_mode)
        except OSError:
            return False

    @contextlib.contextmanager
    def lock(self) -> Iterator[int]:
        """The store's lock, held exclusively; yields the store's descriptor."""
        root = self._dir.fd()
        fd = os.open(_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=root)
        with open(fd, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield root
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def temp(self) -> Iterator[Path]:
        """A new directory (0700) in tmp/ for a download, on the store's file system so that
        storing is a rename; removed when the block ends. Named after this process and held
        (flock) while it exists: no gc or other fetch removes it meanwhile, in whatever PID
        namespace they run, and what a killed fetch left is removed by the next one."""
        with self._dir.opened("tmp") as tmp:
            sweep_at(tmp, "")

            def make() -> tuple[str, int]:
                while True:
                    name = f"{owner_tag()}.{secrets.token_hex(6)}"
                    os.mkdir(name, 0o700, dir_fd=tmp)
                    fd = os.open(name, DIR_FLAGS, dir_fd=tmp)
                    if hold(fd):
                        return name, fd
                    os.close(fd)  # swept before the lock was taken: another name

            def remove(made: tuple[str, int]) -> None:
                try:
                    remove_at(tmp, made[0], ignore_errors=True)
                finally:
                    os.close(made[1])

            with owned(make, remove) as (name, _held):
                yield self.root / "tmp" / name

    def entries(self) -> tuple[Entry, ...]:
        if not os.path.lexists(self.root):
            return ()  # not made by a read
        try:
            raw = _read_at(self._dir.fd(), INDEX)
        except FileNotFoundError:
            return ()
        except OSError as e:
            raise FetchError(f"image store index {self.root / INDEX} is unreadable: "
                             f"{e.strerror}", hint="remove it; images are fetched again") from None
        try:
            doc = json.loads(raw)
            return tuple(_entry(e) for e in doc["images"])
        except (ValueError, KeyError, TypeError) as e:
            raise FetchError(f"image store index {self.root / INDEX} is unreadable: {e}",
                             hint="remove it; images are fetched again") from None

    def find(self, name: str, labels: tuple[tuple[str, str], ...]) -> Entry | None:
        """The newest stored image with this name carrying all these labels."""
        from acbuild.trust.names import check_image_name

        check_image_name(name, "image store")
        hits = [e for e in self.entries() if e.matches(name, labels)
                and self._is_file(self.aci_path(e.id).name)]
        return max(hits, key=lambda e: e.added, default=None)

    def find_id(self, image_id: str) -> Entry | None:
        """The stored image whose ID is ``image_id`` or starts with it (a truncated ID)."""
        check_image_id(image_id, truncated=True)
        hits = [e for e in self.entries() if e.id.startswith(image_id)
                and self._is_file(self.aci_path(e.id).name)]
        return hits[0] if len(hits) == 1 else None

    def add(self, aci: Path, asc: Path | None, *, image_id: str, name: str,
            labels: tuple[tuple[str, str], ...]) -> Entry:
        """Move a verified download into the store (once, however many fetch it at a time)."""
        from acbuild.trust.names import check_image_name

        check_image_name(name, "image store")
        with self.lock() as root:
            target, signature = self.aci_path(image_id).name, self.asc_path(image_id).name
            if self._is_file(target):
                aci.unlink()
            else:
                os.replace(aci, target, dst_dir_fd=root)
            if asc is not None:
                os.replace(asc, signature, dst_dir_fd=root)
            entry = Entry(id=image_id, name=name, labels=labels,
                          size=os.stat(target, dir_fd=root, follow_symlinks=False).st_size,
                          added=time.time(), signed=self._is_file(signature))
            others = [e for e in self.entries() if e.id != image_id]
            self._write_index(root, [*others, entry])
            return entry

    def gc(self, *, keep: int | None = None, older_than_days: float | None = None,
           now: float | None = None) -> tuple[Entry, ...]:
        """Remove images beyond the ``keep`` newest of each name, or added before a cut-off,
        and what killed downloads left in tmp/ (never one that is still held)."""
        now = time.time() if now is None else now
        with self.lock() as root:
            entries = sorted(self.entries(), key=lambda e: e.added, reverse=True)
            doomed: list[Entry] = []
            seen: dict[str, int] = {}
            for e in entries:
                seen[e.name] = seen.get(e.name, 0) + 1
                too_many = keep is not None and seen[e.name] > keep
                too_old = older_than_days is not None and e.added < now - older_than_days * 86400
                if too_many or too_old:
                    doomed.append(e)
            self._remove(root, doomed, entries)
            with contextlib.suppress(FileNotFoundError), \
                    self._dir.opened("tmp", create=False) as tmp:
                sweep_at(tmp, "", others_after=_STALE_TMP)
            return tuple(doomed)

    def remove(self, image_ids: Sequence[str]) -> tuple[Entry, ...]:
        """Remove these images (by full image ID); returns the entries removed."""
        with self.lock() as root:
            entries = list(self.entries())
            doomed = [e for e in entries if e.id in set(image_ids)]
            self._remove(root, doomed, entries)
            return tuple(doomed)

    def _remove(self, root: int, doomed: Sequence[Entry], entries: Sequence[Entry]) -> None:
        for e in doomed:
            for name in (self.aci_path(e.id).name, self.asc_path(e.id).name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=root)
        self._write_index(root, [e for e in entries if e not in doomed])

    def _write_index(self, root: int, entries: list[Entry]) -> None:
        """Written aside and renamed over index.json (under the store lock); a killed
        writer's ``.index.json.<tag>.…`` is swept by the next."""
        doc = {"version": _INDEX_VERSION,
               "images": [asdict(e) for e in sorted(entries, key=lambda e: (e.name, e.added))]}
        data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        sweep_at(root, f".{INDEX}.")

        def make() -> str:
            name = f".{INDEX}.{owner_tag()}.{secrets.token_hex(4)}"
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644, dir_fd=root))
            return name

        def discard(name: str) -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=root)

        with owned(make, discard) as temp:
            fd = os.open(temp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), 0o644)
            os.rename(temp, INDEX, src_dir_fd=root, dst_dir_fd=root)


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file")
        return f.read()


def _entry(doc: dict[str, object]) -> Entry:
    from acbuild.image.manifest_rules import is_ac_identifier

    labels = doc["labels"]
    if not isinstance(labels, list):
        raise TypeError("labels is not a list")
    image_id, name = str(doc["id"]), str(doc["name"])
    if not _FULL_ID.fullmatch(image_id) or not is_ac_identifier(name):
        raise ValueError(f"entry {image_id[:80]!r} {name[:80]!r} is not an image ID and name")
    return Entry(id=image_id, name=name,
                 labels=tuple((str(k), str(v)) for k, v in labels),
                 size=int(doc["size"]),  # type: ignore[call-overload] # JSON number
                 added=float(doc["added"]),  # type: ignore[arg-type] # JSON number
                 signed=bool(doc["signed"]))
