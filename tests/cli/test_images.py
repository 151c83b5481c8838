"""images: list and remove what the local image store holds."""

from __future__ import annotations

from pathlib import Path

from acbuild.distribution.imagestore import ImageStore
from acbuild.image.aci import image_id
from tests.support.cli import acbuild
from tests.support.gpghelp import make_aci


def _store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "store"
    store = ImageStore(root)
    ids = {}
    for name, version in (("example.com/a", "1.0"), ("example.com/a", "2.0"),
                          ("example.com/b", "1.0")):
        aci = make_aci(tmp_path / "in.aci", name, {"version": version},
                       payload=f"{name}{version}".encode())
        ids[f"{name}:{version}"] = image_id(aci)
        store.add(aci, None, image_id=ids[f"{name}:{version}"], name=name,
                  labels=(("version", version),))
    return root, ids


def test_list_shows_every_image(tmp_path: Path) -> None:
    root, ids = _store(tmp_path)
    r = acbuild("images", "--store", root)  # list is the default
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "VERSION"]
    assert len(lines) == 4
    assert {(line.split()[1], line.split()[2]) for line in lines[1:]} == {
        ("example.com/a", "1.0"), ("example.com/a", "2.0"), ("example.com/b", "1.0")}
    full = acbuild("images", "list", "--full", "--store", root)
    assert set(ids.values()) <= set(full.stdout.split())


def test_rm_by_name_version_and_id_prefix(tmp_path: Path) -> None:
    root, ids = _store(tmp_path)
    r = acbuild("images", "rm", "example.com/a:1.0", ids["example.com/b:1.0"][:20],
                "--store", root)
    assert r.code == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted([
        f"removed {ids['example.com/a:1.0']} (example.com/a:1.0)",
        f"removed {ids['example.com/b:1.0']} (example.com/b:1.0)"])
    left = ImageStore(root).entries()
    assert [e.id for e in left] == [ids["example.com/a:2.0"]]
    assert not (root / f"{ids['example.com/a:1.0']}.aci").exists()


def test_rm_refuses_unknown_and_ambiguous_references(tmp_path: Path) -> None:
    root, _ = _store(tmp_path)
    for ref, message in (("example.com/zzz", "no image 'example.com/zzz' in the store"),
                         ("sha512-", "at least 12 hex digits"),
                         ("sha512-" + "0" * 12, "no image")):
        r = acbuild("images", "rm", ref, "--store", root)
        assert r.code == 2 and message in r.stderr, (ref, r.stderr)
    assert len(ImageStore(root).entries()) == 3
