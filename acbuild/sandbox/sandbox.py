"""Execute stage, sandbox: runs one program with a staged rootfs as ``/`` in fresh namespaces.

Used by RUN steps and ``acbuild-py run``. Needs neither root nor systemd-nspawn: the program
always runs in a new user namespace (as root: every id mapped to itself; as a user: only the
caller, seen as 0), with new mount, PID, IPC, UTS and (unless network="host") network
namespaces. The child side lives in ``sandbox_init``; this module prepares the rootfs, maps
ids, streams output line by line, enforces the timeout and leaves nothing behind.

Security choices: even as root the program is in a user namespace, so its capabilities stop
at the namespaces we made (no mknod of host disks, no host sysctls, no module loading); its
bounding set keeps only Docker's default capabilities (no CAP_SYS_ADMIN, so no mounting or
unmounting); /proc is a fresh procfs with sys, sysrq-trigger, irq, bus and fs read-only; the
old root is detached after ``pivot_root``, so there is nothing above ``/`` to climb to.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import errno
import functools
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from acbuild.errors import SandboxError
from acbuild.sandbox import sandbox_init
from acbuild.sandbox.limits import HELPERS, CgroupJail, Limits
from acbuild.sandbox.seccomp import filter_bpf

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Longer output lines are handed on in pieces of this many characters.
MAX_LINE = 8192
REDACTED = "***"  # what output shows instead of a secret
# How long the helper gets to empty the namespace after being told to, before SIGKILL.
KILL_GRACE = 5.0
_INIT = Path(sandbox_init.__file__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bind:
    """A host path made visible inside (``run --volume``)."""

    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewEntry:
    """One entry of a TreeMount's ``view``, in the order of a depth-first walk (a directory
    before what it holds). The helper mounts a fresh tmpfs at the target, makes each
    directory and symlink there itself, and binds each file there from the inode
    ``identity`` names (reopened below the tree following no symlink, as the tree itself),
    then makes all of it read-only. So nothing made in the tree afterwards appears in the
    mount; a file changed in place does show the change (the caller checks for that)."""

    rel: str
    kind: Literal["dir", "file", "symlink"]
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of a directory or file
    link: str = ""  # a symlink's target, as listed


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeMount:
    """``rel`` of a tree the caller checked (the build context, a stage's rootfs, a cache
    directory) mounted at ``target`` (relative to the rootfs, symlink-free). The helper
    reopens it below ``root`` following no symlink, and mounts it only if it is still the
    inode the caller saw: a swap between the check and the mount fails the step."""

    root: Path
    rel: str  # "" for the root itself
    identity: tuple[int, int]  # (st_dev, st_ino) the caller checked
    is_dir: bool
    target: str
    read_only: bool = True
    # A directory shown as this listing only (``rel`` of each entry below the tree's
    # ``rel``), not as a live view: see ViewEntry. None: the directory itself is mounted.
    view: tuple[ViewEntry, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretFile:
    """A file of SECRETS_DIR: copied by the helper from ``fd`` (a sealed memfd the caller
    owns and closes) into a tmpfs that exists only for the program's run."""

    fd: int
    name: str
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxSpec:
    rootfs: Path
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    # Make a missing workdir (RUN --workdir, as a build step may); `run` must not: rkt
    # refuses an app whose working directory the image lacks, and so does `run`.
    make_workdir: bool = False
    uid: int = 0
    gid: int = 0
    supplementary_gids: tuple[int, ...] = ()
    network: Literal["none", "host"] = "none"
    timeout: float | None = None
    hostname: str = "acbuild"
    source_date_epoch: int = 315532800
    binds: tuple[Bind, ...] = ()
    mounts: tuple[TreeMount, ...] = ()  # RUN --mount=type=bind|cache
    secrets: tuple[SecretFile, ...] = ()  # RUN --mount=type=secret, in /run/secrets
    redact: tuple[str, ...] = ()  # texts the output never shows (REDACTED instead)
    stdin: bool = False  # connect the caller's stdin (for `acbuild-py run`), else /dev/null
    # A fresh tmpfs on /tmp (`acbuild-py run`). RUN steps use the image's own /tmp, as
    # Docker does: what they do there (mode, files, making /tmp at all) stays in the image.
    tmpfs_tmp: bool = True
    # processes and memory (RUN steps have defaults; run has none); frozen, so one is shared
    limits: Limits = Limits()  # noqa: RUF009
    # A directory the caller holds open (`run`'s scratch directory) that ``rootfs`` and bind
    # sources may be named through, as /proc/self/fd/N/...: the helper inherits it under the
    # same number and reaches those paths through it, not by a name someone could re-point
    # meanwhile; it is closed before the program starts.
    dir_fd: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxResult:
    exit_status: int  # 128 + signal when killed, as a shell reports it
    timed_out: bool
    signal: int | None
    unenforced: tuple[str, ...] = ()  # limits asked for that no mechanism here could apply
    out_of_memory: bool = False  # the memory limit made the kernel kill a process


