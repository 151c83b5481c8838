"""Pushing blobs and manifests to the real distribution registry: monolithic and chunked
uploads, HEAD checks that skip what the registry has, cross-repository mounts, and the
registry's own refusals as one-line errors. Pulled back with skopeo to compare digests."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from acbuild.distribution.registry.credentials import Credential
from acbuild.distribution.registry.push import push_layout
from acbuild.distribution.registry.reference import RegistryError, parse_reference
from acbuild.distribution.registry.transport import TransportOptions
from acbuild.distribution.registry.upload import CHUNK_SIZE, PushSession, Repository
from tests.support.httpserver import ScriptedHandler, threaded
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


def test_a_pull_only_user_is_told_so_not_to_log_in_again(token: Registry,
                                                          tmp_path: Path) -> None:
    """The token server takes a pull-only user's password and grants pull alone; the
    registry's 401 says insufficient_scope. Logging in again would change nothing."""
    assert token.reader is not None
    path, digest = blob(tmp_path, 1000)
    options = TransportOptions(insecure_registries=session(token).options.insecure_registries,
                               retries=0)
    credential = Credential(username=token.reader[0], password=token.reader[1])
    with PushSession(token.host, options, credential) as s, \
            pytest.raises(RegistryError) as caught:
        Repository(s, "team/app").push_blob(path, digest, 1000)
    assert "not allowed" in caught.value.message and "insufficient_scope" in caught.value.message
    assert caught.value.hint is not None and "log in" not in caught.value.hint
    assert token.reader[1] not in str(caught.value)


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


