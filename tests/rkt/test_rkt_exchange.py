"""Images crossing between the reference tools and acbuild-py: exported by rkt and run by
acbuild-py; built by actool, signed by gpg, laid out as rkt's users published them and
fetched by acbuild-py; one docker-archive converted by docker2aci and by acbuild-py."""

from __future__ import annotations

import copy
import json
import posixpath
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from acbuild.image.aci import image_id
from tests.rkt.conftest import ORACLES, Rkt, SigningKey, discovery, need_discovery
from tests.support.busybox import BUSYBOX
from tests.support.cli import acbuild
from tests.support.httpserver import TlsFiles
from tests.support.ocifixtures import aci_tree, busybox_docker_archive, manifest_of


def test_images_exported_by_rkt_run_in_acbuild(examples_built: Path, tmp_path: Path,
                                               rkt: Rkt, rsa_key: SigningKey) -> None:
    for name, path, stdout in (
        ("hello", "hello.aci", "Hello AppC\n"),
        ("busybox-app", "busybox-app.aci", "Welcome to busybox-app\n"
                                           "Hello from busybox-app, app in /home/app: "
                                           "written by app\n"),
    ):
        rkt.trust(f"example.com/{name}", rsa_key.public)
        rkt("fetch", examples_built / path)
        exported = tmp_path / f"{name}-exported.aci"
        rkt("image", "export", f"example.com/{name}:1.0.0", exported)
        assert manifest_of(exported) == manifest_of(examples_built / path)
        r = acbuild("run", "--no-stdin", exported)
        assert (r.code, r.stdout) == (0, stdout), r.stderr


def _actool_image(tmp_path: Path) -> Path:
    """example.com/tool 1.0.0 made the way rkt's users made images: a directory and actool."""
    layout = tmp_path / "layout"
    (layout / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, layout / "rootfs" / "bin" / "busybox")
    (layout / "manifest").write_text(json.dumps({
        "acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/tool",
        "labels": [{"name": "version", "value": "1.0.0"}, {"name": "os", "value": "linux"},
                   {"name": "arch", "value": "amd64"}],
        "app": {"exec": ["/bin/busybox", "echo", "made by actool"], "user": "0",
                "group": "0"},
    }))
    image = tmp_path / "tool-1.0.0-linux-amd64.aci"
    subprocess.run([str(ORACLES / "actool"), "build", str(layout), str(image)], check=True,
                   capture_output=True)
    return image


def test_actool_image_published_by_hand_fetched_by_acbuild(tmp_path: Path, rsa_key: SigningKey,
                                                           tls: TlsFiles) -> None:
    need_discovery()
    image = _actool_image(tmp_path)
    repo = tmp_path / "www" / "tool"
    repo.mkdir(parents=True)
    shutil.copy2(image, repo / image.name)
    subprocess.run(["gpg", "--homedir", str(rsa_key.home), "--batch", "--armor",
                    "--detach-sign", "-u", rsa_key.fingerprint, "-o",
                    str(repo / f"{image.name}.asc"), str(repo / image.name)],
                   check=True, capture_output=True)
    shutil.copy2(rsa_key.public, repo / "pubkeys.gpg")
    # rkt's documented layout (Documentation/signing-and-verification-guide.md): meta tags
    # only, the page at the name's path.
    (repo / "index.html").write_text(
        '<html><head>\n'
        '<meta name="ac-discovery" content="example.com/tool '
        'https://example.com/tool/tool-{version}-{os}-{arch}.{ext}">\n'
        '<meta name="ac-discovery-pubkeys" content="example.com/tool '
        'https://example.com/tool/pubkeys.gpg">\n</head></html>\n')
    cli = [sys.executable, "-m", "acbuild"]
    out = tmp_path / "fetched"
    script = "\n".join([
        "set -e",
        shlex.join([*cli, "trust", "--prefix", "example.com/tool", "--yes", "--ca-file",
                    str(tls.ca)]),
        shlex.join([*cli, "fetch", "example.com/tool:1.0.0", "--ca-file", str(tls.ca),
                    "-o", str(out)]),
    ])
    r = discovery(tmp_path / "www", script, tls=tls)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == image_id(image), r.stdout
    (fetched,) = out.glob("*.aci")
    assert fetched.read_bytes() == image.read_bytes()
    r = acbuild("run", "--no-stdin", fetched)
    assert (r.code, r.stdout) == (0, "made by actool\n"), r.stderr


def _classic_docker_save(src: Path, dst: Path) -> Path:
    """skopeo's docker-archive with each ``<id>/layer.tar`` link replaced by the file: the
    only layout docker2aci reads (it silently writes an empty rootfs otherwise)."""
    with tarfile.open(src) as s, tarfile.open(dst, "w") as d:
        members = {m.name: m for m in s.getmembers()}
        for m in s.getmembers():
            if m.issym():
                target = members[posixpath.normpath(
                    posixpath.join(posixpath.dirname(m.name), m.linkname))]
                entry = copy.copy(target)
                entry.name = m.name
                d.addfile(entry, s.extractfile(target))
            else:
                d.addfile(m, s.extractfile(m) if m.isreg() else None)
    return dst


def test_docker2aci_and_acbuild_convert_alike(tmp_path: Path) -> None:
    archive = busybox_docker_archive(tmp_path / "docker", name="registry.example.com/team/bb",
                                     tag="1.0")
    ours = tmp_path / "ours.aci"
    r = acbuild("convert", archive, "-o", ours)
    assert r.code == 0, r.stderr
    work = tmp_path / "d2a"
    work.mkdir()
    proc = subprocess.run(["timeout", "120", str(ORACLES / "docker2aci"),
                           str(_classic_docker_save(archive, tmp_path / "classic.tar"))],
                          cwd=work, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (theirs,) = work.glob("*.aci")
    mine, other = manifest_of(ours), manifest_of(theirs)
    # Deliberate differences (docs/interop.md): acbuild-py keeps the registry host in the
    # name (so discovery and trust prefixes can tell registries apart), docker2aci drops it.
    assert mine["name"] == "registry.example.com/team/bb"
    assert other["name"] == "team/bb"
    # The same app, labels and rootfs.
    assert mine["app"] == other["app"]
    labels = [{lb["name"]: lb["value"] for lb in m["labels"]}  # type: ignore[attr-defined]
              for m in (mine, other)]
    assert labels[0] == labels[1] == {"version": "1.0", "os": "linux", "arch": "amd64"}
    notes = [{a["name"]: a["value"] for a in m["annotations"]}  # type: ignore[attr-defined]
             for m in (mine, other)]
    for key in ("created", "appc.io/docker/cmd"):
        assert notes[0][key] == notes[1][key], key
    assert notes[0]["appc.io/docker/repository"] == "registry.example.com/team/bb"
    assert notes[1]["appc.io/docker/repository"] == "team/bb"
    # docker2aci also adds /dev/fd and /dev/std{in,out,err} symlinks (to /proc/self/fd and
    # /dev/console) that no layer has; acbuild-py leaves /dev to the executor.
    added = {"dev/fd", "dev/stdin", "dev/stdout", "dev/stderr"}
    tree = aci_tree(theirs)
    assert added <= set(tree)
    assert aci_tree(ours) == {k: v for k, v in tree.items() if k not in added}
