"""Hardening: builds and fetches racing each other through the real CLI — same output path,
different outputs, one shared step cache, one image store: every result is correct and whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from acbuild.report import NullReporter
from acbuild.trust.sign import sign_image
from acbuild.trust.truststore import TrustStore
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import actool_validate
from tests.support.gpghelp import Keys, make_aci
from tests.support.httpserver import Server, serve_tmp

pytestmark = pytest.mark.skipif(not busybox_available(), reason="needs busybox-static")


@pytest.fixture
def acfile(tmp_path: Path) -> Path:
    make_busybox_rootfs(tmp_path / "rootfs")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "blob").write_bytes(os.urandom(8 << 20))
    (ctx / "Acfile").write_text(
        "BEGIN ../rootfs\nNAME example.com/race\nCOPY blob /blob\n"
        "RUN /bin/sh -c 'echo raced > /etc/motd'\nEXEC /bin/sh\n")
    return ctx / "Acfile"


def run_together(commands: Sequence[Sequence[str | Path]], env: dict[str, str]) -> list[str]:
    """Start every command at once; all must succeed; their stdouts."""
    full = {**os.environ, "CI": "true", "SOURCE_DATE_EPOCH": "1600000000", **env}
    procs = [subprocess.Popen([sys.executable, "-m", "acbuild", *map(str, c)], env=full,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    return [out.strip() for out, _err in outs]


def reference(acfile: Path, tmp_path: Path) -> str:
    (ref,) = run_together([("build", "--allow-path", tmp_path, acfile,
                            "-o", tmp_path / "ref.aci", "--no-cache")],
                          {"XDG_STATE_HOME": str(tmp_path / "state")})
    return ref


def test_two_builds_to_one_output(acfile: Path, tmp_path: Path) -> None:
    want = reference(acfile, tmp_path)
    out = tmp_path / "out" / "race.aci"
    out.parent.mkdir()
    ids = run_together([("build", "--allow-path", tmp_path, acfile,
                            "-o", out)] * 2,
                       {"XDG_CACHE_HOME": str(tmp_path / "cache"),
                        "XDG_STATE_HOME": str(tmp_path / "state")})
    assert ids == [want, want]
    assert out.read_bytes() == (tmp_path / "ref.aci").read_bytes()
    assert sorted(os.listdir(out.parent)) == ["race.aci"]
    actool_validate(out)


def test_two_builds_to_two_outputs_share_one_cache(acfile: Path, tmp_path: Path) -> None:
    want = reference(acfile, tmp_path)
    cache = tmp_path / "shared-cache"
    outs = [tmp_path / "a.aci", tmp_path / "b.aci"]
    ids = run_together([("build", "--allow-path", tmp_path, acfile,
                            "-o", o, "--cache-dir", cache) for o in outs],
                       {"XDG_STATE_HOME": str(tmp_path / "state")})
    assert ids == [want, want]
    # and the cache the race filled gives the same image again
    (again,) = run_together([("build", "--allow-path", tmp_path, acfile,
                            "-o", tmp_path / "c.aci", "--cache-dir", cache)],
                            {"XDG_STATE_HOME": str(tmp_path / "state")})
    assert again == want
    for o in [*outs, tmp_path / "c.aci"]:
        assert o.read_bytes() == (tmp_path / "ref.aci").read_bytes()
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Server]:
    yield from serve_tmp(tmp_path)


def test_two_fetches_store_the_image_once(
    http_server: Server, gpgkeys: Keys, tmp_path: Path
) -> None:
    name = "127.0.0.1/app"
    (http_server.root / "app").mkdir()
    image = make_aci(http_server.root / "app" / "app-1.0.aci", name, {"version": "1.0"},
                     payload=os.urandom(4 << 20))
    sign_image(image, gpgkeys.fpr["alice"], gpg_home=gpgkeys.home, reporter=NullReporter())
    template = f"{http_server.url}/app/app-{{version}}.{{ext}}"
    (http_server.root / "app" / "index.html").write_text(
        f'<meta name="ac-discovery" content="{name} {template}">')
    trust = TrustStore(tmp_path / "trust")
    trust.add(gpgkeys.pub["alice"].read_bytes(), prefix=name)
    store = tmp_path / "images"
    fetch = ("fetch", f"{name}:1.0", "--insecure", "--port", str(http_server.port),
             "--trust-store", trust.root, "--store", store)
    ids = run_together([fetch] * 3, {})
    assert len(set(ids)) == 1
    stored = sorted(p.name for p in store.rglob("sha512-*"))
    assert len([s for s in stored if not s.endswith(".asc")]) == 1, stored
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]
