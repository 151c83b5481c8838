"""Fetch: the local image store — verified images by image ID, with an index of names and labels.

``<store>/sha512-<hex>.aci`` (+ ``.asc``) and ``index.json``; every change is made under an
fcntl lock on ``<store>/.lock`` and written atomically, so concurrent fetches store an image once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from acbuild.errors import FetchError
from acbuild.fs.atomic import atomic_write
from acbuild.fs.private import private_dir

# The name rules (acbuild.image.manifest_rules, acbuild.trust.names) are imported by the
# methods that check names: `pull` only locates the store, and its whole run is short.

INDEX = "index.json"
_INDEX_VERSION = 1
_FULL_ID = re.compile(r"sha512-[0-9a-f]{128}")
_ID_PREFIX = re.compile(r"sha512-[0-9a-f]{32,128}")  # a dependency may give a truncated ID


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

    @classmethod
    def locate(cls, explicit: Path | None = None,
               env: Mapping[str, str] | None = None) -> ImageStore:
        return cls(explicit if explicit is not None else default_location(env))

    def check(self) -> None:
        """Make the store, or refuse one another user could write into: an image planted
        there would be used as if it had been fetched and verified."""
        private_dir(self.root, what="image store")

    def aci_path(self, image_id: str) -> Path:
        return self.root / f"{check_image_id(image_id)}.aci"

    def asc_path(self, image_id: str) -> Path:
        return self.root / f"{check_image_id(image_id)}.aci.asc"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.check()
        with (self.root / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def temp_dir(self) -> Path:
        """A place for downloads on the store's file system, so storing is a rename."""
        self.check()
        tmp = self.root / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        return tmp

    def entries(self) -> tuple[Entry, ...]:
        path = self.root / INDEX
        if not self.root.exists():
            return ()
        self.check()
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return tuple(_entry(e) for e in doc["images"])
        except FileNotFoundError:
            return ()
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FetchError(f"image store index {path} is unreadable: {e}",
                             hint="remove it; images are fetched again") from None

    def find(self, name: str, labels: tuple[tuple[str, str], ...]) -> Entry | None:
        """The newest stored image with this name carrying all these labels."""
        from acbuild.trust.names import check_image_name

        check_image_name(name, "image store")
        hits = [e for e in self.entries() if e.matches(name, labels)
                and self.aci_path(e.id).is_file()]
        return max(hits, key=lambda e: e.added, default=None)

    def find_id(self, image_id: str) -> Entry | None:
        """The stored image whose ID is ``image_id`` or starts with it (a truncated ID)."""
        check_image_id(image_id, truncated=True)
        hits = [e for e in self.entries() if e.id.startswith(image_id)
                and self.aci_path(e.id).is_file()]
        return hits[0] if len(hits) == 1 else None

    def add(self, aci: Path, asc: Path | None, *, image_id: str, name: str,
            labels: tuple[tuple[str, str], ...]) -> Entry:
        """Move a verified download into the store (once, however many fetch it at a time)."""
        from acbuild.trust.names import check_image_name

        check_image_name(name, "image store")
        with self.lock():
            target = self.aci_path(image_id)
            if target.is_file():
                aci.unlink()
            else:
                os.replace(aci, target)
            if asc is not None:
                os.replace(asc, self.asc_path(image_id))
            entry = Entry(id=image_id, name=name, labels=labels, size=target.stat().st_size,
                          added=time.time(), signed=self.asc_path(image_id).is_file())
            others = [e for e in self.entries() if e.id != image_id]
            self._write_index([*others, entry])
            return entry

    def gc(self, *, keep: int | None = None, older_than_days: float | None = None,
           now: float | None = None) -> tuple[Entry, ...]:
        """Remove images beyond the ``keep`` newest of each name, or added before a cut-off."""
        now = time.time() if now is None else now
        with self.lock():
            entries = sorted(self.entries(), key=lambda e: e.added, reverse=True)
            doomed: list[Entry] = []
            seen: dict[str, int] = {}
            for e in entries:
                seen[e.name] = seen.get(e.name, 0) + 1
                too_many = keep is not None and seen[e.name] > keep
                too_old = older_than_days is not None and e.added < now - older_than_days * 86400
                if too_many or too_old:
                    doomed.append(e)
            self._remove(doomed, entries)
            shutil.rmtree(self.root / "tmp", ignore_errors=True)
            return tuple(doomed)

    def remove(self, image_ids: Sequence[str]) -> tuple[Entry, ...]:
        """Remove these images (by full image ID); returns the entries removed."""
        with self.lock():
            entries = list(self.entries())
            doomed = [e for e in entries if e.id in set(image_ids)]
            self._remove(doomed, entries)
            return tuple(doomed)

    def _remove(self, doomed: Sequence[Entry], entries: Sequence[Entry]) -> None:
        for e in doomed:
            self.aci_path(e.id).unlink(missing_ok=True)
            self.asc_path(e.id).unlink(missing_ok=True)
        self._write_index([e for e in entries if e not in doomed])

    def _write_index(self, entries: list[Entry]) -> None:
        doc = {"version": _INDEX_VERSION,
               "images": [asdict(e) for e in sorted(entries, key=lambda e: (e.name, e.added))]}
        with atomic_write(self.root / INDEX, mode=0o644) as f:
            f.write(json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")


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
