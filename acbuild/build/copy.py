"""Execute stage: COPY from the build context (or another stage's rootfs) into a StagedRootfs.

Every source is resolved and checked before anything is written. Context files get the modes
git would give them (0755 or 0644) and owner 0:0; a stage's files keep their modes and owners.
Symlinks inside a copied tree are copied verbatim; hardlinks become separate files. Every
write goes through securepath, so a symlink in the rootfs never leads a write out of it.
When no RUN follows, context files are not copied at all: they stay references the finalizer
streams from the context (see acbuild.image.unstaged).
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from acbuild.acfile.context import (
    BuildContext,
    ContextSource,
    glob_regex,
    has_glob,
    normalised_mode,
    scan,
    special_kind,
)
from acbuild.acfile.instructions import Copy
from acbuild.errors import AcbuildError, BuildError, Span
from acbuild.fs.copyrange import copy_range
from acbuild.fs.keyed import WalkListing, content_digest, signature
from acbuild.fs.securepath import ensure_dirs, relpath_in, safe_join
from acbuild.fs.staging import (
    CacheFiles,
    DeviceNode,
    Record,
    RefSource,
    StagedRootfs,
    xattr_field,
    xattrs_of,
)
from acbuild.image.unstaged import (
    content_changed,
    context_changed,
    materialize,
    prepare_path,
)
from acbuild.image.users import MAX_ID, numeric_id, resolve_group, resolve_user
from acbuild.report import NullReporter, Reporter

__all__ = ["copy_instruction", "normalised_mode", "parse_chown"]

_PROGRESS_EVERY = 8 << 20
_NODE_KINDS = {stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo"}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    """One thing to create: ``sub`` is its path below the source's place ("" for the source)."""

    sub: str
    path: str
    kind: str  # "dir", "file", "symlink" or "device" (devices and fifos, --from only)
    mode: int
    owner: tuple[int, int]
    size: int = 0
    device: DeviceNode | None = None
    # A context entry: its path in the context and the lstat the scan took, which the file
    # read later must match (context files are read through descriptors, never by path).
    context_rel: str | None = None
    seen: os.stat_result | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Source:
    name: str  # the name it gets under DIR/ ("" for a whole context: its contents go in)
    entries: tuple[_Entry, ...]


def copy_instruction(instr: Copy, *, context: BuildContext, rootfs: StagedRootfs,
                     from_rootfs: StagedRootfs | None = None,
                     reporter: Reporter | None = None, leave_refs: bool = False) -> None:
    """Apply one COPY to ``rootfs``.

    ``leave_refs`` (only when nothing later can write into a file in place or read the
    tree: no RUN follows) leaves each context file a reference instead of a copy; the
    entry the image gets is the same (the COPY's mode and owner, no xattrs, one link).
    """
    reporter = reporter or NullReporter()
    span = instr.span
    into_dir = instr.dest.endswith("/")
    if not into_dir and (len(instr.sources) > 1 or any(has_glob(s) for s in instr.sources)):
        raise BuildError("COPY with several sources or a glob needs a destination ending "
                         f"in '/', not '{instr.dest}'", span=_token_span(span, instr.dest))
    if from_rootfs is not None:
        try:
            materialize(from_rootfs)  # its files are read by path below
        except OSError as e:
            raise BuildError(f"COPY --from={instr.from_stage}: cannot stage its files: "
                             f"{e.strerror}", span=span) from None
    owner = parse_chown(instr.chown, rootfs, span) if instr.chown else None
    dest = _dest_rel(instr.dest)
    if leave_refs and from_rootfs is None:
        _reference(instr, context, rootfs, reporter, owner, into_dir, dest)
        return
    sources: list[_Source] = []
    for unsafe in instr.sources:
        at = _token_span(span, unsafe)
        if from_rootfs is None:
            sources.extend(_context_sources(unsafe, context, instr, owner, at, rootfs))
            continue
        try:
            sources.extend(_stage_sources(unsafe, from_rootfs, instr, owner, at))
        except BuildError:
            raise
        except AcbuildError as e:  # securepath: a symlink loop in the stage's rootfs
            raise BuildError(f"COPY source '{unsafe}': {e.message}", span=at) from None
    writer = _Writer(rootfs=rootfs, reporter=reporter, span=span, context=context,
                     total=sum(e.size for s in sources for e in s.entries),
                     source_cache=None if from_rootfs is None else from_rootfs.cached,
                     source_root="" if from_rootfs is None else os.fspath(from_rootfs.root))
    for source in sources:
        base = posixpath.join(dest, source.name) if into_dir else dest
        writer.place(base, source.entries)
    reporter.progress("copy", writer.done, writer.total)


