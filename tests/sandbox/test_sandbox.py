"""Tests for the namespace sandbox: real busybox, real namespaces, as root and as `nobody`."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import acbuild
from acbuild.errors import SandboxError
from acbuild.sandbox.sandbox import (
    DEFAULT_PATH,
    MAX_LINE,
    Bind,
    SandboxResult,
    SandboxSpec,
    run_sandboxed,
)
from tests.support.busybox import make_busybox_rootfs
from tests.support.procfs import processes_with
from tests.support.sandboxrun import IS_ROOT, needs_sandbox, run

REPO = Path(acbuild.__file__).resolve().parent.parent
pytestmark = needs_sandbox


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_busybox_rootfs(tmp_path / "rootfs")


def listing(root: Path) -> list[str]:
    return sorted(os.listdir(root))


def mounts_under(root: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if str(root) in line.split()[4]]


def processes_rooted_at(root: Path) -> list[int]:
    """Processes whose root directory is ``root`` (a pivoted sandbox shows "/" as the link
    text, so compare the directories themselves)."""
    want = root.stat()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                st = os.stat(entry / "root")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                found.append(int(entry.name))
    return found


def assert_nothing_left(root: Path, before: list[str], marker: bytes | None = None) -> None:
    assert mounts_under(root) == []
    deadline = time.monotonic() + 5
    while processes_rooted_at(root) or (marker and processes_with(marker)):
        assert time.monotonic() < deadline, "sandbox processes outlived the run"
        time.sleep(0.05)
    assert listing(root) == before


# --- isolation -------------------------------------------------------------------------


def test_files_land_in_rootfs_and_mount_points_are_removed(rootfs: Path) -> None:
    before = listing(rootfs)
    result, lines = run(rootfs, "echo hello > /made; mkdir /var; echo out; echo err >&2")
    assert result == SandboxResult(exit_status=0, timed_out=False, signal=None)
    assert lines == ["out", "err"]
    assert (rootfs / "made").read_text() == "hello\n"
    assert listing(rootfs) == sorted([*before, "made", "var"])
    assert not {"dev", "proc", "tmp"} & set(listing(rootfs))
    assert mounts_under(rootfs) == []


def test_existing_mount_points_and_tmp_content_are_kept(rootfs: Path) -> None:
    (rootfs / "tmp").mkdir()
    (rootfs / "tmp" / "image-file").write_text("kept")
    result, lines = run(rootfs, "ls -A /tmp; touch /tmp/scratch")
    assert result.exit_status == 0
    assert lines == []  # /tmp is a fresh tmpfs inside
    assert os.listdir(rootfs / "tmp") == ["image-file"]


def test_host_filesystem_is_not_visible(rootfs: Path, tmp_path: Path) -> None:
    sentinel = tmp_path / "host-sentinel"
    sentinel.write_text("secret")
    result, lines = run(rootfs, f"test -e {sentinel} && echo visible; cd /; cd ../..; ls")
    assert result.exit_status == 0
    assert "visible" not in lines
    assert sorted(" ".join(lines).split()) == sorted([*listing(rootfs), "dev", "proc", "tmp"])


def test_namespaces_pid_hostname_umask_and_proc(rootfs: Path) -> None:
    result, lines = run(rootfs, "echo $$; hostname; umask; echo /proc/[0-9]*")
    assert result.exit_status == 0
    assert lines == ["2", "acbuild", "0022", "/proc/1 /proc/2"]  # init and sh, no host pids


def test_hostname_is_configurable(rootfs: Path) -> None:
    assert run(rootfs, "hostname", hostname="builder")[1] == ["builder"]


def test_no_network_but_loopback_up(rootfs: Path) -> None:
    result, lines = run(rootfs, "tail -n +3 /proc/net/dev | cut -d: -f1; ip -o link")
    assert result.exit_status == 0
    assert lines[0].strip() == "lo"
    assert len(lines) == 2
    assert "UP" in lines[1].split("<")[1]


def test_host_network(rootfs: Path) -> None:
    table = Path("/proc/net/dev").read_text().splitlines()[2:]
    host = {line.split(":")[0].strip() for line in table}
    if host == {"lo"}:
        pytest.skip("the host has no interface besides lo")
    result, lines = run(rootfs, "tail -n +3 /proc/net/dev | cut -d: -f1", network="host")
    assert result.exit_status == 0
    assert {line.strip() for line in lines} == host


def test_proc_sys_is_read_only_and_host_value_unchanged(rootfs: Path) -> None:
    knob = Path("/proc/sys/kernel/printk_ratelimit_burst")
    value = knob.read_text()
    new = str(int(value) + 7)
    result, lines = run(rootfs, f"echo {new} > /proc/sys/kernel/printk_ratelimit_burst")
    assert result.exit_status != 0
    assert any("Read-only file system" in line for line in lines)
    assert knob.read_text() == value


def test_no_mount_privilege_inside(rootfs: Path) -> None:
    script = ("mount -o remount,rw /proc/sys && echo remounted; umount /proc/sys && echo unmounted;"
              " mkdir -p /mnt; mount -t tmpfs x /mnt && echo mounted;"
              " grep CapBnd /proc/self/status")
    _result, lines = run(rootfs, script)
    assert not {"remounted", "unmounted", "mounted"} & set(lines)
    cap_bounding = int(next(line for line in lines if line.startswith("CapBnd")).split()[1], 16)
    cap_sys_admin, cap_chown = 21, 0
    assert not cap_bounding & (1 << cap_sys_admin)
    assert cap_bounding & (1 << cap_chown)


def test_symlinked_mount_point_is_refused(rootfs: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (rootfs / "tmp").symlink_to(outside)
    with pytest.raises(SandboxError) as e:
        run(rootfs, "true")
    assert e.value.message == (
        "cannot prepare mount point /tmp: /tmp in the image is not a directory (a symlink?)")
    assert mounts_under(outside) == []
    assert not (rootfs / "dev").exists() and not (rootfs / "proc").exists()


# --- environment, identity, working directory ------------------------------------------


def test_environment_is_hermetic(rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACBUILD_LEAK_CHECK", "leaked")
    _result, lines = run(rootfs, "env | sort", env=(("FOO", "bar baz"),), source_date_epoch=42)
    env = dict(line.split("=", 1) for line in lines)
    assert "ACBUILD_LEAK_CHECK" not in env
    assert env["FOO"] == "bar baz"
    assert env["PATH"] == DEFAULT_PATH
    assert env["HOME"] == "/root"
    assert env["TZ"] == "UTC"
    assert env["SOURCE_DATE_EPOCH"] == "42"


def test_given_env_overrides_defaults(rootfs: Path) -> None:
    _, lines = run(rootfs, "echo $PATH $HOME", env=(("PATH", "/bin"), ("HOME", "/home/u")))
    assert lines == ["/bin /home/u"]


def test_workdir_existing_missing_and_not_a_directory(rootfs: Path) -> None:
    assert run(rootfs, "pwd", workdir="/usr/bin")[1] == ["/usr/bin"]
    with pytest.raises(SandboxError) as e:
        run(rootfs, "pwd", workdir="/srv/app")  # `acbuild-py run`: never made on the fly
    assert e.value.message == "working directory '/srv/app' does not exist in the image"
    assert run(rootfs, "pwd", workdir="/srv/app", make_workdir=True)[1] == ["/srv/app"]
    assert (rootfs / "srv" / "app").is_dir()  # a build's RUN --workdir makes it
    with pytest.raises(SandboxError) as e:
        run(rootfs, "pwd", workdir="/etc/passwd")
    assert e.value.message == "working directory '/etc/passwd' is not a directory in the image"


@pytest.mark.skipif(not IS_ROOT, reason="other ids need root")
def test_uid_gid_and_groups(rootfs: Path) -> None:
    (rootfs / "work").mkdir()
    (rootfs / "work").chmod(0o777)
    result, lines = run(rootfs, "id -u; id -g; id -G; touch /work/f", uid=65534, gid=65534,
                        supplementary_gids=(65534, 10), workdir="/work")
    assert result.exit_status == 0
    assert lines[:2] == ["65534", "65534"]
    assert sorted(lines[2].split()) == ["10", "65534"]
    st = (rootfs / "work" / "f").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_root_inside_keeps_chown_working(rootfs: Path) -> None:
    result, _ = run(rootfs, "touch /owned && chown 1234:4321 /owned")
    assert result.exit_status == 0
    st = (rootfs / "owned").stat()
    assert (st.st_uid, st.st_gid) == (1234, 4321)


# --- exit status, output, timeout ------------------------------------------------------


@pytest.mark.parametrize(("script", "status", "sig"),
                         [("exit 0", 0, None), ("exit 2", 2, None), ("kill -9 $$", 137, 9)])
def test_exit_status(rootfs: Path, script: str, status: int, sig: int | None) -> None:
    result, _ = run(rootfs, script)
    assert result == SandboxResult(exit_status=status, timed_out=False, signal=sig)


def test_output_is_streamed_line_by_line(rootfs: Path) -> None:
    seen: list[tuple[float, str]] = []
    spec = SandboxSpec(rootfs=rootfs, argv=("sh", "-c", "echo first; sleep 0.6; echo second"))
    run_sandboxed(spec, lambda line: seen.append((time.monotonic(), line)))
    assert [line for _, line in seen] == ["first", "second"]
    assert seen[1][0] - seen[0][0] >= 0.5


def test_long_lines_are_split_and_bad_utf8_replaced(rootfs: Path) -> None:
    n = 2 * MAX_LINE + 100
    _, lines = run(rootfs, f"head -c {n} /dev/zero | tr '\\0' x; echo; printf '\\377ok\\r\\n'")
    assert [len(line) for line in lines[:3]] == [MAX_LINE, MAX_LINE, 100]
    assert lines[3] == "\ufffdok"


def test_stdin_is_dev_null_by_default(rootfs: Path) -> None:
    _result, lines = run(rootfs, "cat; echo done")
    assert lines == ["done"]


def test_stdin_can_be_connected(rootfs: Path) -> None:
    script = ("import sys; from pathlib import Path; from acbuild.sandbox.sandbox import *;"
              "run_sandboxed(SandboxSpec(rootfs=Path(sys.argv[1]), stdin=True,"
              " argv=('sh', '-c', 'read x; echo got $x')), print)")
    out = subprocess.run([sys.executable, "-c", script, str(rootfs)], input="hello\n",
                         capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO)}).stdout
    assert out == "got hello\n"


def test_large_environment_is_passed(rootfs: Path) -> None:
    _, lines = run(rootfs, "echo ${#BIG}", env=(("BIG", "x" * 100_000),))
    assert lines == ["100000"]


def test_timeout_kills_the_whole_namespace(rootfs: Path) -> None:
    before = listing(rootfs)
    start = time.monotonic()
    result, lines = run(rootfs, "sleep 4242.1 & echo started; sleep 4242.2", timeout=0.5)
    assert time.monotonic() - start < 4
    assert result == SandboxResult(exit_status=137, timed_out=True, signal=9)
    assert lines == ["started"]
    assert_nothing_left(rootfs, before, b"4242.")


def test_background_processes_die_with_the_program(rootfs: Path) -> None:
    before = listing(rootfs)
    result, _ = run(rootfs, "sleep 4243.1 >/dev/null 2>&1 & exit 3")
    assert result.exit_status == 3
    assert_nothing_left(rootfs, before, b"4243.")


def test_failing_callback_stops_the_sandbox(rootfs: Path) -> None:
    before = listing(rootfs)

    def boom(line: str) -> None:
        raise RuntimeError(line)

    spec = SandboxSpec(rootfs=rootfs, argv=("sh", "-c", "echo hi; sleep 4244.1"))
    with pytest.raises(RuntimeError, match="hi"):
        run_sandboxed(spec, boom)
    assert_nothing_left(rootfs, before, b"4244.")


# --- program errors --------------------------------------------------------------------


def test_program_not_found(rootfs: Path) -> None:
    before = listing(rootfs)
    with pytest.raises(SandboxError) as e:
        run_sandboxed(SandboxSpec(rootfs=rootfs, argv=("/bin/foo",)), print)
    assert e.value.message == "program '/bin/foo' not found in the image"
    with pytest.raises(SandboxError) as e:
        run_sandboxed(SandboxSpec(rootfs=rootfs, argv=("nosuchtool", "-x")), print)
    assert e.value.message == "program 'nosuchtool' not found in the image"
    assert_nothing_left(rootfs, before)


def test_program_not_executable_or_without_interpreter(rootfs: Path) -> None:
    (rootfs / "plain").write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(SandboxError) as e:
        run_sandboxed(SandboxSpec(rootfs=rootfs, argv=("/plain",)), print)
    assert e.value.message == "program '/plain' is not executable (permission denied)"
    (rootfs / "orphan").write_text("#!/no/such/interpreter\n")
    (rootfs / "orphan").chmod(0o755)
    with pytest.raises(SandboxError) as e:
        run_sandboxed(SandboxSpec(rootfs=rootfs, argv=("/orphan",)), print)
    assert e.value.message == ("program '/orphan' could not be started: its interpreter or "
                               "dynamic loader is missing from the image")


def test_bad_specs(rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="is not a directory"):
        run_sandboxed(SandboxSpec(rootfs=tmp_path / "missing", argv=("true",)), print)
    with pytest.raises(SandboxError, match="not an absolute path"):
        run_sandboxed(SandboxSpec(rootfs=rootfs, argv=("true",), workdir="rel"), print)
    with pytest.raises(SandboxError, match="cannot mount a volume on '/proc/x'"):
        run_sandboxed(SandboxSpec(rootfs=rootfs, argv=("true",),
                                  binds=(Bind(source=tmp_path, target="/proc/x"),)), print)


# --- host files and volumes ------------------------------------------------------------


def test_resolv_conf_and_hosts_only_with_host_network(rootfs: Path) -> None:
    if not (Path("/etc/resolv.conf").is_file() and Path("/etc/hosts").is_file()):
        pytest.skip("the host lacks /etc/resolv.conf or /etc/hosts")
    before = listing(rootfs / "etc")
    _, lines = run(rootfs, "ls /etc")
    assert lines == before
    _result, lines = run(rootfs, "cat /etc/hosts; echo x >> /etc/hosts || echo refused",
                        network="host")
    assert lines[:-2] == Path("/etc/hosts").read_text().splitlines()
    assert lines[-2:] == ["/bin/sh: can't create /etc/hosts: Read-only file system", "refused"]
    assert listing(rootfs / "etc") == before


def test_image_resolv_conf_content_is_untouched(rootfs: Path) -> None:
    (rootfs / "etc" / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    run(rootfs, "true", network="host")
    assert (rootfs / "etc" / "resolv.conf").read_text() == "nameserver 192.0.2.1\n"


def test_volumes(rootfs: Path, tmp_path: Path) -> None:
    before = listing(rootfs)
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "data").write_text("read me")
    binds = (Bind(source=rw, target="/cache/rw"), Bind(source=ro, target="/tmp/ro",
                                                          read_only=True))
    result, lines = run(rootfs, "echo w > /cache/rw/out; cat /tmp/ro/data; echo;"
                        " touch /tmp/ro/x || echo refused", binds=binds)
    assert result.exit_status == 0
    assert lines == ["read me", "touch: /tmp/ro/x: Read-only file system", "refused"]
    assert (rw / "out").read_text() == "w\n"
    assert not (ro / "x").exists()
    assert listing(rootfs) == before


# --- interruption --------------------------------------------------------------------------

PARENT_SCRIPT = """
import signal, sys
from pathlib import Path
from acbuild.sandbox.sandbox import SandboxSpec, run_sandboxed
def out(line):
    print(line, flush=True)
