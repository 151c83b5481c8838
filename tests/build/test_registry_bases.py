"""BEGIN docker://… end to end through the CLI against the real registry: a RUN step on top
in each auth mode, a second build that pulls no layer, rkt's signature policy, --platform,
convert and fetch, login, and hostile registries and layers failing cleanly."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cli import Result, acbuild, actool_validate, interrupted, no_partial_blobs
from tests.support.hostile import Tar
from tests.support.ocifixtures import Config, aci_tree, directory, file, make_layout, raw_layout
from tests.support.registry import (
    Registry,
    TamperProxy,
    multi_platform_layout,
    registry_with_busybox,
)
from tests.support.sandboxrun import needs_sandbox
from tests.support.trickle import TrickleServer, answer, padded, trickle_server

pytest_plugins = ("tests.support.registryfixtures",)


def cli(*args: str | Path, stdin: str | None = None, cwd: Path | None = None) -> Result:
    proc = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "CI": "true"})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def login(reg: Registry) -> None:
    if reg.username is None:
        return
    r = cli("login", reg.host, "-u", reg.username, "--password-stdin", *reg.reach_args(),
            stdin=f"{reg.password}\n")
    assert r.code == 0, r.stderr


def acfile(tmp_path: Path, begin: str, *lines: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Acfile").write_text("\n".join((f"BEGIN {begin}", "NAME example.com/pulled",
                                           "LABEL version=1.0.0", *lines)) + "\n")
    return ctx


def one_line_error(r: Result) -> str:
    assert r.code == 1, (r.code, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr
    return errors[0]


@needs_sandbox
def test_begin_docker_with_run_in_every_mode(any_registry: Registry, tmp_path: Path) -> None:
    login(any_registry)
    ctx = acfile(tmp_path, any_registry.ref("library/busybox:1.36"),
                 "RUN /bin/sh -c 'echo built on a pulled base > /etc/motd'",
                 "EXEC /bin/cat /etc/motd")
    image = tmp_path / "app.aci"
    r = cli("build", ctx, "-o", image, "--insecure-skip-verify", *any_registry.reach_args())
    assert r.code == 0, r.stderr
    assert "is not verified" in r.stderr
    actool_validate(image)
    assert aci_tree(image)["bin/busybox"][0] == "file"
    r = acbuild("run", "--no-stdin", image)
    assert (r.code, r.stdout) == (0, "built on a pulled base\n"), r.stderr
    pulled = len(any_registry.blob_gets())
    assert pulled == 2  # the config and the layer

    # --no-cache runs every step again, but the layers come from the store.
    r = cli("build", ctx, "-o", image, "--insecure-skip-verify", "--no-cache",
            *any_registry.reach_args())
    assert r.code == 0, r.stderr
    assert len(any_registry.blob_gets()) == pulled
    if any_registry.password:
        for where in (r.stderr, r.stdout, image.read_bytes().decode("latin-1"),
                      gzip.decompress(image.read_bytes()).decode("latin-1")):
            assert any_registry.password not in where


def test_password_is_nowhere_after_a_build(basic_registry: Registry, tmp_path: Path) -> None:
    """Not in the log (--debug), the plan, the step cache, the image or the blob store."""
    login(basic_registry)
    ctx = acfile(tmp_path, basic_registry.ref("library/busybox:1.36"), "ENV A=b",
                 "EXEC /bin/true")
    image = tmp_path / "app.aci"
    r = cli("--debug", "build", ctx, "-o", image, "--insecure-skip-verify",
            *basic_registry.reach_args())
    assert r.code == 0, r.stderr
    p = cli("plan", ctx, "--insecure-skip-verify", *basic_registry.reach_args())
    assert p.code == 0, p.stderr
    secret = (basic_registry.password or "").encode()
    assert secret and secret not in (r.stderr + r.stdout + p.stdout + p.stderr).encode()
    assert secret not in gzip.decompress(image.read_bytes())
    cache = Path(os.environ["XDG_CACHE_HOME"])
    for path in cache.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret not in path.read_bytes(), path
    config = Path(os.environ["HOME"]) / ".docker" / "config.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600"


def test_unpinned_reference_is_refused_without_skip_verify(http_registry: Registry,
                                                           tmp_path: Path) -> None:
    ctx = acfile(tmp_path, http_registry.ref("library/busybox:1.36"), "EXEC /bin/true")
    r = cli("build", ctx, "-o", tmp_path / "x.aci", *http_registry.reach_args())
    line = one_line_error(r)
    assert "carries no signature" in line and "pinned by digest" in line
    assert "--insecure-skip-verify" in r.stderr
    assert http_registry.blob_gets() == []


def test_pinned_by_digest_is_verification(http_registry: Registry, busybox_oci: Path,
                                          tmp_path: Path) -> None:
    digest = http_registry.push(f"oci:{busybox_oci}:1.36", "library/busybox:pinned")
    ctx = acfile(tmp_path, http_registry.ref(f"library/busybox@{digest}"), "EXEC /bin/true")
    r = cli("build", ctx, "-o", tmp_path / "x.aci", *http_registry.reach_args())
    assert r.code == 0, r.stderr
    assert "pinned by digest" in r.stderr and "verification" in r.stderr
    assert "warning" not in r.stderr.split("[1/")[0]


def test_401_without_credentials(basic_registry: Registry, tmp_path: Path) -> None:
    ctx = acfile(tmp_path, basic_registry.ref("library/busybox:1.36"), "EXEC /bin/true")
    r = cli("build", ctx, "-o", tmp_path / "x.aci", "--insecure-skip-verify",
            *basic_registry.reach_args())
    line = one_line_error(r)
    assert "authentication required" in line
    assert f"acbuild-py login {basic_registry.host}" in r.stderr


def test_unknown_tag(http_registry: Registry, tmp_path: Path) -> None:
    ctx = acfile(tmp_path, http_registry.ref("library/busybox:0.0"), "EXEC /bin/true")
    r = cli("build", ctx, "-o", tmp_path / "x.aci", "--insecure-skip-verify",
            *http_registry.reach_args())
    assert "no such image" in one_line_error(r)


def test_bad_reference_in_begin(tmp_path: Path) -> None:
    ctx = acfile(tmp_path, "docker://Upper/Case", "EXEC /bin/true")
    r = cli("build", ctx, "-o", tmp_path / "x.aci", "--insecure-skip-verify")
    assert "must be lower case" in one_line_error(r)


def test_corrupt_layer_fails_cleanly(proxy: TamperProxy, busybox_oci: Path,
                                     tmp_path: Path) -> None:
    index = json.loads((busybox_oci / "index.json").read_text())
    manifest = json.loads((busybox_oci / "blobs" / "sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    proxy.tampering.corrupt.add(manifest["layers"][0]["digest"])
    ctx = acfile(tmp_path, proxy.ref("library/busybox:1.36"), "EXEC /bin/true")
    out = tmp_path / "x.aci"
    r = cli("build", ctx, "-o", out, "--insecure-skip-verify", "--insecure-registry",
            proxy.host)
    assert "digest mismatch" in one_line_error(r)
    assert not out.exists()
    no_partial_blobs()


def test_truncated_layer_fails_cleanly(proxy: TamperProxy, busybox_oci: Path,
                                       tmp_path: Path) -> None:
    index = json.loads((busybox_oci / "index.json").read_text())
    manifest = json.loads((busybox_oci / "blobs" / "sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    proxy.tampering.truncate.add(manifest["layers"][0]["digest"])
    r = cli("convert", proxy.ref("library/busybox:1.36"), "-o", tmp_path / "x.aci",
            "--insecure-skip-verify", "--insecure-registry", proxy.host)
    line = one_line_error(r)
    assert "broke off" in line or "truncated" in line
    assert not (tmp_path / "x.aci").exists()
    no_partial_blobs()


def test_oversized_manifest_fails_cleanly(proxy: TamperProxy, tmp_path: Path) -> None:
    proxy.tampering.canned["/v2/library/busybox/manifests/1.36"] = (200, [], b"{" * (5 << 20))
    r = cli("fetch", proxy.ref("library/busybox:1.36"), "--insecure-skip-verify",
            "--insecure-registry", proxy.host)
    assert "more than the limit" in one_line_error(r)


def _hostile_layer(tmp_path: Path, reg: Registry, tar: Tar, name: str) -> str:
    data = tar.data()
    layout = raw_layout(tmp_path / name, [(gzip.compress(data), data,
                                            "application/vnd.oci.image.layer.v1.tar+gzip")])
    reg.push(f"oci:{layout}:latest", f"library/{name}:1")
    return reg.ref(f"library/{name}:1")


def test_layer_climbing_out_is_refused(http_registry: Registry, tmp_path: Path) -> None:
    ref = _hostile_layer(tmp_path, http_registry,
                         Tar().dir("etc").file("../../../tmp/evil", b"x"), "climb")
    r = cli("convert", ref, "-o", tmp_path / "x.aci", "--insecure-skip-verify",
            *http_registry.reach_args())
    assert "points outside the image" in one_line_error(r)
    assert not (tmp_path / "x.aci").exists()
    assert not Path("/tmp/evil").exists()


def test_absolute_paths_and_devices_stay_inside(http_registry: Registry,
                                               tmp_path: Path) -> None:
    tar = (Tar().dir("etc").file("/etc/abs", b"absolute\n")
           .dir("dev").device("dev/sda", "blk", 8, 0).device("dev/null", "chr", 1, 3))
    ref = _hostile_layer(tmp_path, http_registry, tar, "devices")
    out = tmp_path / "x.aci"
    r = cli("convert", ref, "-o", out, "--insecure-skip-verify", *http_registry.reach_args())
    assert r.code == 0, r.stderr
    with tarfile.open(out) as t:
        names = {m.name: m for m in t}
        assert names["rootfs/etc/abs"].isfile()
        assert names["rootfs/dev/sda"].isblk() and names["rootfs/dev/null"].ischr()
        member = t.extractfile("rootfs/etc/abs")
        assert member is not None and member.read() == b"absolute\n"


@pytest.fixture
def multi(http_registry: Registry, tmp_path: Path) -> str:
    images = []
    for plat in ("linux/amd64", "linux/arm64"):
        os_name, arch = plat.split("/")
        layout = tmp_path / f"img-{arch}"
        make_layout(layout, "latest", [[directory("etc"), file("etc/platform", plat + "\n")]],
                    Config(os=os_name, architecture=arch))
        images.append((os_name, arch, None, layout))
    layout = multi_platform_layout(tmp_path / "multi", "1", images)
    http_registry.push(f"oci:{layout}:1", "library/multi:1", all_images=True)
    return http_registry.ref("library/multi:1")


def _platform_file(aci: Path) -> bytes:
    with tarfile.open(aci) as t:
        member = t.extractfile("rootfs/etc/platform")
        assert member is not None
        return member.read()


def test_build_picks_the_host_platform_and_platform_overrides(
        http_registry: Registry, multi: str, tmp_path: Path) -> None:
    ctx = acfile(tmp_path, multi, "EXEC /bin/true")
    host = tmp_path / "host.aci"
    r = cli("build", ctx, "-o", host, "--insecure-skip-verify", *http_registry.reach_args())
    assert r.code == 0, r.stderr
    assert _platform_file(host) == b"linux/amd64\n"
    arm = tmp_path / "arm.aci"
    r = cli("build", ctx, "-o", arm, "--insecure-skip-verify", "--platform", "linux/arm64",
            *http_registry.reach_args())
    assert r.code == 0, r.stderr
    assert _platform_file(arm) == b"linux/arm64\n"
    with tarfile.open(arm) as t:
        manifest = t.extractfile("manifest")
        assert manifest is not None
        labels = {x["name"]: x["value"] for x in json.load(manifest)["labels"]}
    assert labels["arch"] == "aarch64"


def test_convert_and_fetch_docker(http_registry: Registry, tmp_path: Path) -> None:
    out = tmp_path / "busybox.aci"
    r = cli("convert", http_registry.ref("library/busybox:1.36"), "-o", out,
            "--insecure-skip-verify", *http_registry.reach_args())
    assert r.code == 0, r.stderr
    actool_validate(out)
    gets = len(http_registry.blob_gets())
    r = cli("fetch", http_registry.ref("library/busybox:1.36"), "--insecure-skip-verify",
            *http_registry.reach_args())
    assert r.code == 0, r.stderr
    image_id = r.stdout.strip()
    assert image_id.startswith("sha512-")
    assert len(http_registry.blob_gets()) == gets  # convert stored the layers already
    listing = cli("images")
    assert listing.code == 0 and f"{http_registry.host.replace(':', '-')}/library/busybox" \
        in listing.stdout
    r = cli("gc", "--blobs")
    assert r.code == 0, r.stderr
    blobs = Path(os.environ["XDG_CACHE_HOME"]) / "acbuild-py" / "images" / "blobs"
    assert os.listdir(blobs / "sha256") == []
    r = cli("convert", http_registry.ref("library/busybox:1.36"), "-o", out,
            "--insecure-skip-verify", *http_registry.reach_args())
    assert r.code == 0, r.stderr
    assert len(http_registry.blob_gets()) == gets + 2  # pulled again after gc


def test_a_corrupt_stored_layer_is_removed_and_pulled_again(http_registry: Registry,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "busybox.aci"
    args = ("convert", http_registry.ref("library/busybox:1.36"), "-o", out,
            "--insecure-skip-verify", *http_registry.reach_args())
    assert cli(*args).code == 0
    gets = len(http_registry.blob_gets())
    blobs = Path(os.environ["XDG_CACHE_HOME"]) / "acbuild-py" / "images" / "blobs" / "sha256"
    layer = max(blobs.iterdir(), key=lambda p: p.stat().st_size)  # busybox's one layer
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bit flipped on disk: same size, same name
    layer.write_bytes(bytes(data))
    out.unlink()
    error = one_line_error(cli(*args))
    assert "the stored copy of layer 1 is corrupt" in error
    assert not layer.exists() and not out.exists()
    r = cli(*args)
    assert r.code == 0, r.stderr
    assert len(http_registry.blob_gets()) == gets + 1  # that layer, downloaded again
    actool_validate(out)


def test_tls_registry_needs_its_ca(tmp_path: Path, busybox_oci: Path) -> None:
    with registry_with_busybox(tmp_path, "tls", busybox_oci) as reg:
        r = cli("convert", reg.ref("library/busybox:1.36"), "-o", tmp_path / "x.aci",
                "--insecure-skip-verify")
        one_line_error(r)
        assert "--ca-file" in r.stderr
        r = cli("convert", reg.ref("library/busybox:1.36"), "-o", tmp_path / "x.aci",
                "--insecure-skip-verify", "--ca-file", str(reg.ca))
        assert r.code == 0, r.stderr


def test_plain_http_needs_insecure_registry(http_registry: Registry, tmp_path: Path) -> None:
    r = cli("convert", http_registry.ref("library/busybox:1.36"), "-o", tmp_path / "x.aci",
            "--insecure-skip-verify")
    one_line_error(r)
    assert f"--insecure-registry {http_registry.host}" in r.stderr


def test_a_build_without_docker_bases_does_not_load_the_http_client() -> None:
    probe = ("import sys, acbuild.build.build, acbuild.cli.commands.build, "
             "acbuild.cli.commands.trustopts; print('httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_max_image_size_refuses_big_layers_before_downloading(http_registry: Registry,
                                                              tmp_path: Path) -> None:
    ctx = acfile(tmp_path, http_registry.ref("library/busybox:1.36"), "EXEC /bin/true")
    r = cli("build", ctx, "-o", tmp_path / "x.aci", "--insecure-skip-verify",
            "--max-image-size", "100K", *http_registry.reach_args())
    assert "more than the limit of 102400 (--max-image-size)" in one_line_error(r)
    assert http_registry.blob_gets() == []


def test_docker_schema_2_image_converts(http_registry: Registry, busybox_oci: Path,
                                        tmp_path: Path) -> None:
    http_registry.push(f"oci:{busybox_oci}:1.36", "library/busybox:v2s2", fmt="v2s2")
    out = tmp_path / "v2s2.aci"
    r = cli("convert", http_registry.ref("library/busybox:v2s2"), "-o", out,
            "--insecure-skip-verify", *http_registry.reach_args())
    assert r.code == 0, r.stderr
    actool_validate(out)
    assert aci_tree(out)["bin/busybox"][0] == "file"


@pytest.mark.parametrize("header", [("WWW-Authenticate", 'Bearer realm="https://xn--/tok"'),
                                    ("WWW-Authenticate", 'Bearer realm="http://[::1/tok"')])
def test_a_hostile_realm_is_one_line_not_an_internal_error(
        proxy: TamperProxy, tmp_path: Path, header: tuple[str, str]) -> None:
    proxy.tampering.canned["/v2/library/busybox/manifests/1.36"] = (401, [header], b"")
    r = cli("convert", proxy.ref("library/busybox:1.36"), "-o", tmp_path / "x.aci",
            "--insecure-skip-verify", "--insecure-registry", proxy.host)
    assert "asks for a token from" in one_line_error(r)


def test_convert_takes_max_image_size(proxy: TamperProxy, tmp_path: Path) -> None:
    """Red-team RP-2: a manifest claiming a 16 TiB layer streamed zeros until the disk was
    full; the default 64G limit refuses it before any blob is asked for."""
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": "sha256:" + "7" * 64, "size": 1 << 44}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": "sha256:" + "8" * 64, "size": 2}, "layers": [layer]}
    proxy.tampering.canned["/v2/library/busybox/manifests/1.36"] = (
        200, [], json.dumps(manifest).encode())
    for verb in ("convert", "fetch"):
        args = ["-o", str(tmp_path / "x.aci")] if verb == "convert" else []
        r = cli(verb, proxy.ref("library/busybox:1.36"), *args, "--insecure-skip-verify",
                "--insecure-registry", proxy.host)
        assert "more than the limit of 68719476736 (--max-image-size)" in one_line_error(r)
    r = cli("fetch", proxy.ref("library/busybox:1.36"), "--insecure-skip-verify",
            "--insecure-registry", proxy.host, "--max-image-size", "1T")
    assert "more than the limit of 1099511627776" in one_line_error(r)
    assert proxy.tampering.blob_gets() == []


def _config_and_layers(proxy: TamperProxy, layers: list[tuple[str, int]],
                       architecture: str = "amd64") -> None:
    """Canned library/busybox:1.36: a real config (served) and these (digest, size) layers."""
    config = json.dumps({"architecture": architecture, "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": ["sha256:" + "0" * 64] * len(layers)}}).encode()
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    proxy.tampering.canned[f"/v2/library/busybox/blobs/{digest}"] = (200, [], config)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": digest, "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": d, "size": n} for d, n in layers]}
    proxy.tampering.canned["/v2/library/busybox/manifests/1.36"] = (
        200, [], json.dumps(manifest).encode())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_a_trickling_layer_stops_at_once(proxy: TamperProxy, tmp_path: Path,
                                                          sig: int) -> None:
    """Red-team RP-6: Ctrl-C while a server trickles a layer took more than 30 s."""
    layer = "sha256:" + "7" * 64

    def trickle() -> Iterator[bytes]:
        for _ in range(10_000):
            time.sleep(0.2)
            yield b"\0" * 1024

    _config_and_layers(proxy, [(layer, 10 << 20)])
    proxy.tampering.canned[f"/v2/library/busybox/blobs/{layer}"] = (
        200, [("Content-Length", str(10 << 20))], trickle())
    proc = subprocess.Popen(
        [sys.executable, "-m", "acbuild", "convert", proxy.ref("library/busybox:1.36"), "-o",
         str(tmp_path / "x.aci"), "--insecure-skip-verify", "--insecure-registry", proxy.host],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "true"})
    interrupted(proc, sig, lambda: bool(proxy.tampering.blob_gets()), settle=1.0, within=5.0)
    no_partial_blobs()


def _trickling_config(server: TrickleServer) -> str:
    """library/slow:1 on ``server``: a manifest answered at once, whose config's answer
    trickles its headers a byte at a time (150 s; each byte on time); the config's path."""
    config = b'{"architecture": "amd64", "os": "linux"}'
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": digest, "size": len(config)}, "layers": []}
    server.answers["/v2/library/slow/manifests/1"] = answer(200, body=json.dumps(
        manifest).encode())
    path = f"/v2/library/slow/blobs/{digest}"
    server.answers[path] = padded(200, body=config, pad=3000, head_pause=0.05)
    return path


