"""Publish: lay out a static AppC repository any web server can serve — image, signature, key,
and an index.html with the ac-discovery meta tags (merged, never clobbered).

A client that asks for no version (``rkt fetch example.com/hello``) fills ``{version}`` with
``latest``, so the newest published version of each os/arch is also copied under that name:
newest by semver precedence, versions that are not semver below all that are (see
docs/trust.md). Every publish recomputes it, so publishing an older version later keeps it.

``repo`` is the document root of the image name's host; ``url_base`` is where it is served.
"""

from __future__ import annotations

import html
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from acbuild.distribution.discovery import meta_tags
from acbuild.errors import AcbuildError
from acbuild.fs.atomic import atomic_write
from acbuild.image import aci
from acbuild.report import Reporter
from acbuild.trust.gpg import export_public, open_gpg
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
    latest: Path | None  # the `latest` alias, when the image has a version of its own


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
    def filename(version: str) -> str:
        name = pattern.replace("{ext}", "aci")
        for v in variables:
            name = name.replace(f"{{{v}}}", version if v == "version" else values[v])
        return name

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename(values["version"])
    _copy(image, target)
    _copy(asc, signature_path(target))
    latest = None
    if values["version"] != "latest":
        latest = directory / filename("latest")
        newest = _newest(directory, f"{stem}-*.aci", manifest.name,
                         {k: values[k] for k in variables if k != "version"}, skip=latest)
        _copy(newest, latest)
        _copy(signature_path(newest), signature_path(latest))
    key = _publish_key(asc, directory, key_file=key_file, gpg_home=gpg_home, reporter=reporter)
    template = f"{url_dir}/{pattern}"
    tags = [("ac-discovery", manifest.name, template)]
    if key is not None:
        tags.append(("ac-discovery-pubkeys", manifest.name, f"{url_dir}/{PUBKEYS}"))
    index = directory / "index.html"
    _write_index(index, manifest.name, tags)
    reporter.info(f"published {manifest.name} as {target} (discovery page {index}, host {host})")
    return PublishResult(image=target, signature=signature_path(target), key=key, index=index,
                         template=template, latest=latest)


def _newest(directory: Path, glob: str, name: str, labels: dict[str, str], *,
            skip: Path) -> Path:
    """The signed image of ``name`` with these labels and the highest version here."""
    found: list[tuple[tuple[object, ...], Path]] = []
    for candidate in directory.glob(glob):
        if candidate == skip or not signature_path(candidate).is_file():
            continue
        try:
            m = aci.read_manifest(candidate)
        except AcbuildError:
            continue  # not an image of ours, or a broken one: never the alias
        have = {lbl.name: lbl.value for lbl in m.labels}
        if m.name != name or any(have.get(k) != v for k, v in labels.items()):
            continue
        version = have.get("version")
        if version is not None:
            found.append((version_order(version), candidate))
    return max(found, key=lambda item: item[0])[1]


_SEMVER = re.compile(r"v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
                     r"(?:\+[0-9A-Za-z.-]+)?")


def version_order(version: str) -> tuple[object, ...]:
    """A sort key: semver precedence (a pre-release below its release, numeric identifiers
    below alphanumeric ones; a release of fewer than three numbers counts the missing ones as
    0, so 1.2 is 1.2.0); versions that are not semver-like rank below every one that is, by
    string order; equal precedence (build metadata, 1.2 and 1.2.0) falls back to string order."""
    m = _SEMVER.fullmatch(version)
    if m is None:
        return (0, (), (), version)
    numbers = [int(n) for n in m.group(1).split(".")]
    release = tuple(numbers + [0] * (3 - len(numbers)))
    pre = m.group(2)
    # No pre-release sorts above any pre-release of the same release.
    rank: tuple[object, ...] = ((1,),) if pre is None else ((0, *(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))),)
    return (1, release, rank, version)


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
        result = gpg.verify_file(f, str(asc.with_suffix("")))
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

