"""Execute stage, sandbox child side: enters fresh namespaces, becomes PID 1, runs a program.

Started by ``sandbox.py`` as ``python -I -S -c SOURCE PATH CTL_FD REPORT_FD PARENT_PID``: the
parent reads this file once and hands its text to every helper it starts, so a build whose
installation is rewritten meanwhile (an editor saving this file, a checkout, an upgrade) never
runs a helper from a half-written file (an empty one ran nothing and exited 0 without a word).
PATH only names the helper in ``ps``. It imports only the standard library, and imports
everything before ``pivot_root``: after it, nothing of the host's Python installation is
reachable.

Processes: S (this script) unshares user, mount, PID, IPC, UTS (and network) namespaces and
waits for the parent to write its uid/gid maps; it forks I, PID 1 of the new PID namespace,
which mounts /proc, /dev, /tmp (not for RUN steps) and binds, pivots into the rootfs and
forks C, the program. I reaps every process and exits when C does: the kernel then kills
whatever is left in the namespace, and S's ``waitpid(I)`` returns only once the namespace
is empty. S and I die with their parents (PR_SET_PDEATHSIG), so the sandbox never
outlives the build.

Messages to the parent are JSON lines on REPORT_FD: ``{"unshared": true}``, ``{"error": str}``,
``{"exec_error": {...}}``, ``{"exit": n}`` or ``{"signal": n}`` from I, or ``{"lost": str}`` when
I could not learn the program's status; then S's ``{"init": {"exit": n}}`` or
``{"init": {"signal": n}}``, how I ended, so no end of I goes unexplained.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import platform
import resource
import select
import signal
import socket
import stat
import struct
import sys
from typing import Any, BinaryIO

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2
# mount_setattr(2): the same syscall number on every architecture (new since Linux 5.1)
SYS_MOUNT_SETATTR = 442
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
AT_EMPTY_PATH, AT_RECURSIVE = 0x1000, 0x8000

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
SECCOMP_MODE_FILTER = 2
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 288, "s390x": 280}

# pivot_root(2) has no libc wrapper; its syscall number differs per architecture.
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

# Docker's default capability set: what a build step run as root usually needs (chown,
# setuid, binding low ports ...). Everything else, CAP_SYS_ADMIN first, leaves the
# bounding set, so the program can neither remount /proc/sys read-write nor undo a mount.
KEPT_CAPS = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31})

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_MAJOR_MINOR = {"null": "1 3", "zero": "1 5", "full": "1 7", "random": "1 8",
                "urandom": "1 9", "tty": "5 0"}
# Parts of the fresh procfs that reach beyond the namespaces; read-only, as in Docker.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
HOST_FILES = ("resolv.conf", "hosts")
SECRETS_DIR = "run/secrets"  # RUN --mount=type=secret files, on a tmpfs of their own
MAX_SECRETS_BYTES = 4 << 20
# Host information procfs shows whatever the namespaces (the descriptions of the keys in
# every keyring, kernel memory, timers): hidden under /dev/null, as Docker masks them.
PROC_MASKED = ("keys", "key-users", "kcore", "timer_list", "sched_debug", "latency_stats")

_LIBC = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    _check(_LIBC.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags),
                       enc(data)), f"mount {target}")


def _prctl(option: int, arg: int, arg2: int = 0) -> None:
    _check(_LIBC.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg2), 0, 0), "prctl")


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _confine(bpf: bytes) -> None:
    """A fresh anonymous session keyring, then the seccomp filter (which blocks keyctl, so
    the keyring comes first). The host's session keyring and every key it holds are no
    longer possessed, and the program cannot reach the kernel's key store at all."""
    number = SYS_KEYCTL[platform.machine()]
    if _LIBC.syscall(ctypes.c_long(number), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING),
                     None) < 0:
        err = ctypes.get_errno()
        if err != errno.ENOSYS:  # a kernel without keyrings has nothing to hide
            raise OSError(err, f"cannot join a new session keyring: {os.strerror(err)}")
    if not bpf or len(bpf) % 8:
        raise OSError(errno.EINVAL, "no seccomp filter")
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.addressof(program))
    # Without no_new_privs: uid 0 of the user namespace holds CAP_SYS_ADMIN there, and
    # setuid programs of the image keep working, as in Docker.
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def open_beneath(root_fd: int, rel: str, *, kind: str, create: bool = False,
                 created: list[tuple[str, bool]] | None = None) -> int:
    """An O_PATH descriptor for ``rel`` below ``root_fd``, refusing every symlink on the way,
    so a hostile image cannot turn a mount point into a way out. ``kind`` is "dir" or "file";
    with ``create``, missing components are made and appended to ``created`` as (rel, is_dir).
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OSError(errno.EINVAL, f"invalid path /{rel}")
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            want_dir = not last or kind == "dir"
            child = _open_component(fd, name, want_dir, "/" + "/".join(parts[: i + 1]),
                                    create, created)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_component(fd: int, name: str, want_dir: bool, shown: str, create: bool,
                    created: list[tuple[str, bool]] | None) -> int:
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        child = os.open(name, flags, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise OSError(errno.ENOENT, f"{shown} does not exist in the image") from None
        if want_dir:
            os.mkdir(name, 0o755, dir_fd=fd)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                             dir_fd=fd))
        if created is not None:
            created.append((shown.lstrip("/"), want_dir))
        child = os.open(name, flags, dir_fd=fd)
    mode = os.fstat(child).st_mode
    if stat.S_ISDIR(mode) != want_dir or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        os.close(child)
        what = "a directory" if want_dir else "a regular file"
        raise OSError(errno.ENOTDIR, f"{shown} in the image is not {what} (a symlink?)")
    return child


def _fd_path(fd: int) -> str:
    # Mounting onto the magic link mounts onto what the descriptor names, with no new lookup.
    return f"/proc/self/fd/{fd}"


def _remount(path: str, extra: int) -> None:
    # A bind remount must repeat the flags the kernel locked on the mount (nosuid, atime ...)
    # or it fails with EPERM inside a user namespace; statvfs tells which ones are set.
    # MS_NODEV and MS_RDONLY given with MS_BIND at first mount are ignored: only a remount
    # applies them.
    have = os.statvfs(path).f_flag
    flags = MS_BIND | MS_REMOUNT | extra
    for st_flag, ms_flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
                             (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                             (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME),
                             (os.ST_RDONLY, MS_RDONLY)):
        if have & st_flag:
            flags |= ms_flag
    _mount(None, path, None, flags)


def _remount_read_only(path: str) -> None:
    _remount(path, MS_RDONLY)


def _mount_proc(root: str, root_fd: int) -> None:
    fd = open_beneath(root_fd, "proc", kind="dir")
    try:
        _mount("proc", _fd_path(fd), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    finally:
        os.close(fd)
    for name in PROC_READ_ONLY:
        path = os.path.join(root, "proc", name)
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _remount_read_only(path)
    for name in PROC_MASKED:
        path = os.path.join(root, "proc", name)
        if os.path.isfile(path):
            _mount("/dev/null", path, None, MS_BIND)
            _remount_read_only(path)


def _host_device(name: str) -> bool:
    """Whether the host has /dev/NAME to bind; a /dev/NAME that is no character device
    (a program as root renamed a file over it) is an error naming the repair: bound, it
    would turn every `> /dev/null` of a step into "Read-only file system"."""
    try:
        st = os.stat(f"/dev/{name}")
    except FileNotFoundError:
        return False
    if not stat.S_ISCHR(st.st_mode):
        raise OSError(errno.ENODEV, "not a character device on the host; repair the host "
                      f"(as root: rm /dev/{name} && mknod -m 666 /dev/{name} c "
                      f"{_MAJOR_MINOR.get(name, 'MAJOR MINOR')})", f"/dev/{name}")
    return True



def _mount_dev(root: str, root_fd: int) -> None:
    fd = open_beneath(root_fd, "dev", kind="dir")
    try:
        _mount("tmpfs", _fd_path(fd), "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV,
               "mode=755,size=1m")
    finally:
        os.close(fd)
    dev = os.path.join(root, "dev")  # a fresh tmpfs now: nothing of the image in it
    # Binding the host's nodes, not mknod: a user namespace may not create devices. Each
    # bind is read-only, so a root program cannot chmod or chown the host's /dev/null
    # (writing to a device on a read-only mount still works: only its inode is protected).
    for name in DEVICES:
        if _host_device(name):
            os.close(os.open(f"{dev}/{name}", os.O_WRONLY | os.O_CREAT, 0o666))
            _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
            _remount_read_only(f"{dev}/{name}")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("ptmx", "pts/ptmx")):
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/shm", 0o1777)
    _mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777")
    os.mkdir(f"{dev}/pts", 0o755)
    with contextlib.suppress(OSError):  # pseudo-terminals are optional for a build step
        _mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620")


def _mount_tmp(root_fd: int) -> None:
    fd = open_beneath(root_fd, "tmp", kind="dir")
    try:
        _mount("tmpfs", _fd_path(fd), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    finally:
        os.close(fd)


def _bind(source: str, root_fd: int, rel: str, *, kind: str, create: bool,
          read_only: bool) -> None:
    fd = open_beneath(root_fd, rel, kind=kind, create=create)
    try:
        target = _fd_path(fd)
        _mount(source, target, None, MS_BIND | MS_REC)
    finally:
        os.close(fd)
    # Re-open: the new mount now sits on top of the path. No devices through a volume.
    fd = open_beneath(root_fd, rel, kind=kind)
    try:
        _remount(_fd_path(fd), MS_NODEV | (MS_RDONLY if read_only else 0))
    finally:
        os.close(fd)


def _tree_mount(root_fd: int, m: dict[str, Any]) -> None:
    """A RUN --mount of a checked tree: reopened below its root with no symlink followed,
    and mounted only if it is the inode the parent checked (nosuid, nodev, non-recursive,
    so a mount inside the tree cannot bring anything else along)."""
    tree = os.open(m["root"], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            source = open_beneath(tree, m["rel"], kind=m["kind"]) if m["rel"] else os.dup(tree)
        except OSError as e:
            raise OSError(e.errno, f"mount source /{m['rel']} changed since it was checked "
                          f"({e.strerror})") from None
    finally:
        os.close(tree)
    try:
        _check_identity(source, m["rel"], m["dev"], m["ino"])
        if m.get("view") is not None:
            _view_mount(root_fd, m, source)
            return
        target = open_beneath(root_fd, m["target"], kind=m["kind"])
        try:
            _mount(_fd_path(source), _fd_path(target), None, MS_BIND)
        finally:
            os.close(target)
    finally:
        os.close(source)
    fd = open_beneath(root_fd, m["target"], kind=m["kind"])
    try:
        _remount(_fd_path(fd), MS_NOSUID | MS_NODEV | (MS_RDONLY if m["read_only"] else 0))
    finally:
        os.close(fd)


def _check_identity(fd: int, rel: str, dev: int, ino: int) -> None:
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (dev, ino):
        raise OSError(errno.ESTALE, f"mount source /{rel} changed since it was checked")


def _view_mount(root_fd: int, m: dict[str, Any], source: int) -> None:
    """The listing ``m["view"]`` of the directory ``source`` (sandbox.ViewEntry): a fresh
    tmpfs at the target with the listed directories and symlinks made here, each listed
    file bound from the very inode listed, then all of it read-only. What the tree gains
    later is not in it, whatever its name."""
    target = open_beneath(root_fd, m["target"], kind="dir")
    try:
        _mount("tmpfs", _fd_path(target), "tmpfs", MS_NOSUID | MS_NODEV, "mode=700")
    finally:
        os.close(target)
    top = open_beneath(root_fd, m["target"], kind="dir")  # the tmpfs now
    files: list[str] = []
    # The listing is depth-first: the directories open are the chain to the current entry.
    chain: list[tuple[str, int, int]] = [("", source, top)]
    try:
        for rel, kind, dev, ino, link in m["view"]:
            parent, _, name = rel.rpartition("/")
            while chain[-1][0] != parent:
                if len(chain) == 1:
                    raise OSError(errno.EINVAL, f"mount listing out of order at /{rel}")
                _close_view_dir(*chain.pop()[1:])
            _, src_dir, dst_dir = chain[-1]
            if kind == "symlink":
                os.symlink(link, name, dir_fd=dst_dir)
                continue
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(name, flags | (os.O_DIRECTORY if kind == "dir" else 0),
                             dir_fd=src_dir)
            except OSError as e:
                raise OSError(e.errno, f"mount source {_below(m['rel'], rel)} changed since "
                              f"it was checked ({e.strerror})") from None
            try:
                st = os.fstat(fd)
                if st.st_ino != ino or st.st_dev != dev:
                    _check_identity(fd, _below(m["rel"], rel)[1:], dev, ino)
                if kind == "dir":
                    os.mkdir(name, 0o700, dir_fd=dst_dir)
                    made = os.open(name, flags | os.O_DIRECTORY, dir_fd=dst_dir)
                    chain.append((rel, fd, made))
                    fd = -1
                else:
                    os.mknod(name, stat.S_IFREG | 0o600, dir_fd=dst_dir)
                    _bind_file(fd, dst_dir, name)
                    files.append(rel)
            finally:
                if fd >= 0:
                    os.close(fd)
        while len(chain) > 1:
            _close_view_dir(*chain.pop()[1:])
        _finish_view_dir(source, top)
        _read_only_tree(top, files)
    finally:
        for _, src_dir, dst_dir in chain[1:]:
            os.close(src_dir)
            os.close(dst_dir)
        os.close(top)


def _below(rel: str, entry: str) -> str:
    return f"/{rel}/{entry}" if rel else f"/{entry}"


def _bind_file(source: int, dir_fd: int, name: str) -> None:
    # _mount without its per-call conveniences: a view binds one file per listed file.
    target = b"/proc/self/fd/%d/" % dir_fd + os.fsencode(name)
    if _LIBC.mount(b"/proc/self/fd/%d" % source, target, None, ctypes.c_ulong(MS_BIND),
                   None) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {os.fsdecode(target)}: {os.strerror(err)}")


def _close_view_dir(source: int, made: int) -> None:
    """A directory of a view is complete: it takes its source's owner and mode (after
    everything in it was made, so a mode without write permission is no obstacle)."""
    try:
        _finish_view_dir(source, made)
    finally:
        os.close(source)
        os.close(made)


def _finish_view_dir(source: int, made: int) -> None:
    st = os.fstat(source)
    with contextlib.suppress(OSError):  # an owner the rootless namespace does not map
        os.chown(_fd_path(made), st.st_uid, st.st_gid)
    os.chmod(_fd_path(made), stat.S_IMODE(st.st_mode))


class _MountAttr(ctypes.Structure):
    _fields_ = (("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64))


def _read_only_tree(top: int, files: list[str]) -> None:
    """The mount at ``top`` and every mount below it read-only, nosuid, nodev: one
    mount_setattr(2) (Linux 5.12), else a remount of each."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    if _LIBC.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(top), b"",
                     ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE), ctypes.byref(attr),
                     ctypes.c_size_t(ctypes.sizeof(attr))) == 0:
        return
    err = ctypes.get_errno()
    if err != errno.ENOSYS:
        raise OSError(err, f"mount_setattr: {os.strerror(err)}")
    for rel in files:
        fd = open_beneath(top, rel, kind="file")
        try:
            _remount(_fd_path(fd), MS_RDONLY | MS_NOSUID | MS_NODEV)
        finally:
            os.close(fd)
    _remount(_fd_path(top), MS_RDONLY | MS_NOSUID | MS_NODEV)


