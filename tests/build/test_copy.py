"""Tests for acbuild.build.copy: COPY from a real context directory into a real staged rootfs."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from acbuild.acfile.context import BuildContext
from acbuild.acfile.instructions import Copy
from acbuild.build.build import build
from acbuild.build.copy import copy_instruction
from acbuild.errors import AcbuildError, BuildError, Span
from acbuild.fs.staging import DeviceNode, StagedRootfs
from acbuild.report import NullReporter, StepInfo
from tests.acfile.test_context import make
from tests.cache.test_cache import Recorder, options, run


def instr(*sources: str, dest: str, **options: object) -> Copy:
    flags = "".join(f"--{k.replace('_stage', '')}={v} " for k, v in options.items()
                    if k in ("chown", "from_stage"))
    text = f"COPY {flags}{' '.join(sources)} {dest}"
    span = Span(file="Acfile", line=2, column=1, length=4, source_line=text)
    return Copy(span=span, text=text, sources=sources, dest=dest, **options)  # type: ignore[arg-type]


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = make(tmp_path / "ctx", {
        "a.txt": "alpha", "b.txt": "beta",
        "dir/x": "x", "dir/sub/y": "y",
    })
    (root / "dir/run.sh").write_text("#!/bin/sh\n")
    (root / "dir/run.sh").chmod(0o700)
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> StagedRootfs:
    (tmp_path / "rootfs").mkdir()
    return StagedRootfs(root=tmp_path / "rootfs", privileged=False)


def do(ctx: Path, rootfs: StagedRootfs, copy: Copy, **kw: object) -> None:
    copy_instruction(copy, context=BuildContext(ctx), rootfs=rootfs, **kw)  # type: ignore[arg-type]


def fail(ctx: Path, rootfs: StagedRootfs, copy: Copy, **kw: object) -> BuildError:
    with pytest.raises(BuildError) as info:
        do(ctx, rootfs, copy, **kw)
    return info.value


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry below root as rel -> (kind/content/target, mode)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = ("-> " + os.readlink(path), 0)
            elif path.is_dir():
                out[rel] = ("dir", mode(path))
            else:
                out[rel] = (path.read_text(), mode(path))
    return out


def test_file_to_exact_path_with_parents(ctx: Path, rootfs: StagedRootfs) -> None:
    do(ctx, rootfs, instr("a.txt", dest="/opt/app/renamed"))
    assert tree(rootfs.root) == {
        "opt": ("dir", 0o755), "opt/app": ("dir", 0o755), "opt/app/renamed": ("alpha", 0o644)}
    assert rootfs.owners == {"opt": (0, 0), "opt/app": (0, 0), "opt/app/renamed": (0, 0)}


def test_directory_to_exact_path_takes_its_contents(ctx: Path, rootfs: StagedRootfs) -> None:
    do(ctx, rootfs, instr("dir", dest="/srv"))
    assert tree(rootfs.root) == {
        "srv": ("dir", 0o755), "srv/run.sh": ("#!/bin/sh\n", 0o755), "srv/x": ("x", 0o644),
        "srv/sub": ("dir", 0o755), "srv/sub/y": ("y", 0o644)}


def test_into_directory_keeps_each_source_whole(ctx: Path, rootfs: StagedRootfs) -> None:
    do(ctx, rootfs, instr("a.txt", "dir", dest="/srv/"))
    assert sorted(tree(rootfs.root)) == [
        "srv", "srv/a.txt", "srv/dir", "srv/dir/run.sh", "srv/dir/sub", "srv/dir/sub/y",
        "srv/dir/x"]


def test_globs_land_under_the_directory(ctx: Path, rootfs: StagedRootfs) -> None:
    do(ctx, rootfs, instr("*.txt", "**/y", dest="/g/"))
    assert sorted(tree(rootfs.root)) == ["g", "g/a.txt", "g/b.txt", "g/y"]


def test_whole_context_into_directory(ctx: Path, rootfs: StagedRootfs) -> None:
    (ctx / ".acignore").write_text("dir/sub/\n")
    do(ctx, rootfs, instr(".", dest="/app/"))
    assert sorted(tree(rootfs.root)) == [
        "app", "app/.acignore", "app/a.txt", "app/b.txt", "app/dir", "app/dir/run.sh",
        "app/dir/x"]


def test_several_sources_need_a_directory(ctx: Path, rootfs: StagedRootfs) -> None:
    err = fail(ctx, rootfs, instr("a.txt", "b.txt", dest="/x"))
    assert err.message == ("COPY with several sources or a glob needs a destination ending "
                           "in '/', not '/x'")
    assert err.span is not None and err.span.column == len("COPY a.txt b.txt ") + 1


def test_errors_point_at_the_source(ctx: Path, rootfs: StagedRootfs) -> None:
    err = fail(ctx, rootfs, instr("a.txt", "../secret", dest="/x/"))
    assert err.message == "COPY source '../secret' is outside the build context"
    assert err.span is not None and (err.span.column, err.span.length) == (12, 9)
    assert rootfs.root.exists() and not list(rootfs.root.iterdir())  # nothing written


def test_symlinks_in_a_tree_are_copied_verbatim(ctx: Path, rootfs: StagedRootfs) -> None:
    (ctx / "dir/abs").symlink_to("/etc/shadow")
    (ctx / "dir/dangling").symlink_to("no/such/file")
    (ctx / "dir/up").symlink_to("../../../outside")
    (ctx / "direct").symlink_to("a.txt")
    do(ctx, rootfs, instr("dir", "direct", dest="/d/"))
    t = tree(rootfs.root)
    assert t["d/dir/abs"] == ("-> /etc/shadow", 0)
    assert t["d/dir/dangling"] == ("-> no/such/file", 0)
    assert t["d/dir/up"] == ("-> ../../../outside", 0)
    assert t["d/direct"] == ("-> a.txt", 0)
    assert rootfs.owners["d/dir/abs"] == (0, 0)


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o002])
def test_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        ctx = make(tmp_path / "ctx", {"f": "f", "d/g": "g"})
        (ctx / "d/exe").write_text("")
        (ctx / "d/exe").chmod(0o777 & ~umask | 0o100)
        rootfs = StagedRootfs(root=tmp_path / "rootfs", privileged=False)
        rootfs.root.mkdir()
        do(ctx, rootfs, instr("f", "d", dest="/deep/er/"))
    finally:
        os.umask(old)
    assert {rel: m for rel, (_, m) in tree(rootfs.root).items()} == {
        "deep": 0o755, "deep/er": 0o755, "deep/er/f": 0o644, "deep/er/d": 0o755,
        "deep/er/d/g": 0o644, "deep/er/d/exe": 0o755}


def test_mode_option_sets_files_not_directories(ctx: Path, rootfs: StagedRootfs) -> None:
    do(ctx, rootfs, instr("dir", dest="/m", mode=0o4750))
    assert mode(rootfs.root / "m") == 0o755
    assert mode(rootfs.root / "m/sub") == 0o755
    assert mode(rootfs.root / "m/x") == 0o4750
    assert mode(rootfs.root / "m/sub/y") == 0o4750


def write_users(rootfs: StagedRootfs) -> None:
    make(rootfs.root, {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n",
        "etc/group": "root:x:0:\napp:x:1002:\nstaff:x:50:\n",
    })


@pytest.mark.parametrize(("chown", "owner"), [
    ("1000", (1000, 1000)), ("1000:7", (1000, 7)), ("app", (1001, 1002)),
    ("app:staff", (1001, 50)), ("7:staff", (7, 50)), ("0:0", (0, 0)),
])
def test_chown(ctx: Path, rootfs: StagedRootfs, chown: str, owner: tuple[int, int]) -> None:
    write_users(rootfs)
    do(ctx, rootfs, instr("dir", dest="/new/o", chown=chown))
    assert rootfs.owners["new"] == (0, 0)  # created parents stay root's
    assert rootfs.owners["new/o"] == owner
    assert rootfs.owners["new/o/sub/y"] == owner


@pytest.mark.parametrize(("chown", "message"), [
    ("nobody", "COPY --chown: user 'nobody' not found in the image's /etc/passwd"),
    ("app:wheel", "COPY --chown: group 'wheel' not found in the image's /etc/group"),
    ("app:", "COPY --chown='app:' must be uid[:gid]"),
    (":5", "COPY --chown=':5' must be uid[:gid]"),
    ("4294967295", "COPY --chown: user or group id 4294967295 is out of range (0 to 4294967294)"),
])
def test_chown_errors(ctx: Path, rootfs: StagedRootfs, chown: str, message: str) -> None:
    write_users(rootfs)
    err = fail(ctx, rootfs, instr("a.txt", dest="/a", chown=chown))
    assert err.message == message
    assert err.span is not None and err.span.column == len("COPY ") + 1


def test_chown_names_come_from_the_rootfs_not_the_host(tmp_path: Path, ctx: Path,
                                                       rootfs: StagedRootfs) -> None:
    # /etc in the image points at the host's /etc: names must still not resolve there (in
    # the rootfs "/etc" is the link itself: a loop)
    (rootfs.root / "etc").symlink_to("/etc")
    err = fail(ctx, rootfs, instr("a.txt", dest="/a", chown="root"))
    assert err.message == ("COPY --chown: the image's /etc/passwd: too many levels of "
                           "symbolic links resolving 'etc/passwd'")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown on disk")
def test_privileged_owners_go_on_disk(ctx: Path, tmp_path: Path) -> None:
    rootfs = StagedRootfs(root=tmp_path / "rootfs", privileged=True)
    rootfs.root.mkdir()
    do(ctx, rootfs, instr("dir", dest="/p/q", chown="123:456", mode=0o2755))
    st = (rootfs.root / "p/q/x").lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (123, 456, 0o2755)
    assert (rootfs.root / "p").lstat().st_uid == 0
    assert rootfs.owners == {}


def test_rootfs_symlink_is_not_followed_out(tmp_path: Path, ctx: Path,
                                            rootfs: StagedRootfs) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (rootfs.root / "etc").symlink_to(outside)
    (rootfs.root / "conf").symlink_to("../../../../../../tmp-escape")
    do(ctx, rootfs, instr("a.txt", dest="/etc/x"))
    do(ctx, rootfs, instr("dir", dest="/conf/"))
    assert list(outside.iterdir()) == []
    inside = rootfs.root / outside.relative_to("/") / "x"
    assert inside.read_text() == "alpha"
    assert (rootfs.root / "tmp-escape/dir/x").read_text() == "x"
    assert not Path("/tmp-escape").exists()


def test_overwriting(ctx: Path, rootfs: StagedRootfs, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("untouched")
    make(rootfs.root, {"srv/old": "old", "srv/x/keep": "keep"})
    (rootfs.root / "srv/link").symlink_to(target)
    do(ctx, rootfs, instr("a.txt", dest="/srv/old"))
    do(ctx, rootfs, instr("b.txt", dest="/srv/link"))
    assert (rootfs.root / "srv/old").read_text() == "alpha"
    assert (rootfs.root / "srv/link").read_text() == "beta"
    assert not (rootfs.root / "srv/link").is_symlink()
    assert target.read_text() == "untouched"
    err = fail(ctx, rootfs, instr("a.txt", dest="/srv/x"))
    assert err.message == "COPY cannot replace directory '/srv/x' with a file"
    assert err.hint == "end the destination with '/' to copy into the directory"
    err = fail(ctx, rootfs, instr("dir", dest="/srv"))
    assert (err.message, err.hint) == ("COPY cannot replace directory '/srv/x' with a file", None)
    (rootfs.root / "srv/x/keep").unlink()
    (rootfs.root / "srv/x").rmdir()
    do(ctx, rootfs, instr("dir", dest="/srv"))  # a directory merges into an existing one
    assert (rootfs.root / "srv/x").read_text() == "x"
    assert (rootfs.root / "srv/old").read_text() == "alpha"


def test_merging_through_a_directory_symlink(ctx: Path, rootfs: StagedRootfs) -> None:
    make(rootfs.root, {"usr/lib/existing": "e"})
    (rootfs.root / "lib").symlink_to("usr/lib")
    make(ctx, {"overlay/lib/new.so": "so"})
    do(ctx, rootfs, instr("overlay/*", dest="/"))  # "/" is a DIR/: each child lands in it
    assert (rootfs.root / "lib").is_symlink()
    assert (rootfs.root / "usr/lib/new.so").read_text() == "so"
    assert rootfs.owners["usr/lib/new.so"] == (0, 0)


def test_hardlinks_become_separate_files(ctx: Path, rootfs: StagedRootfs) -> None:
    os.link(ctx / "dir/x", ctx / "dir/x2")
    do(ctx, rootfs, instr("dir", dest="/h"))
    a, b = (rootfs.root / "h/x").stat(), (rootfs.root / "h/x2").stat()
    assert a.st_ino != b.st_ino and a.st_nlink == b.st_nlink == 1


def test_special_files_in_a_tree_are_refused(ctx: Path, rootfs: StagedRootfs) -> None:
    os.mkfifo(ctx / "dir/sub/fifo")
    err = fail(ctx, rootfs, instr("dir", dest="/s"))
    assert err.message == ("COPY source 'dir/sub/fifo' is a fifo; only files, directories "
                           "and symlinks can be copied")
    assert not (rootfs.root / "s").exists()


def test_progress_is_reported_in_bytes(ctx: Path, rootfs: StagedRootfs) -> None:
    calls: list[tuple[str, int, int | None]] = []

    class Recorder(NullReporter):
        def progress(self, what: str, done: int, total: int | None) -> None:
            calls.append((what, done, total))

    (ctx / "big").write_bytes(os.urandom(9 << 20))
    do(ctx, rootfs, instr("big", "a.txt", dest="/p/"), reporter=Recorder())
    total = (9 << 20) + 5
    assert calls[-1] == ("copy", total, total)
    assert len(calls) >= 2
    assert (rootfs.root / "p/big").read_bytes() == (ctx / "big").read_bytes()


def stage(tmp_path: Path) -> StagedRootfs:
    build = StagedRootfs(root=tmp_path / "build", privileged=False)
    make(build.root, {"usr/lib/libx.so.1": "lib", "usr/bin/tool": "tool",
                      "etc/passwd": "stage's own"})
    (build.root / "lib").symlink_to("usr/lib")
    (build.root / "usr/lib/libx.so").symlink_to("libx.so.1")
    (build.root / "abs").symlink_to("/usr/lib")
    (build.root / "evil").symlink_to("/etc/passwd")
    (build.root / "gone").symlink_to("/no/such")
    (build.root / "usr/bin/tool").chmod(0o4711)
    build.owners["usr/bin/tool"] = (5, 6)
    return build


def test_copy_from_a_stage(tmp_path: Path, ctx: Path, rootfs: StagedRootfs) -> None:
    build = stage(tmp_path)
    do(ctx, rootfs, instr("/lib/libx.so", "/abs/libx.so.1", "/usr/bin/tool", dest="/out/",
                          from_stage="build"), from_rootfs=build)
    do(ctx, rootfs, instr("/evil", dest="/passwd", from_stage="build"), from_rootfs=build)
    do(ctx, rootfs, instr("/usr", dest="/copy", from_stage="build"), from_rootfs=build)
    out = rootfs.root / "out"
    assert (out / "libx.so").read_text() == "lib"  # the named symlink is followed, inside
    assert (out / "libx.so.1").read_text() == "lib"
    assert (rootfs.root / "passwd").read_text() == "stage's own"
    assert mode(out / "tool") == 0o4711
    assert rootfs.owners["out/tool"] == (5, 6)
    assert rootfs.owners["out"] == (0, 0)
    assert os.readlink(rootfs.root / "copy/lib/libx.so") == "libx.so.1"  # in a tree: verbatim
    assert rootfs.owners["copy/bin/tool"] == (5, 6)


def test_copy_from_a_stage_with_globs_and_chown(tmp_path: Path, ctx: Path,
                                                rootfs: StagedRootfs) -> None:
    build = stage(tmp_path)
    do(ctx, rootfs, instr("/lib/*.so*", dest="/g/", from_stage="build", chown="9"),
       from_rootfs=build)
    assert sorted(p.name for p in (rootfs.root / "g").iterdir()) == ["libx.so", "libx.so.1"]
    assert rootfs.owners["g/libx.so.1"] == (9, 9)


@pytest.mark.parametrize(("source", "message"), [
    ("/gone", "COPY source '/gone' not found in stage 'build'"),
    ("/nope", "COPY source '/nope' not found in stage 'build'"),
    ("/usr/*.a", "COPY source '/usr/*.a' matches nothing in stage 'build'"),
    ("/go*", "COPY source '/no/such' not found in stage 'build'"),
])
def test_copy_from_a_stage_errors(tmp_path: Path, ctx: Path, rootfs: StagedRootfs,
                                  source: str, message: str) -> None:
    err = fail(ctx, rootfs, instr(source, dest="/x/", from_stage="build"),
               from_rootfs=stage(tmp_path))
    assert err.message == message


def test_copy_from_a_stage_carries_devices_and_fifos(tmp_path: Path, ctx: Path,
                                                     rootfs: StagedRootfs) -> None:
    build = stage(tmp_path)
    (build.root / "dev").mkdir()
    os.mkfifo(build.root / "dev/initctl", 0o600)
    build.devices["dev/null"] = DeviceNode(kind="chr", major=1, minor=3, mode=0o666)
    build.owners["dev/null"] = (0, 5)
    do(ctx, rootfs, instr("/dev", dest="/dev", from_stage="build"), from_rootfs=build)
    do(ctx, rootfs, instr("/dev/null", dest="/null/", from_stage="build"), from_rootfs=build)
    assert rootfs.devices == {
        "dev/initctl": DeviceNode(kind="fifo", major=0, minor=0, mode=0o600),
        "dev/null": DeviceNode(kind="chr", major=1, minor=3, mode=0o666),
        "null/null": DeviceNode(kind="chr", major=1, minor=3, mode=0o666),
    }
    assert rootfs.owners["dev/null"] == (0, 5)
    assert not (rootfs.root / "dev/initctl").exists()
    do(ctx, rootfs, instr("a.txt", dest="/dev/null"))  # a file replaces the record
    assert "dev/null" not in rootfs.devices


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a node")
def test_privileged_copy_from_a_stage_makes_fifos(tmp_path: Path, ctx: Path) -> None:
    build = stage(tmp_path)
    os.mkfifo(build.root / "fifo", 0o640)
    rootfs = StagedRootfs(root=tmp_path / "rootfs", privileged=True)
    rootfs.root.mkdir()
    do(ctx, rootfs, instr("/fifo", dest="/f", from_stage="build"), from_rootfs=build)
    st = (rootfs.root / "f").lstat()
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert rootfs.devices == {}


def _image_id(rootfs: StagedRootfs, epoch: int) -> str:
    from acbuild.image.finalize import write_aci

    out = rootfs.root.parent / f"{rootfs.root.name}.aci"
    manifest = b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/x"}'
    return write_aci(rootfs, manifest, out, epoch=epoch).image_id


@pytest.mark.parametrize("privileged", [True, False])
def test_referenced_context_files_give_the_same_image(tmp_path: Path, privileged: bool) -> None:
    """When no RUN follows, COPY leaves context files where they are (references the
    finalizer reads); the image is the copy's, before and after they are made real."""
    from acbuild.image.unstaged import materialize

    ctx = make(tmp_path / "ctx", {"plain": "p", "group-w": "g", "linked": "l", "xattr": "x",
                                  "old": "o", "owned": "u", "d/exe": "e", "future": "f"})
    (ctx / "group-w").chmod(0o664)  # COPY gives 0644
    (ctx / "d/exe").chmod(0o755)
    os.link(ctx / "linked", ctx / "linked2")  # two names: two separate files in the image
    os.setxattr(ctx / "xattr", "user.k", b"v")  # COPY carries no xattrs
    os.utime(ctx / "old", (1000, 1000))  # before the epoch: a copy's mtime is later
    os.chown(ctx / "owned", 1000, 1000)  # COPY gives 0:0
    # An mtime past 2262 is more nanoseconds than 64 signed bits hold: its reference keeps
    # its signature as numbers, not packed.
    os.utime(ctx / "future", ns=(10**19, 10**19))
    assert (ctx / "future").stat().st_mtime_ns == 10**19
    epoch = 2_000_000
    ids = []
    for leave in (False, True):
        rootfs = StagedRootfs(root=tmp_path / f"r-{leave}", privileged=privileged)
        rootfs.root.mkdir()
        do(ctx, rootfs, instr(".", dest="/"), leave_refs=leave)
        do(ctx, rootfs, instr("plain", dest="/again"), leave_refs=leave)
        do(ctx, rootfs, instr("owned", dest="/srv/m", mode=0o4750, chown="5:6"),
           leave_refs=leave)
        on_disk = {p.relative_to(rootfs.root).as_posix() for p in rootfs.root.rglob("*")
                   if p.is_file()}
        everything = {"plain", "group-w", "linked", "linked2", "xattr", "old", "owned",
                      "d/exe", "future", "again", "srv/m"}
        assert on_disk == (set() if leave else everything)
        assert set(rootfs.refs) == (everything if leave else set())
        # The image as the build writes it, mtimes clamped to the build's epoch: what COPY
        # makes (files copied, directories) carries the time it was made, so an epoch in the
        # future would show when each tree was built, not how.
        ids.append(_image_id(rootfs, epoch))
        if leave:
            materialize(rootfs)
            assert rootfs.refs == {}
            assert (rootfs.root / "srv/m").read_text() == "u"
            assert mode(rootfs.root / "srv/m") == 0o4750
            assert (rootfs.root / "linked").stat().st_ino != (ctx / "linked").stat().st_ino
            ids.append(_image_id(rootfs, epoch))
    assert len(set(ids)) == 1, ids
    assert os.getxattr(ctx / "xattr", "user.k") == b"v"
    assert (ctx / "owned").stat().st_uid == 1000 and mode(ctx / "group-w") == 0o664