class _Recorder(ScriptedHandler):
    """A server on 127.0.0.1 that answers HEAD with 404 (no such blob) and every other
    request with ``status`` and a Location of ``location`` (when set), draining bodies, and
    records ``METHOD path`` of each."""

    seen: list[str]
    status = 200
    location = ""
    head = 404  # HEAD's status, with ``head_digest`` as its Docker-Content-Digest if set
    head_digest = ""
    head_length = "0"  # HEAD's Content-Length

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
        self.send_header("Content-Length", self.head_length if self.command == "HEAD" else "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any


@contextlib.contextmanager
def _recording(**fields: object) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    with threaded(type("Handler", (_Recorder,), {"seen": seen, **fields})) as host:
        yield host, seen


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
    with _recording(head=200, head_digest=digest, head_length="1000") as (host, seen):
        options = TransportOptions(insecure_registries=(host,), retries=0)
        with PushSession(host, options, None) as s:
            pushed = Repository(s, "team/app").push_blob(path, digest, 1000)
    assert pushed.how == "present"
    assert [line.split()[0] for line in seen] == ["HEAD"]


def test_a_head_with_another_length_does_not_skip_the_upload(tmp_path: Path) -> None:
    """A 200 whose Content-Length is not the blob's size (a proxy answering 200 for
    anything) is not that blob, with or without a digest header."""
    path, digest = blob(tmp_path, 1000)
    for named in ("", digest):
        with _recording(head=200, head_digest=named, head_length="5", status=202,
                        location="/v2/team/app/blobs/uploads/1") as (host, seen):
            options = TransportOptions(insecure_registries=(host,), retries=0)
            with PushSession(host, options, None) as s:
                pushed = Repository(s, "team/app").push_blob(path, digest, 1000)
        assert pushed.how == "sent", named
        assert any(line.startswith("PUT /v2/team/app/blobs/uploads/1?") for line in seen)


def test_a_head_with_the_length_and_no_digest_skips_the_upload(tmp_path: Path) -> None:
    path, digest = blob(tmp_path, 1000)
    with _recording(head=200, head_length="1000") as (host, seen):
        options = TransportOptions(insecure_registries=(host,), retries=0)
        with PushSession(host, options, None) as s:
            assert Repository(s, "team/app").push_blob(path, digest, 1000).how == "present"
    assert [line.split()[0] for line in seen] == ["HEAD"]


def test_a_mount_on_a_token_registry_asks_for_both_repositories(token: Registry,
                                                                tmp_path: Path) -> None:
    """A registry checking tokens mounts only with a token granting pull on the source
    repository as well: the mount asks for both scopes, and the blob is not sent again."""
    path, digest = blob(tmp_path, 200_000)
    assert token.token_server is not None
    with session(token) as s:
        Repository(s, "team/base").push_blob(path, digest, 200_000)
        pushed = Repository(s, "team/app").push_blob(path, digest, 200_000,
                                                    mount_from=["team/base"])
    assert pushed.how == "mounted"
    assert requests(token, "PUT", "team/app") == []
    scopes = [r.get("scope", "") for r in token.token_server.requests]
    assert any("repository:team/app:pull,push" in s and "repository:team/base:pull" in s
               for s in scopes), scopes


# ---- answers that get lost: a proxy in front of the real registry ------------------------


@dataclass
class _Losing:
    """What the proxy does: ``lose`` lists (METHOD, n): the n-th such request (1 first) is
    forwarded, and the registry's answer replaced by a 502 (a load balancer timing out
    after the registry acted); ``relative`` rewrites each upload Location into one relative
    to the request's URL."""

    lose: list[tuple[str, int]] = field(default_factory=list)
    # (METHOD, n) -> a status answered without forwarding the request at all
    drop: dict[tuple[str, int], int] = field(default_factory=dict)
    relative: bool = False
    netloc: str = ""  # when set, each absolute Location names this HOST[:PORT] instead
    seen: list[str] = field(default_factory=list)  # METHOD path (status sent back)


@contextlib.contextmanager
def _losing_proxy(upstream: Registry, losing: _Losing, port: int = 0) -> Iterator[str]:
    up_host, up_port = upstream.host.rsplit(":", 1)
    counts: dict[str, int] = {}

    class Handler(ScriptedHandler):
        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            counts[self.command] = counts.get(self.command, 0) + 1
            if (status := losing.drop.get((self.command, counts[self.command]))) is not None:
                losing.seen.append(f"{self.command} {self.path.split('?')[0]} {status}")
                self.answer(status)
                return
            # the Host header as sent: the registry writes its Locations with that host
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn = http.client.HTTPConnection(up_host, int(up_port), timeout=30)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = b"" if self.command == "HEAD" else resp.read()
            status = 502 if (self.command, counts[self.command]) in losing.lose else resp.status
            losing.seen.append(f"{self.command} {self.path.split('?')[0]} {status}")
            self.send_response(status)
            if status != 502:
                for k, v in resp.getheaders():
                    if k.lower() == "location" and losing.relative:
                        v = v.rsplit("/", 1)[1]  # .../uploads/UUID?_state= -> UUID?_state=
                    elif k.lower() == "location" and losing.netloc:
                        parts = urllib.parse.urlsplit(v)
                        v = parts._replace(netloc=losing.netloc).geturl()
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
            self.send_header("Content-Length", "0" if status == 502 else
                             resp.getheader("Content-Length") or str(len(data)))
            self.end_headers()
            if status != 502 and self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    with threaded(Handler, port) as host:
        yield host


def _stored(registry: Registry, digest: str) -> bytes:
    return (registry.storage / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:]
            / "data").read_bytes()


def _push_through(host: str, path: Path, digest: str, size: int, *, chunk: int = CHUNK_SIZE,
                  retries: int = 2) -> str:
    options = TransportOptions(insecure_registries=(host,), retries=retries, backoff=0.01)
    with PushSession(host, options, None) as s:
        return Repository(s, "team/app", chunk_size=chunk).push_blob(path, digest, size).how


def test_a_closing_put_whose_answer_is_lost_is_not_sent_again(registry: Registry,
                                                              tmp_path: Path) -> None:
    """The registry stored the blob, then the answer was lost: the blob is looked up and
    found, rather than the PUT sent again to an upload session the registry has closed."""
    path, digest = blob(tmp_path, 100_000)
    losing = _Losing(lose=[("PUT", 1)])
    with _losing_proxy(registry, losing) as host:
        assert _push_through(host, path, digest, 100_000) == "sent"
    assert [line.split()[0] for line in losing.seen] == ["HEAD", "POST", "PUT", "HEAD"]
    assert _stored(registry, digest) == path.read_bytes()


@pytest.mark.parametrize(("losing", "sequence"), [
    # distribution signs the session's offset into the Location's _state: the status of a
    # session whose next Location was in the lost answer is a 404, and the upload starts over
    (_Losing(lose=[("PATCH", 2)]), ["HEAD", "POST", "PATCH", "PATCH", "GET", "HEAD",
                                    "POST", "PATCH", "PATCH", "PATCH", "PUT"]),
    (_Losing(drop={("PATCH", 2): 502}),
     ["HEAD", "POST", "PATCH", "PATCH", "GET", "PATCH", "PATCH", "PUT"])],
    ids=["taken", "not-taken"])
