"""RUN --mount=type=cache and type=bind through the real CLI and sandbox: what the step
sees, what the image and the step key keep (cache: neither; bind: the key), and the ways
out an outsider would try (symlinks in and around the context, sockets, targets over the
sandbox's own /proc and /dev)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.support.busybox import make_busybox_rootfs
from tests.support.cli import Result, acbuild
from tests.support.repoint import acbuild_repointed
from tests.support.sandboxrun import IS_ROOT, needs_sandbox

pytestmark = needs_sandbox


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    make_busybox_rootfs(tmp_path / "rootfs")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    return ctx


def write(ctx: Path, *runs: str, first: str = "ENV V=1") -> Path:
    lines = "".join(f"RUN {r}\n" for r in runs)
    (ctx / "Acfile").write_text(f"BEGIN ../rootfs\nNAME example.com/mounts\n{first}\n{lines}"
                                "EXEC /bin/sh\n")
    return ctx / "Acfile"


def build(tmp_path: Path, acfile: Path, *extra: str | Path) -> Result:
    return acbuild("build", "--allow-path", tmp_path, acfile, "-o", tmp_path / "out.aci",
                   "--progress", "plain", *extra,
                   env={"XDG_CACHE_HOME": str(tmp_path / "cache"),
                        "XDG_STATE_HOME": str(tmp_path / "state")})


def names(image: Path) -> list[str]:
    with tarfile.open(image) as tar:
        return tar.getnames()


def output(result: Result) -> list[str]:
    return [line.split("| ", 1)[1] for line in result.stderr.splitlines() if "] | " in line]


# -- cache ------------------------------------------------------------------------------------

COUNT = ("--mount=type=cache,target=/var/cache/app /bin/sh -c "
         "'echo run >> /var/cache/app/runs; echo runs=$(wc -l < /var/cache/app/runs)'")


def test_cache_persists_and_stays_out_of_the_image(ctx: Path, tmp_path: Path) -> None:
    got = build(tmp_path, write(ctx, COUNT))
    assert got.code == 0, got.stderr
    assert output(got) == ["runs=1"]
    assert not [n for n in names(tmp_path / "out.aci") if n.startswith("rootfs/var")]
    again = build(tmp_path, write(ctx, COUNT, first="ENV V=2"))  # an earlier step changed
    assert again.code == 0, again.stderr
    assert output(again) == ["runs=2"]
    nocache = build(tmp_path, write(ctx, COUNT, first="ENV V=3"), "--no-cache")
    assert output(nocache) == ["runs=3"]  # a cache mount is not the step cache


def test_cache_mount_goes_into_the_cache_opened_not_where_its_path_leads_now(
        ctx: Path, tmp_path: Path) -> None:
    """RK-4: the --cache-dir symlink re-pointed the instant after the cache was opened, to
    another program's directory that has a mounts/: the RUN's cache mount is made, and
    written, in the opened cache; nothing is made in the other directory."""
    real, other = tmp_path / "real", tmp_path / "other"
    real.mkdir()
    (other / "mounts").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    acfile = write(ctx, "--mount=type=cache,id=c1,target=/c /bin/sh -c 'echo hi > /c/x'")
    r = acbuild_repointed(tmp_path / "link", other, "build", "--allow-path", tmp_path, acfile,
                          "-o", tmp_path / "o.aci",
                          "--cache-dir", tmp_path / "link",
                          env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.code == 0, r.stderr
    assert os.readlink(tmp_path / "link") == str(other)  # the race was won
    assert list(other.rglob("*")) == [other / "mounts"]
    (entry,) = (real / "mounts").iterdir()
    assert (entry / "data.0" / "x").read_text() == "hi\n"


def test_cache_content_is_no_part_of_the_step_key(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, COUNT)
    first = build(tmp_path, acfile)
    (data,) = (tmp_path / "cache").glob("acbuild-py/build-cache/mounts/*/data.0")
    (data / "runs").write_text("changed on the host\n")
    again = build(tmp_path, acfile)
    assert again.code == 0 and output(again) == []  # cached: the step did not run
    assert again.stdout == first.stdout


def test_cache_id_defaults_to_target_and_is_only_hashed(ctx: Path, tmp_path: Path) -> None:
    acfile = write(
        ctx,
        "--mount=type=cache,target=/a,id=../../../escape /bin/sh -c 'echo x > /a/f'",
        "--mount=type=cache,target=/b,id=../../../escape /bin/sh -c 'cat /b/f'",
        "--mount=type=cache,target=/a /bin/sh -c 'ls /a | wc -l'")
    got = build(tmp_path, acfile)
    assert got.code == 0, got.stderr
    assert output(got) == ["x", "0"]
    mounts = tmp_path / "cache/acbuild-py/build-cache/mounts"
    assert sorted((p / "id").read_text() for p in mounts.iterdir()) == ["../../../escape",
                                                                        "/a"]
    assert not list(tmp_path.glob("**/escape"))
    listed = acbuild("cache", "list", "--cache-dir", tmp_path / "cache/acbuild-py/build-cache")
    assert "mount ../../../escape" in listed.stdout
    pruned = acbuild("cache", "prune", "--all",
                     "--cache-dir", tmp_path / "cache/acbuild-py/build-cache")
    assert pruned.code == 0, pruned.stderr
    assert list(mounts.iterdir()) == []


@pytest.mark.skipif(not IS_ROOT, reason="other users in the sandbox need a build as root")
def test_cache_belongs_to_the_user_the_step_runs_as(ctx: Path, tmp_path: Path) -> None:
    acfile = write(ctx, "--user=65534 --mount=type=cache,target=/c /bin/sh -c "
                   "'echo mine > /c/f && stat -c %u:%g:%a /c'",
                   "--mount=type=cache,target=/d,uid=1,gid=2,mode=0750 /bin/sh -c "
                   "'stat -c %u:%g:%a /d'")
    got = build(tmp_path, acfile)
    assert got.code == 0, got.stderr
    assert output(got) == ["65534:65534:755", "1:2:750"]


# -- bind from the context --------------------------------------------------------------------

SHOW = "--mount=type=bind,source=src,target=/src /bin/sh -c 'cat /src/a; find /src | sort'"


def test_bind_shows_the_context_read_only(ctx: Path, tmp_path: Path) -> None:
    (ctx / "src").mkdir()
    (ctx / "src/a").write_text("one\n")
    acfile = write(ctx, "--mount=type=bind,source=src,target=/src /bin/sh -c "
                   "'cat /src/a; touch /src/new || echo read-only'")
    got = build(tmp_path, acfile)
    assert got.code == 0, got.stderr
    assert output(got)[0] == "one" and output(got)[-1] == "read-only"
    assert not (ctx / "src/new").exists()
    assert not [n for n in names(tmp_path / "out.aci") if n.startswith("rootfs/src")]


def test_bind_content_is_part_of_the_step_key(ctx: Path, tmp_path: Path) -> None:
    (ctx / "src").mkdir()
    (ctx / "src/a").write_text("one\n")
    (ctx / "elsewhere").write_text("x\n")
    acfile = write(ctx, SHOW)
    assert output(build(tmp_path, acfile))[0] == "one"
    (ctx / "elsewhere").write_text("y\n")
    assert output(build(tmp_path, acfile)) == []  # outside the source: still cached
    (ctx / "src/a").write_text("two\n")
    assert output(build(tmp_path, acfile))[0] == "two"


def test_bind_leaves_out_what_the_ignore_file_excludes(ctx: Path, tmp_path: Path) -> None:
    (ctx / "src/node_modules/pkg").mkdir(parents=True)
    (ctx / "src/node_modules/pkg/index.js").write_text("secret module\n")
    (ctx / "src/a").write_text("one\n")
    (ctx / "src/.env").write_text("API_KEY=abc\n")
    (ctx / "src/.env.sock").symlink_to("/etc/passwd")  # excluded: absent, not refused
    os.mkfifo(ctx / "src/node_modules/fifo")
    (ctx / ".acignore").write_text("node_modules/\n.env*\n")
    acfile = write(ctx, "--mount=type=bind,source=src,target=/src /bin/sh -c "
                   "'ls -A /src; cat /src/a'")
    got = build(tmp_path, acfile)
    assert got.code == 0, got.stderr
    assert output(got) == ["a", "one"]
    (ctx / "src/node_modules/pkg/index.js").write_text("changed\n")
    assert output(build(tmp_path, acfile)) == []  # ignored: no part of the key either


def test_bind_of_an_excluded_source_is_refused(ctx: Path, tmp_path: Path) -> None:
    (ctx / "build").mkdir()
    (ctx / ".acignore").write_text("build/\n")
    got = build(tmp_path, write(ctx, "--mount=type=bind,source=build,target=/b true"))
    assert got.code == 1
    assert "RUN --mount source 'build' is excluded by .acignore" in got.stderr


def test_a_symlinked_source_cannot_leave_the_context(ctx: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/host-only").write_text("host\n")
    (ctx / "out").symlink_to(tmp_path / "outside")
    (ctx / "rel").symlink_to("../outside")
    for source in ("out", "out/host-only", "rel", "rel/"):
        got = build(tmp_path, write(ctx, f"--mount=type=bind,source={source},target=/o true"))
        assert got.code == 1, source
        assert "leaves the build context through symlink" in got.stderr, got.stderr
        assert "Traceback" not in got.stderr


def test_a_symlink_inside_the_source_resolves_inside_the_sandbox(ctx: Path,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/host-only").write_text("host\n")
    (ctx / "src").mkdir()
    (ctx / "src/abs").symlink_to(tmp_path / "outside")
    (ctx / "src/up").symlink_to("../../outside")
    acfile = write(ctx, "--mount=type=bind,source=src,target=/src /bin/sh -c "
                   "'cat /src/abs/host-only /src/up/host-only 2>&1; true'")
    got = build(tmp_path, acfile)
    assert got.code == 0, got.stderr
    assert "host" not in output(got)  # the image has no such path: nothing of the host


def test_a_socket_or_fifo_in_the_source_is_refused(ctx: Path, tmp_path: Path) -> None:
    (ctx / "src").mkdir()
    os.mkfifo(ctx / "src/fifo")
    got = build(tmp_path, write(ctx, SHOW))
    assert got.code == 1
    assert "RUN --mount source 'src' holds 'fifo', a fifo" in got.stderr
    os.unlink(ctx / "src/fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(ctx / "src/host.sock"))  # a host service the step could talk to
        got = build(tmp_path, write(ctx, SHOW))
    assert got.code == 1
    assert "holds 'host.sock', a socket" in got.stderr


def test_the_whole_context_and_a_single_file(ctx: Path, tmp_path: Path) -> None:
    (ctx / "go.mod").write_text("module x\n")
    acfile = write(ctx, "--mount=target=/ctx --mount=type=bind,source=go.mod,target=/m/go.mod "
                   "/bin/sh -c 'cat /ctx/go.mod /m/go.mod; ls /ctx'")
    got = build(tmp_path, acfile)
    assert got.code == 0, got.stderr
    assert output(got) == ["module x", "module x", "Acfile", "go.mod"]


# -- bind from a stage ------------------------------------------------------------------------


def test_bind_from_a_stage_resolves_symlinks_inside_it(ctx: Path, tmp_path: Path) -> None:
    (ctx / "Acfile").write_text(
        "BEGIN ../rootfs AS tools\n"
        "RUN /bin/sh -c 'mkdir -p /opt/t && echo tool > /opt/t/x && ln -s /opt/t /link "
        "&& ln -s ../../../../.. /opt/t/up'\n"
        "BEGIN ../rootfs\nNAME example.com/mounts\n"
        "RUN --mount=type=bind,from=tools,source=/link,target=/t /bin/sh -c "
        "'cat /t/x; ls /t/up/ | head -1'\nEXEC /bin/sh\n")
    got = build(tmp_path, ctx / "Acfile")
    assert got.code == 0, got.stderr
    assert output(got) == ["tool", "bin"]  # /t/up climbs to the image's own /
    (ctx / "Acfile").write_text(
        "BEGIN ../rootfs AS tools\nBEGIN ../rootfs\nNAME example.com/mounts\n"
        "RUN --mount=type=bind,from=tools,source=/nope,target=/t true\n")
    got = build(tmp_path, ctx / "Acfile")
    assert got.code == 1
    assert "RUN --mount source '/nope' in stage 'tools': not found" in got.stderr


@pytest.mark.parametrize("cache", [(), ("--no-cache",)])
def test_bind_from_a_stage_without_run_shows_its_unstaged_files(ctx: Path, tmp_path: Path,
                                                               cache: tuple[str, ...]) -> None:
    # A stage with no RUN leaves its base's files and its COPYs unstaged (read by the
    # finalizer); a bind of that stage must show them, from two stages built at once.
    (ctx / "note").write_text("copied\n")
    (ctx / "Acfile").write_text(
        "BEGIN ../rootfs AS tools\nCOPY note /opt/note\n"
        "BEGIN ../rootfs AS a\n"
        "RUN --mount=type=bind,from=tools,target=/t "
        "/bin/sh -c 'cat /t/opt/note; ls /t/bin/busybox'\n"
        "BEGIN ../rootfs\nNAME example.com/mounts\n"
        "RUN --mount=type=bind,from=tools,target=/t /bin/sh -c 'cat /t/opt/note'\n"
        "COPY --from=a /etc/passwd /etc/passwd.a\nEXEC /bin/sh\n")
    got = build(tmp_path, ctx / "Acfile", *cache)
    assert got.code == 0, got.stderr
    assert sorted(output(got)) == ["/t/bin/busybox", "copied", "copied"]


# -- targets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("link", "message"), [
    ("/proc", "RUN --mount target '/x' leads to '/proc' through a symlink: the sandbox's own"),
    ("/dev/shm", "RUN --mount target '/x' leads to '/dev' through a symlink"),
    ("/", "RUN --mount target '/x' leads to '/' through a symlink: the whole image"),
    ("/run/secrets/k", "RUN --mount target '/x' leads to '/run/secrets' through a symlink"),
])
def test_a_target_through_an_image_symlink_cannot_reach_the_sandbox(
        ctx: Path, tmp_path: Path, link: str, message: str) -> None:
    (tmp_path / "rootfs/x").symlink_to(link)
    got = build(tmp_path, write(ctx, "--mount=type=cache,target=/x true"))
    assert got.code == 1
    assert message in got.stderr, got.stderr


def test_a_target_through_a_symlink_lands_inside_the_image(ctx: Path, tmp_path: Path) -> None:
    (tmp_path / "rootfs/usr/lib/cache").mkdir(parents=True)
    (tmp_path / "rootfs/lib").symlink_to("usr/lib")
    got = build(tmp_path, write(ctx, "--mount=type=cache,target=/lib/cache /bin/sh -c "
                                "'echo x > /lib/cache/f; ls /usr/lib/cache'"))
    assert got.code == 0, got.stderr
    assert output(got) == ["f"]
    assert "rootfs/usr/lib/cache/f" not in names(tmp_path / "out.aci")


def _blocked_flocks(root: Path, wanted: int, timeout: float) -> int:
    """How many flocks /proc/locks shows waiting on the lock files below ``root``, once there
    are ``wanted`` of them (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        inodes = {str(p.stat().st_ino) for p in root.glob("*/lock.*")}
        blocked = 0
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 6 and fields[1] == "->" and fields[2] == "FLOCK" \
                    and fields[6].rsplit(":", 1)[-1] in inodes:
                blocked += 1
        if blocked >= wanted or time.monotonic() > deadline:
            return blocked
        time.sleep(0.02)


def test_locked_caches_taken_in_opposite_orders_do_not_deadlock(ctx: Path,
                                                                tmp_path: Path) -> None:
    """The red team's RM-2: while someone holds cache b, build A (a, b) and build B (b, a)
    start; once b is free both must finish (locks are taken in one order, by id)."""
    import threading

    from acbuild.cache.cache import CacheStore
    from acbuild.cache.mountcache import Owner

    env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    mounts = CacheStore(tmp_path / "cache/acbuild-py/build-cache").mounts
    procs = []
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with mounts.use("b", "locked", Owner(uid=os.geteuid(), gid=os.getegid())):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    try:
        for name, order in (("a", "a b"), ("b", "b a")):
            spec = " ".join(f"--mount=type=cache,target=/{i},id={i},sharing=locked"
                            for i in order.split())
            sub = ctx.parent / f"ctx-{name}"
            sub.mkdir()
            (sub / "Acfile").write_text(f"BEGIN ../rootfs\nNAME example.com/{name}\n"
                                        f"RUN {spec} /bin/sh -c 'sleep 1'\n")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "acbuild", "build", "--allow-path", str(tmp_path),
                 str(sub / "Acfile"), "-o", str(tmp_path / f"{name}.aci")], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        waiting = _blocked_flocks(mounts.shown / "mounts", 2, timeout=60)
        assert waiting >= 2  # both builds now wait: with one order, one for a, one for b
    finally:
        release.set()
        holder.join(30)
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            proc.kill()
