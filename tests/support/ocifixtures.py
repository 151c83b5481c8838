"""Test fixtures: real Docker/OCI images made with umoci and skopeo.

Layers are written as plain tars (so tests control whiteouts, opaque markers and hardlinks),
appended with ``umoci raw add-layer``, configured with ``umoci config`` and copied to
docker-archive / oci-archive with ``skopeo copy``. Reusable outside the interop tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = Path("/usr/bin/busybox")


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One tar entry of a test layer. kind: file, dir, symlink, hardlink, whiteout, opaque."""

    kind: str
    path: str
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def file(path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    return Entry(kind="file", path=path, data=raw, mode=mode, uid=uid, gid=gid)


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(kind="dir", path=path, mode=mode)


def symlink(path: str, target: str) -> Entry:
    return Entry(kind="symlink", path=path, target=target, mode=0o777)


def hardlink(path: str, target: str) -> Entry:
    return Entry(kind="hardlink", path=path, target=target)


def whiteout(path: str) -> Entry:
    """Deletes ``path`` of a lower layer (written as ``dir/.wh.name``)."""
    return Entry(kind="whiteout", path=path)


def opaque(path: str) -> Entry:
    """Hides everything lower layers put under directory ``path``."""
    return Entry(kind="opaque", path=path)


def _tarinfo(e: Entry) -> tuple[tarfile.TarInfo, bytes | None]:
    name = e.path.rstrip("/")  # a leading "/" is kept: some tools write them
    if e.kind == "whiteout":
        head, _, base = name.rpartition("/")
        name = f"{head}/.wh.{base}" if head else f".wh.{base}"
    elif e.kind == "opaque":
        name = f"{name}/.wh..wh..opq"
    ti = tarfile.TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, 1_600_000_000
    if e.kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif e.kind == "symlink":
        ti.type, ti.linkname = tarfile.SYMTYPE, e.target
    elif e.kind == "hardlink":
        ti.type, ti.linkname = tarfile.LNKTYPE, e.target.strip("/")
    elif e.kind == "file":
        ti.size = len(e.data)
        return ti, e.data
    else:
        ti.size = 0
        return ti, b""
    return ti, None


def write_layer_tar(path: Path, entries: Sequence[Entry]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            ti, data = _tarinfo(e)
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """What ``umoci config`` sets; tuples keep the order umoci writes."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str | None = None
    workingdir: str | None = None
    ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    os: str = "linux"
    architecture: str = "amd64"
    created: str = "2020-09-13T12:26:40Z"
    extra: tuple[str, ...] = field(default=())

    def args(self) -> list[str]:
        out = ["--os", self.os, "--architecture", self.architecture, "--created", self.created]
        out += [a for v in self.entrypoint for a in ("--config.entrypoint", v)]
        out += [a for v in self.cmd for a in ("--config.cmd", v)]
        out += [a for v in self.env for a in ("--config.env", v)]
        out += [a for v in self.ports for a in ("--config.exposedports", v)]
        out += [a for v in self.volumes for a in ("--config.volume", v)]
        out += [a for v in self.labels for a in ("--config.label", v)]
        if self.user is not None:
            out += ["--config.user", self.user]
        if self.workingdir is not None:
            out += ["--config.workingdir", self.workingdir]
        return out + list(self.extra)


def run(*argv: str | Path) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def make_layout(
    layout: Path,
    tag: str,
    layers: Sequence[Sequence[Entry]],
    config: Config = Config(),
) -> Path:
    """Add image ``tag`` with these layers (bottom first) to the OCI layout ``layout``."""
    if not (layout / "oci-layout").exists():
        run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:{tag}")
    for i, entries in enumerate(layers):
        tar = write_layer_tar(layout.parent / f".{layout.name}-{tag}-{i}.tar", entries)
        run("umoci", "raw", "add-layer", "--no-history", "--image", f"{layout}:{tag}", tar)
        tar.unlink()
    run("umoci", "config", "--no-history", "--image", f"{layout}:{tag}", *config.args())
    return layout


def to_docker_archive(layout: Path, tag: str, out: Path, name: str) -> Path:
    """``name`` is NAME:TAG as ``docker save`` records it."""
    run("skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"docker-archive:{out}:{name}")
    return out


def merge_docker_archives(out: Path, *archives: Path) -> Path:
    """One ``docker save`` tarball holding the images of several (skopeo writes one each)."""
    entries: list[object] = []
    seen: set[str] = set()
    with tarfile.open(out, "w") as dst:
        for archive in archives:
            with tarfile.open(archive) as src:
                for ti in src:
                    if ti.name == "manifest.json":
                        entries += json.load(src.extractfile(ti))  # type: ignore[arg-type]
                    elif ti.name not in seen and ti.name != "repositories":
                        seen.add(ti.name)
                        dst.addfile(ti, src.extractfile(ti) if ti.isfile() else None)
        data = json.dumps(entries).encode()
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(data)
        dst.addfile(ti, io.BytesIO(data))
    return out


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def raw_layout(
    layout: Path,
    layers: Sequence[tuple[bytes, bytes, str]],
    config: dict[str, object] | None = None,
    ref: str = "latest",
) -> Path:
    """An OCI layout written by hand: ``layers`` are (blob, uncompressed tar, media type).

    For layers no tool would write (sloppy tars, zstd); digests are the true ones.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    diff_ids = [f"sha256:{hashlib.sha256(t).hexdigest()}" for _, t, _ in layers]
    cfg = {"architecture": "amd64", "os": "linux", "config": {},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}, **(config or {})}
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(layout, json.dumps(cfg).encode())},
        "layers": [{"mediaType": m, **_blob(layout, b)} for b, _, m in layers],
    }
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            **_blob(layout, json.dumps(manifest).encode()),
            "annotations": {"org.opencontainers.image.ref.name": ref}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return layout


