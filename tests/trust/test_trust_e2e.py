"""The whole trust chain through the CLI: build + SIGN -> verify -> publish -> serve -> fetch ->
BEGIN from the served name, with real gpg and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.cli import acbuild, actool_validate
from tests.support.gpghelp import Keys
from tests.support.httpserver import Server

pytest_plugins = ("tests.support.fetchhelp",)


@pytest.fixture
def keys(gpgkeys: Keys) -> Keys:
    return gpgkeys


@pytest.fixture
def server(http_server: Server) -> Server:
    return http_server


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Isolated trust store, image store and state, as a fresh user would have."""
    return {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }


def signed_hello(hello_context: Path, keys: Keys, out: Path, env: dict[str, str]) -> str:
    acfile = hello_context / "Acfile"
    text = acfile.read_text().replace("example.com/hello", "localhost/hello")
    acfile.write_text(text + "SIGN alice@example.com\n")
    r = acbuild("build", acfile, "-o", out, "--gpg-home", keys.home, env=env)
    assert r.code == 0, r.stderr
    return r.stdout.strip()


def test_signed_build_verifies_with_gpg_and_acbuild(
    hello_context: Path, keys: Keys, tmp_path: Path, env: dict[str, str]
) -> None:
    image = tmp_path / "hello.aci"
    signed_hello(hello_context, keys, image, env)
    gpg = subprocess.run(
        ["gpg", "--homedir", str(keys.home), "--verify", f"{image}.asc", str(image)],
        capture_output=True, text=True,
    )
    assert gpg.returncode == 0, gpg.stderr

    store = tmp_path / "trusted"
    r = acbuild("trust", "--trust-store", store, "--prefix", "localhost/hello", "--yes",
                keys.pub["alice"], env=env)
    assert r.code == 0, r.stderr
    r = acbuild("verify", image, "--trust-store", store, env=env)
    assert r.code == 0, r.stderr
    assert keys.fpr["alice"] in r.stdout.lower() + r.stderr.lower()

    other = tmp_path / "other-trust"
    acbuild("trust", "--trust-store", other, "--prefix", "localhost/hell", "--yes",
            keys.pub["alice"], env=env)
    r = acbuild("verify", image, "--trust-store", other, env=env)
    assert r.code == 1 and "Traceback" not in r.stderr

    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x01
    image.write_bytes(bytes(data))
    r = acbuild("verify", image, "--trust-store", store, env=env)
    assert r.code == 1 and "Traceback" not in r.stderr


def test_rebuild_removes_the_stale_signature(
    hello_context: Path, keys: Keys, tmp_path: Path, env: dict[str, str]
) -> None:
    image = tmp_path / "hello.aci"
    signed_hello(hello_context, keys, image, env)
    acfile = hello_context / "Acfile"
    acfile.write_text(acfile.read_text().replace("SIGN alice@example.com\n", "LABEL a=b\n"))
    r = acbuild("build", acfile, "-o", image, env=env)
    assert r.code == 0, r.stderr
    assert not Path(f"{image}.asc").exists()


def test_publish_serve_fetch_and_begin_from_the_served_name(
    hello_context: Path, keys: Keys, tmp_path: Path, server: Server, env: dict[str, str]
) -> None:
    image = tmp_path / "hello.aci"
    image_id = signed_hello(hello_context, keys, image, env)
    url = f"http://localhost:{server.port}"
    r = acbuild("publish", image, "--repo", server.root, "--url-base", url,
                "--gpg-home", keys.home, env=env)
    assert r.code == 0, r.stderr

    store = tmp_path / "trusted"
    assert acbuild("trust", "--trust-store", store, "--prefix", "localhost/hello", "--yes",
                   keys.pub["alice"], env=env).code == 0
    net = ("--insecure", "--port", str(server.port), "--trust-store", str(store))
    r = acbuild("fetch", "localhost/hello:1.0.0", *net, env=env)
    assert r.code == 0, r.stderr
    assert image_id in r.stdout

    child = tmp_path / "child"
    child.mkdir()
    (child / "Acfile").write_text(
        "BEGIN localhost/hello:1.0.0\nNAME localhost/child\nLABEL version=2.0.0\n"
        "DEPENDENCY localhost/hello:1.0.0\n"
    )
    r = acbuild("build", child / "Acfile", "-o", tmp_path / "child.aci", *net, env=env)
    assert r.code == 0, r.stderr
    actool_validate(tmp_path / "child.aci")
    with tarfile.open(tmp_path / "child.aci") as t:
        assert "rootfs/bin/hello" in t.getnames()
        f = t.extractfile("manifest")
        assert f is not None
        dependency = json.load(f)["dependencies"][0]
    # An unpinned DEPENDENCY is pinned to what it resolved to.
    assert dependency["imageName"] == "localhost/hello"
    assert dependency["imageID"] == image_id
    assert dependency["size"] == image.stat().st_size

    # An untrusted name is refused: fail closed.
    (child / "Acfile").write_text("BEGIN localhost/hello:1.0.0\nNAME localhost/child\n")
    r = acbuild("build", child / "Acfile", "-o", tmp_path / "c2.aci", "--insecure", "--port",
                str(server.port), "--trust-store", str(tmp_path / "empty-trust"),
                env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache2")})
    assert r.code == 1
    assert "Acfile:1:1: error:" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c2.aci").exists()