@pytest.mark.parametrize(("verb", "sig"), [("pull", signal.SIGINT), ("fetch", signal.SIGTERM),
                                           ("build", signal.SIGINT)])
def test_interrupt_while_a_registry_trickles_its_headers_stops_at_once(
        tmp_path: Path, verb: str, sig: int) -> None:
    """Red-team RT-1: Ctrl-C while a blob's answer trickled its headers (in a pull's
    thread) was acted on only at the 60 s head deadline."""
    with trickle_server() as server:
        path = _trickling_config(server)
        ref = f"docker://{server.host}/library/slow:1"
        out = tmp_path / "out.aci"
        args = {"pull": ["pull", ref], "fetch": ["fetch", ref, "--insecure-skip-verify"],
                "build": ["build", acfile(tmp_path, ref), "-o", out, "--insecure-skip-verify"]}
        proc = subprocess.Popen(
            [sys.executable, "-m", "acbuild", *map(str, args[verb]), "--insecure-registry",
             server.host], stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "true"})
        interrupted(proc, sig, lambda: f"GET {path}" in server.requests)
    assert not out.exists()
    no_partial_blobs()


def _arm64_image_in_an_index(proxy: TamperProxy) -> Callable[[str], None]:
    """library/busybox:1.36 as an index with one entry, for the architecture a call of the
    result says, naming an (empty) arm64 image."""
    _config_and_layers(proxy, [], architecture="arm64")
    child = proxy.tampering.canned.pop("/v2/library/busybox/manifests/1.36")
    body = child[2]
    assert isinstance(body, bytes)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    proxy.tampering.canned[f"/v2/library/busybox/manifests/{digest}"] = child

    def entry_for(architecture: str) -> None:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "digest": digest, "size": len(body),
                                "platform": {"os": "linux", "architecture": architecture}}]}
        proxy.tampering.canned["/v2/library/busybox/manifests/1.36"] = (
            200, [], json.dumps(index).encode())

    return entry_for


