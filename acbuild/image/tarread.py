"""Tar reading (execute stage): hostile tar streams as checked members, for every reader.

``members()`` walks a stream under Limits and checks its end-of-archive block; ``clean_name``
and ``strip_prefix`` turn an archive name into a path below the root; errors become ImageError.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import math
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from acbuild.errors import AcbuildError, ImageError

CHUNK = 1 << 20
_TAIL = 1 << 16  # bytes of the stream kept to check the end-of-archive block


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on what one archive may make us do (tar bombs, endless headers)."""

    max_total_bytes: int = 64 << 30
    max_entries: int = 5_000_000
    max_path: int = 4096
    max_manifest: int = 1 << 20


MAX_EXTENDED_HEADER = 1 << 20  # a PAX or GNU long-name record; real ones are a few KiB
# Numbers a header may hold (PAX and GNU base-256 fields hold any): what the kernel, utime in
# nanoseconds and our own tar writer can take. Anything else is refused where it is read.
MAX_ID = 2**32 - 2  # uid_t; (uid_t)-1 means "leave unchanged" to chown
MAX_DEVICE = 0o7777777  # the ustar field tarwrite writes devices in (Linux needs 2**20)
MAX_MTIME = 2**33  # seconds either side of 1970: beyond the year 2242
MAX_MEMBER = Limits().max_total_bytes


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a PAX or GNU long-name record into memory whole, whatever size its
    header claims: refuse absurd ones before they are read (a 2 MB gzip can claim 640 MB)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if self.type in extended and self.size > MAX_EXTENDED_HEADER:
            raise ImageError(
                f"archive has an extended header of {self.size} bytes "
                f"(at most {MAX_EXTENDED_HEADER}): refusing to read it"
            )
        # _proc_member is private but unchanged since Python 2; typeshed does not list it.
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        check_numbers(member)
        return member


def check_numbers(member: tarfile.TarInfo) -> None:
    """Refuse a member whose numbers no file can have (a PAX ``uid`` of 10**30, an ``mtime``
    of ``nan``, a 2**40 device major): later they would overflow chown, utime or a header."""
    def bad(what: str, value: object) -> ImageError:
        return ImageError(f"archive entry {member.name[:200]!r} has an out-of-range {what}: "
                          f"{str(value)[:40]}")

    for what, value, top in (("uid", member.uid, MAX_ID), ("gid", member.gid, MAX_ID),
                             ("size", member.size, MAX_MEMBER), ("mode", member.mode, 2**32 - 1)):
        if not isinstance(value, int) or not 0 <= value <= top:
            raise bad(what, value)
    mtime = member.mtime
    if not isinstance(mtime, int | float) or not math.isfinite(mtime) or abs(mtime) >= MAX_MTIME:
        raise bad("mtime", mtime)
    if member.ischr() or member.isblk():
        for what, value in (("device major", member.devmajor), ("device minor", member.devminor)):
            if not 0 <= value <= MAX_DEVICE:
                raise bad(what, value)


class TarSource:
    """The stream tarfile reads: counts bytes, keeps the tail, optionally hashes."""

    def __init__(self, raw: IO[bytes], *, hasher: hashlib._Hash | None = None) -> None:
        self._raw = raw
        self.hasher = hasher
        self.total = 0
        self._tail = bytearray()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.total += len(data)
        if self.hasher is not None:
            self.hasher.update(data)
        self._tail += data
        if len(self._tail) > 2 * _TAIL:
            del self._tail[: len(self._tail) - _TAIL]
        return data

    def block_at(self, offset: int) -> bytes:
        """The 512 bytes at ``offset``, reading on if needed; short if the stream ends."""
        while self.total < offset + 512:
            if not self.read(CHUNK):
                break
        start = offset - (self.total - len(self._tail))
        if start < 0:
            raise ImageError("archive is corrupt: cannot find its end")
        return bytes(self._tail[start : start + 512])

    def drain(self, limit: int) -> None:
        """Read to the end so the decompressor checks its trailer (gzip CRC)."""
        left = limit
        while data := self.read(CHUNK):
            left -= len(data)
            if left < 0:
                raise ImageError("archive has too much data after its end")


