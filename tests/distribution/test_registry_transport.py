"""The registry session against the real distribution registry in each auth mode, and
against a tampering proxy that answers as a hostile registry would."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from acbuild.distribution.registry.credentials import Credential
from acbuild.distribution.registry.reference import RegistryError
from acbuild.distribution.registry.transport import (
    Session,
    TransportOptions,
    _origin,
    body_chunks,
    parse_challenge,
    read_limited,
)
from tests.support.httpserver import ScriptedHandler, threaded
from tests.support.registry import (
    Registry,
    TamperProxy,
    free_port,
    registry_with_busybox,
    tamper_proxy,
)
from tests.support.trickle import Answer, TrickleServer, answer, trickle_server

pytest_plugins = ("tests.support.registryfixtures",)

MANIFEST = "/v2/library/busybox/manifests/1.36"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"
SCOPE = "repository:library/busybox:pull"
FAST = {"backoff": 0.01, "retries": 2}


def _session(reg: Registry, *, insecure: tuple[str, ...] = (), creds: bool = True,
             password: str | None = None) -> Session:
    token_host = ()
    if reg.token_server is not None:
        token_host = (reg.token_server.realm.split("/")[2],)
    options = TransportOptions(
        insecure_registries=((reg.host,) if reg.ca is None else ()) + token_host + insecure,
        ca_file=reg.ca, **FAST)  # type: ignore[arg-type]
    credential = None
    if creds and reg.username:
        credential = Credential(username=reg.username, password=password or reg.password or "")
    return Session(reg.host, options, credential)


def test_manifest_in_every_mode(any_registry: Registry) -> None:
    with _session(any_registry) as s, s.get(MANIFEST, scope=SCOPE, accept=ACCEPT) as r:
        s.check(r, "manifest")
        r.read()
        assert r.json()["schemaVersion"] == 2


def test_token_flow_sends_service_scope_and_credentials(token_registry: Registry) -> None:
    assert token_registry.token_server is not None
    token_registry.token_server.requests.clear()  # skopeo's, pushing the image
    with _session(token_registry) as s:
        for _ in range(2):  # the second request reuses the token
            with s.get(MANIFEST, scope=SCOPE, accept=ACCEPT) as r:
                s.check(r, "manifest")
    asked = token_registry.token_server.requests
    assert len(asked) == 1
    assert asked[0]["scope"] == SCOPE and asked[0]["service"] == "acbuild-test-registry"
    assert asked[0]["authorization"].startswith("Basic ")


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_401_without_credentials_says_login(mode: str, basic_registry: Registry,
                                             token_registry: Registry) -> None:
    reg = basic_registry if mode == "basic" else token_registry
    with _session(reg, creds=False) as s, pytest.raises(RegistryError) as e, \
            s.get(MANIFEST, scope=SCOPE, accept=ACCEPT) as r:
        s.check(r, "manifest")
    assert f"acbuild-py login {reg.host}" in e.value.render()
    assert "\n" not in e.value.message


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_wrong_password_is_refused_and_never_shown(mode: str, basic_registry: Registry,
                                                   token_registry: Registry) -> None:
    reg = basic_registry if mode == "basic" else token_registry
    secret = "wrong-hunter2-password"
    with _session(reg, password=secret) as s, pytest.raises(RegistryError) as e, \
            s.get(MANIFEST, scope=SCOPE, accept=ACCEPT) as r:
        s.check(r, "manifest")
    assert "refused" in e.value.message and "alice" in e.value.message
    assert secret not in e.value.render()


def test_plain_http_token_realm_needs_insecure_registry(token_registry: Registry) -> None:
    assert token_registry.token_server is not None
    token_registry.token_server.requests.clear()
    options = TransportOptions(insecure_registries=(token_registry.host,), **FAST)  # type: ignore[arg-type]
    with Session(token_registry.host, options, None) as s, pytest.raises(RegistryError) as e, \
            s.get(MANIFEST, scope=SCOPE, accept=ACCEPT):
        pass
    assert "--insecure-registry " + token_registry.token_server.realm.split("/")[2] in \
        e.value.render()
    assert token_registry.token_server.requests == []


def test_tls_registry_without_ca_file_is_not_trusted(tmp_path: Path,
                                                     busybox_oci: Path) -> None:
    with registry_with_busybox(tmp_path, "tls", busybox_oci) as reg, \
            Session(reg.host, TransportOptions(**FAST), None) as s,  \
            pytest.raises(RegistryError) as e, s.get(MANIFEST, scope=SCOPE):  # type: ignore[arg-type]
        pass
    assert "--ca-file" in e.value.render()


def test_plain_http_without_insecure_registry_fails_clearly(http_registry: Registry) -> None:
    with Session(http_registry.host, TransportOptions(**FAST), None) as s, \
            pytest.raises(RegistryError) as e, s.get(MANIFEST, scope=SCOPE):  # type: ignore[arg-type]
        pass
    assert f"--insecure-registry {http_registry.host}" in e.value.render()


# ---- a hostile registry (canned answers through the proxy) -----------------------------


def _proxied(proxy: TamperProxy, *extra: str, credential: Credential | None = None) -> Session:
    options = TransportOptions(insecure_registries=(proxy.host, *extra), **FAST)  # type: ignore[arg-type]
    return Session(proxy.host, options, credential)


@pytest.mark.parametrize("realm", ["file:///etc/passwd", "gopher://x/", "ftp://h/token"])
def test_token_realm_that_is_not_http_is_refused(proxy: TamperProxy, realm: str) -> None:
    proxy.tampering.canned[MANIFEST] = (401, [("WWW-Authenticate",
                                               f'Bearer realm="{realm}",service="x"')], b"")
    with _proxied(proxy) as s, pytest.raises(RegistryError) as e, s.get(MANIFEST, scope=SCOPE):
        pass
    assert "not an http(s) URL" in e.value.message


def test_redirect_loop_ends(proxy: TamperProxy) -> None:
    proxy.tampering.canned[MANIFEST] = (302, [("Location", MANIFEST)], b"")
    with _proxied(proxy) as s, pytest.raises(RegistryError) as e, s.get(MANIFEST, scope=SCOPE):
        pass
    assert "more than 5 redirects" in e.value.message
    assert len(proxy.tampering.requests) == 6


@pytest.mark.parametrize("location", ["file:///etc/shadow", "http://127.0.0.1:1/x"])
def test_redirect_to_file_or_plain_http_is_refused(proxy: TamperProxy, location: str) -> None:
    proxy.tampering.canned[MANIFEST] = (302, [("Location", location)], b"")
    with _proxied(proxy) as s, pytest.raises(RegistryError) as e, s.get(MANIFEST, scope=SCOPE):
        pass
    assert "not an http(s) URL" in e.value.message or "--insecure-registry" in e.value.render()


def test_blob_redirect_to_another_host_carries_no_authorization(
        basic_registry: Registry, http_registry: Registry, busybox_oci: Path) -> None:
    """Object storage must not see the registry's credentials."""
    index = json.loads((busybox_oci / "index.json").read_text())
    manifest = json.loads((busybox_oci / "blobs" / "sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    digest = manifest["layers"][0]["digest"]
    path = f"/v2/library/busybox/blobs/{digest}"
    with tamper_proxy(basic_registry) as front, tamper_proxy(http_registry) as storage:
        front.tampering.canned[path] = (307, [("Location", f"http://{storage.host}{path}")],
                                        b"")
        credential = Credential(username="alice", password=basic_registry.password or "")
        with _proxied(front, storage.host, credential=credential) as s:
            with s.get(MANIFEST, scope=SCOPE, accept=ACCEPT) as r:  # authenticates first
                s.check(r, "manifest")
            with s.get(path, scope=SCOPE) as r:
                s.check(r, "blob")
                assert len(r.read()) > 0
        assert next(a for _, p, a in front.tampering.requests if p == path).startswith("Basic ")
        assert [(p, a) for _, p, a in storage.tampering.requests] == [(path, "")]


def test_a_redirect_targets_401_is_not_called_the_registry_refusing_the_user(
        basic_registry: Registry, http_registry: Registry) -> None:
    """RR-4: storage a blob was redirected to (rightly sent no credentials) answered 401, and
    the error said the registry refused alice's credentials, with "log in again"."""
    path = "/v2/library/busybox/blobs/sha256:" + "e" * 64
    with tamper_proxy(basic_registry) as front, tamper_proxy(http_registry) as storage:
        front.tampering.canned[path] = (307, [("Location", f"http://{storage.host}/s/x")], b"")
        storage.tampering.canned["/s/x"] = (401, [], b"")
        credential = Credential(username="alice", password=basic_registry.password or "")
        with _proxied(front, storage.host, credential=credential) as s, \
                pytest.raises(RegistryError) as e, s.get(path, scope=SCOPE) as r:
            s.check(r, "blob")
    assert e.value.message == (
        f"{front.host}: blob: redirected to http://{storage.host}/s/x, which answered HTTP 401 "
        "(it is sent no credentials: the registry's are for the registry alone)")
    assert e.value.hint is None and "alice" not in e.value.message


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_retries_with_backoff_then_succeeds(proxy: TamperProxy, status: int) -> None:
    count = itertools.count()
    proxy.tampering.canned[MANIFEST] = lambda: (
        (status, [("Retry-After", "0")], b"") if next(count) < 2 else (200, [], b"{}"))
    with _proxied(proxy) as s, s.get(MANIFEST, scope=SCOPE) as r:
        s.check(r, "manifest")
        assert r.read() == b"{}"
    assert len(proxy.tampering.requests) == 3


@pytest.mark.parametrize("retry_after", ["\u00b2", "\u0663", "1e9", "-1", "9" * 40,
                                         "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_a_retry_after_that_is_no_ascii_number_is_a_plain_backoff(proxy: TamperProxy,
                                                                  retry_after: str) -> None:
    """RR-1: "²" passed str.isdigit() and float() then raised: an internal error."""
    count = itertools.count()
    proxy.tampering.canned[MANIFEST] = lambda: (
        (503, [("Retry-After", retry_after)], b"") if next(count) < 1 else (200, [], b"{}"))
    started = time.monotonic()
    with _proxied(proxy) as s, s.get(MANIFEST, scope=SCOPE) as r:
        s.check(r, "manifest")
        assert r.read() == b"{}"
    assert time.monotonic() - started < 5


def test_gives_up_after_the_retries(proxy: TamperProxy) -> None:
    proxy.tampering.canned[MANIFEST] = (503, [], b'{"errors":[{"code":"UNAVAILABLE"}]}')
    with _proxied(proxy) as s, pytest.raises(RegistryError) as e, \
            s.get(MANIFEST, scope=SCOPE) as r:
        s.check(r, "manifest")
    assert "HTTP 503 (UNAVAILABLE)" in e.value.message
    assert len(proxy.tampering.requests) == 3


def test_content_length_over_the_limit_is_refused_unread(proxy: TamperProxy) -> None:
    proxy.tampering.canned[MANIFEST] = (200, [("Content-Length", str(10 << 30))], b"")
    with _proxied(proxy) as s, s.get(MANIFEST, scope=SCOPE) as r, \
            pytest.raises(RegistryError) as e:
        read_limited(r, 4 << 20, "manifest")
    assert "more than the limit" in e.value.message


def test_body_over_the_limit_without_length_is_cut(proxy: TamperProxy) -> None:
    proxy.tampering.canned[MANIFEST] = (200, [("Content-Length", str(5 << 20))],
                                        b" " * (5 << 20))
    with _proxied(proxy) as s, s.get(MANIFEST, scope=SCOPE) as r, \
            pytest.raises(RegistryError) as e:
        read_limited(r, 1 << 20, "manifest")
    assert "limit" in e.value.message


def test_parse_challenge() -> None:
    assert parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                           'scope="repository:a/b:pull"') == (
        "bearer", {"realm": "https://auth.example/token", "service": "reg",
                   "scope": "repository:a/b:pull"})
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    assert parse_challenge("") == ("", {})


def test_forged_realm_on_plain_http_gets_no_credentials(token_registry: Registry) -> None:
    """Over plain http a man in the middle can rewrite the challenge: the credentials go
    only to a token server the user named with --insecure-registry."""
    assert token_registry.token_server is not None
    with tamper_proxy(token_registry) as mitm:
        mitm.tampering.canned[MANIFEST] = (401, [(
            "WWW-Authenticate", 'Bearer realm="https://127.0.0.1:9/token",service="x"')], b"")
        token_registry.token_server.requests.clear()
        credential = Credential(username="alice", password=token_registry.password or "")
        with _proxied(mitm, credential=credential) as s, pytest.raises(RegistryError) as e, \
                s.get(MANIFEST, scope=SCOPE):
            pass
    assert "refusing to send it your credentials" in e.value.message
    assert token_registry.token_server.requests == []
    assert (token_registry.password or "") not in e.value.render()


def test_a_stalled_answer_times_out(proxy: TamperProxy) -> None:
    def slow() -> tuple[int, list[tuple[str, str]], bytes]:
        time.sleep(3)
        return 200, [], b"{}"

    proxy.tampering.canned[MANIFEST] = slow
    options = TransportOptions(insecure_registries=(proxy.host,), timeout=0.5, retries=0)
    started = time.monotonic()
    with Session(proxy.host, options, None) as s, pytest.raises(RegistryError) as e, \
            s.get(MANIFEST, scope=SCOPE):
        pass
    assert time.monotonic() - started < 2.5
    # an answer's head has the timeout, then it is an error (test_registry_deadline.py)
    assert e.value.message == (f"registry {proxy.host}: GET http://{proxy.host}{MANIFEST}: "
                               "timed out: no complete answer (status line and headers) "
                               "within 0.5 s")


def test_requests_go_through_the_proxy_the_environment_names(
        http_registry: Registry, proxy: TamperProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY (httpx's trust_env): the request for the registry goes to the proxy."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://{proxy.host}")
    with _session(http_registry) as s, s.get(MANIFEST, scope=SCOPE, accept=ACCEPT) as r:
        s.check(r, "manifest")
    assert [p for m, p, _ in proxy.tampering.requests] == [MANIFEST]


def test_registry_error_text_is_not_echoed(proxy: TamperProxy) -> None:
    """Red-team RP-3: a registry reflecting the Authorization header into its error body."""
    credential = Credential(username="alice", password="PASSW0RD-SECRET")
    basic = "Basic YWxpY2U6UEFTU1cwUkQtU0VDUkVU"
    proxy.tampering.canned[MANIFEST] = (400, [], json.dumps({"errors": [
        {"code": f"BAD {basic}"}, {"code": "MANIFEST_INVALID", "message": basic},
        {"code": "PASSW0RD-SECRET"}]}).encode())
    with _proxied(proxy, credential=credential) as s, pytest.raises(RegistryError) as e, \
            s.get(MANIFEST, scope=SCOPE) as r:
        s.check(r, "manifest")
    assert e.value.message.endswith("HTTP 400 (MANIFEST_INVALID)")
    assert "YWxp" not in e.value.render() and "PASSW0RD" not in e.value.render()


@pytest.mark.parametrize("realm", ["http://[::1/tok", "https://127.0.0.1/to\x7fk",
                                   "https://xn--/tok", "http://127.0.0.1:99999/t"])
def test_an_unusable_realm_url_is_a_clean_error(proxy: TamperProxy, realm: str) -> None:
    """Red-team RP-4: these were internal errors (ValueError, InvalidURL, IDNAError)."""
    proxy.tampering.canned[MANIFEST] = (401, [("WWW-Authenticate",
                                               f'Bearer realm="{realm}",service="x"')], b"")
    with _proxied(proxy) as s, \
            pytest.raises(RegistryError), s.get(MANIFEST, scope=SCOPE):
        pass


@pytest.mark.parametrize("location", ["https://xn--/x", "http://[::1/x", "http://a:b:c/x",
                                      "https://127.0.0.1/\x7f"])
def test_an_unusable_redirect_is_a_clean_error(proxy: TamperProxy, location: str) -> None:
    proxy.tampering.canned[MANIFEST] = (302, [("Location", location)], b"")
    with _proxied(proxy) as s, pytest.raises(RegistryError) as e, s.get(MANIFEST, scope=SCOPE):
        pass
    assert "cannot reach" not in e.value.message  # not a transport failure, not retried
    assert len(proxy.tampering.requests) == 1


def test_a_refused_connection_is_an_error_at_once_not_seconds_of_retries() -> None:
    """Nothing listens there (a wrong port, a registry not started): the default retries
    (4, backing off from 0.5 s) took about 7.5 s to say so."""
    host = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with Session(host, TransportOptions(insecure_registries=(host,)), None) as s, \
            pytest.raises(RegistryError) as e, s.get(MANIFEST, scope=SCOPE):
        pass
    assert time.monotonic() - started < 1.0
    assert e.value.message == f"cannot reach http://{host}{MANIFEST}: connection refused"
    assert e.value.hint is not None and host in e.value.hint


def test_a_refusing_token_server_is_an_error_at_once(proxy: TamperProxy) -> None:
    token_host = f"127.0.0.1:{free_port()}"
    proxy.tampering.canned[MANIFEST] = (401, [(
        "WWW-Authenticate", f'Bearer realm="http://{token_host}/token",service="x"')], b"")
    options = TransportOptions(insecure_registries=(proxy.host, token_host))
    started = time.monotonic()
    with Session(proxy.host, options, None) as s, pytest.raises(RegistryError) as e, \
            s.get(MANIFEST, scope=SCOPE):
        pass
    assert time.monotonic() - started < 1.0
    assert e.value.message == f"cannot reach the token server of {proxy.host}: connection refused"


def test_a_registry_that_answered_and_then_refuses_is_retried(http_registry: Registry) -> None:
    """Once a host has answered, a refusal is a restart or a blip: backed off and retried
    as before (0.05 + 0.1 s here), then the error."""
    with tamper_proxy(http_registry) as front:
        options = TransportOptions(insecure_registries=(front.host,), backoff=0.05, retries=2)
        session = Session(front.host, options, None)
        with session.get(MANIFEST, scope=SCOPE, accept=ACCEPT) as r:
            session.check(r, "manifest")
    with session, pytest.raises(RegistryError) as e:
        started = time.monotonic()
        with session.get(MANIFEST, scope=SCOPE, accept=ACCEPT):
            pass
    assert time.monotonic() - started >= 0.15
    assert e.value.message.startswith(f"cannot reach http://{front.host}{MANIFEST}: ")
    assert "connection refused" not in e.value.message  # the retried path's message


@pytest.mark.parametrize("status", [429, 503])
def test_a_busy_registry_still_backs_off(proxy: TamperProxy, status: int) -> None:
    proxy.tampering.canned[MANIFEST] = (status, [], b"")
    options = TransportOptions(insecure_registries=(proxy.host,), backoff=0.05, retries=2)
    started = time.monotonic()
    with Session(proxy.host, options, None) as s, s.get(MANIFEST, scope=SCOPE) as r:
        assert r.status_code == status
    assert time.monotonic() - started >= 0.15
    assert len(proxy.tampering.requests) == 3


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_parallel_first_requests_all_meet_one_challenge(mode: str,
                                                        request: pytest.FixtureRequest) -> None:
    """A pull's first requests go out together (config and layers), all before the session
    has met any challenge: each 401 must lead to a retry with the one answer, not be taken
    for refused credentials because another thread answered first."""
    reg: Registry = request.getfixturevalue(f"{mode}_registry")
    if reg.token_server is not None:
        reg.token_server.requests.clear()
    barrier = threading.Barrier(6)
    outcomes: list[object] = []

    with _session(reg) as s:
        def fetch() -> None:
            barrier.wait()
            try:
                with s.get(MANIFEST, scope=SCOPE, accept=ACCEPT) as r:
                    outcomes.append(r.status_code)
            except RegistryError as e:
                outcomes.append(str(e))

        threads = [threading.Thread(target=fetch) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert outcomes == [200] * 6
    if reg.token_server is not None:
        assert len(reg.token_server.requests) == 1  # one token for them all


def _challenging(registry: TrickleServer, tokens: TrickleServer, token: Answer) -> Session:
    """A session to ``registry``, whose manifest asks for a token from ``tokens``."""
    registry.answers[MANIFEST] = answer(401, [(
        "WWW-Authenticate", f'Bearer realm="{tokens.url}/token",service="x"')])
    tokens.answers["/token"] = token
    options = TransportOptions(insecure_registries=(registry.host, tokens.host), retries=2,
                               backoff=0.01)
    return Session(registry.host, options, None)


def _in_threads(n: int, work: Callable[[], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_stopping_ends_the_threads_that_wait_on_a_trickling_token_server() -> None:
    """Red-team RT-1: one thread asks a token server that trickles its answer (50 s, each
    byte on time), the others wait for that answer; stopping must end them all at once."""
    with trickle_server() as registry, trickle_server() as tokens:
        cancel = threading.Event()
        errors: list[str] = []
        trickled = answer(200, body=b'{"token": "' + b"a" * 1000 + b'"}', body_pause=0.05)
        with _challenging(registry, tokens, trickled) as s:
            def fetch() -> None:
                try:
                    with s.get(MANIFEST, scope=SCOPE, cancel=cancel):
                        pass
                except RegistryError as e:
                    errors.append(e.message)

            threads = _in_threads(4, fetch)
            time.sleep(0.5)
            cancel.set()
            stopped = time.monotonic()
            for t in threads:
                t.join(timeout=10)
            assert time.monotonic() - stopped < 1.0
        assert len(errors) == 4 and all(m.endswith("stopped") for m in errors), errors
        assert len(tokens.requests) == 1


def test_a_failed_token_request_is_not_repeated_by_each_waiting_thread() -> None:
    """Red-team RT-4: a token server answering 503 was asked retries + 1 times by each of a
    pull's threads in turn; the threads that waited get the first one's error."""
    with trickle_server() as registry, trickle_server() as tokens:
        errors: list[str] = []
        barrier = threading.Barrier(4)
        with _challenging(registry, tokens, answer(503)) as s:
            def fetch() -> None:
                barrier.wait()
                try:
                    with s.get(MANIFEST, scope=SCOPE):
                        pass
                except RegistryError as e:
                    errors.append(e.message)

            for t in _in_threads(4, fetch):
                t.join(timeout=30)
        assert errors == [f"the token server of {registry.host} answered HTTP 503"] * 4
        assert len(tokens.requests) == 3  # one thread's first try and its 2 retries


def test_a_gzip_body_is_decoded_in_pieces_a_count_can_stop() -> None:
    """However much a piece on the wire expands (1000x for zeros), what the caller counts
    comes 64 KiB at a time: a bomb stops at the limit, not after a chunk of gigabytes."""
    raw = gzip.compress(b"\0" * (32 << 20), compresslevel=9)
    response = httpx.Response(200, headers={"Content-Encoding": "gzip"},
                              stream=httpx.ByteStream(raw))
    sizes = [len(piece) for piece in body_chunks(response, "blob")]
    assert sum(sizes) == 32 << 20 and max(sizes) <= 1 << 16
    plain = httpx.Response(200, stream=httpx.ByteStream(b"as sent"))
    assert b"".join(body_chunks(plain, "blob")) == b"as sent"
    deflated = httpx.Response(200, headers={"Content-Encoding": "deflate"},
                              stream=httpx.ByteStream(zlib.compress(b"zlib-wrapped")))
    assert b"".join(body_chunks(deflated, "blob")) == b"zlib-wrapped"


@pytest.mark.parametrize(("a", "b"), [
    ("http://h/v2/", "http://h:80/v2/x"), ("https://h/", "https://h:443/"),
    ("HTTPS://H.example/", "https://h.example:443/"), ("https://[::1]/", "https://[::1]:443/"),
    ("https://user:pw@h/", "https://h/")])
def test_one_origin_however_the_default_port_is_spelled(a: str, b: str) -> None:
    assert _origin(a) == _origin(b)


@pytest.mark.parametrize(("a", "b"), [
    ("http://h/", "https://h/"), ("https://h/", "https://h:8443/"),
    ("http://h:443/", "https://h/"), ("https://h/", "https://h.evil/")])
def test_other_origins_stay_other(a: str, b: str) -> None:
    assert _origin(a) != _origin(b)


def test_an_insecure_registry_is_one_host_with_and_without_port_80() -> None:
    assert TransportOptions(insecure_registries=("reg.local",)).insecure("reg.local:80")
    assert TransportOptions(insecure_registries=("reg.local:80",)).insecure("reg.local")
    assert not TransportOptions(insecure_registries=("reg.local",)).insecure("reg.local:8080")
    assert not TransportOptions(insecure_registries=("reg.local:180",)).insecure("reg.local")


@contextlib.contextmanager
def _scope_challenging(challenge_scope: str) -> Iterator[tuple[str, list[list[str]]]]:
    """A registry that answers a request without a token, and one with a token the first
    time, 401 ``insufficient_scope`` naming ``challenge_scope``; its token endpoint
    (/token on the same host) records the scopes each token request asks for."""
    asked: list[list[str]] = []

    class Handler(ScriptedHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/token":
                asked.append(urllib.parse.parse_qs(url.query).get("scope", []))
                self.answer(200, json.dumps({"token": f"t{len(asked)}"}).encode())
                return
            token = self.headers.get("Authorization", "")
            if token == f"Bearer t{max(len(asked), 1)}" and len(asked) >= 2:
                self.answer(200, b"{}")
                return
            error = ',error="insufficient_scope"' if token else ""
            realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
            self.answer(401, b"", [("WWW-Authenticate", f'Bearer realm="{realm}",'
                                    f'service="s",scope="{challenge_scope}"{error}')])

    with threaded(Handler) as host:
        yield host, asked


@pytest.mark.parametrize("named", [
    "repository:a/b:pull,push repository:prod/app:pull,push",
    " ".join(f"repository:r{i}:pull" for i in range(50))])
def test_a_challenge_does_not_widen_the_token_request(named: str) -> None:
    """A 401 (insufficient_scope or not) naming other repositories gets a token asked for
    the request's own scope alone: the registry, or whoever answers for it, is not handed a
    token for repositories this push never named."""
    with _scope_challenging(named) as (host, asked):
        options = TransportOptions(insecure_registries=(host,), retries=0)
        with Session(host, options, None) as s:
            s._tokens["repository:a/b:pull,push"] = "t1"  # a token of the request's scope
            asked.append(["repository:a/b:pull,push"])  # the one that token came from
            with s.get("/v2/a/b/manifests/x", scope="repository:a/b:pull,push") as r:
                assert r.status_code == 200
    assert asked == [["repository:a/b:pull,push"]] * 2  # the token fetched after the 401


def test_an_insecure_ipv6_registry_and_a_zero_padded_port() -> None:
    assert TransportOptions(insecure_registries=("[::1]",)).insecure("[::1]:80")
    assert TransportOptions(insecure_registries=("[::1]:80",)).insecure("[::1]")
    assert TransportOptions(insecure_registries=("reg.local:080",)).insecure("reg.local")
    assert not TransportOptions(insecure_registries=("[::1]",)).insecure("[::1]:5000")


def test_the_login_ping_asks_for_a_token_of_no_scope(token_registry: Registry) -> None:
    """The ping proves the credentials; its token grants nothing, whatever the challenge
    names (a forged one could name any repository, with push and delete)."""
    assert token_registry.token_server is not None
    token_registry.token_server.requests.clear()
    with _session(token_registry) as s:
        s.ping()
    asked = token_registry.token_server.requests
    assert len(asked) == 1 and "scope" not in asked[0], asked
