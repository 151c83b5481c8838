"""A `BEGIN <directory>`'s key covers everything the image takes from the directory
(red-team RK-7): its files' and directories' xattrs (file capabilities included), which of
its paths share an inode, the mtimes the finalizer keeps (those before the epoch) and a
node's permission bits. Each change below, made after a cached build, must give the image
a `--no-cache` build of the same inputs gives, through the real CLI; before, the step was
CACHED and the image kept what the base no longer held. And the stat cache's memo of a
file's xattrs: remembered under the signature with the ctime, which every xattr change
moves, so a changed xattr is read again."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from acbuild.cache import statcache
from acbuild.cache.statcache import StatCache, path_digest
from acbuild.fs import staging
from tests.support.cli import acbuild

EPOCH = 1_000_000_000
ENV = {"SOURCE_DATE_EPOCH": str(EPOCH)}
# security.capability for cap_net_raw+ep (VFS_CAP_REVISION_2): what `setcap` writes.
NET_RAW = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="security.* xattrs need root")


def _set_capability(path: Path) -> None:
    if shutil.which("setcap"):
        subprocess.run(["setcap", "cap_net_raw+ep", str(path)], check=True)
    else:
        os.setxattr(path, "security.capability", NET_RAW)


def _drop_capability(path: Path) -> None:
    if shutil.which("setcap"):
        subprocess.run(["setcap", "-r", str(path)], check=True)
    else:
        os.removexattr(path, "security.capability")


def _user_xattr(path: Path, value: bytes) -> None:
    try:
        os.setxattr(path, "user.note", value)
    except OSError:
        pytest.skip("no user xattrs on this filesystem")


def _hardlink(base: Path) -> None:
    (base / "g").unlink()
    os.link(base / "f", base / "g")  # g was a file of the same content


def _old_mtime(base: Path) -> None:
    os.utime(base / "old", (EPOCH - 86400, EPOCH - 86400))  # before the epoch: kept


# name: (how the base starts, how it changes, whether it needs root)
CHANGES: dict[str, tuple[Callable[[Path], None], Callable[[Path], None], bool]] = {
    "capability removed": (lambda b: _set_capability(b / "ping"),
                           lambda b: _drop_capability(b / "ping"), True),
    "capability added": (lambda b: None, lambda b: _set_capability(b / "ping"), True),
    "user xattr changed": (lambda b: _user_xattr(b / "f", b"one"),
                           lambda b: _user_xattr(b / "f", b"two"), False),
    "directory xattr changed": (lambda b: _user_xattr(b / "etc", b"one"),
                                lambda b: _user_xattr(b / "etc", b"two"), False),
    "hardlink made": (lambda b: None, _hardlink, False),
    "mtime before the epoch": (lambda b: None, _old_mtime, False),
    "fifo mode": (lambda b: None, lambda b: (b / "pipe").chmod(0o600), False),
}


def _context(where: Path) -> Path:
    base = where / "base"
    (base / "etc").mkdir(parents=True)
    (base / "ping").write_bytes(b"\x7fELF not really\n")
    (base / "ping").chmod(0o755)
    (base / "f").write_bytes(b"same\n")
    (base / "g").write_bytes(b"same\n")
    (base / "old").write_bytes(b"old\n")
    os.utime(base / "old", (EPOCH - 2 * 86400, EPOCH - 2 * 86400))
    os.mkfifo(base / "pipe", 0o644)
    (where / "Acfile").write_text("BEGIN ./base\nNAME example.com/basekey\n")
    return where / "Acfile"


def _build(acfile: Path, out: Path, *options: str | Path) -> str:
    done = acbuild("-q", "build", acfile, "--compression", "none", "-o", out, *options,
                   env=ENV)
    assert done.code == 0, done.stderr
    return hashlib.sha512(out.read_bytes()).hexdigest()


def _members(aci: Path) -> dict[str, tuple[bytes, str, int, float, dict[str, str]]]:
    with tarfile.open(aci) as t:
        return {m.name: (m.type, m.linkname, m.mode, m.mtime,
                         {k: v for k, v in m.pax_headers.items() if "xattr" in k})
                for m in t.getmembers()}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_to_the_base_directory_reaches_the_cached_image(
        tmp_path: Path, change: str) -> None:
    setup, edit, needs_root = CHANGES[change]
    if needs_root and os.geteuid() != 0:
        pytest.skip("security.* xattrs need root")
    acfile = _context(tmp_path / "ctx")
    base = tmp_path / "ctx/base"
    setup(base)
    cache = ("--cache-dir", tmp_path / "cache")
    first = _build(acfile, tmp_path / "first.aci", *cache)
    edit(base)
    cached = _build(acfile, tmp_path / "cached.aci", *cache)
    fresh = _build(acfile, tmp_path / "fresh.aci", "--no-cache")
    assert _members(tmp_path / "cached.aci") == _members(tmp_path / "fresh.aci")
    assert cached == fresh != first  # the change is in the image, and from the cache too


def _settled(path: Path) -> None:
    os.utime(path, (1_500_000_000, 1_500_000_000))


def test_the_stat_cache_remembers_xattrs_under_the_ctime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key reads a settled file's xattrs once; the next key takes them from the stat
    cache, until an xattr change moves the file's ctime."""
    monkeypatch.setattr(statcache, "settled", lambda st, now: True)
    base = tmp_path / "base"
    base.mkdir()
    (base / "f").write_bytes(b"data")
    _user_xattr(base / "f", b"one")
    memo = tmp_path / "stat.json"
    first = StatCache(memo)
    before = path_digest(base, first, epoch=EPOCH)
    first.save()
    read: list[str] = []
    real = staging.xattrs_of

    def counted(target: str | bytes | int, *, user_only: bool = False
                ) -> tuple[tuple[str, bytes], ...]:
        read.append(os.fsdecode(target) if not isinstance(target, int) else "")
        return real(target, user_only=user_only)

    monkeypatch.setattr(statcache, "xattrs_of", counted)
    assert path_digest(base, StatCache(memo), epoch=EPOCH) == before
    assert str(base / "f") not in read  # remembered (the directory's are read each time)
    _user_xattr(base / "f", b"two")
    assert path_digest(base, StatCache(memo), epoch=EPOCH) != before
    assert str(base / "f") in read


@root_only
def test_a_capability_is_in_the_key(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "ping").write_bytes(b"x")
    before = path_digest(base, StatCache(None), epoch=EPOCH)
    _set_capability(base / "ping")
    assert stat.S_ISREG((base / "ping").stat().st_mode)
    assert path_digest(base, StatCache(None), epoch=EPOCH) != before
