"""Registries: ``docker://[REGISTRY/]NAME[:TAG|@DIGEST]`` with Docker's defaults applied.

As docker, rkt and docker2aci read it: the first component is a registry when it has a ``.``
or ``:`` or is ``localhost``; otherwise the registry is docker.io (whose API lives at
registry-1.docker.io) and a one-component name gets ``library/``; no tag means ``latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from acbuild.errors import FetchError
from acbuild.numbers import ascii_int

SCHEME = "docker://"
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
                   r"(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*"
                   r"|\[[0-9a-fA-F:]+\]")
# The distribution grammar's \w is ASCII: "x:İ" or "x:²" is no tag docker or a registry takes.
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_NAME_LIMIT = 255


class RegistryError(FetchError):
    """Talking to a registry failed, or it answered with something that is not an image."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    registry: str  # HOST[:PORT] as named; docker.io for Docker Hub
    repository: str  # e.g. library/busybox
    tag: str | None  # None only when pinned by digest alone
    digest: str | None  # sha256:<hex>

    @property
    def api_host(self) -> str:
        """Where the registry's /v2/ API is."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_ref(self) -> str:
        """What /v2/NAME/manifests/ is asked for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def url(self) -> str:
        return SCHEME + str(self)


def is_registry_reference(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_reference(text: str) -> Reference:
    """A docker:// reference (the scheme is optional here); RegistryError says what is wrong."""
    rest = text.removeprefix(SCHEME)
    shown = SCHEME + rest
    if not rest:
        raise RegistryError(f"{shown!r} names no image", hint="as in docker://busybox:1.36")
    first, slash, _ = rest.partition("/")
    if slash and "@" in first:
        # docker://USER:PASSWORD@HOST/…: not echoed, since what precedes the @ is a secret.
        raise RegistryError("a docker:// reference cannot hold credentials (USER@HOST)",
                            hint="log in with acbuild-py login HOST; the reference names "
                                 "only the image")
    digest = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not DIGEST.fullmatch(digest):
            raise RegistryError(f"{shown!r}: {digest!r} is not a sha256 digest "
                                "(sha256: and 64 lower-case hex digits)")
    tag = None
    head, sep, last = rest.rpartition("/")
    if ":" in last:
        last, _, tag = last.partition(":")
        if not _TAG.fullmatch(tag):
            raise RegistryError(f"{shown!r}: {tag!r} is not a valid tag (letters, digits, "
                                "'_', '.', '-'; at most 128; not starting with '.' or '-')")
        rest = f"{head}{sep}{last}"
    registry, repository = _split_registry(rest, shown)
    if not repository:
        raise RegistryError(f"{shown!r} names a registry but no repository")
    for part in repository.split("/"):
        if not _COMPONENT.fullmatch(part):
            why = "must be lower case" if part.lower() != part else \
                "may hold only a-z, 0-9 and single '.', '_' or '-' between them"
            raise RegistryError(f"{shown!r}: repository component {part!r} {why}")
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    if len(registry) + 1 + len(repository) > _NAME_LIMIT:
        raise RegistryError(f"{shown[:80]!r}…: the name is longer than {_NAME_LIMIT} characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def _split_registry(rest: str, shown: str) -> tuple[str, str]:
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, colon, port = first.rpartition(":") if not first.endswith("]") else (first, "", "")
        if not colon:
            host, port = first, ""
        if not _HOST.fullmatch(host) or (colon and not _port(port)):
            raise RegistryError(f"{shown!r}: {first!r} is not a registry HOST[:PORT]")
        return first.lower(), remainder
    return DOCKER_HUB, rest


def _port(text: str) -> bool:
    return 0 < (ascii_int(text, most_digits=5) or 0) < 65536


def check_host(text: str, what: str = "registry") -> str:
    """A HOST[:PORT] as --insecure-registry and login take it (docker.io's aliases folded)."""
    host = text.removeprefix("https://").removeprefix("http://").rstrip("/")
    if host in _HUB_ALIASES or host == "index.docker.io/v1":
        return DOCKER_HUB
    name, colon, port = host.rpartition(":")
    if not colon or host.endswith("]"):  # no port, or a bracketed IPv6 address alone
        name, colon, port = host, "", ""
    if not host or not _HOST.fullmatch(name) or (colon and not _port(port)):
        raise RegistryError(f"{text!r} is not a {what} HOST[:PORT]")
    # the port as a number writes it: host:080 is host:80
    return (f"{name}:{int(port)}" if colon else name).lower()