def _reference(instr: Copy, context: BuildContext, rootfs: StagedRootfs, reporter: Reporter,
               owner: tuple[int, int] | None, into_dir: bool, dest: str) -> None:
    """``copy_instruction`` leaving context files where they are: every source is walked
    and checked (as the key read it, nothing special in it) before anything is written,
    each file kept only as its reference's record, then placed."""
    writer = _Writer(rootfs=rootfs, reporter=reporter, span=instr.span, context=context,
                     total=0)
    walked = [w for unsafe in instr.sources
              for w in writer.walk(unsafe, instr, owner, _token_span(instr.span, unsafe))]
    writer.total = sum(w.size for w in walked)
    for w in walked:
        writer.place_walked(posixpath.join(dest, w.name) if into_dir else dest, w)
    reporter.progress("copy", writer.done, writer.total)


@dataclass(slots=True, kw_only=True)
class _Walked:
    """One context source walked for references: its directories and what is neither a
    directory nor a regular file as entries, its regular files as the records they become
    (by their directory below the source, then name), and the sum of their sizes."""

    name: str  # the name it gets under DIR/ ("" for a whole context: its contents go in)
    dirs: list[_Entry]
    others: list[_Entry]
    files: dict[str, dict[str, Record]]
    top: Record | None = None  # the source itself, a file: its record
    size: int = 0


# -- sources -------------------------------------------------------------------------------


@contextmanager
def _source_errors(unsafe: str, span: Span) -> Iterator[None]:
    """A COPY source's failures as the user's error at the instruction: an OSError while
    the source is read means it vanished or changed under the build."""
    try:
        yield
    except BuildError as e:
        e.span = e.span or span
        raise
    except OSError as e:
        raise BuildError(f"COPY source '{unsafe}': {e.strerror}: '{e.filename}'",
                         span=span) from None


def _context_sources(unsafe: str, context: BuildContext, instr: Copy,
                     owner: tuple[int, int] | None, span: Span,
                     rootfs: StagedRootfs) -> Iterator[_Source]:
    resolved = context.resolve(unsafe, span=span)
    if rootfs.keyed is not None and not rootfs.keyed.names(
            os.fspath(context.root), unsafe, (s.rel for s in resolved)):
        raise BuildError(f"COPY source '{unsafe}' names other files than it did when the "
                         "build computed its cache key: the context changed during the build",
                         span=span, hint="do not change the context during a build")
    for source in resolved:
        with _source_errors(unsafe, span):
            st = context.lstat(source.rel)
            top = os.fspath(source.path)
            entries = [_context_entry("", top, st, instr, owner, unsafe, span, source.rel)]
            # Strings, not pathlib: this runs once per file of the tree.
            at = source.rel if not source.rel or source.rel.endswith("/") else source.rel + "/"
            for rel, sub_st in context.walk(source):
                shown = at + rel
                entries.append(_context_entry(rel, f"{top}/{rel}", sub_st, instr, owner,
                                              shown, span, shown))
        keyed = rootfs.keyed
        if keyed is not None and source.is_dir and not source.is_symlink:
            listing = WalkListing()
            for below in entries[1:]:
                if below.seen is not None:
                    listing.add(below.sub, stat.S_ISDIR(below.seen.st_mode),
                                stat.S_ISREG(below.seen.st_mode))
            if keyed.source(os.fspath(context.root / source.rel)) != listing.digest():
                raise context_changed(source.rel, span)  # an entry added or removed since
        yield _Source(name=source.name, entries=tuple(entries))


def _context_entry(sub: str, path: str, st: os.stat_result, instr: Copy,
                   owner: tuple[int, int] | None, shown: str, span: Span,
                   context_rel: str) -> _Entry:
    mode = normalised_mode(st.st_mode)
    if stat.S_ISREG(st.st_mode) and instr.mode is not None:
        mode = instr.mode
    return _entry(sub, path, st, mode, owner or (0, 0), shown, span,
                  context_rel=context_rel, seen=st)


