"""The host as OCI names platforms (``linux``/``amd64``, ``linux``/``arm64``), on its own:
what `pull` needs to choose from an index, without the rest of the OCI reader."""

from __future__ import annotations

from acbuild.image.hostarch import host_os_arch

_ARCHS = {"amd64": "amd64", "aarch64": "arm64", "i386": "386", "ppc64le": "ppc64le",
          "s390x": "s390x", "armv7l": "arm", "armv6l": "arm"}


def host_platform() -> tuple[str, str]:
    os_name, arch = host_os_arch()
    return os_name, _ARCHS.get(arch, arch)
