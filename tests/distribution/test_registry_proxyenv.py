"""Proxy variables httpx cannot use (red-team RR-8): a one-line error naming the variable
and what is wrong with it, exit 1, never an internal error, never the proxy's password."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import acbuild
from tests.support.trickle import TrickleServer, trickle_server

PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def server() -> Iterator[TrickleServer]:
    with trickle_server() as s:
        yield s


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("ALL_PROXY", "socks5h://bob:s3cret@127.0.0.1:1080",
     "a socks5h:// proxy cannot be used (only http:// and https:// proxies can)"),
    ("HTTPS_PROXY", "http://bob:s3cret@127.0.0.1:notaport",
     "not a usable proxy URL: Invalid port: 'notaport'"),
    ("all_proxy", "ftp://127.0.0.1:21",
     "a ftp:// proxy cannot be used (only http:// and https:// proxies can)"),
])
def test_a_proxy_variable_httpx_cannot_use_is_a_users_error(
        server: TrickleServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
        value: str, problem: str) -> None:
    for other in [k for k in os.environ if k.upper() in PROXY_NAMES]:
        monkeypatch.delenv(other)
    env = {name: value, "NO_PROXY": "127.0.0.1", "XDG_CACHE_HOME": str(tmp_path / "c")}
    r = acbuild("pull", f"docker://{server.host}/library/busybox:1.36", "--insecure-registry",
                server.host, "--store", tmp_path / "store", env=env, timeout=30)
    assert r.code == 1, r.stderr
    assert r.stderr.strip() == f"error: environment variable {name}: {problem}"
    assert "s3cret" not in r.stderr and "bob" not in r.stderr
    assert not server.requests  # nothing was asked with a half-made client
