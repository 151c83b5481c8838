"""What the cache keys read: every entry's signature, so that whatever reads the entry later
(the base's copy, a COPY, the finalizer streaming a file the build left in place) can tell
that it still reads what a key was computed over.

A step key hashes a file's content; the image (and the cache entry stored under that key)
is written from the file later, seconds or minutes later for a big base. In between, the
user's file may be rewritten in place, renamed over, grown or shrunk. Each reader opens the
file, compares the open descriptor's signature with the one recorded here when the key read
it, reads, and compares again: a difference fails the build ("changed during the build")
before anything is stored.

The signature holds the ctime: every change through a system call (a write, truncate,
chmod, utime, link count) sets it to the current time, which no unprivileged user can set
back (utime sets the ctime to *now*), so a same-size rewrite with the mtime put back still
shows a new ctime. Two changes can keep it, though: a store through a shared writable
mmap into a page already dirty (no write fault, so no time update until writeback: LMDB,
SQLite's -shm files), and, on a filesystem with coarse timestamps, a change in the same
clock tick as the previous one (Linux's multigrain timestamps, since 6.13 on ext4, xfs,
btrfs and tmpfs, close that one once the key's stat has read the ctime). So where the key
hashed a file's content, the bytes the build takes are hashed too and compared with that
digest (``digest``): the signature finds a swap or an edit before anything is read, the
digest what no signature can.

The builder must not change these ctimes itself between keying and reading (a hardlink
changes the link count, hence the ctime): a keyed base is copied into the staged tree, never
hardlinked (acbuild.image.basedir).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

# (st_dev, st_ino, st_mode, st_size, st_mtime_ns, st_ctime_ns)
Signature = tuple[int, int, int, int, int, int]
_T = TypeVar("_T")


def signature(st: os.stat_result) -> Signature:
    return st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def shared_signature(st: os.stat_result) -> Signature:
    """``signature`` without the ctime (0): what must not change of a cache entry's file,
    whose inode other builds sharing the cache link (which moves its ctime and link count,
    and nothing an image takes)."""
    return st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, 0


def content_digest(fd: int) -> bytes:
    """sha256 of the whole file open at ``fd`` (pread: its offset is left alone)."""
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.digest()


# What listing_signature gives: a 32-byte BLAKE2b digest.
Listing = bytes


def by_name_bytes(items: Iterable[_T], name: Callable[[_T], str]) -> list[_T]:
    """``items`` sorted by ``name(item)`` as bytes (os.fsencode), the order of archives and
    listings. When every name is ASCII (nearly always) the strings sort in that same order,
    and no name is encoded; otherwise (UTF-8 or surrogate-escaped bytes) they are."""
    items = list(items)
    if "".join(map(name, items)).isascii():
        return sorted(items, key=name)
    return sorted(items, key=lambda item: os.fsencode(name(item)))


def listing_signature(entries: Iterable[tuple[str, bool, bool]]) -> Listing:
    """A digest of a directory's (name, is_dir, is_file) entries, in any order: BLAKE2b of
    the sorted entries, each its kind and its name, NUL-ended (no name holds a NUL). A
    collision-resistant hash, not a checksum: a directory found with the same digest holds
    the same names of the same kinds (a CRC can be matched by a name made for it)."""
    kinds: dict[tuple[bool, bool], list[str]] = {}
    for name, is_dir, is_file in entries:
        kinds.setdefault((is_dir, is_file), []).append(name)
    framing = {kind: f"{kind[0]:d}{kind[1]:d}" for kind in kinds}
    if not "".join("".join(names) for names in kinds.values()).isascii():
        framed = sorted(framing[kind].encode() + os.fsencode(name) + b"\0"
                        for kind, names in kinds.items() for name in names)
        return hashlib.blake2b(b"".join(framed), digest_size=32).digest()
    # ASCII names: the framed entries sort by kind, then by name (no name holds a NUL, so
    # the NUL ending one sorts it before any longer name it begins): framed a kind at a time.
    text = "".join(framing[kind] + ("\0" + framing[kind]).join(sorted(names)) + "\0"
                   for kind, names in sorted(kinds.items()))
    return hashlib.blake2b(text.encode(), digest_size=32).digest()


class WalkListing:
    """What a walk of a context source listed (``BuildContext.walk``: parents first, each
    directory's names sorted), added entry by entry as the walk goes: a BLAKE2b digest of
    each entry's kind and path below the source, NUL-ended (no path holds a NUL), in the
    walk's order. The key's walk and the COPY's are the same walk of the same context, so
    the same entries come in the same order: the digests differ exactly when the entries
    do. Nothing is kept per entry (a source of 100,000 files was a list of 100,000
    tuples, sorted, before ``listing_signature`` hashed it)."""

    __slots__ = ("_hash", "_parts")

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=32)
        self._parts: list[str] = []

    def add(self, rel: str, is_dir: bool, is_file: bool) -> None:
        self._parts.append(("d" if is_dir else "f" if is_file else "o") + rel + "\0")
        if len(self._parts) >= 1024:
            self._flush()

    def _flush(self) -> None:
        self._hash.update("".join(self._parts).encode("utf-8", "surrogateescape"))
        self._parts.clear()

    def digest(self) -> Listing:
        self._flush()
        return self._hash.digest()


class KeyedFiles:
    """Filled while the keys are computed (one per build), only read afterwards.

    Entries are kept as the hash of their signature (one int per entry, not six): a
    different signature with the same 64-bit hash would have to be hit by a ctime the
    kernel picks; regular files also with the sha256 the key used (the stat cache's, or
    read then); listings as what ``listing_signature`` gives for the directory.

    ``on_stale`` is told the path of a file whose bytes were found not to be the digest
    the key used (``content_is``): the stat cache that gave the digest drops it."""

    __slots__ = ("_digests", "_entries", "_listings", "_on_stale", "_sources")

    def __init__(self, on_stale: Callable[[str], None] | None = None) -> None:
        self._on_stale = on_stale
        self._entries: dict[str, int] = {}
        self._digests: dict[str, bytes] = {}  # regular files: the sha256 the key used
        self._listings: dict[str, Listing] = {}
        self._sources: dict[str, Listing] = {}

    def record(self, path: str, st: os.stat_result) -> None:
        """``path``: absolute, normalised (os.path.abspath), as every reader names it."""
        self._entries[path] = hash(signature(st))

    def record_digest(self, path: str, hexdigest: str) -> None:
        self._digests[path] = bytes.fromhex(hexdigest)

    def digest(self, path: str) -> bytes | None:
        """The sha256 of the content the key hashed for the file ``path``."""
        return self._digests.get(path)

    def content_is(self, path: str, got: bytes) -> bool:
        """Whether ``got``, the sha256 of the bytes a reader took of the file ``path``, is
        the one the key hashed (True when it hashed none). Every reader that compares
        asks here, so that a mismatch also drops the digest the stat cache remembered:
        the file's signature did not change (a write through a shared mapping), so that
        stale digest would key every later build too, and each would fail the same way.
        This build still fails (what it keyed is not what it read); the next hashes the
        file afresh."""
        expected = self._digests.get(path)
        if expected is None or expected == got:
            return True
        self.stale(path)
        return False

    def stale(self, path: str) -> None:
        """A reader that compared by itself (with a copy of ``digest(path)``, as a COPY's
        FileRef holds) found the bytes of ``path`` differ: as in ``content_is``."""
        if self._on_stale is not None:
            self._on_stale(path)

    def record_listing(self, path: str, listing: Listing) -> None:
        self._listings[path] = listing

    def record_source(self, path: str, walked: Listing) -> None:
        """A context source (a directory COPY walks): the ``WalkListing`` digest of every
        (path below it, is_dir, is_file) the walk gave, ignored entries left out."""
        self._sources[path] = walked

    def holds(self, path: str, st: os.stat_result) -> bool:
        """Whether ``st`` is what the key read at ``path`` (False when it read nothing)."""
        known = self._entries.get(path)
        return known is not None and known == hash(signature(st))

    def record_pattern(self, root: str, pattern: str, found: Iterable[str]) -> None:
        """What a COPY argument (a glob, say) named in the context ``root``: its sources."""
        self._sources[f"{root}\0{pattern}"] = listing_signature(
            (rel, False, False) for rel in found)

    def names(self, root: str, pattern: str, found: Iterable[str]) -> bool:
        """Whether ``pattern`` names the sources it named for the key (True if no key
        resolved it)."""
        known = self._sources.get(f"{root}\0{pattern}")
        return known is None or known == listing_signature((rel, False, False)
                                                           for rel in found)

    def listing(self, path: str) -> Listing | None:
        return self._listings.get(path)

    def source(self, path: str) -> Listing | None:
        return self._sources.get(path)
