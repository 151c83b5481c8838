"""Build (--check-repro): build twice without the cache and compare the two images.

The second build runs in another work directory under another umask; any difference is
reported per file and per kind (content, mode, owner, mtime, xattr, type, link target).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from acbuild.build.build import BuildOptions, BuildResult, build, load_plan
from acbuild.errors import BuildError
from acbuild.report import Reporter

MAX_LISTED = 20
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryFacts:
    kind: bytes
    mode: int
    owner: tuple[int, int]
    mtime: float
    content: str  # sha256 of the data, "" for entries without data
    link: str
    xattrs: tuple[tuple[str, str], ...]


_FIELDS = (("kind", "type"), ("content", "content"), ("mode", "mode"), ("owner", "owner"),
           ("mtime", "mtime"), ("xattrs", "xattr"), ("link", "link target"))


def check_reproducible(options: BuildOptions, reporter: Reporter) -> BuildResult:
    """Build to the output, build again elsewhere, compare; sign only when they match."""
    plain = dataclasses.replace(options, no_cache=True, sign=False)
    first = build(plain, reporter)
    with tempfile.TemporaryDirectory(prefix="acbuild-repro-") as tmp:
        reporter.info("checking reproducibility: building a second time")
        second_output = Path(tmp) / ("second" + "".join(first.output.suffixes))
        old = os.umask(0o077)
        try:
            second = build(dataclasses.replace(plain, output=second_output,
                                               remove_stale_signature=None), reporter)
        finally:
            os.umask(old)
        if first.image_id != second.image_id or _bytes_differ(first.output, second.output):
            message, hint = _explain(first, second)
            raise BuildError(message, hint=hint)
    reporter.info("the build is reproducible: both builds gave " + first.image_id)
    signatures = _sign(options, first.output) if options.sign else ()
    return dataclasses.replace(first, signatures=signatures)


def _sign(options: BuildOptions, image: Path) -> tuple[Path, ...]:
    """Sign the first build's image where it is (it was written, unsigned, before the
    second build could say whether to sign it)."""
    from acbuild.trust.sign import signature_path

    if options.signer is None:
        return ()
    keys = load_plan(options).sign_keys
    for key in keys:
        options.signer(image, key, signature_path(image), image)
    return tuple(signature_path(image) for _ in keys)


def _bytes_differ(a: Path, b: Path) -> bool:
    if a.is_dir() or b.is_dir():
        return False  # an OCI layout: its digest was compared
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(_CHUNK), fb.read(_CHUNK)
            if x != y:
                return True
            if not x:
                return False


def _explain(first: BuildResult, second: BuildResult) -> tuple[str, str]:
    if first.output.is_dir():
        return ("the build is not reproducible: the two images differ",
                f"{first.image_id} != {second.image_id}")
    one, two = entries(first.output), entries(second.output)
    found = differences(one, two)
    if not found and list(one) != list(two):
        found = ["the entries are the same but in another order"]
    if not found:
        found = (["the tar headers differ (same files and metadata)"]
                 if first.image_id != second.image_id
                 else ["same image ID, but the compressed bytes differ"])
    listed = found[:MAX_LISTED]
    if len(found) > MAX_LISTED:
        listed.append(f"… and {len(found) - MAX_LISTED} more")
    message = (f"the build is not reproducible: {len(found)} difference"
               f"{'s' if len(found) != 1 else ''} between two builds")
    return message, "\n".join(listed)


def entries(aci: Path) -> dict[str, EntryFacts]:
    """Facts of every entry of an image, in archive order (data hashed, never held)."""
    found: dict[str, EntryFacts] = {}
    with tarfile.open(aci, "r|*") as tar:
        for member in tar:
            content = ""
            if member.isfile():
                data = tar.extractfile(member)
                assert data is not None
                h = hashlib.sha256()
                while chunk := data.read(_CHUNK):
                    h.update(chunk)
                content = h.hexdigest()
            xattrs = tuple(sorted((k.removeprefix("SCHILY.xattr."), v)
                                  for k, v in member.pax_headers.items()
                                  if k.startswith("SCHILY.xattr.")))
            found[member.name] = EntryFacts(
                kind=member.type, mode=member.mode, owner=(member.uid, member.gid),
                mtime=member.mtime, content=content, link=member.linkname, xattrs=xattrs)
    return found


def differences(one: dict[str, EntryFacts], two: dict[str, EntryFacts]) -> list[str]:
    """One line per differing entry: 'rootfs/x: content, mtime (1 vs 2)'."""
    lines = []
    for name in sorted(one.keys() | two.keys()):
        a, b = one.get(name), two.get(name)
        if a is None or b is None:
            lines.append(f"{name}: only in the {'second' if a is None else 'first'} build")
            continue
        changed = []
        for field, label in _FIELDS:
            x, y = getattr(a, field), getattr(b, field)
            if x != y:
                changed.append(label if field == "content" else f"{label} ({x} vs {y})")
        if changed:
            lines.append(f"{name}: " + ", ".join(changed))
    return lines
