"""Registries: which repository of a registry this user has pushed each blob to, so a later
push of the same blob to another repository there is a mount, not an upload.

``$XDG_CACHE_HOME/acbuild-py/pushed-blobs.json``: ``{"version": 1, "registries": {HOST:
{digest: repository}}}``, the most recent ``LIMIT`` blobs a registry. It holds hints only: a
repository that no longer has the blob (or never did: the file is the user's to edit) costs a
refused mount and the blob is uploaded; nothing is trusted because of it. A file that cannot be
read is an empty memory, and one that cannot be written is not an error.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from acbuild.distribution.registry.reference import DIGEST
from acbuild.errors import AcbuildError
from acbuild.fs.atomic import atomic_write
from acbuild.fs.private import open_private_dir

LIMIT = 4096  # blobs remembered per registry
_FILE_LIMIT = 16 << 20


def memory_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home())
                                                 / ".cache")
    return Path(base) / "acbuild-py" / "pushed-blobs.json"


@dataclass(slots=True)
class PushMemory:
    path: Path
    registries: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> PushMemory:
        memory = cls(path)
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read(_FILE_LIMIT + 1)[:_FILE_LIMIT])
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return memory
        if not isinstance(doc, dict) or doc.get("version") != 1 or \
                not isinstance(registries := doc.get("registries"), dict):
            return memory
        for host, blobs in registries.items():
            if isinstance(host, str) and isinstance(blobs, dict):
                memory.registries[host] = {d: r for d, r in blobs.items()
                                           if isinstance(r, str) and DIGEST.fullmatch(d)}
        return memory

    def sources(self, registry: str, digest: str, repository: str) -> tuple[str, ...]:
        """Repositories to mount ``digest`` from when pushing it to ``repository``."""
        known = self.registries.get(registry, {}).get(digest)
        return (known,) if known is not None and known != repository else ()

    def remember(self, registry: str, repository: str, digests: Iterable[str]) -> None:
        blobs = self.registries.setdefault(registry, {})
        for digest in digests:
            blobs.pop(digest, None)  # re-inserted last: the most recent survive the limit
            blobs[digest] = repository
        for old in list(blobs)[: max(0, len(blobs) - LIMIT)]:
            del blobs[old]

    def save(self) -> None:
        with contextlib.suppress(OSError, AcbuildError):
            # Resolved as the stores are: a symlink another user planted at (or on the way
            # to) $XDG_CACHE_HOME/acbuild-py would have root write it in their target.
            os.close(open_private_dir(self.path.parent, what="cache directory"))
            with atomic_write(self.path, mode=0o600) as f:
                f.write(json.dumps({"version": 1, "registries": self.registries},
                                   sort_keys=True).encode())
