"""Rendering of dependencies and pathWhitelist, by acirenderer's rules (rkt's own renderer).

tests/rkt/test_rkt_render.py compares the same rules with the real `rkt image render`.
"""

from __future__ import annotations

from pathlib import Path

from acbuild.distribution.fetch import FetchOptions
from acbuild.fs.staging import StagedRootfs
from acbuild.report import NullReporter
from acbuild.run.render_deps import Renderer
from tests.support.hostile import Tar, aci, write


def _manifest(name: str, *, deps: tuple[str, ...] = (),
              whitelist: tuple[str, ...] = ()) -> dict[str, object]:
    m: dict[str, object] = {
        "acKind": "ImageManifest", "acVersion": "0.8.11", "name": name,
        "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
    }
    if deps:
        m["dependencies"] = [{"imageName": d} for d in deps]
    if whitelist:
        m["pathWhitelist"] = list(whitelist)
    return m


def _renderer(tmp_path: Path) -> Renderer:
    # The trust chain is tests/run/test_run_trust.py's subject; these images are unsigned.
    return Renderer(fetch=FetchOptions(skip_verify=True, store_dir=tmp_path / "store"),
                    reporter=NullReporter())


def _render(tmp_path: Path, top: Path) -> dict[str, str]:
    root = tmp_path / "out"
    root.mkdir()
    renderer = _renderer(tmp_path)
    renderer.render(renderer.resolve(top), StagedRootfs(root=root))
    found: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        found[rel] = "dir" if p.is_dir() and not p.is_symlink() else p.read_text()
    return found


def _files(t: Tar, *names: str) -> Tar:
    for name in names:
        t.file(f"rootfs/{name}", name.encode())
    return t


def test_own_whitelist_keeps_directories_and_listed_files_only(tmp_path: Path) -> None:
    t = aci(_manifest("example.com/app", whitelist=("/bin", "/etc/keep")))
    t.dir("rootfs/bin").dir("rootfs/etc").dir("rootfs/lib").dir("rootfs/lib/x")
    _files(t, "bin/sh", "etc/keep", "etc/drop", "lib/x/y")
    top = write(tmp_path / "app.aci", t.data())
    # `/bin` keeps the directory, not what is in it (rkt's rule, not a prefix match).
    assert _render(tmp_path, top) == {"bin": "dir", "etc": "dir", "etc/keep": "etc/keep",
                                      "lib": "dir", "lib/x": "dir"}


def test_upper_whitelist_filters_dependency_entries_exactly(tmp_path: Path) -> None:
    dep = aci(_manifest("example.com/base"))
    dep.dir("rootfs/bin").dir("rootfs/usr").dir("rootfs/usr/lib")
    _files(dep, "bin/sh", "bin/ls", "usr/lib/libc", "usr/lib/other")
    write(tmp_path / "base.aci", dep.data())
    app = aci(_manifest("example.com/app", deps=("example.com/base",),
                        whitelist=("/bin/sh", "/usr/lib/libc")))
    top = write(tmp_path / "app.aci", _files(app.dir("rootfs/etc"), "etc/conf").data())
    # The dependency's directories are not listed, so they are not taken from it: the
    # listed files' parents are made afresh; the app's own unlisted file is dropped.
    assert _render(tmp_path, top) == {"bin": "dir", "bin/sh": "bin/sh", "etc": "dir",
                                      "usr": "dir", "usr/lib": "dir",
                                      "usr/lib/libc": "usr/lib/libc"}


def test_upper_image_wins_and_last_dependency_wins(tmp_path: Path) -> None:
    for name in ("one", "two"):
        write(tmp_path / f"{name}.aci", _files(
            aci(_manifest(f"example.com/{name}")).file("rootfs/shared", name.encode()),
            name).data())
    app = aci(_manifest("example.com/app", deps=("example.com/one", "example.com/two")))
    top = write(tmp_path / "app.aci", app.file("rootfs/one", b"mine").data())
    assert _render(tmp_path, top) == {"one": "mine", "shared": "two", "two": "two"}


def test_entry_below_an_upper_non_directory_is_dropped(tmp_path: Path) -> None:
    write(tmp_path / "base.aci", _files(aci(_manifest("example.com/base")).dir("rootfs/x"),
                                        "x/y").data())
    app = aci(_manifest("example.com/app", deps=("example.com/base",)))
    top = write(tmp_path / "app.aci", app.file("rootfs/x", b"file").data())
    assert _render(tmp_path, top) == {"x": "file"}


def test_manifest_is_the_top_images(tmp_path: Path) -> None:
    write(tmp_path / "base.aci", aci(_manifest("example.com/base")).data())
    top = write(tmp_path / "app.aci",
                aci(_manifest("example.com/app", deps=("example.com/base",))).data())
    root = tmp_path / "r"
    root.mkdir()
    renderer = _renderer(tmp_path)
    tree = renderer.resolve(top)
    renderer.render(tree, StagedRootfs(root=root))
    assert tree.manifest.name == "example.com/app"