def _stage_sources(unsafe: str, from_rootfs: StagedRootfs, instr: Copy,
                   owner: tuple[int, int] | None, span: Span) -> Iterator[_Source]:
    root = from_rootfs.root
    for name, path in _stage_matches(unsafe, from_rootfs, instr.from_stage or "", span):
        top = relpath_in(root, path)
        try:
            found = [("", path.lstat())] if os.path.lexists(path) else []
            if path.is_dir() and not path.is_symlink():
                found.extend(scan(path, ""))
        except OSError as e:
            raise BuildError(f"COPY source '{unsafe}': {e.strerror}", span=span) from None
        entries = [_stage_entry(sub, path / sub if sub else path, st, from_rootfs, instr,
                                owner, span) for sub, st in found]
        # Devices an unprivileged stage could not make exist only as records.
        prefix = top + "/" if top else ""
        entries.extend(
            _Entry(sub=rel[len(prefix):], path=os.fspath(root / rel), kind="device", mode=node.mode,
                   owner=owner or from_rootfs.owners.get(rel, (0, 0)), device=node)
            for rel, node in sorted(from_rootfs.devices.items())
            if rel == top or rel.startswith(prefix))
        if not entries:  # a glob matched a dangling symlink
            raise BuildError(f"COPY source '/{top}' not found in stage '{instr.from_stage}'",
                             span=span)
        yield _Source(name=name, entries=tuple(e for e in entries if e is not None))


def _stage_matches(unsafe: str, from_rootfs: StagedRootfs, stage: str,
                   span: Span) -> list[tuple[str, Path]]:
    """(name, path) of what ``unsafe`` names in a stage's rootfs. Symlinks, the last one
    included, resolve inside that rootfs as they would for a program running in it."""
    root = from_rootfs.root
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    glob_at = next((i for i, p in enumerate(parts) if has_glob(p)), None)
    if glob_at is None:
        path = safe_join(root, unsafe, follow_final=True)
        if not os.path.lexists(path) and relpath_in(root, path) not in from_rootfs.devices:
            raise BuildError(f"COPY source '{unsafe}' not found in stage '{stage}'", span=span)
        return [(posixpath.basename(posixpath.normpath("/" + unsafe)), path)]
    base = safe_join(root, "/".join(parts[:glob_at]), follow_final=True)
    pattern = glob_regex(parts[glob_at:])
    depth = None if "**" in unsafe else len(parts) - glob_at
    found = scan(base, "", depth) if base.is_dir() else iter(())
    matches = [(posixpath.basename(rel), safe_join(root, relpath_in(root, base / rel),
                                                   follow_final=True))
               for rel, _ in found if pattern.fullmatch(rel)]
    if not matches:
        raise BuildError(f"COPY source '{unsafe}' matches nothing in stage '{stage}'", span=span)
    return matches


def _stage_entry(sub: str, path: Path, st: os.stat_result, from_rootfs: StagedRootfs,
                 instr: Copy, owner: tuple[int, int] | None, span: Span) -> _Entry | None:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode) and instr.mode is not None:
        mode = instr.mode
    if owner is None:
        owner = from_rootfs.owner(relpath_in(from_rootfs.root, path), st)
    kind = special_kind(st.st_mode)
    if kind == "socket":
        return None  # an image cannot hold one (the finalizer would drop it too)
    if kind is not None:
        node = DeviceNode(kind=_NODE_KINDS[stat.S_IFMT(st.st_mode)], major=os.major(st.st_rdev),
                          minor=os.minor(st.st_rdev), mode=mode)
        return _Entry(sub=sub, path=os.fspath(path), kind="device", mode=mode, owner=owner,
                      device=node)
    return _entry(sub, os.fspath(path), st, mode, owner,
                  "/" + relpath_in(from_rootfs.root, path), span)


def _entry(sub: str, path: str, st: os.stat_result, mode: int, owner: tuple[int, int],
           shown: str, span: Span, *, context_rel: str | None = None,
           seen: os.stat_result | None = None) -> _Entry:
    if stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    else:
        # A socket or fifo in a checkout is almost always a leftover of a running program.
        raise BuildError(f"COPY source '{shown}' is a {special_kind(st.st_mode)}; only files, "
                         "directories and symlinks can be copied", span=span,
                         hint=".acignore it, or leave it out of the sources")
    return _Entry(sub=sub, path=path, kind=kind, mode=mode, owner=owner,
                  size=st.st_size if kind == "file" else 0, context_rel=context_rel, seen=seen)