@contextlib.contextmanager
def archive_errors() -> Iterator[None]:
    """Turn what tarfile and the decompressors raise into ImageError."""
    try:
        yield
    except ImageError as e:
        # the decompressors' word for a cut stream; say it plainly
        if "end-of-stream" in e.message or "ended before" in e.message:
            raise ImageError("archive is truncated") from None
        raise
    except AcbuildError:
        raise
    except EOFError:
        raise ImageError("archive is truncated") from None
    except tarfile.ReadError as e:
        if "unexpected end of data" in str(e) or "truncated" in str(e):
            raise ImageError("archive is truncated") from None
        if "empty file" in str(e):
            raise ImageError("archive is empty") from None
        raise ImageError(f"archive is corrupt: {e}") from None
    except (tarfile.TarError, zlib.error, lzma.LZMAError, OSError, ValueError) as e:
        raise ImageError(f"archive is corrupt: {e}") from None


def members(
    source: TarSource, limits: Limits, *, allow_absolute: bool = False
) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Each member of the tar in ``source``, in order, with the limits on names and
    counts enforced; at the end the end-of-archive block is checked and the rest read.

    An ACI's entries are relative (``manifest``, ``rootfs/...``); one named ``/manifest`` is
    refused, as actool does, unless ``allow_absolute`` (Docker layers, ``validate``)."""
    with archive_errors():
        tar = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115
            fileobj=source, mode="r|", tarinfo=BoundedTarInfo)
        count = 0
        while (member := tar.next()) is not None:
            # stream mode still appends every member to a list; keep memory flat
            tar.members.clear()
            count += 1
            if count > limits.max_entries:
                raise ImageError(f"archive has more than {limits.max_entries} entries")
            if not allow_absolute:
                refuse_absolute(member)
            for text in (member.name, member.linkname):
                if len(os.fsencode(text)) > limits.max_path:
                    raise ImageError(
                        f"archive entry name is longer than {limits.max_path} bytes: "
                        f"{text[:60]!r}..."
                    )
            yield member, tar
        _check_end(source, tar.offset, limits)


def _check_end(source: TarSource, offset: int, limits: Limits) -> None:
    # tarfile stops silently at EOF or at a bad header after the first one; only an
    # end-of-archive block tells a complete archive from a cut or corrupt one
    block = source.block_at(offset)
    if len(block) < 512:
        raise ImageError("archive is truncated")
    if block.count(0) != 512:
        raise ImageError(f"archive is corrupt: invalid tar header at offset {offset}")
    source.drain(limits.max_total_bytes)


def absolute_name_problem(member: tarfile.TarInfo) -> str | None:
    """An entry named (or hardlinked to) an absolute path, which no ACI has."""
    for what, text in (("entry", member.name), ("hardlink target", member.linkname)):
        if text.startswith("/") and (what == "entry" or member.islnk()):
            return (f"archive {what} {text!r} is an absolute name "
                    "(an ACI's entries are 'manifest' and 'rootfs/...')")
    return None


def refuse_absolute(member: tarfile.TarInfo) -> None:
    if (problem := absolute_name_problem(member)) is not None:
        raise ImageError(problem)


def clean_name(unsafe_name: str) -> str:
    """An archive name as a relative POSIX path ("" for the root); ``..`` resolved
    lexically, a leading ``/`` dropped; climbing above the root is an ImageError."""
    parts: list[str] = []
    for part in unsafe_name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ImageError(f"archive entry {unsafe_name!r} points outside the image")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def strip_prefix(name: str, prefix: str) -> str | None:
    """``name`` (already clean) below ``prefix`` ("rootfs/"), or None if outside it."""
    if not prefix:
        return name
    top = prefix.rstrip("/")
    if name == top:
        return ""
    if name.startswith(top + "/"):
        return name[len(top) + 1 :]
    return None