try:
    run_sandboxed(SandboxSpec(rootfs=Path(sys.argv[1]), argv=("sh", "-c", sys.argv[2])), out)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def _start_parent(
    python: str, root: Path, script: str, *, user: bool = False
) -> subprocess.Popen[str]:
    argv = [python, "-c", PARENT_SCRIPT, str(root), script]
    if user:
        argv = [*NOBODY, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/",
                            env=nobody_env())
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_the_parent_leaves_nothing(rootfs: Path, signum: int) -> None:
    before = listing(rootfs)
    marker = f"4245.{int(signum)}{os.getpid()}"  # not another run's on the machine
    proc = _start_parent(sys.executable, rootfs, f"echo started; sleep {marker}")
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=10)
    if signum == signal.SIGINT:
        assert (out, proc.returncode) == ("interrupted\n", 0)
        assert_nothing_left(rootfs, before, marker.encode())
    else:
        # Killed outright: no cleanup code ran, yet the namespace died with it (PDEATHSIG).
        assert proc.returncode == -signal.SIGTERM
        assert mounts_under(rootfs) == []
        deadline = time.monotonic() + 5
        while processes_with(marker.encode()) or processes_rooted_at(rootfs):
            assert time.monotonic() < deadline
            time.sleep(0.05)


# --- rootless ------------------------------------------------------------------------------

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