def _mount_secrets(root_fd: int, secrets: list[dict[str, Any]]) -> None:
    """A tmpfs on /run/secrets holding each secret, read-only once written: it lives in
    this mount namespace only, so nothing of it reaches the rootfs on disk."""
    fd = open_beneath(root_fd, SECRETS_DIR, kind="dir")
    try:
        _mount("tmpfs", _fd_path(fd), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
               f"mode=755,size={MAX_SECRETS_BYTES + (64 << 10)}")
    finally:
        os.close(fd)
    fd = open_beneath(root_fd, SECRETS_DIR, kind="dir")
    try:
        for secret in secrets:
            _write_secret(fd, secret)
        _remount_read_only(_fd_path(fd))
    finally:
        os.close(fd)


def _write_secret(dir_fd: int, secret: dict[str, Any]) -> None:
    out = os.open(secret["name"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                  | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        offset = 0
        while chunk := os.pread(secret["fd"], 65536, offset):
            offset += len(chunk)
            if offset > MAX_SECRETS_BYTES:
                raise OSError(errno.EFBIG, "a secret is too large")
            os.write(out, chunk)
        os.fchown(out, secret["uid"], secret["gid"])
        os.fchmod(out, secret["mode"])
    finally:
        os.close(out)


def _setup_root(spec: dict[str, Any]) -> None:
    root = spec["rootfs"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount may reach the host
    _mount(root, root, None, MS_BIND | MS_REC)  # pivot_root needs a mount point
    # nodev: a device node in the image (or one a program makes) opens nothing on the host.
    _remount(root, MS_NODEV)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _mount_proc(root, root_fd)
        _mount_dev(root, root_fd)
        if spec.get("tmpfs_tmp", True):
            _mount_tmp(root_fd)
        for name in spec["host_files"]:
            _bind(f"/etc/{name}", root_fd, f"etc/{name}", kind="file", create=False,
                  read_only=True)
        for b in spec["binds"]:
            _bind(b["source"], root_fd, b["target"], kind=b["kind"], create=b["create"],
                  read_only=b["read_only"])
        for m in spec.get("mounts", ()):
            _tree_mount(root_fd, m)
        if spec.get("secrets"):
            _mount_secrets(root_fd, spec["secrets"])
    finally:
        os.close(root_fd)
    os.chdir(root)
    _pivot_root()


def _pivot_root() -> None:
    number = SYS_PIVOT_ROOT[platform.machine()]
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
    # the rootfs as the only tree in the namespace, with nothing above it to climb to.
    _check(_LIBC.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
    _check(_LIBC.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def _set_identity_of_namespace(hostname: str, loopback: bool) -> None:
    name = hostname.encode()
    _check(_LIBC.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")
    if loopback:
        siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = fcntl.ioctl(s, siocgifflags, struct.pack("16sH22x", b"lo", 0))
            flags = struct.unpack("16sH22x", req)[1] | iff_up
            fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags))


def _send(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _exec_program(spec: dict[str, Any], err_fd: int) -> None:
    """In C: become the requested user and exec; any failure goes to ``err_fd``."""
    stage = "setup"
    try:
        os.setsid()
        # Python ignores SIGPIPE and SIGXFSZ, S ignores SIGINT: ignored signals survive exec,
        # and a shell pipeline like `yes | head` needs them back.
        for signum in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        os.dup2(1, 2)
        os.umask(0o022)
        stage = "workdir"
        workdir = spec["workdir"]
        if spec.get("make_workdir") and not os.path.isdir(workdir):
            # A build step's RUN --workdir: made on demand, as root, before the switch of user.
            os.makedirs(workdir, 0o755, exist_ok=True)
        stage = "identity"
        for cap in range(spec["cap_last"] + 1):
            if cap not in KEPT_CAPS:
                _prctl(PR_CAPBSET_DROP, cap)
        stage = "confine"
        if spec.get("nproc"):
            resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
        _confine(bytes.fromhex(spec["seccomp"]))
        stage = "identity"
        if spec["set_groups"]:
            os.setgroups(spec["groups"])
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
        stage = "workdir"
        os.chdir(workdir)
        stage = "exec"
        argv = spec["argv"]
        os.execvpe(argv[0], argv, dict(spec["env"]))
    except OSError as e:
        exists = stage == "exec" and "/" in spec["argv"][0] and os.path.lexists(spec["argv"][0])
        report = {"stage": stage, "errno": e.errno or 0, "message": e.strerror or str(e),
                  "exists": exists}
        os.write(err_fd, json.dumps(report).encode())
    finally:
        os._exit(127)


def _wait_program(child: int, err_r: int, report_fd: int) -> int:
    """In I: report an exec failure or the program's status, reaping everyone meanwhile.
    Every way out sends a message; the result is I's exit code."""
    chunks = []
    while data := os.read(err_r, 4096):  # EOF: exec succeeded (CLOEXEC) or C died
        chunks.append(data)
    os.close(err_r)
    failure = json.loads(b"".join(chunks)) if chunks else None
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            # Only a SIGCHLD ignored or an unexpected reaper gets here (main resets SIGCHLD).
            _send(report_fd, {"lost": f"PID 1 had no child left to wait for: the program "
                                      f"(pid {child}) was reaped before its status was read"})
            return 1
        if pid == child:
            break
    if failure is not None:
        _send(report_fd, {"exec_error": failure})
    elif os.WIFSIGNALED(status):
        _send(report_fd, {"signal": os.WTERMSIG(status)})
    else:
        _send(report_fd, {"exit": os.waitstatus_to_exitcode(status)})
    return 0


def _init_main(spec: dict[str, Any], report_fd: int, lifeline: int) -> None:
    """I: PID 1 of the new namespace. Never returns: whatever is raised, even a BaseException,
    is reported and ends I here, never unwinding into S's code that I was forked from."""
    code = 125
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([lifeline], [], [], 0)[0]:  # S died before the death signal was armed
            _send(report_fd, {"error": "the sandbox helper died while it started PID 1"})
            os._exit(1)
        os.close(lifeline)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if spec.get("probe"):
            _probe()
            _send(report_fd, {"exit": 0})
            os._exit(0)
        _setup_root(spec)
        for fd in _held(spec):
            os.close(fd)  # the program must not find it in /proc/1/fd (a directory's: a way out)
        _set_identity_of_namespace(spec["hostname"], spec["network"] == "none")
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            os.close(err_r)
            os.close(report_fd)
            _exec_program(spec, err_w)
        os.close(err_w)
        for fd in (0, 1):
            os.close(fd)  # only the program holds the output pipe: EOF when it is done
        code = _wait_program(child, err_r, report_fd)
    except BaseException as e:
        try:
            _send(report_fd, {"error": _describe(e)})
        except BaseException:  # the report pipe itself failed: stderr is what is left
            with contextlib.suppress(BaseException):
                os.write(2, f"sandbox PID 1: {_describe(e)}\n".encode())
    finally:
        os._exit(code)


def _held(spec: dict[str, Any]) -> list[int]:
    """The descriptors the parent passed for I alone: secrets, the directory of the rootfs."""
    held = [x["fd"] for x in spec.get("secrets", ())]
    return held if spec.get("dir_fd") is None else [*held, spec["dir_fd"]]


def _probe() -> None:
    """What a real run needs, on a throw-away tmpfs: a private mount tree, procfs, a bind."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    base = "/tmp" if os.path.isdir("/tmp") else "/"
    _mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k")
    os.mkdir(f"{base}/proc")
    _mount("proc", f"{base}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.close(os.open(f"{base}/null", os.O_WRONLY | os.O_CREAT, 0o666))
    _mount("/dev/null", f"{base}/null", None, MS_BIND)
    if platform.machine() not in SYS_PIVOT_ROOT:
        raise OSError(errno.ENOSYS, f"pivot_root is not known on {platform.machine()}")


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror if e.filename is None else f"{e.filename}: {e.strerror}"
    return f"{type(e).__name__}: {e}"


def _read_cap_last() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def main(argv: list[str]) -> int:
    """S: unshare, let the parent map ids, fork I and wait for it (and so for the namespace)."""
    ctl_fd, report_fd, parent = (int(arg) for arg in argv[-3:])
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt does
    # An ignored SIGCHLD survives exec: a caller that ignores it would have the kernel reap
    # I and the program as they end, and no status of either could be read.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in (ctl_fd, report_fd):
        os.set_inheritable(fd, False)
    ctl: BinaryIO = os.fdopen(ctl_fd, "rb")
    line = ctl.readline()
    if not line:
        return 1  # the parent gave up before sending the spec
    spec = json.loads(line)
    for fd in _held(spec):
        os.set_inheritable(fd, False)  # I needs it; the program never gets it
    spec["cap_last"] = _read_cap_last()
    dir_fd = spec.get("dir_fd")
    try:
        if dir_fd is not None:
            # unshare moves the working directory into the new mount namespace: through it,
            # the descriptor's directory there (a mount on the old one's would be EINVAL).
            os.fchdir(dir_fd)
        flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        if spec.get("network", "none") == "none":
            flags |= CLONE_NEWNET
        _check(_LIBC.unshare(flags), "unshare")
        if dir_fd is not None:
            here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            os.dup2(here, dir_fd, inheritable=False)
            os.close(here)
            os.chdir("/")
    except OSError as e:
        _send(report_fd, {"error": _describe(e)})
        return 125
    _send(report_fd, {"unshared": True})
    if ctl.readline() != b"go\n":
        return 1
    ctl.close()
    return _fork_init(spec, report_fd)


def _fork_init(spec: dict[str, Any], report_fd: int) -> int:
    lifeline_r, lifeline_w = os.pipe2(os.O_CLOEXEC)
    # SIGTERM (the parent's "stop") stays blocked until the handler knows whom to kill.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    pid = os.fork()
    if pid == 0:
        os.close(lifeline_w)
        _init_main(spec, report_fd, lifeline_r)
    os.close(lifeline_r)

    def on_term(signum: int, frame: object) -> None:
        # Killing PID 1 kills the whole namespace; waitpid below returns once it is empty.
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    for fd in (0, 1):
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    # How I ended, after whatever I said: an I that died without a word is still explained.
    # (The report pipe stays open here until then; EOF comes when S exits, just after I.)
    ended = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else \
        {"exit": os.waitstatus_to_exitcode(status)}
    with contextlib.suppress(OSError):  # the parent gone: nobody left to tell
        _send(report_fd, {"init": ended})
    return 128 + ended["signal"] if "signal" in ended else ended["exit"]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
