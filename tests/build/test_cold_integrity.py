"""Red-team PC-1 and PC-3, end to end: a base directory's file or a COPY'd context file
edited after the build computed its cache keys (in place with the mtime put back, or
renamed over) fails the build, and the image cache is not poisoned: a second build with
the original content gets the original content, not the edited image stored under the old
key. The edits are made by the reporter at fixed points of the real build: once the BEGIN
step has run (before its snapshot, the COPY, and the image write), or as the image write
starts. An output inside the base directory is refused before any work."""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from acbuild.build.build import BuildOptions, build
from acbuild.cli.commands.trustopts import base_loader
from acbuild.errors import AcbuildError
from acbuild.report import NullReporter, StepInfo
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild

OLD = b"OLD-CONTENT\n"
NEW = b"NEW-CONTENT\n"
SETTLED = 1_500_000_000


class _Editor(NullReporter):
    """Runs ``edit`` once, when the step whose text starts with ``text`` finishes (or, for
    ``at_start``, starts)."""

    def __init__(self, text: str, edit: Callable[[], None] | None, *,
                 at_start: bool = False) -> None:
        super().__init__()
        self.text, self.edit, self.at_start = text, edit, at_start

    def _maybe(self, step: StepInfo) -> None:
        if self.edit is not None and step.text.startswith(self.text):
            edit, self.edit = self.edit, None
            edit()

    def step_started(self, step: StepInfo) -> None:
        if self.at_start:
            self._maybe(step)

    def step_finished(self, step: StepInfo, seconds: float, *, cached: bool = False,
                      source: str | None = None) -> None:
        if not self.at_start:
            self._maybe(step)


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "base/etc").mkdir(parents=True)
    (ctx / "base/etc/conf").write_bytes(OLD)
    (ctx / "base/etc/other").write_bytes(b"other\n")
    (ctx / "zzz.txt").write_bytes(OLD)
    for path in (ctx / "base/etc/conf", ctx / "base/etc/other", ctx / "zzz.txt"):
        os.utime(path, (SETTLED, SETTLED))
    (ctx / "Acfile").write_text("BEGIN ./base\nNAME example.com/cold\n"
                                "COPY zzz.txt /zzz/zzz.txt\n")
    return ctx


def _build(ctx: Path, out: Path, reporter: NullReporter) -> None:
    options = BuildOptions(acfile=ctx / "Acfile", output=out,
                           base_loader=base_loader(reporter=reporter),
                           cache_dir=ctx.parent / "cache",
                           environ={"SOURCE_DATE_EPOCH": "1000000"})
    build(options, reporter)


def _in_place(path: Path, data: bytes) -> Callable[[], None]:
    def edit() -> None:
        before = path.stat()
        for _ in range(50):
            with path.open("r+b") as f:
                f.write(data)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            if path.stat().st_ctime_ns != before.st_ctime_ns:
                return
            time.sleep(0.01)  # a coarse ctime clock: the next tick changes it
    return edit


def _renamed_over(path: Path, data: bytes) -> Callable[[], None]:
    def edit() -> None:
        new = path.with_name(".new")
        new.write_bytes(data)
        os.utime(new, (SETTLED, SETTLED))
        new.rename(path)
    return edit


def _restore(path: Path) -> None:
    path.write_bytes(OLD)
    os.utime(path, (SETTLED, SETTLED))


def _member(aci: Path, name: str) -> bytes:
    with tarfile.open(aci) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