# -- destination ---------------------------------------------------------------------------


def _dest_rel(unsafe_dest: str) -> str:
    """The destination as a path relative to the rootfs root ("" for the root itself)."""
    normal = posixpath.normpath("/" + unsafe_dest)
    return normal.lstrip("/")


@dataclass(slots=True, kw_only=True)
class _Writer:
    rootfs: StagedRootfs
    reporter: Reporter
    span: Span
    total: int
    context: BuildContext
    # The COPY --from stage's cache entry, when it was restored lazily: its files (made
    # real as hardlinks of the entry's inodes) must hold what the restore verified.
    source_cache: CacheFiles | None = None
    source_root: str = ""  # the COPY --from stage's staged tree
    done: int = 0
    _reported: int = 0
    # target -> (path, rel) of each directory this COPY made or entered: its entries (which
    # come parents first) are placed below it without resolving the whole path again
    _dirs: dict[str, tuple[str, str]] = field(default_factory=dict)
    # The directories of ``_dirs`` that the current ``place`` made (mkdir), which hold
    # only what it put there: the names of one source are unique, and the staged tree is
    # the build's own (private, no RUN going on), so a name to be placed in one is free
    # without an lstat to see it. Reset for each source: a second one may name the same.
    _fresh: set[str] = field(default_factory=set)
    # A reference's mtime: when the COPY ran, as a copy's would be (clamped to the epoch).
    _now: int = field(default_factory=lambda: int(time.time()))

    def _enter(self, base: str) -> None:
        root = self.rootfs.root
        self._fresh.clear()
        # What a base left in place has on the way must be there for the checks below;
        # below ``base`` only this COPY's own directories are entered.
        self._guard(f"/{base}", prepare_path, self.rootfs, base)
        parent = posixpath.dirname(base)
        if parent:
            self._guard(f"/{parent}", lambda: ensure_dirs(root, parent, mode=0o755,
                                                          on_create=self._created_parent))

    def walk(self, unsafe: str, instr: Copy, owner: tuple[int, int] | None,
             span: Span) -> Iterator[_Walked]:
        """The sources ``unsafe`` names, each walked and checked, nothing written: a file
        is checked to be the one the key read (with keys) and becomes its record."""
        context, keyed, refs = self.context, self.rootfs.keyed, self.rootfs.refs
        resolved = context.resolve(unsafe, span=span)
        if keyed is not None and not keyed.names(os.fspath(context.root), unsafe,
                                                 (s.rel for s in resolved)):
            raise BuildError(f"COPY source '{unsafe}' names other files than it did when the "
                             "build computed its cache key: the context changed during the "
                             "build", span=span, hint="do not change the context during a build")
        uid, gid = owner or (0, 0)
        root = os.fspath(context.root)
        for source in resolved:
            # Absolute paths as the key's walk names them (acbuild.cache.statcache).
            here = root if source.rel == "." else f"{root}/{source.rel}"
            with _source_errors(unsafe, span):
                st = context.lstat(source.rel)
                walked = _Walked(name=source.name, dirs=[], others=[], files={})
                if stat.S_ISREG(st.st_mode) and not source.is_dir:
                    directory, _, name = source.rel.rpartition("/")
                    number = refs.source(RefSource(
                        root=root, root_id=context.root_id, directory=directory, name=name,
                        uid=uid, gid=gid, mtime=self._now, span=self.span))
                    walked.top = self._file_record(here, source.rel, st, instr, number)
                    walked.size = st.st_size
                    yield walked
                    continue
                top = _context_entry("", os.fspath(source.path), st, instr, owner, unsafe,
                                     span, source.rel)
                (walked.dirs if top.kind == "dir" else walked.others).append(top)
                listing = WalkListing() if keyed is not None and source.is_dir and \
                    not source.is_symlink else None
                self._walk_below(source, root, here, instr, owner, span, walked, listing)
            if listing is not None and keyed is not None and keyed.source(
                    os.fspath(context.root / source.rel)) != listing.digest():
                raise context_changed(source.rel, span)  # an entry added or removed since
            yield walked

    def _walk_below(self, source: ContextSource, root: str, here: str, instr: Copy,
                    owner: tuple[int, int] | None, span: Span, walked: _Walked,
                    listing: WalkListing | None) -> None:
        """Everything below a directory source into ``walked``: strings, no entry object
        for a file, since this runs once a file of the tree."""
        context, refs = self.context, self.rootfs.refs
        uid, gid = owner or (0, 0)
        at = source.rel if not source.rel or source.rel.endswith("/") else source.rel + "/"
        top = os.fspath(source.path)
        numbers: dict[str, int] = {}  # directory below the source -> its RefSource's number
        files = walked.files
        for rel, st in context.walk(source):
            mode = st.st_mode
            if listing is not None:
                listing.add(rel, stat.S_ISDIR(mode), stat.S_ISREG(mode))
            if not stat.S_ISREG(mode):
                entry = _context_entry(rel, f"{top}/{rel}", st, instr, owner, at + rel,
                                       span, at + rel)
                (walked.dirs if entry.kind == "dir" else walked.others).append(entry)
                continue
            parent, _, name = rel.rpartition("/")
            number = numbers.get(parent)
            if number is None:
                directory = at + parent if parent else at[:-1]
                number = numbers[parent] = refs.source(RefSource(
                    root=root, root_id=context.root_id, directory=directory, name=None,
                    uid=uid, gid=gid, mtime=self._now, span=self.span))
                files[parent] = {}
            files[parent][name] = self._file_record(f"{here}/{rel}", at + rel, st, instr,
                                                    number)
            walked.size += st.st_size

    def _file_record(self, path: str, context_rel: str, st: os.stat_result, instr: Copy,
                     number: int) -> Record:
        """A context file's record: the one its key read (``path`` as the key names it)."""
        keyed = self.rootfs.keyed
        digest = None
        if keyed is not None:
            if not keyed.holds(path, st):
                raise context_changed(context_rel, self.span)
            digest = keyed.digest(path)
        mode = instr.mode if instr.mode is not None else normalised_mode(st.st_mode)
        return self.rootfs.refs.record(number, st, mode, digest)

    def place_walked(self, base: str, walked: _Walked) -> None:
        """A walked source's entries at ``base``: directories first, then the rest."""
        self._enter(base)
        for entry in (*walked.dirs, *walked.others):
            sub = entry.sub
            target = (f"{base}/{sub}" if base else sub) if sub else base
            if target:  # the root keeps its own mode
                self._guard(f"/{target}", self._write, entry, target)
        rootfs = self.rootfs
        for sub, files in walked.files.items():
            parent = (f"{base}/{sub}" if base else sub) if sub else base
            known = self._dirs.get(parent)
            if known is None or parent not in self._fresh:
                for name, record in files.items():
                    target = f"{parent}/{name}" if parent else name
                    self._guard(f"/{target}", self._put, target, record, False)
                continue
            # A directory this source made holds only what it put there: each name is free.
            made = known[1]
            if rootfs.devices or rootfs.owners:
                for name in files:
                    rel = f"{made}/{name}" if made else name
                    rootfs.devices.pop(rel, None)
                    rootfs.owners.pop(rel, None)
            rootfs.refs.adopt(made, files)
        if walked.top is not None and base:
            self._guard(f"/{base}", self._put, base, walked.top, True)
        self.done += walked.size

    def _put(self, target: str, record: Record, top: bool) -> None:
        """A reference at ``target``, in place of what is there (not a directory)."""
        path, rel, mode = self._resolve(target, follow_final=False)
        if stat.S_ISDIR(mode):
            hint = "end the destination with '/' to copy into the directory"
            raise BuildError(f"COPY cannot replace directory '/{target}' with a file",
                             span=self.span, hint=hint if top else None)
        if mode:
            os.unlink(path)
        self.rootfs.devices.pop(rel, None)
        self.rootfs.owners.pop(rel, None)
        self.rootfs.refs.put(rel, record)

    def place(self, base: str, entries: tuple[_Entry, ...]) -> None:
        self._enter(base)
        # Directories first, then what goes in them: on ext4, filling each directory right
        # after making it costs several times more per file than making them all first.
        for dirs in (True, False):
            for entry in entries:
                sub = entry.sub
                target = (f"{base}/{sub}" if base else sub) if sub else base
                if target and (entry.kind == "dir") == dirs:  # the root keeps its own mode
                    self._guard(f"/{target}", self._write, entry, target)

    def _guard(self, shown: str, action: Callable[..., object], *args: object) -> None:
        try:
            action(*args)
        except BuildError as e:
            e.span = e.span or self.span  # a context file that changed meanwhile
            raise
        except AcbuildError as e:  # securepath: a loop or a non-directory in the way
            raise BuildError(f"COPY to '{shown}': {e.message}", span=self.span) from None
        except OSError as e:
            raise BuildError(f"COPY to '{shown}': {e.strerror}", span=self.span) from None

    def _created_parent(self, rel: str) -> None:
        self.rootfs.devices.pop(rel, None)  # a directory now takes a recorded node's place
        self.rootfs.set_owner(rel, 0, 0)

    def _resolve(self, target: str, *, follow_final: bool) -> tuple[str, str, int]:
        """(path, rel, lstat mode or 0) of ``target`` inside the rootfs, as safe_join gives."""
        parent, _, name = target.rpartition("/")
        known = self._dirs.get(parent)
        if known is not None:
            path = f"{known[0]}/{name}"
            mode = 0 if parent in self._fresh else _lstat_mode(path)
            if not (follow_final and stat.S_ISLNK(mode)):
                return path, f"{known[1]}/{name}" if known[1] else name, mode
        root = self.rootfs.root
        found = safe_join(root, target, follow_final=follow_final)
        return os.fspath(found), relpath_in(root, found), _lstat_mode(found)

    def _write(self, entry: _Entry, target: str) -> None:
        refs = self.rootfs.refs
        if entry.kind == "dir":
            path, rel, mode = self._resolve(target, follow_final=True)
            if not stat.S_ISDIR(mode):
                path, rel, mode = self._resolve(target, follow_final=False)
                if mode:
                    os.unlink(path)
                refs.discard(rel)
                os.mkdir(path, 0o700)
                self._fresh.add(target)
            self._dirs[target] = (path, rel)
        else:
            path, rel, mode = self._resolve(target, follow_final=False)
            if stat.S_ISDIR(mode):
                hint = "end the destination with '/' to copy into the directory"
                raise BuildError(f"COPY cannot replace directory '/{target}' with a file",
                                 span=self.span, hint=None if entry.sub else hint)
            if mode:
                os.unlink(path)
            refs.discard(rel)
            if entry.kind == "symlink":
                if entry.seen is not None:
                    self._keyed(entry, entry.seen)
                os.symlink(self._readlink(entry), path)
            elif entry.device is not None:
                self._make_device(entry.device, rel, path)
            else:
                self._copy_file(entry, path, rel)
                return
        if entry.device is None:
            self.rootfs.devices.pop(rel, None)
        # Owner before mode: chown clears setuid and setgid bits.
        self.rootfs.set_owner(rel, *entry.owner)
        if entry.kind != "symlink" and os.path.lexists(path):
            os.chmod(path, entry.mode, follow_symlinks=False)

    def _readlink(self, entry: _Entry) -> str:
        if entry.context_rel is not None and entry.seen is not None:
            return self.context.readlink(entry.context_rel, entry.seen)
        return os.readlink(entry.path)

    def _open_source(self, entry: _Entry) -> int:
        if entry.context_rel is not None and entry.seen is not None:
            return self.context.open_file(entry.context_rel, entry.seen)
        return os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)

    def _digest(self, entry: _Entry) -> bytes | None:
        keyed = self.rootfs.keyed
        if keyed is None or entry.context_rel is None:
            return None
        return keyed.digest(self._keyed_path(entry))

    def _keyed_path(self, entry: _Entry) -> str:
        return os.fspath(self.context.root / (entry.context_rel or ""))

    def _keyed(self, entry: _Entry, st: os.stat_result) -> None:
        """A context file, as the COPY opened it: the one its scan saw and, with cache
        keys, the one the key read (a file edited since fails the COPY: acbuild.fs.keyed)."""
        if entry.context_rel is None or entry.seen is None:
            return
        keyed = self.rootfs.keyed
        if signature(st) != signature(entry.seen) or (
                keyed is not None and
                not keyed.holds(os.fspath(self.context.root / entry.context_rel), st)):
            raise context_changed(entry.context_rel, self.span)

    def _make_device(self, node: DeviceNode, rel: str, path: str) -> None:
        if node.kind == "fifo" and self.rootfs.privileged:
            os.mkfifo(path, node.mode)
        else:
            # Devices are never made on the host (see staging); the finalizer writes the
            # record into the tar.
            self.rootfs.devices[rel] = node

    def _copy_file(self, entry: _Entry, path: str, rel: str) -> None:
        """Copy the data kernel-side, then owner and mode through the open descriptor."""
        src = self._open_source(entry)
        try:
            os.set_blocking(src, True)
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise BuildError(f"COPY source '{entry.path}' changed while copying",
                                 span=self.span)
            if entry.seen is not None:
                self._keyed(entry, st)
            # A file of the --from stage that is one of its cache entry's inodes must be
            # the inode the entry had at its path, as verified (its bytes compared below).
            cached = self.source_cache
            expected = None
            if cached is not None and cached.ours(st):
                from_rel = os.path.relpath(entry.path, self.source_root)
                if not cached.holds(from_rel, st, xattr_field(xattrs_of(src))):
                    raise self._cache_changed(cached, entry, "is not the file the entry held")
                expected = cached.expected(from_rel, st)
            dst = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600)
            try:
                self._stream(src, dst, st.st_size)
                if entry.context_rel is not None and signature(os.fstat(src)) != signature(st):
                    raise context_changed(entry.context_rel, self.span)  # while read
                keyed = self.rootfs.keyed
                if self._digest(entry) is not None and keyed is not None and \
                        not keyed.content_is(self._keyed_path(entry), content_digest(dst)):
                    raise content_changed(entry.context_rel or "", self.span)
                if cached is not None and expected is not None and \
                        content_digest(dst) != expected:  # the copy: this build's own inode
                    raise self._cache_changed(cached, entry,
                                              "does not hold the bytes the entry recorded")
                self.rootfs.devices.pop(rel, None)
                # Owner before mode: chown clears setuid and setgid bits.
                if self.rootfs.privileged:
                    os.fchown(dst, *entry.owner)
                    self.rootfs.owners.pop(rel, None)
                else:
                    self.rootfs.set_owner(rel, *entry.owner)  # recorded only
                os.fchmod(dst, entry.mode)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _cache_changed(self, cached: CacheFiles, entry: _Entry, what: str) -> BuildError:
        rel = os.path.relpath(entry.path, self.source_root)
        error = cached.changed(rel, what)
        return BuildError(error.message, span=self.span)

    def _stream(self, src: int, dst: int, size: int) -> None:
        """``size`` bytes (what fstat saw; less if the file shrank meanwhile)."""
        copy_range(src, dst, size, self._copied)

    def _copied(self, n: int) -> None:
        self.done += n
        if self.done - self._reported >= _PROGRESS_EVERY:
            self._reported = self.done
            self.reporter.progress("copy", self.done, self.total)

