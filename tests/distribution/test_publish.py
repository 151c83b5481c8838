"""Tests for acbuild.distribution.publish: publish -> serve -> discover -> fetch, for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.distribution.discovery import HttpOptions, discover, meta_tags, parse_ref
from acbuild.distribution.fetch import FetchOptions, fetch, fetch_keys
from acbuild.distribution.publish import PublishError, publish, version_order
from acbuild.report import NullReporter
from acbuild.trust.sign import sign_image
from acbuild.trust.truststore import TrustStore
from tests.support.gpghelp import Keys, make_aci
from tests.support.httpserver import Server

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys, http_server
NAME = "127.0.0.1/tools/app"


def signed_image(tmp_path: Path, keys: Keys, version: str) -> Path:
    image = make_aci(tmp_path / f"app-{version}.aci", NAME,
                     {"version": version, "os": "linux", "arch": "amd64"})
    sign_image(image, keys.fpr["alice"], gpg_home=keys.home, reporter=NullReporter())
    return image


def test_publish_serve_discover_fetch(http_server: Server, gpgkeys: Keys, tmp_path: Path) -> None:
    repo = http_server.root
    for version in ("1.0", "2.0"):
        result = publish(signed_image(tmp_path, gpgkeys, version), repo=repo,
                         url_base=http_server.url, gpg_home=gpgkeys.home,
                         reporter=NullReporter())
    assert result.image == repo / "tools/app/app-2.0-linux-amd64.aci"
    assert (repo / "tools/app/app-1.0-linux-amd64.aci.asc").is_file()
    assert result.key == repo / "tools/app/pubkeys.gpg"
    template = "app-{version}-{os}-{arch}.{ext}"
    assert meta_tags((repo / "tools/app/index.html").read_text()) == (
        ("ac-discovery", NAME, f"{http_server.url}/tools/app/{template}"),
        ("ac-discovery-pubkeys", NAME, f"{http_server.url}/tools/app/pubkeys.gpg"))

    http = HttpOptions(insecure=True, port=http_server.port, timeout=5)
    found = discover(parse_ref(f"{NAME}:1.0,os=linux,arch=amd64"), http)
    assert found.endpoints[0].aci == f"{http_server.url}/tools/app/app-1.0-linux-amd64.aci"

    # Trust on first use, explicitly: the keys the discovery page offers.
    options = FetchOptions(insecure=True, port=http_server.port,
                           trust_store=tmp_path / "trust", store_dir=tmp_path / "images")
    (key,) = fetch_keys(parse_ref(NAME), options, NullReporter())
    TrustStore(tmp_path / "trust").add(key, prefix="127.0.0.1/tools")
    fetched = fetch(f"{NAME}:1.0,os=linux,arch=amd64", options=options, reporter=NullReporter())
    assert fetched.verified is not None
    assert fetched.verified.fingerprint == gpgkeys.fpr["alice"]
    assert dict(fetched.entry.labels)["version"] == "1.0"


def test_publish_without_key_warns(gpgkeys: Keys, tmp_path: Path) -> None:
    reporter = NullReporter()
    empty_home = tmp_path / "g"
    empty_home.mkdir(mode=0o700)
    result = publish(signed_image(tmp_path, gpgkeys, "1.0"), repo=tmp_path / "repo",
                     url_base="https://127.0.0.1", gpg_home=empty_home, reporter=reporter)
    assert result.key is None
    assert reporter.warnings == ["the signer's public key was not found (pass --key-file or "
                                 "--gpg-home): publishing without an ac-discovery-pubkeys tag"]
    assert [t[0] for t in meta_tags(result.index.read_text())] == ["ac-discovery"]


def test_publish_needs_signature(tmp_path: Path) -> None:
    image = make_aci(tmp_path / "x.aci", NAME)
    with pytest.raises(PublishError, match="is not signed"):
        publish(image, repo=tmp_path / "r", url_base="https://x", reporter=NullReporter())


def test_latest_alias_is_the_newest_version(gpgkeys: Keys, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    published = {}
    for version in ("1.0.0", "2.0.0", "1.5.0", "2.0.0-rc.1"):
        image = signed_image(tmp_path, gpgkeys, version)
        published[version] = image.read_bytes()
        result = publish(image, repo=repo, url_base="https://127.0.0.1",
                         gpg_home=gpgkeys.home, reporter=NullReporter())
        assert result.latest == repo / "tools/app/app-latest-linux-amd64.aci"
        # An older version published later leaves `latest` on the newest.
        newest = "1.0.0" if version == "1.0.0" else "2.0.0"
        assert result.latest.read_bytes() == published[newest], version
        latest_asc = repo / "tools/app/app-latest-linux-amd64.aci.asc"
        assert latest_asc.read_bytes() == (
            repo / f"tools/app/app-{newest}-linux-amd64.aci.asc").read_bytes()


def test_latest_alias_per_arch(gpgkeys: Keys, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for version, arch in (("2.0.0", "aarch64"), ("1.0.0", "amd64")):
        image = make_aci(tmp_path / f"app-{version}-{arch}.aci", NAME,
                         {"version": version, "os": "linux", "arch": arch})
        sign_image(image, gpgkeys.fpr["alice"], gpg_home=gpgkeys.home, reporter=NullReporter())
        publish(image, repo=repo, url_base="https://127.0.0.1", gpg_home=gpgkeys.home,
                reporter=NullReporter())
    for version, arch in (("2.0.0", "aarch64"), ("1.0.0", "amd64")):
        assert (repo / f"tools/app/app-latest-linux-{arch}.aci").read_bytes() == (
            repo / f"tools/app/app-{version}-linux-{arch}.aci").read_bytes()


def test_version_order() -> None:
    ordered = ["nightly", "snapshot", "0.0.1", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta",
               "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.2",
               "v1.2.1", "1.10.0", "10"]
    assert sorted(reversed(ordered), key=version_order) == ordered
