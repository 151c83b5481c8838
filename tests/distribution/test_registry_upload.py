"""Pushing blobs and manifests to the real distribution registry: monolithic and chunked
uploads, HEAD checks that skip what the registry has, cross-repository mounts, and the
registry's own refusals as one-line errors. Pulled back with skopeo to compare digests."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.distribution.registry.credentials import Credential
from acbuild.distribution.registry.push import push_layout
from acbuild.distribution.registry.reference import RegistryError, parse_reference
from acbuild.distribution.registry.transport import TransportOptions
from acbuild.distribution.registry.upload import PushSession, Repository
from tests.support.registry import Registry, empty_registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    yield from empty_registry(tmp_path, "http")


@pytest.fixture
def basic(tmp_path: Path) -> Iterator[Registry]:
    yield from empty_registry(tmp_path, "basic")


@pytest.fixture
def token(tmp_path: Path) -> Iterator[Registry]:
    yield from empty_registry(tmp_path, "token")


def session(reg: Registry, *, creds: bool = True) -> PushSession:
    insecure = (reg.host,) if reg.ca is None else ()
    if reg.token_server is not None:
        insecure += (reg.token_server.realm.split("/")[2],)
    options = TransportOptions(insecure_registries=insecure, ca_file=reg.ca, retries=1,
                               backoff=0.01)
    credential = None
    if creds and reg.username and reg.password:
        credential = Credential(username=reg.username, password=reg.password)
    return PushSession(reg.host, options, credential)


def blob(tmp_path: Path, size: int, name: str = "blob") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def requests(reg: Registry, method: str, repo: str) -> list[str]:
    return [line for line in reg.access_log() if line.startswith(f"{method} /v2/{repo}/")]


def layout(tmp_path: Path, layer_size: int) -> Path:
    """A minimal OCI layout (one random layer) as export writes them."""
    root = tmp_path / "layout"
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             **put(os.urandom(layer_size))}
    diff_id = "sha256:" + "0" * 64
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode())}
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": config, "layers": [layer]}).encode())
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, **manifest}]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return root


def test_monolithic_upload_then_head_skips_it(registry: Registry, tmp_path: Path) -> None:
    path, digest = blob(tmp_path, 300_000)
    with session(registry) as s:
        repo = Repository(s, "app/one")
        assert repo.push_blob(path, digest, 300_000).how == "sent"
        assert repo.push_blob(path, digest, 300_000).how == "present"
    assert len(requests(registry, "POST", "app/one")) == 1
    assert requests(registry, "PATCH", "app/one") == []
    assert len(requests(registry, "PUT", "app/one")) == 1
    stored = registry.storage / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:]
    assert (stored / "data").read_bytes() == path.read_bytes()


def test_chunked_upload_sends_patches_of_chunk_size(registry: Registry, tmp_path: Path) -> None:
    size = 5 * (1 << 20) + 12345
    path, digest = blob(tmp_path, size)
    with session(registry) as s:
        assert Repository(s, "app/big", chunk_size=1 << 20).push_blob(
            path, digest, size).how == "sent"
    assert len(requests(registry, "PATCH", "app/big")) == 6
    stored = registry.storage / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:]
    assert hashlib.sha256((stored / "data").read_bytes()).hexdigest() == digest[7:]


def test_a_blob_in_another_repository_is_mounted(registry: Registry, tmp_path: Path) -> None:
    path, digest = blob(tmp_path, 200_000)
    with session(registry) as s:
        Repository(s, "team/base").push_blob(path, digest, 200_000)
        pushed = Repository(s, "team/app").push_blob(path, digest, 200_000,
                                                    mount_from=["team/base"])
    assert pushed.how == "mounted"
    assert any("mount=" in line for line in requests(registry, "POST", "team/app"))
    assert requests(registry, "PUT", "team/app") == []


def test_a_mount_the_registry_cannot_do_falls_back_to_an_upload(registry: Registry,
                                                                tmp_path: Path) -> None:
    path, digest = blob(tmp_path, 1000)
    with session(registry) as s:
        pushed = Repository(s, "team/app").push_blob(path, digest, 1000,
                                                    mount_from=["team/nothing-here"])
    assert pushed.how == "sent"


def test_a_layout_round_trips_through_skopeo(registry: Registry, tmp_path: Path) -> None:
    src = layout(tmp_path, 2 * (1 << 20))
    ref = parse_reference(f"docker://{registry.host}/app/image:1.0")
    with session(registry) as s:
        result = push_layout(Repository(s, "app/image", chunk_size=1 << 20), ref, src)
        again = push_layout(Repository(s, "app/image"), ref, src)
    index = json.loads((src / "index.json").read_text())
    assert result.digest == index["manifests"][0]["digest"]
    assert [b.how for b in result.blobs] == ["sent", "sent"]
    assert [b.how for b in again.blobs] == ["present", "present"]
    out = tmp_path / "pulled"
    subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                    f"docker://{registry.host}/app/image:1.0", f"oci:{out}:1.0"], check=True)
    pulled = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
    assert pulled == result.digest
    assert {p.name for p in (out / "blobs/sha256").iterdir()} == \
        {p.name for p in (src / "blobs/sha256").iterdir()}


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_push_with_credentials(mode: str, request: pytest.FixtureRequest,
                               tmp_path: Path) -> None:
    reg: Registry = request.getfixturevalue(mode)
    src = layout(tmp_path, 100_000)
    ref = parse_reference(f"docker://{reg.host}/private/image:v1")
    with session(reg) as s:
        result = push_layout(Repository(s, "private/image"), ref, src)
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", reg.creds or "",
            f"docker://{reg.host}/private/image:v1"]
    if reg.ca is not None:
        argv[3:4] = ["--cert-dir", str(_cert_dir(reg, tmp_path))]
    raw = subprocess.run(argv, check=True, capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == result.digest


def _cert_dir(reg: Registry, tmp_path: Path) -> Path:
    assert reg.ca is not None
    where = tmp_path / "certs"
    where.mkdir(exist_ok=True)
    (where / "ca.crt").write_bytes(reg.ca.read_bytes())
    return where


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_push_without_credentials_is_one_line_401(mode: str, request: pytest.FixtureRequest,
                                                  tmp_path: Path) -> None:
    reg: Registry = request.getfixturevalue(mode)
    path, digest = blob(tmp_path, 1000)
    with session(reg, creds=False) as s, pytest.raises(RegistryError) as caught:
        Repository(s, "private/image").push_blob(path, digest, 1000)
    assert "\n" not in caught.value.message
    assert "401" in caught.value.message or "refused" in caught.value.message
    assert reg.password is not None and reg.password not in str(caught.value)


def test_a_manifest_naming_a_missing_blob_is_refused(registry: Registry,
                                                     tmp_path: Path) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "sha256:" + "1" * 64, "size": 2}, "layers": []}).encode()
    with session(registry) as s, pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN"):
        Repository(s, "app/broken").put_manifest("v1", body, OCI_MANIFEST)


def test_an_unreachable_registry_is_one_line(tmp_path: Path) -> None:
    options = TransportOptions(insecure_registries=("127.0.0.1:9",), retries=0)
    path, digest = blob(tmp_path, 10)
    with PushSession("127.0.0.1:9", options, None) as s, \
            pytest.raises(RegistryError, match="cannot reach") as caught:
        Repository(s, "x/y").push_blob(path, digest, 10)
    assert "\n" not in caught.value.message


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A server on 127.0.0.1 that answers HEAD with 404 (no such blob) and every other
    request with ``status`` and a Location of ``location`` (when set), draining bodies, and
    records ``METHOD path`` of each."""

    protocol_version = "HTTP/1.1"
    seen: list[str]
    status = 200
    location = ""
    head = 404  # HEAD's status, with ``head_digest`` as its Docker-Content-Digest if set
    head_digest = ""

    def _any(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(self.head if self.command == "HEAD" else self.status)
        if self.command == "HEAD" and self.head_digest:
            self.send_header("Docker-Content-Digest", self.head_digest)
        if self.location:
            self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _recording(**fields: object) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen, **fields})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_mount_answered_with_a_location_elsewhere_sends_nothing_there(tmp_path: Path) -> None:
    """RG-6: a registry answering the mount with 202 and a Location on another host made
    the push send a DELETE there (any host, port, path and query the registry chose)."""
    path, digest = blob(tmp_path, 1000)
    with _recording() as (victim, hit), \
            _recording(status=202, location=f"http://{victim}/containers/db?force=1") \
            as (host, seen):
        options = TransportOptions(insecure_registries=(host,), retries=0)
        with PushSession(host, options, None) as s, pytest.raises(RegistryError):
            # it sends the upload that follows elsewhere too: refused, as before
            Repository(s, "team/app").push_blob(path, digest, 1000, mount_from=["team/other"])
    assert hit == []
    assert any("mount=" in line for line in seen)


def test_a_head_naming_another_digest_does_not_skip_the_upload(tmp_path: Path) -> None:
    """A registry answering HEAD of the blob with 200 but another Docker-Content-Digest
    does not have that blob: it is sent, not taken as present on that word."""
    path, digest = blob(tmp_path, 1000)
    with _recording(head=200, head_digest="sha256:" + "1" * 64, status=202,
                    location="/v2/team/app/blobs/uploads/1") as (host, seen):
        options = TransportOptions(insecure_registries=(host,), retries=0)
        with PushSession(host, options, None) as s:
            pushed = Repository(s, "team/app").push_blob(path, digest, 1000)
    assert pushed.how == "sent"
    assert any(line.startswith("PUT /v2/team/app/blobs/uploads/1?digest=") for line in seen)


def test_a_head_naming_the_digest_skips_the_upload(tmp_path: Path) -> None:
    path, digest = blob(tmp_path, 1000)
    with _recording(head=200, head_digest=digest) as (host, seen):
        options = TransportOptions(insecure_registries=(host,), retries=0)
        with PushSession(host, options, None) as s:
            pushed = Repository(s, "team/app").push_blob(path, digest, 1000)
    assert pushed.how == "present"
    assert [line.split()[0] for line in seen] == ["HEAD"]
