"""Pulling from the real registry into the blob store: manifests, indexes and platforms,
Docker schema 2, digests checked while blobs stream, and hostile answers through the proxy
(wrong bytes, cut-off blobs, length lies, oversized or unsupported manifests)."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from acbuild.distribution.registry.blobstore import BlobStore
from acbuild.distribution.registry.platform import Platform, parse_platform
from acbuild.distribution.registry.pull import DOCKER_MANIFEST, OCI_MANIFEST, PulledImage, pull
from acbuild.distribution.registry.reference import RegistryError, parse_reference
from acbuild.distribution.registry.transport import Session, TransportOptions
from acbuild.report import NullReporter
from tests.support.ocifixtures import Config, directory, file, make_layout
from tests.support.registry import Registry, TamperProxy, multi_platform_layout

pytest_plugins = ("tests.support.registryfixtures",)

AMD64 = Platform(os="linux", architecture="amd64")
FAST = {"backoff": 0.01, "retries": 1}


def _pull(host: str, name: str, store: BlobStore, platform: Platform = AMD64) -> PulledImage:
    options = TransportOptions(insecure_registries=(host,), **FAST)  # type: ignore[arg-type]
    ref = parse_reference(f"docker://{host}/{name}")
    with Session(ref.registry, options, None) as session:
        return pull(ref, session=session, store=store, platform=platform,
                    reporter=NullReporter())


def _leftovers(store: BlobStore) -> list[str]:
    """Files in the blob directory that are not whole, verified blobs."""
    directory = store.root / "blobs" / "sha256"
    out = []
    for p in directory.iterdir() if directory.exists() else []:
        if hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
            out.append(p.name)
    return out


def _layer_digest(busybox: Path) -> str:
    index = json.loads((busybox / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((busybox / "blobs" / "sha256" / manifest_digest).read_text())
    return str(manifest["layers"][0]["digest"])


def test_pull_stores_verified_blobs_and_a_second_pull_transfers_none(
        http_registry: Registry, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    first = _pull(http_registry.host, "library/busybox:1.36", store)
    assert first.transferred == 2  # config and the one layer
    assert first.manifest.get("mediaType", OCI_MANIFEST) == OCI_MANIFEST
    for desc in (first.config, *first.layers):
        assert hashlib.sha256(store.path(desc.digest).read_bytes()).hexdigest() == \
            desc.digest.split(":")[1]
    gets = len(http_registry.blob_gets())
    second = _pull(http_registry.host, "library/busybox:1.36", store)
    assert second.transferred == 0 and second.digest == first.digest
    assert len(http_registry.blob_gets()) == gets


def test_pinned_pull_stored_asks_the_registry_nothing(http_registry: Registry,
                                                      tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    first = _pull(http_registry.host, "library/busybox:1.36", store)
    before = len(http_registry.access_log())
    again = _pull(http_registry.host, f"library/busybox@{first.digest}", store)
    assert again.transferred == 0
    assert len(http_registry.access_log()) == before


def test_concurrent_pulls_of_one_blob_are_safe(http_registry: Registry, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    results: list[PulledImage] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(_pull(http_registry.host, "library/busybox:1.36", store))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4
    assert _leftovers(store) == []
    assert {r.digest for r in results} == {results[0].digest}


def test_docker_schema_2_image(http_registry: Registry, busybox_oci: Path,
                               tmp_path: Path) -> None:
    http_registry.push(f"oci:{busybox_oci}:1.36", "library/busybox:v2s2", fmt="v2s2")
    pulled = _pull(http_registry.host, "library/busybox:v2s2", BlobStore(tmp_path / "s"))
    assert pulled.manifest["mediaType"] == DOCKER_MANIFEST
    assert pulled.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.fixture
def multi(http_registry: Registry, tmp_path: Path) -> dict[str, str]:
    """library/multi:1 — an index of linux/amd64, linux/arm64 and linux/arm/v7 images, each
    with /etc/platform naming itself; returns platform → image manifest digest."""
    digests = {}
    images = []
    for plat in ("linux/amd64", "linux/arm64", "linux/arm/v7"):
        os_name, arch, *variant = plat.split("/")
        layout = tmp_path / f"img-{arch}"
        make_layout(layout, "latest", [[directory("etc"), file("etc/platform", plat)]],
                    Config(os=os_name, architecture=arch))
        images.append((os_name, arch, variant[0] if variant else None, layout))
        index = json.loads((layout / "index.json").read_text())
        digests[plat] = index["manifests"][0]["digest"]
    layout = multi_platform_layout(tmp_path / "multi", "1", images)
    http_registry.push(f"oci:{layout}:1", "library/multi:1", all_images=True)
    return digests


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64", "linux/arm/v7"])
def test_index_picks_the_platform(http_registry: Registry, multi: dict[str, str],
                                  tmp_path: Path, platform: str) -> None:
    pulled = _pull(http_registry.host, "library/multi:1", BlobStore(tmp_path / "s"),
                   parse_platform(platform))
    assert pulled.digest == multi[platform]
    assert pulled.index_digest is not None and pulled.index_digest != pulled.digest


def test_index_without_the_platform_says_what_it_has(http_registry: Registry,
                                                     multi: dict[str, str],
                                                     tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as e:
        _pull(http_registry.host, "library/multi:1", BlobStore(tmp_path / "s"),
              parse_platform("linux/s390x"))
    assert "no image for linux/s390x" in e.value.message
    assert "linux/amd64, linux/arm/v7, linux/arm64" in e.value.message
    assert "--platform" in (e.value.hint or "")


def test_unknown_tag(http_registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as e:
        _pull(http_registry.host, "library/busybox:9.9", BlobStore(tmp_path / "s"))
    assert "no such image" in e.value.message and "'9.9'" in e.value.message


def test_unknown_repository(http_registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as e:
        _pull(http_registry.host, "nobody/nothing:1", BlobStore(tmp_path / "s"))
    assert "no such image" in e.value.message


@pytest.mark.parametrize("platform", ["linux", "a/b/c/d", "linux/", "linux/amd 64"])
def test_bad_platform(platform: str) -> None:
    with pytest.raises(RegistryError, match="OS/ARCH"):
        parse_platform(platform)


# ---- hostile answers (through the tampering proxy) -----------------------------------


def test_wrong_bytes_are_refused_and_nothing_is_left(proxy: TamperProxy, busybox_oci: Path,
                                                     tmp_path: Path) -> None:
    layer = _layer_digest(busybox_oci)
    proxy.tampering.corrupt.add(layer)
    store = BlobStore(tmp_path / "s")
    with pytest.raises(RegistryError) as e:
        _pull(proxy.host, "library/busybox:1.36", store)
    assert "digest mismatch" in e.value.message and layer in e.value.message
    assert "\n" not in e.value.message
    assert not store.path(layer).exists() and _leftovers(store) == []
    assert not [p for p in store.path(layer).parent.iterdir() if p.name.startswith(".")]


def test_truncated_blob_is_refused_and_nothing_is_left(proxy: TamperProxy, busybox_oci: Path,
                                                       tmp_path: Path) -> None:
    layer = _layer_digest(busybox_oci)
    proxy.tampering.truncate.add(layer)
    store = BlobStore(tmp_path / "s")
    with pytest.raises(RegistryError) as e:
        _pull(proxy.host, "library/busybox:1.36", store)
    assert "broke off" in e.value.message or "truncated" in e.value.message
    assert not store.path(layer).exists()
    assert not [p for p in store.path(layer).parent.iterdir() if p.name.startswith(".")]


def _manifest_with(layers: list[dict[str, object]], media: str = OCI_MANIFEST) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "0" * 64, "size": 2},
                       "layers": layers}).encode()


MANIFEST_PATH = "/v2/library/busybox/manifests/1.36"


def _canned_manifest(proxy: TamperProxy, body: bytes, *, media: str = OCI_MANIFEST,
                     headers: list[tuple[str, str]] | None = None) -> None:
    proxy.tampering.canned[MANIFEST_PATH] = (200, [("Content-Type", media), *(headers or [])],
                                             body)


def test_oversized_manifest(proxy: TamperProxy, tmp_path: Path) -> None:
    _canned_manifest(proxy, b" " * (5 << 20))
    with pytest.raises(RegistryError) as e:
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))
    assert "more than the limit of 4194304 bytes" in e.value.message


def test_deeply_nested_manifest_is_not_a_crash(proxy: TamperProxy, tmp_path: Path) -> None:
    _canned_manifest(proxy, b"[" * 1_000_000 + b"]" * 1_000_000)
    with pytest.raises(RegistryError, match="not valid JSON"):
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))


def test_schema_1_is_refused_clearly(proxy: TamperProxy, tmp_path: Path) -> None:
    _canned_manifest(proxy, json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []})
                     .encode(), media="application/vnd.docker.distribution.manifest.v1+json")
    with pytest.raises(RegistryError, match="schema 1 manifests are not supported"):
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))


@pytest.mark.parametrize(("layer", "says"), [
    ({"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
      "digest": "sha256:" + "1" * 64, "size": 1, "urls": ["http://x/"]}, "foreign"),
    ({"mediaType": "application/x-evil", "digest": "sha256:" + "1" * 64, "size": 1},
     "unsupported"),
    ({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "../../etc/passwd",
      "size": 1}, "no sha256 digest"),
    ({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + "1" * 64,
      "size": -5}, "no valid size"),
])
def test_bad_layer_descriptors(proxy: TamperProxy, tmp_path: Path, layer: dict[str, object],
                               says: str) -> None:
    _canned_manifest(proxy, _manifest_with([layer]))
    with pytest.raises(RegistryError, match=says):
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))


def test_manifest_digest_must_match_a_pinned_reference(proxy: TamperProxy,
                                                       tmp_path: Path) -> None:
    wanted = "sha256:" + "ab" * 32
    proxy.tampering.canned[f"/v2/library/busybox/manifests/{wanted}"] = (
        200, [("Content-Type", OCI_MANIFEST)], _manifest_with([]))
    with pytest.raises(RegistryError, match=f"digest is sha256:[0-9a-f]{{64}}, not {wanted}"):
        _pull(proxy.host, f"library/busybox@{wanted}", BlobStore(tmp_path / "s"))


def test_manifest_digest_header_that_lies(proxy: TamperProxy, tmp_path: Path) -> None:
    proxy.tampering.canned[MANIFEST_PATH] = (
        200, [("Content-Type", OCI_MANIFEST), ("Docker-Content-Digest", "sha256:" + "c" * 64)],
        _manifest_with([]))
    with pytest.raises(RegistryError, match="but the registry says"):
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))


def _blob_manifest(proxy: TamperProxy, data: bytes, size: int) -> str:
    """A manifest whose config is ``data`` claimed to be ``size`` bytes; its blob path."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": digest, "size": size}, "layers": []}).encode()
    _canned_manifest(proxy, body)
    return f"/v2/library/busybox/blobs/{digest}"


