"""`acbuild-py pull docker://…` through the CLI against the real registry: the image's blobs
into the store (verified), its digest printed, a second pull and a later fetch of the pinned
image transferring no layer; and a registry that refuses connections failing at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acbuild.image.aci import image_id
from tests.support.cli import Result
from tests.support.registry import Registry, free_port

pytest_plugins = ("tests.support.registryfixtures",)


def cli(*args: str | Path, stdin: str | None = None) -> Result:
    proc = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CI": "true"})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def stored_blobs(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs" / "sha256").iterdir()}


def test_pull_stores_the_image_and_prints_its_digest(http_registry: Registry,
                                                     tmp_path: Path) -> None:
    store = tmp_path / "store"
    ref = http_registry.ref("library/busybox:1.36")
    r = cli("pull", ref, *http_registry.reach_args(), "--store", store, "--progress", "plain")
    assert r.code == 0, r.stderr
    digest = r.stdout.strip()
    inspected = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", ref, "--format", "{{.Digest}}"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert digest == inspected
    pulled = http_registry.blob_gets()
    assert {d.split(":", 1)[1] for d in pulled} <= stored_blobs(store)
    assert "not verified" not in r.stderr  # nothing is used yet: no signature rule

    again = cli("pull", ref, *http_registry.reach_args(), "--store", store, "--progress", "plain")
    assert again.code == 0 and again.stdout.strip() == digest
    assert "0 blobs pulled" in again.stderr
    assert http_registry.blob_gets() == pulled

    # What the digest is for: pinning. fetch of the pinned image needs no
    # --insecure-skip-verify and transfers no layer; what it prints is the ACI's image ID.
    pinned = http_registry.ref(f"library/busybox@{digest}")
    fetched = cli("fetch", pinned, *http_registry.reach_args(), "--store", store)
    assert fetched.code == 0, fetched.stderr
    assert http_registry.blob_gets() == pulled
    stored = fetched.stdout.strip()
    assert image_id(store / f"{stored}.aci") == stored


def test_pull_mends_a_damaged_stored_blob(http_registry: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    ref = http_registry.ref("library/busybox:1.36")
    assert cli("pull", ref, *http_registry.reach_args(), "--store", store).code == 0
    pulled = len(http_registry.blob_gets())
    layer = max((store / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same name, other bytes
    layer.write_bytes(bytes(data))
    r = cli("pull", ref, *http_registry.reach_args(), "--store", store, "--progress", "plain")
    assert r.code == 0, r.stderr
    assert "1 blobs pulled" in r.stderr
    assert len(http_registry.blob_gets()) == pulled + 1
    assert (layer.read_bytes()) != bytes(data)  # the good bytes again


def test_pull_in_every_auth_mode(any_registry: Registry, tmp_path: Path) -> None:
    if any_registry.username is not None:
        r = cli("login", any_registry.host, "-u", any_registry.username, "--password-stdin",
                *any_registry.reach_args(), stdin=f"{any_registry.password}\n")
        assert r.code == 0, r.stderr
    r = cli("pull", any_registry.ref("library/busybox:1.36"), *any_registry.reach_args(),
            "--store", tmp_path / "store")
    assert r.code == 0, r.stderr
    assert r.stdout.startswith("sha256:") and len(r.stdout.strip()) == 71
    assert len(stored_blobs(tmp_path / "store")) >= 3  # manifest, config, layer


def test_pull_takes_docker_references_only() -> None:
    r = cli("pull", "example.com/app:1.0")
    assert r.code == 2
    assert "pull takes a docker:// image" in r.stderr


def test_a_refusing_registry_fails_at_once_in_one_line(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    r = cli("pull", f"docker://{host}/library/busybox:1.36", "--insecure-registry", host,
            "--store", tmp_path / "store")
    elapsed = time.monotonic() - started
    assert r.code == 1 and "Traceback" not in r.stderr
    (error,) = [line for line in r.stderr.splitlines() if "error:" in line]
    assert error == (f"error: cannot reach http://{host}/v2/library/busybox/manifests/1.36: "
                     "connection refused")
    assert elapsed < 5.0, elapsed  # the retries took ~7.5 s before


@pytest.mark.parametrize("args", [["--platform", "linux"], ["--max-image-size", "lots"]])
def test_bad_pull_options_are_usage_errors(args: list[str]) -> None:
    r = cli("pull", "docker://127.0.0.1:9/x", *args)
    assert r.code == 2 and "Traceback" not in r.stderr
