"""Publish: lay out a static AppC repository any web server can serve — image, signature, key,
and an index.html with the ac-discovery meta tags (merged, never clobbered).

``repo`` is the document root of the image name's host; ``url_base`` is where it is served.
"""

from __future__ import annotations

import contextlib
import errno
import html
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from acbuild.distribution.discovery import meta_tags
from acbuild.errors import AcbuildError
from acbuild.fs.atomic import atomic_write_at
from acbuild.image import aci
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
    filename = pattern.replace("{ext}", "aci")
    for v in variables:
        filename = filename.replace(f"{{{v}}}", check_file_part(values[v], f"label {v}",
                                                                 str(image)))
    directory = repo / path if path else repo
    dir_fd = _open_below(repo, path.split("/") if path else [])
    try:
        target = directory / filename
        _copy(image, dir_fd, filename, target)
        _copy(asc, dir_fd, filename + ".asc", signature_path(target))
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
                         template=template)


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
    with src.open("rb") as f, atomic_write_at(dir_fd, name, mode=0o644, shown=str(shown)) as out:
        shutil.copyfileobj(f, out, 1 << 20)


def _publish_key(asc: Path, dir_fd: int, directory: Path, *, key_file: Path | None,
                 gpg_home: Path | None, reporter: Reporter) -> Path | None:
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
    with atomic_write_at(dir_fd, PUBKEYS, mode=0o644, shown=str(target)) as out:
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

