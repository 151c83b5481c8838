"""The host as AppC names its os and arch, on its own: what discovery, the step keys and a
pull's platform need, without the manifest model."""

from __future__ import annotations

import platform

_MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "i386": "i386",
    "i486": "i386",
    "i586": "i386",
    "i686": "i386",
}


def host_os_arch() -> tuple[str, str]:
    """The host as AppC names its os and arch (``linux``/``amd64``, ``darwin``/``x86_64``...)."""
    os_name = platform.system().lower()
    machine = platform.machine().lower()
    arch = _MACHINES.get(machine, machine)
    if os_name == "darwin" and arch == "amd64":
        arch = "x86_64"  # AppC keeps the kernel's name for macOS
    if os_name == "freebsd" and machine.startswith("arm"):
        arch = "arm"
    return os_name, arch
