"""Registries: what a failed connection is, and how it is told (one line, escaped)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from acbuild.distribution.registry.deadline import CertificateRefused
from acbuild.distribution.registry.reference import RegistryError
from acbuild.distribution.tls import untrusted
from acbuild.terminal import escape


def reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return escape(text.splitlines()[0][:300] if text else type(e).__name__)


def _causes(e: BaseException) -> Iterator[BaseException]:
    """``e`` and what it was raised from: httpx wraps httpcore's error, which wraps the
    OSError or SSLError."""
    cause: BaseException | None = e
    for _ in range(8):
        if cause is None:
            return
        yield cause
        cause = cause.__cause__ or cause.__context__


def refused(e: BaseException) -> bool:
    """Whether ``e`` is (caused by) ECONNREFUSED."""
    return any(isinstance(cause, ConnectionRefusedError) for cause in _causes(e))


def certificate_refused(e: BaseException) -> CertificateRefused | None:
    """The certificate that failed verification in ``e``, if one did: a failure that
    asking again cannot change, so never retried."""
    return next((c for c in _causes(e) if isinstance(c, CertificateRefused)), None)


def speaks_no_tls(e: BaseException) -> bool:
    """Whether a TLS handshake in ``e`` was answered by something that is not TLS (plain
    http on that port): asking again cannot change that either."""
    if not isinstance(e, httpx.ConnectError):
        return False
    broken = next((c for c in _causes(e) if isinstance(c, ssl.SSLError)), None)
    text = "" if broken is None else str(broken)
    return "WRONG_VERSION_NUMBER" in text or "record layer failure" in text


def final(e: BaseException) -> bool:
    """Whether the transport error ``e`` is one no retry can change: a certificate refused,
    a server that speaks no TLS."""
    return certificate_refused(e) is not None or speaks_no_tls(e)


def refused_error(what: str, netloc: str) -> RegistryError:
    return RegistryError(f"cannot reach {what}: connection refused",
                         hint=f"nothing accepts connections at {escape(netloc)} (or at the proxy "
                              "the environment names): is it running, and is the port right?")


def unreachable(e: BaseException, shown: str, url: str) -> RegistryError:
    """The error of a request to ``url`` (``shown``: as the user may see it) that failed
    for good with the transport error ``e``."""
    host = (urlsplit(url).hostname or "").lower()
    if (certificate := certificate_refused(e)) is not None:
        whose = "" if certificate.host.lower() == host else \
            " (the https:// proxy the environment names)"
        said, hint = untrusted(escape(certificate.host), certificate.error, whose=whose)
        return RegistryError(f"cannot reach {shown}: {escape(said)}", hint=hint)
    return RegistryError(f"cannot reach {shown}: {reason(e)}", hint=_tls_hint(e, url))


def _tls_hint(e: BaseException, url: str) -> str | None:
    broken = next((c for c in _causes(e) if isinstance(c, ssl.SSLError)), None)
    if broken is None:
        return None
    if speaks_no_tls(e):
        host = urlsplit(url).netloc
        return f"it does not speak TLS: for plain http use --insecure-registry {escape(host)}"
    if not isinstance(e, httpx.ConnectError):  # after a handshake that succeeded
        return ("its TLS stream broke after a good handshake: a faulty link, or something "
                "on the path altering what it sends")
    return None
