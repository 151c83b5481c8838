"""Keys rkt can use: rkt verifies signatures with the old golang.org/x/crypto/openpgp, which
reads RSA, DSA and ElGamal key packets only. A key with any other packet, subkeys included
(EdDSA, ECDSA, an ECDH/cv25519 encryption subkey), makes ``rkt trust`` fail ("unsupported
feature: public key type 22", "invalid oid length") and ``rkt fetch`` refuse the image as
"signed by unknown entity". tests/rkt/test_rkt_keys.py checks these against the real rkt.
"""

from __future__ import annotations

from pathlib import Path

import gnupg  # type: ignore[import-untyped]  # python-gnupg ships no type hints

from acbuild.errors import TrustError
from acbuild.trust.gpg import KeyInfo, import_keys, open_gpg, temporary_keyring
from acbuild.trust.sign import find_secret_key

# OpenPGP public-key algorithm ids (RFC 4880 9.1, RFC 6637, draft-koch-eddsa).
RKT_ALGORITHMS = {"1": "RSA", "2": "RSA", "3": "RSA", "16": "ElGamal", "17": "DSA"}
OTHER_ALGORITHMS = {"18": "ECDH", "19": "ECDSA", "22": "EdDSA", "20": "ElGamal (sign)"}


def _algorithm(entry: dict[str, object]) -> str:
    algo = str(entry.get("algo", ""))
    name = RKT_ALGORITHMS.get(algo) or OTHER_ALGORITHMS.get(algo) or f"algorithm {algo}"
    curve = str(entry.get("curve") or "")
    return f"{name} ({curve})" if curve else name


def rkt_problem(entry: dict[str, object]) -> str | None:
    """Why rkt cannot read this key (a python-gnupg listing entry), or None."""
    parts = [("primary key", entry)]
    infos = entry.get("subkey_info") or {}
    assert isinstance(infos, dict)
    parts += [(f"subkey {keyid}", info) for keyid, info in sorted(infos.items())]
    bad = [f"{what} is {_algorithm(e)}" for what, e in parts
           if str(e.get("algo", "")) not in RKT_ALGORITHMS]
    if not bad:
        return None
    return ", ".join(bad) + ": rkt reads RSA, DSA and ElGamal keys only"


def _entry(gpg: gnupg.GPG, fingerprint: str, *, secret: bool) -> dict[str, object]:
    try:
        found = gpg.list_keys(secret=secret, keys=fingerprint)
    except (OSError, ValueError) as e:
        raise TrustError(f"cannot list keys: {e}") from None
    if not found:
        raise TrustError(f"key {fingerprint} vanished from the keyring")
    return dict(found[0])


def check_signing_key(key: str, gpg_home: Path | None) -> KeyInfo:
    """The secret key a SIGN line names, checked before the build: it exists, is unique,
    neither revoked nor expired, can sign, and is one rkt can verify. Raises TrustError."""
    info = find_secret_key(key, gpg_home)
    entry = _entry(open_gpg(gpg_home), info.fingerprint, secret=True)
    # gpg's "cap" field: capital letters are the usable capabilities of the whole key.
    if "S" not in str(entry.get("cap", "")):
        raise TrustError(f"key {info.fingerprint} ({info.uid}) cannot sign: it has no usable "
                         "signing (sub)key")
    problem = rkt_problem(entry)
    if problem is not None:
        raise TrustError(
            f"rkt cannot verify signatures by key {info.fingerprint} ({info.uid}): {problem}",
            hint='make an RSA key: gpg --quick-gen-key "NAME <EMAIL>" rsa3072 sign never',
        )
    return info


def rkt_problems(key_data: bytes) -> tuple[tuple[str, str], ...]:
    """(fingerprint, why rkt cannot use it) for each key in ``key_data`` rkt cannot read."""
    out: list[tuple[str, str]] = []
    with temporary_keyring() as gpg:
        for fingerprint in import_keys(gpg, key_data):
            problem = rkt_problem(_entry(gpg, fingerprint, secret=False))
            if problem is not None:
                out.append((fingerprint, problem))
    return tuple(out)