@functools.cache
def _helper_source() -> str:
    """The helper's text, read once a process: every sandbox of a build runs the same bytes.
    Read again for each run, a file being rewritten in place (an editor saving it, a
    checkout) was empty for an instant, and a helper started then ran nothing, exited 0
    and failed the step without a word. A file caught mid-write is a prefix of the whole,
    so one that ends with the helper's last lines is whole."""
    try:
        text = _INIT.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SandboxError(f"cannot read the sandbox helper {_INIT}: {e}",
                           hint=_REWRITTEN) from None
    if not text.endswith(_HELPER_END):
        raise SandboxError(f"the sandbox helper {_INIT} is incomplete (it does not end with "
                           "its __main__ block)", hint=_REWRITTEN)
    return text


_HELPER_END = 'if __name__ == "__main__":\n    sys.exit(main(sys.argv))\n'
_REWRITTEN = "was acbuild-py's installation changed while it ran? Run the command again"


def sandbox_available() -> str | None:
    """None when sandboxes can run here, else why not (user namespaces disabled, ...)."""
    if sys.platform != "linux":
        return "the sandbox needs Linux namespaces"
    if os.geteuid() != 0 and _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0)"
    if _read_int("/proc/sys/user/max_user_namespaces") == 0:
        return "user namespaces are disabled (user.max_user_namespaces=0)"
    try:
        _Session({"probe": True, "network": "none"}, None, lambda _: None).run()
    except SandboxError as e:
        return e.message
    return None


def run_sandboxed(spec: SandboxSpec, on_output: Callable[[str], None], *,
                  on_partial: Callable[[str], None] | None = None) -> SandboxResult:
    """Run ``spec.argv`` in the sandbox, handing each output line (stdout and stderr merged,
    without the newline) to ``on_output`` as it comes, and an unfinished last line (a
    progress bar redrawn with ``\\r``) to ``on_partial`` each time more of it arrives."""
    _check_spec(spec)
    created: list[tuple[str, bool]] = []
    try:
        with CgroupJail(spec.limits) as jail:
            payload = _prepare(spec, created)
            # Without a pids cgroup, RLIMIT_NPROC: it binds every uid but the host's root.
            nproc = spec.limits.pids + HELPERS if spec.limits.pids and \
                "pids" not in jail.enforced else None
            payload["nproc"] = nproc
            result = _Session(payload, spec.timeout, on_output, stdin=spec.stdin,
                              on_start=jail.add, on_partial=on_partial,
                              pass_fds=(*(s.fd for s in spec.secrets), *_fds(spec.dir_fd)),
                              redact=spec.redact).run()
            unenforced = tuple(
                name for name, value in (("pids", spec.limits.pids),
                                         ("memory", spec.limits.memory))
                if value is not None and name not in jail.enforced
                and not (name == "pids" and os.geteuid() != 0))
            oom = jail.oom_killed()
        return dataclasses.replace(result, unenforced=unenforced, out_of_memory=oom)
    finally:
        _remove_created(spec.rootfs, created)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _check_spec(spec: SandboxSpec) -> None:
    if not spec.argv:
        raise SandboxError("no program to run")
    if not spec.rootfs.is_dir():
        raise SandboxError(f"rootfs {spec.rootfs} is not a directory")
    if not spec.workdir.startswith("/"):
        raise SandboxError(f"working directory '{spec.workdir}' is not an absolute path")
    if os.geteuid() != 0 and (spec.uid, spec.gid, spec.supplementary_gids) != (0, 0, ()):
        raise SandboxError(
            f"rootless builds can only run programs as uid 0 and gid 0 (asked for "
            f"uid {spec.uid}, gid {spec.gid}"
            + (f", groups {list(spec.supplementary_gids)}" if spec.supplementary_gids else "")
            + ")",
            hint="run acbuild-py as root to use other users",
        )
    for name, value in spec.env:
        if not name or "=" in name or "\0" in name + value:
            raise SandboxError(f"invalid environment variable {name!r}")
    for word in spec.argv:
        if "\0" in word:
            raise SandboxError(f"invalid argument {word!r}: contains a NUL byte")


