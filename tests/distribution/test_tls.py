"""HTTPS through the trust chain: discover, fetch and BEGIN against a real TLS server on
127.0.0.1 whose certificate a throwaway CA signed, trusted only through --ca-file."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from acbuild.distribution.discovery import HttpOptions, discover, parse_ref
from acbuild.distribution.publish import publish
from acbuild.errors import FetchError
from acbuild.image import aci
from acbuild.image.hostarch import host_os_arch
from acbuild.report import NullReporter
from acbuild.trust.sign import sign_image
from acbuild.trust.truststore import TrustStore
from tests.support.cli import acbuild, actool_validate
from tests.support.gpghelp import Keys, make_aci
from tests.support.httpserver import Server, TlsFiles, make_tls, serve, serve_tmp

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys, http_server (plain http)

OS, ARCH = host_os_arch()
REF = "localhost/app:1.0"
ACI_PATH = f"/app/app-1.0-{OS}-{ARCH}.aci"


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_server(tmp_path: Path, tls: TlsFiles) -> Iterator[Server]:
    (tmp_path / "https").mkdir()  # tmp_path/www is http_server's
    yield from serve_tmp(tmp_path / "https", tls=tls)


@pytest.fixture
def published(https_server: Server, gpgkeys: Keys, tmp_path: Path) -> Server:
    """``localhost/app`` 1.0, signed by alice, laid out in the server's document root."""
    image = make_aci(tmp_path / "app.aci", "localhost/app",
                     {"version": "1.0", "os": OS, "arch": ARCH})
    sign_image(image, gpgkeys.fpr["alice"], gpg_home=gpgkeys.home, reporter=NullReporter())
    publish(image, repo=https_server.root, url_base=f"https://localhost:{https_server.port}",
            gpg_home=gpgkeys.home, reporter=NullReporter())
    return https_server


@pytest.fixture
def trust(gpgkeys: Keys, tmp_path: Path) -> Path:
    store = tmp_path / "trust"
    TrustStore(store).add(gpgkeys.pub["alice"].read_bytes(), prefix="localhost/app")
    return store


def test_discover_over_https_with_ca_file(published: Server, tls: TlsFiles) -> None:
    r = acbuild("discover", REF, "--port", str(published.port), "--ca-file", tls.ca)
    assert r.code == 0, r.stderr
    base = f"https://localhost:{published.port}/app"
    assert r.stdout.splitlines() == [
        f"ACI: {base}/app-1.0-{OS}-{ARCH}.aci, ASC: {base}/app-1.0-{OS}-{ARCH}.aci.asc",
        f"Keys: {base}/pubkeys.gpg",
    ]


def test_untrusted_certificate_is_one_clear_error(published: Server) -> None:
    r = acbuild("discover", REF, "--port", str(published.port))
    assert r.code == 1
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"error: cannot fetch https://localhost:{published.port}/app?ac-discovery=1: the "
        "certificate of localhost is not trusted (unable to get local issuer certificate)",
        "    hint: if you trust the CA that signed it, pass its certificate with --ca-file (a "
        "certificate you did not expect can mean another is answering for the server)",
    ]
    assert published.behaviour.requests == []  # no request got past the handshake


def test_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    other = make_tls(tmp_path / "other", hosts=("example.org",))
    (tmp_path / "www").mkdir()
    options = HttpOptions(ca_file=other.ca, timeout=5)
    with serve(tmp_path / "www", tls=other) as server, pytest.raises(FetchError) as e:
        discover(parse_ref(REF), replace(options, port=server.port))
    assert e.value.message.endswith("the certificate of localhost is not trusted (Hostname "
                                    "mismatch, certificate is not valid for 'localhost'.)")