def test_content_length_that_disagrees_with_the_manifest(proxy: TamperProxy,
                                                          tmp_path: Path) -> None:
    path = _blob_manifest(proxy, b"{}", 2)
    proxy.tampering.canned[path] = (200, [("Content-Length", "3")], b"{} ")
    with pytest.raises(RegistryError, match="sends 3 bytes, but the manifest says 2"):
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))


def test_more_bytes_than_the_descriptor_without_a_length(proxy: TamperProxy,
                                                         tmp_path: Path) -> None:
    data = b"{}" + b" " * 100
    path = _blob_manifest(proxy, data, 2)

    proxy.tampering.canned[path] = (200, [("Content-Length", "none")], data)
    with pytest.raises(RegistryError, match="sent more than the 2 bytes the manifest says"):
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))


def test_a_huge_declared_config_is_refused_before_download(proxy: TamperProxy,
                                                           tmp_path: Path) -> None:
    _blob_manifest(proxy, b"{}", 1 << 40)
    with pytest.raises(RegistryError, match="more than 16 MiB"):
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))
    assert proxy.tampering.blob_gets() == []


def test_index_nesting_is_bounded(proxy: TamperProxy, tmp_path: Path) -> None:
    """Indexes naming indexes (each by its true digest) end with an error, not a loop."""
    index_type = "application/vnd.oci.image.index.v1+json"
    inner = "sha256:" + "d" * 64
    for _ in range(5):
        body = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": [
            {"mediaType": index_type, "digest": inner, "size": 10,
             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
        inner = "sha256:" + hashlib.sha256(body).hexdigest()
        proxy.tampering.canned[f"/v2/library/busybox/manifests/{inner}"] = (200, [], body)
    _canned_manifest(proxy, body, media=index_type)
    with pytest.raises(RegistryError, match="nested more than 3 deep"):
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))


