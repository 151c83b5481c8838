"""diff: manifest and rootfs differences between two images, exit statuses, JSON."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from acbuild.image.diff import diff_images
from tests.support.cli import acbuild

MANIFEST = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/x",
            "labels": [{"name": "version", "value": "1.0"}, {"name": "os", "value": "linux"}],
            "app": {"exec": ["/bin/x"], "user": "0", "group": "0"}}

Spec = dict[str, tuple[str, bytes | str, int, int]]  # name: (type, data or target, mode, uid)


def make_aci(path: Path, manifest: dict[str, object], files: Spec) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, (kind, content, mode, uid) in sorted({"rootfs": ("dir", b"", 0o755, 0),
                                                         **files}.items()):
            info = tarfile.TarInfo(name)
            info.mode, info.uid = mode, uid
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(content)
                tar.addfile(info)
            else:
                assert isinstance(content, bytes)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


BASE: Spec = {
    "rootfs/bin": ("dir", b"", 0o755, 0),
    "rootfs/bin/x": ("file", b"x" * 2000, 0o755, 0),
    "rootfs/bin/sh": ("symlink", "x", 0o777, 0),
    "rootfs/etc": ("dir", b"", 0o755, 0),
    "rootfs/etc/conf": ("file", b"a=1\n", 0o644, 0),
    "rootfs/etc/old": ("file", b"gone", 0o644, 0),
}


def test_same_images(tmp_path: Path) -> None:
    a = make_aci(tmp_path / "a.aci", MANIFEST, BASE)
    b = make_aci(tmp_path / "b.aci", MANIFEST, BASE)
    assert diff_images(a, b).same
    r = acbuild("diff", a, b)
    assert (r.code, r.stdout, r.stderr) == (0, "", "")


def test_every_kind_of_difference(tmp_path: Path) -> None:
    a = make_aci(tmp_path / "a.aci", MANIFEST, BASE)
    files = dict(BASE)
    del files["rootfs/etc/old"]
    files["rootfs/etc/new"] = ("file", b"n" * 3000, 0o600, 0)
    files["rootfs/bin/x"] = ("file", b"y" * 2000, 0o700, 0)  # same size, other content
    files["rootfs/bin/sh"] = ("symlink", "busybox", 0o777, 0)
    files["rootfs/etc/conf"] = ("file", b"a=1\n", 0o644, 1000)
    manifest = {**MANIFEST, "labels": [{"name": "version", "value": "1.1"}],
                "annotations": [{"name": "authors", "value": "me"}]}
    b = make_aci(tmp_path / "b.aci", manifest, files)
    r = acbuild("diff", a, b)
    assert r.code == 1, r.stderr
    ids = diff_images(a, b)
    assert r.stdout.splitlines() == [
        f"- image {ids.old_id}",
        f"+ image {ids.new_id}",
        '+ manifest annotations.authors: "me"',
        '- manifest labels.os: "linux"',
        '~ manifest labels.version: "1.0" -> "1.1"',
        "~ rootfs/bin/sh: link target x -> busybox",
        "~ rootfs/bin/x: content 2.0 KiB -> 2.0 KiB, mode 0755 -> 0700",
        "~ rootfs/etc/conf: owner 0:0 -> 1000:0",
        "+ rootfs/etc/new (file, 2.9 KiB)",
        "- rootfs/etc/old (file, 4 B)",
    ]
    j = acbuild("diff", "--json", a, b)
    assert j.code == 1
    doc = json.loads(j.stdout)
    assert doc["same"] is False
    assert {f["path"]: f["change"] for f in doc["files"]} == {
        "rootfs/bin/sh": "changed", "rootfs/bin/x": "changed", "rootfs/etc/conf": "changed",
        "rootfs/etc/new": "added", "rootfs/etc/old": "removed"}
    x = next(f for f in doc["files"] if f["path"] == "rootfs/bin/x")
    assert x["what"] == ["content", "mode"] and x["old"]["mode"] == "0755"
    assert doc["manifest"][2] == {"path": "labels.version", "change": "changed",
                                  "old": "1.0", "new": "1.1"}


def test_type_change(tmp_path: Path) -> None:
    a = make_aci(tmp_path / "a.aci", MANIFEST, BASE)
    b = make_aci(tmp_path / "b.aci", MANIFEST,
                 {**BASE, "rootfs/etc/conf": ("symlink", "elsewhere", 0o777, 0)})
    (change,) = diff_images(a, b).entries
    assert change.what == ("type", "mode", "link target")


def test_trouble_exits_2(tmp_path: Path) -> None:
    a = make_aci(tmp_path / "a.aci", MANIFEST, BASE)
    (tmp_path / "bad.aci").write_bytes(b"not an archive")
    r = acbuild("diff", a, tmp_path / "missing.aci")
    assert r.code == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'missing.aci'}: no such image"
    r = acbuild("diff", "--progress=json", a, tmp_path / "bad.aci")
    assert r.code == 2
    assert json.loads(r.stderr)["event"] == "error"


def test_two_builds_differ_in_their_label(hello_context: Path, tmp_path: Path) -> None:
    first = tmp_path / "1.aci"
    assert acbuild("build", hello_context / "Acfile", "-q", "-o", first).code == 0
    acfile = hello_context / "Acfile"
    acfile.write_text(acfile.read_text().replace("version=1.0.0", "version=1.0.1"))
    second = tmp_path / "2.aci"
    assert acbuild("build", acfile, "-q", "-o", second).code == 0
    r = acbuild("diff", first, second)
    assert r.code == 1
    assert r.stdout.splitlines()[2:] == ['~ manifest labels.version: "1.0.0" -> "1.0.1"']


def test_builds_that_differ_only_in_mtimes_differ(hello_context: Path, tmp_path: Path) -> None:
    acfile = hello_context / "Acfile"
    one, two = tmp_path / "1.aci", tmp_path / "2.aci"
    assert acbuild("build", acfile, "-q", "-o", one, env={"SOURCE_DATE_EPOCH": "0"}).code == 0
    assert acbuild("build", acfile, "-q", "-o", two,
                   env={"SOURCE_DATE_EPOCH": "86400"}).code == 0
    r = acbuild("diff", one, two)
    assert r.code == 1, r.stdout
    assert "~ rootfs/bin/hello: mtime 1970-01-01T00:00:00Z -> 1970-01-02T00:00:00Z" in r.stdout


def _tar(path: Path, entries: list[tarfile.TarInfo], manifest: bytes,
         fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        info = tarfile.TarInfo("manifest")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for entry in entries:
            tar.addfile(entry, io.BytesIO(b"x" * entry.size))
    return path


def _entry(name: str, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if name == "rootfs" else tarfile.REGTYPE
    info.size = 0 if name == "rootfs" else 1
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def test_every_difference_the_image_id_sees_is_named(tmp_path: Path) -> None:
    doc = json.dumps(MANIFEST).encode()
    base = [_entry("rootfs"), _entry("rootfs/a"), _entry("rootfs/b")]
    a = _tar(tmp_path / "a.aci", base, doc)
    cases = {
        "order": ([_entry("rootfs"), _entry("rootfs/b"), _entry("rootfs/a")], doc,
                  tarfile.PAX_FORMAT, "~ archive: the entries are in another order, from rootfs/a"),
        "xattrs": ([_entry("rootfs"), _entry("rootfs/a", pax_headers={
                    "SCHILY.xattr.user.k": "v"}), _entry("rootfs/b")], doc, tarfile.PAX_FORMAT,
                   "~ rootfs/a: xattrs {} -> {user.k='v'}"),
        "names": ([_entry("rootfs"), _entry("rootfs/a", uname="ada"), _entry("rootfs/b")], doc,
                  tarfile.PAX_FORMAT, "~ rootfs/a: owner names -:- -> ada:-"),
        "json text": (base, json.dumps(MANIFEST, indent=1).encode(), tarfile.PAX_FORMAT,
                      "~ archive: the manifest's JSON text differs"),
        "encoding": (base, doc, tarfile.GNU_FORMAT, "~ archive: the archives' bytes differ"),
    }
    for name, (entries, manifest, fmt, expected) in cases.items():
        b = _tar(tmp_path / f"{name}.aci", entries, manifest, fmt)
        r = acbuild("diff", a, b)
        assert r.code == 1, (name, r.stdout, r.stderr)
        assert any(line.startswith(expected) for line in r.stdout.splitlines()), (name, r.stdout)
        assert not diff_images(a, b).same
    assert acbuild("diff", a, _tar(tmp_path / "again.aci", base, doc)).code == 0
