"""Test helpers (fetch, publish, verify, discovery): the fixtures the trust tests share.

One session's GnuPG keys and a fresh HTTP server on 127.0.0.1 per test; a test module loads
them with ``pytest_plugins = ("tests.support.fetchhelp",)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gpghelp import Keys, make_keys
from tests.support.httpserver import Server, serve_tmp


@pytest.fixture(scope="session")
def gpgkeys() -> Iterator[Keys]:
    yield from make_keys()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Server]:
    yield from serve_tmp(tmp_path)
