"""Test helpers (fetch, publish, verify, discovery): the fixtures the trust tests share.

A fresh HTTP server on 127.0.0.1 per test (the session's GnuPG keys are tests/conftest.py's
``gpgkeys``); a test module loads it with ``pytest_plugins = ("tests.support.fetchhelp",)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpserver import Server, serve_tmp


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Server]:
    yield from serve_tmp(tmp_path)
