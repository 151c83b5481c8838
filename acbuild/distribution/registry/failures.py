"""Registries: what a failed connection is, and how it is told (one line, escaped)."""

from __future__ import annotations

from urllib.parse import urlsplit

from acbuild.distribution.registry.reference import RegistryError
from acbuild.terminal import escape


def reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return escape(text.splitlines()[0][:300] if text else type(e).__name__)


def refused(e: BaseException) -> bool:
    """Whether ``e`` is (caused by) ECONNREFUSED: httpx wraps httpcore's error, which wraps
    the OSError."""
    cause: BaseException | None = e
    for _ in range(8):
        if cause is None:
            return False
        if isinstance(cause, ConnectionRefusedError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def refused_error(what: str, netloc: str) -> RegistryError:
    return RegistryError(f"cannot reach {what}: connection refused",
                         hint=f"nothing accepts connections at {escape(netloc)} (or at the proxy "
                              "the environment names): is it running, and is the port right?")


def tls_hint(e: BaseException, url: str) -> str | None:
    if "CERTIFICATE_VERIFY_FAILED" in str(e):
        return ("if you trust the CA that signed its certificate, pass it with --ca-file; "
                "a registry without TLS needs --insecure-registry HOST:PORT")
    if "WRONG_VERSION_NUMBER" in str(e) or "record layer failure" in str(e):
        host = urlsplit(url).netloc
        return f"it does not speak TLS: for plain http use --insecure-registry {host}"
    return None