def _environment(spec: SandboxSpec) -> list[tuple[str, str]]:
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "TZ": "UTC",
           "SOURCE_DATE_EPOCH": str(spec.source_date_epoch)}
    env.update(spec.env)
    return sorted(env.items())


def _rel(target: str) -> str:
    """A bind target as a path relative to the rootfs; refuses climbs and the root itself."""
    parts = [p for p in target.split("/") if p not in ("", ".")]
    if not target.startswith("/") or ".." in parts:
        raise SandboxError(f"volume target '{target}' must be an absolute path without '..'")
    if not parts or parts[0] == "proc":
        raise SandboxError(f"cannot mount a volume on '{target}'")
    return "/".join(parts)


def _prepare(spec: SandboxSpec, created: list[tuple[str, bool]]) -> dict[str, Any]:
    """Make the mount points the image lacks (recorded in ``created`` for removal) and
    return what the helper needs."""
    root_fd = os.open(spec.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # Only what the sandbox mounts over gets a placeholder, removed afterwards if it is
        # still empty: the program cannot have made /proc or /dev itself (they are covered).
        for name in ("proc", "dev", "tmp") if spec.tmpfs_tmp else ("proc", "dev"):
            _make(root_fd, name, "dir", created)
        host_files = _prepare_host_files(root_fd, created) if spec.network == "host" else []
        tmpfs = ("tmp", "dev") if spec.tmpfs_tmp else ("dev",)
        binds = [_prepare_bind(root_fd, b, created, tmpfs, spec.dir_fd) for b in spec.binds]
        mounts = [_prepare_mount(root_fd, m, created) for m in spec.mounts]
        if spec.secrets:
            _make(root_fd, sandbox_init.SECRETS_DIR, "dir", created)
    finally:
        os.close(root_fd)
    return {
        "rootfs": _for_helper(spec.rootfs, spec.dir_fd), "argv": list(spec.argv),
        "env": _environment(spec), "workdir": spec.workdir,
        "make_workdir": spec.make_workdir, "uid": spec.uid, "gid": spec.gid,
        "groups": list(spec.supplementary_gids), "set_groups": os.geteuid() == 0,
        "network": spec.network, "hostname": spec.hostname, "host_files": host_files,
        "binds": binds, "mounts": mounts,
        "secrets": [{"fd": x.fd, "name": x.name, "mode": x.mode, "uid": x.uid, "gid": x.gid}
                    for x in spec.secrets],
        "seccomp": filter_bpf().hex(), "tmpfs_tmp": spec.tmpfs_tmp,
        "dir_fd": spec.dir_fd,
    }


def _fds(fd: int | None) -> tuple[int, ...]:
    return () if fd is None else (fd,)


def _for_helper(path: Path, dir_fd: int | None) -> str:
    """``path`` as the helper is to reach it: through ``dir_fd`` when it is named so
    (resolving it would put back the names the descriptor is there to avoid), else resolved."""
    if dir_fd is not None and path.parts[:5] == ("/", "proc", "self", "fd", str(dir_fd)):
        return str(path)
    return str(path.resolve())


def _make(root_fd: int, rel: str, kind: str, created: list[tuple[str, bool]]) -> None:
    try:
        os.close(sandbox_init.open_beneath(root_fd, rel, kind=kind, create=True,
                                           created=created))
    except OSError as e:
        raise SandboxError(f"cannot prepare mount point /{rel}: {e.strerror or e}") from None


def _prepare_host_files(root_fd: int, created: list[tuple[str, bool]]) -> list[str]:
    """resolv.conf and hosts for network="host": bound read-only over the image's own regular
    file (its content stays untouched) or over an empty one made for the purpose; an image
    whose file is a symlink keeps it as it is."""
    names = []
    for name in sandbox_init.HOST_FILES:
        if not os.path.isfile(f"/etc/{name}"):
            continue
        try:
            os.close(sandbox_init.open_beneath(root_fd, f"etc/{name}", kind="file",
                                               create=True, created=created))
        except OSError:
            continue
        names.append(name)
    return names


def _prepare_bind(root_fd: int, bind: Bind, created: list[tuple[str, bool]],
                  tmpfs: tuple[str, ...], dir_fd: int | None) -> dict[str, Any]:
    try:
        kind = "dir" if stat.S_ISDIR(os.stat(bind.source).st_mode) else "file"
    except OSError as e:
        raise SandboxError(f"volume source {bind.source}: {e.strerror}") from None
    rel = _rel(bind.target)
    # Below /tmp or /dev the mount point is made inside the tmpfs, never on disk.
    in_tmpfs = rel.split("/")[0] in tmpfs and "/" in rel
    if not in_tmpfs:
        _make(root_fd, rel, kind, created)
    return {"source": _for_helper(bind.source, dir_fd), "target": rel, "kind": kind,
            "create": in_tmpfs, "read_only": bind.read_only}


def _prepare_mount(root_fd: int, mount: TreeMount,
                   created: list[tuple[str, bool]]) -> dict[str, Any]:
    rel = mount.target.strip("/")
    if not rel or rel.split("/")[0] in ("proc", "dev") or ".." in rel.split("/"):
        raise SandboxError(f"cannot mount on '{mount.target}': the sandbox's own")
    kind = "dir" if mount.is_dir else "file"
    _make(root_fd, rel, kind, created)
    return {"root": str(mount.root), "rel": mount.rel, "dev": mount.identity[0],
            "ino": mount.identity[1], "kind": kind, "target": rel,
            "read_only": mount.read_only,
            "view": None if mount.view is None else
            [[e.rel, e.kind, *e.identity, e.link] for e in mount.view]}


def _remove_created(rootfs: Path, created: list[tuple[str, bool]]) -> None:
    """Remove the mount points we made, newest first, if they are still empty: what the
    program put there (in a directory it created through a volume, say) stays."""
    try:
        root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for rel, is_dir in reversed(created):
            parent, _, name = rel.rpartition("/")
            try:
                fd = sandbox_init.open_beneath(root_fd, parent, kind="dir") if parent else \
                    os.dup(root_fd)
            except OSError:
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if is_dir and stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=fd)
                elif not is_dir and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    os.unlink(name, dir_fd=fd)
            except OSError:
                pass  # not empty, or gone: the program's doing, left as it is
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


