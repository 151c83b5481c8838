"""RemoteCache against the real registry, below the CLI: an entry exported by one store is
imported by another exactly (the same snapshot digest: owners, modes, links, device records),
and hostile entries a registry could hold are misses with a warning that leave nothing."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.cache import remote as remote_module
from acbuild.cache.cache import CacheStore, StepRecord
from acbuild.cache.remote import CacheRepo, RemoteCache, parse_cache_ref
from acbuild.cache.remotelayout import (
    CONFIG_TYPE,
    LAYER_TYPE,
    EntryConfig,
    EntryManifest,
    encode_config,
    encode_manifest,
    step_tag,
)
from acbuild.cache.snapshot import copy_tree_verified
from acbuild.distribution.registry.reference import RegistryError
from acbuild.distribution.registry.transport import TransportOptions
from acbuild.distribution.registry.upload import PushSession, Repository
from acbuild.fs.staging import DeviceNode, StagedRootfs
from acbuild.interop.export import MANIFEST_TYPE, Descriptor
from acbuild.report import NullReporter
from tests.support.httpserver import ScriptedHandler, threaded
from tests.support.registry import Registry, empty_registry

KEY = "sha256:" + hashlib.sha256(b"a step").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"another step").hexdigest()
MANIFEST = b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/remote"}'


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    yield from empty_registry(tmp_path, "http")


def session(reg: Registry) -> PushSession:
    return PushSession(reg.host, TransportOptions(insecure_registries=(reg.host,), retries=0),
                       None)


def store(where: Path) -> CacheStore:
    s = CacheStore(where)
    s.check()
    for sub in ("steps", "images", "tmp"):
        (where / sub).mkdir(exist_ok=True)
    return s


def sample_rootfs(root: Path) -> StagedRootfs:
    rootfs = StagedRootfs(root=root)
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "alias")
    os.symlink("tool", root / "bin" / "link")
    (root / "data").mkdir(mode=0o700)
    (root / "data" / "owned").write_text("by 1234\n")
    rootfs.set_owner("data/owned", 1234, 5678)
    rootfs.add_device("dev-null", DeviceNode(kind="chr", major=1, minor=3, mode=0o666), 0, 0)
    os.utime(root / "bin" / "tool", (1_600_000_000, 1_600_000_000))
    return rootfs


def remote(s: CacheStore, reg: Registry, push: PushSession, *, to: bool = False,
           frm: bool = True) -> tuple[RemoteCache, NullReporter]:
    repo = CacheRepo(registry=reg.host, repository="ci/cache")
    reporter = NullReporter()
    return RemoteCache(s, reporter, sources=[(repo, push)] if frm else [],
                       destination=(repo, push) if to else None), reporter


def test_an_exported_entry_imports_exactly(registry: Registry, tmp_path: Path) -> None:
    one, two = store(tmp_path / "one"), store(tmp_path / "two")
    one.put_step(KEY, MANIFEST, rootfs=sample_rootfs(tmp_path / "rootfs"), tree=None,
                 link=False)
    with session(registry) as push:
        exporter, _ = remote(one, registry, push, to=True, frm=False)
        assert exporter.export([KEY, KEY]) == (1, 0)
        assert exporter.export([KEY]) == (0, 1)
        importer, reporter = remote(two, registry, push)
        assert importer.fetch(KEY, "step 3") == f"registry://{registry.host}/ci/cache"
    assert reporter.warnings == []
    record = two.step(KEY)
    assert record is not None and record.manifest_json == MANIFEST
    a = one.restore(StepRecord(key=KEY, manifest_json=MANIFEST, tree=KEY), tmp_path / "a",
                    link=False)
    b = two.restore(record, tmp_path / "b", link=False)
    assert copy_tree_verified(a.root, tmp_path / "a2", link=False)[0] == \
        copy_tree_verified(b.root, tmp_path / "b2", link=False)[0]
    assert b.devices == a.devices
    assert b.owner("data/owned", os.lstat(b.root / "data/owned")) == (1234, 5678)
    assert os.lstat(b.root / "bin/tool").st_mtime == 1_600_000_000
    assert os.lstat(b.root / "bin/alias").st_ino == os.lstat(b.root / "bin/tool").st_ino
    assert not (b.root / "dev-null").exists()  # a record, never a node on the host


def push_entry(reg: Registry, tag_key: str, key: str, layer: bytes, diff_id: str) -> None:
    with session(reg) as push:
        repo = Repository(push, "ci/cache")
        config = encode_config(EntryConfig(key=key, manifest_json=MANIFEST, diff_id=diff_id))
        digests = []
        for data in (config, layer):
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            repo.push_bytes(data, digest)
            digests.append(digest)
        entry = EntryManifest(
            config=Descriptor(media_type=CONFIG_TYPE, digest=digests[0], size=len(config)),
            layer=Descriptor(media_type=LAYER_TYPE, digest=digests[1], size=len(layer)))
        repo.put_manifest(step_tag(tag_key), encode_manifest(key, entry), MANIFEST_TYPE)


def tar_gz(*members: tuple[tarfile.TarInfo, bytes]) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), "sha256:" + hashlib.sha256(
        raw.getvalue()).hexdigest()


def test_a_layer_that_climbs_out_is_a_miss(registry: Registry, tmp_path: Path) -> None:
    layer, diff_id = tar_gz((tarfile.TarInfo("../../../../escaped"), b"out"))
    push_entry(registry, KEY, KEY, layer, diff_id)
    s = store(tmp_path / "c")
    with session(registry) as push:
        cache, reporter = remote(s, registry, push)
        assert cache.fetch(KEY, "step 2") is None
    (warning,) = reporter.warnings
    assert "points outside the image" in warning
    assert "step 2" in warning and "a miss" in warning and "\n" not in warning
    assert s.step(KEY) is None
    assert list((tmp_path / "c" / "tmp").iterdir()) == []
    assert not any(p.name == "escaped" for p in tmp_path.rglob("escaped"))


def test_an_entry_of_another_key_is_a_miss(registry: Registry, tmp_path: Path) -> None:
    layer, diff_id = tar_gz((tarfile.TarInfo("file"), b"x"))
    push_entry(registry, KEY, OTHER, layer, diff_id)  # KEY's tag names OTHER's entry
    s = store(tmp_path / "c")
    with session(registry) as push:
        cache, reporter = remote(s, registry, push)
        assert cache.fetch(KEY, "step 2") is None
    assert "another step key" in reporter.warnings[0]
    assert s.step(KEY) is None


def test_a_wrong_diff_id_is_a_miss(registry: Registry, tmp_path: Path) -> None:
    layer, _ = tar_gz((tarfile.TarInfo("file"), b"x"))
    push_entry(registry, KEY, KEY, layer, "sha256:" + "0" * 64)
    s = store(tmp_path / "c")
    with session(registry) as push:
        cache, reporter = remote(s, registry, push)
        assert cache.fetch(KEY, "step 2") is None
    assert "diff_id" in reporter.warnings[0]
    assert s.step(KEY) is None


def test_a_missing_tag_is_a_quiet_miss_and_a_dead_registry_is_dropped(
        registry: Registry, tmp_path: Path) -> None:
    s = store(tmp_path / "c")
    with session(registry) as push:
        cache, reporter = remote(s, registry, push)
        assert cache.fetch(KEY, "step 2") is None
    assert reporter.warnings == []
    dead = PushSession("127.0.0.1:9", TransportOptions(insecure_registries=("127.0.0.1:9",),
                                                       retries=0), None)
    with dead:
        reporter = NullReporter()
        cache = RemoteCache(s, reporter, sources=[
            (CacheRepo(registry="127.0.0.1:9", repository="c"), dead)])
        assert cache.fetch(KEY, "step 2") is None
        assert cache.fetch(OTHER, "step 3") is None
    (warning,) = reporter.warnings  # said once, then not asked again
    assert "cannot reach" in warning


@pytest.mark.parametrize(("text", "message"), [
    ("registry://127.0.0.1:5000/ci/cache", None),
    ("registry://docker.io/me/cache", None),
    ("docker://127.0.0.1:5000/c", "registry://REGISTRY/REPO"),
    ("registry://127.0.0.1:5000/c:tag", "without a tag"),
    ("registry://127.0.0.1:5000/c@sha256:" + "a" * 64, "without a tag"),
    ("registry://127.0.0.1:5000/", "no repository"),
    ("registry://alice:S3CRETPW@127.0.0.1:5000/c", "cannot hold credentials"),
    ("docker://alice:S3CRETPW@127.0.0.1:5000/c", "cannot hold credentials"),
])
def test_cache_references(text: str, message: str | None) -> None:
    if message is None:
        repo = parse_cache_ref(text, "--cache-from")
        assert repo.url() == text
    else:
        with pytest.raises(RegistryError, match=message) as caught:
            parse_cache_ref(text, "--cache-from")
        assert "S3CRETPW" not in str(caught.value) + (caught.value.hint or "")


def test_an_entry_naming_a_digest_with_a_newline_is_a_miss(tmp_path: Path) -> None:
    """A hostile --cache-from (not a real registry: one would refuse to store it) answers
    every step tag with an entry for that key whose config digest ends in a newline."""
    good = "sha256:" + "a" * 64

    class Handler(ScriptedHandler):
        def do_GET(self) -> None:
            key = "sha256:" + self.path.rsplit("step-", 1)[-1]
            entry = EntryManifest(
                config=Descriptor(media_type=CONFIG_TYPE, digest=good, size=10),
                layer=Descriptor(media_type=LAYER_TYPE, digest=good, size=10))
            self.answer(200, encode_manifest(key, entry).replace(
                good.encode(), good.encode() + b"\\n", 1))

    with threaded(Handler) as host:
        s = store(tmp_path / "c")
        with PushSession(host, TransportOptions(insecure_registries=(host,), retries=0),
                         None) as push:
            reporter = NullReporter()
            cache = RemoteCache(s, reporter, sources=[
                (CacheRepo(registry=host, repository="c"), push)])
            assert cache.fetch(KEY, "step 3") is None
            assert cache.fetch(OTHER, "step 4") is None  # still asked: an entry, not the host
    assert len(reporter.warnings) == 2
    assert "the cache entry of step 3: its config has no valid sha256 digest" in \
        reporter.warnings[0]


def test_an_entry_rewritten_after_the_export_restored_it_is_not_pushed(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Red-team RC-7: the export restored the entry (hashing its files), then packed the
    layer by reading them again by path: a file rewritten in between (its mtime put back)
    was pushed under the step's key. The layer is now written from the checked walk: the
    mismatch is a warning, the entry is not exported, and the local one is discarded."""
    one, two = store(tmp_path / "one"), store(tmp_path / "two")
    one.put_step(KEY, MANIFEST, rootfs=sample_rootfs(tmp_path / "rootfs"), tree=None,
                 link=False)
    victim = one.root / "steps" / KEY.split(":")[1] / "tree" / "data" / "owned"
    real = remote_module.write_layer

    def rewrite_then_pack(rootfs: StagedRootfs, *args: object) -> tuple[Descriptor, str]:
        mtime = victim.stat().st_mtime_ns
        with open(victim, "r+b") as f:
            f.write(b"EVIL")  # same size
        os.utime(victim, ns=(mtime, mtime))
        return real(rootfs, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(remote_module, "write_layer", rewrite_then_pack)
    with session(registry) as push:
        exporter, reporter = remote(one, registry, push, to=True, frm=False)
        assert exporter.export([KEY]) == (0, 0)
        assert len(reporter.warnings) == 1 and "not exporting it" in reporter.warnings[0]
        importer, _ = remote(two, registry, push)
        assert importer.fetch(KEY, "step 3") is None
    assert one.step(KEY) is None  # discarded: the next build rebuilds it
