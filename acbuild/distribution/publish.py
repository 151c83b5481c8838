"""Publish: lay out a static AppC repository any web server can serve — image, signature, key,
and an index.html with the ac-discovery meta tags (merged, never clobbered).

``repo`` is the document root of the image name's host; ``url_base`` is where it is served.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path

from acbuild.distribution.discovery import meta_tags
from acbuild.errors import AcbuildError
from acbuild.fs.atomic import atomic_write
from acbuild.image import aci
from acbuild.report import Reporter
from acbuild.trust.gpg import export_public, gpg_path, open_gpg
from acbuild.trust.sign import signature_path

PUBKEYS = "pubkeys.gpg"


class PublishError(AcbuildError):
    """The image cannot be published as asked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishResult:
    image: Path
    signature: Path
    key: Path | None
    index: Path
    template: str


def publish(image: Path, *, repo: Path, url_base: str, key_file: Path | None = None,
            gpg_home: Path | None = None, reporter: Reporter) -> PublishResult:
    """Copy IMAGE and IMAGE.asc into ``repo`` and update the discovery page for its name."""
    asc = signature_path(image)
    if not asc.is_file():
        raise PublishError(f"{image} is not signed ({asc.name} missing)",
                           hint="sign it first: acbuild-py sign IMAGE --key KEY")
    manifest = aci.read_manifest(image)
    labels = {lbl.name: lbl.value for lbl in manifest.labels}
    host, _, path = manifest.name.partition("/")
    directory = repo / path if path else repo
    url_dir = url_base.rstrip("/") + (f"/{path}" if path else "")
    stem = manifest.name.rsplit("/", 1)[-1]
    variables = ["version", *(k for k in ("os", "arch") if k in labels)]
    pattern = "-".join([stem, *(f"{{{v}}}" for v in variables)]) + ".{ext}"
    values = {"version": labels.get("version", "latest"), **labels}
    filename = pattern.replace("{ext}", "aci")
    for v in variables:
        filename = filename.replace(f"{{{v}}}", values[v])
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    _copy(image, target)
    _copy(asc, signature_path(target))
    key = _publish_key(asc, directory, key_file=key_file, gpg_home=gpg_home, reporter=reporter)
    template = f"{url_dir}/{pattern}"
    tags = [("ac-discovery", manifest.name, template)]
    if key is not None:
        tags.append(("ac-discovery-pubkeys", manifest.name, f"{url_dir}/{PUBKEYS}"))
    index = directory / "index.html"
    _write_index(index, manifest.name, tags)
    reporter.info(f"published {manifest.name} as {target} (discovery page {index}, host {host})")
    return PublishResult(image=target, signature=signature_path(target), key=key, index=index,
                         template=template)


def _copy(src: Path, dst: Path) -> None:
    with src.open("rb") as f, atomic_write(dst, mode=0o644) as out:
        shutil.copyfileobj(f, out, 1 << 20)


def _publish_key(asc: Path, directory: Path, *, key_file: Path | None, gpg_home: Path | None,
                 reporter: Reporter) -> Path | None:
    """The signer's public key, checked to be the one that made the signature."""
    fingerprint = _signer(asc, gpg_home) if key_file is None else None
    if key_file is not None:
        data = key_file.read_bytes()
    elif fingerprint is not None:
        data = export_public(open_gpg(gpg_home), fingerprint)
    else:
        reporter.warning("the signer's public key was not found (pass --key-file or "
                         "--gpg-home): publishing without an ac-discovery-pubkeys tag")
        return None
    target = directory / PUBKEYS
    with atomic_write(target, mode=0o644) as out:
        out.write(data)
    return target


def _signer(asc: Path, gpg_home: Path | None) -> str | None:
    """The primary fingerprint that made ``asc``, if ``gpg_home`` holds its key."""
    gpg = open_gpg(gpg_home)
    with asc.open("rb") as f:
        result = gpg.verify_file(f, gpg_path(asc.with_suffix("")))
    if not result.valid:
        return None
    fpr = getattr(result, "pubkey_fingerprint", None) or result.fingerprint
    return str(fpr).lower() if fpr else None


def _write_index(index: Path, name: str, new: list[tuple[str, str, str]]) -> None:
    old: list[tuple[str, str, str]] = []
    if index.is_file():
        old = list(meta_tags(index.read_text(encoding="utf-8", errors="replace")))
    tags = list(dict.fromkeys([*old, *new]))
    # More specific templates first: a client takes the first template it can fill.
    tags.sort(key=lambda t: (t[0] != "ac-discovery", -t[2].count("{"), t[1], t[2]))
    lines = [f'    <meta name="{k}" content="{html.escape(p)} {html.escape(u)}">'
             for k, p, u in tags]
    title = html.escape(name)
    text = ("<!DOCTYPE html>\n<html>\n  <head>\n    <meta charset=\"utf-8\">\n"
            f"    <title>{title}</title>\n" + "\n".join(lines) + "\n  </head>\n"
            f"  <body>App Container images under {title}.</body>\n</html>\n")
    with atomic_write(index, mode=0o644) as out:
        out.write(text.encode())