class _Lines:
    """Turns a byte stream into lines: UTF-8 with replacement, long lines cut in pieces.
    Each text of ``redact`` is replaced by REDACTED before any cut, so no piece holds a
    part of one; a pending line keeps the longest one's length back until it is whole.

    ``partial`` sees the pending line each time it grows: a program that redraws a progress
    bar with ``\\r`` writes no newline for minutes. Not while redacting, where the pending
    line may end in the first part of a secret."""

    def __init__(self, emit: Callable[[str], None], redact: tuple[str, ...] = (),
                 partial: Callable[[str], None] | None = None):
        self._emit = emit
        self._partial = partial if not redact else None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._redact = sorted(redact, key=len, reverse=True)
        self._keep = max((len(r) for r in redact), default=1) - 1

    def feed(self, data: bytes, *, final: bool = False) -> None:
        text = self._pending + self._decoder.decode(data, final)
        *lines, self._pending = text.split("\n")
        for line in lines:
            self._emit_line(self._redacted(line.removesuffix("\r")))
        while len(self._pending) >= MAX_LINE + self._keep:
            self._pending = self._redacted(self._pending)
            if len(self._pending) < MAX_LINE + self._keep:
                break
            self._emit(self._pending[:MAX_LINE])
            self._pending = self._pending[MAX_LINE:]
        if final and self._pending:
            self._emit_line(self._redacted(self._pending))
            self._pending = ""
        elif self._partial is not None and self._pending and data:
            self._partial(self._pending)

    def _redacted(self, text: str) -> str:
        for secret in self._redact:
            text = text.replace(secret, REDACTED)
        return text

    def _emit_line(self, line: str) -> None:
        for start in range(0, max(len(line), 1), MAX_LINE):
            self._emit(line[start:start + MAX_LINE])