def tar_bytes(entries: Sequence[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            ti, data = _tarinfo(e)
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def to_oci_archive(layout: Path, tag: str, out: Path) -> Path:
    run("skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"oci-archive:{out}")
    return out


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    """The reference rootfs: what umoci itself makes of the image."""
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", bundle)
    return bundle / "rootfs"


BUSYBOX_APPLETS = ("sh", "echo", "cat", "ls", "id", "env", "true", "false", "mkdir", "rm", "touch")


def busybox_layout(layout: Path, tag: str = "latest", config: Config | None = None) -> Path:
    """An OCI image holding the static busybox at /bin/busybox with a few applet links."""
    entries = [directory("bin"), directory("etc"), directory("tmp", 0o1777),
               file("bin/busybox", BUSYBOX.read_bytes(), 0o755)]
    entries += [symlink(f"bin/{a}", "busybox") for a in BUSYBOX_APPLETS]
    entries += [file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                file("etc/group", "root:x:0:\n")]
    cfg = config or Config(cmd=("/bin/sh",), env=("PATH=/bin",), workingdir="/")
    return make_layout(layout, tag, [entries], cfg)


def busybox_docker_archive(workdir: Path, name: str = "busybox", tag: str = "latest") -> Path:
    """A ``docker save``-style tarball of busybox: ``<workdir>/<name>-<tag>.docker.tar``."""
    workdir.mkdir(parents=True, exist_ok=True)
    layout = workdir / f"{name.replace('/', '-')}-{tag}.oci"
    if layout.exists():
        shutil.rmtree(layout)
    busybox_layout(layout, tag)
    out = workdir / f"{name.replace('/', '-')}-{tag}.docker.tar"
    return to_docker_archive(layout, tag, out, f"{name}:{tag}")


# ---- looking at results ---------------------------------------------------------


def aci_tree(path: Path) -> dict[str, tuple[str, int, str]]:
    """rel path → (kind, permission bits, content sha / link target) of an ACI's rootfs."""
    tree: dict[str, tuple[str, int, str]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.name.startswith("rootfs/"):
                continue
            rel = m.name[len("rootfs/"):]
            if m.islnk():
                m = tar.getmember(m.linkname)  # a hardlink shows its target's data
            if m.isdir():
                tree[rel] = ("dir", m.mode & 0o7777, "")
            elif m.issym():
                tree[rel] = ("symlink", 0, m.linkname)
            else:
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                tree[rel] = ("file", m.mode & 0o7777, hashlib.sha256(data).hexdigest())
    return tree


def dir_tree(root: Path) -> dict[str, tuple[str, int, str]]:
    tree: dict[str, tuple[str, int, str]] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(top) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode):
                tree[rel] = ("dir", st.st_mode & 0o7777, "")
            elif stat.S_ISLNK(st.st_mode):
                tree[rel] = ("symlink", 0, os.readlink(p))
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                tree[rel] = ("file", st.st_mode & 0o7777, digest)
    return tree


def hardlinks(path: Path) -> set[tuple[str, str]]:
    with tarfile.open(path) as tar:
        return {(m.name, m.linkname) for m in tar if m.islnk()}


def manifest_of(path: Path) -> dict[str, object]:
    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile("manifest").read())  # type: ignore[union-attr]


def actool_validate(*paths: Path) -> None:
    proc = subprocess.run(["actool", "validate", *map(str, paths)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
