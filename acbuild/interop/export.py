"""Export (finalize stage): rootfs + ACI manifest → OCI image layout or oci-archive.

One deterministic gzip layer, a config mapped back from the app, one manifest in index.json
tagged with the version label; same inputs give the same manifest digest. Output is atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from acbuild.errors import BuildError
from acbuild.fs.atomic import atomic_write
from acbuild.fs.staging import StagedRootfs
from acbuild.image.compression import open_compressor
from acbuild.image.finalize import write_rootfs
from acbuild.image.hostarch import host_os_arch
from acbuild.image.manifest import App, ImageManifest
from acbuild.image.tarwrite import TarEntry, TarWriter, add_file_at
from acbuild.report import Reporter

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
_ARCH = {  # AppC arch label → (OCI architecture, variant)
    "amd64": ("amd64", ""), "x86_64": ("amd64", ""), "i386": ("386", ""),
    "aarch64": ("arm64", ""), "aarch64_be": ("arm64be", ""), "armv7l": ("arm", "v7"),
    "armv7b": ("armbe", "v7"), "armv6l": ("arm", "v6"), "arm": ("arm", ""),
    "ppc64": ("ppc64", ""), "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""),
}
_DOCKER = "appc.io/docker/"


@dataclass(frozen=True, slots=True, kw_only=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class _Counting:
    """Where the gzip stream goes: a file, hashed and counted on the way."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class _DiffSink:
    """Where the tar stream goes: hashed (the diff_id), then compressed."""

    def __init__(self, compressor: Any) -> None:
        self.compressor = compressor
        self.hash = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self.hash.update(data)
        self.compressor.write(data)
        return len(data)


def _add(writer: TarWriter, entry: TarEntry, path: Path | None) -> None:
    if path is None:
        writer.add(entry)
    else:
        add_file_at(writer, entry, path, what="layer")


def write_layer(
    rootfs: StagedRootfs, blobs: Path, epoch: int, reporter: Reporter | None
) -> tuple[Descriptor, str]:
    """The rootfs as one gzip layer blob in ``blobs``: its descriptor and diff_id."""
    temp = blobs / ".layer.tmp"
    with temp.open("wb") as f:
        out = _Counting(f)
        compressor = open_compressor("gzip", out)
        sink = _DiffSink(compressor)
        writer = TarWriter(sink)
        write_rootfs(writer, rootfs, epoch, "", None if reporter is None else
                     lambda: reporter.progress("layer", writer.offset, None))
        writer.close()
        compressor.close()
    digest = f"sha256:{out.hash.hexdigest()}"
    temp.rename(blobs / out.hash.hexdigest())
    return Descriptor(media_type=LAYER_TYPE, digest=digest, size=out.size), \
        f"sha256:{sink.hash.hexdigest()}"


def put_blob(blobs: Path, data: bytes, media_type: str) -> Descriptor:
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return Descriptor(media_type=media_type, digest=f"sha256:{hexdigest}", size=len(data))


def _label(manifest: ImageManifest, name: str) -> str | None:
    return next((lb.value for lb in manifest.labels if lb.name == name), None)


def _annotation(manifest: ImageManifest, name: str) -> str | None:
    return next((a.value for a in manifest.annotations if a.name == name), None)


def _exec(manifest: ImageManifest, app: App) -> dict[str, Any]:
    """Entrypoint/Cmd as the image had them if it came from Docker, else all as Entrypoint."""
    try:
        entrypoint = json.loads(_annotation(manifest, _DOCKER + "entrypoint") or "[]")
        cmd = json.loads(_annotation(manifest, _DOCKER + "cmd") or "[]")
    except ValueError:
        entrypoint, cmd = [], []
    if entrypoint + cmd == list(app.exec) and app.exec:
        return {k: v for k, v in (("Entrypoint", entrypoint), ("Cmd", cmd)) if v}
    return {"Entrypoint": list(app.exec)} if app.exec else {}


def _app_config(manifest: ImageManifest) -> dict[str, Any]:
    app = manifest.app
    # created has its own field; appc.io/docker/* described a former conversion, not this image
    labels = {a.name: a.value for a in manifest.annotations
              if a.name != "created" and not a.name.startswith(_DOCKER)}
    config: dict[str, Any] = {"Labels": labels} if labels else {}
    if app is None:
        return config
    config.update(_exec(manifest, app))
    config["User"] = f"{app.user}:{app.group}"
    if app.environment:
        config["Env"] = [f"{e.name}={e.value}" for e in app.environment]
    if app.working_directory:
        config["WorkingDir"] = app.working_directory
    ports: dict[str, dict[str, str]] = {
        f"{p.port + i}/{p.protocol}": {} for p in app.ports for i in range(p.count)}
    if ports:
        config["ExposedPorts"] = ports
    if app.mount_points:
        config["Volumes"] = {m.path: {} for m in app.mount_points}
    return config


