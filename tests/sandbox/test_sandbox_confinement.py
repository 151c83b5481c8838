"""Issue 13, class 2: kernel keyrings and dangerous system calls, against the real kernel.

The sandboxed program is the host's own Python (its /usr bound read-only into an empty
rootfs), so it can make any system call through ctypes. A real secret sits in the session
keyring of the process that starts the sandbox, as a user's login or CI secret would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from acbuild.sandbox.sandbox import Bind, SandboxSpec, run_sandboxed, sandbox_available
from tests.support.busybox import busybox_available, make_busybox_rootfs
from tests.support.cli import acbuild

_reason = sandbox_available()
pytestmark = [
    pytest.mark.skipif(_reason is not None, reason=f"no sandbox: {_reason}"),
    pytest.mark.skipif(not Path("/usr/bin/python3").is_file() or not Path("/lib").is_symlink(),
                       reason="needs a merged-/usr host with /usr/bin/python3"),
]
SECRET = b"hunter2-top-secret"

# Runs inside the sandbox: tries each call, prints {name: errno or 0}.
PROBE = r"""
import ctypes, errno, json, os, threading
libc = ctypes.CDLL(None, use_errno=True)
NR = {"keyctl": 250, "add_key": 248, "request_key": 249, "unshare": 272, "bpf": 321,
      "perf_event_open": 298, "userfaultfd": 323, "open_by_handle_at": 304,
      "name_to_handle_at": 303, "kexec_load": 246, "init_module": 175, "finit_module": 313,
      "delete_module": 176, "mount": 165, "umount2": 166, "fsopen": 430, "swapon": 167,
      "reboot": 169, "settimeofday": 164, "clock_settime": 227, "acct": 163,
      "quotactl": 179, "setns": 308, "clone3": 435, "ptrace": 101, "clone": 56}
def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    return ctypes.get_errno() if r < 0 else 0
out = {}
out["keyctl"] = call("keyctl", 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring
out["add_key"] = call("add_key", 0, 0, 0, 0, -3)
out["request_key"] = call("request_key", 0, 0, 0, 0)
out["unshare"] = call("unshare", 0x10000000)  # CLONE_NEWUSER
out["bpf"] = call("bpf", 0, 0, 0)
out["perf_event_open"] = call("perf_event_open", 0, 0, -1, -1, 0)
out["userfaultfd"] = call("userfaultfd", 0)
out["open_by_handle_at"] = call("open_by_handle_at", -100, 0, 0)
out["name_to_handle_at"] = call("name_to_handle_at", -100, 0, 0, 0, 0)
out["kexec_load"] = call("kexec_load", 0, 0, 0, 0)
out["init_module"] = call("init_module", 0, 0, 0)
out["finit_module"] = call("finit_module", -1, 0, 0)
out["delete_module"] = call("delete_module", 0, 0)
out["mount"] = call("mount", 0, 0, 0, 0, 0)
out["umount2"] = call("umount2", 0, 0)
out["fsopen"] = call("fsopen", 0, 0)
out["swapon"] = call("swapon", 0, 0)
out["reboot"] = call("reboot", 0, 0, 0, 0)
out["settimeofday"] = call("settimeofday", 0, 0)
out["clock_settime"] = call("clock_settime", 0, 0)
out["acct"] = call("acct", 0)
out["quotactl"] = call("quotactl", 0, 0, 0, 0)
out["setns"] = call("setns", -1, 0)
out["clone3"] = call("clone3", 0, 0)
out["clone_newns"] = call("clone", 0x00020000 | 17, 0, 0, 0, 0)  # CLONE_NEWNS|SIGCHLD
out["ptrace"] = call("ptrace", 16, 999999, 0, 0)  # PTRACE_ATTACH to no one: ESRCH, not EPERM
# What builds need keeps working: threads, fork, exec.
t = threading.Thread(target=lambda: None); t.start(); t.join()
out["thread"] = 0
pid = os.fork()
if pid == 0:
    os.execv("/usr/bin/true", ["true"])
out["fork_exec"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
out["proc_keys"] = open("/proc/keys").read()
print(json.dumps(out))
"""

# Runs inside the sandbox: the attack on the keyring, by search (possession) and by id.
STEAL = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
def keyctl(*args):
    return libc.syscall(ctypes.c_long(250), *[ctypes.c_long(a) if isinstance(a, int) else a
                                             for a in args])
for ring in (-3, -4, -5):  # session, user, user-session keyrings
    key = keyctl(10, ring, b"user", b"acbuild-test-secret", 0)  # KEYCTL_SEARCH
    for k in ([key] if key > 0 else []) + [int(a) for a in sys.argv[1:]]:
        buf = ctypes.create_string_buffer(256)
        n = keyctl(11, k, buf, 256)  # KEYCTL_READ
        if n > 0:
            print("STOLEN", buf.raw[:n].decode())
print("done")
"""

# Runs in a child of the test process: a fresh session keyring of its own holding the
# secret, then the sandbox (so the test process's own keyring is left alone).
PARENT = r"""
import ctypes, json, sys
from pathlib import Path
from acbuild.sandbox.sandbox import Bind, SandboxSpec, run_sandboxed
libc = ctypes.CDLL(None, use_errno=True)
assert libc.syscall(ctypes.c_long(250), ctypes.c_long(1), b"acbuild-test") > 0  # JOIN
key = libc.syscall(ctypes.c_long(248), b"user", b"acbuild-test-secret", SECRET, len(SECRET),
                   ctypes.c_long(-3))
assert key > 0, ctypes.get_errno()
buf = ctypes.create_string_buffer(256)
assert libc.syscall(ctypes.c_long(250), ctypes.c_long(11), ctypes.c_long(key), buf, 256) > 0
root = Path(sys.argv[1])
lines = []
spec = SandboxSpec(rootfs=root, argv=("/usr/bin/python3", "-c", STEAL, str(key)),
                   binds=(Bind(source=Path("/usr"), target="/usr", read_only=True),))
result = run_sandboxed(spec, lines.append)
print(json.dumps({"key": key, "status": result.exit_status, "lines": lines}))
"""


def python_rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "usr").mkdir(parents=True)
    for name, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                         ("sbin", "usr/sbin")):
        (root / name).symlink_to(target)
    return root


