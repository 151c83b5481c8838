"""Step cache (execute stage): the store of step results and final images, by key.

``steps/<key>/`` holds meta.json (manifest, owners, devices, the digest of the tree) and, for
rootfs steps, ``tree/`` and, once a restore has hashed the tree, ``signatures`` (what lets
the next restore skip reading the files whose inodes are unchanged, see
acbuild.cache.snapshot.FileSignatures); ``images/<key>/`` a finished .aci. Entries are
built in ``tmp/`` and renamed into place; a build holds a shared flock on ``lock``,
``prune`` an exclusive one. Every use verifies the stored checksum (a tree's files by content
or by unchanged signature): a damaged entry is removed and rebuilt, never used.

The directory is opened once (acbuild.fs.private.open_private_dir: no symlink or directory
of another user on its path) and everything after works through that descriptor: *at calls
where they serve (prune, the tmp/ sweep, discard, meta.json, the image served as an output,
the cache mounts), else /proc/self/fd/N of it (a restore's or a snapshot's tree, publishing
an entry, the stat cache), so re-pointing or renaming a name after the check leads nowhere.
It must carry CACHEDIR.TAG (https://bford.info/cachedir/), written when the cache is made
in a new or empty directory: any other directory is refused before anything is created or
deleted in it. Each process holds a shared flock on ``locks/<owner tag>`` while it has the
cache open: what is in tmp/ under that tag is in progress until the lock can be taken,
whatever PID namespace the sweeper is in.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import secrets
import stat
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from acbuild.cache.mountcache import MountCache
from acbuild.cache.snapshot import (
    NO_SIGNATURES,
    EntrySignatures,
    FileSignatures,
    KnownDigests,
    TreeSignatures,
    copy_tree_verified,
    restore_lazily,
)
from acbuild.cache.statcache import StatCache
from acbuild.cache.warm import Witness
from acbuild.errors import AcbuildError
from acbuild.fs.atomic import atomic_write, atomic_write_at
from acbuild.fs.beneath import fd_path, open_beneath
from acbuild.fs.leftovers import owner_tag, sweep_at, tag_of
from acbuild.fs.private import UnsafeDirectory, open_claimed_dir
from acbuild.fs.staging import (
    CacheFiles,
    DeviceNode,
    LowerTree,
    StagedRootfs,
    remove_at,
    remove_tree,
)
from acbuild.image.unstaged import materialize

_META = "meta.json"
_SIGNATURES = "signatures"
# What the signatures file holds: 2, directory listings as BLAKE2b digests (1 had a count
# and an XOR of CRC32s, which a chosen name can match); a file of another format is unread.
_SIGNATURES_FORMAT = 2
# Signatures older than this are not trusted: the tree is read (and hashed) again, so damage
# on the disk below the filesystem, which moves no ctime, is found within that time.
_SIGNATURES_TRUSTED_S = 7 * 86400
_CHUNK = 1 << 20
_STALE_TMP = 3600.0
_TAG = "CACHEDIR.TAG"
_TAG_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
# Ours, not just any tool's (a Rust target/ has one too): the signature and our line.
_TAG_OURS = _TAG_SIGNATURE + b"\n# This file is a cache directory tag created by acbuild-py.\n"
_TAG_TEXT = _TAG_OURS + (b"# For information about cache directory tags, see:\n"
                         b"#\thttps://bford.info/cachedir/\n")
_SUBDIRS = ("steps", "images", "tmp", "locks")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CorruptTree(AcbuildError):
    """A cache entry does not match its checksum."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    key: str
    manifest_json: bytes
    tree: str  # key of the entry whose tree/ holds the rootfs after this step
    # registry://… of the import this entry is (a --cache-from gave it) or was built on
    import_origin: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRecord:
    key: str
    image_id: str
    size: int
    uncompressed_size: int
    entries: int
    manifest_json: bytes
    built_on: str | None = None  # registry://… of an import the build used


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryInfo:
    kind: str  # "step" or "image"
    key: str
    size: int
    last_used: float
    imported_from: str | None = None  # registry://… of a step a --cache-from gave
    built_on: str | None = None  # …of an import the build that stored this one used


