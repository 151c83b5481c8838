"""Step cache keys (execute stage): every step's key, from content digests of its inputs.

A step's key hashes its parent's key, the instruction without its place in the file, and the
inputs it reads (base identity, COPY content, RUN's epoch). File digests (and a base file's
xattrs) are remembered by stat: a file whose (device, inode, size, mtime, ctime) is
unchanged is not read again; files modified in the last seconds are not remembered (git's
"racy clean" problem).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import posixpath
import stat
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from acbuild.acfile import instructions as ins
from acbuild.acfile.context import (
    BuildContext,
    ContextSource,
    has_glob,
    normalised_mode,
    scan,
)
from acbuild.cache.warm import FORMAT_VERSION, Witness, settled
from acbuild.errors import AcbuildError
from acbuild.fs.atomic import atomic_write
from acbuild.fs.framing import frame, framed
from acbuild.fs.keyed import KeyedFiles, WalkListing, listing_signature
from acbuild.fs.regular import open_regular, read_regular
from acbuild.fs.staging import xattr_field, xattrs_of
from acbuild.image.hostarch import host_os_arch
from acbuild.image.rootwalk import clamp
from acbuild.plan.baseref import (
    BaseRef,
    DockerArchive,
    ImageName,
    LocalImage,
    OciArchive,
    OciLayout,
    RegistryImage,
    Scratch,
)
from acbuild.plan.plan import Plan, Stage

_VERSION = 4  # 2: tombstones; 3: a base file's xattrs with its digest; 4: by directory, packed


_FILE = framed(b"file")

# An entry, packed: dev, ino, size, mtime_ns, ctime_ns, the SHA-256, and the xattrs (a kind:
# 0 none asked, 1 none there, 2 their SHA-256). 105 bytes an entry where a JSON list of
# seven took ~530 (a cache of 100,000 files loaded as ~53 MB of lists).
_RECORD = struct.Struct("=QQqqq32sB32s")
_SIG = struct.Struct("=QQqqq")  # the record's first 40 bytes: what it is remembered under
_NO_XATTRS = bytes(32)
# Directories unpacked at once (a look-up unpacks its directory: walks look up a directory's
# entries together); the others stay as the file held them, a string each.
_UNPACKED = 16

Entry = list[object]  # [dev, ino, size, mtime_ns, ctime_ns, sha256 hex, xattrs or None]


def _pack(entry: Entry) -> bytes | None:
    """An entry as a record; None when it cannot be one (a number out of range)."""
    dev, ino, size, mtime, ctime, digest, xattrs = entry
    kind, found = (0, _NO_XATTRS) if xattrs is None else (1, _NO_XATTRS) if xattrs == "" else (
        2, bytes.fromhex(str(xattrs)))
    try:
        return _RECORD.pack(dev, ino, size, mtime, ctime, bytes.fromhex(str(digest)), kind,
                            found)
    except (struct.error, ValueError):
        return None


def _unpack(record: bytes) -> Entry:
    dev, ino, size, mtime, ctime, digest, kind, found = _RECORD.unpack(record)
    return [dev, ino, size, mtime, ctime, digest.hex(),
            None if kind == 0 else "" if kind == 1 else found.hex()]


class StatCache:
    """Maps absolute path -> (dev, ino, size, mtime, ctime, sha256 hex, xattrs), the
    xattrs as ``file_xattrs`` gives them (None until a base tree's key asks: a COPY takes
    none). They are remembered under the same signature as the content: every change of
    an xattr sets the ctime, so a changed xattr never hides behind a remembered one.

    ``witness``, when set, is told every entry a key reads (the warm record's inputs);
    ``keyed`` gets the signature of every entry of a base tree or the context a key read.

    The file holds a directory's entries as its names (joined by "/") and their packed
    records (``_RECORD``, base64), which stay as loaded until a look-up in that directory
    unpacks them (at most ``_UNPACKED`` directories at once): a cache of 100,000 files is
    ~15 MB in memory, not ~53 MB of JSON lists, and a save merges and writes it a
    directory at a time.

    Builds sharing a cache share the file: each save merges this build's changes into what
    is on disk then, under a lock, rather than write back what it loaded (which would lose
    the other build's digests).

    A digest found stale (see ``forget``: the file's signature still matches, its content
    does not, as after a write through a shared mapping) leaves a tombstone of that exact
    (path, signature) in the file: that signature has been seen holding two contents, so
    no digest taken under it is trusted again, whoever took it and whenever. A concurrent
    build that hashed the file before the write, under the same signature, saves its
    digest after the drop; the merge refuses it because the tombstone is on disk, not
    because of when either build ran (the order of saves, or of hashes, decides nothing).
    A tombstone ends when the path is remembered under a later signature of the same
    inode (a ctime never goes back, so the old signature cannot come back), or when
    ``_TOMBSTONES`` newer ones push it out."""

    def __init__(self, path: Path | None, witness: Witness | None = None) -> None:
        self.path = path
        self.witness = witness
        self.keyed = KeyedFiles(on_stale=self._stale)
        # directory -> (names, records); None: read the file at the next look-up
        self._loaded: dict[str, tuple[str, str]] | None = {}
        self._unpacked: dict[str, dict[str, bytes]] = {}  # the last directories looked in
        # Since the last save, by directory: name -> record (this build's digests).
        self._added: dict[str, dict[str, bytes]] = {}
        self._hidden: set[str] = set()  # forgotten: never answered from what was loaded
        self._forgotten: set[str] = set()  # since the last save, no signature known
        self._buried: list[Tombstone] = []  # since the last save
        self._tombstones: set[Tombstone] = set()  # loaded and buried
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> dict[str, tuple[str, str]]:
        self._loaded, tombstones = _read(path)
        self._tombstones.update(tombstones)
        return self._loaded

    @property
    def _dirty(self) -> bool:
        return bool(self._added or self._forgotten or self._buried)

    def _record(self, path: str) -> bytes | None:
        """The record remembered for the absolute ``path``: this build's, else the file's
        (unless forgotten, or buried under its signature)."""
        directory, _, name = path.rpartition("/")
        added = self._added.get(directory)
        if added is not None and (record := added.get(name)) is not None:
            return record
        if path in self._hidden:
            return None
        records = self._unpacked.get(directory)
        if records is None:
            records = self._unpack_directory(directory)
        record = records.get(name)
        if record is not None and self._tombstones and (
                (path, *_SIG.unpack_from(record)) in self._tombstones):
            return None  # never trusted, even in a file no merge of ours wrote
        return record

    def _unpack_directory(self, directory: str) -> dict[str, bytes]:
        loaded = self._loaded
        if loaded is None:
            assert self.path is not None  # only a save drops what was loaded
            loaded = self._load(self.path)
        records = _records(loaded.get(directory))
        if len(self._unpacked) >= _UNPACKED:
            del self._unpacked[next(iter(self._unpacked))]
        self._unpacked[directory] = records
        return records

    def _get(self, path: str, st: os.stat_result) -> Entry | None:
        """The entry remembered for ``path`` under ``st``'s signature, else None."""
        record = self._record(path)
        if record is None or record[:_SIG.size] != _sig_bytes(st):
            return None
        return _unpack(record)

    def _put(self, path: str, entry: Entry) -> None:
        record = _pack(entry)
        if record is None:
            return  # not remembered: hashed again next time
        directory, _, name = path.rpartition("/")
        self._added.setdefault(directory, {})[name] = record
        self._hidden.discard(path)
        self._forgotten.discard(path)

    def file_digest(self, path: Path | str, st: os.stat_result,
                    opener: Callable[[], int] | None = None) -> str:
        """sha256 hex of a regular file's content; ``opener`` gives the descriptor to read
        (a context file is opened beneath the context, not by ``path``)."""
        # An absolute str comes from path_digest, already normal: no abspath per file.
        key = path if isinstance(path, str) and path[:1] == "/" else os.fsdecode(
            os.path.abspath(path))
        known = self._get(key, st)
        if known is not None:
            return str(known[5])
        try:
            # Not a plain open(): a BEGIN path or a base tree's file that is (or became) a
            # FIFO would block it for ever, /dev/zero would be read for ever.
            with open_regular(path if opener is None else opener()) as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise AcbuildError(f"cannot read {path}: {e.strerror}") from None
        sig = _signature(st)
        if settled(st, time.time_ns()) and (key, *sig) not in self._tombstones:
            self._put(key, [*sig, digest, None])
        return digest

    def base_file(self, path: str, st: os.stat_result) -> tuple[str, str]:
        """A base tree's file (``path`` absolute and normal): ``file_digest`` and
        ``file_xattrs``, from one look-up when both are remembered (most of a base)."""
        known = self._get(path, st)
        if known is not None and isinstance(known[6], str):
            return str(known[5]), known[6]
        return self.file_digest(path, st), self.file_xattrs(path, st)

    def file_xattrs(self, path: str, st: os.stat_result) -> str:
        """A base file's xattrs as its key hashes them: "" for none, else the sha256 hex of
        their ``xattr_field`` (every xattr but the SELinux label: what the base's copy and
        the finalizer take). ``path``: absolute and normal, asked right after
        ``file_digest(path, st)``, whose entry (when it remembered one) keeps them too."""
        known = self._get(path, st)  # None: remembered under another signature, or not
        if known is not None and isinstance(known[6], str):
            return known[6]
        found = xattrs_digest(xattrs_of(path))
        # Read after ``st`` was taken: an xattr set in between moved the ctime past it, so
        # no later stat shows ``st`` again (and this build's copy finds the file changed).
        if known is not None:
            known[6] = found
            self._put(path, known)
        return found

    def forget(self, path: str) -> None:
        """Drop the digest remembered for the absolute ``path``: its content was found to
        differ from it although its signature did not (a write through a shared mapping
        changes no timestamp), so the next read must hash the file again. The signature
        is buried: the one the digest was remembered under, and the file's own now when
        it is the one the key read (a digest hashed afresh, not yet remembered)."""
        record = self._record(path)
        directory, _, name = path.rpartition("/")
        added = self._added.get(directory)
        if added is not None:
            added.pop(name, None)
            if not added:
                del self._added[directory]
        self._hidden.add(path)
        found: set[Tombstone] = set()
        if record is not None:
            found.add((path, *_SIG.unpack_from(record)))
        with contextlib.suppress(OSError):
            st = os.stat(path)  # as the key took it: a base archive may be named by a link
            if self.keyed.holds(path, st):
                found.add((path, *_signature(st)))  # type: ignore[arg-type]
        if not found:
            # Nothing says under which signature: drop the path's digest from the file.
            self._forgotten.add(path)
        for tombstone in found:
            self._buried.append(tombstone)
            self._tombstones.add(tombstone)

    def _stale(self, path: str) -> None:
        """A reader found the bytes of ``path`` are not the digest the key took (from
        here, or just read): forgotten at once and saved, since the build is failing
        and may not get to save it."""
        self.forget(path)
        self.save()

    def save(self) -> None:
        """Merge this build's changes into the file (re-read under its lock: another
        build may have saved since this one loaded), written to a temp file and renamed.
        What is remembered from then on is what the file holds."""
        if self.path is None or not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.path.with_name(self.path.name + ".lock"),
                           os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return  # only a speed-up; the next build reads the files again
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            loaded, tombstones = _read(self.path)
            merged, kept = _merge(loaded, tombstones, self._added, self._forgotten,
                                  self._buried)
            with atomic_write(self.path, mode=0o600) as f:
                _write(f, merged, kept)
        except (OSError, AcbuildError):
            return  # only a speed-up (kept for the next save); the files are read again
        finally:
            os.close(lock)  # releases the lock
        # What the file holds now is read again if a look-up comes after the save (a
        # build saves once its keys are made, and then rarely looks up: a RUN's bind
        # mount, a stale digest): not held through the build (~14 MB for 100,000 files).
        self._loaded, self._unpacked = None, {}
        self._tombstones.update(kept)
        self._added.clear()
        self._forgotten.clear()
        self._buried.clear()


# (path, dev, ino, size, mtime_ns, ctime_ns): a signature under which a path held two contents.
Tombstone = tuple[str, int, int, int, int, int]
# Tombstones kept (oldest dropped first): a file of them stays small, and pushing out a live
# one takes this many stale digests found after it.
_TOMBSTONES = 4096


def _records(loaded: tuple[str, str] | None) -> dict[str, bytes]:
    """A directory's entries as the file holds them: name -> record; none when damaged."""
    if loaded is None:
        return {}
    joined, packed = loaded
    try:
        blob = base64.b64decode(packed, validate=True)
    except ValueError:
        return {}
    names = joined.split("/")
    size = _RECORD.size
    if len(blob) != size * len(names):
        return {}
    return {name: blob[i * size:(i + 1) * size] for i, name in enumerate(names)}


def _merge(loaded: Mapping[str, tuple[str, str]], tombstones: list[Tombstone],
           added: Mapping[str, Mapping[str, bytes]], forgotten: Iterable[str],
           buried: Iterable[Tombstone]) -> tuple[dict[str, tuple[str, str]], list[Tombstone]]:
    """The file's entries and tombstones with one build's changes, a directory at a time:
    its tombstones win over any digest for the same (path, signature), on disk or added (by
    the build that buried it or one that hashed the file before it was found stale)."""
    graves = dict.fromkeys(tombstones)
    graves.update(dict.fromkeys(buried))
    by_directory: dict[str, dict[str, list[Tombstone]]] = {}
    for grave in graves:
        directory, _, name = grave[0].rpartition("/")
        by_directory.setdefault(directory, {}).setdefault(name, []).append(grave)
    gone: dict[str, set[str]] = {}
    for path in forgotten:
        directory, _, name = path.rpartition("/")
        gone.setdefault(directory, set()).add(name)
    outlived: set[Tombstone] = set()
    merged: dict[str, tuple[str, str]] = {}
    for directory in dict.fromkeys([*loaded, *added]):
        records = _records(loaded.get(directory))
        for name in gone.get(directory, ()):
            records.pop(name, None)
        here = by_directory.get(directory, {})
        for name, record in added.get(directory, {}).items():
            if (f"{directory}/{name}", *_SIG.unpack_from(record)) not in graves:
                records[name] = record
        for name, buried_here in here.items():
            kept_record = records.get(name)
            if kept_record is None:
                continue
            dev, ino, _, _, ctime = sig = _SIG.unpack_from(kept_record)
            if any(sig == grave[1:] for grave in buried_here):
                del records[name]  # remembered before the tombstone reached the file
                continue
            # Remembered under a later signature of the buried inode: its ctime has moved
            # on, and a ctime never goes back (the clock aside), so the buried signature
            # cannot be the file's again.
            outlived.update(g for g in buried_here if (dev, ino) == g[1:3] and ctime > g[5])
        if records:
            merged[directory] = ("/".join(records),
                                 base64.b64encode(b"".join(records.values())).decode())
    kept = [t for t in graves if t not in outlived]
    return merged, kept[-_TOMBSTONES:]


def _signature(st: os.stat_result) -> list[int]:
    """What an entry's digest is remembered under: (dev, ino, size, mtime_ns, ctime_ns)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _sig_bytes(st: os.stat_result) -> bytes | None:
    try:
        return _SIG.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except struct.error:
        return None  # out of a record's range: never remembered


def _write(f: BinaryIO, directories: Mapping[str, tuple[str, str]],
           tombstones: list[Tombstone]) -> None:
    """The file, a directory a line (one JSON document): no second copy of it all."""
    f.write(b'{"version":%d,"tombstones":%s,"directories":{' % (
        _VERSION, json.dumps([list(t) for t in tombstones], separators=(",", ":")).encode()))
    for i, (directory, (names, records)) in enumerate(directories.items()):
        f.write(b"%s\n%s:%s" % (b"," if i else b"", json.dumps(directory).encode(),
                                 json.dumps([names, records], separators=(",", ":")).encode()))
    f.write(b"}}\n")


def _read(path: Path) -> tuple[dict[str, tuple[str, str]], list[Tombstone]]:
    """The directories and tombstones of the stat cache file ``path``; none when it is
    missing or damaged (the digests are recomputed). A directory's records are checked
    when a look-up unpacks them."""
    try:
        doc = json.loads(read_regular(path))
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deep
        return {}, []
    if not isinstance(doc, dict) or doc.get("version") != _VERSION:
        return {}, []
    directories, tombstones = doc.get("directories"), doc.get("tombstones")
    if not isinstance(directories, dict) or not isinstance(tombstones, list):
        return {}, []
    loaded: dict[str, tuple[str, str]] = {}
    for directory, value in directories.items():
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, str) for v in value)):
            return {}, []
        loaded[directory] = (value[0], value[1])
    graves: list[Tombstone] = []
    for t in tombstones:
        if not (isinstance(t, list) and len(t) == 6 and isinstance(t[0], str)
                and all(type(v) is int for v in t[1:])):
            return {}, []  # damaged: as a damaged file, its digests dropped with it
        graves.append((t[0], t[1], t[2], t[3], t[4], t[5]))
    return loaded, graves


def remembered(path: Path) -> dict[str, Entry]:
    """Every entry of the stat cache file ``path`` by absolute path (for inspection and
    tests: a build never unpacks the whole file)."""
    loaded, graves = _read(path)
    buried = set(graves)
    found: dict[str, Entry] = {}
    for directory, value in loaded.items():
        for name, record in _records(value).items():
            full = f"{directory}/{name}"
            if (full, *_SIG.unpack_from(record)) not in buried:
                found[full] = _unpack(record)
    return found


def tombstones_of(path: Path) -> list[Tombstone]:
    """The tombstones of the stat cache file ``path``, oldest first."""
    return _read(path)[1]


def xattrs_digest(pairs: Sequence[tuple[str, bytes]]) -> str:
    """How a base tree's key hashes an entry's xattrs: "" for none, else the sha256 hex of
    their ``xattr_field``."""
    return hashlib.sha256(xattr_field(pairs)).hexdigest() if pairs else ""


def _mtime(st: os.stat_result, epoch: int) -> bytes:
    """An entry's mtime as the image records it (the finalizer clamps it to ``epoch``)."""
    return b"%d" % clamp(st, epoch)


def _entry(h: hashlib._Hash, cache: StatCache, rel: str, path: str, st: os.stat_result, *,
           epoch: int | None, follow: bool = False) -> None:
    """One entry. ``epoch`` None: a context's (modes normalised as COPY does, owners left
    out: COPY takes neither); else a base tree's, with all the image takes of it: the exact
    mode and owner, the mtime (clamped to ``epoch`` as the finalizer does) and, for a file
    or directory, the xattrs (symlinks and nodes are made without them)."""
    if cache.witness is not None:
        cache.witness.seen(path, st, follow=follow)
    cache.keyed.record(path, st)
    exact = epoch is not None
    mode = b"%o" % (stat.S_IMODE(st.st_mode) if exact else normalised_mode(st.st_mode))
    owner = b"%d:%d" % (st.st_uid, st.st_gid) if exact else b""
    image = () if epoch is None else (_mtime(st, epoch),)
    name = os.fsencode(rel)
    if stat.S_ISLNK(st.st_mode):
        frame(h, b"symlink", name, os.fsencode(os.readlink(path)), owner, *image)
    elif stat.S_ISDIR(st.st_mode):
        xattrs = () if epoch is None else (xattrs_digest(xattrs_of(path)).encode(),)
        frame(h, b"dir", name, mode, owner, *image, *xattrs)
    elif stat.S_ISREG(st.st_mode):
        if epoch is None:
            digest, xattrs = cache.file_digest(path, st), ()
        else:
            digest, found = cache.base_file(path, st)
            xattrs = (found.encode(),)
        cache.keyed.record_digest(path, digest)
        frame(h, b"file", name, mode, owner, digest.encode(), *image, *xattrs)
    else:
        # A node's permission bits reach the image as well (a FIFO's, a device record's).
        frame(h, b"special", name, b"%o" % stat.S_IFMT(st.st_mode), b"%d" % st.st_rdev, owner,
              *(() if epoch is None else (mode, *image)))


def _archive_order(rel: str) -> tuple[bytes, ...]:
    """Where the finalizer writes ``rel``: each directory's children sorted by name bytes,
    each directory followed by its contents."""
    return tuple(os.fsencode(part) for part in rel.split("/"))


def hardlinks(h: hashlib._Hash, inodes: Mapping[tuple[int, int], Sequence[str]]) -> None:
    """A base tree's hardlinks, as the image holds them: each inode's names (``inodes``:
    (dev, ino) -> the names of a regular file in the tree) in archive order, every one
    after the first written as a link to it; inodes in the order of their first names."""
    groups = sorted((sorted(names, key=_archive_order) for names in inodes.values()
                     if len(names) > 1), key=lambda names: _archive_order(names[0]))
    for names in groups:
        frame(h, b"hardlink", *(os.fsencode(name) for name in names))


def sources_digest(context: BuildContext, sources: Sequence[ContextSource],
                   cache: StatCache) -> str:
    """What COPY takes from ``sources`` (as BuildContext.digest, reading only changed files):
    paths, types, normalised modes, contents, link targets; not mtimes, owners or location."""
    h = hashlib.sha256()
    for source in sorted(sources, key=lambda s: s.rel):
        walked = WalkListing()
        _source(h, cache, context, source, context.lstat(source.rel), context.walk(source),
                walked)
        # What the walk listed: a COPY must copy the same entries, none removed since.
        cache.keyed.record_source(os.fspath(context.root / source.rel), walked.digest())
    return "sha256:" + h.hexdigest()


def listing_digest(context: BuildContext, source: ContextSource, top: os.stat_result,
                   entries: Iterable[tuple[str, os.stat_result]], cache: StatCache) -> str:
    """``sources_digest([source])`` over a listing taken before: ``top`` (the source's
    lstat) and ``entries`` (what ``context.walk(source)`` gave), as a RUN --mount shows it."""
    h = hashlib.sha256()
    _source(h, cache, context, source, top, entries)
    return "sha256:" + h.hexdigest()


def _source(h: hashlib._Hash, cache: StatCache, context: BuildContext, source: ContextSource,
            top: os.stat_result, entries: Iterable[tuple[str, os.stat_result]],
            walked: WalkListing | None = None) -> None:
    """Hash ``source``'s entries into ``h``; ``walked`` is told what was listed (name, is a
    directory, is a regular file), for the record of what the key read."""
    frame(h, b"source", source.rel.encode())
    # Absolute paths as plain strings, normal already (the stat cache's keys): no pathlib
    # per entry, which was most of the cost of a context of many small files.
    here = os.fspath(context.root) + ("" if source.rel == "." else "/" + source.rel)
    _context_entry(h, cache, context, ".", source.rel, here, top)
    for rel, st in entries:
        _context_entry(h, cache, context, rel, posixpath.join(source.rel, rel),
                       f"{here}/{rel}", st)
        if walked is not None:
            walked.add(rel, stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode))


def _context_entry(h: hashlib._Hash, cache: StatCache, context: BuildContext, rel: str,
                   where: str, path: str, st: os.stat_result) -> None:
    """``_entry`` for a context file (``where`` in the context, ``path`` absolute): read
    through the context's descriptors, so what is hashed is the inode the scan saw, never
    something a swapped symlink points at."""
    name = os.fsencode(rel)
    if not stat.S_ISDIR(st.st_mode):
        cache.keyed.record(path, st)
    if stat.S_ISLNK(st.st_mode):
        if cache.witness is not None:
            cache.witness.seen(path, st)
        frame(h, b"symlink", name, os.fsencode(context.readlink(where, st)), b"")
    elif stat.S_ISREG(st.st_mode):
        if cache.witness is not None:
            cache.witness.seen(path, st)
        digest = cache.file_digest(path, st, opener=lambda: context.open_file(where, st))
        cache.keyed.record_digest(path, digest)
        frame(h, b"file", name, b"%o" % normalised_mode(st.st_mode), b"", digest.encode())
    else:
        _entry(h, cache, rel, path, st, epoch=None)


def witness_path(witness: Witness, context: BuildContext, pattern: str,
                 found: Sequence[ContextSource]) -> None:
    """Tell ``witness`` what naming ``pattern`` read besides the sources' own entries: the
    context, its ignore file and each directory on the way (literal and resolved). A glob
    is a listing of its directory (its mtime covers it), only in the last component."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if ".." in parts or "**" in pattern or any(has_glob(p) for p in parts[:-1]):
        witness.incomplete(f"COPY source {pattern!r} is more than a path")
        return
    root = context.root
    witness.look(root)
    witness.look(root / ".acignore")
    chains = [parts[:-1]] + [source.rel.split("/")[:-1] for source in found]
    for chain in chains:
        for i in range(1, len(chain) + 1):
            witness.look(root.joinpath(*chain[:i]))


def path_digest(path: Path, cache: StatCache, *, epoch: int) -> str:
    """A base on disk: the hash of a file, or of a whole tree with all the image takes of
    each entry (see ``_entry``; mtimes clamped to ``epoch``) and its hardlinks."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise AcbuildError(f"{path}: cannot read: {e.strerror}") from None
    root = os.fsdecode(os.path.abspath(path))
    if not stat.S_ISDIR(st.st_mode):
        if cache.witness is not None:
            cache.witness.seen(root, st, follow=True)
        cache.keyed.record(root, st)
        digest = cache.file_digest(path, st)
        cache.keyed.record_digest(root, digest)
        return "sha256:" + digest
    h = hashlib.sha256()
    _entry(h, cache, ".", root, st, epoch=epoch, follow=True)
    # Each directory's listing as the key saw it: the base's copy must list the same.
    listings: dict[str, list[tuple[str, bool, bool]]] = {"": []}
    inodes: dict[tuple[int, int], list[str]] = {}  # of files with more than one link
    witness, keyed = cache.witness, cache.keyed
    # A regular file is _entry's case inlined (most of a base; the same frames, the same
    # records), with the framed mode and owner of each (mode, uid, gid) made once, and of
    # each clamped mtime (most are the epoch).
    frames: dict[tuple[int, int, int], bytes] = {}
    mtimes: dict[int, bytes] = {}
    for rel, child in scan(path, ""):
        full = f"{root}/{rel}"
        if stat.S_ISREG(child.st_mode):
            if witness is not None:
                witness.seen(full, child)
            keyed.record(full, child)
            digest, held = cache.base_file(full, child)
            keyed.record_digest(full, digest)
            how = (stat.S_IMODE(child.st_mode), child.st_uid, child.st_gid)
            rest = frames.get(how)
            if rest is None:
                rest = frames[how] = framed(b"%o" % how[0], b"%d:%d" % how[1:])
            when = clamp(child, epoch)
            mtime = mtimes.get(when)
            if mtime is None:
                mtime = mtimes[when] = framed(b"%d" % when)
            encoded, content, xattrs = os.fsencode(rel), digest.encode(), held.encode()
            h.update(b"".join((_FILE, len(encoded).to_bytes(8, "big"), encoded, rest,
                               len(content).to_bytes(8, "big"), content, mtime,
                               len(xattrs).to_bytes(8, "big"), xattrs)))
            if child.st_nlink > 1:
                inodes.setdefault((child.st_dev, child.st_ino), []).append(rel)
        else:
            _entry(h, cache, rel, full, child, epoch=epoch)
        parent, _, name = rel.rpartition("/")
        is_dir = stat.S_ISDIR(child.st_mode)
        listings[parent].append((name, is_dir, stat.S_ISREG(child.st_mode)))
        if is_dir:
            listings[rel] = []
    hardlinks(h, inodes)
    for rel, found in listings.items():
        cache.keyed.record_listing(f"{root}/{rel}" if rel else root, listing_signature(found))
    return "sha256:" + h.hexdigest()


# ---- step keys ----------------------------------------------------------------------


# Turns a name and labels into the local .aci a build would use (the trust chain's resolver).
NameResolver = Callable[[str, tuple[tuple[str, str], ...]], Path]


def canonical(instruction: ins.Instruction) -> bytes:
    """The instruction as canonical JSON, without span and text: reformatting the Acfile
    (spaces, continuations, comments, line numbers) does not change it."""
    fields = {
        f.name: getattr(instruction, f.name)
        for f in dataclasses.fields(instruction)
        if f.name not in ("span", "text")
    }
    if isinstance(instruction, ins.Run):
        fields["mounts"] = [_mount_fields(m) for m in instruction.mounts]
    doc = [type(instruction).__name__, fields]
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _mount_fields(mount: ins.RunMount) -> dict[str, object]:
    """A RUN --mount as it decides the step. A secret's source is left out (where the
    secret is read from, like its content, does not make the step another one)."""
    fields = dataclasses.asdict(mount)
    if mount.kind == "secret":
        del fields["source"]
    return fields


def base_identity(base: BaseRef, stat_cache: StatCache, resolve_name: NameResolver,
                  resolve_registry: Callable[[str], str] | None = None, *,
                  epoch: int) -> str:
    """What a BEGIN starts from, by content: never by path or name alone (a docker://
    reference by the digest of the image manifest it names now). ``epoch``: the build's,
    to which the image clamps a base directory's mtimes (an archive holds its own)."""
    if isinstance(base, ImageName | RegistryImage) and stat_cache.witness is not None:
        # Only asking answers these: the store, or the registry, may hold a newer image.
        stat_cache.witness.incomplete("a base is named: a newer image may have appeared")
    match base:
        case Scratch():
            return "scratch"
        case LocalImage(path=path):
            return "local:" + path_digest(path, stat_cache, epoch=epoch)
        case DockerArchive(path=path, ref=ref) | OciLayout(path=path, ref=ref) | OciArchive(
            path=path, ref=ref
        ):
            kind = type(base).__name__
            return f"{kind}:{ref or ''}:" + path_digest(path, stat_cache, epoch=epoch)
        case ImageName(name=name, labels=labels):
            return "image:" + path_digest(resolve_name(name, labels), stat_cache, epoch=epoch)
        case RegistryImage(reference=text):
            if resolve_registry is None:
                raise AcbuildError(f"{text}: no registry access to resolve it")
            return "registry:" + resolve_registry(text)


def _digest(*fields: bytes) -> str:
    h = hashlib.sha256()
    frame(h, FORMAT_VERSION, *fields)
    return "sha256:" + h.hexdigest()


class _Keyer:
    def __init__(self, plan: Plan, context: BuildContext, epoch: int,
                 identity: Callable[[BaseRef], str], stat_cache: StatCache) -> None:
        self.plan = plan
        self.context = context
        self.epoch = epoch
        self.identity = identity
        self.stat_cache = stat_cache
        self.last: dict[int, str | None] = {}  # stage index -> key of its last step

    def inputs(self, instruction: ins.Instruction, stage: Stage) -> bytes | None:
        """The inputs outside the chain that decide the step; None when they cannot be
        known now (the step itself will then report the problem)."""
        try:
            match instruction:
                case ins.Begin():
                    return self.identity(stage.base).encode()
                case ins.Copy(from_stage=str(name)):
                    key = self.last.get(self.plan.stage_named(name).index)
                    return None if key is None else b"stage:" + key.encode()
                case ins.Copy(sources=sources):
                    found = [self.context.resolve(s, span=instruction.span) for s in sources]
                    for pattern, resolved in zip(sources, found, strict=True):
                        self.stat_cache.keyed.record_pattern(
                            os.fspath(self.context.root), pattern, (s.rel for s in resolved))
                    if self.stat_cache.witness is not None:
                        for source, resolved in zip(sources, found, strict=True):
                            witness_path(self.stat_cache.witness, self.context, source,
                                         resolved)
                    return b"".join(
                        sources_digest(self.context, f, self.stat_cache).encode() + b"\n"
                        for f in found
                    )
                case ins.Run():
                    return run_inputs(instruction, context=self.context, epoch=self.epoch,
                                      stat_cache=self.stat_cache, stage_key=lambda name:
                                      self.last.get(self.plan.stage_named(name).index))
                case _:
                    return b""
        except (AcbuildError, OSError, StopIteration):
            return None

    def witnessed(self, instruction: ins.Instruction, stage: Stage) -> bytes | None:
        """``inputs``, with the warm record told when they are more than it has seen."""
        extra = self.inputs(instruction, stage)
        witness = self.stat_cache.witness
        if witness is not None and isinstance(instruction, ins.Run) and (
                extra != b"epoch:%d" % self.epoch):
            witness.incomplete("a RUN reads more than the epoch")
        return extra

    def stage(self, stage: Stage) -> Stage:
        parent: str | None = ""
        steps = []
        for step in stage.steps:
            extra = self.witnessed(step.instruction, stage) if parent is not None else None
            if parent is None or extra is None:
                parent = None
            else:
                parent = step_key(parent, step.instruction, extra)
            steps.append(dataclasses.replace(step, key=parent))
        self.last[stage.index] = parent
        return dataclasses.replace(stage, steps=tuple(steps))


def run_inputs(instruction: ins.Run, *, context: BuildContext, epoch: int,
               stat_cache: StatCache, stage_key: Callable[[str], str | None],
               shown: Mapping[int, str] | None = None) -> bytes | None:
    """What a RUN reads from outside the chain: the epoch, and each bind mount's content:
    the digest COPY would take of the same context path (ignored files left out, as the
    mount leaves them out), or the key of its ``from=`` stage. ``shown``: the digests of
    the context binds, by the mount's position, as the step lists them (the context is
    not read then). Raises when a source cannot be read; None when a stage has no key."""
    binds: list[bytes] = []
    for index, mount in enumerate(instruction.mounts):
        if mount.kind != "bind":
            continue
        if mount.from_stage is not None:
            key = stage_key(mount.from_stage)
            if key is None:
                return None
            binds.append(b"stage:" + key.encode())
            continue
        if shown is not None:
            binds.append(shown[index].encode())
            continue
        found = context.resolve((mount.source or ".").lstrip("/") or ".")
        binds.append(sources_digest(context, found, stat_cache).encode())
    return b"epoch:%d" % epoch + b"".join(b"\nbind:" + b for b in binds)


def step_key(parent: str, instruction: ins.Instruction, inputs: bytes) -> str:
    """A step's key from its parent's, the instruction and its inputs."""
    return _digest(parent.encode(), canonical(instruction), inputs)


def key_plan(plan: Plan, *, context: BuildContext, epoch: int,
             identity: Callable[[BaseRef], str], stat_cache: StatCache) -> Plan:
    """The plan with every step's ``key`` filled in (None from a step whose inputs cannot
    be read: it and the steps after it are not cached)."""
    keyer = _Keyer(plan, context, epoch, identity, stat_cache)
    stages = tuple(keyer.stage(s) for s in plan.stages)
    target = next(s for s in stages if s.index == plan.target.index)
    return dataclasses.replace(plan, stages=stages, target=target, keyed=stat_cache.keyed)


def image_key(plan: Plan, *, compression: str, output_format: str, epoch: int) -> str | None:
    """The key of the final image: the last step, the output options, the epoch the
    finalizer clamps to and the host's os/arch (added to a manifest that names none)."""
    last = plan.target.steps[-1].key
    if last is None:
        return None
    os_name, arch = host_os_arch()
    return _digest(b"image", last.encode(), compression.encode(), output_format.encode(),
                   b"%d" % epoch, os_name.encode(), arch.encode())
