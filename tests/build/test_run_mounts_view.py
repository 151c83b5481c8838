"""RUN --mount=type=bind of the build context while the context changes: the step sees the
listing taken when it started, never an entry made later (excluded or not), activity in an
excluded directory does not matter, and a listed file changed in place fails the step.
Real builds, real sandbox; the context is changed from here while the RUN waits."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from acbuild.cache.warm import settled
from tests.support.busybox import make_busybox_rootfs
from tests.support.gate import Gate
from tests.support.sandboxrun import needs_sandbox

pytest_plugins = ("tests.support.shm",)

pytestmark = needs_sandbox

CACHES = [pytest.param((), id="cache"), pytest.param(("--no-cache",), id="no-cache")]


def poll(name: str, made: Gate, looked: Gate) -> str:
    """A step that, once /ctx/NAME was made (``made`` opened), copies it out if it is there,
    and says at the end whether it was."""
    return (f"/bin/sh -c 'echo started; {made.cmd}; test -e /ctx/{name} && cp /ctx/{name} "
            f"/leak; {looked.cmd}; cat /leak 2>/dev/null || echo absent'")


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    make_busybox_rootfs(tmp_path / "rootfs")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    return ctx


def write(ctx: Path, run: str) -> Path:
    (ctx / "Acfile").write_text(f"BEGIN ../rootfs\nNAME example.com/view\nENV V=1\nRUN {run}\n"
                                "EXEC /bin/sh\n")
    return ctx / "Acfile"


def build_while(tmp_path: Path, acfile: Path, on_started: Callable[[], None],
                *extra: str) -> tuple[int, list[str], str]:
    """Build; once the RUN printed 'started', ``on_started()``. The exit status, the RUN's
    output lines and the whole stderr."""
    env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "acbuild", "build", "--allow-path",
                             str(tmp_path), str(acfile), "-o", str(tmp_path / "out.aci"),
                             "--progress", "plain", *extra], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.endswith("| started\n"):
            on_started()
            break
    seen.append(proc.stderr.read())
    proc.stderr.close()
    code = proc.wait(60)
    text = "".join(seen)
    return code, [x.split("| ", 1)[1] for x in text.splitlines() if "] | " in x], text


def leak(image: Path) -> bytes | None:
    with tarfile.open(image) as tar:
        try:
            member = tar.extractfile("rootfs/leak")
        except KeyError:
            return None
        return member.read() if member is not None else None


def come_and_go(path: Path, text: str, made: Gate, looked: Gate) -> Callable[[], None]:
    """The file is there while the ``poll`` step looks for it, and gone before it ends."""
    def change() -> None:
        path.write_text(text)
        made.open()
        looked.reached()
        path.unlink()
        looked.open()
    return change


def in_turn(*actions: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        for action in actions:
            action()
    return run


@pytest.mark.parametrize("cache", CACHES)
def test_an_excluded_file_that_comes_and_goes_is_never_seen(ctx: Path, tmp_path: Path,
                                                            cache: tuple[str, ...]) -> None:
    """The red team's RM-3b: with a live bind the step copied it (rc 0, secret in the
    image); the view holds only what was listed when the step started."""
    (ctx / ".acignore").write_text("*.env\n")
    made, looked = Gate(), Gate()
    acfile = write(ctx, "--mount=type=bind,target=/ctx " + poll("late.env", made, looked))
    code, out, text = build_while(tmp_path, acfile,
                                  come_and_go(ctx / "late.env", "LATE-IGNORED-SECRET\n",
                                              made, looked),
                                  *cache)
    assert code == 0, text
    assert out == ["started", "absent"]
    assert leak(tmp_path / "out.aci") is None
    assert "LATE-IGNORED-SECRET" not in text


def test_a_file_that_comes_and_goes_is_not_seen_so_the_cached_step_is_right(
        ctx: Path, tmp_path: Path) -> None:
    """A non-excluded file made and removed during the step: a live bind showed it, and the
    step was cached under a key (taken before and after) that never hashed it."""
    made, looked = Gate(), Gate()
    acfile = write(ctx, "--mount=type=bind,target=/ctx " + poll("new.txt", made, looked))
    code, out, text = build_while(tmp_path, acfile,
                                  come_and_go(ctx / "new.txt", "NEW\n", made, looked))
    assert code == 0, text
    assert out == ["started", "absent"]
    assert leak(tmp_path / "out.aci") is None
    code, out, text = build_while(tmp_path, acfile, lambda: None)  # cached: the same image
    assert code == 0 and out == [], text
    assert leak(tmp_path / "out.aci") is None


def test_git_activity_in_an_excluded_directory_does_not_fail_the_step(ctx: Path,
                                                                      tmp_path: Path) -> None:
    """The red team's RM-4: `git status` makes and removes .git/index.lock; an excluded
    directory is not in the view at all, so nothing there matters to the step."""
    (ctx / ".git/objects").mkdir(parents=True)
    (ctx / ".git/HEAD").write_text("ref: refs/heads/main\n")
    (ctx / "hello").write_text("ok\n")
    (ctx / ".acignore").write_text(".git\n")

    gate = Gate()

    def churn() -> None:
        for _ in range(5):
            (ctx / ".git/index.lock").write_text("lock\n")
            (ctx / ".git/index.lock").unlink()
        (ctx / ".git/objects/new").write_text("x\n")
        (ctx / ".git/HEAD").unlink()
        gate.open()

    acfile = write(ctx, "--mount=type=bind,target=/ctx /bin/sh -c "
                   f"'echo started; {gate.cmd}; test -e /ctx/.git || echo no-git; "
                   "cat /ctx/hello'")
    code, out, text = build_while(tmp_path, acfile, churn)
    assert code == 0, text
    assert out == ["started", "no-git", "ok"]


@pytest.mark.parametrize("change", ["kept", "reverted"])
@pytest.mark.parametrize("cache", CACHES)
def test_a_bound_file_edited_in_place_during_the_step_fails_it(
        ctx: Path, tmp_path: Path, cache: tuple[str, ...], change: str) -> None:
    """Files are the context's own inodes, so an in-place write shows; its ctime gives it
    away even with the mtime put back, and even when the content is put back before the
    step ends (then a key check over the context after the step saw the old content and
    cached what the step made from 'two' under the key of 'one')."""
    (ctx / "src").mkdir()
    (ctx / "src/a").write_text("one\n")
    edited, copied = Gate(), Gate()
    acfile = write(ctx, "--mount=type=bind,source=src,target=/src /bin/sh -c "
                   f"'cat /src/a; echo started; {edited.cmd}; cat /src/a > /leak; "
                   f"{copied.cmd}'")

    def edit() -> None:
        st = os.stat(ctx / "src/a")
        for text, gate in [("two\n", edited), ("one\n", copied)][
                :2 if change == "reverted" else 1]:
            with open(ctx / "src/a", "r+") as f:  # in place: same inode
                f.write(text)
            os.utime(ctx / "src/a", ns=(st.st_atime_ns, st.st_mtime_ns))
            gate.open()  # the step read 'two'; then (reverted) it ends on 'one' again
        if change == "kept":
            copied.open()

    code, out, text = build_while(tmp_path, acfile, edit, *cache)
    assert code == 1, text
    assert ("error: the build context changed while the step ran: 'src/a', which RUN "
            "--mount source 'src' showed, was modified") in text
    assert "Traceback" not in text
    assert not (tmp_path / "out.aci").exists()
    (ctx / "src/a").write_text("one\n")
    code, out, text = build_while(tmp_path, acfile, in_turn(edited.open, copied.open))
    assert code == 0, text
    assert out[0] == "one"  # nothing was cached from the failed step
    assert leak(tmp_path / "out.aci") == b"one\n"


def test_a_bound_single_file_edited_in_place_fails_the_step(ctx: Path, tmp_path: Path) -> None:
    (ctx / "go.mod").write_text("module one\n")
    gate = Gate()
    acfile = write(ctx, "--mount=type=bind,source=go.mod,target=/m/go.mod /bin/sh -c "
                   f"'echo started; {gate.cmd}; cat /m/go.mod'")

    def edit() -> None:
        with open(ctx / "go.mod", "r+") as f:
            f.write("module two\n")
        gate.open()

    code, out, text = build_while(tmp_path, acfile, edit, "--no-cache")
    assert code == 1, text
    assert out == ["started", "module two"]  # a write shows through: hence the failure
    assert ("the build context changed while the step ran: 'go.mod', which RUN --mount "
            "source 'go.mod' showed, was modified") in text


def test_a_change_between_planning_and_the_step_stops_it_before_it_runs(
        ctx: Path, tmp_path: Path) -> None:
    """The key was taken when the build planned; the listing when the step starts. A file
    edited in between (during an earlier, slow step) no longer matches: the step does not
    run on content its key never hashed."""
    (ctx / "src").mkdir()
    (ctx / "src/a").write_text("one\n")
    gate = Gate()
    (ctx / "Acfile").write_text(
        "BEGIN ../rootfs\nNAME example.com/view\n"
        f"RUN /bin/sh -c 'echo started; {gate.cmd}'\n"
        "RUN --mount=type=bind,source=src,target=/src /bin/sh -c 'echo saw $(cat /src/a)'\n")
    code, out, text = build_while(tmp_path, ctx / "Acfile",
                                  in_turn(lambda: (ctx / "src/a").write_text("two\n"),
                                          gate.open))
    assert code == 1, text
    assert out == ["started"]  # the second RUN never ran
    assert ("error: the build context changed while the build used it: what this step's "
            "--mount=type=bind shows is not what its cache key hashed") in text
    code, out, text = build_while(tmp_path, ctx / "Acfile", lambda: None)
    assert code == 0, text
    assert out == ["saw two"]  # the first RUN is cached; the second runs on what is there


def test_the_view_shows_the_tree_as_it_is(ctx: Path, tmp_path: Path) -> None:
    """Directories (empty ones, modes), symlinks (resolving inside the sandbox), hard links,
    names that are not UTF-8, all read-only; what the RUN reads is the files' content."""
    (ctx / "d/empty").mkdir(parents=True)
    (ctx / "d/sub").mkdir()
    (ctx / "d/sub/f").write_text("deep\n")
    (ctx / "d/sub").chmod(0o750)
    os.link(ctx / "d/sub/f", ctx / "d/hard")
    (ctx / "d/link").symlink_to("sub/f")
    (ctx / "d/x").write_text("exec\n")
    (ctx / "d/x").chmod(0o755)
    os.mkdir(os.fsencode(ctx / "d") + b"/caf\xe9")
    acfile = write(ctx, "--mount=type=bind,source=d,target=/d /bin/sh -c "
                   "'cd /d && ls -A | wc -l; cat link hard; stat -c %a sub x; "
                   "test -d empty && echo empty-dir; touch sub/n 2>/dev/null || echo ro; "
                   "mkdir empty/n 2>/dev/null || echo ro'")
    code, out, text = build_while(tmp_path, acfile, lambda: None)
    assert code == 0, text
    assert out == ["6", "deep", "deep", "750", "755", "empty-dir", "ro", "ro"]