def test_referenced_file_is_replaced_not_changed(tmp_path: Path) -> None:
    ctx = make(tmp_path / "ctx", {"a.txt": "alpha", "b.txt": "beta"})
    rootfs = StagedRootfs(root=tmp_path / "r", privileged=True)
    rootfs.root.mkdir()
    do(ctx, rootfs, instr("a.txt", dest="/x"), leave_refs=True)
    assert rootfs.refs["x"].rel == "a.txt"
    do(ctx, rootfs, instr("b.txt", dest="/x", chown="7:7", mode=0o600), leave_refs=True)
    assert rootfs.refs["x"].rel == "b.txt" and rootfs.refs["x"].uid == 7
    do(ctx, rootfs, instr("b.txt", dest="/x"))  # a copy (a RUN follows) replaces it
    assert rootfs.refs == {} and (rootfs.root / "x").read_text() == "beta"
    assert (ctx / "a.txt").read_text() == "alpha" and mode(ctx / "a.txt") == 0o644
    assert (ctx / "a.txt").stat().st_uid == 0 and (ctx / "b.txt").stat().st_uid == 0


def test_a_referencing_copy_checks_every_source_before_it_writes(ctx: Path,
                                                                 rootfs: StagedRootfs) -> None:
    """With no RUN after it, COPY walks every source, keeping only records of the files,
    and places them once all are checked: a FIFO deep in the second source leaves no
    directory of the first and no reference."""
    os.mkfifo(ctx / "dir/sub/fifo")
    err = fail(ctx, rootfs, instr("a.txt", "dir", dest="/s/"), leave_refs=True)
    assert err.message == ("COPY source 'dir/sub/fifo' is a fifo; only files, directories "
                           "and symlinks can be copied")
    assert err.span is not None and err.span.column == len("COPY a.txt ") + 1
    assert not list(rootfs.root.iterdir()) and len(rootfs.refs) == 0


