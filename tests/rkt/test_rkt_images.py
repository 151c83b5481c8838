"""rkt fetches acbuild-py's images with their signatures verified and runs them: every
example, a converted Docker image, WORKDIR without a step that makes it, and the images rkt
refuses that acbuild-py warns about."""

from __future__ import annotations

import shutil
from pathlib import Path

from acbuild.image.aci import image_id as aci_image_id
from tests.conftest import EXAMPLES
from tests.rkt.conftest import Rkt, SigningKey, build, sign, trust_in_acbuild
from tests.support.busybox import BUSYBOX
from tests.support.cli import acbuild
from tests.support.ocifixtures import busybox_docker_archive

# Example -> (image beside the copied examples, rkt run arguments after the image, stdout).
EXPECTED = {
    "hello": ("hello.aci", (), "Hello AppC\n"),
    "busybox": ("busybox-app/busybox.aci", ("--exec=/bin/sh", "--", "-c",
                                            "echo busybox $(ls /bin | wc -l)"),
                None),
    "busybox-app": ("busybox-app.aci", (), "Welcome to busybox-app\n"
                    "Hello from busybox-app, app in /home/app: written by app\n"),
}


def fetch_verified(rkt: Rkt, image: Path, name: str, key: SigningKey) -> str:
    """``rkt fetch`` of a local signed file; returns the image ID it stored."""
    rkt.trust(name, key.public)
    r = rkt("fetch", "--full", image)
    assert "signature verified" in r.stderr, r.stderr
    image_id = r.stdout.strip().splitlines()[-1]
    # rkt keys its store by the first half of the sha512 of the uncompressed tar.
    assert image_id.startswith("sha512-") and aci_image_id(image).startswith(image_id), \
        r.stdout
    return image_id


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()) == sorted(EXPECTED)


def test_examples_fetched_verified_and_run_by_rkt(examples_built: Path, rkt: Rkt,
                                                  rsa_key: SigningKey) -> None:
    for example, (path, args, stdout) in EXPECTED.items():
        image = examples_built / path
        fetch_verified(rkt, image, f"example.com/{example}", rsa_key)
        r = rkt("run", image, *args, run=True)
        if stdout is None:  # the busybox base: its applets are there
            if "busybox" not in r.stdout:
                raise AssertionError(f"{example}: {r.stdout}{r.stderr}")
            assert int(r.stdout.split()[-1]) > 100, r.stdout
        else:
            assert r.stdout.replace("\r\n", "\n") == stdout, f"{example}: {r.stderr}"


def test_converted_docker_image_fetched_verified_and_run(tmp_path: Path, rkt: Rkt,
                                                         rsa_key: SigningKey) -> None:
    archive = busybox_docker_archive(tmp_path / "docker", name="example.com/busybox",
                                     tag="1.0")
    image = tmp_path / "busybox.aci"
    r = acbuild("convert", archive, "-o", image)
    assert r.code == 0, r.stderr
    sign(image, rsa_key)
    fetch_verified(rkt, image, "example.com/busybox", rsa_key)
    r = rkt("run", image, "--exec=/bin/sh", "--", "-c", "echo converted; cat /etc/passwd",
            run=True)
    assert r.stdout.splitlines()[:2] == ["converted", "root:x:0:0:root:/root:/bin/sh"], \
        r.stderr


def test_workdir_no_step_creates_runs_in_rkt(tmp_path: Path, hello_binary: Path, rkt: Rkt,
                                             rsa_key: SigningKey) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy2(BUSYBOX, ctx / "busybox")
    (ctx / "Acfile").write_text(
        "BEGIN scratch\nNAME example.com/wd\nLABEL version=1.0.0\nCOPY busybox /bin/busybox\n"
        "WORKDIR /srv/app\nEXEC /bin/busybox pwd\n")
    image = build(ctx / "Acfile", tmp_path / "wd.aci", rsa_key)
    fetch_verified(rkt, image, "example.com/wd", rsa_key)
    r = rkt("run", image, run=True)
    assert r.stdout.strip() == "/srv/app", r.stderr
    trust_in_acbuild(rsa_key, "example.com/wd")
    r = acbuild("run", "--no-stdin", image)
    assert (r.code, r.stdout) == (0, "/srv/app\n"), r.stderr


def test_rkt_refuses_what_acbuild_warns_about(tmp_path: Path, hello_context: Path, rkt: Rkt,
                                              rsa_key: SigningKey) -> None:
    """No arch label: the build warns, and rkt run indeed refuses the image."""
    acfile = hello_context / "Acfile"
    acfile.write_text(acfile.read_text().replace("LABEL version=1.0.0",
                                                 "LABEL version=1.0.0 os=darwin"))
    r = acbuild("build", "--no-cache", acfile, "-o", tmp_path / "darwin.aci")
    assert r.code == 0 and "warning: the image has no arch label" in r.stderr, r.stderr
    r = rkt("--insecure-options=image", "run", tmp_path / "darwin.aci", run=True, check=False)
    assert r.returncode != 0, r.stdout
