"""Fetch as rkt does (issue 18): --pull-policy, and no stale store entry shadowing the server.

Real HTTP server on 127.0.0.1, real signatures, real trust store changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.distribution.fetch import FetchOptions, fetch, resolve_image
from acbuild.errors import FetchError, TrustError
from acbuild.report import NullReporter
from acbuild.trust.sign import sign_image
from acbuild.trust.truststore import TrustStore
from tests.support.cli import acbuild
from tests.support.gpghelp import Keys, make_aci
from tests.support.httpserver import Server

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys, http_server
NAME = "127.0.0.1/app"


def serve(server: Server, keys: Keys, *, key: str, payload: bytes, version: str = "1.0") -> None:
    (server.root / "app").mkdir(exist_ok=True)
    image = make_aci(server.root / "app" / f"app-{version}.aci", NAME, {"version": version},
                     payload=payload)
    sign_image(image, keys.fpr[key], gpg_home=keys.home, reporter=NullReporter())
    (server.root / "app/index.html").write_text(
        f'<meta name="ac-discovery" content="{NAME} {server.url}/app/app-{{version}}.{{ext}}">')


def options(tmp_path: Path, server: Server, policy: str) -> FetchOptions:
    return FetchOptions(insecure=True, port=server.port, trust_store=tmp_path / "trust",
                        store_dir=tmp_path / "images", pull_policy=policy)  # type: ignore[arg-type]


def image_requests(server: Server) -> int:
    return sum(1 for r in server.behaviour.requests if r.endswith(".aci"))


def test_update_asks_the_server_and_gets_the_new_image(
        tmp_path: Path, http_server: Server, gpgkeys: Keys) -> None:
    TrustStore(tmp_path / "trust").add(gpgkeys.pub["alice"].read_bytes(), prefix=NAME)
    serve(http_server, gpgkeys, key="alice", payload=b"old\n")
    first = fetch(f"{NAME}:1.0", options=options(tmp_path, http_server, "update"),
                  reporter=NullReporter())
    serve(http_server, gpgkeys, key="alice", payload=b"new\n")  # re-released under 1.0
    again = fetch(f"{NAME}:1.0", options=options(tmp_path, http_server, "update"),
                  reporter=NullReporter())
    assert not again.from_store and again.entry.id != first.entry.id
    assert image_requests(http_server) == 2
    # new: the store answers, no download
    stored = fetch(f"{NAME}:1.0", options=options(tmp_path, http_server, "new"),
                   reporter=NullReporter())
    assert stored.from_store and stored.entry.id == again.entry.id
    assert image_requests(http_server) == 2


def test_a_copy_signed_by_a_withdrawn_key_does_not_shadow_the_server(
        tmp_path: Path, http_server: Server, gpgkeys: Keys) -> None:
    trust = TrustStore(tmp_path / "trust")
    trust.add(gpgkeys.pub["bob"].read_bytes(), prefix=NAME)
    serve(http_server, gpgkeys, key="bob", payload=b"by bob\n")
    fetch(f"{NAME}:1.0", options=options(tmp_path, http_server, "update"),
          reporter=NullReporter())
    trust.remove(gpgkeys.fpr["bob"])  # bob is no longer trusted; alice now signs
    trust.add(gpgkeys.pub["alice"].read_bytes(), prefix=NAME)
    serve(http_server, gpgkeys, key="alice", payload=b"by alice\n")
    for policy in ("update", "new"):
        result = fetch(f"{NAME}:1.0", options=options(tmp_path, http_server, policy),
                       reporter=NullReporter())
        assert result.verified is not None
        assert result.verified.fingerprint == gpgkeys.fpr["alice"], policy
    # BEGIN's resolver (policy new) gets alice's image as well
    path = resolve_image(NAME, (("version", "1.0"),),
                         options=options(tmp_path, http_server, "new"), reporter=NullReporter())
    assert b"by alice" in path.read_bytes()


def test_never_uses_only_the_store(tmp_path: Path, http_server: Server, gpgkeys: Keys) -> None:
    trust = TrustStore(tmp_path / "trust")
    trust.add(gpgkeys.pub["alice"].read_bytes(), prefix=NAME)
    serve(http_server, gpgkeys, key="alice", payload=b"x\n")
    with pytest.raises(FetchError, match="is not in the image store"):
        fetch(f"{NAME}:1.0", options=options(tmp_path, http_server, "never"),
              reporter=NullReporter())
    assert http_server.behaviour.requests == []
    fetch(f"{NAME}:1.0", options=options(tmp_path, http_server, "update"),
          reporter=NullReporter())
    got = fetch(f"{NAME}:1.0", options=options(tmp_path, http_server, "never"),
                reporter=NullReporter())
    assert got.from_store
    trust.remove(gpgkeys.fpr["alice"])
    with pytest.raises(TrustError, match="no longer verifies"):
        fetch(f"{NAME}:1.0", options=options(tmp_path, http_server, "never"),
              reporter=NullReporter())


def test_cli_fetch_defaults_to_update(tmp_path: Path, http_server: Server, gpgkeys: Keys) -> None:
    TrustStore(tmp_path / "trust").add(gpgkeys.pub["alice"].read_bytes(), prefix=NAME)
    serve(http_server, gpgkeys, key="alice", payload=b"old\n")
    common = ("--insecure", "--port", str(http_server.port), "--trust-store", tmp_path / "trust",
              "--store", tmp_path / "images")
    one = acbuild("fetch", f"{NAME}:1.0", *common)
    serve(http_server, gpgkeys, key="alice", payload=b"new\n")
    two = acbuild("fetch", f"{NAME}:1.0", *common)
    three = acbuild("fetch", f"{NAME}:1.0", "--pull-policy=never", *common)
    assert (one.code, two.code, three.code) == (0, 0, 0), two.stderr
    assert one.stdout != two.stdout == three.stdout


def test_unsigned_local_file_needs_insecure_skip_verify(tmp_path: Path, gpgkeys: Keys) -> None:
    image = make_aci(tmp_path / "app.aci", "example.com/app", {"version": "1"})
    store = ("--store", tmp_path / "images", "--trust-store", tmp_path / "trust")
    r = acbuild("fetch", image, *store)
    assert r.code == 1
    assert f"error: {image} is not signed" in r.stderr
    assert not (tmp_path / "images").exists() or not any(
        p.suffix == ".aci" for p in (tmp_path / "images").iterdir())
    r = acbuild("fetch", image, "--insecure-skip-verify", *store)
    assert r.code == 0 and "NOT VERIFIED" in r.stderr
    # signed by a trusted key: fine without the flag
    TrustStore(tmp_path / "trust").add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com")
    sign_image(image, gpgkeys.fpr["alice"], gpg_home=gpgkeys.home, reporter=NullReporter())
    assert acbuild("fetch", image, *store).code == 0


def test_build_begin_by_name_follows_the_pull_policy(tmp_path: Path, http_server: Server,
                                                     gpgkeys: Keys) -> None:
    TrustStore(tmp_path / "trust").add(gpgkeys.pub["alice"].read_bytes(), prefix=NAME)
    serve(http_server, gpgkeys, key="alice", payload=b"base\n")
    (tmp_path / "Acfile").write_text(f"BEGIN {NAME}:1.0\nNAME example.com/derived\n")
    common = ("--no-cache", tmp_path / "Acfile", "--insecure", "--port", str(http_server.port),
              "--trust-store", tmp_path / "trust")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = acbuild("build", *common, "-o", tmp_path / "a.aci", "--pull-policy=never", env=env)
    assert r.code == 1 and "is not in the image store" in r.stderr, r.stderr
    assert http_server.behaviour.requests == []
    r = acbuild("build", *common, "-o", tmp_path / "b.aci", env=env)  # new: fetched once
    assert r.code == 0, r.stderr
    r = acbuild("build", *common, "-o", tmp_path / "c.aci", env=env)  # new: from the store
    assert r.code == 0, r.stderr
    assert image_requests(http_server) == 1