ROOTLESS_SCRIPT = """
import json, sys
from pathlib import Path
from acbuild.errors import SandboxError
from acbuild.sandbox.sandbox import Bind, SandboxSpec, run_sandboxed, sandbox_available
root = Path(sys.argv[1])
report = {"available": sandbox_available()}
def go(name, **kw):
    lines = []
    try:
        r = run_sandboxed(SandboxSpec(rootfs=root, **kw), lines.append)
        report[name] = [r.exit_status, r.timed_out, lines]
    except SandboxError as e:
        report[name] = e.message
go("basic", argv=("sh", "-c", "id -u; id -g; echo data > /made; cat /proc/net/dev | wc -l"))
go("sysctl", argv=("sh", "-c", "echo 1 > /proc/sys/kernel/printk_ratelimit_burst"))
go("timeout", argv=("sleep", "4246.1"), timeout=0.3)
go("other_uid", argv=("true",), uid=1000)
go("missing", argv=("/bin/foo",))
go("volume", argv=("sh", "-c", "cat /v/hosts | wc -l; touch /v/x || echo refused"),
   binds=(Bind(source=Path("/etc"), target="/v", read_only=True),))
go("host_net", argv=("sh", "-c", "tail -n +3 /proc/net/dev | wc -l; cat /etc/hosts"),
   network="host")
print(json.dumps(report))
"""