CASES = {
    # name: (file, step text, at its start, how)
    "base file in place, after BEGIN": ("base/etc/conf", "BEGIN", False, _in_place),
    "base file renamed over, after BEGIN": ("base/etc/conf", "BEGIN", False, _renamed_over),
    "COPY source in place, before the COPY": ("zzz.txt", "BEGIN", False, _in_place),
    "COPY source renamed over, before the COPY": ("zzz.txt", "BEGIN", False, _renamed_over),
}
IN_IMAGE = {"base/etc/conf": "rootfs/etc/conf", "zzz.txt": "rootfs/zzz/zzz.txt"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_file_edited_after_keying_fails_the_build_and_poisons_no_cache(
        tmp_path: Path, case: str) -> None:
    rel, text, at_start, how = CASES[case]
    ctx = _context(tmp_path)
    out = tmp_path / "out.aci"
    with pytest.raises(AcbuildError) as failed:
        _build(ctx, out, _Editor(text, how(ctx / rel, NEW), at_start=at_start))
    message = failed.value.message
    assert "changed" in message and rel.rpartition("/")[2] in message, message
    assert not out.exists()
    # The original content again (a new ctime: the stat cache reads it again): the same
    # key as the first build's; the cache must not answer it with the edited image.
    _restore(ctx / rel)
    _build(ctx, out, NullReporter())
    assert _member(out, IN_IMAGE[rel]) == OLD


@pytest.mark.parametrize("rel", sorted(IN_IMAGE))
def test_a_file_edited_as_the_image_is_written_stays_out_of_it(tmp_path: Path,
                                                                rel: str) -> None:
    """With a cache, the image is what the key read, however the user's file changed since:
    a step's snapshot made the base file real (copied, checked against the key) before the
    write; the image's last COPY keeps no snapshot when the image is cached, so its file is
    still read from the context, where the change fails the build instead. Either way the
    next build of the original content gets the original."""
    ctx = _context(tmp_path)
    out = tmp_path / "out.aci"
    editor = _Editor("WRITE", _in_place(ctx / rel, NEW), at_start=True)
    if rel == "zzz.txt":
        with pytest.raises(AcbuildError) as failed:
            _build(ctx, out, editor)
        assert "zzz.txt" in failed.value.message and "changed" in failed.value.message
        assert not out.exists()
    else:
        _build(ctx, out, editor)
        assert _member(out, IN_IMAGE[rel]) == OLD
    assert (ctx / rel).read_bytes() == NEW
    _restore(ctx / rel)
    _build(ctx, out, NullReporter())
    assert _member(out, IN_IMAGE[rel]) == OLD


def test_unchanged_inputs_build_and_hit_the_cache(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    for name in ("one.aci", "two.aci"):
        _build(ctx, tmp_path / name, NullReporter())
        assert _member(tmp_path / name, "rootfs/etc/conf") == OLD
        assert _member(tmp_path / name, "rootfs/zzz/zzz.txt") == OLD
    # The builder left the user's files alone: no hardlink to them, ctime as it was.
    st = (ctx / "base/etc/conf").stat()
    assert st.st_nlink == 1


@pytest.mark.parametrize("cache", [True, False])
def test_an_output_inside_the_base_directory_is_refused_up_front(tmp_path: Path,
                                                                 cache: bool) -> None:
    """PC-3: rather than every build failing with "base directory changed" (the build's own
    temporary file appearing in it), one clear error before any work, naming both paths."""
    ctx = _context(tmp_path)
    out = ctx / "base/etc/out.aci"
    flags = ["--cache-dir", str(tmp_path / "cache")] if cache else ["--no-cache"]
    result = acbuild("build", ctx / "Acfile", "-o", out, *flags)
    assert result.code != 0
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{ctx / 'Acfile'}:1:1: error: "), result.stderr  # at BEGIN
    assert lines[0].endswith(f"the output {out} is inside the base directory {ctx / 'base'}")
    assert "changed during the build" not in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(ctx / "base/etc")) == ["conf", "other"]


def _aci(tmp_path: Path, data: bytes, out: Path) -> None:
    where = tmp_path / f"make-{out.name}"
    where.mkdir(exist_ok=True)
    (where / "f").write_bytes(data)
    (where / "Acfile").write_text("BEGIN scratch\nNAME example.com/base\nCOPY f /f\n")
    build(BuildOptions(acfile=where / "Acfile", output=out, no_cache=True,
                       base_loader=base_loader(reporter=NullReporter()),
                       environ={"SOURCE_DATE_EPOCH": "1000000"}), NullReporter())


def test_a_base_image_replaced_after_keying_fails_the_build(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _aci(tmp_path, OLD, ctx / "base.aci")
    _aci(tmp_path, NEW, tmp_path / "new.aci")
    (ctx / "Acfile").write_text("BEGIN ./base.aci\nNAME example.com/cold\n")
    out = tmp_path / "out.aci"

    def replace() -> None:
        os.replace(tmp_path / "new.aci", ctx / "base.aci")

    with pytest.raises(AcbuildError, match=r"base\.aci changed during the build"):
        _build(ctx, out, _Editor("BEGIN", replace, at_start=True))
    assert not out.exists()
    _aci(tmp_path, OLD, ctx / "base.aci")
    _build(ctx, out, NullReporter())
    assert _member(out, "rootfs/f") == OLD


def test_a_glob_match_removed_after_keying_fails_the_build(tmp_path: Path) -> None:
    """COPY *.txt: the files the key's glob matched are the files the COPY copies; one
    removed in between would otherwise leave the image short under the old key."""
    ctx = _context(tmp_path)
    (ctx / "yyy.txt").write_bytes(OLD)
    (ctx / "Acfile").write_text("BEGIN ./base\nNAME example.com/cold\nCOPY *.txt /t/\n")
    out = tmp_path / "out.aci"
    with pytest.raises(AcbuildError, match=r"COPY source '\*\.txt' names other files"):
        _build(ctx, out, _Editor("BEGIN", (ctx / "yyy.txt").unlink))
    assert not out.exists()
    (ctx / "yyy.txt").write_bytes(OLD)
    _build(ctx, out, NullReporter())
    assert _member(out, "rootfs/t/yyy.txt") == OLD


@pytest.mark.parametrize("rel", sorted(IN_IMAGE))
def test_a_file_written_through_a_mapping_after_keying_poisons_no_cache(
        tmp_path: Path, rel: str) -> None:
    """Red-team CI-1: a store through a shared mapping into a dirty page changes no time,
    so no signature shows it; the content digest does."""
    import mmap

    ctx = _context(tmp_path)
    fd = os.open(ctx / rel, os.O_RDWR)
    mapped = mmap.mmap(fd, 0, mmap.MAP_SHARED)
    try:
        mapped[0:1] = mapped[0:1]  # the page dirty now: later stores take no fault

        def store() -> None:
            before = (ctx / rel).stat()
            mapped[: len(NEW)] = NEW
            if (ctx / rel).stat().st_ctime_ns != before.st_ctime_ns:
                pytest.skip("the page was written back meanwhile: the ctime changed")

        out = tmp_path / "out.aci"
        with pytest.raises(AcbuildError, match="does not hold what the cache key read"):
            _build(ctx, out, _Editor("BEGIN", store))
        assert not out.exists()
        mapped[: len(OLD)] = OLD
        _build(ctx, out, NullReporter())
        assert _member(out, IN_IMAGE[rel]) == OLD
    finally:
        mapped.close()
        os.close(fd)


@pytest.mark.parametrize(("flag", "what"), [("--log-file", "the log file"),
                                            ("--cache-dir", "the cache directory")])
@pytest.mark.parametrize("where", ["base", "copied"])
def test_the_builds_own_files_inside_what_it_reads_are_refused_up_front(
        tmp_path: Path, flag: str, what: str, where: str) -> None:
    """Red-team CI-2: the log and the cache are written while the build reads the base and
    the COPY sources; inside them every build failed with "changed during the build"."""
    ctx = _context(tmp_path)
    (ctx / "app").mkdir()
    (ctx / "app/main").write_text("main\n")
    (ctx / "Acfile").write_text("BEGIN ./base\nNAME example.com/cold\nCOPY app /app\n")
    path = ctx / ("base/etc" if where == "base" else "app") / "own"
    result = acbuild("build", ctx / "Acfile", "-o", tmp_path / "out.aci", flag, path)
    assert result.code != 0
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    inside = (f"the base directory {ctx / 'base'}" if where == "base"
              else "COPY source 'app', which the build copies")
    assert lines[0].endswith(f"{what} {path} is inside {inside}"), result.stderr
    assert not path.exists()
    # Left out by .acignore, the copied directory's file is none of the build's business.
    if where == "copied":
        (ctx / ".acignore").write_text("app/own\n")
        result = acbuild("build", ctx / "Acfile", "-o", tmp_path / "out.aci", flag, path)
        assert result.code == 0, result.stderr
        with tarfile.open(tmp_path / "out.aci") as t:
            assert "rootfs/app/own" not in t.getnames()


@pytest.mark.skipif(not busybox_available(), reason="needs busybox-static")
@pytest.mark.parametrize("cache", [True, False])
def test_a_sparse_base_file_stays_sparse_through_a_run_stage(tmp_path: Path,
                                                             cache: bool) -> None:
    """Red-team CI-3: BEGIN <dir> + RUN copies the base (and, with a cache, snapshots and
    restores it); a sparse /var/log/lastlog of 512 MiB must not be written out."""
    ctx = tmp_path / "ctx"
    make_busybox_rootfs(ctx / "base")
    (ctx / "base/var/log").mkdir(parents=True, exist_ok=True)
    with (ctx / "base/var/log/lastlog").open("wb") as f:
        f.truncate(512 << 20)
    if (ctx / "base/var/log/lastlog").stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this filesystem does not keep holes")
    (ctx / "Acfile").write_text("BEGIN ./base\nNAME example.com/sparse\n"
                                "RUN /bin/sh -c 'du -k /var/log/lastlog > /du.txt'\n")
    flags = ["--cache-dir", str(tmp_path / "cache")] if cache else ["--no-cache"]
    for _ in range(2 if cache else 1):  # the second one restores the step's snapshot
        out = tmp_path / "out.aci"
        result = acbuild("build", ctx / "Acfile", "-o", out, *flags)
        assert result.code == 0, result.stderr
        kib = int(_member(out, "rootfs/du.txt").split()[0])
        assert kib < 1024, f"lastlog took {kib} KiB in the RUN's rootfs"
        (ctx / "Acfile").write_text((ctx / "Acfile").read_text() + "LABEL again=1\n")
    if cache:
        for path in (tmp_path / "cache").rglob("lastlog"):
            assert path.stat().st_blocks * 512 < 1 << 20, path


def test_a_base_image_written_through_a_mapping_after_keying_fails(tmp_path: Path) -> None:
    """Red-team CI-1b: the archive's bytes as read are those the key hashed."""
    import mmap

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _aci(tmp_path, OLD, ctx / "base.aci")
    _aci(tmp_path, NEW, tmp_path / "new.aci")
    new = (tmp_path / "new.aci").read_bytes()
    old = (ctx / "base.aci").read_bytes()
    if len(new) != len(old):
        pytest.skip("the two archives differ in size")
    (ctx / "Acfile").write_text("BEGIN ./base.aci\nNAME example.com/cold\n")
    fd = os.open(ctx / "base.aci", os.O_RDWR)
    mapped = mmap.mmap(fd, 0, mmap.MAP_SHARED)
    try:
        mapped[:] = mapped[:]  # every page dirty: later stores take no fault

        def store() -> None:
            before = (ctx / "base.aci").stat()
            mapped[:] = new
            if (ctx / "base.aci").stat().st_ctime_ns != before.st_ctime_ns:
                pytest.skip("the pages were written back meanwhile: the ctime changed")

        out = tmp_path / "out.aci"
        with pytest.raises(AcbuildError, match=r"base\.aci does not hold what the cache key"):
            _build(ctx, out, _Editor("BEGIN", store, at_start=True))
        mapped[:] = old
        _build(ctx, out, NullReporter())
        assert _member(out, "rootfs/f") == OLD
    finally:
        mapped.close()
        os.close(fd)
