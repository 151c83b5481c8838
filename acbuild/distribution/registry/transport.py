"""Registries: one HTTP session per registry on httpx — TLS, auth challenges, retries, redirects.

- https with the system's CAs plus --ca-file; plain http only for hosts named with
  --insecure-registry (a token realm or a redirect target on plain http needs it too);
- ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` → a token from the realm (with the
  user's basic credentials when there are any), cached per scope; ``Basic`` → credentials;
- retries with exponential backoff (and Retry-After) on 429, 5xx and broken connections; a
  host that refuses the connection before it has ever answered in this session is an error
  at once (nothing listens there: a wrong port, a registry not started), not ~7 s of retries;
- redirects followed by hand: the Authorization header goes only to the registry's own origin
  (blob GETs are sent on to object storage, which must not see the registry's credentials);
- proxies from HTTPS_PROXY/HTTP_PROXY/NO_PROXY (httpx's trust_env), timeouts, streaming;
- wall-clock deadlines (``deadline``), since a per-read timeout never fires for a server that
  trickles: each request must have its whole answer's head (connect, redirects, token,
  retries, status line and headers) within ``timeout`` seconds, and then at least
  ``PROGRESS_BYTES`` of its body in every ``timeout`` seconds; a caller may run a deadline
  of its own over several requests (``Session.within``: the remote cache's budget);
- stops: a request's ``cancel`` event, and the session's ``stop`` (the build's: Ctrl-C,
  another stage's failure), end whatever it is doing within ``deadline.SLICE`` seconds,
  a trickling or silent answer's head, a token request or an upload included.
Nothing here puts a credential or token into a message.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx  # acbuild-py's entry point keeps httpx's own CLI from loading: cli/main.py

from acbuild import __version__
from acbuild.distribution.registry.credentials import Credential
from acbuild.distribution.registry.deadline import (
    PROGRESS_BYTES,
    Deadline,
    Stop,
    Watch,
    watched_client,
)
from acbuild.distribution.registry.failures import (
    final,
    reason,
    refused,
    refused_error,
    unreachable,
)
from acbuild.distribution.registry.proxyenv import proxy_error
from acbuild.distribution.registry.reference import RegistryError, check_host
from acbuild.distribution.tls import tls_context
from acbuild.numbers import ascii_int
from acbuild.terminal import escape

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TOKEN_LIMIT = 1 << 20
_ERROR_LIMIT = 64 << 10
_RETRY_AFTER_CAP = 10.0
_ERROR_CODE = re.compile(r"[A-Z][A-Z_]{0,39}")
# What httpx raises for a URL it cannot use (not a transport failure: never retried).
_BAD_URL = (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, UnicodeError)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportOptions:
    insecure_registries: tuple[str, ...] = ()  # HOST:PORT reached over plain http
    ca_file: Path | None = None  # a CA trusted besides the system's
    # seconds: for each request's answer up to its headers (connect, redirects, token,
    # retries included), and for each PROGRESS_BYTES of its body
    timeout: float = 60.0
    retries: int = 4
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one
    max_redirects: int = 5

    def insecure(self, host: str) -> bool:
        """Whether HOST[:PORT] is reached over plain http. ``host`` and ``host:80`` are one
        server there, however the user or a URL the registry sent spells it."""
        return _plain_port(host.lower()) in {
            _plain_port(check_host(h, "--insecure-registry")) for h in self.insecure_registries}


def _plain_port(host: str) -> str:
    name, colon, port = host.rpartition(":")
    if colon and not host.endswith("]") and port.isascii() and port.isdigit() \
            and int(port) == 80:
        return name
    return host


_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int | None]  # scheme, host, port


def _origin(url: str) -> Origin:
    """(scheme, host, port) with the scheme's default port filled in, so that
    ``https://h/`` and ``https://h:443/`` are one origin (RFC 6454), as they are one
    server: what decides where credentials go and which Location is the registry's own.
    ("", "", None) for a URL that does not parse (a bad IPv6 literal)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return "", "", None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname or "", _DEFAULT_PORTS.get(scheme) if port is None else port