def image_config(manifest: ImageManifest, diff_id: str, epoch: int) -> dict[str, Any]:
    host_os, host_arch = host_os_arch()
    arch, variant = _ARCH.get(_label(manifest, "arch") or host_arch, (host_arch, ""))
    created = _annotation(manifest, "created") or _rfc3339(epoch)
    config: dict[str, Any] = {
        "created": created,
        "architecture": arch,
        "os": _label(manifest, "os") or host_os,
        "config": _app_config(manifest),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": f"acbuild-py export of {manifest.name}"}],
    }
    if variant:
        config["variant"] = variant
    return config


def _rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def build_layout(
    rootfs: StagedRootfs, manifest: ImageManifest, layout: Path, epoch: int,
    reporter: Reporter | None,
) -> str:
    """Write a complete OCI layout into the new directory ``layout``; the manifest digest."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer, diff_id = write_layer(rootfs, blobs, epoch, reporter)
    config = put_blob(blobs, canonical(image_config(manifest, diff_id, epoch)), CONFIG_TYPE)
    annotations = {"org.opencontainers.image.title": manifest.name}
    if version := _label(manifest, "version"):
        annotations["org.opencontainers.image.version"] = version
    if created := _annotation(manifest, "created"):
        annotations["org.opencontainers.image.created"] = created
    image = put_blob(blobs, canonical({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config.to_json(),
        "layers": [layer.to_json()], "annotations": annotations,
    }), MANIFEST_TYPE)
    ref = {REF_NAME: _label(manifest, "version") or "latest"}
    (layout / "index.json").write_bytes(canonical({
        "schemaVersion": 2, "mediaType": INDEX_TYPE,
        "manifests": [{**image.to_json(), "annotations": ref}],
    }))
    (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    return image.digest


def export_oci(
    rootfs: StagedRootfs, manifest: ImageManifest, out: Path, *, archive: bool, epoch: int,
    reporter: Reporter | None = None,
) -> str:
    """Write the image as an OCI layout directory (or oci-archive tar) at ``out``.

    Returns the manifest digest. A failure leaves ``out`` as it was.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=parent) as tmp:
            layout = Path(tmp) / "layout"
            digest = build_layout(rootfs, manifest, layout, epoch, reporter)
            if archive:
                with atomic_write(out) as f:
                    write_archive(layout, f, epoch)
            else:
                _replace_dir(layout, out, Path(tmp) / "old")
    except OSError as e:
        raise BuildError(f"cannot write {out}: {e.strerror or e}") from None
    return digest


def _replace_dir(new: Path, out: Path, aside: Path) -> None:
    """Rename ``new`` to ``out``; an existing OCI layout there is replaced, nothing else is."""
    if os.path.lexists(out):
        if out.is_symlink() or not out.is_dir():
            raise BuildError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / "oci-layout").is_file():
            raise BuildError(f"{out} exists and is not an OCI image layout; not replacing it")
        out.rename(aside)
    new.chmod(0o755)
    new.rename(out)
    if aside.exists():
        shutil.rmtree(aside)


def _archive_entries(layout: Path, epoch: int) -> Iterator[tuple[TarEntry, Path | None]]:
    def entry(name: str, kind: str, size: int = 0) -> TarEntry:
        mode = 0o755 if kind == "dir" else 0o644
        return TarEntry(name=name, kind=kind, mode=mode, uid=0, gid=0, mtime=epoch, size=size)

    yield entry("blobs", "dir"), None
    yield entry("blobs/sha256", "dir"), None
    for blob in sorted((layout / "blobs" / "sha256").iterdir()):
        yield entry(f"blobs/sha256/{blob.name}", "file", blob.stat().st_size), blob
    for name in ("index.json", "oci-layout"):
        yield entry(name, "file", (layout / name).stat().st_size), layout / name


def write_archive(layout: Path, out: BinaryIO, epoch: int) -> None:
    """The layout as a deterministic tar (an oci-archive), streamed to ``out``."""
    writer = TarWriter(out)
    for entry, path in _archive_entries(layout, epoch):
        _add(writer, entry, path)
    writer.close()
