"""The proxy variables (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, lower case first, as urllib reads
them for httpx) told apart when httpx cannot use one: which variable, and why, as a user's
error rather than httpx's ImportError/ValueError from deep in its client (red-team RR-8).
A proxy URL may hold a password: the message never repeats the URL or its userinfo."""

from __future__ import annotations

import os
import urllib.request
from urllib.parse import urlsplit

import httpx

from acbuild.distribution.registry.reference import RegistryError

_SCHEMES = ("http", "https", "all")  # the ones httpx's trust_env takes


def _name(scheme: str, value: str) -> str:
    """The variable that gave ``scheme``'s proxy ``value`` (lower case wins, as in urllib)."""
    names = [n for n, v in os.environ.items() if n.lower() == f"{scheme}_proxy" and v == value]
    return min(names, key=lambda n: n != n.lower(), default=f"{scheme.upper()}_PROXY")


def _hidden(message: str, url: str) -> str:
    userinfo = urlsplit(url).netloc.rpartition("@")[0] if "://" in url else ""
    for secret in {userinfo, *userinfo.split(":")} - {""}:
        message = message.replace(secret, "***")
    return message


def _problem(url: str) -> str | None:
    scheme = url.partition("://")[0].lower()
    if scheme not in ("http", "https"):
        return (f"a {_hidden(scheme, url)}:// proxy cannot be used (only http:// and "
                "https:// proxies can)")
    try:
        httpx.HTTPTransport(proxy=url).close()
    except (ImportError, ValueError, httpx.InvalidURL) as e:
        return f"not a usable proxy URL: {_hidden(str(e), url)}"
    return None


def proxy_error(cause: Exception) -> RegistryError:
    """The error for ``cause``, which httpx raised making a client that trusts the
    environment: the first proxy variable it cannot use, else ``cause`` itself."""
    proxies = urllib.request.getproxies()
    for scheme in _SCHEMES:
        value = proxies.get(scheme)
        if not value:
            continue
        url = value if "://" in value else f"http://{value}"
        if (problem := _problem(url)) is not None:
            return RegistryError(f"environment variable {_name(scheme, value)}: {problem}")
    return RegistryError(f"cannot make an HTTP client: {type(cause).__name__}: {cause}")
