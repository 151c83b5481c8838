"""Validate (``acbuild-py validate``): actool's checks on an ACI, and stricter ones.

One streaming pass over the archive: layout (``manifest`` file, ``rootfs`` directory,
everything else below ``rootfs/``, no absolute names), duplicates, hardlinks, compression
trailer (gzip CRC), then the manifest's AppC rules (acbuild.image.manifest_rules, the rules
every reader applies). Problems are sentences; an empty list means valid. Warnings name what
the reference accepts but is likely a mistake.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from acbuild.errors import ImageError
from acbuild.fs.regular import open_regular
from acbuild.image import compression, manifest, manifest_rules
from acbuild.image.aci import ManifestReader, open_tar
from acbuild.image.tarread import Limits, TarSource, absolute_name_problem, clean_name, members

MAX_LISTED = 20  # problems of one kind listed before "... and N more"
_KINDS = {"outside": "entries outside rootfs/", "duplicate": "duplicate entries",
          "hardlink": "bad hardlinks", "absolute": "absolute names"}


@dataclass(frozen=True, slots=True)
class Report:
    problems: list[str]  # empty: the image is valid
    warnings: list[str]


class _Layout:
    """What one pass over the entries has seen."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.limits = limits
        self.reader = ManifestReader(path, limits)
        self.names: set[str] = set()
        self.files: set[str] = set()
        self.manifest: bytes | None = None
        self.rootfs = False
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self._counts: dict[str, int] = {}

    def add(self, kind: str, problem: str) -> None:
        n = self._counts[kind] = self._counts.get(kind, 0) + 1
        if n <= MAX_LISTED:
            self.problems.append(problem)

    def entry(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        if (absolute := absolute_name_problem(member)) is not None:
            self.add("absolute", absolute)
            return
        try:
            name = clean_name(member.name)
        except ImageError as e:
            self.add("outside", e.message)
            return
        if name in self.names:
            self.add("duplicate", f"duplicate entry {name!r}")
        self.names.add(name)
        if name == "manifest":
            try:
                self.reader.offer(name, member, tar)
            except ImageError as e:
                self.add("manifest", e.message.removeprefix(f"{self.reader.path}: "))
            else:
                self.manifest = self.reader.data
        elif name == "rootfs":
            self.rootfs = self.rootfs or member.isdir()
            if not member.isdir():
                self.add("rootfs", "rootfs is not a directory")
        elif not name.startswith("rootfs/"):
            self.add("outside", f"entry {member.name!r} is outside rootfs/")
        elif member.islnk():
            self._hardlink(member)
        elif member.isreg():
            self.files.add(name)

    def _hardlink(self, member: tarfile.TarInfo) -> None:
        try:
            target = clean_name(member.linkname)
        except ImageError:
            target = ""
        if target not in self.files:
            self.add(
                "hardlink",
                f"hardlink {member.name!r} points to {member.linkname!r}, "
                "which is not an earlier file in rootfs/",
            )

    def finish(self) -> list[str]:
        out = list(self.problems)
        for kind, n in sorted(self._counts.items()):
            if n > MAX_LISTED:
                out.append(f"... and {n - MAX_LISTED} more {_KINDS.get(kind, kind)}")
        if "manifest" not in self.names:
            out.append("image has no manifest")
        if not self.rootfs and "rootfs" not in self._counts:
            out.append("image has no rootfs directory entry")
        if self.manifest is not None:
            try:
                m = manifest.from_json_bytes(self.manifest)
            except ImageError as e:
                out.append(e.message)
            else:
                out += [f"manifest: {p}" for p in manifest_rules.problems(m)]
                self.warnings += [f"manifest: {w}" for w in manifest_rules.warnings(m)]
        return out


def _compression_problem(path: Path) -> str | None:
    try:
        with open_regular(path) as f:
            kind = compression.sniff(f.read(512))
    except OSError:
        return None  # open_tar reports it
    if kind == "zstd":
        return "zstd compression is not allowed in an ACI (gzip, bzip2, xz or none)"
    return None


def validate_image(path: Path, *, limits: Limits = Limits()) -> list[str]:  # noqa: B008
    """Every problem of the ACI at ``path``, one sentence each; ``[]`` if it is valid."""
    return check_image(path, limits=limits).problems


def check_image(path: Path, *, limits: Limits = Limits()) -> Report:  # noqa: B008
    """The problems and the warnings of the ACI at ``path``."""
    layout = _Layout(path, limits)
    early: list[str] = []
    if (problem := _compression_problem(path)) is not None:
        early.append(problem)
    try:
        with open_tar(path) as stream:
            for member, tar in members(TarSource(stream), limits, allow_absolute=True):
                layout.entry(member, tar)
    except ImageError as e:
        # the archive cannot be read to its end: report that and what is certain
        # (each problem is shown after the image's name already)
        return Report([*early, *layout.problems, e.message.removeprefix(f"{path}: ")], [])
    problems = [*early, *layout.finish()]
    return Report(problems, layout.warnings)