def test_three_nested_indexes_are_followed_to_the_image(proxy: TamperProxy,
                                                        tmp_path: Path) -> None:
    """The bound is "more than 3 deep": three indexes, then the manifest, is an image (the
    red team found it refused)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    _blob_manifest(proxy, config, len(config))
    proxy.tampering.canned[f"/v2/library/busybox/blobs/sha256:"
                           f"{hashlib.sha256(config).hexdigest()}"] = (200, [], config)
    status, headers, body = proxy.tampering.canned[MANIFEST_PATH]
    inner = "sha256:" + hashlib.sha256(body).hexdigest()
    proxy.tampering.canned[f"/v2/library/busybox/manifests/{inner}"] = (status, headers, body)
    index_type = "application/vnd.oci.image.index.v1+json"
    media, size = OCI_MANIFEST, len(body)
    for _ in range(3):
        body = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": [
            {"mediaType": media, "digest": inner, "size": size,
             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
        inner, media, size = "sha256:" + hashlib.sha256(body).hexdigest(), index_type, len(body)
        proxy.tampering.canned[f"/v2/library/busybox/manifests/{inner}"] = (
            200, [("Content-Type", index_type)], body)
    _canned_manifest(proxy, body, media=index_type)
    pulled = _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))
    assert pulled.config.size == len(config)


def test_a_content_encoding_is_decoded_before_the_digest_check(proxy: TamperProxy,
                                                               tmp_path: Path) -> None:
    """A server that gzips the transfer on its own: the blob is what it decodes to."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    path = _blob_manifest(proxy, config, len(config))
    proxy.tampering.canned[path] = (200, [("Content-Encoding", "gzip")], gzip.compress(config))
    store = BlobStore(tmp_path / "s")
    pulled = _pull(proxy.host, "library/busybox:1.36", store)
    assert store.path(pulled.config.digest).read_bytes() == config


