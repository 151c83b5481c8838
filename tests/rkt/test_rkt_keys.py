"""acbuild-py's verdict on a signing key (acbuild.trust.rktkeys) is rkt's: for each kind of
key, rkt trusts it and verifies an image it signed exactly when acbuild-py accepts it for SIGN."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from acbuild.errors import TrustError
from acbuild.trust.rktkeys import check_signing_key, rkt_problems
from tests.rkt.conftest import Rkt, SigningKey
from tests.support.gpghelp import make_aci

# (primary key algorithm, extra subkey or None)
KINDS = {
    "ed25519": ("ed25519", None),
    "ecdsa-nistp256": ("nistp256", None),
    "rsa-with-cv25519-subkey": ("rsa2048", "cv25519"),
}


def _key(home: Path, algo: str, subkey: str | None) -> str:
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "K <k@example.com>", algo, "sign", "never"],
                   check=True, capture_output=True)
    out = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True,
                         capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))
    if subkey:
        subprocess.run([*gpg, "--quick-add-key", fpr, subkey, "encr"], check=True,
                       capture_output=True)
    return fpr


def _rkt_accepts(rkt: Rkt, home: Path, fpr: str, tmp_path: Path) -> str | None:
    """None when rkt trusts the key and verifies an image it signed, else rkt's words."""
    image = make_aci(tmp_path / "k.aci", "example.com/k", {"os": "linux", "arch": "amd64"})
    gpg = ["gpg", "--homedir", str(home), "--batch"]
    subprocess.run([*gpg, "--armor", "--detach-sign", "-u", fpr, "-o", f"{image}.asc",
                    str(image)], check=True, capture_output=True)
    public = tmp_path / "k.pub"
    public.write_bytes(subprocess.run([*gpg, "--armor", "--export", fpr], check=True,
                                      capture_output=True).stdout)
    for args in (("trust", "--prefix=example.com/k", "--skip-fingerprint-review", public),
                 ("fetch", image)):
        r = rkt(*args, check=False)
        if r.returncode != 0:
            return r.stderr.strip()
    return None


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_rkt_refuses_the_keys_acbuild_refuses(kind: str, tmp_path: Path, rkt: Rkt) -> None:
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    fpr = _key(home, *KINDS[kind])
    with pytest.raises(TrustError, match="rkt cannot verify"):
        check_signing_key(fpr, home)
    refused = _rkt_accepts(rkt, home, fpr, tmp_path)
    assert refused is not None and "openpgp" in refused, refused
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def test_rkt_accepts_the_rsa_key(tmp_path: Path, rkt: Rkt, rsa_key: SigningKey) -> None:
    assert check_signing_key(rsa_key.fingerprint, rsa_key.home)
    assert rkt_problems(rsa_key.public.read_bytes()) == ()
    assert _rkt_accepts(rkt, rsa_key.home, rsa_key.fingerprint, tmp_path) is None
