"""`acbuild-py run` through the real CLI: output, exit status, cache, volumes, events, deps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acbuild.image.aci import image_id
from acbuild.sandbox.sandbox import sandbox_available
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import Result, acbuild
from tests.support.otheruser import NOBODY, as_nobody, shared_directory
from tests.support.procfs import processes_with

_reason = sandbox_available() if busybox_available() else "busybox-static is not installed"
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding busybox.aci (from a busybox rootfs directory)."""
    where = tmp_path_factory.mktemp("images")
    rootfs = make_busybox_rootfs(where / "rootfs")
    (where / "ctx").mkdir()
    (where / "ctx" / "Acfile").write_text(
        f"BEGIN {rootfs}\nNAME example.com/busybox\nEXEC /bin/sh\n")
    r = acbuild("build", "--no-cache", where / "ctx" / "Acfile", "-o", where / "busybox.aci",
                "--allow-path", rootfs)
    assert r.code == 0, r.stderr
    return where


def image(tmp_path: Path, images: Path, body: str, name: str = "app") -> Path:
    """An image built on busybox.aci from ``body``; written to tmp_path/<name>.aci."""
    ctx = tmp_path / f"ctx-{name}"
    ctx.mkdir(exist_ok=True)
    (ctx / "Acfile").write_text(
        f"BEGIN {images / 'busybox.aci'}\nNAME example.com/{name}\n{body}")
    out = tmp_path / f"{name}.aci"
    r = acbuild("build", "--no-cache", ctx / "Acfile", "-o", out, "--allow-path", images)
    assert r.code == 0, r.stderr
    return out


def run(tmp_path: Path, *args: str | Path) -> Result:
    return acbuild("run", "--no-stdin", *args,
                   env={"XDG_CACHE_HOME": str(tmp_path / "cache")}, timeout=60)


def test_output_and_exit_status(tmp_path: Path, images: Path) -> None:
    app = image(tmp_path, images, "EXEC /bin/sh -c 'echo out; echo err >&2; exit 3'\n")
    r = run(tmp_path, app)
    assert (r.code, r.stdout) == (3, "out\nerr\n")


def test_args_are_appended_and_options_before_image(tmp_path: Path, images: Path) -> None:
    app = image(tmp_path, images, "EXEC /bin/echo hello\n")
    assert run(tmp_path, app, "--", "a", "-b").stdout == "hello a -b\n"
    assert run(tmp_path, app, "--volume", "x").stdout == "hello --volume x\n"


def test_env_workdir_user_group_and_network(tmp_path: Path, images: Path) -> None:
    app = image(tmp_path, images, (
        "ENV GREETING=hi\nWORKDIR /srv\nUSER nobody\nGROUP nogroup\n"
        "EXEC /bin/sh -c 'echo $GREETING $AC_APP_NAME $(pwd) $(id -u):$(id -g) $(hostname); "
        "tail -n +3 /proc/net/dev | wc -l'\n"
    ))
    r = run(tmp_path, app)
    assert r.stdout.splitlines() == ["hi app /srv 65534:65534 app", "1"], r.stderr
    r = run(tmp_path, "--network=host", app)
    assert int(r.stdout.splitlines()[1]) == len(Path("/proc/net/dev").read_text().splitlines()) - 2