def test_a_content_encoding_bomb_stops_at_the_manifests_size(proxy: TamperProxy,
                                                             tmp_path: Path) -> None:
    path = _blob_manifest(proxy, b"{}", 2)
    proxy.tampering.canned[path] = (200, [("Content-Encoding", "gzip")],
                                    gzip.compress(b" " * (64 << 20)))
    with pytest.raises(RegistryError, match="sent more than the 2 bytes"):
        _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))


def test_a_layered_or_unasked_content_encoding_is_refused(proxy: TamperProxy,
                                                          tmp_path: Path) -> None:
    """Red team RR-2: gzip within gzip (3.4 KB on the wire for 2 GiB) or zstd was decoded
    whole by httpx, one network read at a time, to gigabytes before any byte count saw it."""
    nested = gzip.compress(gzip.compress(b"\0" * (8 << 20)))
    for encoding, body in (("gzip, gzip", nested), ("zstd", b"\x28\xb5\x2f\xfd"),
                           ("br", b"x")):
        path = _blob_manifest(proxy, b"{}", 2)
        proxy.tampering.canned[path] = (200, [("Content-Encoding", encoding)], body)
        with pytest.raises(RegistryError, match=f"with Content-Encoding '{encoding}', which "
                                                "acbuild-py does not take"):
            _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / encoding))
        _canned_manifest(proxy, body, headers=[("Content-Encoding", encoding)])
        with pytest.raises(RegistryError, match="does not take"):
            _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / encoding))
        proxy.tampering.canned.clear()


def test_a_body_that_is_not_the_gzip_it_says_is_an_error(proxy: TamperProxy,
                                                         tmp_path: Path) -> None:
    for body, match in ((b"not gzip at all", "is not the gzip its Content-Encoding says"),
                        (gzip.compress(b"{}")[:-12], "the gzip stream ends early")):
        path = _blob_manifest(proxy, b"{}", 2)
        proxy.tampering.canned[path] = (200, [("Content-Encoding", "gzip")], body)
        with pytest.raises(RegistryError, match=match):
            _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))
        proxy.tampering.canned.clear()


def test_a_lying_index_entry_is_refused_before_any_layer_is_read(proxy: TamperProxy,
                                                                   tmp_path: Path) -> None:
    """The config is asked for with the layers, but the platform check comes first: a
    config that arrives late must not leave the layers time to download (red-team RT-2)."""
    config = json.dumps({"architecture": "arm64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    layer = gzip.compress(b"x" * (4 << 20), mtime=0)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    base = "/v2/library/busybox"

    def late() -> tuple[int, list[tuple[str, str]], bytes]:
        time.sleep(1.0)
        return 200, [], config

    proxy.tampering.canned[f"{base}/blobs/{config_digest}"] = late
    proxy.tampering.canned[f"{base}/blobs/{layer_digest}"] = (200, [], layer)
    image = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                   "digest": config_digest, "size": len(config)},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                    "digest": layer_digest, "size": len(layer)}]}).encode()
    image_digest = "sha256:" + hashlib.sha256(image).hexdigest()
    proxy.tampering.canned[f"{base}/manifests/{image_digest}"] = (200, [], image)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": image_digest,
                            "size": len(image),
                            "platform": {"os": "linux", "architecture": "amd64"}}]}
    proxy.tampering.canned[f"{base}/manifests/1.36"] = (200, [], json.dumps(index).encode())
    store = BlobStore(tmp_path / "s")
    with pytest.raises(RegistryError, match="entry for linux/amd64 is an image for linux/arm64"):
        _pull(proxy.host, "library/busybox:1.36", store)
    assert not store.path(layer_digest).exists()
    assert _leftovers(store) == []