def test_files_made_and_removed_beside_listed_ones_do_not_matter(ctx: Path,
                                                                 tmp_path: Path) -> None:
    """Only listed files are checked after the step: a tool churning through temporary
    files in a bound (not excluded) directory neither shows them nor fails the step."""
    (ctx / "work").mkdir()
    (ctx / "work/kept").write_text("kept\n")

    gate = Gate()

    def churn() -> None:
        for i in range(200):
            (ctx / f"work/tmp{i}").write_text("x\n")
            (ctx / f"work/sub{i}").mkdir()
            (ctx / f"work/sub{i}").rmdir()
            (ctx / f"work/tmp{i}").unlink()
        gate.open()

    acfile = write(ctx, "--mount=type=bind,target=/ctx /bin/sh -c "
                   f"'echo started; {gate.cmd}; ls /ctx/work'")
    code, out, text = build_while(tmp_path, acfile, churn)
    assert code == 0, text
    assert out == ["started", "kept"]


def test_a_listed_file_removed_during_the_step_fails_it(ctx: Path, tmp_path: Path) -> None:
    (ctx / "a").write_text("one\n")
    gate = Gate()
    acfile = write(ctx, "--mount=type=bind,target=/ctx /bin/sh -c "
                   f"'echo started; {gate.cmd}; cat /ctx/a'")
    code, out, text = build_while(tmp_path, acfile,
                                  in_turn((ctx / "a").unlink, gate.open))
    assert code == 1, text
    assert out == ["started", "one"]  # the step still had the file it was shown
    assert ("the build context changed while the step ran: 'a', which RUN --mount source "
            "'.' showed, was removed or replaced") in text