class _Session:
    """One run of the helper: the protocol of sandbox_init, output, timeout, teardown."""

    def __init__(self, payload: dict[str, Any], timeout: float | None,
                 on_output: Callable[[str], None], *, stdin: bool = False,
                 on_start: Callable[[int], None] | None = None,
                 on_partial: Callable[[str], None] | None = None,
                 pass_fds: tuple[int, ...] = (), redact: tuple[str, ...] = ()):
        self._payload = payload
        self._pass_fds = pass_fds
        self._on_start = on_start
        self._timeout = timeout
        self._lines = _Lines(on_output, redact, on_partial)
        self._stdin = stdin
        self._messages: dict[str, Any] = {}
        self._report = b""
        self._ctl_w = -1

    def run(self) -> SandboxResult:
        source = _helper_source()
        ctl_r, self._ctl_w = os.pipe()
        rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(
                    # The path only names the helper (ps, stop_sandboxes): the code is
                    # ``source``, not whatever the file holds by now.
                    [sys.executable, "-I", "-S", "-c", source, str(_INIT), str(ctl_r),
                     str(rep_w), str(os.getpid())],
                    stdin=None if self._stdin else subprocess.DEVNULL, stdout=out_w,
                    stderr=errors, pass_fds=(ctl_r, rep_w, *self._pass_fds),
                    start_new_session=True, env={},
                )
            except BaseException as e:
                for fd in (rep_r, out_r, self._ctl_w):
                    os.close(fd)  # a helper that did start reads EOF and exits
                if isinstance(e, OSError):
                    raise SandboxError(f"cannot start the sandbox helper {sys.executable}: "
                                       f"{e.strerror}") from None
                raise
            finally:
                for fd in (ctl_r, rep_w, out_w):
                    os.close(fd)
            try:
                if self._on_start is not None:
                    # Before the spec is sent: nothing has forked yet, all that follows
                    # starts inside the cgroups.
                    try:
                        self._on_start(proc.pid)
                    except OSError as e:
                        raise SandboxError(f"cannot put the sandbox in its cgroup: "
                                           f"{e.strerror}") from None
                timed_out = self._communicate(proc, out_r, rep_r)
            except BaseException:
                _stop(proc)  # Ctrl-C, a failing callback ...: empty the namespace, then raise
                raise
            finally:
                for fd in (out_r, rep_r, self._ctl_w):
                    if fd >= 0:
                        os.close(fd)
            return self._result(proc, timed_out, errors)

    def _communicate(self, proc: subprocess.Popen[bytes], out_r: int, rep_r: int) -> bool:
        """Stream until the helper is done; True when the timeout killed the namespace."""
        self._tell(json.dumps(self._payload).encode() + b"\n")
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        killed_at: float | None = None
        with selectors.DefaultSelector() as sel:
            sel.register(out_r, selectors.EVENT_READ)
            sel.register(rep_r, selectors.EVENT_READ)
            while sel.get_map():
                now = time.monotonic()
                if killed_at is not None:
                    wait: float | None = max(0.0, killed_at + KILL_GRACE - now)
                elif deadline is not None and "exit" not in self._messages:
                    wait = max(0.0, deadline - now)
                else:
                    wait = None
                events = sel.select(wait)
                if not events and killed_at is None and wait is not None:
                    proc.send_signal(signal.SIGTERM)  # the helper kills PID 1, so all of it
                    killed_at = time.monotonic()
                elif not events and killed_at is not None:
                    proc.kill()  # helper unresponsive; PDEATHSIG takes the namespace down
                for key, _ in events:
                    self._read(key.fd, out_r, sel, proc.pid)
        proc.wait()
        return killed_at is not None and not self._status_known()

    def _read(self, fd: int, out_r: int, sel: selectors.BaseSelector, pid: int) -> None:
        data = os.read(fd, 65536)
        if not data:
            sel.unregister(fd)
        if fd == out_r:
            self._lines.feed(data, final=not data)
            return
        self._report += data
        *complete, self._report = self._report.split(b"\n")
        if not data and self._report:
            self._messages["cut"] = self._report[:200].decode(errors="replace")
        for line in complete:
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                raise SandboxError("the sandbox helper sent a report that is no message: "
                                   f"{line[:200].decode(errors='replace')!r}")
            if message.get("unshared"):
                _map_ids(pid)
                self._tell(b"go\n")
                os.close(self._ctl_w)
                self._ctl_w = -1
            self._messages.update(message)

    def _tell(self, data: bytes) -> None:
        view = memoryview(data)
        # A broken pipe means the helper is gone; its stderr tells why once it is reaped.
        with contextlib.suppress(BrokenPipeError):
            while view:
                view = view[os.write(self._ctl_w, view):]

    def _status_known(self) -> bool:
        return "exit" in self._messages or "signal" in self._messages

    def _result(self, proc: subprocess.Popen[bytes], timed_out: bool,
                errors: IO[bytes]) -> SandboxResult:
        m = self._messages
        if "error" in m:
            raise SandboxError(f"cannot set up the sandbox: {m['error']}")
        if "exec_error" in m:
            raise SandboxError(_exec_message(self._payload, m["exec_error"]))
        if "signal" in m:
            return SandboxResult(exit_status=128 + m["signal"], timed_out=False,
                                 signal=m["signal"])
        if "exit" in m:
            return SandboxResult(exit_status=m["exit"], timed_out=False, signal=None)
        if timed_out:
            return SandboxResult(exit_status=128 + int(signal.SIGKILL), timed_out=True,
                                 signal=int(signal.SIGKILL))
        errors.seek(0)
        tail = errors.read()[-2000:].decode(errors="replace").strip().splitlines()
        detail = f": {tail[-1]}" if tail else ""
        raise SandboxError(_failure(m, proc.returncode) + detail)


