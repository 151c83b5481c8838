"""runmounts.prepared takes a step's cache locks in one order, by id, whatever order the
RUN lists them in (the red team's RM-2: two builds listing them in opposite orders could
each hold one and wait for the other)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from acbuild.acfile.context import BuildContext
from acbuild.acfile.parse import parse_text
from acbuild.build.runmounts import MountInputs, prepared
from acbuild.cache.cache import CacheStore
from acbuild.cache.mountcache import MountCache, Owner, Sharing
from acbuild.fs.staging import StagedRootfs
from acbuild.image.manifest import default_manifest
from acbuild.sandbox.runstep import RunContext


class Recording(MountCache):
    def __init__(self, root: Path) -> None:
        store = CacheStore(root)
        super().__init__(store.check, root)
        self.order: list[str] = []

    @contextlib.contextmanager
    def use(self, cache_id: str, sharing: Sharing, owner: Owner,
            on_wait: object = None) -> Iterator[Path]:
        self.order.append(cache_id)
        with super().use(cache_id, sharing, owner) as data:
            yield data


def test_cache_locks_are_taken_by_id(tmp_path: Path) -> None:
    (run,) = parse_text("RUN --mount=type=secret,id=s --mount=type=cache,target=/z,id=b "
                        "--mount=type=bind,target=/ctx --mount=type=cache,target=/y,id=a "
                        "--mount=type=cache,target=/x,id=c,sharing=locked true")
    (tmp_path / "root").mkdir()
    (tmp_path / "ctx").mkdir()
    cache = Recording(tmp_path / "cache")
    ctx = RunContext(rootfs=StagedRootfs(root=tmp_path / "root"), manifest=default_manifest(),
                     epoch=0)
    inputs = MountInputs(context=BuildContext(tmp_path / "ctx"), cache=cache, secrets={},
                         stage_root=lambda name: tmp_path)
    with prepared(run, ctx, inputs) as ready:  # type: ignore[arg-type]
        assert [m.target for m in ready.mounts] == ["/y", "/z", "/x", "/ctx"]
    assert cache.order == ["a", "b", "c"]
