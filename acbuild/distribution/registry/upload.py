"""Registries: pushing — blob uploads (monolithic and chunked), mounts, manifests.

Built on ``transport.Session`` (its auth, TLS and retry rules); what it adds is requests with
a body. A body is always streamed from disk, never whole in memory, and a request that has to
be sent again (a 401 whose challenge was met, a 429/5xx, a broken connection) reopens it.
Upload order, as the distribution spec has it: HEAD (the registry has it: nothing sent),
then a cross-repository mount from a repository known to hold it, then POST + PUT?digest=
(monolithic) or POST + PATCH… + PUT (chunked, for blobs above ``chunk_size``).
A PATCH or a closing PUT whose answer is lost (429/5xx, a broken connection) is not sent
again as it was: the registry may have acted on it, and then its upload session is gone or
its offset has moved. The blob is looked up (HEAD); if it is not there, the upload starts
over with a new session.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from acbuild.distribution.registry.failures import final, reason, unreachable
from acbuild.distribution.registry.reference import RegistryError
from acbuild.distribution.registry.transport import (
    Sending,
    Session,
    Stopped,
    TimedOut,
    _origin,
    scopes,
)

CHUNK_SIZE = 32 << 20  # blobs above this go in PATCH chunks of this size
_READ = 1 << 20

# A fresh iterator over a request's body (called again for every send of it).
Body = Callable[[], Iterator[bytes]]


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobPush:
    """What happened to one blob: ``sent`` (uploaded), ``mounted`` (from another repository)
    or ``present`` (the registry had it: nothing sent)."""

    digest: str
    size: int
    how: str


def _file_body(path: Path, offset: int = 0, length: int | None = None) -> Body:
    def body() -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(offset)
            left = os.fstat(f.fileno()).st_size - offset if length is None else length
            while left > 0:
                chunk = f.read(min(_READ, left))
                if not chunk:
                    raise RegistryError(f"{path} shrank while it was being uploaded")
                left -= len(chunk)
                yield chunk
    return body


def _bytes_body(data: bytes) -> Body:
    return lambda: iter((data,))


class Lost(RegistryError):
    """The answer to a PATCH or a closing PUT did not come (429/5xx, a broken connection):
    the registry may or may not have acted on it."""

    def __init__(self, message: str, *, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PushSession(Session):
    """A Session that can also send POST/PUT/PATCH with a streamed body."""

    @contextlib.contextmanager
    def send(self, method: str, url: str, *, scope: str, headers: Mapping[str, str],
             body: Body | None = None, once: bool = False) -> Iterator[httpx.Response]:
        """The response to ``method url`` (streamed; closed when the block ends). A redirect
        is returned as it is: following it would send the body somewhere else. ``once``: a
        request the registry may act on though its answer is lost; a 429/5xx or a broken
        connection raises Lost instead of sending it again (a 401 is still met: the
        registry did nothing with that)."""
        with self._watch.running(Sending(self, method, url)):
            response = self._send_body(method, url, scope, headers, body, once)
        with self._streamed(response, f"{method} {self._shown(url)}"):
            yield response

    def _unlimited_io(self) -> httpx.Timeout:
        """No per-send or per-read limit: a send into a full buffer waits until the system
        has room again, about a third of it acknowledged (MiBs: minutes of a slow uplink),
        and the answer is due only once the registry acknowledged the last byte; ``Sending``
        bounds both, then the body's deadline the answer's body."""
        return httpx.Timeout(None, connect=min(self.options.timeout, 30.0),
                             pool=self.options.timeout)

    def _send_body(self, method: str, url: str, scope: str, headers: Mapping[str, str],
                   body: Body | None, once: bool) -> httpx.Response:
        own = _origin(self.base)  # credentials go to the registry only
        challenged = False
        attempt = 0
        while True:
            sent = dict(headers)
            if _origin(url) == own and (auth := self._auth_header(scope)):
                sent["Authorization"] = auth
            try:
                request = self._client.build_request(
                    method, url, headers=sent, content=None if body is None else body(),
                    timeout=self._unlimited_io())
                response = self._client.send(request, stream=True)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as e:
                # a URL the registry sent (an upload Location) that cannot be asked for
                raise RegistryError(f"{self.host}: the registry sent a URL that cannot be "
                                    f"used: {reason(e)}") from None
            except httpx.TransportError as e:
                self._timed_out()
                if once and not self._never_answered(e, url) and not final(e):
                    raise Lost(unreachable(e, self._shown(url), url).message) from None
                self._retry_or_raise(e, url, attempt, None)
                attempt += 1
                continue
            self._answered.add(_origin(url))
            status = response.status_code
            if status == 401 and not challenged:
                challenged = True
                try:
                    met = self._authenticate(response.headers.get("www-authenticate", ""),
                                             scope, sent.get("Authorization"))
                except BaseException:
                    response.close()
                    raise
                if met:
                    response.close()
                    continue
                return response  # a challenge this session cannot meet: the caller explains
            if status == 429 or status >= 500:
                wait = response.headers.get("retry-after")
                if once:
                    response.close()
                    raise Lost(f"HTTP {status}", retry_after=wait)
                if attempt < self.options.retries:
                    response.close()
                    self._pause(attempt, wait)
                    attempt += 1
                    continue
            return response

    def backoff(self, attempt: int, retry_after: str | None) -> None:
        """The pause before the ``attempt``-th retry (0 first) of something larger than one
        request (an upload started over)."""
        self._pause(attempt, retry_after)


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class Repository:
    """Pushes to one repository of a registry through ``session``."""

    def __init__(self, session: PushSession, repository: str, *,
                 chunk_size: int = CHUNK_SIZE) -> None:
        self.session = session
        self.repository = repository
        self.scope = push_scope(repository)
        self.chunk_size = chunk_size

    def _url(self, path: str) -> str:
        return f"{self.session.base}/v2/{self.repository}/{path}"

    def _head(self, path: str, what: str, accept: str | None = None,
              digest: str | None = None, size: int | None = None) -> bool:
        """Whether the registry has it. With ``digest`` and ``size``, a 200 counts only with
        that blob's Content-Length, and with its digest if it names one (as docker's client
        checks it): a registry (or a proxy) answering 200 for what it does not hold does not
        make the upload skipped on its word."""
        with self.session.get(f"/v2/{self.repository}/{path}", scope=self.scope,
                              accept=accept, method="HEAD") as response:
            if response.status_code == 404:
                return False
            self.session.check(response, what)
            named = response.headers.get("docker-content-digest")
            length = response.headers.get("content-length")
            return (digest is None or named is None or named == digest) and \
                (size is None or length == str(size))

    def preflight(self) -> None:
        """Reach the repository with the push scope's credentials before any work is done
        for it: an unreachable registry, a TLS mismatch or refused credentials are found
        out now, not after a long build. (A token server may still grant only pull; the
        first upload says so.)"""
        self._head("blobs/sha256:" + "0" * 64, f"pushing to {self.repository}")

    def has_blob(self, digest: str, size: int) -> bool:
        return self._head(f"blobs/{digest}", f"blob {digest[:19]}", digest=digest, size=size)

    def has_manifest(self, reference: str, accept: str) -> bool:
        return self._head(f"manifests/{reference}", f"manifest {reference}", accept)

    # ---- blobs ---------------------------------------------------------------------------

    def push_blob(self, path: Path, digest: str, size: int, *,
                  mount_from: Sequence[str] = ()) -> BlobPush:
        """Make ``digest`` (the file ``path``) exist in the repository."""
        if self.has_blob(digest, size):
            return BlobPush(digest=digest, size=size, how="present")
        for source in mount_from:
            if source != self.repository and self._mount(digest, source):
                return BlobPush(digest=digest, size=size, how="mounted")
        self._upload(lambda offset, length: _file_body(path, offset, length), digest, size)
        return BlobPush(digest=digest, size=size, how="sent")

    def push_bytes(self, data: bytes, digest: str) -> BlobPush:
        """A small blob (a config) held in memory anyway."""
        if self.has_blob(digest, len(data)):
            return BlobPush(digest=digest, size=len(data), how="present")
        self._upload(lambda offset, length: _bytes_body(data[offset:offset + length]),
                     digest, len(data))
        return BlobPush(digest=digest, size=len(data), how="sent")

    def _mount(self, digest: str, source: str) -> bool:
        """True when the registry mounted it (201). 202 (it started an upload instead),
        401/403 (no pull right on ``source``) and a token server that will not grant that
        right are not errors: the blob is uploaded. The request asks for a token for both
        repositories, as a registry checking tokens wants for a mount."""
        query = urlencode({"mount": digest, "from": source})
        scope = scopes(self.scope, f"repository:{source}:pull")
        try:
            with self.session.send("POST", self._url(f"blobs/uploads/?{query}"),
                                   scope=scope, headers={"Content-Length": "0"}) as response:
                if response.status_code == 201:
                    return True
                location = _resolved(response) if response.status_code == 202 else None
        except (Stopped, TimedOut):
            raise
        except RegistryError:  # the token server refused the pull on ``source``
            return False
        if location is not None:
            self._cancel(location)
        return False

    def _cancel(self, url: str) -> None:
        """Best effort: an abandoned upload session expires on its own anyway. Only on the
        registry itself: a Location elsewhere would make this a DELETE sent wherever the
        registry chose (an intranet service, a metadata endpoint), so none is sent there."""
        if _origin(url) != _origin(self.session.base):
            return
        with contextlib.suppress(RegistryError), \
                self.session.send("DELETE", url, scope=self.scope, headers={}):
            pass

    def _start(self) -> str:
        with self.session.send("POST", self._url("blobs/uploads/"), scope=self.scope,
                               headers={"Content-Length": "0"}) as response:
            self.session.check(response, f"starting an upload to {self.repository}")
            return self._location(response, f"starting an upload to {self.repository}")

    def _location(self, response: httpx.Response, what: str) -> str:
        """Where the upload goes on: the answer's Location, resolved against the URL of
        the request it answers (a relative one is relative to that, RFC 9110)."""
        if not response.headers.get("location"):
            raise RegistryError(f"{self.session.host}: {what}: the registry sent no Location")
        url = _resolved(response)
        if url is None:  # e.g. a malformed IPv6 literal
            raise RegistryError(f"{self.session.host}: {what}: the registry sent a Location "
                                "that is not a URL")
        if _origin(url) != _origin(self.session.base):
            raise RegistryError(f"{self.session.host}: {what}: the registry sends the upload "
                                "to another host, which would not get the credentials")
        return url

    def _upload(self, part: Callable[[int, int], Body], digest: str, size: int) -> None:
        """POST, then one PUT or PATCHes and a PUT (``part(offset, length)``: that part of
        the blob). When the answer to a PATCH or the PUT is lost, the blob is looked up
        and, if the registry does not have it, the upload starts over, up to ``retries``
        times. An upload that fails is left to expire: the registry purges abandoned
        upload sessions, and cancelling one costs another round of retries on a
        connection that has just failed."""
        retries = self.session.options.retries
        for attempt in range(retries + 1):
            try:
                self._upload_once(part, digest, size)
                return
            except Lost as lost:
                if self.has_blob(digest, size):
                    return  # stored before the answer was lost
                if attempt == retries:
                    raise RegistryError(f"{self.session.host}: uploading blob {digest[:19]}: "
                                        f"{lost.message} ({retries + 1} tries)") from None
                self.session.backoff(attempt, lost.retry_after)

    def _upload_once(self, part: Callable[[int, int], Body], digest: str, size: int) -> None:
        location = self._start()
        if size <= self.chunk_size:
            self._finish(location, digest, part(0, size), size)
            return
        offset = 0
        # Resumes: ``retries`` in a row without progress, and all told ``retries`` for
        # each chunk, so a registry that takes a byte at a time cannot keep it going.
        stalled, resumes, most = 0, 0, self.session.options.retries * (
            size // self.chunk_size + 2)
        while offset < size:
            length = min(self.chunk_size, size - offset)
            end = offset + length - 1
            try:
                with self.session.send(
                        "PATCH", location, scope=self.scope, body=part(offset, length),
                        once=True, headers={"Content-Type": "application/octet-stream",
                                            "Content-Length": str(length),
                                            "Content-Range": f"{offset}-{end}"}) as response:
                    self.session.check(response, f"uploading blob {digest[:19]}")
                    if response.headers.get("range", f"0-{end}") != f"0-{end}":
                        raise RegistryError(f"{self.session.host}: uploading blob "
                                            f"{digest[:19]}: the registry lost part of it")
                    location = self._location(response, f"uploading blob {digest[:19]}")
            except Lost as lost:
                # Where the session is (the registry may have taken all, some or none of
                # the chunk): go on from there rather than send the whole blob again.
                status = self._status(location, offset, end + 1, digest) \
                    if stalled < self.session.options.retries and resumes < most else None
                if status is None:
                    raise
                stalled = 0 if status[1] > offset else stalled + 1
                self.session.backoff(stalled, lost.retry_after)
                resumes += 1
                location, offset = status
                continue
            offset += length
        self._finish(location, digest, None, 0)

    def _status(self, location: str, low: int, high: int, digest: str
                ) -> tuple[str, int] | None:
        """The upload session's Location and how many bytes it holds (a GET of it: 204 and
        ``Range: 0-LAST``), if that is from ``low`` to ``high``; None when the session is
        gone or says something else (then the upload starts over)."""
        target = urlsplit(location)
        path = target.path + (f"?{target.query}" if target.query else "")
        with self.session.get(path, scope=self.scope) as response:
            if response.status_code != 204:
                return None
            held = response.headers.get("range", "")
            first, dash, last = held.partition("-")
            if first != "0" or not dash or not last.isascii() or not last.isdigit():
                return None
            # "0-0" is what distribution says of an empty session too
            count = 0 if last == "0" and low == 0 else int(last) + 1
            if not low <= count <= high:
                return None
            return self._location(response, f"uploading blob {digest[:19]}"), count

    def _finish(self, location: str, digest: str, body: Body | None, size: int) -> None:
        sep = "&" if "?" in location else "?"
        with self.session.send(
                "PUT", f"{location}{sep}{urlencode({'digest': digest})}", scope=self.scope,
                body=body, once=True,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(size)}) as response:
            self.session.check(response, f"uploading blob {digest[:19]}")
            got = response.headers.get("docker-content-digest")
        if got is not None and got != digest:
            raise RegistryError(f"{self.session.host}: blob {digest[:19]} was stored as "
                                f"{got[:19]}")

    # ---- manifests -----------------------------------------------------------------------

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag (or its digest); returns its digest."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        with self.session.send(
                "PUT", self._url(f"manifests/{reference}"), scope=self.scope,
                body=_bytes_body(body), headers={"Content-Type": media_type,
                                                 "Content-Length": str(len(body))}) as response:
            self.session.check(response, f"pushing manifest {self.repository}:{reference}")
            got = response.headers.get("docker-content-digest")
        if got is not None and got != digest:
            raise RegistryError(f"{self.session.host}: the manifest was stored as {got[:19]}, "
                                f"not {digest[:19]}")
        return digest


def _resolved(response: httpx.Response) -> str | None:
    """The absolute URL of ``response``'s Location; None when it does not parse."""
    try:
        return urljoin(str(response.request.url), str(response.headers.get("location", "")))
    except ValueError:
        return None