def test_a_referencing_copy_keeps_little_per_file(tmp_path: Path) -> None:
    """The references of a COPY stay until the image is written. Of 100,000 files they
    took ~55 MB (a FileRef, its paths and tuple of numbers, ~540 bytes a file), and the
    COPY peaked at ~125 MB more (an entry and the scan's stat result a file, all held
    until the first was placed): the build's RSS was 184 MB where BEGIN <dir> of the
    same tree takes 49. Now a file is its name and one packed record (~180 bytes), and
    the walk keeps nothing else of it (~200 bytes a file at the peak)."""
    import tracemalloc

    def per_file(files: int) -> tuple[int, int]:
        ctx = tmp_path / f"ctx{files}"
        for i in range(files):
            path = ctx / "tree" / f"d{i // 100:03}" / f"f{i:06}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
        rootfs = StagedRootfs(root=tmp_path / f"r{files}", privileged=False)
        rootfs.root.mkdir()
        context = BuildContext(ctx)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            copy_instruction(instr("tree/", dest="/srv/"), context=context, rootfs=rootfs,
                             leave_refs=True)
            kept, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(rootfs.refs) == files
        return peak - before, kept - before

    (peak1, kept1), (peak2, kept2) = per_file(500), per_file(5500)
    assert (peak2 - peak1) / 5000 < 300, f"{(peak2 - peak1) / 5000:.0f} bytes a file at the peak"
    assert (kept2 - kept1) / 5000 < 250, f"{(kept2 - kept1) / 5000:.0f} bytes a file kept"


