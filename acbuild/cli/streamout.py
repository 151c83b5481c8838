"""Outputs that are streams: ``-o -``, and ``-o`` naming a FIFO, a character device such as
/dev/null, or this process's stdout (/dev/stdout, /dev/fd/1).

Such an output is written into, never renamed over (acbuild.fs.atomic refuses that): the
image is made whole in a temporary file first, so its ID is known and a failed build writes
nothing, then copied in. A terminal is refused: an image is binary.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import click

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Stream:
    """Where an image streams: ``path`` (None: stdout itself, as ``-o -`` asks)."""

    path: Path | None
    # (st_dev, st_ino, file type, st_rdev) of what ``path`` named when the build began:
    # what is opened at the end must be it, not a terminal or file swapped in meanwhile
    # (red team RO-5); the type and rdev too, as a freed inode number is soon given again
    identity: tuple[int, int, int, int] | None = None

    @property
    def shown(self) -> str:
        return "-" if self.path is None else str(self.path)

    @property
    def is_stdout(self) -> bool:
        """Whether the image goes to stdout: what the command prints goes to stderr."""
        return self.path is None

    def copy_from(self, image: Path) -> None:
        """Write the file ``image`` into the stream."""
        with image.open("rb") as f:
            if self.path is None:
                _copy(f, sys.stdout.buffer)
                return
            with self._open() as out:
                _copy(f, out)

    def write(self, data: bytes) -> None:
        """Write ``data`` (an image ID) into the stream."""
        if self.path is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        with self._open() as out:
            out.write(data)

    def _open(self) -> BinaryIO:
        assert self.path is not None
        try:
            # O_CREAT off: a FIFO or device that vanished is not replaced by a file.
            fd = os.open(self.path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise click.ClickException(f"cannot write {self.path}: {e.strerror or e}") from None
        st = os.fstat(fd)
        if _identity(st) != self.identity:
            os.close(fd)
            raise click.ClickException(f"cannot write {self.path}: it is no longer the FIFO "
                                       "or device it was when the build began")
        return os.fdopen(fd, "wb")


def _copy(src: BinaryIO, out: BinaryIO) -> None:
    while chunk := src.read(_CHUNK):
        out.write(chunk)
    out.flush()


def stream_for(path: Path | None, option: str = "-o", *,
               binary: bool = True) -> Stream | None:
    """The stream ``path`` names, or None when it names a file to write atomically (or
    nothing: the default output). Refuses a terminal for ``binary`` data (an image)."""
    if path is None:
        return None
    if path == Path("-"):
        if sys.stdout.isatty():
            raise click.UsageError(f"{option} - would write the image to the terminal: "
                                   f"redirect stdout, or name a file with {option} FILE")
        return Stream(None)
    try:
        st = os.stat(path)
    except OSError:
        return None  # a new file (or an error that writing it will name)
    if _is_stdout(st):
        if binary and sys.stdout.isatty():
            raise click.UsageError(f"{option} {path} is the terminal: redirect stdout, or "
                                   f"name a file with {option} FILE")
        return Stream(None)
    if not (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        return None
    if binary and stat.S_ISCHR(st.st_mode) and _is_terminal(path):
        raise click.UsageError(f"{option} {path} is a terminal, and an image is binary: "
                               f"name a file with {option} FILE")
    return Stream(path, _identity(st))


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), st.st_rdev


def _is_stdout(st: os.stat_result) -> bool:
    try:
        out = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino)


def _is_terminal(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # opening it at the end will say why
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)
