"""Registries: which image of a multi-platform index to pull (``--platform OS/ARCH[/VARIANT]``).

Apart from the puller so that declaring the option imports no HTTP client.
"""

from __future__ import annotations

from dataclasses import dataclass

from acbuild.distribution.registry.reference import RegistryError


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(p and p.isascii() and p.replace("_", "").isalnum()
                                           for p in parts):
        raise RegistryError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], "
                            "as in linux/arm64 or linux/arm/v7")
    return Platform(os=parts[0], architecture=parts[1],
                    variant=parts[2] if len(parts) == 3 else None)