def test_the_builds_own_log_or_cache_in_the_source_is_refused_unless_excluded(
        ctx: Path, tmp_path: Path) -> None:
    """The build writes its log and cache while steps run: bound, they would change under
    every step (and a cache key that hashed them could never hold). Before, the build
    failed with 'the build context changed', blaming the user for the builder's writes."""
    (ctx / "a").write_text("one\n")
    acfile = write(ctx, "--mount=type=bind,target=/ctx /bin/sh -c 'cat /ctx/a'")
    for extra, name in ((("--log-file", str(ctx / "build.log")), "build.log"),
                        (("--cache-dir", str(ctx / ".cache")), ".cache")):
        code, out, text = build_while(tmp_path, acfile, lambda: None, *extra)
        assert code == 1, text
        assert (f"error: RUN --mount source '.' holds '{name}', which this build writes to "
                "while it runs (its log file or cache directory)") in text
        assert out == []
    (ctx / ".acignore").write_text("build.log\n.cache/\n")
    code, out, text = build_while(tmp_path, acfile, lambda: None, "--log-file",
                                  str(ctx / "build.log"), "--cache-dir", str(ctx / ".cache"))
    assert code == 0, text
    assert out == ["one"]


def test_a_bound_file_written_through_a_shared_mapping_during_the_step_fails_it(
        ctx: Path, tmp_path: Path) -> None:
    """The red team's BS-1: a store into an already dirty page of a MAP_SHARED mapping
    changes no timestamp, so the signatures match; the content, hashed again after the
    step, does not: nothing is kept, and the original content later builds as itself."""
    import mmap

    (ctx / "data").mkdir()
    (ctx / "data/x").write_bytes(b"OLD-CONTENT\n")
    gate = Gate()
    acfile = write(ctx, "--mount=type=bind,source=data,target=/d /bin/sh -c "
                   f"'echo started; {gate.cmd}; cat /d/x > /leak; cat /d/x'")
    fd = os.open(ctx / "data/x", os.O_RDWR)
    try:
        with mmap.mmap(fd, 12) as mapped:
            mapped[0:3] = b"OLD"  # dirties the page now: later stores change no timestamp
            subprocess.run(["sleep", "1.5"], check=True)

            def store() -> None:
                mapped[0:3] = b"NEW"
                gate.open()

            code, out, text = build_while(tmp_path, acfile, store)
            mapped[0:3] = b"OLD"
    finally:
        os.close(fd)
    assert code == 1, text
    assert out == ["started", "NEW-CONTENT"]
    # (or "was modified", should writeback have cleaned the page and the store dated it)
    assert "'data/x', which RUN --mount source 'data' showed, " in text
    assert not (tmp_path / "out.aci").exists()
    code, out, text = build_while(tmp_path, acfile, gate.open)
    assert code == 0, text
    assert leak(tmp_path / "out.aci") == b"OLD-CONTENT\n"


