"""Tests for distribution/fetch and imagestore: real HTTP server, real signatures."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from acbuild.distribution.fetch import FetchOptions, fetch, resolve_image, verify_local
from acbuild.distribution.imagestore import ImageStore
from acbuild.errors import FetchError, TrustError
from acbuild.report import NullReporter
from acbuild.trust.sign import sign_image
from acbuild.trust.truststore import TrustStore
from tests.support.gpghelp import Keys, make_aci
from tests.support.httpserver import Server

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys, http_server
NAME = "127.0.0.1/app"


@pytest.fixture
def options(tmp_path: Path, http_server: Server, gpgkeys: Keys) -> FetchOptions:
    store = TrustStore(tmp_path / "trust")
    store.add(gpgkeys.pub["alice"].read_bytes(), prefix=NAME)
    return FetchOptions(insecure=True, port=http_server.port, trust_store=store.root,
                        store_dir=tmp_path / "images")


def serve_image(server: Server, keys: Keys, *, name: str = NAME, key: str = "alice",
                version: str = "latest", payload: bytes = b"hello\n") -> Path:
    """Publish by hand: the image, its signature and a discovery page."""
    (server.root / "app").mkdir(exist_ok=True)
    image = make_aci(server.root / "app" / f"app-{version}.aci", name, {"version": version},
                     payload=payload)
    sign_image(image, keys.fpr[key], gpg_home=keys.home, reporter=NullReporter())
    (server.root / "app/index.html").write_text(
        f'<meta name="ac-discovery" content="{NAME} {server.url}/app/app-{{version}}.{{ext}}">')
    return image


def stored_files(options: FetchOptions) -> list[str]:
    assert options.store_dir is not None
    if not options.store_dir.exists():
        return []
    return sorted(p.name for p in options.store_dir.iterdir() if p.name.startswith("sha512-"))


def test_fetch_verifies_and_stores_then_works_offline(
        http_server: Server, gpgkeys: Keys, options: FetchOptions, tmp_path: Path) -> None:
    serve_image(http_server, gpgkeys, version="1.0")
    result = fetch(f"{NAME}:1.0", options=options, reporter=NullReporter(),
                   output_dir=tmp_path / "out")
    assert result.verified is not None and result.verified.fingerprint == gpgkeys.fpr["alice"]
    assert result.path == options.store_dir / f"{result.entry.id}.aci"  # type: ignore[operator]
    assert stored_files(options) == [f"{result.entry.id}.aci", f"{result.entry.id}.aci.asc"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["app-1.0.aci",
                                                                   "app-1.0.aci.asc"]
    http_server.behaviour.statuses["/app"] = 500  # the server is gone: the store answers
    again = resolve_image(NAME, (("version", "1.0"),), options=options, reporter=NullReporter())
    assert again == result.path


def test_untrusted_key(http_server: Server, gpgkeys: Keys, options: FetchOptions) -> None:
    serve_image(http_server, gpgkeys, key="bob")
    with pytest.raises(TrustError, match=r"which is not trusted for 127\.0\.0\.1/app"):
        fetch(NAME, options=options, reporter=NullReporter())
    assert stored_files(options) == []


def test_tampered_image(http_server: Server, gpgkeys: Keys, options: FetchOptions) -> None:
    image = serve_image(http_server, gpgkeys)
    data = bytearray(image.read_bytes())
    data[-1] ^= 1
    image.write_bytes(bytes(data))
    with pytest.raises(TrustError) as e:
        fetch(NAME, options=options, reporter=NullReporter())
    assert e.value.message == (f"bad signature on {http_server.url}/app/app-latest.aci: "
                               "the image or its signature was changed after signing")
    assert stored_files(options) == []


def test_skip_verify_warns(http_server: Server, gpgkeys: Keys, options: FetchOptions) -> None:
    serve_image(http_server, gpgkeys, key="bob")
    reporter = NullReporter()
    from dataclasses import replace
    fetch(NAME, options=replace(options, skip_verify=True), reporter=reporter)
    assert reporter.warnings[0].startswith("SIGNATURE CHECK FAILED for 127.0.0.1/app")


def test_missing_signature(http_server: Server, gpgkeys: Keys, options: FetchOptions) -> None:
    image = serve_image(http_server, gpgkeys)
    Path(f"{image}.asc").unlink()
    with pytest.raises(TrustError) as e:
        fetch(NAME, options=options, reporter=NullReporter())
    url = f"{http_server.url}/app/app-latest.aci"
    assert e.value.message == f"{url} is not signed: {url}.asc was not found"


def test_name_mismatch(http_server: Server, gpgkeys: Keys, options: FetchOptions) -> None:
    serve_image(http_server, gpgkeys, name="127.0.0.1/evil")
    with pytest.raises(FetchError) as e:
        fetch(NAME, options=options, reporter=NullReporter())
    url = f"{http_server.url}/app/app-latest.aci"
    assert e.value.message == (f"cannot fetch {NAME}: {url} is '127.0.0.1/evil', not the "
                               f"requested '{NAME}'")


def test_label_mismatch(http_server: Server, gpgkeys: Keys, options: FetchOptions) -> None:
    image = serve_image(http_server, gpgkeys, version="2.0")
    image.rename(image.with_name("app-3.0.aci"))
    Path(f"{image}.asc").rename(image.with_name("app-3.0.aci.asc"))
    with pytest.raises(FetchError, match=r"has label version=2\.0, not the requested version=3\.0"):
        fetch(f"{NAME}:3.0", options=options, reporter=NullReporter())


def test_cut_off_download_leaves_nothing(http_server: Server, gpgkeys: Keys,
                                         options: FetchOptions) -> None:
    serve_image(http_server, gpgkeys, payload=b"x" * 300_000)
    http_server.behaviour.cut_off.add("/app/app-latest.aci")
    with pytest.raises(FetchError, match="cut off"):
        fetch(NAME, options=options, reporter=NullReporter())
    assert stored_files(options) == []
    assert list((options.store_dir / "tmp").iterdir()) == []  # type: ignore[operator]


def test_concurrent_fetches_store_once(http_server: Server, gpgkeys: Keys,
                                       options: FetchOptions) -> None:
    serve_image(http_server, gpgkeys)
    results, errors = [], []

    def one() -> None:
        try:
            results.append(fetch(NAME, options=options, reporter=NullReporter()))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.entry.id for r in results}) == 1
    assert len(stored_files(options)) == 2
    assert len(ImageStore(options.store_dir).entries()) == 1  # type: ignore[arg-type]


def test_verify_local(gpgkeys: Keys, tmp_path: Path, options: FetchOptions) -> None:
    store = TrustStore(options.trust_store)  # type: ignore[arg-type]
    image = make_aci(tmp_path / "local.aci", NAME)
    assert verify_local(image, store, NullReporter()) is None
    sign_image(image, gpgkeys.fpr["bob"], gpg_home=gpgkeys.home, reporter=NullReporter())
    with pytest.raises(TrustError, match="not trusted"):
        verify_local(image, store, NullReporter())


def test_gc(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    for i in range(3):
        aci = make_aci(tmp_path / f"a{i}.aci", "a.com/x", payload=str(i).encode())
        store.add(aci, None, image_id=f"sha512-{str(i) * 128}", name="a.com/x", labels=())
    removed = store.gc(keep=1)
    assert [e.id for e in removed] == [f"sha512-{'1' * 128}", f"sha512-{'0' * 128}"]
    assert [e.id for e in store.entries()] == [f"sha512-{'2' * 128}"]
    assert store.gc(older_than_days=1, now=store.entries()[0].added + 2 * 86400)
    assert store.entries() == ()


@pytest.mark.parametrize("kind", ["fifo", "directory", "missing", "dangling"])
def test_a_local_path_that_is_not_an_image_file_says_what_it_is(
        tmp_path: Path, options: FetchOptions, kind: str) -> None:
    """RO-10: a FIFO (or a directory) named to fetch was reported as missing."""
    import os

    path = tmp_path / "image.aci"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling":
        path.symlink_to(tmp_path / "nowhere")
    said = {"fifo": "not a regular file \\(a FIFO\\)", "directory": "[Ii]s a directory",
            "missing": "no such image file", "dangling": "no such image file"}[kind]
    with pytest.raises(FetchError, match=said):
        fetch(str(path), options=options, reporter=NullReporter())
    assert ImageStore(options.store_dir).entries() == ()  # type: ignore[arg-type]
