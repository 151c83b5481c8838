"""RUN steps through the real CLI: busybox bases, real namespaces, as root and as `nobody`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import Distribution, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from acbuild.sandbox.sandbox import sandbox_available
from tests.conftest import EXAMPLES, REPO
from tests.support.busybox import BUSYBOX, busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild, actool_validate
from tests.support.procfs import processes_with

_reason = sandbox_available() if busybox_available() else "busybox-static is not installed"
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}")
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs directory, used as `BEGIN <dir>` (faster than an ACI)."""
    return make_busybox_rootfs(tmp_path_factory.mktemp("base") / "rootfs")


def acfile(where: Path, base: Path, body: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "Acfile"
    path.write_text(f"BEGIN {base}\nNAME example.com/run\n{body}")
    return path


def members(aci: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(aci) as t:
        return {m.name: m for m in t.getmembers()}


def read(aci: Path, name: str) -> str:
    with tarfile.open(aci) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read().decode()


def output_of(stderr: str) -> list[str]:
    """The RUN output lines of the plain log ("[4/5] | line")."""
    return [m.group(1) for m in re.finditer(r"^\[\d+/\d+\] \| (.*)$", stderr, re.M)]


def test_files_created_by_run_land_in_the_image(base: Path, tmp_path: Path) -> None:
    acfile(tmp_path, base, (
        "RUN /bin/sh -c 'mkdir -p /srv/data && echo payload > /srv/data/f && ln -s f /srv/l'\n"
        'RUN ["/bin/sh", "-c", "echo json form > /srv/json"]\n'
        "EXEC /bin/sh\n"
    ))
    r = acbuild("build", "--no-cache", "--allow-path", base,
                tmp_path / "Acfile", "-o", tmp_path / "x.aci")
    assert r.code == 0, r.stderr
    got = members(tmp_path / "x.aci")
    assert read(tmp_path / "x.aci", "rootfs/srv/data/f") == "payload\n"
    assert read(tmp_path / "x.aci", "rootfs/srv/json") == "json form\n"
    assert got["rootfs/srv/l"].linkname == "f"
    assert (got["rootfs/srv/data/f"].uid, got["rootfs/srv/data/f"].gid) == (0, 0)
    # The sandbox's mount points are not left in the image.
    assert not {"rootfs/proc", "rootfs/dev", "rootfs/tmp"} & set(got)
    actool_validate(tmp_path / "x.aci")


def test_host_is_invisible_and_network_off_by_default(base: Path, tmp_path: Path) -> None:
    marker = tmp_path / "host-secret"
    marker.write_text("secret")
    acfile(tmp_path, base, (
        f"RUN /bin/sh -c 'test -e {marker} && echo host visible || echo host hidden'\n"
        "RUN /bin/sh -c 'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d \" \"'\n"
        "RUN --network=host /bin/sh -c 'tail -n +3 /proc/net/dev | wc -l'\n"
    ))
    r = acbuild("build", "--no-cache", "--allow-path", base,
                tmp_path / "Acfile", "-o", tmp_path / "x.aci")
    assert r.code == 0, r.stderr
    hidden, lo, host_count = output_of(r.stderr)
    assert (hidden, lo) == ("host hidden", "lo")
    assert int(host_count) == len(Path("/proc/net/dev").read_text().splitlines()) - 2


def test_env_workdir_and_user(base: Path, tmp_path: Path) -> None:
    acfile(tmp_path, base, (
        "ENV FROM_IMAGE=image\nWORKDIR /work\n"
        "RUN /bin/sh -c 'echo $FROM_IMAGE $(pwd) $(id -u):$(id -g) $HOME'\n"
        "RUN --env=EXTRA=x --env=FROM_IMAGE=step --workdir=/elsewhere --user=nobody "
        "/bin/sh -c 'echo $FROM_IMAGE $EXTRA $(pwd) $(id -u):$(id -g) $HOME'\n"
        "USER nobody\n"
        "RUN /bin/sh -c 'id -u'\n"
    ))
    r = acbuild("build", "--no-cache", "--allow-path", base,
                tmp_path / "Acfile", "-o", tmp_path / "x.aci")
    assert r.code == 0, r.stderr
    assert output_of(r.stderr) == [
        "image /work 0:0 /root",
        "step x /elsewhere 65534:65534 /nonexistent",
        "65534",
    ]
    # WORKDIR made on demand lands in the image; the step's environment does not.
    assert "rootfs/work" in members(tmp_path / "x.aci")


def test_failure_shows_the_last_lines_and_keeps_the_full_log(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.aci"
    log = tmp_path / "build.log"
    acfile(tmp_path, base, (
        "RUN /bin/sh -c 'echo first step'\n"
        "RUN /bin/sh -c 'for i in $(seq 1 30); do echo line $i; done; exit 2'\n"
    ))
    r = acbuild("build", "--no-cache", "--allow-path", base,
                "Acfile", "-o", out, "--log-file", log, cwd=tmp_path)
    assert r.code == 1
    tail = "\n".join(f"      line {i}" for i in range(11, 31))
    assert r.stderr.endswith(
        "Acfile:4:1: error: RUN failed with exit status 2\n"
        "    RUN /bin/sh -c 'for i in $(seq 1 30); do echo line $i; done; exit 2'\n"
        "    ^^^\n"
        f"    hint: last lines of output:\n{tail}\n"
        f"    full log: {log}\n"
    )
    full = log.read_text().splitlines()
    assert full[0] == "[3/5] first step"
    assert full[1:] == [f"[4/5] line {i}" for i in range(1, 31)]
    assert not out.exists()


def test_missing_program_is_reported_at_the_step(base: Path, tmp_path: Path) -> None:
    acfile(tmp_path, base, "RUN /bin/nope --flag\n")
    r = acbuild("build", "--no-cache", "--allow-path", base,
                "Acfile", "-o", "x.aci", cwd=tmp_path)
    assert r.code == 1
    assert r.stderr.splitlines()[-3:] == [
        "Acfile:3:1: error: program '/bin/nope' not found in the image",
        "    RUN /bin/nope --flag",
        "    ^^^",
    ]


def test_run_on_scratch_has_no_shell(tmp_path: Path) -> None:
    (tmp_path / "Acfile").write_text("BEGIN scratch\nNAME example.com/x\nRUN echo hi\n")
    r = acbuild("build", "--no-cache", "Acfile", "-o", "x.aci", cwd=tmp_path)
    assert r.code == 1
    assert "Acfile:3:1: error: program 'echo' not found in the image" in r.stderr


def test_unknown_user_and_timeout(base: Path, tmp_path: Path) -> None:
    acfile(tmp_path, base, "RUN --user=ghost /bin/true\n")
    r = acbuild("build", "--no-cache", "--allow-path", base,
                "Acfile", "-o", "x.aci", cwd=tmp_path)
    assert r.code == 1
    assert "Acfile:3:1: error: RUN: user 'ghost' not found in the image's /etc/passwd" \
        in r.stderr
    acfile(tmp_path, base, "RUN --timeout=0.5 /bin/sh -c 'echo slow; sleep 30'\n")
    started = time.monotonic()
    r = acbuild("build", "--no-cache", "--allow-path", base,
                "Acfile", "-o", "x.aci", cwd=tmp_path)
    assert r.code == 1 and time.monotonic() - started < 15
    assert "Acfile:3:1: error: RUN timed out after 0.5s" in r.stderr
    assert "slow" in r.stderr


# --- interrupts ------------------------------------------------------------------------


def _mounts_with(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if text in line]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_build_leaves_nothing(base: Path, tmp_path: Path, signum: int,
                                          status: int) -> None:
    marker = f"4251.{int(signum)}{os.getpid()}"  # not another run's on the machine
    work = tmp_path / "tmp"
    work.mkdir()
    acfile(tmp_path / "ctx", base, f"RUN /bin/sh -c 'echo started; sleep {marker}'\n")
    out = tmp_path / "x.aci"
    with subprocess.Popen(
        [sys.executable, "-m", "acbuild", "build", "--no-cache", tmp_path / "ctx" / "Acfile",
         "-o", out, "--log-file", tmp_path / "build.log", "--allow-path", base],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "CI": "true", "TMPDIR": str(work)},
    ) as proc:
        try:
            assert proc.stderr is not None
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if line.endswith("| started\n"):
                    break
            else:
                pytest.fail("".join(seen))
            deadline = time.monotonic() + 5
            while not processes_with(marker.encode()):
                assert time.monotonic() < deadline, "the RUN step did not start"
                time.sleep(0.02)
            proc.send_signal(signum)
            rest = proc.stderr.read()
            assert proc.wait(timeout=20) == status, rest
        finally:
            if proc.poll() is None:
                proc.kill()  # a failed test must not leave the build running
    assert _mounts_with(str(work)) == []
    deadline = time.monotonic() + 5  # the kernel empties a dead PID namespace asynchronously
    while processes_with(marker.encode()):
        assert time.monotonic() < deadline, "sandbox processes outlived the build"
        time.sleep(0.05)
    # the work directory is gone; only this user's private temporary root stays
    assert [p.name for p in work.iterdir()] == [f"acbuild-py-{os.geteuid()}"]
    assert list((work / f"acbuild-py-{os.geteuid()}").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.log", "ctx", "tmp"]


# --- rootless ------------------------------------------------------------------------------


def _closure(name: str) -> dict[str, Distribution]:
    """The installed distribution ``name`` and everything it requires (extras left out)."""
    found: dict[str, Distribution] = {}
    todo = [name]
    while todo:
        wanted = todo.pop()
        key = re.sub(r"[-_.]+", "-", wanted).lower()
        if key in found:
            continue
        found[key] = dist = distribution(wanted)
        for text in dist.requires or ():
            req = Requirement(text)
            # markers evaluated here: httpx's anyio wants exceptiongroup only before 3.11
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


@pytest.fixture(scope="session")
def nobody_env() -> Iterator[tuple[str, dict[str, str]]]:
    """A Python that `nobody` can run with acbuild and its dependencies importable.

    The interpreter running the tests may live under /root (pyenv), out of nobody's reach;
    the system's python3 of the same minor version can use copies of the installed
    dependencies (pure Python, or built for the same ABI) put in a world-readable directory.
    """
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("switching to nobody needs root and setpriv")
    top = Path(tempfile.mkdtemp(prefix="acbuild-nobody-"))
    try:
        site = top / "site"
        for key, dist in _closure("acbuild-py").items():
            if key == "acbuild-py":
                continue  # the checkout itself goes on PYTHONPATH
            for file in dist.files or ():
                src = Path(str(file.locate()))
                if src.is_file() and ".." not in file.parts and "__pycache__" not in file.parts:
                    (site / file).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, site / file)
        for path in (top, *top.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {"PYTHONPATH": f"{site}:{REPO}", "PATH": os.environ["PATH"], "CI": "true",
               "HOME": "/nonexistent", "XDG_STATE_HOME": str(top / "state"),
               "XDG_CACHE_HOME": str(top / "state")}
        # nobody's own (a world-writable one is refused on a cache's path, as it should be)
        (top / "state").mkdir(mode=0o700)
        os.chown(top / "state", 65534, 65534)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        for python in (sys.executable, f"/usr/bin/python{version}", "/usr/bin/python3"):
            # The sandbox helper is started from sys.executable: nobody must reach it too.
            check = "import os, sys, acbuild.cli.main; assert os.access(sys.executable, os.X_OK)"
            probe = subprocess.run([*NOBODY, python, "-c", check], env=env, cwd="/",
                                   capture_output=True)
            if probe.returncode == 0:
                yield python, env
                return
        pytest.fail("no Python that nobody can run acbuild with")
    finally:
        shutil.rmtree(top)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody may write to (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="acbuild-rootless-"))
    os.chown(path, 65534, 65534)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _build_as_nobody(nobody_env: tuple[str, dict[str, str]], acfile_path: Path,
                     out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    python, env = nobody_env
    return subprocess.run([*NOBODY, python, "-m", "acbuild", "build", "--no-cache",
                           str(acfile_path), "-o", str(out), *extra],
                          env=env, cwd="/", capture_output=True, text=True)


def test_rootless_and_root_builds_give_the_same_image(
    nobody_env: tuple[str, dict[str, str]], shared_dir: Path
) -> None:
    ctx = shared_dir / "busybox"
    shutil.copytree(EXAMPLES / "busybox", ctx)
    shutil.copy2(BUSYBOX, ctx / "busybox")
    for path in (ctx, *ctx.rglob("*")):
        os.lchown(path, 65534, 65534)
    rootless = _build_as_nobody(nobody_env, ctx / "Acfile", shared_dir / "rootless.aci")
    assert rootless.returncode == 0, rootless.stderr
    root = acbuild("build", "--no-cache", ctx / "Acfile", "-o", shared_dir / "root.aci")
    assert root.code == 0, root.stderr
    assert rootless.stdout == root.stdout
    assert (shared_dir / "rootless.aci").stat().st_uid == 65534
    entries = members(shared_dir / "rootless.aci")
    assert {(m.uid, m.gid) for m in entries.values()} == {(0, 0)}
    assert entries["rootfs/etc/shadow"].mode == 0o600
    actool_validate(shared_dir / "rootless.aci")


def test_rootless_build_refuses_another_user(
    nobody_env: tuple[str, dict[str, str]], shared_dir: Path
) -> None:
    rootfs = make_busybox_rootfs(shared_dir / "rootfs")
    for path in (shared_dir, *shared_dir.rglob("*")):
        os.lchown(path, 65534, 65534)
    acfile(shared_dir / "ctx", rootfs, "USER nobody\nRUN /bin/true\n")
    r = _build_as_nobody(nobody_env, shared_dir / "ctx" / "Acfile", shared_dir / "x.aci",
                         "--allow-path", str(rootfs))
    assert r.returncode == 1
    assert r.stderr.splitlines()[-4:] == [
        f"{shared_dir}/ctx/Acfile:4:1: error: RUN as user 'nobody' (uid 65534, gid 0) "
        "needs a build as root: a rootless build runs programs as uid 0 only",
        "    RUN /bin/true",
        "    ^^^",
        "    hint: build as root, or run this step with RUN --user=0 (USER sets the app's "
        "user and applies to the RUN steps after it)",
    ]
    assert not (shared_dir / "x.aci").exists()