def _origin(body: dict[str, object], field: str) -> str | None:
    value = body.get(field)
    return value if isinstance(value, str) else None


def _image_body(record: ImageRecord, sha256: str) -> dict[str, object]:
    body: dict[str, object] = {
        "kind": "image", "image_id": record.image_id, "size": record.size,
        "uncompressed": record.uncompressed_size, "entries": record.entries,
        "manifest": record.manifest_json.decode(), "sha256": sha256}
    if record.built_on is not None:
        body["built_on"] = record.built_on
    return body


def _hex(key: str) -> str:
    return key.split(":", 1)[-1]


def _seal(body: dict[str, object]) -> bytes:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({"body": body, "sha256": hashlib.sha256(raw).hexdigest()},
                      sort_keys=True, separators=(",", ":")).encode()


def _read_at(dir_fd: int, rel: str) -> bytes:
    """The bytes of ``rel`` below ``dir_fd``, no symlink followed on the way."""
    fd = open_beneath(dir_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IsADirectoryError(rel)
        return f.read()


def _unseal_at(dir_fd: int, rel: str) -> dict[str, object] | None:
    try:
        return _unseal_bytes(_read_at(dir_fd, rel))
    except OSError:
        return None


def _unseal(path: Path) -> dict[str, object] | None:
    """The body of a meta.json whose checksum matches; None when missing or damaged."""
    try:
        return _unseal_bytes(path.read_bytes())
    except OSError:
        return None


def _unseal_bytes(raw_doc: bytes) -> dict[str, object] | None:
    try:
        doc = json.loads(raw_doc)
        body = doc["body"]
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if hashlib.sha256(raw).hexdigest() == doc["sha256"] and isinstance(body, dict):
            return body
    except (ValueError, KeyError, TypeError, RecursionError):  # Recursion: nested too deep
        pass
    return None


class NotACache(AcbuildError):
    """A directory given as the cache that the cache did not make."""


def _not_a_cache(root: Path) -> NotACache:
    """Prune and the sweep delete what they find in a cache, and a build adds its
    directories, so a directory with anything else in it (``/``, a home) is never used: only
    an acbuild-py cache (its CACHEDIR.TAG) or an empty directory (which becomes one)."""
    return NotACache(
        f"step cache {root} is not an acbuild-py cache (it is not empty and has no "
        f"acbuild-py {_TAG}); "
        "refusing to use it, or to prune anything in it",
        hint="choose a new or empty directory for --cache-dir (or $XDG_CACHE_HOME); a cache "
             "made before acbuild-py tagged its caches is to be removed by hand")


def _hold_owner(locks: int, tag: str) -> int:
    """A shared flock on ``locks/<tag>.lock``, held until the descriptor is closed: while it
    is, the sweep leaves what is in tmp/ under ``tag`` alone."""
    name = f"{tag}.lock"
    while True:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=locks)
        fcntl.flock(fd, fcntl.LOCK_SH)
        # A sweeper unlinks a lock file it holds exclusively; one taken after that is on a
        # file no one else can find: take the one now at the name.
        try:
            same = os.stat(name, dir_fd=locks, follow_symlinks=False).st_ino == \
                os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _owner_gone(locks: int, tag: str, owners: dict[str, int | None]) -> bool:
    """Whether no process holds the owner lock of ``tag`` (in any PID namespace: flock is
    the kernel's); when so, the lock is kept taken in ``owners`` (its descriptor, -1 for
    no lock file) so the owner's tag cannot be reused until the sweep is done."""
    if tag not in owners:
        try:
            fd = os.open(f"{tag}.lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=locks)
        except FileNotFoundError:
            owners[tag] = -1  # never locked (or its lock already swept): no one holds it
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            owners[tag] = None
            return False
        owners[tag] = fd
    return owners[tag] is not None


def _close_all(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


class CacheStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd: int | None = None

    # -- layout and locking -----------------------------------------------------------------

    def check(self) -> int:
        """Make the cache directory, or refuse one another user could write into: a planted
        entry would be copied into images as if this build had made it. Its descriptor."""
        return self._root_fd()

    def opened_path(self) -> Path:
        """The cache directory as a path through its descriptor, for what takes a path (a
        snapshot's copy, a rename of a whole entry, the warm record): whatever ``root``
        names now, it leads into the directory that was checked. Valid while this store
        is."""
        return fd_path(self._root_fd())

    def _root_fd(self) -> int:
        """The cache directory, opened and checked once; every later use goes through it."""
        if self._fd is not None:
            return self._fd
        fd, held = open_claimed_dir(self.root, what="step cache", ours=_TAG_OURS,
                                    text=_TAG_TEXT, refused=functools.partial(
                                        _not_a_cache, self.root), then=self._prepare)
        weakref.finalize(self, _close_all, fd, held)
        self._fd = fd
        return fd

    def _prepare(self, fd: int) -> int:
        """The claimed cache at ``fd`` made ready: its subdirectories, and this process's
        owner lock (the descriptor holding it)."""
        seen, held_st = os.stat(fd_path(fd)), os.fstat(fd)
        if (seen.st_dev, seen.st_ino) != (held_st.st_dev, held_st.st_ino):
            raise UnsafeDirectory(f"cannot use step cache {self.root}: /proc is not "
                                  "this process's", hint="mount /proc")
        for sub in _SUBDIRS:
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub, 0o700, dir_fd=fd)
        with self._opened_at(fd, "locks") as locks:
            return _hold_owner(locks, owner_tag())

    @contextlib.contextmanager
    def _opened_at(self, fd: int, sub: str) -> Iterator[int]:
        try:
            at = os.open(sub, _DIR_FLAGS, dir_fd=fd)
        except OSError as e:
            raise UnsafeDirectory(
                f"step cache {self.root}: {sub}/ cannot be opened ({e.strerror})",
                hint="it must be a directory, not a symlink") from None
        try:
            yield at
        finally:
            os.close(at)

    def _opened(self, sub: str) -> contextlib.AbstractContextManager[int]:
        return self._opened_at(self._root_fd(), sub)

    def _dir(self, kind: str, key: str) -> Path:
        return self.opened_path() / kind / _hex(key)

    @contextlib.contextmanager
    def session(self, *, exclusive: bool = False) -> Iterator[None]:
        """Held for a whole build (shared) or a prune (exclusive)."""
        fd = self._root_fd()
        # What a killed build was writing (a step's tree, an image of 100s of MB): its
        # owner's lock is free, so nothing can still use it.
        self._sweep_tmp(stale_after=None)
        lock = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                       dir_fd=fd)
        with open(lock, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _sweep_tmp(self, *, stale_after: float | None) -> None:
        """Remove from tmp/ what a process of this host that no longer holds its owner lock
        left (its tmp/<tag>.* entries), and, with ``stale_after``, any other entry (another
        host's, or not tagged) unchanged for that long; then the free lock files."""
        with self._opened("tmp") as tmp, self._opened("locks") as locks:
            owners: dict[str, int | None] = {}
            try:
                for name in os.listdir(tmp):
                    tag = tag_of(name)
                    with contextlib.suppress(OSError):
                        if tag is None:
                            age = time.time() - os.lstat(name, dir_fd=tmp).st_mtime
                            if stale_after is None or age <= stale_after:
                                continue
                        elif not _owner_gone(locks, tag, owners):
                            continue
                        remove_at(tmp, name, ignore_errors=True)
                for name in os.listdir(locks):
                    if name.endswith(".lock"):
                        with contextlib.suppress(OSError):
                            _owner_gone(locks, name[:-len(".lock")], owners)
            finally:
                for tag, fd in owners.items():
                    if fd is not None and fd >= 0:
                        with contextlib.suppress(OSError):
                            os.unlink(f"{tag}.lock", dir_fd=locks)
                        os.close(fd)

    @property
    def mounts(self) -> MountCache:
        """The RUN --mount=type=cache directories: beside the steps, never in a key."""
        return MountCache(self.check, self.root)

    def stat_cache(self, context: Path, witness: Witness | None = None) -> StatCache:
        name = hashlib.sha256(os.fsencode(context)).hexdigest()[:32]
        with contextlib.suppress(FileExistsError):
            os.mkdir("stat", 0o700, dir_fd=self._root_fd())
        with self._opened("stat") as at:
            os.fchmod(at, 0o700)  # one an older acbuild-py made 0755
        return StatCache(self.opened_path() / "stat" / f"{name}.json", witness)

    def temp_dir(self, label: str = "") -> Path:
        """A new directory (0700) in tmp/, under this process's owner tag: the sweep leaves
        it alone while this store is open, and removes it once its owner is gone."""
        name = f"{owner_tag()}.{label}{secrets.token_hex(6)}"
        with self._opened("tmp") as tmp:
            os.mkdir(name, 0o700, dir_fd=tmp)
        return self.opened_path() / "tmp" / name

    def _publish(self, temp: Path, final: Path) -> None:
        """Rename a finished entry into place; a concurrent build that got there first wins."""
        try:
            os.rename(temp, final)
        except OSError:
            remove_tree(temp, ignore_errors=True)

    def discard(self, kind: str, key: str) -> None:
        """Take a damaged entry out of use at once (rename), then delete it."""
        trash = f"{owner_tag()}.bad-{secrets.token_hex(6)}"
        with self._opened(kind) as where, self._opened("tmp") as tmp, \
                contextlib.suppress(OSError):
            os.rename(_hex(key), trash, src_dir_fd=where, dst_dir_fd=tmp)
            remove_at(tmp, trash, ignore_errors=True)

    def _touch(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)

    # -- steps ------------------------------------------------------------------------------

    def _meta(self, kind: str, key: str) -> dict[str, object] | None:
        return _unseal_at(self._root_fd(), f"{kind}/{_hex(key)}/{_META}")

    def step(self, key: str) -> StepRecord | None:
        body = self._meta("steps", key)
        if body is None or body.get("kind") != "step":
            if self._dir("steps", key).exists():
                self.discard("steps", key)
            return None
        tree = str(body["tree"])
        if tree != key and self._meta("steps", tree) is None:
            return None  # its tree was pruned: the step runs again
        self._touch(self._dir("steps", key))
        return StepRecord(key=key, manifest_json=str(body["manifest"]).encode(), tree=tree,
                          import_origin=_origin(body, "imported_from")
                          or _origin(body, "built_on"))

    def put_step(self, key: str, manifest_json: bytes, *, rootfs: StagedRootfs | None,
                 tree: str | None, link: bool, known: KnownDigests | None = None,
                 imported_from: str | None = None, built_on: str | None = None) -> None:
        """Store a step: with ``rootfs`` a snapshot of it (hardlinked when ``link``: only
        safe when nothing will change those files in place), else a reference to ``tree``.
        ``known``: digests of linked files already read (used, and added to).
        ``imported_from``: the remote cache it came from; ``built_on``: that of an import
        the build storing it used. Both are kept so that what a --cache-from gave, and
        what may hold it, stays known after the option is gone (listed, prunable)."""
        if self._dir("steps", key).exists():
            return
        temp = self.temp_dir()
        try:
            body: dict[str, object] = {"kind": "step", "manifest": manifest_json.decode(),
                                       "tree": tree or key}
            if imported_from is not None:
                body["imported_from"] = imported_from
            elif built_on is not None:
                body["built_on"] = built_on
            if rootfs is not None:
                materialize(rootfs)  # a snapshot is of the staged tree alone
                digest, size = copy_tree_verified(
                    rootfs.root, temp / "tree", link=link, known=known,
                    final=self._dir("steps", key) / "tree")
                body.update(tree=key, digest=digest, bytes=size,
                            owners=sorted([r, u, g] for r, (u, g) in rootfs.owners.items()),
                            devices=sorted([r, d.kind, d.major, d.minor, d.mode]
                                           for r, d in rootfs.devices.items()))
            (temp / _META).write_bytes(_seal(body))
        except BaseException:
            remove_tree(temp, ignore_errors=True)
            raise
        self._publish(temp, self._dir("steps", key))

    def restore(self, record: StepRecord, root: Path, *, link: bool,
                known: KnownDigests | None = None, lazy: bool = False) -> StagedRootfs:
        """The rootfs of ``record`` rebuilt at ``root`` (which must not exist); raises
        CorruptTree (entry discarded) when the snapshot does not match its checksum.
        ``known`` receives the digests of the files linked (every one of them is read).
        ``lazy`` (a stage no RUN follows): the files are not linked but left in the entry's
        tree, the rootfs's lower tree; only files whose signature changed are read."""
        where = self._dir("steps", record.tree)
        body = _unseal(where / _META)
        if body is None or "digest" not in body:
            raise CorruptTree(f"cache entry {record.tree} is damaged")
        verified: KnownDigests = {}
        lower = None
        try:
            if lazy:
                recorded, verified_at = self._signatures(where, str(body["digest"]))
                tree = restore_lazily(where / "tree", root, recorded=recorded,
                                      digest=str(body["digest"]), known=verified)
                digest: str | None = tree.digest
                lower = LowerTree(source=Path(os.path.abspath(where / "tree")), dirs=tree.dirs,
                                  listings=tree.listings, max_bytes=tree.size,
                                  user_files=False)
            else:
                digest, _ = copy_tree_verified(where / "tree", root, link=link, known=verified)
        except (OSError, CorruptTree):
            digest = None
        if digest != body["digest"]:
            self.discard("steps", record.tree)
            raise CorruptTree(f"cache entry {record.tree} is damaged")
        if lazy and tree.signatures != recorded:
            # Kept with the time of the oldest full read: what was carried over from the
            # file was verified then, not now.
            self._save_signatures(where, str(body["digest"]), tree.signatures,
                                  verified_at if recorded.files else time.time())
        if known is not None:
            known.update(verified)
        self._touch(self._dir("steps", record.tree))
        rootfs = StagedRootfs(root=root, lower=lower)
        if lazy:
            # The files stay the entry's, writable by its owner: whatever takes their bytes
            # later compares them with what was verified here (see CacheFiles).
            rootfs.cached = CacheFiles(entry=record.tree, paths=tree.paths, files=tree.files,
                                       discard=functools.partial(self.discard, "steps"))
        for rel, uid, gid in body.get("owners", []):  # type: ignore[attr-defined]
            rootfs.owners[rel] = (uid, gid)
        for rel, kind, major, minor, mode in body.get("devices", []):  # type: ignore[attr-defined]
            rootfs.devices[rel] = DeviceNode(kind=kind, major=major, minor=minor, mode=mode)
        return rootfs

    def _signatures(self, where: Path, digest: str) -> tuple[TreeSignatures, float]:
        """The signatures kept for the tree with ``digest`` in the entry ``where``, and when
        the tree was last read whole; none when there are none, they are older than
        _SIGNATURES_TRUSTED_S, or the file is damaged or for another tree."""
        try:
            raw = (where / _SIGNATURES).read_bytes()
            check, _, payload = raw.partition(b"\n")
            if hashlib.sha256(payload).hexdigest().encode() != check:
                return NO_SIGNATURES, 0.0
            doc = json.loads(payload)
            verified_at = float(doc["verified"])
            if doc.get("format") != _SIGNATURES_FORMAT or doc["digest"] != digest or \
                    not 0 <= time.time() - verified_at < _SIGNATURES_TRUSTED_S:
                return NO_SIGNATURES, 0.0
            # The numbers are taken as they are: the payload's checksum matched, so they
            # are the ints written; one damaged otherwise only fails to match an lstat's.
            files: FileSignatures = {
                os.fsencode(rel): (dev, ino, size, mtime, ctime, bytes.fromhex(sha),
                                   bytes.fromhex(xattrs))
                for rel, (dev, ino, size, mtime, ctime, sha, xattrs) in doc["files"].items()}
            entries: EntrySignatures = {
                os.fsencode(rel): (dev, ino, size, mtime, ctime)
                for rel, (dev, ino, size, mtime, ctime) in doc.get("entries", {}).items()}
            listings = {str(rel): bytes.fromhex(listing)
                        for rel, listing in doc.get("listings", {}).items()}
            return TreeSignatures(files=files, entries=entries, listings=listings), verified_at
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return NO_SIGNATURES, 0.0

    def _save_signatures(self, where: Path, digest: str, signatures: TreeSignatures,
                         verified_at: float) -> None:
        """Keep ``signatures`` (all verified against ``digest``, the oldest of them at
        ``verified_at``) for the next restore; a file that cannot be written only means the
        tree is read again."""
        payload = json.dumps({
            "format": _SIGNATURES_FORMAT, "digest": digest, "verified": verified_at, "files": {
            os.fsdecode(rel): [*sig[:5], sig[5].hex(), sig[6].hex()]
            for rel, sig in signatures.files.items()},
            "entries": {os.fsdecode(rel): list(sig)
                        for rel, sig in signatures.entries.items()},
            "listings": {rel: listing.hex() for rel, listing in signatures.listings.items()}},
            separators=(",", ":")).encode()
        # Written aside under an owner tag and held (atomic_write_at, signals held while it is
        # made and removed), so what an interrupted or killed build left is swept here.
        with contextlib.suppress(OSError, AcbuildError):
            fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                sweep_at(fd, f".{_SIGNATURES}.", ".tmp")
                with atomic_write_at(fd, _SIGNATURES, mode=0o600) as f:
                    f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            finally:
                os.close(fd)

    # -- final images -----------------------------------------------------------------------

    def image(self, key: str) -> ImageRecord | None:
        body = self._meta("images", key)
        if body is None:
            return None
        return ImageRecord(key=key, image_id=str(body["image_id"]), size=int(body["size"]),  # type: ignore[call-overload]
                           uncompressed_size=int(body["uncompressed"]),  # type: ignore[call-overload]
                           entries=int(body["entries"]),  # type: ignore[call-overload]
                           manifest_json=str(body["manifest"]).encode(),
                           built_on=_origin(body, "built_on"))

    def put_image(self, key: str, image: Path, record: ImageRecord) -> None:
        if self._dir("images", key).exists():
            return
        temp = self.temp_dir()
        try:
            digest = _copy_hashing(image, temp / "image.aci")
            (temp / _META).write_bytes(_seal(_image_body(record, digest)))
        except BaseException:
            remove_tree(temp, ignore_errors=True)
            raise
        self._publish(temp, self._dir("images", key))

    @contextlib.contextmanager
    def image_draft(self, key: str) -> Iterator[ImageDraft | None]:
        """An entry for the image of ``key``, written alongside the output (None when the
        cache has it already); removed unless ``ImageDraft.commit`` published it."""
        if self._dir("images", key).exists():
            yield None
            return
        temp = self.temp_dir()
        try:
            draft = ImageDraft(key, temp, self._dir("images", key), self._publish)
        except BaseException:
            remove_tree(temp, ignore_errors=True)
            raise
        try:
            yield draft
        finally:
            draft.close()
            if not draft.published:
                remove_tree(temp, ignore_errors=True)

    def image_sha256(self, key: str) -> str | None:
        body = self._meta("images", key)
        return None if body is None else str(body.get("sha256"))

    def copy_image(self, record: ImageRecord, output: Path) -> bool:
        """Copy a cached image to ``output`` atomically, verifying it on the way; False (and
        the entry discarded, ``output`` untouched) when it is damaged."""
        where = self._dir("images", record.key)
        body = self._meta("images", record.key)
        if body is None:
            return False
        try:
            # Through the cache's descriptor, no symlink followed: what is served is the
            # entry of this cache, whatever its path names now.
            src_fd = open_beneath(self._root_fd(), f"images/{_hex(record.key)}/image.aci",
                                  os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            self.discard("images", record.key)
            return False
        try:
            with open(src_fd, "rb") as src, atomic_write(output) as out:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    raise CorruptTree(f"cache entry {record.key} is damaged")
                h = hashlib.sha256()
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                if h.hexdigest() != body["sha256"] or out.tell() != record.size:
                    raise CorruptTree(f"cache entry {record.key} is damaged")
        except CorruptTree:
            self.discard("images", record.key)
            return False
        self._touch(where)
        return True

    # -- listing and pruning ----------------------------------------------------------------

    def entries(self) -> list[EntryInfo]:
        found = []
        for kind, sub in (("step", "steps"), ("image", "images")):
            with self._opened(sub) as where:
                for name in os.listdir(where):
                    body = _unseal_at(where, f"{name}/{_META}")
                    size = 0 if body is None else int(body.get("bytes", body.get("size", 0)))  # type: ignore[call-overload]
                    with contextlib.suppress(OSError):
                        found.append(EntryInfo(
                            kind=kind, key="sha256:" + name, size=size,
                            last_used=os.lstat(name, dir_fd=where).st_mtime,
                            imported_from=None if body is None
                            else _origin(body, "imported_from"),
                            built_on=None if body is None else _origin(body, "built_on")))
        found += [EntryInfo(kind="mount", key=m.id, size=m.size, last_used=m.last_used)
                  for m in self.mounts.entries()]
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def prune(self, max_size: int, *, imported: bool = False) -> list[EntryInfo]:
        """Remove least recently used entries until the rest fit in ``max_size`` bytes;
        with ``imported``, the entries a --cache-from gave or that were built on one
        (whatever their size) instead."""
        with self.session(exclusive=True):
            self._sweep_tmp(stale_after=_STALE_TMP)
            kept, removed, total = self.entries(), [], 0
            for entry in kept:
                total += entry.size
                if (entry.imported_from or entry.built_on) if imported else total > max_size:
                    removed.append(entry)
            mounts = {m.id: m for m in self.mounts.entries()}
            done = []
            for entry in removed:
                if entry.kind != "mount":
                    self.discard("steps" if entry.kind == "step" else "images", entry.key)
                elif entry.key in mounts and not self.mounts.remove(mounts[entry.key]):
                    continue  # a RUN of a --no-cache build is using it: kept
                done.append(entry)
            return done


class ImageDraft:
    """The cache's copy of a final image, fed the compressed bytes as the finalizer writes
    them to the output (``write``: the tee), so the image is written once more but never
    read back, and hashed once. What is hashed is what this process wrote, not what is at
    the output's path afterwards. A write that fails (a full cache disk) only means the
    image is not cached: nothing more is written and ``commit`` publishes nothing."""

    def __init__(self, key: str, temp: Path, final: Path,
                 publish: Callable[[Path, Path], None]) -> None:
        self.key = key
        self.published = False
        self.error: OSError | None = None
        self._temp = temp
        self._final = final
        self._publish = publish
        self._sha = hashlib.sha256()
        self._size = 0
        self._file = open(temp / "image.aci", "xb")  # noqa: SIM115 - closed by close()

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if self.error is not None:
            return
        try:
            self._file.write(data)
        except OSError as e:
            self.error = e
            return
        self._sha.update(data)
        self._size += len(data)

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError as e:
                self.error = self.error or e

    def commit(self, record: ImageRecord) -> None:
        """Publish the entry: ``record`` describes the output, every byte of which went
        through ``write``. Raises the OSError a write met, if one did."""
        self.close()
        if self.error is not None:
            raise self.error
        if self._size != record.size or record.key != self.key:
            return  # not the bytes of that output: never stored as them
        (self._temp / _META).write_bytes(_seal(_image_body(record, self._sha.hexdigest())))
        self._publish(self._temp, self._final)
        self.published = True


def _copy_hashing(src: Path, dest: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as f, open(dest, "wb") as out:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()
