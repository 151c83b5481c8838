"""`export --push` and `build --format oci --push` against the real registry: what is pushed
round-trips through skopeo digest for digest, a second push sends nothing, credentials come
from the docker config and appear nowhere, and every bad input is a one-line error that
leaves nothing behind."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.support.cli import Result, acbuild
from tests.support.registry import Registry, empty_registry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    yield from empty_registry(tmp_path, "http")


@pytest.fixture
def basic(tmp_path: Path) -> Iterator[Registry]:
    yield from empty_registry(tmp_path, "basic")


@pytest.fixture(scope="module")
def aci(tmp_path_factory: pytest.TempPathFactory, hello_binary: Path) -> Path:
    """The hello example, built once for the module (in its own cache and state, not the
    caller's): the tests only read it, and it is read-only so that one cannot change it."""
    where = tmp_path_factory.mktemp("hello-aci")
    ctx = where / "hello"
    shutil.copytree(EXAMPLES / "hello", ctx)
    shutil.copy2(hello_binary, ctx / "hello")
    out = where / "hello.aci"
    r = acbuild("build", ctx / "Acfile", "-o", out, "-q",
                env={"HOME": str(where), "XDG_CACHE_HOME": str(where / "cache"),
                     "XDG_STATE_HOME": str(where / "state"),
                     "XDG_CONFIG_HOME": str(where / "config")})
    assert r.code == 0, r.stderr
    out.chmod(0o444)
    return out


def docker_config(tmp_path: Path, reg: Registry) -> dict[str, str]:
    """The environment of a user who logged in to ``reg`` (docker's config file)."""
    where = tmp_path / "docker"
    where.mkdir()
    auth = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    (where / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
    return {"DOCKER_CONFIG": str(where), "XDG_RUNTIME_DIR": str(tmp_path / "no-runtime")}


def skopeo_raw(reg: Registry, name: str, tmp_path: Path) -> bytes:
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
    if reg.ca is not None:
        certs = tmp_path / "skopeo-certs"
        certs.mkdir(exist_ok=True)
        (certs / "ca.crt").write_bytes(reg.ca.read_bytes())
        argv = ["skopeo", "inspect", "--raw", "--cert-dir", str(certs)]
    if reg.creds:
        argv += ["--creds", reg.creds]
    return subprocess.run([*argv, f"docker://{reg.host}/{name}"], check=True,
                          capture_output=True).stdout


def one_line_error(r: Result, code: int = 1) -> str:
    assert r.code == code, (r.code, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert errors, r.stderr
    return errors[0]


def test_export_push_round_trips_through_skopeo(registry: Registry, aci: Path,
                                                tmp_path: Path) -> None:
    ref = f"docker://{registry.host}/apps/hello:1.0.0"
    r = acbuild("export", aci, "--push", ref, "--insecure-registry", registry.host,
                "--progress=json")
    assert r.code == 0, r.stderr
    digest = r.stdout.strip()
    raw = skopeo_raw(registry, "apps/hello:1.0.0", tmp_path)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    # the same image written locally is the one pushed, blob for blob
    local = tmp_path / "local"
    assert acbuild("export", aci, "-o", local, "-q").stdout.strip() == digest
    pulled = tmp_path / "pulled"
    subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests",
                    "--src-tls-verify=false", f"docker://{registry.host}/apps/hello:1.0.0",
                    f"oci:{pulled}:1.0.0"], check=True)
    assert json.loads((pulled / "index.json").read_text())["manifests"][0]["digest"] == digest
    assert {p.name for p in (pulled / "blobs/sha256").iterdir()} == \
        {p.name for p in (local / "blobs/sha256").iterdir()}
    summary = json.loads(r.stderr.splitlines()[-1])
    assert summary["pushed"] == f"{ref}@{digest}"
    assert summary["pushed_bytes"] > 0
    # again: the registry has every blob, so only the manifest is sent
    again = acbuild("export", aci, "--push", ref, "--insecure-registry", registry.host,
                    "--progress=json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stderr.splitlines()[-1])["pushed_bytes"] == 0
    uploads = [line for line in registry.access_log() if line.startswith("POST ")]
    assert len(uploads) == 2  # config and layer, once


def test_push_with_stored_credentials_never_shows_them(basic: Registry, aci: Path,
                                                       tmp_path: Path) -> None:
    env = docker_config(tmp_path, basic)
    r = acbuild("export", aci, "--push", f"docker://{basic.host}/team/hello:v1",
                "--ca-file", basic.ca or "", "-v", "--progress=plain", env=env)
    assert r.code == 0, r.stderr
    raw = skopeo_raw(basic, "team/hello:v1", tmp_path)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == r.stdout.strip()
    password = basic.password or ""
    assert password and password not in r.stdout + r.stderr
    encoded = base64.b64encode(f"{basic.username}:{password}".encode()).decode()
    assert encoded not in r.stdout + r.stderr
    for blob in (basic.storage / "docker/registry/v2/blobs").rglob("data"):
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        assert password.encode() not in data and encoded.encode() not in data
    # a wrong password: one line, and still no password in it
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps({"auths": {basic.host: {
        "auth": base64.b64encode(f"{basic.username}:wrong-secret".encode()).decode()}}}))
    bad = acbuild("export", aci, "--push", f"docker://{basic.host}/team/hello:v2",
                  "--ca-file", basic.ca or "", env=env)
    assert "refused the credentials" in one_line_error(bad)
    assert "wrong-secret" not in bad.stderr


def test_build_format_oci_push_needs_no_output(registry: Registry, hello_context: Path,
                                               tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    r = acbuild("build", hello_context / "Acfile", "--format", "oci", "--push",
                f"docker://{registry.host}/apps/hello:built", "--insecure-registry",
                registry.host, "--progress=plain", cwd=work)
    assert r.code == 0, r.stderr
    assert list(work.iterdir()) == []  # the layout was a temporary one
    raw = skopeo_raw(registry, "apps/hello:built", tmp_path)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == r.stdout.strip()
    assert f"pushed docker://{registry.host}/apps/hello:built@" in r.stderr


def test_build_push_with_output_keeps_the_layout(registry: Registry, hello_context: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "layout"
    r = acbuild("build", hello_context / "Acfile", "--format", "oci", "-o", out, "--push",
                f"docker://{registry.host}/apps/hello:kept", "--insecure-registry",
                registry.host, "-q")
    assert r.code == 0, r.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == r.stdout.strip()


@pytest.mark.parametrize(("args", "message"), [
    (["--push", "docker://Registry.example/UPPER:1"], "must be lower case"),
    (["--push", "registry.example/app:1"], "push to docker://"),
    (["--push", "docker://registry.example/app@sha256:" + "a" * 64], "names a tag"),
    ([], "give -o OUTPUT, --push"),
    (["--push", "docker://registry.example/app:1", "--format", "oci-archive"],
     "--format oci-archive"),
    (["--push", "docker://registry.example/app:1", "--insecure-registry", "a b"],
     "is not a --insecure-registry"),
])
def test_bad_push_options_are_usage_errors(aci: Path, args: list[str], message: str) -> None:
    r = acbuild("export", aci, *args)
    assert message in one_line_error(r, 2)


def test_build_push_needs_oci_format(hello_context: Path) -> None:
    r = acbuild("build", hello_context / "Acfile", "--push", "docker://registry.example/a:1")
    assert "--format oci" in one_line_error(r, 2)


def test_failed_pushes_are_one_line_and_leave_nothing(basic: Registry, aci: Path,
                                                      tmp_path: Path) -> None:
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    env = {"TMPDIR": str(temp), "XDG_RUNTIME_DIR": str(tmp_path / "none"),
           "DOCKER_CONFIG": str(tmp_path / "none")}
    cases = [
        # no credentials stored
        (["--push", f"docker://{basic.host}/team/x:1", "--ca-file", str(basic.ca)],
         "authentication required"),
        # its CA not given: TLS verification fails
        (["--push", f"docker://{basic.host}/team/x:1"], "cannot reach"),
        # plain http to a TLS registry
        (["--push", f"docker://{basic.host}/team/x:1", "--insecure-registry", basic.host],
         f"{basic.host}"),
        # nothing listening
        (["--push", "docker://127.0.0.1:9/team/x:1", "--insecure-registry", "127.0.0.1:9"],
         "cannot reach"),
    ]
    for args, message in cases:
        r = acbuild("export", aci, *args, cwd=work, env=env)
        assert message in one_line_error(r), r.stderr
        assert list(temp.iterdir()) == [] and list(work.iterdir()) == []


def test_push_targets_are_checked_before_the_build(basic: Registry, hello_context: Path,
                                                   tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "none"), "DOCKER_CONFIG": str(tmp_path / "none")}
    for option, target in (("--push", f"docker://{basic.host}/team/x:1"),
                           ("--cache-to", f"registry://{basic.host}/team/cache")):
        r = acbuild("build", hello_context / "Acfile", "--format", "oci", "-o",
                    tmp_path / "out", option, target, "--ca-file", str(basic.ca),
                    "--progress=plain", env=env)
        assert "authentication required" in one_line_error(r)
        assert "[1/" not in r.stderr  # no step ran
        assert not (tmp_path / "out").exists()


def test_a_push_to_another_repository_mounts_the_blobs(registry: Registry, aci: Path,
                                                       tmp_path: Path) -> None:
    args = ["--insecure-registry", registry.host, "--progress=plain"]
    first = acbuild("export", aci, "--push", f"docker://{registry.host}/team/a:1", *args)
    assert first.code == 0, first.stderr
    second = acbuild("export", aci, "--push", f"docker://{registry.host}/team/b:1", *args)
    assert second.code == 0, second.stderr
    assert second.stdout == first.stdout
    assert ": 0 of 2 blobs sent" in second.stderr
    log = registry.access_log()
    assert sum(1 for line in log if line.startswith("POST /v2/team/b/blobs/uploads/?mount=")) == 2
    assert not any(line.startswith("PUT /v2/team/b/blobs/") for line in log)
    raw = skopeo_raw(registry, "team/b:1", tmp_path)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == second.stdout.strip()


class _Uploads(http.server.BaseHTTPRequestHandler):
    """A registry's upload endpoints (on 127.0.0.1): no blob is there yet (HEAD 404), an
    upload starts at ``location`` (POST 202); what a PUT gets is the subclass's."""

    protocol_version = "HTTP/1.1"
    location = "/v2/team/x/blobs/uploads/u1"

    def _answer(self, status: int, body: bytes = b"", **headers: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._answer(404)

    def do_POST(self) -> None:
        self._answer(202, Location=self.location)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serving(handler: type[_Uploads]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def refusing_registry(location: str = _Uploads.location) -> Iterator[str]:
    """A registry that takes every blob and refuses every manifest, as one with a policy
    on manifests (or a full disk) does: 400 MANIFEST_INVALID. Its uploads go to
    ``location``."""

    class Handler(_Uploads):
        def do_PUT(self) -> None:
            if "/manifests/" in self.path:
                self._answer(400, b'{"errors": [{"code": "MANIFEST_INVALID", "message": '
                                  b'"\\u001b[31mno"}]}')
            else:
                self._answer(201)

    Handler.location = location
    with _serving(Handler) as host:
        yield host


@contextlib.contextmanager
def stalling_registry() -> Iterator[tuple[str, threading.Event]]:
    """A registry that starts uploads and then neither reads a blob's body nor answers it,
    as one whose disk hangs; the event is set once a blob's PUT came."""
    put = threading.Event()
    release = threading.Event()

    class Handler(_Uploads):
        def do_PUT(self) -> None:
            put.set()
            release.wait(60)

    with _serving(Handler) as host:
        try:
            yield host, put
        finally:
            release.set()  # before the server joins its handlers


# At once is within 1.5 s of the signal: alone (.ci/run's serial part).
@pytest.mark.serial
def test_ctrl_c_ends_a_stalled_upload_at_once(aci: Path, tmp_path: Path) -> None:
    """RR-2: an upload waits for the registry to acknowledge its body and then for the
    answer, with no per-send or per-read limit of its own; Ctrl-C still ends it at once."""
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    with stalling_registry() as (host, put):
        proc = subprocess.Popen(
            [sys.executable, "-m", "acbuild", "export", str(aci), "--push",
             f"docker://{host}/team/x:1", "--insecure-registry", host],
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "CI": "true", "TMPDIR": str(temp)})
        try:
            assert put.wait(60)
            time.sleep(0.5)  # into the blocked wait
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            _, err = proc.communicate(timeout=20)
            took = time.monotonic() - sent
        finally:
            proc.kill()
    assert took < 1.5, (took, err)
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("interrupted"), err
    assert "Traceback" not in err
    assert list(temp.iterdir()) == []


def test_a_refused_manifest_is_one_line(aci: Path, tmp_path: Path) -> None:
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    with refusing_registry() as host:
        r = acbuild("export", aci, "--push", f"docker://{host}/team/x:1",
                    "--insecure-registry", host, env={"TMPDIR": str(temp)})
    line = one_line_error(r)
    assert "pushing manifest team/x:1: HTTP 400 (MANIFEST_INVALID)" in line
    assert "\x1b" not in r.stderr
    assert list(temp.iterdir()) == []


def test_builds_and_exports_without_a_registry_do_not_load_httpx() -> None:
    code = ("import sys, acbuild.build.build, acbuild.cli.commands.build, "
            "acbuild.cli.commands.export; print('httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("location", [
    "http://[::1/uploads", "https://xn--/uploads", "/v2/up\x7floads", "ftp://127.0.0.1/x",
    "http://127.0.0.2:1/elsewhere",
])
def test_a_hostile_upload_location_is_one_line(aci: Path, location: str) -> None:
    with refusing_registry(location) as host:
        r = acbuild("export", aci, "--push", f"docker://{host}/team/x:1",
                    "--insecure-registry", host)
    line = one_line_error(r)
    assert "internal error" not in r.stderr
    assert host in line


@pytest.fixture
def token(tmp_path: Path) -> Iterator[Registry]:
    yield from empty_registry(tmp_path, "token")


def test_push_and_share_the_cache_with_token_auth(token: Registry, aci: Path,
                                                  hello_context: Path, tmp_path: Path) -> None:
    assert token.token_server is not None
    env = docker_config(tmp_path, token)
    hosts = ["--insecure-registry", token.host,
             "--insecure-registry", token.token_server.realm.split("/")[2]]
    r = acbuild("export", aci, "--push", f"docker://{token.host}/team/hello:t1", *hosts,
                env=env)
    assert r.code == 0, r.stderr
    raw = skopeo_raw(token, "team/hello:t1", tmp_path)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == r.stdout.strip()
    scopes = {q.get("scope") for q in token.token_server.requests}
    assert "repository:team/hello:pull,push" in scopes
    for n, direction in ((1, "--cache-to"), (2, "--cache-from")):
        b = acbuild("build", hello_context / "Acfile", "-o", tmp_path / f"{n}.aci", *hosts,
                    direction, f"registry://{token.host}/team/cache", "--progress=plain",
                    env={**env, "XDG_CACHE_HOME": str(tmp_path / f"cache{n}")})
        assert b.code == 0, b.stderr
    assert "[6/8] CACHED" in b.stderr.splitlines()
    assert "imported from registry://" in b.stderr
    assert token.password and token.password not in r.stderr + b.stderr