def _lstat_mode(path: str | Path) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


# -- --chown -------------------------------------------------------------------------------


def parse_chown(spec: str, rootfs: StagedRootfs, span: Span) -> tuple[int, int]:
    """``uid[:gid]`` (numbers or names from the destination's /etc/passwd and /etc/group)
    as ids. A number alone gives the same gid; a name alone, the user's primary group."""
    at = _token_span(span, f"--chown={spec}")
    user, sep, group = spec.partition(":")
    if not user or (sep and not group):
        raise BuildError(f"COPY --chown='{spec}' must be uid[:gid]", span=at)
    for db in ("etc/passwd", "etc/group"):
        prepare_path(rootfs, db)
    try:
        if (number := numeric_id(user)) is not None:
            uid = number
            gid = uid if not sep else resolve_group(rootfs.root, group)
        else:
            ident = resolve_user(rootfs.root, user, group if sep else None)
            uid, gid = ident.uid, ident.gid
    except BuildError:
        raise
    except AcbuildError as e:
        raise BuildError(f"COPY --chown: {e.message}", span=at) from None
    return uid, _check_id(gid, spec, at)


def _check_id(value: int, spec: str, span: Span) -> int:
    if value > MAX_ID:
        raise BuildError(f"COPY --chown='{spec}': id {value} is out of range", span=span)
    return value


def _token_span(span: Span, token: str) -> Span:
    """``span`` moved onto ``token`` when it can be found on the source line after the
    keyword; otherwise the instruction's own span."""
    line = span.source_line
    if line is None:
        return span
    start = line.find(token, span.column - 1 + len("COPY"))
    if start == -1:
        return span
    return span.with_column(start + 1, len(token))