def test_a_patch_whose_answer_is_lost_goes_on_where_the_registry_is(
        registry: Registry, tmp_path: Path, losing: _Losing, sequence: list[str]) -> None:
    """The second chunk's answer is lost: the registry took the chunk (its offset moved on:
    sending it again could never succeed) or never saw it. The session's status (a GET)
    says where it is, and the upload goes on from there; a session that cannot say
    starts over (a new POST), never a resend into a moved offset."""
    size = 300_000
    path, digest = blob(tmp_path, size)
    with _losing_proxy(registry, losing) as host:
        assert _push_through(host, path, digest, size, chunk=100_000) == "sent"
    assert [line.split()[0] for line in losing.seen] == sequence, losing.seen
    assert hashlib.sha256(_stored(registry, digest)).hexdigest() == digest[7:]


def test_answers_lost_every_time_fail_after_the_retries(registry: Registry,
                                                        tmp_path: Path) -> None:
    path, digest = blob(tmp_path, 1000)
    losing = _Losing(lose=[("PATCH", n) for n in range(1, 9)])
    with _losing_proxy(registry, losing) as host, \
            pytest.raises(RegistryError) as caught:
        _push_through(host, path, digest, 1000, chunk=500, retries=1)
    assert caught.value.message.endswith("HTTP 502 (2 tries)")
    assert "\n" not in caught.value.message
    assert [line.split()[0] for line in losing.seen].count("POST") == 2


def test_a_relative_upload_location_is_resolved_against_the_request(registry: Registry,
                                                                    tmp_path: Path) -> None:
    """``Location: UUID?_state=…`` answering a POST to …/blobs/uploads/ (or a PATCH to
    …/blobs/uploads/OLD) is …/blobs/uploads/UUID (RFC 3986), not /UUID at the root."""
    size = 250_000
    path, digest = blob(tmp_path, size)
    losing = _Losing(relative=True)
    with _losing_proxy(registry, losing) as host:
        assert _push_through(host, path, digest, size, chunk=100_000) == "sent"
    assert all(line.split()[1].startswith("/v2/team/app/blobs/") for line in losing.seen), \
        losing.seen
    assert hashlib.sha256(_stored(registry, digest)).hexdigest() == digest[7:]


@pytest.mark.parametrize(("named", "written"), [("127.0.0.1", "127.0.0.1:80"),
                                                 ("127.0.0.1:80", "127.0.0.1")])
def test_a_location_spelling_the_default_port_otherwise_is_the_registry(
        registry: Registry, tmp_path: Path, named: str, written: str) -> None:
    """``host`` and ``host:80`` are one server over http (and ``:443`` over https): a
    registry (configured with ``http.host: …:80``, or behind a proxy adding the port) that
    spells its Locations the other way is not "another host"."""
    path, digest = blob(tmp_path, 1000)
    try:
        proxy = _losing_proxy(registry, _Losing(netloc=written), port=80)
        proxy.__enter__()
    except OSError as e:  # not root, or something listens on port 80
        pytest.skip(f"needs 127.0.0.1:80 to listen on: {e}")
    try:
        assert _push_through(named, path, digest, 1000) == "sent"
    finally:
        proxy.__exit__(None, None, None)
    assert _stored(registry, digest) == path.read_bytes()


def test_a_chunk_never_taken_is_given_up_after_the_retries(registry: Registry,
                                                           tmp_path: Path) -> None:
    """Each PATCH answered 502 unseen: the session's status says nothing moved, and after
    ``retries`` such rounds in a row the upload starts over, then fails in one line."""
    path, digest = blob(tmp_path, 300_000)
    losing = _Losing(drop={("PATCH", n): 502 for n in range(1, 50)})
    with _losing_proxy(registry, losing) as host, pytest.raises(RegistryError) as caught:
        _push_through(host, path, digest, 300_000, chunk=100_000, retries=1)
    methods = [line.split()[0] for line in losing.seen]
    assert methods == ["HEAD", "POST", "PATCH", "GET", "PATCH", "HEAD",
                       "POST", "PATCH", "GET", "PATCH", "HEAD"], losing.seen
    assert caught.value.message.endswith("HTTP 502 (2 tries)")
