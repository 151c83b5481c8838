"""Pytest fixtures for tests against the real registry (tests.support.registry).

A test module opts in with ``pytest_plugins = ("tests.support.registryfixtures",)``; every
fixture skips (with the reason) when /usr/bin/docker-registry or skopeo is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ocifixtures import busybox_layout
from tests.support.registry import (
    MODES,
    Registry,
    TamperProxy,
    registry_with_busybox,
    skip_without_registry,
    tamper_proxy,
)


@pytest.fixture(scope="session")
def busybox_oci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout holding the static busybox as image ``1.36``."""
    skip_without_registry()
    return busybox_layout(tmp_path_factory.mktemp("busybox-oci") / "layout", "1.36")


@pytest.fixture(params=MODES)
def any_registry(request: pytest.FixtureRequest, tmp_path: Path,
                 busybox_oci: Path) -> Iterator[Registry]:
    """A registry in each mode, holding library/busybox:1.36."""
    with registry_with_busybox(tmp_path, request.param, busybox_oci) as reg:
        yield reg


@pytest.fixture
def http_registry(tmp_path: Path, busybox_oci: Path) -> Iterator[Registry]:
    """A plain-HTTP registry without auth, holding library/busybox:1.36."""
    with registry_with_busybox(tmp_path, "http", busybox_oci) as reg:
        yield reg


@pytest.fixture
def basic_registry(tmp_path: Path, busybox_oci: Path) -> Iterator[Registry]:
    with registry_with_busybox(tmp_path, "basic", busybox_oci) as reg:
        yield reg


@pytest.fixture
def token_registry(tmp_path: Path, busybox_oci: Path) -> Iterator[Registry]:
    with registry_with_busybox(tmp_path, "token", busybox_oci) as reg:
        yield reg


@pytest.fixture
def proxy(http_registry: Registry) -> Iterator[TamperProxy]:
    """A tampering proxy (plain HTTP) in front of ``http_registry``."""
    with tamper_proxy(http_registry) as p:
        yield p