def test_cached_rootfs_stays_pristine(tmp_path: Path, images: Path) -> None:
    app = image(tmp_path, images,
                "EXEC /bin/sh -c 'cat /note 2>/dev/null || echo first; echo scribble > /note'\n")
    assert run(tmp_path, app).stdout == "first\n"
    r = acbuild("-v", "run", "--no-stdin", app, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.stdout == "first\n"  # the first run's writes went to its own copy
    assert "using cached rootfs" in r.stderr
    assert run(tmp_path, app).stderr == ""  # a warm run says nothing of its own
    cached = list((tmp_path / "cache" / "acbuild-py" / "rootfs").iterdir())
    assert [p.name.startswith("render-") for p in cached] == [True]  # keyed by every ID
    assert not (cached[0] / "rootfs" / "note").exists()
    assert not (cached[0] / "rootfs" / "proc").exists()
    assert list((tmp_path / "cache" / "acbuild-py" / "run").iterdir()) == []


def test_volumes(tmp_path: Path, images: Path) -> None:
    app = image(tmp_path, images, (
        "MOUNT data /data\nMOUNT conf /etc/conf --read-only\n"
        "EXEC /bin/sh -c 'cat /etc/conf/c; echo written > /data/out; "
        "touch /etc/conf/x 2>/dev/null || echo conf read-only'\n"
    ))
    data, conf = tmp_path / "data", tmp_path / "conf"
    data.mkdir()
    conf.mkdir()
    (conf / "c").write_text("config\n")
    r = run(tmp_path, "--volume", f"data:{data}", "--volume", f"conf:{conf}", app)
    assert (r.code, r.stdout) == (0, "config\nconf read-only\n"), r.stderr
    assert (data / "out").read_text() == "written\n"
    r = run(tmp_path, "--volume", f"data:{data}:ro", app)  # conf gets an empty directory
    assert r.stdout.startswith("cat: can't open '/etc/conf/c'")
    r = run(tmp_path, "--volume", f"nope:{data}", app)
    assert r.code == 1
    assert r.stderr.splitlines()[-1] == (
        "error: --volume nope: the image has no mount point 'nope' (it has: conf, data)")


def test_event_handlers(tmp_path: Path, images: Path) -> None:
    app = image(tmp_path, images, (
        "EVENT-HANDLER pre-start /bin/sh -c 'echo pre; echo prepared > /var-state'\n"
        "EVENT-HANDLER post-stop /bin/sh -c 'echo post; cat /var-state'\n"
        "EXEC /bin/sh -c 'cat /var-state; exit 4'\n"
    ))
    r = run(tmp_path, app)
    assert (r.code, r.stdout) == (4, "pre\nprepared\npost\nprepared\n"), r.stderr
    bad = image(tmp_path, images, "EVENT-HANDLER pre-start /bin/false\nEXEC /bin/echo app\n",
                name="bad")
    r = run(tmp_path, bad)
    assert (r.code, r.stdout) == (1, "")
    assert r.stderr.splitlines()[-1] == ("error: pre-start handler ['/bin/false'] failed with exit "
                                "status 1; the app was not started")


def test_dependencies_are_rendered_first(tmp_path: Path, images: Path) -> None:
    where = tmp_path / "repo"
    where.mkdir()
    (where / "busybox.aci").write_bytes((images / "busybox.aci").read_bytes())
    for name, files in (("dep", {"dep.txt": "from dep\n", "shared.txt": "dep's\n"}),
                        ("app", {"shared.txt": "app's\n"})):
        ctx = tmp_path / f"ctx-{name}"
        ctx.mkdir()
        for file, text in files.items():
            (ctx / file).write_text(text)
        # Pinned by image ID: an unpinned DEPENDENCY would be discovered over the network.
        deps = "" if name == "dep" else (
            f"DEPENDENCY example.com/busybox --image-id={image_id(where / 'busybox.aci')}\n"
            f"DEPENDENCY example.com/dep --image-id={image_id(where / 'dep.aci')}\n"
            "EXEC /bin/sh -c 'cat /etc/dep.txt /etc/shared.txt'\n")
        copies = "".join(f"COPY {file} /etc/{file}\n" for file in files)
        (ctx / "Acfile").write_text(f"BEGIN scratch\nNAME example.com/{name}\n{copies}{deps}")
        r = acbuild("build", "--no-cache", ctx / "Acfile", "-o", where / f"{name}.aci")
        assert r.code == 0, r.stderr
    r = run(tmp_path, where / "app.aci")
    assert (r.code, r.stdout) == (0, "from dep\napp's\n"), r.stderr
    (where / "dep.aci").unlink()
    (tmp_path / "cache").rename(tmp_path / "old-cache")
    r = run(tmp_path, where / "app.aci")
    assert r.code == 1
    assert f"error: dependency example.com/dep of {where / 'app.aci'} is not available " \
        "locally" in r.stderr


def test_bad_signature_beside_the_image_is_refused(tmp_path: Path, images: Path) -> None:
    app = image(tmp_path, images, "EXEC /bin/echo hi\n")
    Path(f"{app}.asc").write_text("not a signature")
    r = run(tmp_path, app)
    assert r.code == 1 and r.stdout == ""
    assert "error:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_leaves_nothing(tmp_path: Path, images: Path, signum: int,
                                        status: int) -> None:
    marker = f"4261.{int(signum)}{os.getpid()}"  # not another run's on the machine
    app = image(tmp_path, images, f"EXEC /bin/sh -c 'echo started; exec sleep {marker}'\n")
    env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with subprocess.Popen([sys.executable, "-m", "acbuild", "run", "--no-stdin", app],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=env) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "started\n"
            time.sleep(0.2)
            proc.send_signal(signum)
            assert proc.wait(timeout=20) == status
        finally:
            if proc.poll() is None:
                proc.kill()
    assert list((tmp_path / "cache" / "acbuild-py" / "run").iterdir()) == []
    deadline = time.monotonic() + 10  # generous: the kernel tears the namespace down async
    while processes_with(marker.encode()):
        assert time.monotonic() < deadline, "the app outlived acbuild-py run"
        time.sleep(0.05)


