"""Execute stage: the build context, the directory COPY reads its sources from.

Sources are resolved without leaving the context (no ``..`` above it, no absolute paths, no
symlinked parent leading out), ``.acignore`` excludes files with gitignore semantics, and
globs expand to sorted context paths. ``digest`` is the content key the step cache uses.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pathspec

from acbuild.errors import BuildError, Span
from acbuild.fs.beneath import ESCAPES, open_beneath, parent_beneath

_T = TypeVar("_T")

IGNORE_FILE = ".acignore"
_GLOB_CHARS = frozenset("*?[")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextSource:
    """One resolved COPY source. ``rel`` is its POSIX path in the context ("." for the
    context itself), with symlinked parents already resolved; the last component is not."""

    rel: str
    path: Path
    is_dir: bool
    is_symlink: bool

    @property
    def name(self) -> str:
        """The name it gets under a destination directory ("" for the context itself)."""
        return "" if self.rel == "." else posixpath.basename(self.rel)


def has_glob(unsafe_pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in unsafe_pattern)


def normalised_mode(st_mode: int) -> int:
    """Permission bits as git stores them, so the checkout's umask cannot change the image:
    0755 for directories and owner-executable files, 0644 for everything else."""
    if stat.S_ISDIR(st_mode) or st_mode & stat.S_IXUSR:
        return 0o755
    return 0o644


def special_kind(st_mode: int) -> str | None:
    """A name for a file COPY refuses (device, fifo, socket), None for copyable ones."""
    if stat.S_ISCHR(st_mode) or stat.S_ISBLK(st_mode):
        return "device"
    if stat.S_ISFIFO(st_mode):
        return "fifo"
    if stat.S_ISSOCK(st_mode):
        return "socket"
    return None


class SourceChanged(BuildError):
    """A context file or directory is not what the scan saw: replaced (by a symlink, a
    FIFO, another file) while the build was reading the context."""


def _changed(rel: str) -> SourceChanged:
    return SourceChanged(f"'{rel}' in the build context changed while the build read it "
                         "(replaced by a symlink or another file)",
                         hint="do not change the context during a build")


class BuildContext:
    """The context directory and its ``.acignore``, read once.

    Names are resolved once, by ``resolve``; after that every read goes through
    descriptors below the context's root, with no symlink followed, and each file opened
    must be the inode the scan saw. So a directory swapped for a symlink mid-build is an
    error, never a read outside the context.
    """

    def __init__(self, root: Path) -> None:
        # Resolved once so containment checks compare real paths with real paths.
        self.root = Path(os.path.realpath(root))
        try:
            st = os.stat(self.root)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise BuildError(f"build context '{root}' is not a directory")
        self._root_id = (st.st_dev, st.st_ino)
        self._spec = _read_ignore(self.root)

    @property
    def root_id(self) -> tuple[int, int]:
        """(st_dev, st_ino) of the context directory when the build started."""
        return self._root_id

    # -- reading through descriptors ------------------------------------------------------

    def _open_root(self) -> int:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._root_id:
            os.close(fd)
            raise _changed(".")
        return fd

    def open_file(self, rel: str, seen: os.stat_result) -> int:
        """A descriptor for reading the regular file ``rel`` that the scan saw as ``seen``.

        Opened non-blocking (a FIFO swapped in cannot hang the build), then checked to be
        a regular file with the scan's (st_dev, st_ino)."""
        fd = self._beneath(rel, lambda root: open_beneath(
            root, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or _identity(st) != _identity(seen):
            os.close(fd)
            raise _changed(rel)
        os.set_blocking(fd, True)
        return fd

    def open_directory(self, rel: str) -> int:
        """A descriptor of the directory ``rel`` ("." for the context), opened beneath the
        context without following symlinks; the caller closes it."""
        if rel in ("", "."):
            return self._open_root()
        return self._beneath(rel, lambda root: open_beneath(root, rel,
                                                            os.O_RDONLY | os.O_DIRECTORY))

    def open_parent(self, rel: str) -> tuple[int, str]:
        """(descriptor of the directory holding ``rel``, its name), opened beneath the
        context without following symlinks; the caller closes it."""
        return self._beneath(rel, lambda root: parent_beneath(root, rel))

    def _beneath(self, rel: str, reach: Callable[[int], _T]) -> _T:
        """``reach(root fd)`` for the path ``rel``; a path that is gone or now leads out of
        the context (a symlink swapped in) is the build context changing under the build."""
        root = self._open_root()
        try:
            return reach(root)
        except OSError as e:
            if e.errno in ESCAPES or e.errno == errno.ENOENT:
                raise _changed(rel) from None
            raise
        finally:
            os.close(root)

    def lstat(self, rel: str) -> os.stat_result:
        """lstat of ``rel``, reached through descriptors (the context itself for ".")."""
        if rel in ("", "."):
            root = self._open_root()
            try:
                return os.fstat(root)
            finally:
                os.close(root)
        parent, name = self.open_parent(rel)
        try:
            return os.lstat(name, dir_fd=parent)
        finally:
            os.close(parent)

    def readlink(self, rel: str, seen: os.stat_result) -> str:
        """The target of the symlink ``rel`` the scan saw as ``seen``."""
        parent, name = self.open_parent(rel)
        try:
            st = os.lstat(name, dir_fd=parent)
            if not stat.S_ISLNK(st.st_mode) or _identity(st) != _identity(seen):
                raise _changed(rel)
            return os.readlink(name, dir_fd=parent)
        finally:
            os.close(parent)

    # -- ignore rules ---------------------------------------------------------------------

    def is_ignored(self, rel: str, *, is_dir: bool = False) -> bool:
        """Whether ``rel`` is excluded. As in git, nothing below an excluded directory can be
        re-included by a later ``!pattern``."""
        if self._spec is None or rel in ("", "."):
            return False
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if self._spec.match_file("/".join(parts[:i]) + "/"):
                return True
        return self._spec.match_file(rel + "/" if is_dir else rel)

    # -- resolving sources ----------------------------------------------------------------

    def resolve(self, unsafe_pattern: str, *, span: Span | None = None) -> list[ContextSource]:
        """The sources a COPY argument names, sorted; errors for escapes, ignored or
        missing sources and globs matching nothing."""
        parts = _split(unsafe_pattern, span)
        if not any(has_glob(p) for p in parts):
            source = self._resolve_path(unsafe_pattern, parts, span)
            if self.is_ignored(source.rel, is_dir=source.is_dir):
                raise BuildError(f"COPY source '{unsafe_pattern}' is excluded by {IGNORE_FILE}",
                                 span=span)
            return [source]
        return self._resolve_glob(unsafe_pattern, parts, span)

    def _resolve_path(self, unsafe: str, parts: list[str], span: Span | None) -> ContextSource:
        if not parts or parts[-1] == "..":
            path = self._resolve_parent(unsafe, parts, span)
        else:
            path = self._resolve_parent(unsafe, parts[:-1], span) / parts[-1]
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise BuildError(f"COPY source '{unsafe}' not found in context '{self.root}'",
                             span=span) from None
        except OSError as e:
            raise BuildError(f"COPY source '{unsafe}': {e.strerror}", span=span) from None
        return self._source(unsafe, path, st, span)

    def _resolve_parent(self, unsafe: str, parts: list[str], span: Span | None) -> Path:
        """The real directory holding the last component; every component before it must
        stay inside the context, symlinks included."""
        current = self.root
        for i, part in enumerate(parts):
            candidate = Path(os.path.realpath(current / part))
            if not self._inside(candidate):
                if (current / part).is_symlink():
                    through = "/".join(parts[: i + 1])
                    raise BuildError(f"COPY source '{unsafe}' leaves the build context "
                                     f"through symlink '{through}'", span=span)
                raise BuildError(f"COPY source '{unsafe}' is outside the build context",
                                 span=span)
            current = candidate
        return current

    def _source(self, unsafe: str, path: Path, st: os.stat_result,
                span: Span | None) -> ContextSource:
        rel = self._rel(path)
        if stat.S_ISLNK(st.st_mode):
            # Named directly, a symlink is copied as a symlink, but only when it points
            # inside the context: otherwise the image would depend on the builder's host.
            if not self._inside(Path(os.path.realpath(path))):
                raise BuildError(f"COPY source '{unsafe}' leaves the build context "
                                 f"through symlink '{unsafe}'", span=span)
        elif kind := special_kind(st.st_mode):
            raise BuildError(f"COPY source '{unsafe}' is a {kind}; only files, directories "
                             "and symlinks can be copied", span=span)
        return ContextSource(rel=rel, path=path, is_dir=stat.S_ISDIR(st.st_mode),
                             is_symlink=stat.S_ISLNK(st.st_mode))

    def _resolve_glob(self, unsafe: str, parts: list[str],
                      span: Span | None) -> list[ContextSource]:
        first_glob = next(i for i, p in enumerate(parts) if has_glob(p))
        base = self._resolve_parent(unsafe, parts[:first_glob], span)
        base_rel = self._rel(base)
        if self.is_ignored(base_rel, is_dir=True):
            raise BuildError(f"COPY source '{unsafe}' is excluded by {IGNORE_FILE}", span=span)
        prefix = "" if base_rel == "." else base_rel + "/"
        pattern = glob_regex(parts[first_glob:])
        depth = None if "**" in unsafe else len(parts) - first_glob
        matched = ignored = 0
        sources = []
        found = self._scan(base, prefix, depth) if base.is_dir() else iter(())
        for rel, st in found:
            if not pattern.fullmatch(rel[len(prefix):]):
                continue
            matched += 1
            if self.is_ignored(rel, is_dir=stat.S_ISDIR(st.st_mode)):
                ignored += 1
                continue
            sources.append(self._source(rel, self.root / rel, st, span))
        if not matched:
            raise BuildError(f"COPY source '{unsafe}' matches nothing in context '{self.root}'",
                             span=span)
        if matched == ignored:
            raise BuildError(f"COPY source '{unsafe}' is excluded by {IGNORE_FILE}", span=span)
        return sorted(sources, key=lambda s: s.rel)

    def _scan(self, base: Path, prefix: str,
              depth: int | None) -> Iterator[tuple[str, os.stat_result]]:
        return self._scan_rel(self._rel(base), prefix, depth)

    def _scan_rel(self, rel: str, prefix: str,
                  depth: int | None) -> Iterator[tuple[str, os.stat_result]]:
        """``scan`` of the context directory ``rel``, opened beneath the root."""
        fd = self._beneath(rel, lambda root: open_beneath(root, rel,
                                                          os.O_RDONLY | os.O_DIRECTORY))
        try:
            yield from _scan_fd(fd, prefix, depth,
                                lambda r: self.is_ignored(r, is_dir=True))
        finally:
            os.close(fd)

    # -- walking and hashing --------------------------------------------------------------

    def walk(self, source: ContextSource) -> Iterator[tuple[str, os.stat_result]]:
        """Entries below a directory source, parents before children, names sorted, paths
        relative to the source; excluded entries (and all below them) skipped."""
        if not source.is_dir or source.is_symlink:
            return
        prefix = "" if source.rel == "." else source.rel + "/"
        for rel, st in self._scan_rel(source.rel, prefix, None):
            if not self.is_ignored(rel, is_dir=stat.S_ISDIR(st.st_mode)):
                yield rel[len(prefix):], st

    def walk_all(self, source: ContextSource) -> Iterator[tuple[str, os.stat_result, bool]]:
        """As ``walk``, with the excluded entries too, flagged True (nothing below an
        excluded directory): what a read-only mount of ``source`` must hide."""
        if not source.is_dir or source.is_symlink:
            return
        prefix = "" if source.rel == "." else source.rel + "/"
        for rel, st in self._scan_rel(source.rel, prefix, None):
            yield rel[len(prefix):], st, self.is_ignored(rel, is_dir=stat.S_ISDIR(st.st_mode))

    def digest(self, sources: Sequence[ContextSource]) -> str:
        """sha256 over what COPY would take from ``sources``: paths, types, normalised modes,
        contents and link targets; mtimes, owners and the context's location left out."""
        h = hashlib.sha256()
        for source in sorted(sources, key=lambda s: s.rel):
            _frame(h, b"source", source.rel.encode())
            self._hash_entry(h, ".", source.rel, self.lstat(source.rel))
            for rel, st in self.walk(source):
                self._hash_entry(h, rel, posixpath.join(source.rel, rel), st)
        return "sha256:" + h.hexdigest()

    def _hash_entry(self, h: hashlib._Hash, rel: str, where: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            _frame(h, b"symlink", os.fsencode(rel), os.fsencode(self.readlink(where, st)))
        elif stat.S_ISDIR(mode):
            _frame(h, b"dir", os.fsencode(rel), b"%o" % normalised_mode(mode))
        elif stat.S_ISREG(mode):
            _frame(h, b"file", os.fsencode(rel), b"%o" % normalised_mode(mode),
                   st.st_size.to_bytes(8, "big"))
            with open(self.open_file(where, st), "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        else:
            _frame(h, b"special", os.fsencode(rel), b"%o" % stat.S_IFMT(mode))

    # -- helpers --------------------------------------------------------------------------

    def _inside(self, path: Path) -> bool:
        return path == self.root or path.is_relative_to(self.root)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _read_ignore(root: Path) -> pathspec.GitIgnoreSpec | None:
    try:
        fd = os.open(root / IGNORE_FILE,
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink
            raise BuildError(f"{IGNORE_FILE} in '{root}' is not a regular file") from None
        raise BuildError(f"cannot read {IGNORE_FILE} in '{root}': {e.strerror}") from None
    # Checked on the open file, not before opening it: a FIFO swapped in cannot hang us.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BuildError(f"{IGNORE_FILE} in '{root}' is not a regular file")
    os.set_blocking(fd, True)
    with open(fd, encoding="utf-8", errors="surrogateescape") as f:
        return pathspec.GitIgnoreSpec.from_lines(f)


def _split(unsafe: str, span: Span | None) -> list[str]:
    """Components of a context path; rejects absolute paths and ``..`` above the context.
    ``..`` below it is applied later, physically, by realpath."""
    if unsafe.startswith("/") or not unsafe:
        raise BuildError(f"COPY source '{unsafe}' is outside the build context", span=span)
    normal = posixpath.normpath(unsafe)
    if normal == ".." or normal.startswith("../"):
        raise BuildError(f"COPY source '{unsafe}' is outside the build context", span=span)
    return [p for p in unsafe.split("/") if p not in ("", ".")]


def scan(base: Path, prefix: str, depth: int | None = None,
         skip_dir: Callable[[str], bool] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """Entries below ``base`` as (prefix + relative path, lstat), parents first, names sorted,
    symlinks not followed, ``depth`` levels deep (None: all); ``skip_dir`` prunes.

    ``base`` itself is followed; below it each directory is opened relative to its parent
    without following symlinks, and must be the one listed (SourceChanged otherwise)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield from _scan_fd(fd, prefix, depth, skip_dir)
    finally:
        os.close(fd)


def _scan_fd(fd: int, prefix: str, depth: int | None,
             skip_dir: Callable[[str], bool] | None) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        st = entry.stat(follow_symlinks=False)
        yield rel, st
        if stat.S_ISDIR(st.st_mode) and depth != 1 and not (skip_dir and skip_dir(rel)):
            try:
                child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                if e.errno in ESCAPES or e.errno == errno.ENOENT:
                    raise _changed(rel) from None
                raise
            try:
                if _identity(os.fstat(child)) != _identity(st):
                    raise _changed(rel)
                yield from _scan_fd(child, rel + "/", None if depth is None else depth - 1,
                                    skip_dir)
            finally:
                os.close(child)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def glob_regex(parts: Sequence[str]) -> re.Pattern[str]:
    """``*`` and ``?`` within one component, ``[..]`` classes, ``**`` across components."""
    out: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_component_regex(part) + ("" if last else "/"))
    return re.compile("".join(out), re.DOTALL)


def _component_regex(part: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := part.find("]", i + 2)) != -1:
            body = part[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _frame(h: hashlib._Hash, *fields: bytes) -> None:
    # Length-framed so no two different entry lists can hash the same bytes.
    for field in fields:
        h.update(len(field).to_bytes(8, "big"))
        h.update(field)
