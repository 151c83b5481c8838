"""Publish: lay out a static AppC repository any web server can serve — image, signature, key,
and an index.html with the ac-discovery meta tags (merged, never clobbered).

A client that asks for no version (``rkt fetch example.com/hello``) fills ``{version}`` with
``latest``, so the newest published version of each os/arch is also copied under that name:
newest by semver precedence, versions that are not semver below all that are (see
docs/trust.md). Every publish recomputes it, so publishing an older version later keeps it.

``repo`` is the document root of the image name's host; ``url_base`` is where it is served.
"""

from __future__ import annotations

import contextlib
import errno
import html
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from acbuild.distribution.discovery import meta_tags
from acbuild.errors import AcbuildError
from acbuild.fs.atomic import atomic_write_at
from acbuild.fs.regular import open_regular, read_regular
from acbuild.image import aci
from acbuild.numbers import ascii_int
from acbuild.report import Reporter
from acbuild.trust.gpg import export_public, gpg_path, open_gpg
from acbuild.trust.names import check_file_part, check_image_name
from acbuild.trust.sign import signature_path

PUBKEYS = "pubkeys.gpg"
MAX_INDEX = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


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
    """Copy IMAGE and IMAGE.asc into ``repo`` and update the discovery page for its name.

    The name and the label values that go into file names are checked first, and every
    file is written through directory fds below ``repo`` (no symlink there is followed)."""
    asc = signature_path(image)
    if not asc.is_file():
        raise PublishError(f"{image} is not signed ({asc.name} missing)",
                           hint="sign it first: acbuild-py sign IMAGE --key KEY")
    manifest = aci.read_manifest(image)
    name = check_image_name(manifest.name, str(image))
    labels = {lbl.name: lbl.value for lbl in manifest.labels}
    host, _, path = name.partition("/")
    url_dir = url_base.rstrip("/") + (f"/{path}" if path else "")
    stem = name.rsplit("/", 1)[-1]
    variables = ["version", *(k for k in ("os", "arch") if k in labels)]
    pattern = "-".join([stem, *(f"{{{v}}}" for v in variables)]) + ".{ext}"
    values = {"version": labels.get("version", "latest"), **labels}
    def filename(version: str) -> str:
        shown = pattern.replace("{ext}", "aci")
        for v in variables:
            value = version if v == "version" else values[v]
            shown = shown.replace(f"{{{v}}}", check_file_part(value, f"label {v}", str(image)))
        return shown

    # File names are checked before anything is created below the repository.
    target_name, latest_name = filename(values["version"]), filename("latest")
    directory = repo / path if path else repo
    dir_fd = _open_below(repo, path.split("/") if path else [])
    try:
        target = directory / target_name
        _copy(image, dir_fd, target.name, target)
        _copy(asc, dir_fd, target.name + ".asc", signature_path(target))
        latest = None
        if values["version"] != "latest":
            latest = directory / latest_name
            # Read only: the repository's own images, by name below the checked directory.
            newest = _newest(directory, f"{stem}-*.aci", name,
                             {k: values[k] for k in variables if k != "version"}, skip=latest)
            _copy(newest, dir_fd, latest.name, latest)
            _copy(signature_path(newest), dir_fd, latest.name + ".asc", signature_path(latest))
        key = _publish_key(asc, dir_fd, directory, key_file=key_file, gpg_home=gpg_home,
                           reporter=reporter)
        template = f"{url_dir}/{pattern}"
        tags = [("ac-discovery", name, template)]
        if key is not None:
            tags.append(("ac-discovery-pubkeys", name, f"{url_dir}/{PUBKEYS}"))
        index = directory / "index.html"
        _write_index(dir_fd, index, name, tags)
    finally:
        os.close(dir_fd)
    reporter.info(f"published {name} as {target} (discovery page {index}, host {host})")
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
                     r"(?:\+[0-9A-Za-z.-]+)?", re.ASCII)


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
        (0, n, "") if (n := ascii_int(p)) is not None else (1, 0, p)
        for p in pre.split("."))),)
    return (1, release, rank, version)


