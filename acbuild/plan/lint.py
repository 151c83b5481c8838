"""Lint (after parse): warnings about Acfiles that build but are likely to surprise later.

Each rule has a stable id (AC001…). A comment ``# acbuild: ignore=AC003[,AC004]`` on the line
before an instruction silences those rules for it (a ``#`` inside a line is ordinary text).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from acbuild.acfile import instructions as ins
from acbuild.acfile.context import BuildContext, has_glob
from acbuild.acfile.parse import parse
from acbuild.acfile.render import render
from acbuild.errors import AcbuildError, AcfileError, Span, raise_all
from acbuild.fs.regular import read_regular
from acbuild.plan.baseref import ImageName, parse_base
from acbuild.plan.plan import begin_path_errors
from acbuild.terminal import escape

RULES: dict[str, str] = {
    "AC001": "the image has no EXEC",
    "AC002": "BEGIN names an image without a version",
    "AC003": "DEPENDENCY without a version or image ID",
    "AC004": "RUN --network=host without a checksum check",
    "AC005": "COPY or RUN --mount of a path .acignore excludes",
    "AC006": "no version label",
    "AC007": "ENV value looks like a secret",
    "AC008": "RUN --mount secret read from the build context",
}

_IGNORE = re.compile(r"^\s*#\s*acbuild:\s*ignore=([A-Za-z0-9, ]+)\s*$")
_CHECKSUM = re.compile(r"sha(?:1|224|256|384|512)sum|md5sum|b2sum|--checksum|gpg\s+--verify"
                       r"|cosign\s+verify|--hash=sha")
_SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|KEY|CREDENTIALS?)$",
                          re.IGNORECASE)
_SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bxox[baprs]-[A-Za-z0-9-]{10,}|\bsk_live_[A-Za-z0-9]{16,}|\bglpat-[A-Za-z0-9_-]{20,}"
)
_TEMPLATE = re.compile(r"\{\{|\{%")


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    rule: str
    message: str
    span: Span

    def render(self) -> str:
        return f"{escape(self.span.file)}:{self.span.line}:{self.span.column}: " \
               f"warning[{self.rule}]: {escape(self.message)}"


def lint_file(path: Path, *, context: Path | None = None,
              variables: Mapping[str, str] | None = None,
              allow_paths: Sequence[Path] = ()) -> tuple[Finding, ...]:
    try:
        text = read_regular(path).decode("utf-8")
    except OSError as e:
        raise AcfileError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise AcfileError(f"{path} is not UTF-8 text") from None
    return lint_text(text, file=str(path), context=context or path.parent,
                     variables=variables or {}, allow_paths=allow_paths)


def lint_text(text: str, *, file: str, context: Path, variables: Mapping[str, str],
              allow_paths: Sequence[Path] = ()) -> tuple[Finding, ...]:
    """Every finding in file order, after the ignore comments took theirs out. A BEGIN host
    path the build would refuse (outside the Acfile's directory, the context and
    ``allow_paths``) is an error, as it is for build and plan."""
    rendered = render(text, file=file, variables=variables)
    instructions = parse(rendered)
    raise_all(begin_path_errors(instructions, acfile_dir=Path(file).parent,
                                allowed=(context, *allow_paths)))
    source = text.splitlines()
    findings = [*_stage_findings(instructions), *_instruction_findings(instructions, context,
                                                                         source)]
    kept = [f for f in findings if f.rule not in _ignored(source, f.span.line)]
    return tuple(sorted(kept, key=lambda f: (f.span.line, f.span.column, f.rule)))


def _ignored(source: Sequence[str], line: int) -> set[str]:
    if line < 2 or line - 2 >= len(source):
        return set()
    m = _IGNORE.match(source[line - 2])
    return {r.strip().upper() for r in m[1].split(",")} if m else set()


def _stage_findings(instructions: Sequence[ins.Instruction]) -> list[Finding]:
    """Rules about the image as a whole: the last stage is the one written."""
    begins = [i for i in instructions if isinstance(i, ins.Begin)]
    if not begins:
        return []
    last = begins[-1]
    body = instructions[instructions.index(last):]
    found = []
    if not any(isinstance(i, ins.Exec) for i in body):
        found.append(Finding(rule="AC001", span=last.span,
                             message="the image has no EXEC, so it cannot be run as an app"))
    versions = [i for i in body if isinstance(i, ins.Label) and any(k == "version" for k, _ in
                                                                   i.pairs)]
    if not versions:
        found.append(Finding(rule="AC006", span=last.span,
                             message="no version label: add 'LABEL version=1.0.0' so the "
                                     "image can be discovered and pinned"))
    return found


def _instruction_findings(instructions: Sequence[ins.Instruction], context: Path,
                          source: Sequence[str]) -> list[Finding]:
    ctx = _context(context)
    found: list[Finding] = []
    for i in instructions:
        match i:
            case ins.Begin():
                found += _begin(i)
            case ins.Dependency():
                found += _dependency(i)
            case ins.Run():
                found += _run(i) + (_mounts(i, ctx) if ctx is not None else [])
            case ins.Copy() if ctx is not None:
                found += _copy(i, ctx)
            case ins.Env():
                found += _env(i, source)
            case _:
                pass
    return found


def _context(path: Path) -> BuildContext | None:
    try:
        return BuildContext(path)
    except AcbuildError:
        return None  # no context to check COPY against; the build itself will say so


def _begin(i: ins.Begin) -> list[Finding]:
    try:
        base = parse_base(i.base, Path("."))
    except AcbuildError:
        return []
    if isinstance(base, ImageName) and not any(k == "version" for k, _ in base.labels):
        return [Finding(rule="AC002", span=i.span,
                        message=f"BEGIN {i.base} is not pinned: name a version "
                                f"({base.name}:VERSION) so rebuilds use the same base")]
    return []


def _dependency(i: ins.Dependency) -> list[Finding]:
    if i.image_id or any(k == "version" for k, _ in i.labels):
        return []
    return [Finding(rule="AC003", span=i.span,
                    message=f"DEPENDENCY {i.image_name} is not pinned: add :VERSION or "
                            "--image-id=sha512-…")]


def _run(i: ins.Run) -> list[Finding]:
    if i.network != "host" or _CHECKSUM.search(" ".join(i.argv)):
        return []
    return [Finding(rule="AC004", span=i.span,
                    message="RUN --network=host downloads without checking a checksum "
                            "(e.g. sha256sum -c); the build is not reproducible")]


def _copy(i: ins.Copy, ctx: BuildContext) -> list[Finding]:
    if i.from_stage is not None:
        return []
    return [f for unsafe in i.sources if (f := _excluded(i, ctx, unsafe, "COPY")) is not None]


def _excluded(i: ins.Located, ctx: BuildContext, unsafe: str, what: str) -> Finding | None:
    rel = posixpath.normpath(unsafe.lstrip("/"))
    if has_glob(unsafe) or rel.startswith(".."):
        return None
    if not ctx.is_ignored(rel, is_dir=(ctx.root / rel).is_dir()):
        return None
    return Finding(rule="AC005", span=i.span,
                   message=f"{what} source {unsafe!r} is excluded by .acignore, so the build "
                           "will fail")


def _mounts(i: ins.Run, ctx: BuildContext) -> list[Finding]:
    found = []
    for m in i.mounts:
        if m.kind == "bind" and m.from_stage is None and m.source is not None:
            found += [f for f in [_excluded(i, ctx, m.source, "RUN --mount")] if f]
        elif m.kind == "secret" and m.source is not None:
            found.append(Finding(rule="AC008", span=i.span, message=(
                f"secret {m.id!r} is read from {m.source!r} in the build context, where a "
                f"COPY can put it in the image too; keep it outside and build with "
                f"--secret id={m.id},src=FILE")))
    return found


def _env(i: ins.Env, source: Sequence[str]) -> list[Finding]:
    line = source[i.span.line - 1] if i.span.line <= len(source) else ""
    templated = bool(_TEMPLATE.search(line))
    found = []
    for name, value in i.pairs:
        if _SECRET_VALUE.search(value):
            reason = f"ENV {name} holds what looks like a key or token"
        elif value and not templated and _SECRET_NAME.search(name):
            reason = f"ENV {name} sets a secret-looking name to a literal value"
        else:
            continue
        found.append(Finding(rule="AC007", span=i.span,
                             message=f"{reason}; it is stored in the image manifest for "
                                     "anyone to read"))
    return found
