"""Trust: the trust store — public keys trusted for image name prefixes, in rkt's layout.

``root.d/<fpr>`` keys are trusted for every image; ``prefix.d/<prefix>/<fpr>`` keys for names
at or under ``<prefix>`` on whole path segments. File names are lowercase fingerprints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from acbuild.errors import TrustError
from acbuild.fs.atomic import atomic_write
from acbuild.trust.gpg import export_public, import_keys, temporary_keyring
from acbuild.trust.names import check_image_name, plain_segments

TRUST_STORE_ENV = "ACBUILD_TRUST_STORE"
SYSTEM_STORE = Path("/etc/rkt/trustedkeys")
_FINGERPRINT = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
_PREFIX = re.compile(r"^[a-z0-9]+([-._~/][a-z0-9]+)*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustedKey:
    """One key file in the store; ``prefix`` None means a root key (trusted for everything)."""

    fingerprint: str
    prefix: str | None
    path: Path

    @property
    def scope(self) -> str:
        return "root" if self.prefix is None else f"prefix {self.prefix}"


def default_location(env: Mapping[str, str] | None = None) -> Path:
    """$ACBUILD_TRUST_STORE, else $XDG_CONFIG_HOME/acbuild-py/trustedkeys (~/.config/…)."""
    env = os.environ if env is None else env
    if env.get(TRUST_STORE_ENV):
        return Path(env[TRUST_STORE_ENV])
    config = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "acbuild-py" / "trustedkeys"


def prefix_matches(prefix: str, name: str) -> bool:
    """Whether ``prefix`` covers ``name`` on whole path segments (``a/app`` not ``a/apple``).

    A name or prefix with an empty, ``.`` or ``..`` segment is covered by nothing: otherwise
    ``a/app/../b`` would borrow the keys of ``a/app``."""
    prefix = prefix.rstrip("/")
    if not prefix or not plain_segments(prefix) or not plain_segments(name):
        return False
    return name == prefix or name.startswith(prefix + "/")


def check_prefix(unsafe_prefix: str) -> str:
    """A prefix is an image name (ACIdentifier); nothing else may become a store path."""
    prefix = unsafe_prefix.strip().rstrip("/")
    if not _PREFIX.match(prefix) or any(p in ("", ".", "..") for p in prefix.split("/")):
        raise TrustError(f"invalid prefix {unsafe_prefix!r}: expected an image name such as "
                         "example.com/app")
    return prefix


class TrustStore:
    """A directory of trusted keys. Nothing here talks to the user's own keyring."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def locate(cls, explicit: Path | None = None,
               env: Mapping[str, str] | None = None) -> TrustStore:
        return cls(explicit if explicit is not None else default_location(env))

    def all_keys(self) -> tuple[TrustedKey, ...]:
        """Every key file in the store, root keys first, then by prefix and fingerprint."""
        found: list[TrustedKey] = []
        root_d = self.root / "root.d"
        if root_d.is_dir():
            found += [TrustedKey(fingerprint=p.name, prefix=None, path=p)
                      for p in sorted(root_d.iterdir()) if _is_key_file(p)]
        prefix_d = self.root / "prefix.d"
        if prefix_d.is_dir():
            for dirpath, dirnames, filenames in os.walk(prefix_d):
                dirnames.sort()
                prefix = Path(dirpath).relative_to(prefix_d).as_posix()
                for fname in sorted(filenames):
                    path = Path(dirpath) / fname
                    if prefix != "." and _PREFIX.match(prefix) and _is_key_file(path):
                        found.append(TrustedKey(fingerprint=fname, prefix=prefix, path=path))
        return tuple(found)

    def keys_for(self, name: str) -> tuple[TrustedKey, ...]:
        """Root keys plus keys of every prefix covering ``name`` (an ACIdentifier)."""
        check_image_name(name, "trust")
        return tuple(
            k for k in self.all_keys() if k.prefix is None or prefix_matches(k.prefix, name)
        )

    def add(self, key_data: bytes, *, prefix: str | None) -> tuple[TrustedKey, ...]:
        """Store each public key in ``key_data`` for ``prefix`` (None: as a root key)."""
        directory = self._directory(prefix)
        with temporary_keyring() as gpg:
            fingerprints = import_keys(gpg, key_data)
            exported = {f: export_public(gpg, f) for f in fingerprints}
        directory.mkdir(parents=True, exist_ok=True)
        added = []
        for fpr, armored in exported.items():
            path = directory / fpr
            with atomic_write(path, mode=0o644) as out:
                out.write(armored)
            added.append(TrustedKey(fingerprint=fpr, prefix=prefix, path=path))
        return tuple(added)

    def remove(self, fingerprint: str) -> tuple[TrustedKey, ...]:
        """Remove a key from every scope it is trusted in; error when it is nowhere."""
        fpr = fingerprint.replace(" ", "").lower()
        gone = tuple(k for k in self.all_keys() if k.fingerprint == fpr)
        if not gone:
            raise TrustError(f"key {fpr} is not in the trust store {self.root}")
        for k in gone:
            k.path.unlink()
        return gone

    def _directory(self, prefix: str | None) -> Path:
        if prefix is None:
            return self.root / "root.d"
        return self.root / "prefix.d" / check_prefix(prefix)


def _is_key_file(path: Path) -> bool:
    return path.is_file() and bool(_FINGERPRINT.match(path.name))

