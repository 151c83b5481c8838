"""RemoteCache against a --cache-from that answers too slowly (red-team RS-3, PS-1): a real
HTTP server on 127.0.0.1 serving a valid entry, its layer paced so it would take seconds, or
its headers or body trickled a byte at a time (each byte within the read timeout); the cache
has a budget over the build, a wall-clock deadline under every request, and running out of
it gives the cache up for the build, once."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.cache.cache import CacheStore
from acbuild.cache.remote import CacheRepo, ImportBudget, RemoteCache, open_remote
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
from tests.support.trickle import Answer, TrickleServer, answer, padded, trickle_server

KEY = "sha256:" + hashlib.sha256(b"a slow step").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"another step").hexdigest()
MANIFEST = b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/slow"}'
REPO = "ci/cache"

# The budgets here are rates and seconds of wall time (a good entry must still arrive
# in time): run alone (.ci/run's serial part), not beside other tests' load.
pytestmark = pytest.mark.serial


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Server]:
    yield from serve_tmp(tmp_path)


def store(where: Path) -> CacheStore:
    s = CacheStore(where)
    s.check()
    for sub in ("steps", "images", "tmp"):
        (where / sub).mkdir(exist_ok=True)
    return s


def serve_entry(server: Server | Path, tmp_path: Path, *, claim: int = 1) -> str:
    """A valid entry for KEY laid out as a registry serves it; returns its layer's path.
    The tree is one file of 448 KiB of random bytes, so the gzip layer is 7 paced pieces.
    ``claim``: the manifest says the layer is that many times its size (a lie)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data").write_bytes(os.urandom(448 << 10))
    root = server if isinstance(server, Path) else server.root
    blobs = root / "v2" / REPO / "blobs"
    blobs.mkdir(parents=True)
    layer, diff_id = write_layer(StagedRootfs(root=tree), blobs, 1_600_000_000, None)
    os.rename(blobs / layer.digest.split(":", 1)[1], blobs / layer.digest)
    config = encode_config(EntryConfig(key=KEY, manifest_json=MANIFEST, diff_id=diff_id))
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    (blobs / config_digest).write_bytes(config)
    manifests = root / "v2" / REPO / "manifests"
    manifests.mkdir()
    (manifests / step_tag(KEY)).write_bytes(encode_manifest(KEY, EntryManifest(
        config=Descriptor(media_type=CONFIG_TYPE, digest=config_digest, size=len(config)),
        layer=Descriptor(media_type=layer.media_type, digest=layer.digest,
                         size=layer.size * claim))))
    return f"/v2/{REPO}/blobs/{layer.digest}"


def cache_of(server: Server | TrickleServer, s: CacheStore, push: PushSession,
             budget: ImportBudget) -> tuple[RemoteCache, NullReporter]:
    reporter = NullReporter()
    repo = CacheRepo(registry=f"127.0.0.1:{server.port}", repository=REPO)
    return RemoteCache(s, reporter, sources=[(repo, push)], budget=budget), reporter


def session(server: Server | TrickleServer, *, timeout: float = 60.0) -> PushSession:
    host = f"127.0.0.1:{server.port}"
    return PushSession(host, TransportOptions(insecure_registries=(host,), retries=0,
                                              timeout=timeout), None)


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


# ---- trickles (PS-1): the budget is a deadline, not a check made when a byte arrives ------

# what open_remote gives a --cache-from session (each read may take 15 s)
LOOKUP = 15.0


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    with trickle_server() as s:
        yield s


def serve_trickled(server: TrickleServer, tmp_path: Path) -> dict[str, bytes]:
    """A valid entry for KEY, every file of it answered at once; returns path -> bytes."""
    root = tmp_path / "entry"
    serve_entry(root, tmp_path)
    files = {"/" + str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
             if p.is_file()}
    for path, data in files.items():
        server.answers[path] = answer(200, body=data)
    return files


def layer_path(files: dict[str, bytes]) -> str:
    (path,) = [p for p, data in files.items() if data[:2] == b"\x1f\x8b"]
    return path


