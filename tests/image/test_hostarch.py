"""The host's os and arch as AppC names them."""

from __future__ import annotations

import pytest

from acbuild.image import hostarch


@pytest.mark.parametrize(
    ("system", "machine", "expected"),
    [
        ("Linux", "x86_64", ("linux", "amd64")),
        ("Linux", "aarch64", ("linux", "aarch64")),
        ("Linux", "i686", ("linux", "i386")),
        ("Linux", "armv7l", ("linux", "armv7l")),
        ("Linux", "ppc64le", ("linux", "ppc64le")),
        ("Linux", "s390x", ("linux", "s390x")),
        ("Darwin", "x86_64", ("darwin", "x86_64")),
        ("FreeBSD", "amd64", ("freebsd", "amd64")),
    ],
)
def test_host_os_arch(
    monkeypatch: pytest.MonkeyPatch, system: str, machine: str, expected: tuple[str, str]
) -> None:
    monkeypatch.setattr(hostarch.platform, "system", lambda: system)
    monkeypatch.setattr(hostarch.platform, "machine", lambda: machine)
    assert hostarch.host_os_arch() == expected