def test_a_mapping_write_between_builds_fails_one_build_not_every_one(shm: Path) -> None:
    """The red team's BS-3: changed through a mapping between builds, the file keeps its
    signature, so the stat cache holds a stale digest and the key takes it. The step finds
    the content differs, fails, and drops that digest: the next build hashes the file
    afresh and builds what it holds."""
    import mmap

    make_busybox_rootfs(shm / "rootfs")
    ctx = shm / "ctx"
    (ctx / "data").mkdir(parents=True)
    (ctx / "data/x").write_bytes(b"OLD-CONTENT\n")
    fd = os.open(ctx / "data/x", os.O_RDWR)
    try:
        with mmap.mmap(fd, 12) as mapped:
            mapped[0:3] = b"OLD"  # the store that faults: it sets the times, later ones do not
            # Dated back after that store, then waited on until it counts as settled: the
            # first build's key remembers the digest it takes, however fast the build starts.
            os.utime(ctx / "data/x", (1_500_000_000, 1_500_000_000))
            while not settled(os.stat(ctx / "data/x"), time.time_ns()):
                time.sleep(0.05)
            held = os.stat(ctx / "data/x")
            first = write(ctx, "--mount=type=bind,source=data,target=/d /bin/cp /d/x /leak")
            code, _, text = build_while(shm, first, lambda: None)
            assert code == 0 and leak(shm / "out.aci") == b"OLD-CONTENT\n", text
            mapped[0:3] = b"NEW"
            now = os.stat(ctx / "data/x")
            # The premise: the digest the stat cache remembered is stale under a signature
            # that has not changed.
            assert (now.st_mtime_ns, now.st_ctime_ns) == (held.st_mtime_ns, held.st_ctime_ns)
            acfile = write(ctx, "--mount=type=bind,source=data,target=/d /bin/sh -c "
                           "'cp /d/x /leak; true'")
            code, _, text = build_while(shm, acfile, lambda: None)
            assert code == 1, text
            assert ("error: 'data/x', which RUN --mount source 'data' showed, holds other "
                    "content than the step's key hashed, though its timestamps did not "
                    "change") in text
            code, _, text = build_while(shm, acfile, lambda: None)
            assert code == 0, text
            assert leak(shm / "out.aci") == b"NEW-CONTENT\n"
            mapped[0:3] = b"OLD"
    finally:
        os.close(fd)
