"""Trust: the one door to GnuPG (python-gnupg), used by signing, the trust store and verification.

Turns a missing gpg and gpg's status lines into TrustError, and gives isolated temporary
keyrings so verification never consults the user's own keyring.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gnupg  # type: ignore[import-untyped]  # python-gnupg ships no type hints

from acbuild.acfile.signkey import hex_key_id, key_spec_problem
from acbuild.errors import TrustError
from acbuild.fs.leftovers import new_held_dir, sweep_at
from acbuild.fs.private import user_temp_root
from acbuild.signals import owned

# python-gnupg logs every status line it does not know at WARNING; we read them ourselves.
logging.getLogger("gnupg").setLevel(logging.ERROR)

GPG_BINARY = "gpg"
_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    """A public key as gpg describes it: lowercase fingerprint, user ids, validity."""

    fingerprint: str
    uids: tuple[str, ...]
    expired: bool = False
    revoked: bool = False
    subkeys: tuple[str, ...] = ()  # lowercase fingerprints of the subkeys

    def matches(self, spec: str) -> bool:
        """Whether ``spec`` (checked by key_spec_problem) names this key, as gpg would match
        it: hex ID or fingerprint of the key or a subkey, e-mail, ``=exact uid``, or a part
        of a user ID (case-insensitive)."""
        text = spec.strip()
        hex_id = hex_key_id(text)
        if hex_id is not None:
            return any(f.endswith(hex_id) for f in (self.fingerprint, *self.subkeys))
        if text.startswith("="):
            return text[1:] in self.uids
        if text.startswith("<") or ("@" in text and " " not in text):
            email = text.strip("<>").lower()
            return any(_email(u) == email for u in self.uids)
        return any(text.lower() in u.lower() for u in self.uids)

    @property
    def uid(self) -> str:
        return self.uids[0] if self.uids else "(no user id)"


def open_gpg(home: Path | None) -> gnupg.GPG:
    """A python-gnupg handle on ``home`` (None: gpg's own default, i.e. $GNUPGHOME or ~/.gnupg)."""
    if shutil.which(GPG_BINARY) is None:
        raise TrustError(
            "gpg not found: signing and verification need GnuPG",
            hint="install it (Debian/Ubuntu: apt-get install gnupg)",
        )
    if home is not None and not home.is_dir():
        raise TrustError(f"GnuPG home {home} does not exist")
    try:
        return gnupg.GPG(gpgbinary=GPG_BINARY, gnupghome=gpg_path(home) if home else None)
    except (OSError, ValueError) as e:
        raise TrustError(f"cannot run gpg: {e}") from None


def status_lines(result: object) -> tuple[tuple[str, str], ...]:
    """gpg's ``[GNUPG:] KEY value`` lines from a python-gnupg result, in order."""
    out: list[tuple[str, str]] = []
    for line in (getattr(result, "stderr", "") or "").splitlines():
        if line.startswith("[GNUPG:] "):
            key, _, value = line[9:].partition(" ")
            out.append((key, value))
    return tuple(out)


def gpg_messages(result: object) -> str:
    """gpg's human-readable stderr lines (no status lines), joined, for error details."""
    lines = [
        line.removeprefix("gpg: ")
        for line in (getattr(result, "stderr", "") or "").splitlines()
        if line and not line.startswith("[GNUPG:]")
    ]
    return "; ".join(lines[-3:])


def _email(uid: str) -> str:
    inner = uid.rpartition("<")[2].partition(">")[0] if "<" in uid else uid
    return inner.strip().lower()


def _key_info(entry: dict[str, object]) -> KeyInfo:
    trust = str(entry.get("trust", ""))
    uids = entry.get("uids") or ()
    subkeys = entry.get("subkeys") or ()
    return KeyInfo(
        fingerprint=str(entry["fingerprint"]).lower(),
        uids=tuple(str(u) for u in uids),  # type: ignore[attr-defined] # list of str
        expired=trust == "e",
        revoked=trust == "r",
        subkeys=tuple(str(sk[2]).lower() for sk in subkeys  # type: ignore[attr-defined]
                      if len(sk) > 2 and sk[2]),
    )


def list_keys(gpg: gnupg.GPG, *, secret: bool = False) -> tuple[KeyInfo, ...]:
    """Every key in ``gpg``'s keyring. Never given names: gpg would read a name that starts
    with ``-`` as an option, so callers match in Python (find_keys)."""
    try:
        found = gpg.list_keys(secret=secret)
    except (OSError, ValueError) as e:
        raise TrustError(f"cannot list keys: {e}") from None
    return tuple(_key_info(k) for k in found)


def find_keys(gpg: gnupg.GPG, spec: str, *, secret: bool = False) -> tuple[KeyInfo, ...]:
    """The keys ``spec`` names (a key ID, fingerprint, e-mail or user ID), matched here."""
    if (problem := key_spec_problem(spec)) is not None:
        raise TrustError(problem)
    return tuple(k for k in list_keys(gpg, secret=secret) if k.matches(spec))


def check_fingerprint(fingerprint: str) -> str:
    """A fingerprint as gpg printed it (hex); anything else never reaches gpg's argv."""
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise TrustError(f"{fingerprint!r} is not an OpenPGP fingerprint")
    return fingerprint.lower()


def gpg_path(path: Path) -> str:
    """A file name for gpg's argv: absolute, so a name like ``-x.aci`` is never an option."""
    return os.path.abspath(path)


_HOME_PREFIX = "gpg-"  # short: gpg-agent's sockets may be made in the home (108 bytes a path)


@contextlib.contextmanager
def temporary_keyring() -> Iterator[gnupg.GPG]:
    """A fresh, empty GnuPG home that is removed (and its agent stopped) afterwards."""
    with owned(_new_home, _remove_keyring) as (home, _held):
        yield open_gpg(home)


def _new_home() -> tuple[Path, int]:
    """A new home in this user's temporary directory (a short path: gpg-agent's socket path
    has a length limit), named after this process and held while it is used, so the next
    one removes what a killed process (SIGKILL) left (fs.leftovers)."""
    root = user_temp_root()
    parent = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        sweep_at(parent, _HOME_PREFIX)
        name, held = new_held_dir(parent, _HOME_PREFIX)
    finally:
        os.close(parent)
    return root / name, held


def _remove_keyring(made: tuple[Path, int]) -> None:
    home, held = made
    stop_agent(home)
    shutil.rmtree(home, ignore_errors=True)
    os.close(held)


def stop_agent(home: Path) -> None:
    """Stop any gpg-agent a gpg call started for ``home`` (importing keys can start one)."""
    if shutil.which("gpgconf") and (home / "S.gpg-agent").exists():
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"],
            check=False, capture_output=True, timeout=30,
        )


def scan_keys(armored: bytes) -> tuple[KeyInfo, ...]:
    """The keys in a key file (armored or binary) without importing them anywhere that lasts."""
    with temporary_keyring() as gpg:
        imported = import_keys(gpg, armored)
        return tuple(k for k in list_keys(gpg) if k.fingerprint in imported)


def import_keys(gpg: gnupg.GPG, data: bytes) -> tuple[str, ...]:
    """Import key material; the lowercase fingerprints of the keys it holds."""
    result = gpg.import_keys(data)
    fingerprints = tuple(sorted({f.lower() for f in result.fingerprints if f}))
    if not fingerprints:
        raise TrustError("no OpenPGP public key found in the key data")
    return fingerprints


def export_public(gpg: gnupg.GPG, fingerprint: str) -> bytes:
    """One public key, ASCII-armored, as it stands in ``gpg``'s keyring."""
    text = gpg.export_keys(check_fingerprint(fingerprint), armor=True)
    if not text:
        raise TrustError(f"cannot export public key {fingerprint}")
    return text.encode("ascii") if isinstance(text, str) else bytes(text)