def test_ca_file_adds_to_the_system_cas(published: Server, tmp_path: Path,
                                        tls: TlsFiles) -> None:
    # The system CAs (here: SSL_CERT_FILE, which OpenSSL reads for its defaults) still count
    # when --ca-file names another CA.
    unrelated = make_tls(tmp_path / "unrelated", ca_name="unrelated CA")
    r = acbuild("discover", REF, "--port", str(published.port), "--ca-file", unrelated.ca,
                env={"SSL_CERT_FILE": str(tls.ca)})
    assert r.code == 0, r.stderr

    missing = tmp_path / "missing.pem"
    r = acbuild("discover", REF, "--port", str(published.port), "--ca-file", missing)
    assert r.code == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: cannot use CA file {missing}: ")


def test_fetch_over_https(published: Server, tls: TlsFiles, trust: Path, tmp_path: Path) -> None:
    image_id = aci.image_id(published.root / ACI_PATH.lstrip("/"))
    r = acbuild("fetch", REF, "--port", str(published.port), "--ca-file", tls.ca,
                "--trust-store", trust, "-o", tmp_path / "out")
    assert r.code == 0, r.stderr
    assert r.stdout.strip() == image_id
    assert (tmp_path / "out/app-1.0.aci").read_bytes() == \
        (published.root / ACI_PATH.lstrip("/")).read_bytes()
    assert (tmp_path / "out/app-1.0.aci.asc").is_file()
    assert ACI_PATH in published.behaviour.requests


def test_redirect_from_https_to_http_is_refused_unless_insecure(
    published: Server, http_server: Server, tls: TlsFiles, trust: Path
) -> None:
    # The plain server serves the same files; https sends the image there.
    http_server.root.rmdir()
    http_server.root.symlink_to(published.root)
    https_url = f"https://localhost:{published.port}{ACI_PATH}"
    http_url = f"{http_server.url}{ACI_PATH}"
    published.behaviour.redirects[ACI_PATH] = http_url

    r = acbuild("fetch", REF, "--port", str(published.port), "--ca-file", tls.ca,
                "--trust-store", trust)
    assert r.code == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0] == (
        f"error: cannot fetch {REF.replace(':', ',version=')}: "
        f"{https_url} redirects to {http_url}, which is not https")

    r = acbuild("fetch", https_url, "--ca-file", tls.ca, "--trust-store", trust)
    assert r.code == 1
    assert r.stderr.splitlines() == [
        f"error: {https_url} redirects to {http_url}, which is not https",
        "    hint: use --insecure only for servers you control",
    ]
    assert http_server.behaviour.requests == []

    # A discovery page that moves to plain http is refused the same way.
    published.behaviour.redirects["/app"] = f"{http_server.url}/app?ac-discovery=1"
    with pytest.raises(FetchError, match=r"redirects to http://127\.0\.0\.1:\d+/app\?ac-disc"):
        discover(parse_ref(REF), HttpOptions(port=published.port, ca_file=tls.ca, timeout=5))
    assert http_server.behaviour.requests == []

    r = acbuild("fetch", https_url, "--insecure", "--ca-file", tls.ca, "--trust-store", trust)
    assert r.code == 0, r.stderr
    assert http_server.behaviour.requests == [ACI_PATH]


def test_build_begins_from_an_https_name(published: Server, tls: TlsFiles, trust: Path,
                                         tmp_path: Path) -> None:
    (tmp_path / "Acfile").write_text(f"BEGIN {REF}\nNAME localhost/child\nLABEL version=2.0\n")
    out = tmp_path / "child.aci"
    r = acbuild("build", tmp_path / "Acfile", "-o", out, "--ca-file", tls.ca,
                "--port", str(published.port), "--trust-store", trust)
    assert r.code == 0, r.stderr
    actool_validate(out)
    with tarfile.open(out) as t:
        assert "rootfs/hello" in t.getnames()

    # The same build without the CA fails on the certificate, at the BEGIN line.
    r = acbuild("build", tmp_path / "Acfile", "-o", tmp_path / "c2.aci", "--port",
                str(published.port), "--trust-store", trust,
                env={"XDG_CACHE_HOME": str(tmp_path / "cache2")})
    assert r.code == 1 and "Traceback" not in r.stderr
    assert "Acfile:1:1: error:" in r.stderr
    assert "the certificate of localhost is not trusted" in r.stderr
    assert not (tmp_path / "c2.aci").exists()