@functools.cache
def _nobody_site() -> Path:
    """A directory nobody can read holding pyseccomp (the sandbox builds its filter with
    it; the venv the tests run in may be out of nobody's reach)."""
    import pyseccomp

    site = Path(tempfile.mkdtemp(prefix="acbuild-nobody-site-"))
    site.chmod(0o755)
    shutil.copy2(pyseccomp.__file__, site / "pyseccomp.py")
    (site / "pyseccomp.py").chmod(0o644)
    atexit.register(shutil.rmtree, site, True)
    return site


def nobody_env() -> dict[str, str]:
    return {"PYTHONPATH": f"{REPO}:{_nobody_site()}", "PATH": os.environ["PATH"]}


@pytest.fixture(scope="module")
def nobody_python() -> str:
    if not IS_ROOT or shutil.which("setpriv") is None:
        pytest.skip("rootless tests switch to nobody with setpriv, which needs root")
    env = nobody_env()
    for python in (sys.executable, "/usr/bin/python3"):
        # The helper is re-executed from sys.executable, so that must be reachable too.
        check = ("import os, sys, acbuild.sandbox.sandbox, pyseccomp; "
                 "assert os.access(sys.executable, os.X_OK)")
        probe = subprocess.run([*NOBODY, python, "-c", check], env=env,
                               cwd="/", capture_output=True)
        if probe.returncode == 0:
            return python
    pytest.skip("no Python that nobody can run with acbuild importable")