def test_copy_below_a_recorded_device_replaces_it(tmp_path: Path, ctx: Path,
                                                  rootfs: StagedRootfs) -> None:
    rootfs.devices["x"] = DeviceNode(kind="blk", major=7, minor=0, mode=0o600)
    do(ctx, rootfs, instr("a.txt", dest="/x/a.txt"))
    assert rootfs.devices == {}
    assert (rootfs.root / "x/a.txt").is_file()


@pytest.mark.parametrize("leave_refs", [False, True])
def test_second_source_overwrites_the_first_in_a_directory_the_first_made(
        tmp_path: Path, rootfs: StagedRootfs, leave_refs: bool) -> None:
    # The first source makes /dst and its subdirectory (names it can place without looking);
    # the second puts the same names there again and must replace them, as a copy over
    # anything else would.
    ctx = make(tmp_path / "two", {"a/d/x": "from a", "a/d/sub/y": "from a",
                                  "b/d/x": "from b", "b/d/sub/y": "from b"})
    do(ctx, rootfs, instr("a/d", "b/d", dest="/dst/"), leave_refs=leave_refs)
    if leave_refs:
        assert {rel: ref.rel for rel, ref in rootfs.refs.items()} == {
            "dst/d/x": "b/d/x", "dst/d/sub/y": "b/d/sub/y"}
    else:
        assert tree(rootfs.root) == {
            "dst": ("dir", 0o755), "dst/d": ("dir", 0o755), "dst/d/sub": ("dir", 0o755),
            "dst/d/x": ("from b", 0o644), "dst/d/sub/y": ("from b", 0o644)}


