"""Test fixtures: Debian's real CNCF distribution registry (``docker-registry``) on 127.0.0.1.

Four modes, each a fresh registry with its own config file and storage directory:

- ``http``: plain HTTP, no auth (clients need ``--insecure-registry HOST:PORT``);
- ``tls``: HTTPS with a throwaway CA (clients need ``--ca-file``), no auth;
- ``basic``: HTTPS plus htpasswd basic auth (bcrypt), user ``alice``;
- ``token``: plain HTTP plus ``auth: token``; a token server run here (threaded http.server)
  checks the user's basic credentials and signs JWTs (ES256, PyJWT) with a key whose
  certificate is the registry's ``rootcertbundle``.

Images go in with skopeo (``Registry.push``). ``TamperProxy`` sits in front of a registry and
can corrupt, truncate or replace what it serves; it also records every request it forwards.
Its pytest fixtures are in tests.support.registryfixtures; they skip (with the reason)
when ``/usr/bin/docker-registry`` is not installed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tests.support.httpserver import make_tls

REGISTRY_BIN = Path("/usr/bin/docker-registry")
Mode = Literal["http", "tls", "basic", "token"]
MODES: tuple[Mode, ...] = ("http", "tls", "basic", "token")
USERNAME = "alice"
READER = "bob"  # token mode's pull-only user
SERVICE = "acbuild-test-registry"
ISSUER = "acbuild-test-token-issuer"


def registry_missing() -> str | None:
    """Why a real registry cannot be started here, or None."""
    if not REGISTRY_BIN.is_file():
        return (f"{REGISTRY_BIN} is not installed (Debian package docker-registry; "
                ".ci/run installs it)")
    if shutil.which("skopeo") is None:
        return "skopeo is not installed (test images are pushed with it)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Registry:
    """A running registry: what a client needs to reach it."""

    host: str  # "127.0.0.1:PORT"
    mode: Mode
    ca: Path | None  # the CA that signed its certificate (tls, basic)
    username: str | None  # credentials it (or its token server) accepts (basic, token)
    password: str | None
    log: Path  # the registry's own log (its access log included)
    storage: Path
    token_server: TokenServer | None = None
    # token mode: a second user whose tokens grant pull alone (USERNAME, PASSWORD)
    reader: tuple[str, str] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ca is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def creds(self) -> str | None:
        """USER:PASSWORD for skopeo's --creds options."""
        return None if self.username is None else f"{self.username}:{self.password}"

    def cli_args(self) -> list[str]:
        """The acbuild-py options that reach this registry (not the credentials)."""
        return ["--ca-file", str(self.ca)] if self.ca else ["--insecure-registry", self.host]

    def reach_args(self) -> list[str]:
        """``cli_args`` and, for a token server on plain http, the option that reaches it."""
        args = self.cli_args()
        if self.token_server is not None:
            args += ["--insecure-registry", self.token_server.realm.split("/")[2]]
        return args

    def ref(self, name: str) -> str:
        """``docker://HOST:PORT/NAME``."""
        return f"docker://{self.host}/{name}"

    def push(self, source: str, name: str, *, all_images: bool = False,
             fmt: str | None = None) -> str:
        """Copy skopeo transport reference ``source`` (``oci:DIR:TAG``) to NAME (REPO:TAG);
        returns the pushed manifest's digest."""
        digest_file = self.storage.parent / f".digest-{secrets.token_hex(4)}"
        argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                "--digestfile", str(digest_file)]
        if self.creds:
            argv += ["--dest-creds", self.creds]
        if all_images:
            argv.append("--all")
        if fmt:
            argv += ["--format", fmt]
        _run(*argv, source, f"docker://{self.host}/{name}")
        digest = digest_file.read_text().strip()
        digest_file.unlink()
        return digest

    def access_log(self) -> list[str]:
        """``METHOD PATH STATUS`` of every request the registry answered, in order."""
        text = self.log.read_text(errors="replace")
        return [f"{m} {p} {s}" for m, p, s in re.findall(
            r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[0-9.]+" (\d+)', text)]

    def blob_gets(self) -> list[str]:
        """The digests of the blobs GET transferred (2xx; not HEADs, not refused ones)."""
        out = []
        for line in self.access_log():
            method, path, status = line.split(" ")
            if method == "GET" and "/blobs/sha256:" in path and status.startswith("2"):
                out.append(path.rsplit("/", 1)[1])
        return out


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _htpasswd(user: str, password: str) -> str:
    """A bcrypt htpasswd line (the only hash the registry accepts)."""
    if shutil.which("htpasswd"):
        return _run("htpasswd", "-nbB", user, password).strip()
    import bcrypt  # fallback when apache2-utils is missing

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"


@contextlib.contextmanager
def start_registry(workdir: Path, mode: Mode, *, anonymous_pull: bool = False,
                   startup: float = 30.0) -> Iterator[Registry]:
    """Run a registry in ``mode`` until the block ends. With ``anonymous_pull`` the token
    server grants pulls without credentials (as Docker Hub does)."""
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir()
    password = secrets.token_urlsafe(12) if mode in ("basic", "token") else None
    username = USERNAME if password else None
    tls = make_tls(workdir / "tls") if mode in ("tls", "basic") else None
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
    }
    http_config: dict[str, object] = {"secret": secrets.token_hex(16)}
    if tls is not None:
        http_config["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
    token_ctx: contextlib.AbstractContextManager[TokenServer | None] = contextlib.nullcontext()
    reader = None
    if mode == "basic":
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(_htpasswd(USERNAME, password or "") + "\n")
        config["auth"] = {"htpasswd": {"realm": "acbuild-test", "path": str(htpasswd)}}
    elif mode == "token":
        reader = (READER, secrets.token_urlsafe(12))
        token_ctx = serve_tokens(workdir / "token", USERNAME, password or "",
                                 anonymous_pull=anonymous_pull, reader=reader)
    with token_ctx as tokens:
        if tokens is not None:
            config["auth"] = {"token": {"realm": tokens.realm, "service": SERVICE,
                                        "issuer": ISSUER, "rootcertbundle": str(tokens.cert)}}
        config_file = workdir / "config.yml"
        log = workdir / "registry.log"
        for attempt in range(5):
            # free_port's port is free when it answers, not when the registry binds it:
            # another process on the machine may take it in between (then try another).
            host = f"127.0.0.1:{free_port()}"
            config["http"] = {**http_config, "addr": host}
            config_file.write_text(json.dumps(config, indent=1))  # YAML is a superset of JSON
            with log.open("wb") as out:
                proc = subprocess.Popen([str(REGISTRY_BIN), "serve", str(config_file)],
                                        stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT)
            registry = Registry(host=host, mode=mode, ca=tls.ca if tls else None,
                                username=username, password=password, log=log,
                                storage=storage, token_server=tokens,
                                reader=reader)
            try:
                _wait_ready(registry, proc, startup)
                break
            except _PortTaken:
                if attempt == 4:
                    raise
        try:
            yield registry
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _PortTaken(RuntimeError):
    """The registry could not listen: its port was taken since it was chosen."""


def _wait_ready(registry: Registry, proc: subprocess.Popen[bytes], startup: float) -> None:
    context = ssl.create_default_context(cafile=str(registry.ca)) if registry.ca else None
    deadline = time.monotonic() + startup
    while True:
        if proc.poll() is not None:
            text = registry.log.read_text(errors="replace")
            kind = _PortTaken if "address already in use" in text else RuntimeError
            raise kind(f"docker-registry exited with {proc.returncode}:\n{text}")
        try:
            urllib.request.urlopen(f"{registry.url}/v2/", timeout=2, context=context).close()
            return
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("docker-registry did not answer:\n"
                               + registry.log.read_text(errors="replace"))
        time.sleep(0.05)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up early (a test of a refused download) is no error


# ---- the token server -----------------------------------------------------------------------


@dataclass(slots=True)
class TokenServer:
    realm: str
    cert: Path  # the registry's rootcertbundle
    # an OAuth2 refresh token (docker's "identity token") it accepts for the user, by POST
    refresh_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    requests: list[dict[str, str]] = field(default_factory=list)  # query/form + "authorization"


def _token_keys(directory: Path) -> tuple[object, bytes, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / "token-root.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert.public_bytes(serialization.Encoding.DER), path


@contextlib.contextmanager
def serve_tokens(directory: Path, username: str, password: str, *,
                 anonymous_pull: bool = False,
                 reader: tuple[str, str] | None = None) -> Iterator[TokenServer]:
    """The Docker token protocol's server side: GET /token?service=…&scope=… with optional
    basic auth → {"token": JWT}. Wrong credentials get 401; no credentials get a pull-only
    token when ``anonymous_pull``, else 401; ``reader`` (USER, PASSWORD), when given, gets
    pull-only tokens. POST /token with the OAuth2 form
    (grant_type=refresh_token) takes the server's refresh token for the user instead."""
    import jwt

    key, der, cert = _token_keys(directory)
    server_box: list[TokenServer] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            auth = self.headers.get("Authorization", "")
            server_box[0].requests.append(
                {"path": url.path, "authorization": auth,
                 **{k: ",".join(v) for k, v in query.items()}})
            user = _basic_user(auth, username, password)
            if user is False and reader is not None and \
                    _basic_user(auth, *reader) == reader[0]:
                user = reader[0]
            self._issue(url.path, user, query)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            server_box[0].requests.append({"path": self.path, "method": "POST",
                                           **{k: ",".join(v) for k, v in form.items()}})
            good = form.get("grant_type") == ["refresh_token"] and \
                form.get("refresh_token") == [server_box[0].refresh_token]
            self._issue(self.path, username if good else False, form)

        def _issue(self, path: str, user: str | bool | None,
                   query: dict[str, list[str]]) -> None:
            if path != "/token" or user is False or (user is None and not anonymous_pull):
                self._send(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            access = []
            for scope in query.get("scope", []):
                kind, _, rest = scope.partition(":")
                repo, _, actions = rest.rpartition(":")
                wanted = actions.split(",")
                granted = wanted if user and user != READER else \
                    [a for a in wanted if a == "pull"]
                access.append({"type": kind, "name": repo, "actions": granted})
            now = int(time.time())
            claims = {"iss": ISSUER, "sub": user or "", "aud": query.get("service", [""])[0],
                      "exp": now + 300, "nbf": now - 10, "iat": now,
                      "jti": secrets.token_hex(8), "access": access}
            token = jwt.encode(claims, key, algorithm="ES256",  # type: ignore[arg-type]
                               headers={"x5c": [base64.b64encode(der).decode()]})
            self._send(200, {"token": token, "access_token": token, "expires_in": 300})

        def _send(self, status: int, doc: object) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = _QuietServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server_box.append(TokenServer(realm=f"http://127.0.0.1:{httpd.server_address[1]}/token",
                                  cert=cert))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server_box[0]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _basic_user(header: str, username: str, password: str) -> str | bool | None:
    """The user named by a Basic header: None when there is none, False when it is wrong."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    try:
        user, _, given = base64.b64decode(value).decode().partition(":")
    except ValueError:
        return False
    if scheme.lower() != "basic" or user != username or given != password:
        return False
    return user


# ---- the tampering proxy -------------------------------------------------------------------

# (status, headers, body) a proxy answers with instead of asking the registry; a body that
# is an iterable of bytes is sent chunk by chunk, flushed after each (a trickling server)
Canned = tuple[int, Sequence[tuple[str, str]], bytes | Iterable[bytes]]


@dataclass(slots=True)
class Tampering:
    """What the proxy does to the registry's answers; tests change it while it runs."""

    corrupt: set[str] = field(default_factory=set)  # blob digests served with a byte flipped
    truncate: set[str] = field(default_factory=set)  # blob digests cut off halfway
    # path → canned answer (or a function making one); a ("Content-Length", "none") header
    # sends the body without a length, ended by closing the connection
    canned: dict[str, Canned | Callable[[], Canned]] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth

    def blob_gets(self) -> list[str]:
        return [p.rsplit("/", 1)[1] for m, p, _ in self.requests
                if m == "GET" and "/blobs/" in p]


@dataclass(frozen=True, slots=True, kw_only=True)
class TamperProxy:
    host: str  # "127.0.0.1:PORT", plain HTTP
    upstream: Registry
    tampering: Tampering

    def ref(self, name: str) -> str:
        return f"docker://{self.host}/{name}"


_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate", "content-length", "host"}


@contextlib.contextmanager
def tamper_proxy(upstream: Registry) -> Iterator[TamperProxy]:
    """A plain-HTTP proxy on a free port in front of ``upstream`` (any mode; it speaks TLS
    to an HTTPS registry without checking its certificate)."""
    tampering = Tampering()
    up_host, up_port = upstream.host.rsplit(":", 1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._forward("GET")

        def do_HEAD(self) -> None:
            self._forward("HEAD")

        def _forward(self, method: str) -> None:
            path = urllib.parse.urlsplit(self.path).path
            tampering.requests.append((method, path, self.headers.get("Authorization", "")))
            if path in tampering.canned:
                got = tampering.canned[path]
                status, headers, body = got() if callable(got) else got
                self.send_response(status)
                until_close = ("Content-Length", "none") in headers or (  # ends at close
                    not isinstance(body, bytes)
                    and not any(k.lower() == "content-length" for k, _ in headers))
                for k, v in headers:
                    if (k, v) != ("Content-Length", "none"):
                        self.send_header(k, v)
                if until_close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                elif not any(k.lower() == "content-length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method == "GET" and isinstance(body, bytes):
                    self.wfile.write(body)
                elif method == "GET":  # an iterable: sent chunk by chunk (a trickle)
                    for chunk in body:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                return
            conn: http.client.HTTPConnection = (
                http.client.HTTPSConnection(up_host, int(up_port), timeout=30,
                                            context=ssl._create_unverified_context())
                if upstream.ca else http.client.HTTPConnection(up_host, int(up_port),
                                                               timeout=30))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn.request(method, self.path, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            length = resp.getheader("Content-Length")
            digest = path.rsplit("/", 1)[-1]
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            if method == "HEAD":
                conn.close()
                return
            sent, total = 0, int(length) if length else None
            half = (total or 0) // 2
            first = True
            while chunk := resp.read(1 << 16):
                if "/blobs/" in path and digest in tampering.truncate:
                    chunk = chunk[: max(0, half - sent)]
                    if not chunk:
                        break
                if first and "/blobs/" in path and digest in tampering.corrupt and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                first = False
                self.wfile.write(chunk)
                sent += len(chunk)
            conn.close()
            if total is not None and sent < total:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = _QuietServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield TamperProxy(host=f"127.0.0.1:{httpd.server_address[1]}", upstream=upstream,
                          tampering=tampering)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


# ---- test images --------------------------------------------------------------------------


def multi_platform_layout(layout: Path, tag: str,
                          images: Sequence[tuple[str, str, str | None, Path]]) -> Path:
    """Add an image index ``tag`` to ``layout`` naming, for each (os, architecture, variant,
    layout holding image ``latest``), that image with its platform. The images' blobs are
    copied in; push it with ``Registry.push(f"oci:{layout}:{tag}", name, all_images=True)``."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifests = []
    for os_name, arch, variant, src in images:
        for blob in (src / "blobs" / "sha256").iterdir():
            if not (blobs / blob.name).exists():
                shutil.copyfile(blob, blobs / blob.name)
        index = json.loads((src / "index.json").read_text())
        desc = dict(index["manifests"][0])
        desc.pop("annotations", None)
        platform = {"architecture": arch, "os": os_name}
        if variant:
            platform["variant"] = variant
        manifests.append({**desc, "platform": platform})
    doc = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                      "manifests": manifests}).encode()
    digest = hashlib.sha256(doc).hexdigest()
    (blobs / digest).write_bytes(doc)
    index_file = layout / "index.json"
    top = json.loads(index_file.read_text()) if index_file.exists() else {
        "schemaVersion": 2, "manifests": []}
    top["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                             "digest": f"sha256:{digest}", "size": len(doc),
                             "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_file.write_text(json.dumps(top))
    return layout


def blob_digests(layout: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()}


def env_without_proxy() -> dict[str, str]:
    """The environment minus proxy variables, so a test's registry on 127.0.0.1 is reached
    directly."""
    return {k: v for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}


def skip_without_registry() -> None:
    if (reason := registry_missing()) is not None:
        pytest.skip(reason)


def empty_registry(tmp_path: Path, mode: Mode) -> Iterator[Registry]:
    """A fixture's body: an empty registry in ``mode`` for one test (skipped, with the
    reason, without docker-registry)."""
    skip_without_registry()
    with start_registry(tmp_path / "reg", mode) as reg:
        yield reg


@contextlib.contextmanager
def registry_with_busybox(tmp_path: Path, mode: Mode, busybox: Path) -> Iterator[Registry]:
    """A registry in ``mode`` holding ``busybox`` (an OCI layout's image 1.36) as
    library/busybox:1.36."""
    skip_without_registry()
    with start_registry(tmp_path / f"registry-{mode}", mode) as reg:
        reg.push(f"oci:{busybox}:1.36", "library/busybox:1.36")
        yield reg
