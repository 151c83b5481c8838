"""The warm record: a no-op rebuild answered by stat, without rendering or parsing.

After a build whose every input could be witnessed, the build cache keeps a record keyed by
the invocation (Acfile path, variables, options, SOURCE_DATE_EPOCH, working directory, ...):
the stat signature of each file, directory and symlink the build's keys were computed from
(the Acfile, var files, base trees, COPY sources and the directories on their paths), the
output's signature and SHA-256, and what the build reported. A later identical invocation
whose every signature still matches is the same build: the image is already at the output.

This module only imports the standard library and the lowest layers, so that the CLI can
answer a no-op before it loads the template engine, the parser or the rest of the builder.

What a hit trusts: a (dev, inode, mode, owner, size, mtime, ctime) signature taken when the
file had settled (see ``settled``) — the stat cache's rule. Changing a file through a system
call changes its ctime, which no user can set back; a store through a shared writable mapping
into a page already dirty changes none, so an input written that way is trusted unchanged
(as the stat cache trusts it). The output is first checked by its SHA-256, and its signature
trusted from then on only if it had settled before a flush that write-protects every mapping
of it (``_output_unchanged``): a store after that moves its ctime.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from acbuild import __version__
from acbuild.fs.private import UnsafeDirectory, open_private_dir
from acbuild.report import Field, Reporter, StepInfo

# 3: a directory's inputs are its names and one digest of their signatures;
# 4: the digest is of packed signatures (``_PACKED``), not of their decimal text
_FORMAT = 4
# The step cache's format (statcache's keys start with it), kept here so the warm record's
# key has it too. Bump when anything that decides a step's result changes meaning (copy
# rules, snapshot format): old entries, and records, then simply stop matching.
# 2: WORKDIR makes its directory; 3: xattrs are length-framed (snapshot digests changed);
# 4: a base directory's key has its xattrs, hardlinks, clamped mtimes and nodes' modes
FORMAT_VERSION = b"acbuild-py step cache 4"
# A change made after a stat must show in the signature: its times must be older than the
# stat by more than the clock's tick and than an attribute cache may lag (NFS: 3 s).
_MTIME_NS = 3_000_000_000
# ctime on a filesystem with sub-second times: only a writer that also resets the mtime, in
# the same clock tick as our stat, could go unseen. Builds that hardlink a base directory
# change its files' ctimes (link, unlink): with the 3 s window every build in the next 3 s
# would read the whole base again.
_FINE_CTIME_NS = 100_000_000
Signature = tuple[int, ...]
_FIELDS = ("st_dev", "st_ino", "st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns",
           "st_ctime_ns")
# The signature's numbers of a stat, in one C call (a no-op takes it of every input).
_numbers = attrgetter(*_FIELDS)
# An entry as the record's digest of a directory takes it: "+" and the signature's eight
# numbers (native 64-bit: the record never leaves the host), or "-" and zeros when the name
# was absent. A fixed size and a kind byte: no two lists of entries pack alike. Packing
# is ~3x cheaper than formatting the numbers as text, for 20,000 inputs a no-op.
_PACKED = struct.Struct("=c8q")
_pack = _PACKED.pack
_ABSENT_PACKED = _pack(b"-", *(0,) * len(_FIELDS))
_DIR_STEP = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "acbuild-py" / "build-cache"


def settled(st: os.stat_result, now_ns: int) -> bool:
    """Whether a write after a stat taken at ``now_ns`` must change the signature it gave:
    its mtime and ctime are clock ticks older than the stat (git's "racy clean" problem)."""
    ctime_window = _MTIME_NS if st.st_ctime_ns % 1_000_000_000 == 0 else _FINE_CTIME_NS
    return now_ns - st.st_mtime_ns > _MTIME_NS and now_ns - st.st_ctime_ns > ctime_window


def signature(st: os.stat_result) -> Signature:
    numbers: Signature = _numbers(st)
    return numbers


class _Seen:
    """What a witness saw in one directory, in the order it saw it, packed (~80 bytes an
    entry, no object of its own: a build of 100,000 files held ~21 MB of tuples here):
    the names, each as its bytes and a "/" (which no name holds), and for each a kind byte
    (``follow`` as "1" or "0") and its packed signature (``_PACKED``)."""

    __slots__ = ("follows", "names", "packed")

    def __init__(self) -> None:
        self.names = bytearray()
        self.follows = bytearray()
        self.packed = bytearray()

    def add(self, name: str, follow: bool, packed: bytes) -> None:
        self.names += name.encode("utf-8", "surrogateescape") + b"/"  # as os.fsencode
        self.follows += b"1" if follow else b"0"
        self.packed += packed

    def entries(self) -> dict[tuple[str, str], bytes]:
        """(name, follow) -> packed signature, the last seen of each, in the order each
        was first seen (a name seen twice, as a path's component and as a source, is
        one input)."""
        names = bytes(self.names[:-1]).decode("utf-8", "surrogateescape").split("/")
        size, packed = _PACKED.size, memoryview(self.packed)
        found: dict[tuple[str, str], bytes] = {}
        for i, (name, follow) in enumerate(zip(names, self.follows.decode(), strict=True)):
            found[name, follow] = packed[i * size:(i + 1) * size].tobytes()
        return found


class Witness:
    """Collects what a build's cache keys read. ``complete`` is False once something was
    read that a signature cannot stand for (a name looked up in a store, a file that had
    not settled, an input this module does not know): no record is then kept."""

    def __init__(self) -> None:
        self.started_ns = time.time_ns()
        self._seen: dict[str, _Seen] = {}  # by directory
        self.why_not: str | None = None

    @property
    def complete(self) -> bool:
        return self.why_not is None

    def incomplete(self, why: str) -> None:
        if self.why_not is None:
            self.why_not = why

    def seen(self, path: str | Path, st: os.stat_result, *, follow: bool = False) -> None:
        """``path`` (absolute) had ``st`` (an lstat, or a stat with ``follow``)."""
        if not settled(st, self.started_ns):
            self.incomplete(f"{path} changed moments ago")
        self._add(os.fsdecode(path), follow, _pack(b"+", *_numbers(st)))

    def _add(self, path: str, follow: bool, packed: bytes) -> None:
        # Once a file of every key: rpartition, not os.path.split (a Python function).
        directory, _, name = path.rpartition("/")
        if not directory:
            directory, name = os.path.split(path)  # "/name", or one with no "/" at all
        seen = self._seen.get(directory)
        if seen is None:
            seen = self._seen[directory] = _Seen()
        seen.add(name, follow, packed)

    def look(self, path: str | Path, *, follow: bool = False) -> None:
        """Stat ``path`` now: its signature, or that it does not exist."""
        name = os.fsdecode(path)
        try:
            st = os.stat(name) if follow else os.lstat(name)
        except FileNotFoundError:
            self._add(name, follow, _ABSENT_PACKED)
            return
        except OSError as e:
            self.incomplete(f"{name}: {e.strerror}")
            return
        self.seen(name, st, follow=follow)

    def inputs(self) -> list[list[str]]:
        """What the record keeps: [[directory, names, follows, digest], ...], checked with
        one descriptor a directory, so the kernel walks each path once, not once a file.
        A directory's entries are its names joined by "/", whether each is followed ("1"
        or "0"), and the SHA-256 of their packed signatures in that order: a record of
        100,000 files loads as a few thousand strings, where a list of numbers a file
        took ~0.5 KB each (the whole record in memory at once, for a no-op that only
        compares). One directory's entries are unpacked at a time."""
        records = []
        for directory, seen in self._seen.items():
            entries = seen.entries()
            records.append([directory, "/".join(name for name, _ in entries),
                            "".join(follow for _, follow in entries),
                            hashlib.sha256(b"".join(entries.values())).hexdigest()])
        return records


def invocation_key(fields: Iterable[tuple[str, object]]) -> str:
    """The key of one invocation of ``build``: every option that can change the image, with
    this program's version and the host it runs on."""
    doc = [["format", _FORMAT, FORMAT_VERSION.decode()], ["version", __version__],
           ["platform", sys.platform, os.uname().machine],
           ["cwd", os.getcwd()], *([k, v] for k, v in fields)]
    raw = json.dumps(doc, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmResult:
    """What a hit reports: the steps (all cached), the image and where it is."""

    steps: tuple[StepInfo, ...]
    image_id: str
    name: str
    version: str | None
    size: int
    uncompressed_size: int
    entries: int
    output: Path


def _record_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "warm" / f"{key}.json"


def store(cache_dir: Path, key: str, witness: Witness, result: WarmResult,
          output_sha256: str) -> None:
    """Keep the record of a build whose inputs ``witness`` saw; the output is stat'ed now."""
    if not witness.complete:
        return
    try:
        st = os.lstat(result.output)
    except OSError:
        return
    body: dict[str, object] = {
        "inputs": witness.inputs(),
        # Never trusted by stat at once, even settled (an output left in place): a shared
        # mapping of it may be writable without a fault; see _output_unchanged.
        "output": [os.fsdecode(result.output), list(signature(st)), False, output_sha256],
        "steps": [[s.number, s.total, s.text, s.stage] for s in result.steps],
        "image": [result.image_id, result.name, result.version, result.size,
                  result.uncompressed_size, result.entries],
    }
    _write(_record_path(cache_dir, key), body)


def _write(path: Path, body: dict[str, object]) -> None:
    # Not at the top: a no-op writes only when it first trusts the output's stat.
    from acbuild.fs.atomic import atomic_write

    raw = json.dumps(body, separators=(",", ":")).encode()
    with contextlib.suppress(OSError, ValueError):
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with atomic_write(path) as f:
            f.write(hashlib.sha256(raw).hexdigest().encode() + b"\n" + raw)
    # Only a speed-up: a record that cannot be written is a full no-op next time.


def _read(cache_dir: Path, key: str) -> Any:
    """The record's body (JSON, checked by the code reading it); None when damaged, or
    when the cache directory is not one only this user (or root) controls, path included
    (a record planted there would make a build report success without building): read
    through the directory opened and checked, no symlink followed below it."""
    try:
        top = open_private_dir(cache_dir, what="step cache", create=False)
    except UnsafeDirectory:
        return None
    try:
        # Each of the two components with O_NOFOLLOW, relative to the one before: what
        # open_beneath does, without loading ctypes for openat2 on a no-op's path.
        warm_dir = os.open("warm", _DIR_STEP, dir_fd=top)
        try:
            fd = os.open(f"{key}.json", os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                         | os.O_CLOEXEC, dir_fd=warm_dir)
        finally:
            os.close(warm_dir)
        with open(fd, "rb") as f:
            data = f.read() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else b""
    except (OSError, ValueError):
        return None
    finally:
        os.close(top)
    digest, _, raw = data.partition(b"\n")
    if hashlib.sha256(raw).hexdigest().encode() != digest:
        return None
    with contextlib.suppress(ValueError, RecursionError):  # RecursionError: nested too deep
        body = json.loads(raw)
        if isinstance(body, dict):
            return body
    return None


def _inputs_unchanged(inputs: Any) -> bool:
    for directory, joined, follows, digest in inputs:
        if not (isinstance(directory, str) and isinstance(joined, str)
                and isinstance(follows, str) and isinstance(digest, str)):
            return False
        names = joined.split("/")
        if len(names) != len(follows):
            return False
        try:
            fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            packed = _directory_now(fd, names, follows)
        finally:
            os.close(fd)
        if packed is None or hashlib.sha256(packed).hexdigest() != digest:
            return False
    return True


def _directory_now(fd: int, names: list[str], follows: str) -> bytes | None:
    """The packed signatures of ``names`` below ``fd`` now, as ``Witness.inputs`` hashed
    them; None when one cannot be taken. The hot loop of a no-op (one pass per input):
    its lookups are bound once, and a directory with no followed name (all but the roots)
    takes the loop without the flag."""
    stat_, pack, numbers, absent = os.stat, _pack, _numbers, _ABSENT_PACKED
    out: list[bytes] = []
    add = out.append
    try:
        if "1" not in follows:
            for name in names:
                try:
                    add(pack(b"+", *numbers(stat_(name, dir_fd=fd, follow_symlinks=False))))
                except FileNotFoundError:
                    add(absent)
        else:
            for name, follow in zip(names, follows, strict=True):
                try:
                    add(pack(b"+", *numbers(stat_(name, dir_fd=fd,
                                                  follow_symlinks=follow == "1"))))
                except FileNotFoundError:
                    add(absent)
    except (OSError, ValueError):
        return None
    return b"".join(out)


def _output_unchanged(path: Path, output: Any) -> bool | None:
    """True when the output is what was written; None when it is, and the record may now
    trust its signature (it was hashed, after a flush, and had settled before it).

    A store through a shared writable mapping moves no time while the page is dirty and
    writable: a mapping made before the signature was taken could change the output
    unseen. Flushing it (fdatasync) writes every dirty page back and write-protects every
    mapping of it, so each later store faults, which sets the ctime: a signature settled
    before the flush then changes with any store after it. (Only where the filesystem
    writes back: tmpfs never write-protects a mapping, see docs/security.md.)"""
    _, sig, was_settled, sha256 = output
    if was_settled:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and signature(st) == tuple(sig)
    before = time.time_ns()  # settled is judged before the flush
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    with open(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or signature(st) != tuple(sig):
                return False
            try:
                os.fdatasync(fd)
                flushed = True
            except OSError:
                flushed = False  # still a hit, after the hash; never trusted by stat
            if hashlib.file_digest(f, "sha256").hexdigest() != sha256:
                return False
            if signature(os.fstat(fd)) != tuple(sig):
                return False
        except OSError:
            return False
    return None if flushed and settled(st, before) else True


def check(cache_dir: Path, key: str) -> WarmResult | None:
    """The recorded result when nothing the build read has changed and the output is still
    the image it wrote (with no signature beside it); None otherwise."""
    body = _read(cache_dir, key)
    if body is None:
        return None
    try:
        inputs, output, steps, image = (body["inputs"], body["output"], body["steps"],
                                        body["image"])
        out = Path(output[0])
        if not _inputs_unchanged(inputs):
            return None
        if os.path.lexists(str(out) + ".asc"):
            return None  # a full build removes a stale signature: leave that to it
        unchanged = _output_unchanged(out, output)
        if unchanged is False:
            return None
        if unchanged is None:
            _write(_record_path(cache_dir, key),
                   {**body, "output": [output[0], output[1], True, output[3]]})
        image_id, name, version, size, uncompressed, entries = image
        return WarmResult(
            steps=tuple(StepInfo(number=n, total=t, text=x, stage=s) for n, t, x, s in steps),
            image_id=str(image_id), name=str(name),
            version=None if version is None else str(version), size=int(size),
            uncompressed_size=int(uncompressed), entries=int(entries), output=out)
    except (KeyError, TypeError, ValueError, IndexError, OSError):
        return None


def replay(result: WarmResult, reporter: Reporter) -> None:
    """Tell the reporter what a build that found everything cached tells it."""
    for step in result.steps:
        reporter.step_started(step)
        reporter.step_finished(step, 0.0, cached=True)


def summary(*, name: str, version: str | None, image_id: str, size: int, uncompressed: int,
            entries: int, signatures: tuple[str, ...], output: Path | None,
            seconds: float, pushed: tuple[Field, ...] = ()) -> tuple[Field, ...]:
    """The closing table of a build (a full one and a warm hit say the same)."""
    # Counted as inspect counts them: the entries below rootfs/ (the written total also has
    # the manifest and rootfs/ itself).
    return (
        Field("name", "name", name),
        Field("image_version", "version", version),
        Field("image_id", "image ID", image_id),
        Field("size", "compressed size", size, "bytes"),
        Field("uncompressed_size", "uncompressed size", uncompressed, "bytes"),
        Field("entries", "entries", entries - 2 if entries else None),
        Field("signatures", "signature", signatures),
        Field("output", "output", None if output is None else str(output)),
        *pushed,
        Field("seconds", "time", seconds, "seconds"),
    )
