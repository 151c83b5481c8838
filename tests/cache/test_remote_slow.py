"""RemoteCache against a --cache-from that answers too slowly (red-team RS-3): a real HTTP
server on 127.0.0.1 serving a valid entry, its layer paced so it would take seconds; each
import has a budget, and running out of it gives the cache up for the build, once."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.cache.cache import CacheStore
from acbuild.cache.remote import CacheRepo, ImportBudget, RemoteCache
from acbuild.cache.remotelayout import (
    CONFIG_TYPE,
    EntryConfig,
    EntryManifest,
    encode_config,
    encode_manifest,
    step_tag,
)
from acbuild.distribution.registry.transport import TransportOptions
from acbuild.distribution.registry.upload import PushSession
from acbuild.fs.staging import StagedRootfs
from acbuild.interop.export import Descriptor, write_layer
from acbuild.report import NullReporter
from tests.support.httpserver import Server, serve_tmp

KEY = "sha256:" + hashlib.sha256(b"a slow step").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"another step").hexdigest()
MANIFEST = b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/slow"}'
REPO = "ci/cache"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Server]:
    yield from serve_tmp(tmp_path)


def store(where: Path) -> CacheStore:
    s = CacheStore(where)
    s.check()
    for sub in ("steps", "images", "tmp"):
        (where / sub).mkdir(exist_ok=True)
    return s


def serve_entry(server: Server, tmp_path: Path, *, claim: int = 1) -> str:
    """A valid entry for KEY laid out as a registry serves it; returns its layer's path.
    The tree is one file of 448 KiB of random bytes, so the gzip layer is 7 paced pieces.
    ``claim``: the manifest says the layer is that many times its size (a lie)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data").write_bytes(os.urandom(448 << 10))
    blobs = server.root / "v2" / REPO / "blobs"
    blobs.mkdir(parents=True)
    layer, diff_id = write_layer(StagedRootfs(root=tree), blobs, 1_600_000_000, None)
    os.rename(blobs / layer.digest.split(":", 1)[1], blobs / layer.digest)
    config = encode_config(EntryConfig(key=KEY, manifest_json=MANIFEST, diff_id=diff_id))
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    (blobs / config_digest).write_bytes(config)
    manifests = server.root / "v2" / REPO / "manifests"
    manifests.mkdir()
    (manifests / step_tag(KEY)).write_bytes(encode_manifest(KEY, EntryManifest(
        config=Descriptor(media_type=CONFIG_TYPE, digest=config_digest, size=len(config)),
        layer=Descriptor(media_type=layer.media_type, digest=layer.digest,
                         size=layer.size * claim))))
    return f"/v2/{REPO}/blobs/{layer.digest}"


def cache_of(server: Server, s: CacheStore, push: PushSession,
             budget: ImportBudget) -> tuple[RemoteCache, NullReporter]:
    reporter = NullReporter()
    repo = CacheRepo(registry=f"127.0.0.1:{server.port}", repository=REPO)
    return RemoteCache(s, reporter, sources=[(repo, push)], budget=budget), reporter


def session(server: Server) -> PushSession:
    host = f"127.0.0.1:{server.port}"
    return PushSession(host, TransportOptions(insecure_registries=(host,), retries=0), None)


@pytest.mark.parametrize("claim", [1, 1000])
def test_a_cache_that_trickles_an_entry_is_given_up_on(http_server: Server, tmp_path: Path,
                                                       claim: int) -> None:
    """``claim`` 1000: the entry says its layer is 1000 times bigger, which must buy no time
    (the budget counts what arrives, not what the entry claims)."""
    layer_path = serve_entry(http_server, tmp_path, claim=claim)
    budget = ImportBudget(grace=0.5, min_rate=1 << 20)  # 0.5 s + 64 KiB a 1/16 s
    with session(http_server) as push:
        if claim == 1:  # the entry is good: served at full speed, it is a hit
            fast, reporter = cache_of(http_server, store(tmp_path / "fast"), push, budget)
            assert fast.fetch(KEY, "step 2") is not None
            assert reporter.warnings == []

        # Paced at 1 s a 64 KiB piece it would take about 7 s: given up on at the second
        # piece (1 s; 0.5 s + 128 KiB at 1 MiB/s allowed).
        http_server.behaviour.paced[layer_path] = 1.0
        s = store(tmp_path / "slow")
        slow, reporter = cache_of(http_server, s, push, budget)
        started = time.monotonic()
        assert slow.fetch(KEY, "step 2") is None
        assert time.monotonic() - started < 4.0
        asked = len(http_server.behaviour.requests)
        assert slow.fetch(OTHER, "step 3") is None  # the cache is not asked again
        assert len(http_server.behaviour.requests) == asked
    (warning,) = reporter.warnings
    assert warning.startswith(f"registry://127.0.0.1:{http_server.port}/{REPO}: it sent ")
    assert "too slowly to be worth waiting for; building step 2, and not using this cache " \
           "for the rest of the build" in warning
    assert s.step(KEY) is None
    assert os.listdir(tmp_path / "slow" / "tmp") == []  # the half-imported tree is gone


def test_a_slow_cache_within_the_budget_is_used(http_server: Server, tmp_path: Path) -> None:
    """Slow is not too slow: paced to about 1.4 s, within a 10 s budget, the entry is a hit."""
    http_server.behaviour.paced[serve_entry(http_server, tmp_path)] = 0.2
    s = store(tmp_path / "c")
    with session(http_server) as push:
        cache, reporter = cache_of(http_server, s, push, ImportBudget(grace=10.0))
        assert cache.fetch(KEY, "step 2") == f"registry://127.0.0.1:{http_server.port}/{REPO}"
    assert reporter.warnings == []
    assert s.step(KEY) is not None