def test_an_index_entry_that_lies_about_its_platform(proxy: TamperProxy,
                                                     tmp_path: Path) -> None:
    """Red-team RP-5: the amd64 entry of an index pointing at an arm64 image."""
    _arm64_image_in_an_index(proxy)("amd64")
    r = cli("convert", proxy.ref("library/busybox:1.36"), "-o", tmp_path / "x.aci",
            "--insecure-skip-verify", "--insecure-registry", proxy.host)
    assert "entry for linux/amd64 is an image for linux/arm64" in one_line_error(r)


def test_a_lying_index_entry_is_refused_although_the_image_is_cached(
        proxy: TamperProxy, tmp_path: Path) -> None:
    """Red-team RT-8: once a build for arm64 had cached the image's steps, the same image
    offered by an index as amd64 was built from the cache, with no pull to refuse it."""
    entry_for = _arm64_image_in_an_index(proxy)
    ctx = acfile(tmp_path, proxy.ref("library/busybox:1.36"))
    reach = ("--insecure-skip-verify", "--insecure-registry", proxy.host)
    entry_for("arm64")
    r = cli("build", ctx, "-o", tmp_path / "arm.aci", "--platform", "linux/arm64", *reach)
    assert r.code == 0, r.stderr
    entry_for("amd64")
    r = cli("build", ctx, "-o", tmp_path / "lie.aci", "--platform", "linux/amd64", *reach)
    assert "entry for linux/amd64 is an image for linux/arm64" in one_line_error(r)
    assert not (tmp_path / "lie.aci").exists()
