"""DEPENDENCY and PATH-WHITELIST rendering: `acbuild-py run`'s renderer lays out exactly the
tree `rkt image render` does (rkt is the reference executor)."""

from __future__ import annotations

import shutil
from pathlib import Path

from acbuild.distribution.fetch import FetchOptions
from acbuild.fs.staging import StagedRootfs
from acbuild.image.aci import image_id
from acbuild.report import NullReporter
from acbuild.run.render_deps import Renderer
from tests.rkt.conftest import Rkt, build
from tests.support.busybox import BUSYBOX
from tests.support.cli import acbuild
from tests.support.ocifixtures import dir_tree

# name -> (files its context holds, Acfile body after BEGIN/NAME). {id:X} is X.aci's image ID.
IMAGES = {
    "base": (("bin/sh", "bin/ls", "etc/passwd", "etc/group", "usr/lib/libc.so",
              "usr/lib/libm.so", "usr/share/doc/README", "var/empty/.keep"),
             "COPY . /\n"),
    "mid": (("etc/mid.conf", "bin/ls", "opt/mid/run"),
            "COPY . /\nDEPENDENCY example.com/base --image-id={id:base}\n"
            # A lower image's whitelist: applies to base's entries below it.
            "PATH-WHITELIST /bin/sh /bin/ls /etc/mid.conf /usr/lib/libc.so /usr/lib "
            "/usr /etc /opt/mid/run /var/empty\n"),
    "other": (("etc/passwd", "usr/lib/libm.so", "srv/data"), "COPY . /\n"),
    # Two dependencies (the last listed wins), and its own whitelist: /bin keeps the
    # directory /bin only, not what is in it.
    "app": (("bin/app", "etc/app.conf", "etc/unlisted", "lib/x/y"),
            "COPY . /\nDEPENDENCY example.com/mid --image-id={id:mid}\n"
            "DEPENDENCY example.com/other --image-id={id:other}\n"
            "PATH-WHITELIST /bin /bin/app /bin/sh /etc /etc/app.conf /etc/passwd /usr/lib "
            "/usr/lib/libc.so /usr/lib/libm.so /srv/data /opt/mid/run /etc/mid.conf\n"
            "EXEC /bin/app\n"),
}


def _images(tmp_path: Path) -> dict[str, Path]:
    built: dict[str, Path] = {}
    (tmp_path / "images").mkdir()
    for name, (files, body) in IMAGES.items():
        ctx = tmp_path / f"ctx-{name}"
        for rel in files:
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            (ctx / rel).write_text(f"{name}:{rel}\n")
        for dep, path in built.items():
            body = body.replace(f"{{id:{dep}}}", image_id(path))
        (ctx / "Acfile").write_text(f"BEGIN scratch\nNAME example.com/{name}\n{body}")
        # Unsigned, and beside each other: both renderers find them locally.
        built[name] = build(ctx / "Acfile", tmp_path / "images" / f"{name}.aci", None)
    return built


def test_rendering_matches_rkt_image_render(tmp_path: Path, rkt: Rkt) -> None:
    images = _images(tmp_path)
    for name in ("base", "mid", "other", "app"):
        # Dependencies come from the store (the default policy "update" discovers them).
        rkt("--insecure-options=image", "fetch", "--pull-policy=new", images[name])
    theirs = tmp_path / "rkt-render"
    rkt("image", "render", "--rootfs-only", "example.com/app", theirs)
    ours = tmp_path / "ours"
    ours.mkdir()
    # Unsigned test images: the trust chain is tests/run/test_run_trust.py's subject.
    renderer = Renderer(fetch=FetchOptions(skip_verify=True, store_dir=tmp_path / "store"),
                        reporter=NullReporter())
    renderer.render(renderer.resolve(images["app"]), StagedRootfs(root=ours))
    expected = dir_tree(theirs)
    assert dir_tree(ours) == expected
    # What the rules mean here, so the comparison cannot pass on two empty trees.
    assert expected["etc/passwd"][0] == "file" and "bin/sh" in expected
    assert "etc/unlisted" not in expected and "bin/ls" not in expected
    assert "usr/share" not in expected and "lib/x" in expected
    assert (ours / "etc/passwd").read_text() == "other:etc/passwd\n"


def test_run_renders_the_whitelisted_tree(tmp_path: Path) -> None:
    """`acbuild-py run` itself (not only its renderer): PATH-WHITELIST /bin leaves no files
    in /bin, as in rkt; the listed busybox stays."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy2(BUSYBOX, ctx / "busybox")
    (ctx / "Acfile").write_text(
        "BEGIN scratch\nNAME example.com/pwl\nCOPY busybox /bin/busybox\n"
        "COPY busybox /bin/extra\nPATH-WHITELIST /bin /bin/busybox\n"
        "EXEC /bin/busybox ls /bin\n")
    image = build(ctx / "Acfile", tmp_path / "pwl.aci", None)
    r = acbuild("run", "--no-stdin", image)
    assert (r.code, r.stdout) == (0, "busybox\n"), r.stderr
