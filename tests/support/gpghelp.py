"""Test fixtures: throwaway OpenPGP keys in temporary GnuPG homes, and small ACIs to sign.

Keys are made once per session (ed25519, fast; alice is RSA, the kind rkt can verify, so
builds may SIGN with her): a test module declares a session fixture
``def gpgkeys(): yield from make_keys()``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PASSPHRASE = "correct horse battery"


@dataclass(frozen=True, slots=True, kw_only=True)
class Keys:
    """Secret keys live in ``home``; ``pub`` maps a key name to its exported public key file."""

    home: Path
    revoked_home: Path  # a copy of home in which the "rev" key has been revoked
    fpr: dict[str, str]  # name -> lowercase fingerprint
    pub: dict[str, Path]
    revoked_pub: Path  # the "rev" key's public key, with its revocation


def gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
        input=input, capture_output=True, check=False, timeout=60,
    )
    if proc.returncode != 0:
        raise AssertionError(f"gpg {args} failed: {proc.stderr.decode()}")
    return proc.stdout


def _fingerprint(home: Path, uid: str) -> str:
    out = gpg(home, "--with-colons", "--list-keys", uid).decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr")).lower()


def _make_key(home: Path, name: str, *, passphrase: str = "", when: str | None = None,
              expire: str = "never", algo: str = "ed25519") -> str:
    uid = f"{name.title()} <{name}@example.com>"
    fake = ["--faked-system-time", when] if when else []
    gpg(home, *fake, "--pinentry-mode", "loopback", "--passphrase", passphrase,
        "--quick-gen-key", uid, algo, "sign", expire)
    return _fingerprint(home, f"{name}@example.com")


def sign_at(home: Path, fingerprint: str, image: Path, when: str) -> Path:
    """Sign ``image`` as if the clock said ``when`` (for keys that have since expired)."""
    asc = image.with_name(image.name + ".asc")
    asc.unlink(missing_ok=True)
    gpg(home, "--faked-system-time", when, "-u", fingerprint, "--armor",
        "--detach-sign", "-o", str(asc), str(image))
    return asc


def kill_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                   check=False, capture_output=True)


def make_keys() -> Iterator[Keys]:
    # Short paths: gpg-agent's socket must fit in sun_path.
    root = Path(tempfile.mkdtemp(prefix="acb-keys-"))
    home = root / "h"
    home.mkdir(mode=0o700)
    # No passphrase caching: a wrong passphrase must fail even after a right one was given.
    (home / "gpg-agent.conf").write_text("default-cache-ttl 0\nmax-cache-ttl 0\n")
    fpr = {
        "alice": _make_key(home, "alice", algo="rsa2048"),
        "bob": _make_key(home, "bob"),
        "carol": _make_key(home, "carol", passphrase=PASSPHRASE),
        "old": _make_key(home, "old", when="20200101T000000", expire="1d"),
        "rev": _make_key(home, "rev"),
    }
    pubdir = root / "pub"
    pubdir.mkdir()
    pub = {}
    for name, f in fpr.items():
        pub[name] = pubdir / f"{name}.asc"
        pub[name].write_bytes(gpg(home, "--armor", "--export", f))
    kill_agent(home)
    revoked_home = root / "r"
    shutil.copytree(home, revoked_home, ignore=shutil.ignore_patterns("S.*"))
    rev_cert = (home / "openpgp-revocs.d" / f"{fpr['rev'].upper()}.rev").read_text()
    gpg(revoked_home, "--import", input=rev_cert.replace(":-----BEGIN", "-----BEGIN").encode())
    revoked_pub = pubdir / "rev-revoked.asc"
    revoked_pub.write_bytes(gpg(revoked_home, "--armor", "--export", fpr["rev"]))
    yield Keys(home=home, revoked_home=revoked_home, fpr=fpr, pub=pub, revoked_pub=revoked_pub)
    kill_agent(home)
    kill_agent(revoked_home)
    shutil.rmtree(root, ignore_errors=True)


def make_aci(path: Path, name: str, labels: dict[str, str] | None = None,
             payload: bytes = b"hello\n") -> Path:
    """A minimal valid ACI: manifest + rootfs/ + one file, uncompressed."""
    manifest = {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": name,
        "labels": [{"name": k, "value": v} for k, v in (labels or {}).items()],
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry, data in (("manifest", json.dumps(manifest).encode()), (None, None),
                            ("rootfs/hello", payload)):
            if entry is None:
                info = tarfile.TarInfo("rootfs")
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            assert data is not None
            info = tarfile.TarInfo(entry)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path