def _failure(m: dict[str, Any], status: int | None) -> str:
    """Which part of the helper ended without the program's status, and how."""
    if "lost" in m:
        return f"the sandbox lost the program's exit status: {m['lost']}"
    if "cut" in m:
        return f"the sandbox helper's last report was cut off ({m['cut']!r}, status {status})"
    if "init" in m:
        ended = m["init"]
        how = f"was killed by signal {ended['signal']}" if "signal" in ended else \
            f"exited with status {ended.get('exit')}"
        return f"PID 1 of the sandbox {how} without reporting the program's status"
    if "unshared" not in m:
        return f"the sandbox helper ended before it made its namespaces (status {status})"
    return f"the sandbox helper ended without reporting how PID 1 did (status {status})"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _map_ids(pid: int) -> None:
    """As root every id maps to itself (files keep their true owners); as a user only the
    caller exists inside, as 0, and setgroups is denied as the kernel requires."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        writes = [("uid_map", "0 0 4294967295"), ("gid_map", "0 0 4294967295")]
    else:
        writes = [("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")]
    for name, text in writes:
        try:
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())  # the kernel wants the whole map in one write
            finally:
                os.close(fd)
        except OSError as e:
            raise SandboxError(f"cannot map user ids into the sandbox ({name}): "
                               f"{e.strerror}") from None


def _exec_message(payload: dict[str, Any], failure: dict[str, Any]) -> str:
    program, workdir = payload["argv"][0], payload["workdir"]
    stage, err, text = failure["stage"], failure["errno"], failure["message"]
    if stage == "workdir":
        if err in (errno.ENOTDIR, errno.EEXIST):
            return f"working directory '{workdir}' is not a directory in the image"
        if err == errno.ENOENT:
            return f"working directory '{workdir}' does not exist in the image"
        return f"cannot enter working directory '{workdir}': {text}"
    if stage == "confine":
        return f"cannot confine the program (keyring, seccomp): {text}"
    if stage == "identity":
        return f"cannot run as uid {payload['uid']} gid {payload['gid']}: {text}"
    if stage != "exec":
        return f"cannot start program '{program}': {text}"
    if err == errno.ENOENT and failure["exists"]:
        return (f"program '{program}' could not be started: its interpreter or dynamic "
                "loader is missing from the image")
    if err in (errno.ENOENT, errno.ENOTDIR):
        return f"program '{program}' not found in the image"
    if err == errno.EACCES:
        return f"program '{program}' is not executable (permission denied)"
    if err == errno.ENOEXEC:
        return f"program '{program}' is not in an executable format this machine runs"
    return f"program '{program}' could not be started: {text}"