def in_sandbox(root: Path, *argv: str) -> list[str]:
    lines: list[str] = []
    spec = SandboxSpec(rootfs=root, argv=("/usr/bin/python3", *argv),
                       binds=(Bind(source=Path("/usr"), target="/usr", read_only=True),))
    result = run_sandboxed(spec, lines.append)
    assert result.exit_status == 0, lines
    return lines


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="system call numbers of x86_64")
def test_secret_in_the_session_keyring_stays_out_of_reach(tmp_path: Path) -> None:
    root = python_rootfs(tmp_path)
    script = f"SECRET = {SECRET!r}\nSTEAL = {STEAL!r}\n{PARENT}"
    proc = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if proc.returncode != 0 and "assert" in proc.stderr:
        pytest.skip(f"no kernel keyrings here: {proc.stderr.strip().splitlines()[-1]}")
    report = json.loads(proc.stdout)
    assert report["status"] == 0, report
    assert report["lines"][-1] == "done"
    assert not [line for line in report["lines"] if "STOLEN" in line], report


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="system call numbers of x86_64")
def test_dangerous_system_calls_fail_with_eperm(tmp_path: Path) -> None:
    out = json.loads(in_sandbox(python_rootfs(tmp_path), "-c", PROBE)[-1])
    blocked = ("keyctl", "add_key", "request_key", "unshare", "bpf", "perf_event_open",
               "userfaultfd", "open_by_handle_at", "name_to_handle_at", "kexec_load",
               "init_module", "finit_module", "delete_module", "mount", "umount2", "fsopen",
               "swapon", "reboot", "settimeofday", "clock_settime", "acct", "quotactl",
               "setns", "clone_newns")
    assert {name: out[name] for name in blocked} == dict.fromkeys(blocked, 1)  # EPERM
    assert out["clone3"] == 38  # ENOSYS: libc falls back to clone, whose flags are checked
    assert out["ptrace"] == 3  # ESRCH: allowed (Docker allows it on kernels >= 4.8)
    assert (out["thread"], out["fork_exec"]) == (0, 0)
    assert out["proc_keys"] == ""  # masked: not even the descriptions of host keys


def test_filter_is_built_by_libseccomp() -> None:
    from acbuild.sandbox.seccomp import filter_bpf

    program = filter_bpf()
    assert program and len(program) % 8 == 0  # struct sock_filter is 8 bytes
    # libseccomp's programs start by loading the architecture (seccomp_data.arch, offset 4).
    assert program[:8] == bytes.fromhex("2000000004000000")


@pytest.mark.skipif(not busybox_available(), reason="busybox-static is not installed")
def test_run_steps_and_the_run_verb_are_confined(tmp_path: Path) -> None:
    """Through the CLI: a RUN step and the app of `acbuild-py run` get the same filter."""
    base = make_busybox_rootfs(tmp_path / "base")
    probe = "unshare -U true && echo UNSHARED || echo BLOCKED"
    (tmp_path / "Acfile").write_text(
        f"BEGIN {base}\nNAME example.com/confined\nRUN /bin/sh -c '{probe}'\n"
        f"EXEC /bin/sh -c '{probe}'\n")
    out = tmp_path / "x.aci"
    r = acbuild("build", "--no-cache", tmp_path / "Acfile", "-o", out)
    assert r.code == 0, r.stderr
    assert "| BLOCKED" in r.stderr and "| UNSHARED" not in r.stderr, r.stderr
    r = acbuild("run", "--no-stdin", out, env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert r.stdout.splitlines()[-1:] == ["BLOCKED"], r.stdout + r.stderr


K32 = r"""
#include <stdio.h>
int main(void) {
    long ret;  /* i386 keyctl(KEYCTL_GET_KEYRING_ID, session keyring) through int 0x80 */
    __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(288L), "b"(0L), "c"(-3L), "d"(0L)
                      : "memory");
    printf("%ld\n", ret);
    return 0;
}
"""


@pytest.mark.skipif(os.uname().machine != "x86_64" or shutil.which("gcc") is None,
                    reason="needs gcc on x86_64")
def test_32_bit_system_calls_meet_the_same_filter(tmp_path: Path) -> None:
    (tmp_path / "k32.c").write_text(K32)
    root = tmp_path / "rootfs"
    root.mkdir()
    built = subprocess.run(["gcc", "-static", "-o", root / "k32", tmp_path / "k32.c"],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot build a static program: {built.stderr[-200:]}")
    assert int(subprocess.run([root / "k32"], capture_output=True, text=True).stdout) > 0
    lines: list[str] = []
    run_sandboxed(SandboxSpec(rootfs=root, argv=("/k32",)), lines.append)
    assert lines == ["-1"]  # -EPERM: not a way around the filter