@pytest.fixture
def nobody_rootfs() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="acbuild-sandbox-"))
    try:
        root = make_busybox_rootfs(base / "rootfs")
        for path in (base, *base.rglob("*")):
            os.lchown(path, 65534, 65534)
        base.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(base)


def test_rootless(nobody_python: str, nobody_rootfs: Path) -> None:
    before = listing(nobody_rootfs)
    out = subprocess.run([*NOBODY, nobody_python, "-c", ROOTLESS_SCRIPT, str(nobody_rootfs)],
                         env=nobody_env(), cwd="/",
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["available"] is None
    assert report["basic"] == [0, False, ["0", "0", "3"]]  # header lines + lo
    assert (nobody_rootfs / "made").stat().st_uid == 65534
    assert report["sysctl"][0] != 0
    assert report["timeout"][:2] == [137, True]
    assert report["other_uid"] == ("rootless builds can only run programs as uid 0 and gid 0 "
                                   "(asked for uid 1000, gid 0)")
    assert report["missing"] == "program '/bin/foo' not found in the image"
    hosts = len(Path("/etc/hosts").read_text().splitlines())
    assert report["volume"] == [0, False, [str(hosts), "touch: /v/x: Read-only file system",
                                           "refused"]]
    assert report["host_net"][0] == 0
    assert int(report["host_net"][2][0]) >= 1
    assert report["host_net"][2][1:] == Path("/etc/hosts").read_text().splitlines()
    assert listing(nobody_rootfs) == sorted([*before, "made"])
    assert_nothing_left(nobody_rootfs, sorted([*before, "made"]), b"4246.")


def test_rootless_interrupt(nobody_python: str, nobody_rootfs: Path) -> None:
    before = listing(nobody_rootfs)
    proc = _start_parent(nobody_python, nobody_rootfs, "echo started; sleep 4247.1", user=True)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert (out, proc.returncode) == ("interrupted\n", 0)
    assert_nothing_left(nobody_rootfs, before, b"4247.")


def test_an_unfinished_line_is_handed_on_as_it_grows_but_never_while_redacting() -> None:
    """A progress bar redrawn with \r has no newline for as long as it runs: each chunk
    of it reaches ``partial``; the line itself still comes whole, once."""
    from acbuild.sandbox.sandbox import _Lines

    lines: list[str] = []
    partial: list[str] = []
    splitter = _Lines(lines.append, partial=partial.append)
    for chunk in (b"\rget 10%", b"\rget 50%", b"\rget 100%\nnext", b" line\n"):
        splitter.feed(chunk)
    splitter.feed(b"", final=True)
    assert partial == ["\rget 10%", "\rget 10%\rget 50%", "next"]
    assert lines == ["\rget 10%\rget 50%\rget 100%", "next line"]
    hidden: list[str] = []
    redacting = _Lines(lines.append, ("s3cret",), partial=hidden.append)
    redacting.feed(b"\rtoken s3c")
    assert hidden == []