class _Swapper(Recorder):
    """When the build starts step ``at`` (the stage's lazy restore done), swaps the cache
    entry's bin/good and bin/evil by name, as any process of the user could."""

    def __init__(self, cache: Path, at: int) -> None:
        super().__init__()
        self.cache, self.at = cache, at

    def step_started(self, step: StepInfo) -> None:
        if step.number == self.at:
            for d in self.cache.glob("steps/*/tree/bin"):
                os.rename(d / "good", d / "t")
                os.rename(d / "evil", d / "good")
                os.rename(d / "t", d / "evil")


def test_copy_from_a_stage_whose_cache_entry_files_were_swapped_fails(tmp_path: Path) -> None:
    """Red-team RC-1 (rc1c): two files of the entry alike in size, mode and mtime, swapped
    by name after the stage's lazy restore: each is still a verified inode, not the one
    verified at its path. The COPY --from (and the stage's snapshot before it) must refuse
    it: it copied EVIL to /good, and the stage's new entry kept the swap."""
    ctx = tmp_path / "ctx"
    (ctx / "base" / "bin").mkdir(parents=True)
    for name, text in (("good", "GOOD\n"), ("evil", "EVIL\n")):
        (ctx / "base" / "bin" / name).write_text(text)
        os.utime(ctx / "base" / "bin" / name, (1_600_000_000, 1_600_000_000))
    (ctx / "Acfile").write_text(
        "BEGIN ./base AS build\nCOPY small.txt /etc/small.txt\nCOPY last.txt /etc/last.txt\n"
        "BEGIN scratch\nNAME example.com/two\nCOPY --from=build /bin/good /good\n")
    (ctx / "small.txt").write_text("small\n")
    (ctx / "last.txt").write_text("last 1\n")
    acfile, cache, out = ctx / "Acfile", tmp_path / "cache", tmp_path / "out.aci"
    run(acfile, cache, tmp_path / "first.aci")
    (ctx / "last.txt").write_text("last 2\n")  # stage build: step 2 restored, step 3 runs
    with pytest.raises(AcbuildError) as failed:
        build(options(acfile, cache, out), _Swapper(cache, at=3))
    assert "cache entry sha256:" in failed.value.message and "\n" not in failed.value.message
    assert not out.exists()
    run(acfile, cache, out)  # the entry is discarded: rebuilt, the right bytes
    with tarfile.open(out) as t:
        good = t.extractfile("rootfs/good")
        assert good is not None and good.read() == b"GOOD\n"
