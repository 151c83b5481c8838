"""Class 7: the build context changed while a build reads it (deterministically).

Whoever can write in the context (a checkout shared with a CI job, a generated directory)
swaps a directory for a symlink to a host directory, or a file for a FIFO, at a chosen
moment: the build is held inside open() or getdents() by a fanotify permission event
while the swap is made, so the interleaving is the same on every run. The build must fail
(or copy what was there), never put host files into the image, never hang.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import fanotify
from tests.support.cli import Result, acbuild

SECRET = b"host secret, not in the context\n"


@pytest.fixture(autouse=True)
def _needs_fanotify() -> None:
    if why := fanotify.available():
        pytest.skip(why)


def project(tmp_path: Path, copy: str = "COPY . /app/") -> tuple[Path, Path]:
    """(context, a host directory beside it holding the secret as b/f would be named)."""
    ctx = tmp_path / "ctx"
    (ctx / "a").mkdir(parents=True)
    (ctx / "a" / "1").write_bytes(b"first file\n")
    # Not a mode COPY gives (0644), so it is copied, not hardlinked: the copy opens it,
    # before it reaches b/f (which, unchanged, it would hardlink).
    (ctx / "a" / "1").chmod(0o600)
    (ctx / "b").mkdir()
    (ctx / "b" / "f").write_bytes(b"the context's own f\n")
    (ctx / "Acfile").write_text(f"BEGIN scratch\nNAME example.com/race\n{copy}\n")
    host = tmp_path / "host"
    host.mkdir()
    (host / "f").write_bytes(SECRET)
    return ctx, host


def swap_dir_for_symlink(ctx: Path, host: Path) -> Callable[[], None]:
    def swap() -> None:
        (ctx / "b").rename(ctx.parent / "b-moved")
        (ctx / "b").symlink_to(host)
    return swap


def swap_file_for_fifo(ctx: Path) -> Callable[[], None]:
    def swap() -> None:
        (ctx / "b" / "f").unlink()
        os.mkfifo(ctx / "b" / "f")
    return swap


def build_holding(ctx: Path, out: Path, watched: Path, mask: int, swap: Callable[[], None],
                  *args: str, at_event: int = 0) -> Result:
    def act(n: int) -> bool:
        if n < at_event:
            return False
        swap()
        return True

    with fanotify.hold(watched, mask, act) as seen:
        # a FIFO opened for reading blocks until a writer comes: a hang must fail the test
        r = acbuild("build", ctx / "Acfile", "-o", out, *args, timeout=60)
    assert len(seen) > at_event, "the build never reached the watched point"
    return r


def assert_refused(r: Result, out: Path, *also: str) -> None:
    assert not out.exists() or SECRET not in image_bytes(out), "a host file is in the image"
    assert r.code == 1, r.stderr
    expected = ("in the build context changed while the build read it", *also)
    assert any(e in r.stderr for e in expected), r.stderr
    assert "/Acfile:3:" in r.stderr, "the error names the COPY line"
    assert "Traceback" not in r.stderr


def image_bytes(aci: Path) -> bytes:
    data = b""
    with tarfile.open(aci) as t:
        for m in t.getmembers():
            if m.isfile():
                f = t.extractfile(m)
                assert f is not None
                data += f.read()
    return data


def cache_args(tmp_path: Path, cache: str) -> tuple[list[str], int]:
    """The build's cache options, and which open of a/1 is the copy's: with a cache, the
    cache key's digest reads every file first (and, reading lazily, would simply see a
    symlink); the copy, which scanned everything before reading anything, comes second."""
    if cache == "--no-cache":
        return ["--no-cache"], 0
    return ["--cache-dir", str(tmp_path / "c")], 1


@pytest.mark.parametrize("cache", ["--no-cache", "with-cache"])
def test_directory_swapped_for_a_symlink_after_the_scan(tmp_path: Path, cache: str) -> None:
    """Swapped when the copy opens its first file: b/f, scanned as the context's own, would
    be hardlinked or copied through the new symlink."""
    ctx, host = project(tmp_path)
    out = tmp_path / "x.aci"
    extra, copy_open = cache_args(tmp_path, cache)
    r = build_holding(ctx, out, ctx / "a" / "1", fanotify.FAN_OPEN_PERM,
                      swap_dir_for_symlink(ctx, host), *extra, at_event=copy_open)
    assert_refused(r, out)


def test_directory_swapped_for_a_symlink_during_the_scan(tmp_path: Path) -> None:
    """Swapped right after the context's top directory was listed, before the scan looked
    at b: the scan sees a symlink (and COPY copies it as one, as it copies any symlink in
    a tree) or fails; it never lists, and the copy never reads, the host directory."""
    ctx, host = project(tmp_path)
    out = tmp_path / "x.aci"
    r = build_holding(ctx, out, ctx, fanotify.FAN_ACCESS_PERM | fanotify.FAN_ONDIR,
                      swap_dir_for_symlink(ctx, host), "--no-cache", at_event=1)
    assert "Traceback" not in r.stderr
    if r.code == 0:
        assert SECRET not in image_bytes(out)
        with tarfile.open(out) as t:
            assert t.getmember("rootfs/app/b").issym()
            assert "rootfs/app/b/f" not in t.getnames()
    else:
        assert_refused(r, out)


def test_named_source_below_a_directory_swapped_for_a_symlink(tmp_path: Path) -> None:
    """COPY b/f: the name is resolved before any file is opened; b is swapped then."""
    ctx, host = project(tmp_path, copy="COPY a/1 b/f /app/")
    out = tmp_path / "x.aci"
    r = build_holding(ctx, out, ctx / "a" / "1", fanotify.FAN_OPEN_PERM,
                      swap_dir_for_symlink(ctx, host), "--no-cache")
    assert_refused(r, out)


@pytest.mark.parametrize("cache", ["--no-cache", "with-cache"])
def test_file_swapped_for_a_fifo_does_not_hang_the_build(tmp_path: Path, cache: str) -> None:
    ctx, _host = project(tmp_path)
    out = tmp_path / "x.aci"
    extra, copy_open = cache_args(tmp_path, cache)
    r = build_holding(ctx, out, ctx / "a" / "1", fanotify.FAN_OPEN_PERM,
                      swap_file_for_fifo(ctx), *extra, at_event=copy_open)
    assert_refused(r, out, "COPY source './b/f' is a fifo")


def test_file_replaced_by_another_file_is_refused(tmp_path: Path) -> None:
    """Not the inode the scan saw (its size and mode went into the plan): an error, not a
    mix of two versions."""
    ctx, host = project(tmp_path)
    out = tmp_path / "x.aci"

    def swap() -> None:
        (ctx / "b" / "f").unlink()
        os.link(host / "f", ctx / "b" / "f")  # a hardlink of a host file, swapped in

    r = build_holding(ctx, out, ctx / "a" / "1", fanotify.FAN_OPEN_PERM, swap, "--no-cache")
    assert_refused(r, out)


def test_an_unchanged_context_still_builds(tmp_path: Path) -> None:
    ctx, _host = project(tmp_path)
    out = tmp_path / "x.aci"
    r = build_holding(ctx, out, ctx / "a" / "1", fanotify.FAN_OPEN_PERM, lambda: None,
                      "--no-cache")
    assert r.code == 0, r.stderr
    with tarfile.open(out) as t:
        f = t.extractfile("rootfs/app/b/f")
        assert f is not None and f.read() == b"the context's own f\n"


def test_file_swapped_for_a_symlink_to_a_host_file_is_refused(tmp_path: Path) -> None:
    ctx, host = project(tmp_path)
    out = tmp_path / "x.aci"

    def swap() -> None:
        (ctx / "b" / "f").unlink()
        (ctx / "b" / "f").symlink_to(host / "f")

    r = build_holding(ctx, out, ctx / "a" / "1", fanotify.FAN_OPEN_PERM, swap, "--no-cache")
    assert_refused(r, out)


def test_parent_of_a_named_source_swapped_for_a_symlink_deeper_down(tmp_path: Path) -> None:
    """COPY x/y/z: the middle component is swapped, with the same names below it."""
    ctx, host = project(tmp_path, copy="COPY a/1 x/y/z /app/")
    (ctx / "x" / "y").mkdir(parents=True)
    (ctx / "x" / "y" / "z").write_text("the context's own z\n")
    (host / "z").write_bytes(SECRET)
    out = tmp_path / "x.aci"

    def swap() -> None:
        (ctx / "x" / "y").rename(ctx.parent / "y-moved")
        (ctx / "x" / "y").symlink_to(host)

    r = build_holding(ctx, out, ctx / "a" / "1", fanotify.FAN_OPEN_PERM, swap, "--no-cache")
    assert_refused(r, out)