def _netloc(url: str) -> str:
    """HOST[:PORT] of ``url`` as written (no user info), for messages and hints."""
    try:
        return urlsplit(url).netloc.lower().rpartition("@")[2]
    except ValueError:
        return ""


def scopes(*wanted: str) -> str:
    """Token scopes as one key: space-separated, as OAuth2 writes a list of them."""
    return " ".join(dict.fromkeys(s for w in wanted for s in w.split() if s))


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` → ("bearer", {realm: …, service: …})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m[0].lower(): m[1] if m[1] or not m[2] else m[2]
              for m in re.findall(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))', rest)}
    return scheme.lower(), params


class Session:
    """Requests to one registry (``host`` as named: HOST[:PORT]; ``api_host`` where its API
    is). Use as a context manager; it holds a connection pool. ``stop``, once set, ends
    every request of every thread (RegistryError "stopped")."""

    def __init__(self, host: str, options: TransportOptions, credential: Credential | None,
                 *, api_host: str | None = None, stop: threading.Event | None = None) -> None:
        self.host = host
        self.options = options
        self.credential = credential
        api = api_host or host
        self.scheme = "http" if options.insecure(host) else "https"
        self.base = f"{self.scheme}://{api}"
        self._tokens: dict[str, str] = {}
        self._basic = False
        self._auth_lock = threading.Lock()  # one answer to a challenge, for every thread
        self._token_failed: dict[str, RegistryError] = {}  # scope -> why no token came
        self._answered: set[Origin] = set()  # origins that answered in this session
        self._watch = Watch(() if stop is None else (self._stop(stop),))
        verify = tls_context(options.ca_file)
        try:  # trust_env makes a transport for each proxy variable here, and may fail
            self._client = watched_client(
                self._watch, verify=verify, trust_env=True,
                follow_redirects=False,
                timeout=httpx.Timeout(options.timeout, connect=min(options.timeout, 30.0)),
                headers={"User-Agent": f"acbuild-py/{__version__}",
                         "Accept-Encoding": "identity"})
        except (ImportError, ValueError, httpx.InvalidURL) as e:
            raise proxy_error(e) from None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # ---- requests ------------------------------------------------------------------------

    def within(self, deadline: Deadline) -> contextlib.AbstractContextManager[None]:
        """Bound this thread's requests of this session by ``deadline`` too, until the block
        ends; past it, what is being sent or read fails with ``deadline.error()``."""
        return self._watch.running(deadline)

    def _stop(self, event: threading.Event) -> Stop:
        return Stop(event, lambda: Stopped(f"{escape(self.host)}: stopped"))

    @contextlib.contextmanager
    def _streamed(self, response: httpx.Response, what: str) -> Iterator[httpx.Response]:
        """``response`` with its body held to PROGRESS_BYTES a ``timeout``, closed after."""
        body = _Body(response.stream, self, what)
        response.stream = body
        try:
            with self._watch.running(body):
                yield response
        finally:
            response.close()

    def _timed_out(self) -> None:
        """After a transport error: raise the error of a deadline that has passed."""
        if (passed := self._watch.expired()) is not None:
            raise passed.error() from None

    @contextlib.contextmanager
    def get(self, path: str, *, scope: str, accept: str | None = None,
            method: str = "GET", cancel: threading.Event | None = None
            ) -> Iterator[httpx.Response]:
        """The response (streamed, any status but a redirect or a handled 401) to ``path``
        under /v2/, with the token for ``scope`` (``repository:NAME:pull``). ``cancel``, once
        set, ends the retries (another thread's Ctrl-C)."""
        headers = {"Accept": accept} if accept else {}
        url = f"{self.base}{path}"
        head = _Head(self, method, url)
        with contextlib.ExitStack() as stack:
            if cancel is not None:  # the head's socket operations and the body's
                stack.enter_context(self._watch.running(self._stop(cancel)))
            with self._watch.running(head):
                response = self._send(method, url, scope, headers, cancel, head)
            with self._streamed(response, f"{method} {self._shown(head.url)}"):
                yield response

    def ping(self) -> None:
        """GET /v2/ with credentials: checks they are accepted (login)."""
        with self.get("/v2/", scope="") as response:
            if response.status_code == 401:
                raise self.unauthorized(response, "/v2/")
            self.check(response, "/v2/")

    def _auth_header(self, scope: str) -> str | None:
        if scope in self._tokens:
            return f"Bearer {self._tokens[scope]}"
        if self._basic and self.credential is not None:
            return _basic(self.credential)
        return None

    def _send(self, method: str, url: str, scope: str, headers: Mapping[str, str],
              cancel: threading.Event | None, head: _Head) -> httpx.Response:
        own = _origin(url)
        challenged = False
        hops = 0
        attempt = 0
        while True:
            if cancel is not None and cancel.is_set():
                raise RegistryError(f"{self._shown(url)}: stopped")
            sent = dict(headers)
            if _origin(url) == own and (auth := self._auth_header(scope)):
                sent["Authorization"] = auth
            try:
                response = self._client.send(self._client.build_request(method, url,
                                                                        headers=sent),
                                             stream=True)
            except _BAD_URL as e:
                raise RegistryError(f"{self.host}: cannot use the URL "
                                    f"{escape(url[:200])!r}: {reason(e)}") from None
            except httpx.TransportError as e:
                self._timed_out()
                if isinstance(e, httpx.RemoteProtocolError) and "location header" in str(e):
                    # httpx parses every redirect's Location
                    raise RegistryError(f"{self._shown(url)} redirects to a URL that does not "
                                        "parse") from None
                self._retry_or_raise(e, url, attempt, cancel)
                attempt += 1
                continue
            self._answered.add(_origin(url))
            status = response.status_code
            if status in _REDIRECTS:
                location = response.headers.get("location", "")
                response.close()
                hops += 1
                if hops > self.options.max_redirects:
                    raise RegistryError(f"{self._shown(url)}: more than "
                                        f"{self.options.max_redirects} redirects")
                url = self._redirect_target(url, location)
                head.url = url
                continue
            if status == 401 and _origin(url) == own and not challenged:
                challenged = True
                head.doing = " asking for a token"
                met = self._authenticate(response.headers.get("www-authenticate", ""), scope,
                                         sent.get("Authorization"), cancel)
                head.doing = ""
                if met:
                    response.close()
                    continue
                return response
            if (status == 429 or status >= 500) and attempt < self.options.retries:
                wait = response.headers.get("retry-after")
                response.close()
                self._pause(attempt, wait, cancel)
                attempt += 1
                continue
            return response

    def _retry_or_raise(self, e: httpx.TransportError, url: str, attempt: int,
                        cancel: threading.Event | None) -> None:
        if self._never_answered(e, url):
            raise refused_error(self._shown(url), _netloc(url)) from None
        if attempt >= self.options.retries or final(e):
            raise unreachable(e, self._shown(url), url) from None
        self._pause(attempt, None, cancel)

    def _never_answered(self, e: httpx.TransportError, url: str) -> bool:
        """A refused connection to a host that has not answered yet: nothing listens there,
        and backing off would only delay the error. One that answered before and refuses
        now (restarting) is retried like any broken connection."""
        return refused(e) and _origin(url) not in self._answered

    def _pause(self, attempt: int, retry_after: str | None,
               cancel: threading.Event | None = None) -> None:
        wait = self.options.backoff * (2 ** attempt)
        seconds = None if retry_after is None else ascii_int(retry_after)
        if seconds is not None:
            wait = min(float(seconds), _RETRY_AFTER_CAP)
        # A pause is no socket operation, so no deadline cuts it short by itself: one that
        # would end past a running deadline ends at it, with that deadline's error.
        first = self._watch.earliest()
        late = first is not None and time.monotonic() + wait >= first.at()
        if first is not None and late:
            wait = max(0.0, first.at() - time.monotonic())
        if cancel is not None and cancel.wait(0):
            raise RegistryError("stopped")
        self._watch.pause(wait)  # a stop set meanwhile ends it
        if cancel is not None and cancel.is_set():
            raise RegistryError("stopped")
        if first is not None and late:
            raise first.error()

    def _redirect_target(self, url: str, location: str) -> str:
        if not location:
            raise RegistryError(f"{self._shown(url)}: a redirect without a Location")
        try:
            target = urljoin(url, location)
        except ValueError:
            target = location
        scheme, netloc = _origin(target)[0], _netloc(target)
        if scheme not in ("http", "https") or not netloc:
            raise RegistryError(f"{self._shown(url)} redirects to {escape(target[:200])!r}, "
                                "which is not an http(s) URL")
        if scheme == "http" and not self.options.insecure(netloc):
            raise RegistryError(
                f"{self._shown(url)} redirects to plain http://{netloc}",
                hint=f"only hosts named with --insecure-registry are reached without TLS "
                     f"(--insecure-registry {netloc})")
        return target

    # ---- authentication ------------------------------------------------------------------

    def _authenticate(self, header: str, scope: str, sent: str | None,
                      cancel: threading.Event | None = None) -> bool:
        """Meet a 401's challenge to a request that carried ``sent`` (an Authorization or
        None); False when there is nothing this session can do. Requests run in parallel
        (a pull's layers): the first 401 is met once, and a request that was sent before
        that answer retries with it instead of taking its 401 for refused credentials.
        ``cancel`` ends the wait for another thread's answer, and the token request's
        retries and reading (Ctrl-C while a token server trickles)."""
        while not self._auth_lock.acquire(timeout=0.1):
            if cancel is not None and cancel.is_set():
                raise RegistryError(f"{self.host}: stopped")
            self._timed_out()  # this request's deadline runs while another thread asks
        try:
            current = self._auth_header(scope)
            if current is not None and current != sent:
                return True
            scheme, params = parse_challenge(header)
            if scheme == "basic":
                # An identity token is only for a token server, not a password to send.
                if self.credential is None or self.credential.identity_token or self._basic:
                    return False
                self._basic = True
                return True
            if scheme != "bearer" or "realm" not in params:
                return False
            if (failed := self._token_failed.get(scope)) is not None:
                # Another request's answer failed already: the same error, not the token
                # server's retries again for each waiting thread.
                raise type(failed)(failed.message, hint=failed.hint)
            try:
                token = self._fetch_token(params, scope, cancel)
            except RegistryError as e:
                self._token_failed[scope] = e
                raise
            self._tokens[scope] = token
            return True
        finally:
            self._auth_lock.release()

    def _fetch_token(self, params: dict[str, str], scope: str,
                     cancel: threading.Event | None = None) -> str:
        realm = params["realm"]
        scheme, netloc = _origin(realm)[0], _netloc(realm)
        if scheme not in ("http", "https") or not netloc:
            raise RegistryError(f"registry {self.host} asks for a token from "
                                f"{escape(realm[:200])!r}, which is not an http(s) URL")
        if scheme == "http" and not self.options.insecure(netloc):
            raise RegistryError(
                f"registry {self.host} asks for a token from plain http://{netloc}",
                hint=f"only hosts named with --insecure-registry are reached without TLS "
                     f"(--insecure-registry {netloc})")
        credential = self.credential
        if credential is not None and self.scheme == "http" \
                and netloc != _netloc(self.base) \
                and _origin(realm)[1:] != _origin(self.base)[1:] \
                and not self.options.insecure(netloc):
            # Over plain http the challenge itself may be forged: the credentials go only to a
            # token server the user named, not to wherever an answer points.
            raise RegistryError(
                f"registry {self.host} (plain http) asks for a token from {netloc}, which was "
                "not named with --insecure-registry; refusing to send it your credentials",
                hint=f"if {netloc} is the registry's token server, add --insecure-registry "
                     f"{netloc}")
        # What the request needs (a mount: push here and pull where the blob is), never
        # what a challenge names: a registry (or whoever answers for it over plain http)
        # naming other repositories would get a token for them with the user's
        # credentials. The login's ping asks for none: a token that proves the
        # credentials, granting nothing.
        wanted = scope.split()  # a key ``scopes`` made
        service = [("service", params["service"])] if params.get("service") else []
        try:
            if credential is not None and credential.identity_token:
                # The OAuth2 flow of the token spec: the refresh token, POSTed as a form
                # (its scope a space-separated list).
                url = realm
                request = self._client.build_request("POST", url, data={
                    "grant_type": "refresh_token", "refresh_token": credential.password,
                    "client_id": "acbuild-py", **dict(service),
                    **({"scope": " ".join(wanted)} if wanted else {})})
            else:
                # The token spec's GET takes each scope as a parameter of its own.
                query = service + [("scope", w) for w in wanted]
                url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query \
                    else realm
                headers = {"Authorization": _basic(credential)} if credential else {}
                request = self._client.build_request("GET", url, headers=headers)
        except _BAD_URL as e:
            raise RegistryError(f"registry {self.host} asks for a token from an invalid "
                                f"URL {escape(realm[:200])!r}: {reason(e)}") from None
        def stopped(_: int) -> None:
            if cancel is not None and cancel.is_set():
                raise RegistryError(f"the token server of {self.host}: stopped")

        for attempt in range(self.options.retries + 1):
            stopped(0)
            try:
                response = self._client.send(request, stream=True)
            except _BAD_URL as e:
                raise RegistryError(f"registry {self.host} asks for a token from an invalid "
                                    f"URL {escape(realm[:200])!r}: {reason(e)}") from None
            except httpx.TransportError as e:
                self._timed_out()
                if self._never_answered(e, url):
                    raise refused_error(f"the token server of {self.host}", netloc) from None
                if final(e):
                    raise unreachable(e, f"the token server of {self.host} ({netloc})",
                                      url) from None
                if attempt < self.options.retries:
                    self._pause(attempt, None, cancel)
                    continue
                raise RegistryError(f"cannot reach the token server of {self.host} "
                                    f"({netloc}): {reason(e)}") from None
            self._answered.add(_origin(url))
            with contextlib.closing(response):
                if (response.status_code == 429 or response.status_code >= 500) and \
                        attempt < self.options.retries:
                    self._pause(attempt, response.headers.get("retry-after"), cancel)
                    continue
                if response.status_code in (401, 403):
                    who = self.credential.who if self.credential else "anonymous access"
                    raise RegistryError(
                        f"the token server of {self.host} refused {who} "
                        f"(HTTP {response.status_code})",
                        hint=None if self.credential else
                        f"log in first: acbuild-py login {self.host}")
                if response.status_code != 200:
                    raise RegistryError(f"the token server of {self.host} answered HTTP "
                                        f"{response.status_code}")
                try:
                    data = read_limited(response, _TOKEN_LIMIT, "token response", each=stopped)
                except RegistryError:
                    self._timed_out()
                    raise
                doc = _json(data, f"the token server of {self.host}")
            token = doc.get("token") or doc.get("access_token")
            if not isinstance(token, str) or not token or not token.isascii() or \
                    any(c in token for c in "\r\n "):
                raise RegistryError(f"the token server of {self.host} sent no usable token")
            return token
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- explaining failures -------------------------------------------------------------

    def _shown(self, url: str) -> str:
        try:
            parts = urlsplit(url)
        except ValueError:
            return escape(url[:200])
        return escape(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"[:300])

    def unauthorized(self, response: httpx.Response, what: str) -> RegistryError:
        if self.credential is None:
            return RegistryError(f"{self.host}: {what}: authentication required (HTTP 401) "
                                 "and no credentials are stored for it",
                                 hint=f"log in first: acbuild-py login {self.host}")
        _, params = parse_challenge(response.headers.get("www-authenticate", ""))
        if params.get("error") == "insufficient_scope":
            # The token server took the credentials; the token it gave lacks the right
            # (a pull-only user pushing): logging in again changes nothing.
            return RegistryError(f"{self.host}: {what}: {self.credential.who} is not allowed "
                                 "to do this (HTTP 401, insufficient_scope: the token server "
                                 "granted less than was asked for)",
                                 hint="ask for that access to the repository, or use one "
                                      "you may write to")
        return RegistryError(f"{self.host}: {what}: the registry refused the "
                             f"credentials of {self.credential.who} (HTTP 401)",
                             hint=f"log in again: acbuild-py login {self.host}")

    def check(self, response: httpx.Response, what: str) -> None:
        """Raise a one-line RegistryError unless the response is a success."""
        status = response.status_code
        if 200 <= status < 300:
            return
        try:
            where = str(response.request.url)
        except RuntimeError:  # a response made without a request
            where = self.base
        if status == 401 and _origin(where) != _origin(self.base):
            # a redirect's target, which is sent none of the registry's credentials (RR-4)
            raise RegistryError(f"{self.host}: {what}: redirected to {self._shown(where)}, "
                                "which answered HTTP 401 (it is sent no credentials: the "
                                "registry's are for the registry alone)")
        if status == 401:
            raise self.unauthorized(response, what)
        detail = _registry_errors(response)
        raise RegistryError(f"{self.host}: {what}: HTTP {status}"
                            + (f" ({detail})" if detail else ""))


class TimedOut(RegistryError):
    """A registry that let a deadline pass: it answered too slowly, or stalled mid-body."""


class Stopped(RegistryError):
    """A request ended by a stop (Ctrl-C, SIGTERM, another stage's failure): not the
    registry's fault, and not worth a message of its own (the cause has one)."""


class _Head:
    """The deadline of a request's answer up to its headers (redirects, the token, retries
    included): whatever trickles, a request has an answer or an error in ``timeout`` s."""

    def __init__(self, session: Session, method: str, url: str) -> None:
        self._session = session
        self._method = method
        self.url = url  # where it is (a redirect moves it)
        self.doing = ""  # or " asking for a token"
        self._at = time.monotonic() + session.options.timeout

    def at(self) -> float:
        return self._at

    def error(self) -> Exception:
        return TimedOut(f"registry {escape(self._session.host)}: {self._method} "
                        f"{self._session._shown(self.url)}: timed out{self.doing}: no complete "
                        f"answer (status line and headers) within "
                        f"{self._session.options.timeout:g} s")


class Sending:
    """The deadline of a request with a body (an upload) up to its answer's headers: the
    body may take as long as the registry keeps acknowledging PROGRESS_BYTES more of it in
    every ``timeout``; the answer is then due ``timeout`` seconds after it acknowledged the
    last of it, or after a link beyond it taking FORWARD_RATE would have passed the body on,
    if that is later (``deadline._Outgoing``)."""

    def __init__(self, session: Session, method: str, url: str) -> None:
        self._session = session
        self._what = f"{method} {session._shown(url)}"
        self._started = time.monotonic()
        session._watch.sending()

    def at(self) -> float:
        return max(self._started, self._session._watch.progress()) + \
            self._session.options.timeout

    def error(self) -> Exception:
        timeout = self._session.options.timeout
        acknowledged = self._session._watch.acknowledged()
        if acknowledged is None:
            why = f"nothing sent nor answered (status line and headers) in {timeout:g} s"
        elif acknowledged.whole:
            waited = max(timeout, time.monotonic() - acknowledged.at)
            why = (f"no answer (status line and headers) in {waited:.0f} s after the "
                   "registry acknowledged the whole body")
        else:
            why = (f"the registry acknowledged less than {PROGRESS_BYTES >> 10} KiB of the "
                   f"body in {timeout:g} s")
        return TimedOut(f"registry {escape(self._session.host)}: {self._what}: timed out: "
                        f"{why}")


class _Body(httpx.SyncByteStream):
    """A response body that must keep coming: PROGRESS_BYTES in every ``timeout`` seconds
    (the deadline moves on with each PROGRESS_BYTES that arrive)."""

    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, session: Session,
                 what: str) -> None:
        assert isinstance(inner, httpx.SyncByteStream)
        self._inner = inner
        self._session = session
        self._what = what
        # The clock starts when the body is first read, not when the head arrived: a pull
        # holds a layer's body until the config is checked, and a slow config is no stall.
        self._mark: float | None = None
        self._since = 0
        self.received = 0

    def at(self) -> float:
        if self._mark is None:
            return math.inf
        return self._mark + self._session.options.timeout

    def error(self) -> Exception:
        return TimedOut(f"registry {escape(self._session.host)}: {self._what}: timed out: "
                        f"less than {PROGRESS_BYTES >> 10} KiB of the body arrived in "
                        f"{self._session.options.timeout:g} s ({self.received} bytes "
                        "in all)")

    def __iter__(self) -> Iterator[bytes]:
        self._mark = time.monotonic()
        try:
            for chunk in self._inner:
                self.received += len(chunk)
                self._since += len(chunk)
                if self._since >= PROGRESS_BYTES:
                    self._mark = time.monotonic()
                    self._since = 0
                yield chunk
        except httpx.TransportError:
            self._session._timed_out()
            raise

    def close(self) -> None:
        self._inner.close()


def _basic(credential: Credential) -> str:
    raw = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


# The most one decoding step yields: a body's decoded size is counted before more is made.
_DECODED_PIECE = 1 << 16


def body_chunks(response: httpx.Response, what: str) -> Iterator[bytes]:
    """``response``'s body, decoded, in pieces of at most 64 KiB however much a piece on the
    wire expands: the caller's byte count stops a decompression bomb before it is made.
    (httpx decodes each read whole, through every listed encoding: 64 KiB of zstd, or of
    gzip within gzip, became gigabytes in one chunk before any count saw it.) acbuild-py
    asks for identity; one layer of gzip or deflate, as a server may add anyway, is
    decoded; anything else is refused."""
    header = response.headers.get("content-encoding", "")
    encodings = [e.strip().lower() for e in header.split(",") if e.strip()]
    encodings = [e for e in encodings if e != "identity"]
    if not encodings:
        yield from response.iter_raw()
        return
    if len(encodings) > 1 or encodings[0] not in ("gzip", "x-gzip", "deflate"):
        raise RegistryError(f"{what}: the registry sent it with Content-Encoding "
                            f"{escape(header)!r}, which acbuild-py does not take (it asks for "
                            "identity)")
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header
    try:
        for raw in response.iter_raw():
            data = raw
            while data and not decoder.eof:
                if piece := decoder.decompress(data, _DECODED_PIECE):
                    yield piece
                data = decoder.unconsumed_tail
        while not decoder.eof and (piece := decoder.decompress(b"", _DECODED_PIECE)):
            yield piece
    except zlib.error:
        raise RegistryError(f"{what}: the registry sent a body that is not the "
                            f"{encodings[0]} its Content-Encoding says") from None
    if not decoder.eof:
        raise RegistryError(f"{what}: the transfer broke off (the {encodings[0]} stream "
                            "ends early)")


def read_limited(response: httpx.Response, limit: int, what: str, *,
                 each: Callable[[int], None] | None = None) -> bytes:
    """The whole body of a small document; more than ``limit`` bytes is an error. ``each``
    is told every chunk's size as it arrives (and may raise to stop: a deadline)."""
    length = ascii_int(response.headers.get("content-length", ""))
    if length is not None and length > limit:
        raise RegistryError(f"{what} is {length} bytes, more than the limit of "
                            f"{limit} bytes")
    chunks: list[bytes] = []
    total = 0
    try:
        for chunk in body_chunks(response, what):
            total += len(chunk)
            if total > limit:
                raise RegistryError(f"{what} is more than the limit of {limit} bytes")
            chunks.append(chunk)
            if each is not None:
                each(len(chunk))
    except httpx.HTTPError as e:
        raise RegistryError(f"{what}: the transfer broke off: {reason(e)}") from None
    return b"".join(chunks)


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RegistryError(f"{what} sent something that is not JSON") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} sent JSON that is not an object")
    return doc


def _registry_errors(response: httpx.Response) -> str:
    """The codes of a registry's error body (``{"errors": [{"code": …}]}``), escaped."""
    try:
        doc = json.loads(read_limited(response, _ERROR_LIMIT, "error body"))
    except (RegistryError, ValueError, UnicodeDecodeError, RecursionError):
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    # Only codes as the distribution spec spells them (MANIFEST_UNKNOWN): a registry's free
    # text may echo the request, its Authorization header included.
    codes = [e["code"] for e in errors[:5]
             if isinstance(e, dict) and isinstance(e.get("code"), str)
             and _ERROR_CODE.fullmatch(e["code"])]
    return ", ".join(codes)
