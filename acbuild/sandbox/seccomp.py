"""Execute stage, sandbox: the seccomp filter every sandboxed program runs under.

Modelled on Docker's default profile (moby/profiles/seccomp) for a container without
CAP_SYS_ADMIN: the system calls it leaves out of its allow-list, or allows only with a
capability our bounding set drops, fail with EPERM here. Unlike Docker the filter allows by
default and lists what is blocked, so a build tool using a new, harmless system call keeps
working; what the kernel adds later that is dangerous must be added here (docs/security.md).

The filter is compiled by libseccomp (through pyseccomp) in the parent, where the venv is
importable, and exported as classic BPF; ``sandbox_init``, which runs with the standard
library only, installs those bytes with prctl(PR_SET_SECCOMP) just before exec.
"""

from __future__ import annotations

import errno
import tempfile

from acbuild.errors import SandboxError

# Docker's "significant syscalls blocked by the default profile", the ones it allows only
# with CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_TIME, CAP_SYS_BOOT, CAP_SYS_PACCT,
# CAP_SYS_NICE, CAP_SYSLOG or CAP_SYS_RAWIO (all outside our bounding set), and the mount
# API calls it never lists. ptrace, process_vm_readv/writev and kcmp stay allowed, as Docker
# allows them on kernels >= 4.8 (the namespaces bound what they reach).
BLOCKED = (
    # kernel keyrings: the host's keys (a user's session keyring) must stay out of reach
    "add_key", "keyctl", "request_key",
    # kernel modules, kexec, reboot, swap, accounting
    "init_module", "finit_module", "delete_module", "create_module", "query_module",
    "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
    "acct",
    # clocks
    "settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex",
    # mounts and namespaces: the sandbox sets them up before the filter is loaded
    "mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "unshare", "setns",
    # file handles bypass path permission checks (the "shocker" escape)
    "open_by_handle_at", "name_to_handle_at",
    # tracing, profiling, kernel internals
    "bpf", "perf_event_open", "lookup_dcookie", "userfaultfd", "quotactl", "quotactl_fd",
    "nfsservctl", "sysfs", "_sysctl", "uselib", "ustat", "syslog", "vhangup",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # NUMA policy (CAP_SYS_NICE), raw I/O ports (CAP_SYS_RAWIO)
    "get_mempolicy", "set_mempolicy", "mbind", "move_pages", "migrate_pages", "ioperm",
    "iopl", "vm86", "vm86old",
)
# clone(2) flags that make new namespaces (Docker's mask 0x7E020000), refused like unshare.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                         0x20000000, 0x40000000)
_NR_SCMP_ERROR = -1  # libseccomp's answer for a name it does not know


def filter_bpf() -> bytes:
    """The filter as a BPF program (struct sock_filter[]) for this machine's architectures."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError, RuntimeError) as e:  # the module, or libseccomp under it
        raise SandboxError(f"cannot load libseccomp: {e}",
                           hint="install Debian's libseccomp2 and the pyseccomp package"
                           ) from None
    try:
        f = sc.SyscallFilter(sc.ALLOW)
        native = sc.system_arch()
        # 32-bit system calls on a 64-bit kernel must meet the same rules, not bypass them.
        extra = {sc.Arch.X86_64: (sc.Arch.X86, sc.Arch.X32),
                 sc.Arch.AARCH64: (sc.Arch.ARM,)}.get(native, ())
        for arch in extra:
            try:
                f.add_arch(arch)
            except OSError:
                continue  # a libseccomp without it: its system calls stay killed (badarch)
        for name in BLOCKED:
            _add(f, sc.ERRNO(errno.EPERM), name)
        for flag in CLONE_NAMESPACE_FLAGS:
            # clone's flags are argument 0 everywhere we run except s390x (argument 1).
            index = 1 if native == sc.Arch.S390X else 0
            _add(f, sc.ERRNO(errno.EPERM), "clone", sc.Arg(index, sc.MASKED_EQ, flag, flag))
        # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc fall
        # back to clone, whose flags are checked above (what Docker does).
        _add(f, sc.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out)
            out.seek(0)
            return out.read()
    except OSError as e:
        raise SandboxError(f"cannot build the seccomp filter: {e}") from None


def _add(f: object, action: int, name: str, *args: object) -> None:
    import pyseccomp as sc

    if sc.resolve_syscall(sc.Arch.NATIVE, name) == _NR_SCMP_ERROR:
        return  # unknown to this libseccomp: too new for it, or gone everywhere
    try:
        f.add_rule(action, name, *args)  # type: ignore[attr-defined]
    except OSError as e:
        if e.errno != errno.EDOM:  # EDOM: not on any of the filter's architectures
            raise