def manifest_path(key: str) -> str:
    return f"/v2/{REPO}/manifests/{step_tag(key)}"


def given_up(cache: RemoteCache, server: TrickleServer, reporter: NullReporter,
             s: CacheStore, tmp_path: Path, started: float, *, within: float,
             says: str) -> None:
    assert time.monotonic() - started < within
    asked = len(server.requests)
    assert cache.fetch(OTHER, "step 9") is None  # not asked again
    assert len(server.requests) == asked
    (warning,) = reporter.warnings
    assert warning.startswith(f"registry://{server.host}/{REPO}: "), warning
    assert says in warning, warning
    assert "not using this cache for the rest of the build" in warning
    assert s.step(KEY) is None
    assert os.listdir(tmp_path / "c" / "tmp") == []


@pytest.mark.parametrize("part", ["manifest head", "config silence", "layer silence"])
def test_a_trickle_is_cut_off_at_the_budget(trickle: TrickleServer, tmp_path: Path,
                                            part: str) -> None:
    """Each byte within the 15 s read timeout; before the deadline, a manifest's headers
    trickled a byte each 50 ms held the build 75 s, and a config or layer that sends a byte
    each 10 s held it until the next byte came, for every byte."""
    files = serve_trickled(trickle, tmp_path)
    config = next(p for p, d in files.items() if d.startswith(b'{"diff_id"'))
    slow: dict[str, Answer] = {
        "manifest head": padded(200, body=files[manifest_path(KEY)], pad=1500,
                                head_pause=0.05),
        "config silence": answer(200, body=files[config], body_pause=10.0),
        "layer silence": answer(200, body=files[layer_path(files)], body_pause=10.0),
    }
    target = {"manifest head": manifest_path(KEY), "config silence": config,
              "layer silence": layer_path(files)}[part]
    trickle.answers[target] = slow[part]
    s = store(tmp_path / "c")
    with session(trickle, timeout=LOOKUP) as push:
        cache, reporter = cache_of(trickle, s, push, ImportBudget(grace=1.0, per_lookup=0.0))
        started = time.monotonic()
        assert cache.fetch(KEY, "step 2") is None
        given_up(cache, trickle, reporter, s, tmp_path, started, within=3.0,
                 says="too slowly to be worth waiting for; building step 2")


def test_many_lookups_each_under_a_limit_add_up_to_the_budget(trickle: TrickleServer,
                                                              tmp_path: Path) -> None:
    """Every lookup's 404 takes 0.4 s (headers trickled): each one far within any per-request
    limit, but the budget is the build's, so the cache is given up after a few, not after
    every step has paid 0.4 s."""
    keys = ["sha256:" + hashlib.sha256(b"step %d" % n).hexdigest() for n in range(10)]
    for key in keys:
        trickle.answers[manifest_path(key)] = padded(404, pad=400, head_pause=0.001)
    s = store(tmp_path / "c")
    with session(trickle, timeout=LOOKUP) as push:
        cache, reporter = cache_of(trickle, s, push, ImportBudget(grace=1.0, per_lookup=0.1))
        started = time.monotonic()
        for n, key in enumerate(keys):
            assert cache.fetch(key, f"step {n}") is None
    assert time.monotonic() - started < 3.0
    assert len(trickle.requests) < 6
    (warning,) = reporter.warnings
    assert "too slowly to be worth waiting for" in warning


@pytest.mark.parametrize("part", ["redirected head", "layer stall"])
def test_a_registry_that_stalls_a_request_gives_the_cache_up(
        trickle: TrickleServer, tmp_path: Path, part: str) -> None:
    """Within the budget, but past a request's own limits (the session's timeout: a head
    within it, PROGRESS_BYTES of body in each): the cache is given up too, not asked again
    for every step."""
    files = serve_trickled(trickle, tmp_path)
    layer = layer_path(files)
    if part == "redirected head":
        trickle.answers[layer] = answer(307, [("Location", f"{trickle.url}/elsewhere")])
        trickle.answers["/elsewhere"] = padded(200, body=files[layer], pad=1500,
                                               head_pause=0.05)
    else:
        trickle.answers[layer] = answer(200, body=files[layer], body_pause=0.2)
    s = store(tmp_path / "c")
    with session(trickle, timeout=1.0) as push:
        cache, reporter = cache_of(trickle, s, push, ImportBudget(grace=30.0))
        started = time.monotonic()
        assert cache.fetch(KEY, "step 2") is None
        given_up(cache, trickle, reporter, s, tmp_path, started, within=3.0,
                 says=f"registry {trickle.host}: GET ")