def _open_below(repo: Path, parts: list[str]) -> int:
    """An fd on ``repo/parts…``, each component made if missing and opened with O_NOFOLLOW:
    a symlink planted anywhere below ``repo`` is an error, never a way out of it."""
    try:
        repo.mkdir(parents=True, exist_ok=True)
        fd = os.open(repo, _DIR_FLAGS)
    except OSError as e:
        raise PublishError(f"cannot use --repo {repo}: {e.strerror}") from None
    done = repo
    for part in parts:
        done = done / part
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as e:
            os.close(fd)
            why = "it is a symlink or not a directory" if e.errno in (
                errno.ELOOP, errno.ENOTDIR) else e.strerror
            raise PublishError(f"cannot publish into {done}: {why}") from None
        os.close(fd)
        fd = child
    return fd


def _copy(src: Path, dir_fd: int, name: str, shown: Path) -> None:
    try:
        f = open_regular(src)
    except OSError as e:
        raise PublishError(f"cannot read {src}: {e.strerror or e}") from None
    with f, atomic_write_at(dir_fd, name, mode=0o644, shown=str(shown)) as out:
        shutil.copyfileobj(f, out, 1 << 20)


def _publish_key(asc: Path, dir_fd: int, directory: Path, *, key_file: Path | None,
                 gpg_home: Path | None, reporter: Reporter) -> Path | None:
    """The signer's public key, checked to be the one that made the signature."""
    fingerprint = _signer(asc, gpg_home) if key_file is None else None
    if key_file is not None:
        try:
            data = read_regular(key_file)
        except OSError as e:
            raise PublishError(f"cannot read key file {key_file}: {e.strerror or e}") from None
    elif fingerprint is not None:
        data = export_public(open_gpg(gpg_home), fingerprint)
    else:
        reporter.warning("the signer's public key was not found (pass --key-file or "
                         "--gpg-home): publishing without an ac-discovery-pubkeys tag")
        return None
    target = directory / PUBKEYS
    with atomic_write_at(dir_fd, PUBKEYS, mode=0o644, shown=str(target)) as out:
        out.write(data)
    return target


def _signer(asc: Path, gpg_home: Path | None) -> str | None:
    """The primary fingerprint that made ``asc``, if ``gpg_home`` holds its key."""
    gpg = open_gpg(gpg_home)
    with open_regular(asc) as f:
        result = gpg.verify_file(f, gpg_path(asc.with_suffix("")))
    if not result.valid:
        return None
    fpr = getattr(result, "pubkey_fingerprint", None) or result.fingerprint
    return str(fpr).lower() if fpr else None


def _write_index(dir_fd: int, index: Path, name: str, new: list[tuple[str, str, str]]) -> None:
    old: list[tuple[str, str, str]] = []
    try:
        fd = os.open("index.html", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        fd = -1
    except OSError as e:
        raise PublishError(f"cannot read {index}: {e.strerror}") from None
    if fd >= 0:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise PublishError(f"cannot read {index}: not a regular file")
            page = f.read(MAX_INDEX + 1)
        if len(page) > MAX_INDEX:
            raise PublishError(f"{index} is larger than {MAX_INDEX} bytes")
        old = list(meta_tags(page.decode("utf-8", errors="replace")))
    tags = list(dict.fromkeys([*old, *new]))
    # More specific templates first: a client takes the first template it can fill.
    tags.sort(key=lambda t: (t[0] != "ac-discovery", -t[2].count("{"), t[1], t[2]))
    lines = [f'    <meta name="{k}" content="{html.escape(p)} {html.escape(u)}">'
             for k, p, u in tags]
    title = html.escape(name)
    text = ("<!DOCTYPE html>\n<html>\n  <head>\n    <meta charset=\"utf-8\">\n"
            f"    <title>{title}</title>\n" + "\n".join(lines) + "\n  </head>\n"
            f"  <body>App Container images under {title}.</body>\n</html>\n")
    with atomic_write_at(dir_fd, "index.html", mode=0o644, shown=str(index)) as out:
        out.write(text.encode())

