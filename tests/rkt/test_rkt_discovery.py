"""publish -> discovery -> `rkt trust --prefix` -> `rkt fetch NAME[:VERSION]` -> `rkt run`,
over HTTPS with a throwaway CA and over plain HTTP; `latest` is the newest version."""

from __future__ import annotations

from pathlib import Path

import pytest

from acbuild.image.aci import image_id
from tests.rkt.conftest import Rkt, SigningKey, build, discovery, need_discovery
from tests.support.cli import acbuild
from tests.support.httpserver import TlsFiles

ACFILE = """\
BEGIN scratch
NAME example.com/hello
LABEL version={{ version }}
ENV GREETING="hello {{ version }}"
COPY hello /bin/hello
EXEC /bin/hello
"""


def _publish(tmp_path: Path, hello_binary: Path, key: SigningKey, scheme: str,
             versions: tuple[str, ...]) -> tuple[Path, dict[str, Path]]:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Acfile").write_text(ACFILE)
    (ctx / "hello").write_bytes(hello_binary.read_bytes())
    (ctx / "hello").chmod(0o755)
    repo, images = tmp_path / "www", {}
    for version in versions:
        images[version] = build(ctx / "Acfile", tmp_path / f"hello-{version}.aci", key,
                                "--var", f"version={version}")
        r = acbuild("publish", images[version], "--repo", repo, "--url-base",
                    f"{scheme}://example.com", "--gpg-home", key.home)
        assert r.code == 0, r.stderr
    return repo, images


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_publish_then_rkt_trust_fetch_run_by_name(scheme: str, tmp_path: Path,
                                                  hello_binary: Path, rkt: Rkt,
                                                  rsa_key: SigningKey, tls: TlsFiles) -> None:
    need_discovery()
    # 2.0.0 before 1.5.0: publishing an older version later must leave `latest` on 2.0.0.
    repo, images = _publish(tmp_path, hello_binary, rsa_key, scheme, ("1.0.0", "2.0.0", "1.5.0"))
    insecure = () if scheme == "https" else ("--insecure-options=http",)
    allow = "" if scheme == "https" else " --insecure-allow-http"
    script = "\n".join([
        "set -e",
        rkt.shell("trust", "--prefix=example.com/hello", "--skip-fingerprint-review") + allow,
        "echo FETCHED $(" + rkt.shell(*insecure, "fetch", "--full",
                                      "example.com/hello:1.0.0") + ")",
        rkt.shell("run", "example.com/hello:1.0.0", run=True),
        "echo LATEST $(" + rkt.shell(*insecure, "fetch", "--full", "example.com/hello") + ")",
        rkt.shell("run", "--pull-policy=never", "example.com/hello:2.0.0", run=True),
    ])
    log = tmp_path / "access.log"
    r = discovery(repo, script, tls=tls if scheme == "https" else None,
                  env={"WDS_ACCESS_LOG": str(log)})
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    fetched = next(line.split()[1] for line in lines if line.startswith("FETCHED"))
    latest = next(line.split()[1] for line in lines if line.startswith("LATEST"))
    assert image_id(images["1.0.0"]).startswith(fetched)
    assert image_id(images["2.0.0"]).startswith(latest)  # `latest` is the newest, not the last
    assert "hello 1.0.0" in lines and "hello 2.0.0" in lines, r.stdout
    assert "signature verified" in r.stderr
    served = log.read_text()
    assert "GET /hello/hello-latest-linux-amd64.aci " in served
    assert f"{scheme} " in served and ("https " not in served or scheme == "https"), served