# The CLI with the lookup limit at 2 s, so the build below need not wait out 15 of them
# (test_a_cache_from_lookup_is_held_to_15_s checks the real limit where it is applied).
SHORT_LOOKUPS = ("import sys; import acbuild.cache.remote as r; r._LOOKUP_TIMEOUT = 2.0; "
                 "from acbuild.cli.main import main; sys.argv[0] = 'acbuild-py'; main()")


def test_a_build_whose_cache_trickles_builds_after_the_lookup_limit(
        trickle: TrickleServer, hello_context: Path, tmp_path: Path) -> None:
    """End to end: every answer's headers trickled (75 s each, every byte on time). The
    first lookup gives up at the time a lookup's answer may take, the cache is dropped
    with one warning naming it and what timed out, and the build goes on without it."""
    trickle.otherwise = padded(404, pad=1500, head_pause=0.05)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", SHORT_LOOKUPS, "build", str(hello_context / "Acfile"),
         "-o", str(tmp_path / "h.aci"), "--progress=plain", "--insecure-registry", trickle.host,
         "--cache-from", f"registry://{trickle.host}/{REPO}"],
        env={**os.environ, "CI": "true", "XDG_CACHE_HOME": str(tmp_path / "cache")},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 2.0 + 20
    assert "Traceback" not in proc.stderr
    (warning,) = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert (f"registry://{trickle.host}/{REPO}: registry {trickle.host}: GET "
            f"http://{trickle.host}/v2/{REPO}/manifests/step-") in warning
    assert ("timed out: no complete answer (status line and headers) within 2 s; not using "
            "this cache for the rest of the build") in warning
    assert len(trickle.requests) == 1


def test_a_cache_from_lookup_is_held_to_15_s(tmp_path: Path) -> None:
    """What --cache-from's sessions get: each answer within 15 s and one retry at most (not
    the 60 s and the retries a push depends on), while --cache-to's session keeps them."""
    transport = TransportOptions()
    assert transport.timeout > 15 and transport.retries > 1  # what a push may take
    with open_remote(store(tmp_path / "c"), NullReporter(),
                     sources=[CacheRepo(registry="127.0.0.1:1", repository=REPO)],
                     destination=CacheRepo(registry="127.0.0.1:2", repository=REPO),
                     transport=transport, environ={}) as cache:
        assert cache is not None and cache.destination is not None
        (source,) = cache.sources
        assert (source.session.options.timeout, source.session.options.retries) == (15.0, 1)
        assert cache.destination[1].options == transport


def test_a_cache_that_fails_two_stages_at_once_is_warned_about_once(
        trickle: TrickleServer, tmp_path: Path) -> None:
    """RR-7: stages look up in threads (build -j 2); both lookups time out together, and the
    cache is given up with one warning, not one per stage."""
    for key in (KEY, OTHER):
        trickle.answers[manifest_path(key)] = padded(404, pad=1500, head_pause=0.05)
    s = store(tmp_path / "c")
    with session(trickle, timeout=1.0) as push:
        cache, reporter = cache_of(trickle, s, push, ImportBudget(grace=30.0))
        together = threading.Barrier(2)

        def look_up(key: str, what: str) -> str | None:
            together.wait()
            return cache.fetch(key, what)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            found = list(pool.map(look_up, (KEY, OTHER), ("step 2", "step 3")))
    assert found == [None, None]
    assert len(trickle.requests) == 2  # both were asking when it failed
    (warning,) = reporter.warnings
    assert "not using this cache for the rest of the build" in warning
