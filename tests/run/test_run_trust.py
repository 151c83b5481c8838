"""Class 3 of the security issue: what an image given to `run` may make us do.

Real sandbox, real gpg, hostile manifests: mount point names that climb out of the scratch
directory, duplicates, unsigned or swapped dependencies, a stale rendered-rootfs cache."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acbuild.distribution.imagestore import ImageStore
from acbuild.errors import SandboxError
from acbuild.image.aci import image_id
from acbuild.report import NullReporter
from acbuild.sandbox.sandbox import sandbox_available
from acbuild.trust.sign import sign_image
from acbuild.trust.truststore import TrustStore
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import Result, acbuild
from tests.support.gpghelp import Keys

pytest_plugins = ("tests.support.fetchhelp",)  # gpgkeys
_reason = sandbox_available() if busybox_available() else "busybox-static is not installed"
needs_sandbox = pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}")


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("bb")
    rootfs = make_busybox_rootfs(where / "rootfs")
    (where / "Acfile").write_text(f"BEGIN {rootfs}\nNAME example.com/busybox\nEXEC /bin/sh\n")
    r = acbuild("build", "--no-cache", where / "Acfile", "-o", where / "busybox.aci")
    assert r.code == 0, r.stderr
    return where / "busybox.aci"


def rewrite(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the ACI ``src`` whose manifest ``edit`` changed."""
    with tarfile.open(src, "r:*") as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            data = tin.extractfile(member) if member.isreg() else None
            if member.name == "manifest":
                assert data is not None
                doc = json.loads(data.read())
                edit(doc)
                body = json.dumps(doc).encode()
                member.size = len(body)
                data = io.BytesIO(body)
            tout.addfile(member, data)
    return dst


def run(tmp_path: Path, *args: str | Path) -> Result:
    return acbuild("run", "--no-stdin", *args,
                   env={"XDG_CACHE_HOME": str(tmp_path / "cache")}, timeout=60)


def with_mounts(*names: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["app"]["exec"] = ["/bin/true"]
        doc["app"]["mountPoints"] = [{"name": n, "path": f"/mnt{i}"} for i, n in enumerate(names)]
    return edit


@needs_sandbox
@pytest.mark.parametrize("names", [("../../../../../escaped",), ("data", "data"),
                                   ("a/../../../../../../escaped",)])
def test_hostile_mount_point_names(tmp_path: Path, busybox: Path, names: tuple[str, ...]) -> None:
    app = rewrite(busybox, tmp_path / "app.aci", with_mounts(*names))
    r = run(tmp_path, app)
    assert r.code == 1, (r.code, r.stderr)
    # refused by the one strict manifest reader, before anything is created
    assert "manifest is not valid" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "escaped").exists()
    assert not list(tmp_path.rglob("escaped"))