def test_what_a_killed_run_left_is_removed_by_the_next(tmp_path: Path, images: Path) -> None:
    """SIGKILL leaves the run's scratch copy of the rootfs (hundreds of MB for a real
    image), and a render that was killed its half-made entry: each is named after its
    process and held while it lives, so the next run removes them, and nothing live."""
    from acbuild.fs.leftovers import owner_tag

    marker = f"4262.9{os.getpid()}"  # not another run's on the machine
    app = image(tmp_path, images, f"EXEC /bin/sh -c 'echo started; exec sleep {marker}'\n")
    env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with subprocess.Popen([sys.executable, "-m", "acbuild", "run", "--no-stdin", app],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=env) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        proc.kill()
    runs = tmp_path / "cache" / "acbuild-py" / "run"
    assert [p.name.split(".")[0] for p in runs.iterdir()] == [f"run-{proc.pid}-" +
                                                             owner_tag().split("-")[1]]
    rendered = tmp_path / "cache" / "acbuild-py" / "rootfs"
    half = rendered / f".tmp-{proc.pid}-{owner_tag().split('-')[1]}.0badc0de"
    (half / "rootfs" / "bin").mkdir(parents=True)
    quick = image(tmp_path, images, "EXEC /bin/true\n", name="quick")  # a new entry: rendered
    assert run(tmp_path, quick).code == 0
    assert list(runs.iterdir()) == []
    assert not half.exists()
    deadline = time.monotonic() + 10
    while processes_with(marker.encode()):
        assert time.monotonic() < deadline, "the app outlived its killed acbuild-py run"
        time.sleep(0.05)


# -- the rendered-rootfs cache and other local users (RK-10) -------------------------------

# The real CLI; right after the image is hashed (the seconds a large image takes), the
# symlink argv[1] is re-pointed at argv[2], as a racing `ln -sfn` would.
_REPOINT_AFTER_HASH = """
import os, sys
link, target = sys.argv[1], sys.argv[2]
sys.argv = ["acbuild-py", *sys.argv[3:]]
from acbuild.run.render_deps import Renderer
resolve = Renderer.resolve
def resolved(self, image):
    node = resolve(self, image)
    os.symlink(target, link + ".new")
    os.replace(link + ".new", link)
    return node
Renderer.resolve = resolved
from acbuild.cli.main import main
sys.exit(main())
"""


def planted_entry(tmp_path: Path, app: Path, where: Path) -> str:
    """Another user's copy of ``app``'s rendered entry at ``where/rootfs/<key>`` whose
    /bin/echo says PLANTED (the key is computable by anyone who can read the image); the
    key."""
    probe = tmp_path / "probe"
    assert run(probe, app).code == 0
    [entry] = (probe / "cache" / "acbuild-py" / "rootfs").iterdir()
    planted = where / "rootfs" / entry.name
    planted.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(entry), str(planted)], check=True)
    echo = planted / "rootfs" / "bin" / "echo"
    echo.unlink()
    echo.write_text("#!/bin/sh\necho PLANTED rootfs ran as uid $(id -u)\n")
    echo.chmod(0o755)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(where)], check=True)
    return entry.name


@pytest.fixture
def shared() -> Iterator[Path]:
    yield from shared_directory()