def test_the_layers_go_on_as_soon_as_the_config_is_checked(http_registry: Registry,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The layers' bodies wait for the config's platform check, which the main thread runs
    when it sees the config's download end: it must be woken by that, not find it at its next
    look at the progress (which held every pull up by that interval, ~0.1 s)."""
    monkeypatch.setattr("acbuild.distribution.registry.pull._DRAIN", 30.0)
    start = time.monotonic()
    pulled = _pull(http_registry.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))
    assert pulled.transferred == 2
    assert time.monotonic() - start < 10.0


BASE = "/v2/library/busybox"


def _can_image(proxy: TamperProxy, layers: list[bytes]) -> tuple[bytes, str, list[str], str]:
    """An OCI image of gzip ``layers``, its blobs and manifest canned at the proxy under
    library/busybox:1.36 (a test may replace an answer with a callable): its config, the
    config's digest, the layers' and the manifest's."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    digests = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    for layer, digest in zip(layers, digests, strict=True):
        proxy.tampering.canned[f"{BASE}/blobs/{digest}"] = (200, [], layer)
    proxy.tampering.canned[f"{BASE}/blobs/{config_digest}"] = (200, [], config)
    image = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                   "digest": config_digest, "size": len(config)},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                    "digest": digest, "size": len(layer)}
                                   for layer, digest in zip(layers, digests, strict=True)]
                        }).encode()
    proxy.tampering.canned[f"{BASE}/manifests/1.36"] = (200, [], image)
    return config, config_digest, digests, "sha256:" + hashlib.sha256(image).hexdigest()


def test_the_config_does_not_hold_up_a_layers_request(proxy: TamperProxy,
                                                      tmp_path: Path) -> None:
    """With as many layers as downloads run at a time, the config gets a thread of its own:
    every layer's request goes out while the config is on its way, none waits for it."""
    layers = [gzip.compress(f"layer {n}".encode(), mtime=0) for n in range(4)]  # PARALLEL
    config, config_digest, _, _ = _can_image(proxy, layers)
    seen: list[int] = []

    def late() -> tuple[int, list[tuple[str, str]], bytes]:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and len(proxy.tampering.blob_gets()) < 5:
            time.sleep(0.01)
        seen.append(len(proxy.tampering.blob_gets()) - 1)  # the layers' GETs (not this one)
        return 200, [], config

    proxy.tampering.canned[f"{BASE}/blobs/{config_digest}"] = late
    pulled = _pull(proxy.host, "library/busybox:1.36", BlobStore(tmp_path / "s"))
    assert pulled.transferred == 5
    assert seen == [4]


def test_the_manifest_and_config_are_stored_while_the_layers_stream(proxy: TamperProxy,
                                                                    tmp_path: Path) -> None:
    """Storing a manifest or config means syncing it (ms each, far more on a busy disk), so
    it is done while the layers stream, not before their requests go out; a pull that
    returns has stored them all."""
    layer = gzip.compress(b"layer", mtime=0)
    config, config_digest, (layer_digest,), image_digest = _can_image(proxy, [layer])
    store = BlobStore(tmp_path / "s")
    stored_when_asked: list[bool] = []

    def late_config() -> tuple[int, list[tuple[str, str]], bytes]:
        time.sleep(0.3)  # the layer's request comes first
        return 200, [], config

    def the_layer() -> tuple[int, list[tuple[str, str]], bytes]:
        stored_when_asked.append(store.path(image_digest).exists())
        return 200, [], layer

    proxy.tampering.canned[f"{BASE}/blobs/{config_digest}"] = late_config
    proxy.tampering.canned[f"{BASE}/blobs/{layer_digest}"] = the_layer
    pulled = _pull(proxy.host, "library/busybox:1.36", store)
    assert stored_when_asked == [False]
    assert pulled.digest == image_digest
    for digest in (image_digest, config_digest, layer_digest):
        assert store.path(digest).is_file()
    assert _leftovers(store) == []