@needs_sandbox
def test_the_whole_manifest_is_validated(tmp_path: Path, busybox: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["app"]["exec"] = ["/bin/echo", "ran"]
        doc["app"]["isolators"] = [{"name": "resource/memory", "value": {"limit": "lots"}}]
    r = run(tmp_path, rewrite(busybox, tmp_path / "app.aci", edit))
    assert r.code == 1 and r.stdout == ""
    assert "manifest is not valid" in r.stderr


def test_a_symlink_planted_in_the_scratch_dir_is_not_followed(tmp_path: Path) -> None:
    from acbuild.run.runimage import empty_volume  # the fix's routine

    where, outside = tmp_path / "scratch", tmp_path / "outside"
    where.mkdir()
    outside.mkdir()
    scratch = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (where / "volumes").symlink_to(outside)
        with pytest.raises(SandboxError, match="is not a plain directory"):
            empty_volume(scratch, "data")
        assert list(outside.iterdir()) == []
        (where / "volumes").unlink()
        (where / "volumes").mkdir()
        (where / "volumes" / "data").symlink_to(outside)
        with pytest.raises(SandboxError, match="listed twice"):
            empty_volume(scratch, "data")
        for bad in ("..", "../x", "a/b", ".", "Data"):
            with pytest.raises(SandboxError, match="not an ACName"):
                empty_volume(scratch, bad)
        assert list(outside.iterdir()) == []
        made = empty_volume(scratch, "logs")  # named through the descriptor, for the helper
        assert made == Path(f"/proc/self/fd/{scratch}/volumes/logs")
        assert made.resolve() == where / "volumes" / "logs" and made.is_dir()
    finally:
        os.close(scratch)


def make_pair(tmp_path: Path, text: str) -> tuple[Path, Path]:
    """dep.aci holding /etc/dep.txt = text, and where app.aci goes."""
    where = tmp_path / "repo"
    where.mkdir(exist_ok=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "dep.txt").write_text(text)
    (ctx / "Acfile").write_text("BEGIN scratch\nNAME example.com/dep\nCOPY dep.txt /etc/dep.txt\n")
    dep = where / "dep.aci"
    assert acbuild("build", "--no-cache", ctx / "Acfile", "-o", dep).code == 0
    return dep, where / "app.aci"


def app_on(busybox: Path, dep: Path, app: Path, *, pin: bool) -> Path:
    bb_id, dep_id = image_id(busybox), image_id(dep)

    def edit(doc: dict[str, Any]) -> None:
        doc["name"] = "example.com/app"
        doc["app"]["exec"] = ["/bin/cat", "/etc/dep.txt"]
        doc["dependencies"] = [{"imageName": "example.com/busybox", "imageID": bb_id},
                               {"imageName": "example.com/dep",
                                **({"imageID": dep_id} if pin else {})}]
    (app.parent / "busybox.aci").write_bytes(busybox.read_bytes())
    return rewrite(busybox, app, edit)


@needs_sandbox
def test_an_unsigned_unpinned_dependency_is_refused(tmp_path: Path, busybox: Path,
                                                    gpgkeys: Keys) -> None:
    dep, app = make_pair(tmp_path, "from dep\n")
    app_on(busybox, dep, app, pin=False)
    trust = tmp_path / "trust"
    r = run(tmp_path, "--trust-store", trust, app)
    assert r.code == 1 and r.stdout == "", r.stdout
    assert "is not signed and not pinned by image ID" in r.stderr
    r = run(tmp_path, "--trust-store", trust, "--insecure-skip-verify", app)
    assert (r.code, r.stdout) == (0, "from dep\n"), r.stderr
    assert "NOT VERIFIED" in r.stderr
    # Signed by a key trusted for another name: refused. For example.com/dep: accepted.
    sign_image(dep, gpgkeys.fpr["bob"], gpg_home=gpgkeys.home, reporter=NullReporter())
    TrustStore(trust).add(gpgkeys.pub["bob"].read_bytes(), prefix="example.com/other")
    TrustStore(trust).add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/dep")
    r = run(tmp_path, "--trust-store", trust, app)
    assert r.code == 1 and "not trusted for example.com/dep" in r.stderr
    TrustStore(trust).add(gpgkeys.pub["bob"].read_bytes(), prefix="example.com/dep")
    r = run(tmp_path, "--trust-store", trust, app)
    assert (r.code, r.stdout) == (0, "from dep\n"), r.stderr


@needs_sandbox
def test_the_rendered_cache_is_keyed_by_every_dependency(tmp_path: Path, busybox: Path,
                                                         gpgkeys: Keys) -> None:
    trust = TrustStore(tmp_path / "trust")
    trust.add(gpgkeys.pub["alice"].read_bytes(), prefix="example.com/dep")
    dep, app = make_pair(tmp_path, "version one\n")
    sign_image(dep, gpgkeys.fpr["alice"], gpg_home=gpgkeys.home, reporter=NullReporter())
    app_on(busybox, dep, app, pin=False)
    r = run(tmp_path, "--trust-store", trust.root, app)
    assert (r.code, r.stdout) == (0, "version one\n"), r.stderr
    make_pair(tmp_path, "version two\n")  # same app.aci, a new dep.aci
    sign_image(dep, gpgkeys.fpr["alice"], gpg_home=gpgkeys.home, reporter=NullReporter())
    r = run(tmp_path, "--trust-store", trust.root, app)
    assert (r.code, r.stdout) == (0, "version two\n"), r.stderr


@needs_sandbox
def test_a_store_file_is_rehashed_not_trusted_by_its_name(tmp_path: Path,
                                                          busybox: Path) -> None:
    dep, app = make_pair(tmp_path, "genuine\n")
    app_on(busybox, dep, app, pin=True)
    pinned = image_id(dep)
    (tmp_path / "fake").mkdir()
    fake = make_pair(tmp_path / "fake", "swapped\n")[0]
    ImageStore(tmp_path / "cache" / "acbuild-py" / "images").add(
        fake, None, image_id=pinned, name="example.com/dep", labels=())
    dep.unlink()
    r = run(tmp_path, app)
    assert r.code == 1 and "swapped" not in r.stdout, r.stdout
    assert "does not hash to its name" in r.stderr