def test_a_cache_path_through_another_users_directory_is_refused(
        tmp_path: Path, images: Path, shared: Path) -> None:
    app = image(tmp_path, images, "EXEC /bin/echo genuine image\n")
    xdg, victim = shared / "xdg", tmp_path / "victim"  # victim: any root-owned 0755 dir
    victim.mkdir(mode=0o755)

    def plant() -> None:
        xdg.mkdir()
        (xdg / "acbuild-py").symlink_to(victim)
    as_nobody(plant)
    r = acbuild("run", "--no-stdin", app, env={"XDG_CACHE_HOME": str(xdg)}, timeout=60)
    assert (r.code, r.stdout) == (1, "")
    assert r.stderr.splitlines()[0] == (
        f"error: run cache {xdg}/acbuild-py: {xdg} is a directory that belongs to uid "
        f"{NOBODY}, not to you (uid 0) or root")
    assert list(victim.iterdir()) == []


def test_the_cache_path_re_pointed_while_the_image_is_hashed_changes_nothing(
        tmp_path: Path, images: Path, shared: Path) -> None:
    app = image(tmp_path, images, "EXEC /bin/echo genuine image\n")
    evil = shared / "evil"
    key = planted_entry(tmp_path, app, evil / "acbuild-py")
    real, link = tmp_path / "real", tmp_path / "xdg"
    real.mkdir(mode=0o700)
    link.symlink_to(real)  # root's own: accepted when the cache is opened
    proc = subprocess.run(
        [sys.executable, "-c", _REPOINT_AFTER_HASH, str(link), str(evil), "run",
         "--no-stdin", str(app)],
        env={**os.environ, "CI": "true", "XDG_CACHE_HOME": str(link)},
        capture_output=True, text=True, timeout=60)
    assert os.readlink(link) == str(evil)  # the swap happened
    assert (proc.returncode, proc.stdout) == (0, "genuine image\n"), proc.stderr
    assert (real / "acbuild-py" / "rootfs" / key / "manifest").is_file()
    assert sorted(p.name for p in (evil / "acbuild-py").iterdir()) == ["rootfs"]


def test_a_rendered_entry_is_used_only_if_it_is_yours(
        tmp_path: Path, images: Path, shared: Path) -> None:
    app = image(tmp_path, images, "EXEC /bin/echo genuine image\n")
    key = planted_entry(tmp_path, app, shared / "evil")
    assert run(tmp_path, app).stdout == "genuine image\n"
    entry = tmp_path / "cache" / "acbuild-py" / "rootfs" / key
    os.lchown(entry, NOBODY, NOBODY)
    r = run(tmp_path, app)
    assert (r.code, r.stdout) == (1, "")
    assert r.stderr.splitlines()[0] == (
        f"error: rendered rootfs {entry} belongs to uid {NOBODY}, not to you (uid 0)")
    subprocess.run(["rm", "-rf", str(entry)], check=True)
    entry.symlink_to(shared / "evil" / "rootfs" / key)  # a planted entry, by a symlink
    r = run(tmp_path, app)
    assert (r.code, r.stdout) == (1, "")
    assert r.stderr.splitlines()[0] == (
        f"error: rendered rootfs {entry} is not a directory (a symlink?)")
    entry.unlink()
    assert run(tmp_path, app).stdout == "genuine image\n"  # rendered again


def test_the_app_holds_no_descriptor_of_the_cache(tmp_path: Path, images: Path) -> None:
    """The sandbox reaches the rootfs through a descriptor of the scratch directory: one the
    app inherited would be a way out of the rootfs (PID 1's it may list but not follow)."""
    app = image(tmp_path, images, "EXEC /bin/sh -c 'for f in /proc/self/fd/* /proc/1/fd/*; "
                                  "do echo $f $(readlink $f); done'\n")
    r = run(tmp_path, app)
    assert r.code == 0, r.stderr
    held = dict(line.partition(" ")[::2] for line in r.stdout.splitlines())
    # (the glob's own directory descriptor is gone by the time readlink runs: no target)
    own = sorted(f for f, target in held.items() if f.startswith("/proc/self/fd/") and target)
    assert own == [f"/proc/self/fd/{n}" for n in (0, 1, 2)], r.stdout
    assert not [t for t in held.values() if "/" in t and not t.startswith("/dev/")], r.stdout
