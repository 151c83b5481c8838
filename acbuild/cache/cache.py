"""Step cache (execute stage): the store of step results and final images, by key.

``steps/<key>/`` holds meta.json (manifest, owners, devices, the digest of the tree) and, for
rootfs steps, ``tree/`` and, once a restore has hashed the tree, ``signatures`` (what lets
the next restore skip reading the files whose inodes are unchanged, see
acbuild.cache.snapshot.FileSignatures); ``images/<key>/`` a finished .aci. Entries are
built in ``tmp/`` and renamed into place; a build holds a shared flock on ``lock``,
``prune`` an exclusive one. Every use verifies the stored checksum (a tree's files by content
or by unchanged signature): a damaged entry is removed and rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import secrets
import time
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
from acbuild.fs.atomic import atomic_write
from acbuild.fs.leftovers import owner_tag, sweep
from acbuild.fs.private import private_dir
from acbuild.fs.staging import CacheFiles, DeviceNode, LowerTree, StagedRootfs, remove_tree
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


class CorruptTree(AcbuildError):
    """A cache entry does not match its checksum."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    key: str
    manifest_json: bytes
    tree: str  # key of the entry whose tree/ holds the rootfs after this step


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRecord:
    key: str
    image_id: str
    size: int
    uncompressed_size: int
    entries: int
    manifest_json: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryInfo:
    kind: str  # "step" or "image"
    key: str
    size: int
    last_used: float


def _hex(key: str) -> str:
    return key.split(":", 1)[-1]


def _seal(body: dict[str, object]) -> bytes:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({"body": body, "sha256": hashlib.sha256(raw).hexdigest()},
                      sort_keys=True, separators=(",", ":")).encode()


def _unseal(path: Path) -> dict[str, object] | None:
    """The body of a meta.json whose checksum matches; None when missing or damaged."""
    try:
        doc = json.loads(path.read_bytes())
        body = doc["body"]
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if hashlib.sha256(raw).hexdigest() == doc["sha256"] and isinstance(body, dict):
            return body
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


class CacheStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    # -- layout and locking -----------------------------------------------------------------

    def check(self) -> None:
        """Make the cache directory, or refuse one another user could write into: a planted
        entry would be copied into images as if this build had made it."""
        private_dir(self.root, what="step cache")

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / _hex(key)

    @contextlib.contextmanager
    def session(self, *, exclusive: bool = False) -> Iterator[None]:
        """Held for a whole build (shared) or a prune (exclusive)."""
        self.check()
        for sub in ("steps", "images", "tmp"):
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        # What a killed build was writing (a step's tree, an image of 100s of MB): its
        # process is gone, so nothing can still use it; prune's age rule catches the rest.
        sweep(self.root / "tmp", "")
        with open(self.root / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @property
    def mounts(self) -> MountCache:
        """The RUN --mount=type=cache directories: beside the steps, never in a key."""
        return MountCache(self.root / "mounts")

    def stat_cache(self, context: Path, witness: Witness | None = None) -> StatCache:
        name = hashlib.sha256(os.fsencode(context)).hexdigest()[:32]
        return StatCache(self.root / "stat" / f"{name}.json", witness)

    def _temp(self) -> Path:
        path = self.root / "tmp" / f"{owner_tag()}.{secrets.token_hex(6)}"
        path.mkdir(parents=True)
        return path

    def _publish(self, temp: Path, final: Path) -> None:
        """Rename a finished entry into place; a concurrent build that got there first wins."""
        try:
            os.rename(temp, final)
        except OSError:
            remove_tree(temp, ignore_errors=True)

    def discard(self, kind: str, key: str) -> None:
        """Take a damaged entry out of use at once (rename), then delete it."""
        path = self._dir(kind, key)
        trash = self.root / "tmp" / f"bad-{secrets.token_hex(6)}"
        with contextlib.suppress(OSError):
            os.rename(path, trash)
            remove_tree(trash, ignore_errors=True)

    def _touch(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)

    # -- steps ------------------------------------------------------------------------------

    def step(self, key: str) -> StepRecord | None:
        body = _unseal(self._dir("steps", key) / _META)
        if body is None or body.get("kind") != "step":
            if self._dir("steps", key).exists():
                self.discard("steps", key)
            return None
        tree = str(body["tree"])
        if tree != key and _unseal(self._dir("steps", tree) / _META) is None:
            return None  # its tree was pruned: the step runs again
        self._touch(self._dir("steps", key))
        return StepRecord(key=key, manifest_json=str(body["manifest"]).encode(), tree=tree)

    def put_step(self, key: str, manifest_json: bytes, *, rootfs: StagedRootfs | None,
                 tree: str | None, link: bool, known: KnownDigests | None = None) -> None:
        """Store a step: with ``rootfs`` a snapshot of it (hardlinked when ``link``: only
        safe when nothing will change those files in place), else a reference to ``tree``.
        ``known``: digests of linked files already read (used, and added to)."""
        if self._dir("steps", key).exists():
            return
        temp = self._temp()
        try:
            body: dict[str, object] = {"kind": "step", "manifest": manifest_json.decode(),
                                       "tree": tree or key}
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
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return NO_SIGNATURES, 0.0

    def _save_signatures(self, where: Path, digest: str, signatures: TreeSignatures,
                         verified_at: float) -> None:
        """Keep ``signatures`` (all verified against ``digest``, the oldest of them at
        ``verified_at``) for the next restore; not synced: a lost or torn file only means
        the tree is read again."""
        payload = json.dumps({
            "format": _SIGNATURES_FORMAT, "digest": digest, "verified": verified_at, "files": {
            os.fsdecode(rel): [*sig[:5], sig[5].hex(), sig[6].hex()]
            for rel, sig in signatures.files.items()},
            "entries": {os.fsdecode(rel): list(sig)
                        for rel, sig in signatures.entries.items()},
            "listings": {rel: listing.hex() for rel, listing in signatures.listings.items()}},
            separators=(",", ":")).encode()
        temp = where / f".{_SIGNATURES}.{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(temp, "xb") as f:
                f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            os.replace(temp, where / _SIGNATURES)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp)

    # -- final images -----------------------------------------------------------------------

    def image(self, key: str) -> ImageRecord | None:
        body = _unseal(self._dir("images", key) / _META)
        if body is None:
            return None
        return ImageRecord(key=key, image_id=str(body["image_id"]), size=int(body["size"]),  # type: ignore[call-overload]
                           uncompressed_size=int(body["uncompressed"]),  # type: ignore[call-overload]
                           entries=int(body["entries"]),  # type: ignore[call-overload]
                           manifest_json=str(body["manifest"]).encode())

    def put_image(self, key: str, image: Path, record: ImageRecord) -> None:
        if self._dir("images", key).exists():
            return
        temp = self._temp()
        try:
            digest = _copy_hashing(image, temp / "image.aci")
            (temp / _META).write_bytes(_seal({
                "kind": "image", "image_id": record.image_id, "size": record.size,
                "uncompressed": record.uncompressed_size, "entries": record.entries,
                "manifest": record.manifest_json.decode(), "sha256": digest,
            }))
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
        temp = self._temp()
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
        body = _unseal(self._dir("images", key) / _META)
        return None if body is None else str(body.get("sha256"))

    def copy_image(self, record: ImageRecord, output: Path) -> bool:
        """Copy a cached image to ``output`` atomically, verifying it on the way; False (and
        the entry discarded, ``output`` untouched) when it is damaged."""
        where = self._dir("images", record.key)
        body = _unseal(where / _META)
        if body is None:
            return False
        try:
            with atomic_write(output) as out, open(where / "image.aci", "rb") as src:
                h = hashlib.sha256()
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                if h.hexdigest() != body["sha256"] or out.tell() != record.size:
                    raise CorruptTree(f"cache entry {record.key} is damaged")
        except (CorruptTree, FileNotFoundError):
            self.discard("images", record.key)
            return False
        self._touch(where)
        return True

    # -- listing and pruning ----------------------------------------------------------------

    def entries(self) -> list[EntryInfo]:
        self.check()
        found = []
        for kind, sub in (("step", "steps"), ("image", "images")):
            with contextlib.suppress(FileNotFoundError):
                for child in os.scandir(self.root / sub):
                    body = _unseal(Path(child.path) / _META)
                    size = 0 if body is None else int(body.get("bytes", body.get("size", 0)))  # type: ignore[call-overload]
                    found.append(EntryInfo(kind=kind, key="sha256:" + child.name, size=size,
                                           last_used=child.stat().st_mtime))
        found += [EntryInfo(kind="mount", key=m.id, size=m.size, last_used=m.last_used)
                  for m in self.mounts.entries()]
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def prune(self, max_size: int) -> list[EntryInfo]:
        """Remove least recently used entries until the rest fit in ``max_size`` bytes."""
        with self.session(exclusive=True):
            self._clean_tmp()
            kept, removed, total = self.entries(), [], 0
            for entry in kept:
                total += entry.size
                if total > max_size:
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

    def _clean_tmp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for child in os.scandir(self.root / "tmp"):
                if time.time() - child.stat(follow_symlinks=False).st_mtime > _STALE_TMP:
                    remove_tree(Path(child.path), ignore_errors=True)


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
        (self._temp / _META).write_bytes(_seal({
            "kind": "image", "image_id": record.image_id, "size": record.size,
            "uncompressed": record.uncompressed_size, "entries": record.entries,
            "manifest": record.manifest_json.decode(), "sha256": self._sha.hexdigest(),
        }))
        self._publish(self._temp, self._final)
        self.published = True


def _copy_hashing(src: Path, dest: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as f, open(dest, "wb") as out:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()
